"""The images a checkpoint never trained on, to fit and judge its temperature: the hold-out of the
training split a ``fit`` config describes (its data settings read as the CLI reads them, the data
module's defaults for the rest), checked against the data settings the checkpoint records. Used by
``calibrate`` and by the calibration benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.errors import ConfigError, UserInputError

DATAMODULE_KEY = CIFAR10DataModule.CHECKPOINT_HYPER_PARAMS_KEY  # "datamodule_hyper_parameters"


def config_data(config: str | None) -> dict[str, Any]:
    """The data module's settings that a ``fit`` config (YAML) gives, the data module's own defaults
    for the rest (parsed by jsonargparse against ``CIFAR10DataModule``'s signature, as the CLI parses
    them); the defaults alone without a config. The augmentation is not read: no hold-out uses it."""
    section: dict[str, Any] = {}
    if config is not None:
        path = Path(config).expanduser()
        if not path.is_file():
            raise UserInputError(f"No config file at {path}. Pass --fit_config a fit config, e.g. configs/base.yaml.")
        try:
            data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        except (yaml.YAMLError, AttributeError) as error:
            raise UserInputError(f"{path} is not a YAML config with a data section ({type(error).__name__}).") from None
        section = dict(data.get("init_args", data)) if isinstance(data, dict) else {}
        section.pop("augment", None)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CIFAR10DataModule, "data", skip={"augment"})
    try:
        return vars(parser.parse_object({"data": section}).data)
    except ArgumentError as error:
        raise UserInputError(f"The data section of {config} does not fit the data module: {error}") from None


def check_never_trained_on(checkpoint: dict, val_size: int, seed: int, ckpt_path: str) -> None:
    """Refuse a hold-out the checkpoint trained on, where the checkpoint records its data settings
    (checkpoints written by ``fit`` do; stripped ones may not)."""
    trained = checkpoint.get(DATAMODULE_KEY) or {}
    if "val_size" not in trained:
        return
    if trained["val_size"] == 0:
        raise UserInputError(
            f"{ckpt_path} was trained on every training image (data.val_size 0), so no hold-out of the "
            "training split is unseen by it. Pass --image_dir a folder of labelled images it never saw, "
            "or --temperature fitted on a run of the same recipe that held images out."
        )
    if (trained["val_size"], trained.get("seed", 0)) != (val_size, seed):
        raise UserInputError(
            f"{ckpt_path} held out data.val_size {trained['val_size']} with data.seed {trained.get('seed', 0)}, "
            f"not val_size {val_size} with seed {seed}: another hold-out would include images it trained on. "
            f"Pass --val_size {trained['val_size']} --seed {trained.get('seed', 0)} (or --fit_config, the config it was trained with)."
        )


def holdout_batches(data: dict[str, Any], data_dir: str | None, val_size: int, seed: int,
                    cache_dir: str | None) -> Iterable:
    """Batches of the hold-out of the training split, as ``fit`` holds it out."""
    if val_size <= 0:
        raise ConfigError(f"val_size {val_size} holds out no images to fit a temperature on: pass --val_size "
                          "(the images the checkpoint was not trained on), or --image_dir.")
    datamodule = CIFAR10DataModule(
        data_dir=data_dir or data["data_dir"], download=False, val_size=val_size, seed=seed,
        augment=None, cache_dir=cache_dir,
    )
    datamodule.setup("validate")  # the training split only: the test split is never read
    return datamodule.val_dataloader()
