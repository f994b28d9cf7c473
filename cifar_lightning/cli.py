"""``python -m cifar_lightning {fit,validate,test,predict,report}``: LightningCLI with a few additions.

- Precision is picked from the hardware when the config leaves it unset: bf16 (or fp16)
  mixed precision on a GPU, full precision on a CPU, so one YAML serves both.
- ``fit`` ends by testing the best checkpoint, like Keras' ``restore_best_weights`` followed by
  ``model.evaluate`` on the test set.
- ``--ckpt_path`` is checked first, so a missing or foreign file is a clear ``CheckpointError``.
- ``predict`` writes a CSV (``CSVPredictionWriter``) even when the config names no writer.
- ``report`` (pictures of a checkpoint, see ``report.py``) is its own small typed command.
"""

from __future__ import annotations

import sys

import torch
from jsonargparse import auto_cli
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI

from cifar_lightning.checkpoints import check_checkpoint
from cifar_lightning.datamodule import CIFAR10DataModule
from cifar_lightning.module import CIFAR10Classifier
from cifar_lightning.prediction_writer import CSVPredictionWriter
from cifar_lightning.report import make_report

# ckpt_path values Lightning resolves itself rather than reading a file.
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")


def uses_cuda(accelerator: object) -> bool:
    return str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def auto_precision(accelerator: object) -> str:
    """Mixed precision where a CUDA GPU will be used, full precision otherwise."""
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class CIFAR10CLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        """Check ``--ckpt_path`` before Lightning reads hyperparameters from it (a traceback on a wrong file)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path).split(":")[0] not in SPECIAL_CKPT_PATHS:
            check_checkpoint(ckpt_path)

    def before_predict(self) -> None:
        """Predictions go to a CSV even when the config adds no prediction writer."""
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(CSVPredictionWriter())

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.precision is None:
            trainer.precision = auto_precision(trainer.accelerator)
        if uses_cuda(trainer.accelerator):
            # Fixed input shapes: let cuDNN pick the fastest kernels, unless bitwise determinism was asked for.
            if trainer.benchmark is None and not trainer.deterministic:
                trainer.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left

    def after_fit(self) -> None:
        """Test the best checkpoint in the same command, as the original evaluates its restored weights."""
        trainer = self.trainer
        if trainer.interrupted or trainer.fast_dev_run:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if trainer.is_global_zero and results:
            where = f"best checkpoint {best}" if best else "final weights (no checkpoint was kept)"
            print(f"Test accuracy of the {where}: {results[0]['test/acc']:.4f}")


def cli_main(args: list[str] | None = None, run: bool = True) -> CIFAR10CLI | dict:
    """The CLI; ``run=False`` only builds trainer, model and data module from the config (for scripts)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["report"]:
        return auto_cli(make_report, args=argv[1:], as_positional=False)
    return CIFAR10CLI(
        CIFAR10Classifier,
        CIFAR10DataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
