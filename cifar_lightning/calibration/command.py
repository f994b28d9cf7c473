"""``python -m cifar_lightning calibrate``: give an existing checkpoint a temperature, fitted on images
it never trained on (a config's hold-out, or a folder of labelled images; never the test split), and
write a copy of it that carries the temperature. ``fit`` does the same at its end when it holds images
out; this is for checkpoints that were trained before, or on every training image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cifar_lightning.atomic import check_output_file
from cifar_lightning.calibration.checkpoint_file import write_temperature
from cifar_lightning.calibration.holdout import (
    check_never_trained_on,
    config_data,
    holdout_batches,
)
from cifar_lightning.calibration.temperature import (
    calibrate_logits,
    collect_view_logits,
)
from cifar_lightning.data.folders import read_predict_folder
from cifar_lightning.errors import ConfigError, UserInputError
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import classifier_from_checkpoint
from cifar_lightning.model.probabilities import is_valid_temperature
from cifar_lightning.model.weights import resolve_checkpoint


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
    tta_translate: int | None = None,
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
        ckpt_path: The checkpoint to calibrate (e.g. cifar_lightning/weights/cifar10_cnn.ckpt).
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
        tta_translate: Fit it for the model with each view also shifted by this many pixels both ways
            (0: off), and write that setting too. Default: the checkpoint's own.
        overwrite: Allow --output to be the input checkpoint itself.
        cache_dir: Cache of decoded images (as for --data.cache_dir); None: no cache.
        batch_size: Images per forward pass.
        device: auto (a GPU when there is one), cpu or cuda.
    """
    checkpoint = check_checkpoint(ckpt_path)
    out = check_output_file(output, "the calibrated checkpoint", "calibrated.ckpt")
    if out.resolve() == resolve_checkpoint(ckpt_path).resolve() and not overwrite:
        raise UserInputError(f"--output {output} is the input checkpoint: pass another --output, or "
                             "--overwrite true to replace it.")
    given_data = any(value is not None for value in (fit_config, data_dir, val_size, seed))
    if temperature is not None:
        if given_data or image_dir is not None:
            raise UserInputError("--temperature sets the temperature without fitting it: leave out --fit_config, "
                                 "--data_dir, --val_size, --seed and --image_dir, or leave out --temperature.")
        if not is_valid_temperature(temperature):
            raise ConfigError(f"--temperature must be a finite number greater than 0, got {temperature}.")
        write_temperature(checkpoint, out, temperature, {"temperature": float(temperature),
                                                         "fitted_on": "given to calibrate --temperature"}, tta_flip,
                          tta_translate)
        print(f"Wrote {out} with temperature {temperature:.4f} (given, not fitted).")
        return out
    if image_dir is not None and given_data:
        raise UserInputError("Pass either --image_dir or a hold-out (--fit_config, --data_dir, --val_size, --seed), not both.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = classifier_from_checkpoint(checkpoint, map_location=device)
    if tta_flip is not None:
        model.hparams.tta_flip = tta_flip
    if tta_translate is not None:
        model.hparams.tta_translate = tta_translate
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
        val_size = int(data["val_size"] if val_size is None else val_size)
        seed = int(data["seed"] if seed is None else seed)
        check_never_trained_on(checkpoint, val_size, seed, ckpt_path)
        batches = holdout_batches(data, data_dir, val_size, seed, cache_dir)
        fitted_on = f"the hold-out of the training split (data.val_size {val_size}, data.seed {seed})"
    view_logits, labels = collect_view_logits(model, batches)
    result = calibrate_logits(view_logits, labels, float(model.hparams.temperature), fitted_on)
    write_temperature(checkpoint, out, result.temperature, result.record(), bool(model.hparams.tta_flip),
                      int(model.hparams.get("tta_translate", 0)))
    print(f"{result.summary()}\nWrote {out}")
    return out
