"""Progress bars for the long loops outside Lightning's own (decoding folders, fitting a temperature,
the corruption benchmark): tqdm, as Lightning's bar is, shown on rank 0 of an interactive terminal
only, so logs and pipes get no carriage-return noise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], description: str, unit: str = " images", total: int | None = None) -> Iterable[T]:
    """``items`` with a bar that clears itself when done; none off a terminal (tqdm's ``disable=None``)
    or on ranks other than 0."""
    return tqdm(items, desc=description, unit=unit, total=total, leave=False,
                disable=None if rank_zero_only.rank == 0 else True)
