"""Landmark CSV files: one row per image, `id,x0,y0[,z0],x1,y1[,z1],...`; empty or NaN fields mark a missing
landmark. The values are returned exactly as stored (pixel indices or physical coordinates); the dataset
converts them to physical points once, at load."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from utils.io.atomic import atomic_path

__all__ = ["read_landmarks_csv", "write_landmarks_csv"]


def read_landmarks_csv(path: str | os.PathLike, num_landmarks: int, dim: int) -> dict[str, np.ndarray]:
    """Reads a landmark CSV file.

    Args:
        path: the CSV file, without a header row.
        num_landmarks: the number of landmarks N every row must hold.
        dim: the coordinates per landmark (2 or 3).

    Returns:
        A dict from image id to an (N, dim) float64 array, coordinates in (x, y[, z]) order, rows of NaN for
        missing landmarks.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a row has the wrong number of values (the message names the file, line and id, and says
            how many landmarks the row would hold), a value is not a number, or an id appears twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file not found: {path}")
    if num_landmarks < 1 or dim not in (2, 3):
        raise ValueError(
            f"need num_landmarks >= 1 and dim in (2, 3), got num_landmarks={num_landmarks}, dim={dim}"
        )
    expected = num_landmarks * dim
    landmarks: dict[str, np.ndarray] = {}
    with path.open(newline="", encoding="utf-8") as file:
        for line_number, row in enumerate(csv.reader(file), start=1):
            if not row or not "".join(row).strip():
                continue
            image_id, values = row[0].strip(), row[1:]
            if len(values) != expected:
                held = (
                    f"{len(values) // dim} landmarks in {dim}D"
                    if len(values) % dim == 0
                    else "no whole number of landmarks"
                )
                raise ValueError(
                    f"{path}, line {line_number}, id {image_id!r}: expected {expected} values "
                    f"({num_landmarks} landmarks x {dim} coordinates), found {len(values)} ({held})"
                )
            if image_id in landmarks:
                raise ValueError(f"{path}, line {line_number}: id {image_id!r} appears twice")
            try:
                numbers = [float(value) if value.strip() else math.nan for value in values]
            except ValueError as error:
                raise ValueError(f"{path}, line {line_number}, id {image_id!r}: {error}") from error
            points = np.asarray(numbers, dtype=np.float64).reshape(num_landmarks, dim)
            points[np.isnan(points).any(axis=1)] = np.nan
            landmarks[image_id] = points
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
