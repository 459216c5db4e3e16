"""The project's error for bad input data, the rule for which error a reader raises, and helpers that
readers share to follow it.

The rule, for every reader in `utils.io`:

- a path that is not an existing file raises `FileNotFoundError` (the path is in the message and in its
  `filename` attribute), since nothing can be said about a file that is not there;
- a file that exists but cannot be read, decoded or parsed, or whose content is invalid, raises `DataError`,
  naming the culprit: the file, and the line or image id where there is one.

`DataError` subclasses `ValueError`, so code that caught the readers' earlier `ValueError` still works. A
reader that takes an `errors` list collects its `DataError`s there instead of raising the first (validation
reports every problem at once); a missing file is still raised, as there is nothing further to read.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "is_utf8", "missing_file", "raise_or_collect", "read_text_file"]


class DataError(ValueError):
    """Bad input data: a file that exists but is unreadable or holds invalid content.

    Args:
        message: the full message; it names the culprit (file, and line or id where known).
        path: the culprit file.
        line: the 1-based line number in `path`, where the problem is on one line.
        image_id: the image id concerned, where there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        image_id: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else Path(path)
        self.line = line
        self.image_id = image_id

    def __reduce__(self):
        """Pickles with the culprit (errors cross process boundaries in the loader's workers)."""
        return _rebuild, (self.message, self.path, self.line, self.image_id)


def _rebuild(message: str, path: Path | None, line: int | None, image_id: str | None) -> DataError:
    """Rebuilds a pickled `DataError`."""
    return DataError(message, path=path, line=line, image_id=image_id)


def missing_file(path: str | os.PathLike, what: str) -> FileNotFoundError:
    """The error for a missing file: "<what> not found: <path>", with `filename` set to the path.

    Args:
        path: the file that does not exist.
        what: what the file is, e.g. "landmark file".
    """
    error = FileNotFoundError(f"{what} not found: {path}")
    error.filename = str(path)
    return error


def raise_or_collect(error: DataError, errors: list[DataError] | None) -> None:
    """Raises `error`, or appends it to `errors` when the caller collects every problem (validation)."""
    if errors is None:
        raise error
    errors.append(error)


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The whole of a text file under the rule above, decoded as UTF-8 (a byte-order mark is dropped).

    Bytes that are not UTF-8 become lone surrogates (Python's "surrogateescape"), so that the parser can
    name the line holding them (see `is_utf8`) instead of failing on the whole file.

    Args:
        path: the file.
        what: what the file is, for the messages, e.g. "id list".

    Raises:
        FileNotFoundError: `path` is not an existing file.
        DataError: the file exists but cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}", path=path) from error
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def is_utf8(text: str) -> bool:
    """False when `text` holds bytes that were not UTF-8 (lone surrogates from `read_text_file`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
