"""Training and inference throughput in fp32 and bf16, side by side in one process (images per second).

    python benchmarks/throughput.py                      # real data when data/ (or $CIFAR10_DIR) holds it
    python benchmarks/throughput.py --data_dir DIR       # any folder the DataModule reads
    python benchmarks/throughput.py --synthetic          # generated images, no data needed
    python benchmarks/throughput.py --device cuda        # on the GPU (auto: the GPU when there is one)
    python benchmarks/throughput.py -- --config configs/fast.yaml          # more CLI arguments after --

Every row is timed in full precision (``32-true``) and, where the device computes bf16 natively
(CUDA GPUs with bf16, CPUs with AVX512_BF16 or AMX: ``cifar_lightning.precision``), in
``bf16-mixed`` too, in the same process, with their ratio. Medians of --repeats, each after warm-up:
  raw      bare PyTorch: forward, backward and NAdam step of the same model on one pre-made batch
           (the ceiling: no data loading, no Lightning). Timed before the fits and again after,
           the two precisions alternating, so that drift of the machine hits both alike.
  fit      Lightning ``fit`` built from configs/base.yaml by the CLI (data loading, batched
           augmentation, per-step logging, progress bar, checkpointing every epoch): training images
           per second over whole epochs, the validation pass subtracted (``predict`` measures
           inference). Epochs are --steps batches long, so checkpoints are written more often than
           in a real run; the first epoch is warm-up.
  predict  ``Trainer.predict`` over the test split at the DataModule's eval batch size, CSV writer
           included; the two precisions alternate, and both are timed before the fits, as a
           ``predict`` command runs in a fresh process.
  data     the data path alone, once (it does not depend on the precision): batches from the
           training loader through the DataModule's own batch-transfer hooks, as ``fit`` calls them
           (``transfer_batch_to_device``, then ``on_after_batch_transfer``, which applies the
           configured batch augmentation on the device, whichever it is).
The last lines are the ratios: ``bf16/fp32`` per row, ``data/raw`` and ``fit/raw`` per precision.
Every argument is checked before any work (one line on stderr, exit status 2). Not imported by
the package; not a test (tests/test_benchmarks.py runs its quick mode through gpu_check.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from PIL import Image

from cifar_lightning.cli import cli_main
from cifar_lightning.data.sources import CIFAR10_CLASSES, find_layout
from cifar_lightning.errors import UserInputError
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.precision import auto_precision, cpu_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CIFAR10_DIR", REPO / "data"))
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit status 2), not usage plus a line."""

    def error(self, message: str) -> None:
        fail(message)


