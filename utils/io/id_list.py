"""Id list files: one image id per line; blank lines and `#` comments are ignored.

Errors follow the rule of `utils.io.errors`: a missing file raises FileNotFoundError, a bad one `DataError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from utils.io.atomic import write_text_atomic
from utils.io.errors import DataError, is_utf8, raise_or_collect, read_text_file

__all__ = ["read_id_list", "read_id_list_lines", "write_id_list"]


def read_id_list_lines(path: str | os.PathLike, errors: list[DataError] | None = None) -> dict[str, int]:
    """Reads the ids listed in `path` with the line each is on, in file order.

    Args:
        path: the id list.
        errors: if given, problems are appended here instead of raised; a line that is not UTF-8 and the
            repetition of an id are skipped.

    Returns:
        id -> its 1-based line number, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is unreadable, a line is not UTF-8 text, an id is listed twice, or the file
            lists no id.
    """
    path = Path(path)
    ids: dict[str, int] = {}
    for number, line in enumerate(read_text_file(path, "id list").split("\n"), start=1):
        image_id = line.split("#", 1)[0].strip()
        if not image_id:
            continue
        if not is_utf8(image_id):
            raise_or_collect(DataError(f"id list {path}, line {number} is not UTF-8 text", path=path,
                                       line=number), errors)
        elif image_id in ids:
            message = f"id list {path} lists id {image_id!r} twice (lines {ids[image_id]} and {number})"
            raise_or_collect(DataError(message, path=path, line=number, image_id=image_id), errors)
        else:
            ids[image_id] = number
    if not ids:
        message = f"id list {path} is empty (no ids after removing blank lines and # comments)"
        raise_or_collect(DataError(message, path=path), errors)
    return ids


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Reads the ids listed in `path`, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is unreadable, a line is not UTF-8 text, the file lists no id, or lists an id
            twice.
    """
    return list(read_id_list_lines(path))


def write_id_list(path: str | os.PathLike, ids: Iterable[str]) -> None:
    """Writes one id per line to `path`, atomically."""
    write_text_atomic(path, "".join(f"{image_id}\n" for image_id in ids))
