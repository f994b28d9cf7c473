"""Predictions to a CSV file, one row per image, through Lightning's ``BasePredictionWriter``.

Rows are collected batch by batch (only a few strings per image), gathered from every process
and written once by rank zero, so the file is complete and never written twice.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

TOP_K = 3
COLUMNS = ["image", "predicted", "probability", "top2", "top2_probability", "top3", "top3_probability",
           "true_class", "correct"]


class CSVPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to a CSV and prints where it went and, where labels exist, the accuracy.

    Columns: ``image`` (file path, or index in the test split), ``predicted`` and its ``probability``
    (the model's calibrated ``predict_proba``, to six decimals),
    the 2nd and 3rd most likely classes with probabilities, ``true_class`` and ``correct`` (empty
    where the true class is unknown).

    Args:
        output: CSV file to write (folders are created; an existing file is replaced).
    """

    def __init__(self, output: str = "predictions/predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.rows: list[list[Any]] = []
        self.accuracy: float | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.accuracy = [], None

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Tensor,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        names = list(pl_module.class_names)
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            _, labels, ids = batch
            labels = labels.tolist()
        else:  # a plain batch without names: number the rows
            start = len(self.rows)
            ids, labels = [str(start + i) for i in range(len(prediction))], [-1] * len(prediction)
        probs, classes = prediction.float().topk(min(TOP_K, len(names)), dim=-1)
        for image, label, p, c in zip(ids, labels, probs.tolist(), classes.tolist()):
            top = [value for k in range(len(c)) for value in (names[c[k]], f"{p[k]:.6f}")]
            top += [""] * (2 * TOP_K - len(top))
            known = label >= 0
            self.rows.append([image, *top, names[label] if known else "", int(c[0] == label) if known else ""])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = ""
        rows = self.rows
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[list[list[Any]]] = [[] for _ in range(trainer.world_size)]
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero:
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        labelled = [row[-1] for row in rows if row[-1] != ""]
        message = f"Wrote {len(rows)} predictions to {self.output.resolve()}"
        if labelled:
            self.accuracy = sum(labelled) / len(labelled)
            message += f"\nAccuracy on the {len(labelled)} images with a known class: {self.accuracy:.4f}"
        skipped = getattr(trainer.datamodule, "skipped_files", None) if trainer.datamodule else None
        if skipped:
            message += f"\nSkipped {len(skipped)} file(s) that are not readable images:\n  " + "\n  ".join(skipped)
        self.summary = message

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The summary, printed here rather than in ``on_predict_end``: after the progress bar is closed."""
        if stage == "predict" and getattr(self, "summary", ""):
            print(self.summary)
            self.summary = ""
