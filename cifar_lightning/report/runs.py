"""Reading training runs back: the scalar curves of a run's TensorBoard event files (with
TensorBoard's own ``EventAccumulator``), which of a log folder's runs trained, a resumed run's parts
joined into one, a Keras History CSV (the original's ``docs/original/history.csv``), and the HParams
summary of a run recorded before runs logged one (``write_hparams_summary``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from cifar_lightning.errors import UserInputError
from cifar_lightning.report.figures import best_point
from cifar_lightning.summary_writer import hparams_summaries
from cifar_lightning.training.hparams_summary import SCORES, score_tag

CURVE_TAGS = ("train/loss", "val/loss", "train/acc", "val/acc")
# What marks the log of a `fit` run: `test`, `validate` and `predict` runs and failed starts lack one or both.
TRAINING_TAGS = ("train/loss",)  # val/acc too unless the run held nothing out (data.val_size 0)
# Columns of a Keras History saved as CSV (docs/original/history.csv): epochs counted from 1.
HISTORY_COLUMNS = ("epoch", "val_accuracy")

Curves = dict[str, tuple[list[int], list[float]]]


def run_started(run_dir: Path) -> float:
    """When a run began logging: the Unix time in its event files' names (``events.out.tfevents.<time>.<host>...``),
    which survives copying a log elsewhere, unlike the files' modification times."""
    times = []
    for path in run_dir.glob("events.out.tfevents.*"):
        try:
            times.append(float(path.name.split(".")[3]))
        except (IndexError, ValueError):
            times.append(path.stat().st_mtime)
    return min(times)


def find_run_dirs(log_dir: str | Path) -> list[Path]:
    """The folders with event files under ``log_dir`` (itself included), newest first."""
    root = Path(log_dir).expanduser()
    runs = {path.parent for path in root.rglob("events.out.tfevents.*")}
    if not runs:
        raise UserInputError(f"No TensorBoard event files under {root}. Pass --log_dir the logger's folder "
                             "(e.g. lightning_logs/base) or one run in it (e.g. lightning_logs/base/version_0).")
    return sorted(runs, key=lambda run: (run_started(run), str(run)), reverse=True)


def scalar_curves(run_dir: str | Path) -> Curves:
    """Per-epoch ``train/*`` and ``val/*`` scalars of one run as {tag: (epochs, values)}; {} if it has none.

    Lightning logs an ``epoch`` scalar at every step it logs, which maps steps to epochs.
    """
    # SCALARS 0: keep every point. Pictures are not drawn from, so keep one of each.
    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0, IMAGES: 1}).Reload()
    tags = set(events.Tags()["scalars"])
    step_epoch = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in CURVE_TAGS:
        if tag in tags:
            points = events.Scalars(tag)
            curves[tag] = ([step_epoch.get(e.step, i) for i, e in enumerate(points)], [e.value for e in points])
    return curves


def read_curves(run_dir: str | Path) -> Curves:
    """``scalar_curves`` of a run that has some, else a ``UserInputError``."""
    curves = scalar_curves(run_dir)
    if not curves:
        raise UserInputError(f"The event files in {run_dir} hold none of {', '.join(CURVE_TAGS)}; "
                             "is this the log of a `fit` run?")
    return curves


def epochs_of(curves: Curves) -> list[int]:
    return [epoch for epochs, _ in curves.values() for epoch in epochs]


def find_training_runs(log_dir: str | Path) -> list[tuple[Path, Curves]]:
    """The newest ``fit`` under ``log_dir`` as [(run folder, its curves)], oldest first.

    Runs without ``train/loss`` are passed over: a ``test``, ``validate`` or
    ``predict`` command or a failed start can leave a newer ``version_N`` without them. A fit
    resumed with ``--ckpt_path last`` logs into a new folder from its checkpoint's epoch on, so
    the older runs whose epochs lead up to its first are returned before it.
    """
    runs = find_run_dirs(log_dir)
    training = []
    for run in runs:
        curves = scalar_curves(run)
        if set(TRAINING_TAGS) <= set(curves):
            training.append((run, curves))
    if not training:
        raise UserInputError(
            f"None of the {len(runs)} runs with event files under {Path(log_dir).expanduser()} holds "
            f"{' and '.join(TRAINING_TAGS)}: pass --log_dir the TensorBoard folder of a `fit` run."
        )
    chain = [training[0]]
    for run, curves in training[1:]:
        first, epochs = min(epochs_of(chain[0][1])), epochs_of(curves)
        if first == 0 or min(epochs) >= first or max(epochs) < first - 1:
            break  # the newest run starts at 0, or this one does not lead up to it
        chain.insert(0, (run, curves))
    return chain


def find_run_dir(log_dir: str | Path) -> Path:
    """The newest run under ``log_dir`` that logged training (``TRAINING_TAGS``)."""
    return find_training_runs(log_dir)[-1][0]


