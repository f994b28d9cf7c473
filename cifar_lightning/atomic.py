"""Files written whole or not at all, and write checks made before any work starts.

Every file this project writes that a user keeps (checkpoints, calibrated checkpoints, ONNX files,
decode caches) goes through ``write_atomically``: written beside its target, synced, then renamed,
so a process killed midway never leaves half a file. Writing in the same folder makes the rename
one ``os.replace`` on one file system wherever the target lives (a move from the system temp folder
becomes a copy when that is another file system, and a copy can be cut short).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import torch

from cifar_lightning.errors import UserInputError


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int | None = None) -> None:
    """Call ``write`` on ``.<name>.<pid>.tmp`` beside ``path``, fsync it and rename it to ``path``.

    ``mode``: the file's permission bits (before the umask); ``None`` keeps the temp file's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        if mode is not None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, mode & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomically(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through ``write_atomically``."""
    write_atomically(path, lambda file: torch.save(obj, file))


def write_error(folder: Path) -> OSError | None:
    """Why no file can be created in ``folder`` (which exists), or None: a probe file is made and removed."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return None
    except OSError as error:
        return error


def check_output_file(output: str | os.PathLike, what: str, example: str) -> Path:
    """``output`` as a path if a file can be written there; else a ``UserInputError`` saying why.

    ``what`` names the file in the message ("the ONNX file"), ``example`` is a file name to suggest.
    """
    path = Path(output).expanduser()
    if path.is_dir():
        raise UserInputError(f"Cannot write {what} to {path.resolve()}: it is a folder. Pass a file name, "
                             f"e.g. --output {example}.")
    folder = path.parent
    if not folder.is_dir():
        raise UserInputError(f"Cannot write {what} to {path.resolve()}: the folder {folder.resolve()} does "
                             "not exist. Create it or pass another --output.")
    error = write_error(folder)
    if error is not None:
        raise UserInputError(f"Cannot write {what} to {path.resolve()} ({error.strerror or error}). "
                             "Pass an --output in a folder you can write to.")
    return path


def check_writable(folders: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Create each ``(what, folder)`` and write a probe file in it, so training never starts without a place to save."""
    for what, folder in folders:
        folder = Path(folder).expanduser().resolve()
        blocker = next((path for path in (folder, *folder.parents) if path.exists()), folder)
        if not blocker.is_dir():
            it = "it" if blocker == folder else str(blocker)
            raise UserInputError(
                f"Cannot write {what} to {folder}: {it} is a file, not a folder. Move the file away, "
                "or point the config at another folder (ModelCheckpoint dirpath, logger save_dir)."
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            error = write_error(folder)
        except OSError as mkdir_error:
            error = mkdir_error
        if error is not None:
            raise UserInputError(
                f"Cannot write {what} to {folder} ({error.strerror or error}). Run from a folder you "
                "can write to, or point the config at one (ModelCheckpoint dirpath, logger save_dir)."
            )
