"""Id list files: one image id per line; blank lines and `#` comments are ignored."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from utils.io.atomic import write_text_atomic

__all__ = ["read_id_list", "write_id_list"]


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Reads the ids listed in `path`, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file lists no id, or lists an id twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list not found: {path}")
    ids: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        image_id = line.split("#", 1)[0].strip()
        if image_id:
            if image_id in ids:
                raise ValueError(f"id list {path} lists id {image_id!r} twice")
            ids.append(image_id)
    if not ids:
        raise ValueError(f"id list {path} is empty (no ids after removing blank lines and # comments)")
    return ids


def write_id_list(path: str | os.PathLike, ids: Iterable[str]) -> None:
    """Writes one id per line to `path`, atomically."""
    write_text_atomic(path, "".join(f"{image_id}\n" for image_id in ids))