def merge_curves(parts: list[Curves]) -> Curves:
    """One run's curves from the curves of its parts, oldest first; where a resumed part repeats
    epochs of the one before it (resumed mid-epoch), the resumed part's values count."""
    merged: Curves = {}
    for i, curves in enumerate(parts):
        until = min(epochs_of(parts[i + 1])) if i + 1 < len(parts) else math.inf
        for tag, (epochs, values) in curves.items():
            kept = [(epoch, value) for epoch, value in zip(epochs, values) if epoch < until]
            merged.setdefault(tag, ([], []))
            merged[tag][0].extend(epoch for epoch, _ in kept)
            merged[tag][1].extend(value for _, value in kept)
    return merged


def training_curves(log_dir: str | Path) -> tuple[Curves, Path, str]:
    """The curves of the newest ``fit`` under ``log_dir``, its (newest) run folder, and a line saying
    which run(s) they come from."""
    chain = find_training_runs(log_dir)
    curves = merge_curves([part for _, part in chain])
    newest = chain[-1][0]
    skipped = [run for run in find_run_dirs(log_dir) if run_started(run) > run_started(newest)]
    line = f"Training curves from {newest}"
    if len(chain) > 1:
        earlier = ", ".join(f"{run} (epochs {min(epochs_of(c))}-{max(epochs_of(c))})" for run, c in chain[:-1])
        line += f", resumed from {earlier}"
    if skipped:
        line += (f"; passed over {len(skipped)} newer run(s) without {' and '.join(TRAINING_TAGS)}: "
                 + ", ".join(run.name for run in skipped))
    return curves, newest, line


def write_metrics_csv(curves: Curves, path: Path) -> Path:
    """The curves as one row per epoch (``epoch``, then each tag's last value in that epoch; empty
    where a tag has none), for reading with pandas or a spreadsheet; a resumed run's parts are
    already joined in ``curves``."""
    tags = [tag for tag in CURVE_TAGS if tag in curves]
    rows: dict[int, dict[str, float]] = {}
    for tag in tags:
        for epoch, value in zip(*curves[tag]):
            rows.setdefault(epoch, {})[tag] = value
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["epoch", *tags])
        writer.writeheader()
        writer.writerows({"epoch": epoch, **rows[epoch]} for epoch in sorted(rows))
    return path


def best_epoch(curves: Curves) -> int | None:
    """The epoch ModelCheckpoint keeps: the first with the highest ``val/acc``."""
    return best_point(*curves["val/acc"])[0] if "val/acc" in curves else None


def read_history(path: str | Path) -> tuple[list[int], list[float]]:
    """(epochs counted from 1, validation accuracies) from a Keras ``History`` saved as CSV."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"No history file at {path}. Pass --compare_history a CSV with the columns "
                             f"{', '.join(HISTORY_COLUMNS)} (e.g. docs/original/history.csv).")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or not set(HISTORY_COLUMNS) <= set(rows[0]):
        raise UserInputError(f"{path} lacks the columns {', '.join(HISTORY_COLUMNS)} (one row per epoch, "
                             "epochs counted from 1, as Keras' History holds them).")
    try:
        return [int(row["epoch"]) for row in rows], [float(row["val_accuracy"]) for row in rows]
    except (TypeError, ValueError) as error:
        raise UserInputError(f"{path}: a row that is not an epoch number and an accuracy ({error}).") from None


def write_hparams_summary(run_dir: str | Path) -> dict[str, float] | None:
    """Give a recorded run what ``HParamsSummary`` logs at the end of a run today: an event file in
    ``run_dir`` with the run's hyperparameters (its ``hparams.yaml``) and the last value of each of its
    ``val/*`` and ``test/*`` scores as ``hp/val_acc`` and so on, for TensorBoard's HParams tab.
    Returns the scores written, or None where the run has an HParams summary already (its ``fit``
    logged one, or an earlier report did): a second would only repeat the run in the tab."""
    run_dir = Path(run_dir)
    saved = run_dir / "hparams.yaml"
    if not saved.is_file():
        raise UserInputError(f"{run_dir} has no hparams.yaml: pass --log_dir one run of a fit (its version folder).")
    params = {key: value for key, value in (yaml.safe_load(saved.read_text()) or {}).items() if not key.startswith("_")}
    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0, IMAGES: 1}).Reload()
    try:
        if events.PluginTagToContent("hparams"):
            return None
    except KeyError:  # no event of the hparams plugin: the run has no summary yet
        pass
    tags = set(events.Tags()["scalars"])
    scores = {score_tag(tag): events.Scalars(tag)[-1].value for tag in SCORES if tag in tags}
    if not scores:
        raise UserInputError(f"{run_dir} logged none of {', '.join(SCORES)}: nothing to compare runs by.")
    with SummaryWriter(str(run_dir), filename_suffix=".hparams") as writer:
        for summary in hparams_summaries(params, list(scores)):
            writer.file_writer.add_summary(summary)
        for tag, value in scores.items():
            writer.add_scalar(tag, value, 0)
    return scores
