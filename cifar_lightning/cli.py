"""``python -m cifar_lightning {fit,validate,test,predict,calibrate,report,export,serve}``: a small
dispatcher in front of a stock LightningCLI, extended through its public hooks only.

- ``calibrate``, ``report``, ``export`` and ``serve`` are plain functions with typed arguments,
  dispatched before LightningCLI (jsonargparse's ``auto_cli``); ``--help`` lists every subcommand in
  whole sentences and ``--version`` prints the package's version.

- Precision is picked from the hardware when the config leaves it unset (``precision.py``), and
  one line at the start says which, why, and how to override it.
- ``fit`` ends by fitting the kept model's temperature on the hold-out (``TemperatureScaling``), then
  testing the best checkpoint, like Keras' ``restore_best_weights`` followed by ``model.evaluate``
  on the test set.
- ``--ckpt_path`` is read once and checked first, so a missing or foreign file is a clear
  ``CheckpointError``; the same contents give the model's settings and Lightning's restore.
- ``predict`` writes a CSV (``CSVPredictionWriter``) even when the config names no writer.
- The run's ``config.yaml`` goes into its log folder only: with no logger (``predict``,
  ``--trainer.logger false``) nothing is written into the working directory, and ``fit`` leaves
  ``LearningRateMonitor`` out, which refuses to start without a logger.
- Data is downloaded and decoded before Lightning creates the run's log folder; messages a user
  cannot act on (an advert, Lightning's internal deprecations) are silenced by their exact text.
- Reliability (docs/reliability.md): the checkpoint and log folders are checked before any work;
  an interrupted ``fit`` saves ``last.ckpt`` and says how to resume; checkpoints are written
  atomically and carry the random generators' states; ``main`` turns a ``UserInputError`` into
  one message on stderr and exit status 2; after a distributed run it closes the process group
  so the process exits cleanly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import auto_cli
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cifar_lightning.atomic import check_writable
from cifar_lightning.calibration.callback import TemperatureScaling
from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.errors import ConfigError, UserInputError
from cifar_lightning.infer.prediction_writer import CSVPredictionWriter
from cifar_lightning.model.checkpoints import check_checkpoint, check_class_count, model_settings
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.model.weights import resolve_checkpoint
from cifar_lightning.precision import auto_precision, uses_cuda
from cifar_lightning.training.checkpoint_io import AtomicCheckpointIO, RNGStateCheckpoint
from cifar_lightning.training.hparams_summary import HParamsSummary

# Model settings that change how a model runs, not what it computes from its weights: with
# --ckpt_path they come from the command and config, not from the checkpoint's hyperparameters.
RUNTIME_SWITCHES = ("tta_flip", "tta_translate", "channels_last", "compile")
# Of those, the ones whose checkpoint setting holds unless the command line itself names them:
# a checkpoint's temperature is fitted for its own test-time views, whatever a config says.
CHECKPOINT_SWITCHES = ("tta_flip", "tta_translate")

# ckpt_path values Lightning resolves itself rather than reading a file.
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")


DESCRIPTION = (
    "cifar-lightning: train, evaluate and use a PyTorch Lightning reimplementation of a classic Keras "
    "CIFAR-10 CNN (420,842 parameters). Start with: fit --config configs/base.yaml --data.data_dir DIR. "
    "SUBCOMMAND --help lists a subcommand's options."
)

# The subcommands in --help, in whole sentences (Lightning shows the first line of Trainer's docstrings).
SUBCOMMANDS = {
    "fit": "Train a model (configs/base.yaml: the original recipe; configs/fast.yaml: a faster one), "
           "then test its best or final checkpoint.",
    "validate": "Score a checkpoint (--ckpt_path) on the images held out from training.",
    "test": "Score a checkpoint (--ckpt_path) on the 10,000 test images.",
    "predict": "Classify the test split, or a folder of any images (--data.predict_dir), into a CSV file.",
}
# Subcommands that are plain functions rather than Trainer methods: name -> (module, function, help).
FUNCTION_SUBCOMMANDS = {
    "calibrate": ("cifar_lightning.calibration.command", "calibrate",
                  "Fit a checkpoint's temperature on held-out images (never the test split) and write a "
                  "checkpoint that carries it."),
    "report": ("cifar_lightning.report.command", "make_report",
               "Draw a trained model's pictures: examples, training curves, predictions, confusion matrix."),
    "export": ("cifar_lightning.infer.export", "export_onnx",
               "Write a checkpoint as an ONNX file: uint8 images in, class probabilities out (docs/deploy.md)."),
    "serve": ("cifar_lightning.serve.server", "serve",
              "Serve a checkpoint over HTTP with LitServe: POST /predict, a web page at /, /health (docs/deploy.md)."),
}


def version() -> str:
    """The installed package's version (``pyproject.toml``)."""
    try:
        return importlib.metadata.version("cifar-lightning")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def overview() -> argparse.ArgumentParser:
    """The top-level ``--help``: the tool and every subcommand in a sentence, the Trainer's and ours.
    Each subcommand parses its own options (``SUBCOMMAND --help``)."""
    parser = argparse.ArgumentParser(prog=program_name(), description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subcommands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    for name, description in {**SUBCOMMANDS, **{k: v[2] for k, v in FUNCTION_SUBCOMMANDS.items()}}.items():
        subcommands.add_parser(name, help=description)
    return parser


def program_name() -> str:
    """What the user typed to run us: ``python -m cifar_lightning`` or the console script's name."""
    name = Path(sys.argv[0]).name
    return "python -m cifar_lightning" if name == "__main__.py" else name


class SaveConfigToLog(SaveConfigCallback):
    """Lightning's config saving, into the run's log folder only. With no logger Lightning writes
    ``config.yaml`` into the working directory instead (its ``log_dir`` falls back to it), where
    each ``predict`` would overwrite the last one and leave a stray file in a checkout."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.loggers:
            super().setup(trainer, pl_module, stage)


class RUNNING:
    """The CLI being run, so that ``cli_main`` can say how to resume a ``fit`` that a signal stopped."""

    cli: CIFAR10CLI | None = None


class CIFAR10CLI(LightningCLI):
    """Lightning's CLI through its public hooks: the checkpoint named by ``--ckpt_path`` is read once
    (checked here, its hyperparameters applied here, handed to Lightning's restore through
    ``AtomicCheckpointIO``), the precision picked from the hardware, the data loaded before the log
    folder exists, and ``fit`` followed by a test of what it kept."""

    def __init__(self, *cli_args: Any, args: list[str] | None = None, **kwargs: Any) -> None:
        self.checkpoint: dict | None = None  # the --ckpt_path file's contents, read once
        self.ckpt_path: str | None = None
        RUNNING.cli = self  # for the resume notice, should the run be stopped (cli_main)
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION, "prog": program_name(),
                                            **{name: {"description": text} for name, text in SUBCOMMANDS.items()}})
        super().__init__(*cli_args, args=args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        """Read an explicit ``--ckpt_path`` file once: check it (a clear ``CheckpointError``, not a
        traceback), take the model's settings from its hyperparameters (as Lightning would, keeping
        ``RUNTIME_SWITCHES`` as given: ``test --ckpt_path X --model.tta_flip true`` must not silently
        evaluate without the flip; ``CHECKPOINT_SWITCHES`` only where the command line names them),
        and keep its contents for Lightning's restore. The path is set aside until
        ``before_instantiate_classes``, so Lightning does not read the file for the hyperparameters again."""
        super().parse_arguments(parser, args)
        self.argv = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path).split(":")[0] in SPECIAL_CKPT_PATHS:
            return
        self.checkpoint, self.ckpt_path = check_checkpoint(ckpt_path), str(resolve_checkpoint(ckpt_path))
        model = self.config[subcommand].get("model")
        given = {name: model.get(name) for name in RUNTIME_SWITCHES} if model else {}
        named = {arg.split("=")[0] for arg in self.argv or ()}
        for name in CHECKPOINT_SWITCHES:
            if f"--model.{name}" not in named:
                given.pop(name, None)
        hparams = model_settings(self.checkpoint)
        hparams.update({name: value for name, value in given.items() if value is not None})
        self.config = parser.parse_object({subcommand: {"model": hparams, "ckpt_path": None}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.ckpt_path is not None:
            config.ckpt_path = self.ckpt_path  # for the Trainer, which restores from the contents already read
        trainer = config.trainer
        if self.subcommand == "predict":
            trainer.logger = False  # predict logs nothing: no empty version_N folder per prediction
        if trainer.precision is None:
            trainer.precision, why = auto_precision(trainer.accelerator)
            rank_zero_info(f"Precision {trainer.precision}: {why}. Override with --trainer.precision "
                           f"({'32-true' if trainer.precision != '32-true' else 'bf16-mixed'}, for example).")
        if uses_cuda(trainer.accelerator):
            # Fixed input shapes: let cuDNN pick the fastest kernels, unless bitwise determinism was asked for.
            if trainer.benchmark is None and not trainer.deterministic:
                trainer.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left

    def instantiate_trainer(self, **kwargs: Any):
        """Add ``AtomicCheckpointIO`` unless the config names its own checkpoint plugin; it hands
        Lightning's restore the ``--ckpt_path`` contents already read."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config["trainer"].get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            preloaded = {self.ckpt_path: self.checkpoint} if self.checkpoint is not None else {}
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO(preloaded)]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Check the places fit writes to, and that model and data agree, before any work is done."""
        trainer = self.trainer
        folders = [("checkpoints", cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        folders += [("logs", lg.save_dir) for lg in trainer.loggers if getattr(lg, "save_dir", None)]
        check_writable(folders)
        if not trainer.loggers:  # --trainer.logger false: no rate to log, and the monitor refuses to start
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        if self.datamodule.hparams.val_size == 0:
            monitors = sorted({cb.monitor for cb in trainer.callbacks if getattr(cb, "monitor", None)})
            if any(monitor.startswith("val/") for monitor in monitors):
                raise ConfigError(f"val_size 0 holds out no images, but {', '.join(monitors)} is monitored "
                                  "(EarlyStopping or ModelCheckpoint): hold out some images, or use a config "
                                  "that monitors nothing (configs/fast.yaml).")
        self.before_validate()

    def before_validate(self) -> None:
        source = f"taken from the checkpoint {self.ckpt_path}" if self.ckpt_path else "model.class_names"
        check_class_count(len(self.model.class_names), len(self.datamodule.classes), source)
        self.load_data()

    before_test = before_validate

    def before_predict(self) -> None:
        """Predictions go to a CSV even when the config adds no prediction writer."""
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(CSVPredictionWriter())
        self.load_data()

    def load_data(self) -> None:
        """Download and decode before Lightning creates the run's log folder, so that bad data is an
        error with no empty ``version_N`` left behind; ``fit`` reads the test split too, so a broken
        one stops it before training, not after. Only where this process launches any others (one
        process, or Lightning's own launcher, whose ranks start later and find it done): ranks that
        torchrun or SLURM start together leave it to Lightning (rank 0 downloads, the others wait)."""
        environment = getattr(self.trainer.strategy, "cluster_environment", None)  # None: one process
        if environment is not None and environment.creates_processes_externally:
            return
        data = self.datamodule
        if not (self.subcommand == "predict" and data.hparams.predict_dir is not None):
            data.prepare_data()  # a folder to predict needs no CIFAR-10
        data.setup(self.subcommand)
        if self.subcommand == "fit":
            data.setup("test")

    def resume_notice(self, signum: signal.Signals) -> str:
        """What was interrupted, what was saved, and the command that resumes."""
        trainer = self.trainer
        what = f"Training stopped by {signum.name} at epoch {trainer.current_epoch}, step {trainer.global_step}."
        candidates = [path for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)
                      for path in Path(cb.dirpath).glob("last*.ckpt")]  # what --ckpt_path last picks from
        if not candidates:
            return f"{what} No checkpoint was saved yet, so running the command again starts from scratch."
        last = max(candidates, key=lambda path: path.stat().st_mtime)
        saved_now = any(getattr(cb, "save_on_exception", False) for cb in trainer.checkpoint_callbacks)
        saved = "Saved" if saved_now else "The latest checkpoint is"
        command = "the same command with --ckpt_path last"
        if self.argv is not None:
            args, skip = [], False
            for arg in self.argv:  # drop an earlier --ckpt_path, then ask for the last checkpoint
                if skip or arg.startswith("--ckpt_path"):
                    skip = arg == "--ckpt_path"
                    continue
                args.append(arg)
            command = f"{program_name()} " + shlex.join([*args, "--ckpt_path", "last"])
        return f"{what} {saved} {last}. Resume with:\n  {command}"

    def after_fit(self) -> None:
        """Test the result in the same command, as the original evaluates its restored weights: the best
        checkpoint where one is chosen by a score (base.yaml), else the final weights as they are in
        memory (fast.yaml; with weight averaging, the average, which is also what its checkpoint holds)."""
        trainer = self.trainer
        if trainer.interrupted or trainer.fast_dev_run:
            return
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.monitor else ""
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if trainer.is_global_zero and results and "test/acc" in results[0]:  # none with limit_test_batches 0
            saved = checkpoint.last_model_path or checkpoint.best_model_path if checkpoint is not None else ""
            where = f"best checkpoint {best}" if best else f"final weights{f' ({saved})' if saved else ''}"
            print(f"Test accuracy of the {where}: {results[0]['test/acc']:.4f}")


class DropMessages(logging.Filter):
    """Drops log records that start with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_lightning() -> None:
    """Silence, by their exact text, messages of Lightning's that a user of this CLI cannot act on:
    an advert for a cloud logger; a deprecation inside Lightning's own code (``LeafSpec``, torch
    2.10+); the model summary's note that it sizes bf16-mixed models as fp32; the weight-averaging
    callback's notes that it averages only in fit and cannot average sharded layers (we shard none); the empty validation loader of
    ``val_size 0``, which is what was asked for. Nothing else."""
    advert = DropMessages("\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud logging")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(advert)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
    # Testing or predicting from a checkpoint with configs/fast.yaml, whose callbacks average weights in fit only.
    warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback, but loading a checkpoint outside")
    # ...and its caution about sharded layers: our configure_model only compiles, it shards nothing.
    warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback with a model that overrides the configure_model")
    # data.val_size 0 (configs/fast.yaml) returns no validation loader on purpose.
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")


def cli_main(args: list[str] | None = None, run: bool = True) -> CIFAR10CLI | dict:
    """The CLI; ``run=False`` only builds trainer, model and data module from the config (for scripts).

    Errors in what the user gave propagate as ``UserInputError``; ``main`` turns them into a message.
    """
    quiet_lightning()
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        overview().parse_args(argv or ["--help"])  # prints the overview or the version, and exits
    if argv[0] in FUNCTION_SUBCOMMANDS:
        if argv[0] == "calibrate" and any(arg.split("=")[0] == "--config" for arg in argv[1:]):
            # jsonargparse would read the fit config as calibrate's own options and name a trainer option.
            raise UserInputError("calibrate takes the fit config whose hold-out it uses as --fit_config "
                                 "(e.g. --fit_config configs/base.yaml), not --config.")
        module, function, description = FUNCTION_SUBCOMMANDS[argv[0]]
        run_function = getattr(importlib.import_module(module), function)
        return auto_cli(run_function, args=argv[1:], as_positional=False,
                        prog=f"{program_name()} {argv[0]}", description=description)
    RUNNING.cli = None
    try:
        return CIFAR10CLI(
            CIFAR10Classifier,
            CIFAR10DataModule,
            save_config_callback=SaveConfigToLog,
            save_config_kwargs={"overwrite": True},
            # Always added, whatever the config.
            trainer_defaults={"callbacks": [RNGStateCheckpoint(), TemperatureScaling(), HParamsSummary()]},
            args=args,
            run=run,
        )
    except (SystemExit, KeyboardInterrupt) as stop:
        # Lightning ends an interrupted fit itself: SIGTERM raises SIGTERMException after the current
        # batch, Ctrl-C calls sys.exit(1); both after ModelCheckpoint(save_on_exception=True) has saved.
        cli = RUNNING.cli
        trainer = getattr(cli, "trainer", None)
        if cli is None or getattr(cli, "subcommand", None) != "fit" or trainer is None or not trainer.interrupted:
            raise
        signum = signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT
        if trainer.is_global_zero:
            print(cli.resume_notice(signum), file=sys.stderr)
        raise SystemExit(128 + signum) from None


def find_user_error(error: BaseException | None) -> UserInputError | None:
    """The ``UserInputError`` that caused ``error``, if any (jsonargparse re-raises what a class in
    the config raised, e.g. an augmentation's range check, as a ValueError of its own)."""
    while error is not None and not isinstance(error, UserInputError):
        error = error.__cause__ or error.__context__
    return error


def main(args: list[str] | None = None) -> None:
    """``python -m cifar_lightning``: a ``UserInputError`` (bad data, settings, checkpoint or folder)
    is one line on stderr and exit status 2, like a command-line error, instead of a traceback."""
    try:
        cli_main(args)
    except ValueError as error:  # UserInputError is one; jsonargparse wraps ours raised by nested classes
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None
    # Lightning's DDP leaves the process group alive. Left to interpreter shutdown, gloo's worker
    # threads can abort the process (SIGABRT, "terminate called without an active exception") after
    # all work is done, so close it here, on success only: after an error another rank may still be
    # in a collective, and destroying the group would wait for it.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
