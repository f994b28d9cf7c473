"""``python -m cifar_lightning calibrate``: give an existing checkpoint a temperature, fitted on images
it never trained on (a config's hold-out, or a folder of labelled images; never the test split), and
write a copy of it that carries the temperature. ``fit`` does the same at its end when it holds images
out; this is for checkpoints that were trained before, or on every training image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from cifar_lightning.calibration import calibrate_logits, collect_view_logits, is_valid_temperature, write_temperature
from cifar_lightning.checkpoint_io import check_output_file
from cifar_lightning.checkpoints import check_checkpoint, load_classifier
from cifar_lightning.datamodule import CIFAR10DataModule
from cifar_lightning.errors import ConfigError, UserInputError
from cifar_lightning.predict import read_predict_folder

DATAMODULE_KEY = CIFAR10DataModule.CHECKPOINT_HYPER_PARAMS_KEY  # "datamodule_hyper_parameters"


def config_data(config: str | None) -> dict[str, Any]:
    """The ``data:`` section of a ``fit`` config (YAML), or {} without a config."""
    if config is None:
        return {}
    path = Path(config).expanduser()
    if not path.is_file():
        raise UserInputError(f"No config file at {path}. Pass --fit_config a fit config, e.g. configs/base.yaml.")
    try:
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError) as error:
        raise UserInputError(f"{path} is not a YAML config with a data section ({type(error).__name__}).") from None
    return data.get("init_args", data) if isinstance(data, dict) else {}


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
        data_dir=data_dir or data.get("data_dir", "data"), download=False, val_size=val_size, seed=seed,
        augment=None, cache_dir=data.get("cache_dir", cache_dir),
    )
    datamodule.setup("validate")  # the training split only: the test split is never read
    return datamodule.val_dataloader()


def calibrate(
    ckpt_path: str,
    output: str,
    fit_config: str | None = None,
    data_dir: str | None = None,
    val_size: int | None = None,
    seed: int | None = None,
    image_dir: str | None = None,
    temperature: float | None = None,
    tta_flip: bool | None = None,
    overwrite: bool = False,
    cache_dir: str | None = ".cache/cifar_lightning",
    batch_size: int = 500,
    device: str = "auto",
) -> Path:
    """Fit a checkpoint's temperature on held-out images and write a checkpoint that carries it.

    The temperature divides the logits before the softmax of every probability the model gives; it
    is fitted by minimising the negative log-likelihood on images the model never trained on: the
    hold-out of the training split that a fit config describes (``--fit_config``, with ``--data_dir``,
    ``--val_size`` and ``--seed`` overriding its data section), or ``--image_dir``, a folder of
    images in sub-folders named after their class. The test split is never read. The new file is
    the input with the temperature set, written whole or not at all; prints the temperature and
    the hold-out's ECE and NLL before and after.

    Args:
        ckpt_path: The checkpoint to calibrate (e.g. checkpoints/cifar10_cnn.ckpt).
        output: Where to write the calibrated checkpoint.
        fit_config: A fit config (YAML, e.g. configs/base.yaml) whose data section gives the hold-out
            (data_dir, val_size, seed).
        data_dir: Folder holding CIFAR-10 (overrides the config's data.data_dir; default data).
        val_size: Training images held out (overrides the config's; use the checkpoint's own).
        seed: Seed of the hold-out from image folders (overrides the config's; default 0).
        image_dir: Instead of a hold-out: a folder of labelled images (<class>/<file>) never trained on.
        temperature: Instead of fitting: write this temperature (e.g. one fitted on the hold-out of a
            run of the same recipe, for a model trained on every training image).
        tta_flip: Fit the temperature for the model with flip averaging on (true) or off (false), and
            write that setting into the new checkpoint: a temperature fits one setting. Default: the
            checkpoint's own.
        overwrite: Allow --output to be the input checkpoint itself.
        cache_dir: Cache of decoded images (as for --data.cache_dir); None: no cache.
        batch_size: Images per forward pass.
        device: auto (a GPU when there is one), cpu or cuda.
    """
    checkpoint = check_checkpoint(ckpt_path)
    out = check_output_file(output, "the calibrated checkpoint", "calibrated.ckpt")
    if out.resolve() == Path(ckpt_path).expanduser().resolve() and not overwrite:
        raise UserInputError(f"--output {output} is the input checkpoint: pass another --output, or "
                             "--overwrite true to replace it.")
    given_data = any(value is not None for value in (fit_config, data_dir, val_size, seed))
    if temperature is not None:
        if given_data or image_dir is not None:
            raise UserInputError("--temperature sets the temperature without fitting it: leave out --fit_config, "
                                 "--data_dir, --val_size, --seed and --image_dir, or leave out --temperature.")
        if not is_valid_temperature(temperature):
            raise ConfigError(f"--temperature must be a finite number greater than 0, got {temperature}.")
        write_temperature(ckpt_path, out, temperature, {"temperature": float(temperature),
                                                         "fitted_on": "given to calibrate --temperature"}, tta_flip)
        print(f"Wrote {out} with temperature {temperature:.4f} (given, not fitted).")
        return out
    if image_dir is not None and given_data:
        raise UserInputError("Pass either --image_dir or a hold-out (--fit_config, --data_dir, --val_size, --seed), not both.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_classifier(ckpt_path, map_location=device)
    if tta_flip is not None:
        model.hparams.tta_flip = tta_flip
    if image_dir is not None:
        folder = read_predict_folder(image_dir, model.class_names)
        known = folder.labels >= 0
        if not known.any():
            raise UserInputError(f"None of the images in {image_dir} is in a folder named after its class "
                                 f"({', '.join(model.class_names)}), so none can score a temperature.")
        images, labels = folder.images[known], folder.labels[known]
        batches = list(zip(images.split(batch_size), labels.split(batch_size)))
        fitted_on = f"{int(known.sum())} labelled images of {Path(image_dir).name}/"
    else:
        data = config_data(fit_config)
        val_size = int(data.get("val_size", 10000) if val_size is None else val_size)  # the data module's defaults
        seed = int(data.get("seed", 0) if seed is None else seed)
        check_never_trained_on(checkpoint, val_size, seed, ckpt_path)
        batches = holdout_batches(data, data_dir, val_size, seed, cache_dir)
        fitted_on = f"the hold-out of the training split (data.val_size {val_size}, data.seed {seed})"
    view_logits, labels = collect_view_logits(model, batches)
    result = calibrate_logits(view_logits, labels, float(model.hparams.temperature), fitted_on)
    write_temperature(ckpt_path, out, result.temperature, result.record(), bool(model.hparams.tta_flip))
    print(f"{result.summary()}\nWrote {out}")
    return out
