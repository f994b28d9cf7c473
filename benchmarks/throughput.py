"""Training and inference throughput, side by side in one process (training images per second).

    python benchmarks/throughput.py                      # real data when ../shared/cifar10 exists
    python benchmarks/throughput.py --data_dir DIR       # any folder the DataModule reads
    python benchmarks/throughput.py --synthetic          # generated images, no data needed

Rows (medians of --repeats, each after warm-up; raw is timed --repeats times before fit and again after):
  raw      bare PyTorch: forward, backward and NAdam step of the same model on one pre-made batch
           (the ceiling: no data loading, no Lightning).
  fit      Lightning ``fit`` built from configs/base.yaml by the CLI (data loading, batched
           augmentation, per-step logging, progress bar, checkpointing every epoch): training images
           per second over whole epochs, the validation pass subtracted (``predict`` measures inference).
           Epochs are --steps batches long, so checkpoints are written ~5x more often than in a real run.
  data     the data path alone: batches from the training loader, copied to the device, augmented.
  predict  ``Trainer.predict`` over the test split at the DataModule's eval batch size, in the
           config's precision (full precision on a CPU), CSV writer included; timed before the
           fit row, as a ``predict`` command runs in a fresh process (after a fit in the same
           process, CPU inference measured ~25% slower here).
  predict_bf16  the same with ``precision="bf16-mixed"``, on CPUs with native bf16 (AVX512-BF16/AMX)
           and GPUs: what ``--trainer.precision bf16-mixed`` gives at a small cost in agreement.
The last line is ``fit/raw: X.XX``. Not imported by the package; not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from cifar_lightning.cli import cli_main
from cifar_lightning.datamodule import CIFAR10DataModule
from cifar_lightning.module import CIFAR10Classifier

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "cifar10"


class EpochTimer(Callback):
    """Wall time of each training epoch minus its validation pass (checkpoint saving stays in)."""

    def __init__(self) -> None:
        self.train_seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.validation = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validation += time.perf_counter() - self.validation_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train_seconds.append(time.perf_counter() - self.start - self.validation)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast_for(precision: str, device: torch.device):
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def raw_stepper(model: CIFAR10Classifier, batch_size: int, device, precision):
    """The ceiling: the model's own forward/backward/step on one batch already on the device."""
    model = model.to(device).train()
    optimizer = model.configure_optimizers()
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with autocast_for(precision, device):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):  # warm-up
        step()
    return step


def bench_raw(step, batch_size: int, steps: int, repeats: int, device) -> list[float]:
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return rates


def bench_data(datamodule: CIFAR10DataModule, batches: int, repeats: int, device) -> float:
    """Loader -> device -> batched augmentation, as fit does it, without the model."""
    rates = []
    for _ in range(repeats + 1):  # the first pass warms up
        loader = iter(datamodule.train_dataloader())
        sync(device)
        start, seen = time.perf_counter(), 0
        for _ in range(batches):
            images, labels = next(loader)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if datamodule.hparams.augmentation == "batched":
                images = datamodule.batch_augment(images)
            seen += len(labels)
        sync(device)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def bench_predict(trainer, model, datamodule, repeats: int) -> float:
    rates = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        predictions = trainer.predict(model, datamodule=datamodule)
        rates.append(sum(len(p) for p in predictions) / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def cpu_has_bf16() -> bool:
    return "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False


def synthetic_folder(root: Path, per_class: int) -> Path:
    """A CIFAR-10-shaped image folder of random images, for machines without the data set."""
    from PIL import Image

    from cifar_lightning.sources import CIFAR10_CLASSES

    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", max(per_class // 5, 10))):
        for name in CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            pixels = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator).numpy()
            for i, image in enumerate(pixels):
                Image.fromarray(image).save(root / split / name / f"{i:05d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA) if (DEFAULT_DATA / "train").is_dir() else None)
    parser.add_argument("--synthetic", action="store_true", help="generated images even if real data exists")
    parser.add_argument("--config", default=str(REPO / "configs" / "base.yaml"))
    parser.add_argument("--steps", type=int, default=150, help="training batches per timed repeat / epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache_dir", default=str(REPO / ".cache" / "cifar_lightning"))
    parser.add_argument("cli_args", nargs="*", help="more CLI arguments after --, e.g. -- --data.augmentation per_image")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cifar_bench_"))
    data_dir = args.data_dir
    if args.synthetic or data_dir is None:
        data_dir = str(synthetic_folder(workdir / "synthetic", per_class=400))
    os.chdir(workdir)  # checkpoints/ and lightning_logs/ of the fit row land here, not in the repo

    timer = EpochTimer()
    cli = cli_main(args=[
        "--config", args.config, "--data.data_dir", data_dir, "--data.cache_dir", args.cache_dir,
        "--trainer.max_epochs", str(args.repeats + 1), "--trainer.limit_train_batches", str(args.steps),
        "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0", *args.cli_args,
    ], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.callbacks.insert(0, timer)
    device = trainer.strategy.root_device
    batch_size = datamodule.hparams.batch_size
    precision = trainer.precision

    settings = {k: v for k, v in model.hparams.items() if not k.startswith("_")}  # drop the CLI's _instantiator
    # raw is timed before and after fit, so that drift of the machine during the run hits both rows alike.
    step = raw_stepper(CIFAR10Classifier(**settings), batch_size, device, precision)
    raw_rates = bench_raw(step, batch_size, args.steps // 2, args.repeats, device)

    datamodule.setup("predict")
    predict = bench_predict(trainer, model, datamodule, args.repeats)
    predict_bf16 = None
    if precision != "bf16-mixed" and (device.type == "cuda" or cpu_has_bf16()):
        bf16_trainer = L.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed", logger=False,
                                 enable_progress_bar=False, enable_model_summary=False)
        predict_bf16 = bench_predict(bf16_trainer, model, datamodule, args.repeats)

    fit_start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_wall = time.perf_counter() - fit_start
    fit = statistics.median(args.steps * batch_size / s for s in timer.train_seconds[1:])
    raw_rates += bench_raw(step, batch_size, args.steps // 2, args.repeats, device)
    raw = statistics.median(raw_rates)

    datamodule.setup("fit")
    data = bench_data(datamodule, min(args.steps, len(datamodule.train_dataloader())), args.repeats, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\nDevice: {name}; precision {precision}; batch {batch_size}, eval batch "
          f"{datamodule.eval_batch_size}; augmentation {datamodule.hparams.augmentation}; "
          f"channels_last {model.hparams.channels_last}; compile {model.hparams.compile}")
    print(f"torch {torch.__version__}, Python {platform.python_version()}; data: {data_dir}; "
          f"fit: {args.repeats + 1} epochs of {args.steps} batches in {fit_wall:.0f} s (first one is warm-up)")
    print("\n| row | images/s |\n|---|---:|")
    for row, value in (("raw", raw), ("fit", fit), ("data", data), ("predict", predict),
                       ("predict_bf16", predict_bf16)):
        if value is not None:
            print(f"| {row} | {value:,.0f} |")
    print(f"\ndata/raw: {data / raw:.1f}")
    print(f"fit/raw: {fit / raw:.2f}")


if __name__ == "__main__":
    main()