def fail(message: str) -> None:
    print(f"throughput.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def absolute(text: str) -> Path:
    """Resolved now, against the directory the command was started in: the fit row changes directory later."""
    return Path(text).expanduser().resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=absolute, help=f"CIFAR-10 in either layout (default: {DEFAULT_DATA} "
                        "when it holds the data, else --synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="generated images (a folder of random PNGs)")
    parser.add_argument("--config", type=absolute, default=REPO / "configs" / "base.yaml")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU when there is one")
    parser.add_argument("--steps", type=positive_int, default=150,
                        help="training batches per epoch of the fit row, per timed repeat of raw and data")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (after one warm-up)")
    parser.add_argument("--predict_batches", type=positive_int, default=None,
                        help="batches of the test split per predict repeat (default: all of it)")
    parser.add_argument("--cache_dir", type=absolute, default=REPO / ".cache" / "cifar_lightning",
                        help="cache of decoded images, as --data.cache_dir")
    parser.add_argument("--workdir", type=absolute, default=None,
                        help="where the fits write checkpoints and logs (kept); default: a temporary folder, removed")
    parser.add_argument("cli_args", nargs="*", help="more CLI arguments after --, e.g. -- --data.augment null")
    args = parser.parse_args(argv)

    if args.synthetic and args.data_dir is not None:
        fail("give --data_dir or --synthetic, not both")
    if args.data_dir is None and not args.synthetic:
        args.synthetic = not has_cifar10(DEFAULT_DATA)
        args.data_dir = None if args.synthetic else DEFAULT_DATA
    if args.data_dir is not None:
        if not args.data_dir.is_dir():
            fail(f"--data_dir {args.data_dir}: no such folder")
        if not has_cifar10(args.data_dir):
            fail(f"--data_dir {args.data_dir} holds no CIFAR-10: expected {args.data_dir}/cifar-10-batches-py/ "
                 f"(torchvision's files) or {args.data_dir}/train/<class>/ and {args.data_dir}/test/<class>/")
    if not args.config.is_file():
        fail(f"--config {args.config}: no such file")
    if args.cache_dir.exists() and not args.cache_dir.is_dir():
        fail(f"--cache_dir {args.cache_dir} is a file, not a folder")
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        fail(f"--workdir {args.workdir} is a file, not a folder")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def has_cifar10(data_dir: Path) -> bool:
    try:
        find_layout(data_dir)
    except UserInputError:
        return False
    return True


def native_bf16(device: str) -> tuple[bool, str]:
    """Whether bf16 is timed, and why: where the CLI's automatic precision would pick it, i.e. where
    the hardware computes it natively (elsewhere it is emulated, many times slower)."""
    precision, why = auto_precision(device)
    return precision == "bf16-mixed", why


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {cpu_name()} ({os.cpu_count()} cores)"


def augmentation(datamodule) -> str:
    """The data module's training augmentation (``data.augment``) in words."""
    return " ".join(repr(datamodule.augment).split()) if datamodule.augment is not None else "none"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_stepper(settings: dict, batch_size: int, device: torch.device, precision: str, warmup: int):
    """The ceiling: the model's own forward/backward/step on one batch already on the device."""
    model = CIFAR10Classifier(**{**settings, "lr_schedule": "constant"}).to(device).train()  # no trainer to size a schedule
    optimizer = model.configure_optimizers()
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    return step


def time_raw(step, batch_size: int, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def time_predict(run) -> float:
    with run.here(), contextlib.redirect_stdout(io.StringIO()):  # the CSV writer's summary, once per repeat
        start = time.perf_counter()
        predictions = run.trainer.predict(run.model, datamodule=run.datamodule)
        return sum(len(p) for p in predictions) / (time.perf_counter() - start)


def bench_data(trainer: L.Trainer, datamodule, batches: int, repeats: int) -> float:
    """Loader -> device -> the DataModule's own batch augmentation, through the hooks fit calls, without the model."""
    device = trainer.strategy.root_device
    rates = []
    attached = datamodule.trainer
    datamodule.trainer = trainer  # as fit attaches it: the hooks ask the trainer whether it is training
    trainer.training = True  # on_after_batch_transfer augments only while the trainer is training
    try:
        for _ in range(repeats + 1):  # the first pass warms up
            loader = iter(datamodule.train_dataloader())
            sync(device)
            start, seen = time.perf_counter(), 0
            for _ in range(batches):
                batch = datamodule.on_before_batch_transfer(next(loader), 0)
                batch = datamodule.transfer_batch_to_device(batch, device, 0)
                images, labels = datamodule.on_after_batch_transfer(batch, 0)
                seen += len(labels)
            sync(device)
            rates.append(seen / (time.perf_counter() - start))
    finally:
        trainer.training = False
        datamodule.trainer = attached
    return statistics.median(rates[1:])


class Run:
    """Trainer, model and data module of one precision, built by the CLI from the config, in its own folder."""

    def __init__(self, name: str, folder: Path, cli_args: list[str]) -> None:
        self.name, self.folder = name, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.timer = EpochTimer()
        with self.here():
            cli = cli_main(args=[*cli_args, "--trainer.precision", PRECISIONS[name]], run=False)
        self.trainer, self.model, self.datamodule = cli.trainer, cli.model, cli.datamodule
        self.trainer.callbacks.insert(0, self.timer)

    @contextlib.contextmanager
    def here(self):
        """The config's relative paths (checkpoints/, lightning_logs/, predictions/) land in this run's folder."""
        before = Path.cwd()
        os.chdir(self.folder)
        try:
            yield
        finally:
            os.chdir(before)


def synthetic_folder(root: Path, per_class: int) -> Path:
    """A CIFAR-10-shaped image folder of random images, for machines without the data set."""
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", max(per_class // 5, 10))):
        for name in CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            pixels = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator).numpy()
            for i, image in enumerate(pixels):
                Image.fromarray(image).save(root / split / name / f"{i:05d}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cifar_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        benchmark(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    data_dir = args.data_dir or workdir / "synthetic"
    # Generated images get a cache of their own: cached in the repository's, each run would leave ~30 MB there.
    cache_dir = workdir / "cache" if args.synthetic else args.cache_dir
    synthetic_val = 100
    cli_args = [
        "--config", str(args.config), "--data.data_dir", str(data_dir), "--data.cache_dir", str(cache_dir),
        "--trainer.accelerator", args.device, "--trainer.devices", "1",
        "--trainer.max_epochs", str(args.repeats + 1), "--trainer.limit_train_batches", str(args.steps),
        "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0",
        *(["--data.val_size", str(synthetic_val)] if args.synthetic else []),
        *(["--trainer.limit_predict_batches", str(args.predict_batches)] if args.predict_batches else []),
        *args.cli_args,
    ]
    with_bf16, why = native_bf16(args.device)
    names = ["fp32", "bf16"] if with_bf16 else ["fp32"]
    try:  # building parses and checks every setting; no data is read yet
        runs = {name: Run(name, workdir / name, cli_args) for name in names}
    except UserInputError as error:
        fail(str(error).splitlines()[0])
    first = runs["fp32"]
    device = first.trainer.strategy.root_device
    batch_size = first.datamodule.hparams.batch_size
    if args.synthetic:  # enough images for --steps batches an epoch and the held-out set
        synthetic_folder(data_dir, per_class=math.ceil((args.steps * batch_size + synthetic_val) / 10))

    settings = {k: v for k, v in first.model.hparams.items() if not k.startswith("_")}  # drop the CLI's _instantiator
    warmup = min(20, max(2, args.steps))
    raw_steps = max(1, args.steps // 2)
    steppers = {name: raw_stepper(settings, batch_size, device, PRECISIONS[name], warmup) for name in names}
    raw = {name: [] for name in names}
    for _ in range(args.repeats):  # the precisions alternate, so drift of the machine hits both alike
        for name in names:
            raw[name].append(time_raw(steppers[name], batch_size, raw_steps, device))

    predict = {name: [] for name in names}
    for repeat in range(args.repeats + 1):  # the first pass of each warms up
        for name in names:
            rate = time_predict(runs[name])
            if repeat:
                predict[name].append(rate)

    fit, fit_wall, batches = {}, {}, {}
    for name in names:
        run = runs[name]
        with run.here():
            start = time.perf_counter()
            run.trainer.fit(run.model, datamodule=run.datamodule)
            fit_wall[name] = time.perf_counter() - start
        batches[name] = run.trainer.num_training_batches  # --steps, or fewer where the split is smaller
        fit[name] = statistics.median(batches[name] * batch_size / s for s in run.timer.train_seconds[1:])

    for _ in range(args.repeats):
        for name in names:
            raw[name].append(time_raw(steppers[name], batch_size, raw_steps, device))
    data = bench_data(first.trainer, first.datamodule, min(args.steps, len(first.datamodule.train_dataloader())),
                      args.repeats)

    rows = {"raw": {n: statistics.median(raw[n]) for n in names}, "fit": fit,
            "predict": {n: statistics.median(predict[n]) for n in names}}
    hp, dm = first.model.hparams, first.datamodule
    print(f"\nDevice: {device_name(args.device)}; batch {batch_size}, eval batch {dm.eval_batch_size}; "
          f"augmentation {augmentation(dm)}; channels_last {hp.channels_last}; compile {hp.compile}")
    print(f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}; "
          f"config {args.config.name}; data: {'synthetic (random images)' if args.synthetic else data_dir}")
    print(f"bf16: {'timed' if with_bf16 else 'not timed'}, {why}")
    print("fit: " + "; ".join(f"{n} {args.repeats + 1} epochs of {batches[n]} batches in {fit_wall[n]:.0f} s"
                              for n in names) + " (the first epoch is warm-up)")
    print("\n| row | fp32 images/s | bf16 images/s | bf16/fp32 |\n|---|---:|---:|---:|")
    for row, rates in rows.items():
        fp32, bf16 = rates["fp32"], rates.get("bf16")
        bf16_cells = f"{bf16:,.0f} | {bf16 / fp32:.2f}" if bf16 else "- | -"
        print(f"| {row} | {fp32:,.0f} | {bf16_cells} |")
    print(f"| data | {data:,.0f} | | |")
    print()
    if with_bf16:
        print("bf16/fp32: " + ", ".join(f"{row} {rates['bf16'] / rates['fp32']:.2f}" for row, rates in rows.items()))
    for name in names:
        raw_rate = rows["raw"][name]
        print(f"{name}: data/raw {data / raw_rate:.1f}, fit/raw {fit[name] / raw_rate:.2f}")


if __name__ == "__main__":
    main()
