"""Landmark CSV files: one row per image, `id,x0,y0[,z0],x1,y1[,z1],...`; empty or NaN fields mark a missing
landmark. The values are returned exactly as stored (pixel indices or physical coordinates); the dataset
converts them to physical points once, at load.

Errors follow the rule of `utils.io.errors`: a missing file raises FileNotFoundError, anything wrong inside
one raises `DataError` naming the file, line and id. Each reader takes an optional `errors` list: given one,
it collects every problem there and skips the bad rows instead of stopping at the first (for validation).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.io.atomic import atomic_path
from utils.io.errors import DataError, is_utf8, raise_or_collect, read_text_file

__all__ = ["CsvRow", "read_csv_rows", "read_landmarks_csv", "write_landmarks_csv"]


@dataclass(frozen=True)
class CsvRow:
    """One non-blank row of a landmark CSV file.

    Attributes:
        line: 1-based line number where the row starts.
        image_id: the first field, stripped of surrounding blanks (never empty).
        values: the other fields, as written.
    """

    line: int
    image_id: str
    values: tuple[str, ...]


def read_csv_rows(path: str | os.PathLike, errors: list[DataError] | None = None) -> list[CsvRow]:
    """Reads the rows of a landmark CSV file without interpreting the values; blank rows are skipped.

    Args:
        path: the CSV file, without a header row.
        errors: if given, problems are appended here and the rows concerned skipped, instead of raised.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file cannot be read, a row is not UTF-8 text, has an empty id, a field holds a line
            break (an unclosed quote) or is too long for the CSV reader.
    """
    path = Path(path)
    text = read_text_file(path, "landmark file")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[CsvRow] = []
    previous_end = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            message = f"{path}, line {reader.line_num}: {error}"
            raise_or_collect(DataError(message, path=path, line=reader.line_num), errors)
            previous_end = reader.line_num
            continue
        line, previous_end = previous_end + 1, reader.line_num
        if not row or not "".join(row).strip():
            continue
        image_id = row[0].strip()
        where = f"{path}, line {line}"
        if not all(is_utf8(field) for field in row):
            problem = "is not UTF-8 text"
        elif any("\n" in field or "\r" in field for field in row):
            problem = "has a field with a line break (an unclosed quote?)"
        elif not image_id:
            problem = "has an empty id (the first field)"
        else:
            rows.append(CsvRow(line, image_id, tuple(row[1:])))
            continue
        raise_or_collect(DataError(f"{where} {problem}", path=path, line=line), errors)
    return rows


def _parse_values(row: CsvRow, dim: int) -> tuple[list[float], list[str]]:
    """The numbers of a row (NaN for empty fields) and a description of each field that is not finite."""
    numbers: list[float] = []
    bad: list[str] = []
    for k, value in enumerate(row.values):
        name = f"{'xyz'[k % dim]}{k // dim}"
        if not value.strip():
            numbers.append(math.nan)
            continue
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or math.isinf(number):
            bad.append(f"{name} = {value.strip()!r}")
            number = math.nan
        numbers.append(number)
    return numbers, bad


def read_landmarks_csv(
    path: str | os.PathLike, num_landmarks: int, dim: int, errors: list[DataError] | None = None
) -> dict[str, np.ndarray]:
    """Reads a landmark CSV file.

    Args:
        path: the CSV file, without a header row.
        num_landmarks: the number of landmarks N every row must hold.
        dim: the coordinates per landmark (2 or 3).
        errors: if given, every problem is appended here and the rows concerned are skipped (the first row
            of a repeated id is kept), instead of raising at the first.

    Returns:
        A dict from image id to an (N, dim) float64 array, coordinates in (x, y[, z]) order, rows of NaN for
        missing landmarks.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is unreadable, or a row is bad: the wrong number of values (the message names
            the file, line and id, and says how many landmarks the row would hold), a value that is not a
            finite number, or an id seen before (see also `read_csv_rows`).
        ValueError: `num_landmarks` < 1 or `dim` not 2 or 3.
    """
    path = Path(path)
    if num_landmarks < 1 or dim not in (2, 3):
        raise ValueError(
            f"need num_landmarks >= 1 and dim in (2, 3), got num_landmarks={num_landmarks}, dim={dim}"
        )
    expected = num_landmarks * dim
    landmarks: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    start = 0 if errors is None else len(errors)
    rows = read_csv_rows(path, errors)
    for row in rows:
        where = f"{path}, line {row.line}, id {row.image_id!r}"
        if len(row.values) != expected:
            whole = len(row.values) // dim
            held = (
                f"{whole} landmark{'' if whole == 1 else 's'} in {dim}D"
                if len(row.values) % dim == 0
                else "no whole number of landmarks"
            )
            message = (
                f"{where}: expected {expected} values ({num_landmarks} landmarks x {dim} coordinates), "
                f"found {len(row.values)} ({held})"
            )
            raise_or_collect(DataError(message, path=path, line=row.line, image_id=row.image_id), errors)
            continue
        if row.image_id in first_line:
            message = f"{where}: id {row.image_id!r} appears twice (first on line {first_line[row.image_id]})"
            raise_or_collect(DataError(message, path=path, line=row.line, image_id=row.image_id), errors)
            continue
        first_line[row.image_id] = row.line
        numbers, bad = _parse_values(row, dim)
        if bad:
            hint = " (the file must have no header row)" if row is rows[0] and len(bad) == expected else ""
            message = f"{where}: not a finite number: {', '.join(bad)}{hint}"
            raise_or_collect(DataError(message, path=path, line=row.line, image_id=row.image_id), errors)
            continue
        points = np.asarray(numbers, dtype=np.float64).reshape(num_landmarks, dim)
        points[np.isnan(points).any(axis=1)] = np.nan
        landmarks[row.image_id] = points
    if errors is not None:  # file order, though rows and values are checked in two passes
        errors[start:] = sorted(errors[start:], key=lambda error: error.line or 0)
    return landmarks


def write_landmarks_csv(path: str | os.PathLike, landmarks: Mapping[str, np.ndarray]) -> None:
    """Writes landmarks in the format `read_landmarks_csv` reads, atomically.

    Args:
        path: the CSV file to write.
        landmarks: image id -> (N, dim) array in (x, y[, z]) order; a landmark with any NaN coordinate is
            written as empty fields. Values are written with 10 significant digits, so a write -> read round
            trip is exact to well below 1e-4 for coordinates up to 1e5.
    """
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        for image_id, points in landmarks.items():
            points = np.asarray(points, dtype=np.float64)
            if points.ndim != 2:
                raise ValueError(f"landmarks of id {image_id!r} must be (N, dim), got shape {points.shape}")
            missing = np.isnan(points).any(axis=1)
            fields = [
                "" if missing[i] else f"{value:.10g}" for i in range(points.shape[0]) for value in points[i]
            ]
            writer.writerow([image_id, *fields])
