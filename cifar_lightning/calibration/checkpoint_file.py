"""A calibrated checkpoint file: a checkpoint's contents with a temperature (and how it was fitted)
written into them, the one place that changes a checkpoint after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar_lightning.atomic import save_atomically


def write_temperature(checkpoint: dict, destination: str | Path, temperature: float,
                      record: dict[str, Any] | None = None, tta_flip: bool | None = None,
                      tta_translate: int | None = None) -> None:
    """Write a checkpoint's contents (as read from its file) with its temperature set
    (``hyper_parameters``) and how it was fitted (``"calibration"``), atomically; every other key is
    kept as it was. ``tta_flip``: the flip-averaging setting the temperature was fitted for, set with
    it (None keeps the checkpoint's), and ``tta_translate`` alike. The dictionary given is not changed."""
    checkpoint = {**checkpoint, "hyper_parameters": dict(checkpoint.get("hyper_parameters") or {})}
    hyper_parameters = checkpoint["hyper_parameters"]
    hyper_parameters["temperature"] = float(temperature)
    if tta_flip is not None:
        hyper_parameters["tta_flip"] = bool(tta_flip)
    if tta_translate is not None:
        hyper_parameters["tta_translate"] = int(tta_translate)
    checkpoint["calibration"] = {**(record or {"temperature": float(temperature)}),
                                 "tta_flip": bool(hyper_parameters.get("tta_flip", False)),
                                 "tta_translate": int(hyper_parameters.get("tta_translate", 0))}
    save_atomically(checkpoint, destination)
