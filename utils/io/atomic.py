"""Atomic file writing: a file is either the complete old one or the complete new one, never half-written.

The new content goes to a hidden temporary sibling (`.<stem>.<random>.tmp<suffix>`), is flushed to disk
(`fsync`) and then renamed over the target, and the rename is flushed too; so neither an exception (a full
disk), a killed process nor a power cut leaves a half-written file under the target's name. A process killed
while writing may leave its hidden temporary file behind (see `utils.training.checkpoint` for a cleanup).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to write to; renames it over `path` when the block succeeds.

    The temporary name keeps the suffix (e.g. `.mha`, `.nii.gz`, `.png`), because SimpleITK and matplotlib
    choose the file format from it. On an exception the temporary file is deleted and `path` is untouched.

    Args:
        path: the final file path. Its parent folder is created if missing.

    Yields:
        The temporary path (in the same folder, so the final rename is atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    temporary = Path(temporary)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes the file private; outputs get the usual mode
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flushes a file's data, or a folder's entries (POSIX only), to disk."""
    flags = os.O_RDONLY
    if os.name != "posix":  # Windows: fsync needs a writable handle, and a folder cannot be opened
        if path.is_dir():
            return
        flags = os.O_RDWR
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's file-creation mask (reading it requires setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON to `path` atomically. NaN is refused, since it is not valid JSON."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
