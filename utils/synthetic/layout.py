"""Writing a generated data set in the standard layout, so that an interrupted run leaves no complete-looking
data set behind.

Layout: `OUT/images/<id>.mha`, `OUT/setup/all.csv`, `OUT/setup/cv/set{1,2,3}/{train,test}.txt`,
`OUT/setup/{train,test}.txt`. Everything is first written to a hidden sibling folder, which is renamed to
`OUT` only when complete.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.io.image import write_image
from utils.io.landmarks import write_landmarks_csv
from utils.io.splits import write_splits

__all__ = ["write_dataset"]

CV_FOLDS = 3
TEST_FRACTION = 1 / 3
PROGRESS_EVERY_S = 5.0  # seconds between two progress lines


def write_dataset(
    out_dir: str | os.PathLike,
    render: Callable[[np.random.Generator], tuple[sitk.Image, np.ndarray | dict[str, np.ndarray]]],
    prefix: str,
    num_images: int,
    seed: int,
    progress: bool = False,
) -> list[str]:
    """Renders `num_images` samples and writes them in the standard layout.

    Sample k is rendered from `np.random.default_rng([seed, k])`, so it depends only on (seed, k): the first
    images of a larger data set equal those of a smaller one with the same seed. The splits are drawn from
    `seed` as well (`utils.io.splits.write_splits`: 3-fold cross-validation, one third test).

    Args:
        out_dir: the data set folder; it must not exist yet.
        render: draws one sample from a generator: (image, (N, dim) landmarks as written to all.csv), or
            (image, {CSV file name: (N, dim) landmarks}) for several annotation files.
        prefix: id prefix; ids are f"{prefix}_{k:04d}".
        num_images: number of samples, at least 3 (one per cross-validation fold).
        seed: the seed of all draws.
        progress: print a progress line to stderr every few seconds and after the last image.

    Returns:
        The ids written, in order.

    Raises:
        ValueError: num_images below 3.
        FileExistsError: out_dir exists.
    """
    out_dir = Path(out_dir)
    if num_images < CV_FOLDS:
        raise ValueError(f"num_images must be at least {CV_FOLDS} (one per fold), got {num_images}")
    if out_dir.exists():
        raise FileExistsError(f"output folder exists already, not overwriting it: {out_dir}")
    temporary = out_dir.with_name(f".{out_dir.name}.partial")
    if temporary.exists():
        shutil.rmtree(temporary)
    ids = [f"{prefix}_{k:04d}" for k in range(num_images)]
    landmarks: dict[str, dict[str, np.ndarray]] = {}  # CSV file name -> id -> points
    start = time.perf_counter()
    reported = 0.0
    for k, image_id in enumerate(ids):
        image, points = render(np.random.default_rng([seed, k]))
        write_image(image, temporary / "images" / f"{image_id}.mha")
        for name, table in (points if isinstance(points, dict) else {"all.csv": points}).items():
            landmarks.setdefault(name, {})[image_id] = table
        elapsed = time.perf_counter() - start
        if progress and (elapsed >= reported + PROGRESS_EVERY_S or k + 1 == num_images):
            print(f"[{k + 1}/{num_images}] {image_id}.mha {elapsed:.1f} s", file=sys.stderr, flush=True)
            reported = elapsed
    for name, table in landmarks.items():
        write_landmarks_csv(temporary / "setup" / name, table)
    write_splits(temporary, folds=CV_FOLDS, test_fraction=TEST_FRACTION, seed=seed,
                 annotation=next(iter(landmarks)))
    temporary.rename(out_dir)
    return ids
