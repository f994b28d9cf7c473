"""onnxruntime against PyTorch on the CPU: images per second and agreement, in one process.

    python benchmarks/onnx_throughput.py                          # the real test split when present
    python benchmarks/onnx_throughput.py --synthetic              # 10,000 random images, no data needed
    python benchmarks/onnx_throughput.py --ckpt_path other.ckpt --threads 4

The checkpoint is exported with ``export_onnx`` (as ``python -m cifar_lightning export``) to a
temporary file, then the test split's uint8 images are classified by
  torch fp32   ``predict_probabilities`` (what ``predict_images`` and ``serve`` run: BatchNorm folded)
  torch bf16   the same under CPU bf16 autocast (what the ``predict`` CLI picks on CPUs with native bf16)
  onnxruntime  the exported file on the CPU execution provider, all graph optimisations
at batch 500 (the CLI's eval batch size) over all images and at batch 1 over the first 1,000,
each the median of --repeats runs after a warm-up, the engines alternating so that drift of the
machine hits them alike. Agreement (same top-1 class, largest probability difference) is against
torch fp32. Every engine uses --threads threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifar_lightning.data.sources import load_split
from cifar_lightning.infer.export import export_onnx
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.precision import cpu_has_native_bf16, cpu_name

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", default=str(REPO / "cifar_lightning" / "weights" / "cifar10_cnn.ckpt"))
    parser.add_argument("--data_dir", default=os.environ.get("CIFAR10_DIR", str(REPO / "data")))
    parser.add_argument("--synthetic", action="store_true", help="10,000 random uint8 images instead of the test split")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    if args.synthetic or not Path(args.data_dir).is_dir():
        source = "10,000 random uint8 images"
        images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    else:
        source = f"the test split of {args.data_dir}"
        images = load_split(args.data_dir, train=False, cache_dir=REPO / ".cache" / "cifar_lightning").images
    model = load_classifier(args.ckpt_path)
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(args.ckpt_path, str(Path(folder) / "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_onnx(batch: torch.Tensor, batch_size: int) -> np.ndarray:
        return np.concatenate([session.run(None, {"images": chunk.numpy()})[0] for chunk in batch.split(batch_size)])

    def run_torch(batch: torch.Tensor, batch_size: int) -> np.ndarray:
        return predict_probabilities(model, batch, batch_size).numpy()

    def run_torch_bf16(batch: torch.Tensor, batch_size: int) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return predict_probabilities(model, batch, batch_size).numpy()

    engines = {"torch fp32": run_torch, "onnxruntime": run_onnx}
    if cpu_has_native_bf16():
        engines["torch bf16"] = run_torch_bf16
    print(f"{cpu_name()}, {args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"{source}", flush=True)

    reference = run_torch(images, 500)
    for name, engine in engines.items():
        if name != "torch fp32":
            got = engine(images, 500)
            agreement = (got.argmax(1) == reference.argmax(1)).mean()
            print(f"{name} vs torch fp32 on {len(images):,} images: same top-1 class {agreement:.2%} "
                  f"({int(round((1 - agreement) * len(images)))} differ), largest probability difference "
                  f"{np.abs(got - reference).max():.1e}", flush=True)

    for batch_size, count in ((500, len(images)), (1, min(1000, len(images)))):
        batch = images[:count]
        for engine in engines.values():
            engine(batch[: max(batch_size, 50)], batch_size)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine(batch, batch_size)
                times[name].append(time.perf_counter() - start)
        rates = {name: count / statistics.median(seconds) for name, seconds in times.items()}
        line = ", ".join(f"{name} {rate:,.0f}" for name, rate in rates.items())
        print(f"batch {batch_size:>3} ({count:,} images, median of {args.repeats}): images/s {line}; "
              f"onnxruntime/torch fp32 {rates['onnxruntime'] / rates['torch fp32']:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
