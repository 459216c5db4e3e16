"""Cross-validation and train/test split files for a dataset folder.

The dataset layout is `DIR/images/<id>.<ext>`, `DIR/setup/all.csv`, `DIR/setup/cv/set<k>/{train,test}.txt`
and `DIR/setup/{train,test}.txt`. This module writes the split files for ids that have both an image and an
annotation, so users with their own data can start at once. Split files already there (for example the
authors' published hand folds in hand_xray_dataset/setup) are never replaced without ``--overwrite``:

    python -m utils.io.splits DIR [--folds 3] [--test-fraction 0.33] [--seed 0] [--overwrite]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.io.errors import DataError
from utils.io.id_list import write_id_list
from utils.io.landmarks import read_csv_rows

__all__ = ["annotated_image_ids", "cv_folds", "cv_splits", "train_test_split", "write_splits"]


def cv_folds(dataset_dir: str | os.PathLike, default: int = 3) -> list[str]:
    """The cross-validation folds of a dataset folder, "1", "2", ...: its setup/cv/set<k> folders in order,
    or 1..`default` when it has none yet (a synthetic set still to be generated has 3)."""
    found = [p.name[3:] for p in (Path(dataset_dir) / "setup" / "cv").glob("set*")
             if p.is_dir() and p.name[3:].isdigit()]
    return sorted(found, key=int) or [str(k) for k in range(1, default + 1)]


def cv_splits(ids: Sequence[str], folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Splits `ids` into `folds` (train, test) pairs; every id is in exactly one test set.

    The ids are shuffled by a generator seeded with `seed`, then dealt into folds of sizes differing by at
    most one; each list keeps the order of `ids`.

    Raises:
        ValueError: fewer ids than folds, or folds < 2.
    """
    if folds < 2 or len(ids) < folds:
        raise ValueError(f"need folds >= 2 and at least `folds` ids, got folds={folds} for {len(ids)} ids")
    order = np.random.default_rng(seed).permutation(len(ids))
    fold_of = np.empty(len(ids), dtype=int)
    fold_of[order] = np.arange(len(ids)) % folds
    return [
        (
            [i for i, f in zip(ids, fold_of, strict=True) if f != k],
            [i for i, f in zip(ids, fold_of, strict=True) if f == k],
        )
        for k in range(folds)
    ]


def train_test_split(ids: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Splits `ids` into a training and a test list (at least one id each), keeping the order of `ids`.

    Raises:
        ValueError: test_fraction outside (0, 1) or fewer than two ids.
    """
    if not 0.0 < test_fraction < 1.0 or len(ids) < 2:
        raise ValueError(f"need 0 < test_fraction < 1 and two ids, got {test_fraction} for {len(ids)} ids")
    num_test = min(max(1, round(test_fraction * len(ids))), len(ids) - 1)
    test = set(np.random.default_rng(seed).permutation(len(ids))[:num_test].tolist())
    return [i for k, i in enumerate(ids) if k not in test], [i for k, i in enumerate(ids) if k in test]


def annotated_image_ids(dataset_dir: str | os.PathLike, annotation: str = "all.csv") -> list[str]:
    """Ids listed in `DIR/setup/all.csv` (or another `annotation` file there) that also have an image in
    `DIR/images/`, in CSV order.

    Raises:
        FileNotFoundError: `DIR/setup/all.csv` does not exist.
        DataError: all.csv is unreadable, a row is bad (see `read_csv_rows`), an id appears twice, or no
            id has an image.
    """
    dataset_dir = Path(dataset_dir)
    csv_path = dataset_dir / "setup" / annotation
    image_dir = dataset_dir / "images"
    files = image_dir.iterdir() if image_dir.is_dir() else ()
    stems = {path.name.split(".")[0] for path in files if path.is_file()}
    first_line: dict[str, int] = {}
    for row in read_csv_rows(csv_path):
        if row.image_id in first_line:
            raise DataError(
                f"{csv_path}, line {row.line}: id {row.image_id!r} appears twice (first on line "
                f"{first_line[row.image_id]})", path=csv_path, line=row.line, image_id=row.image_id,
            )
        first_line[row.image_id] = row.line
    present = [i for i in first_line if i in stems]
    if not present:
        raise DataError(f"no id of {csv_path} has an image in {image_dir}", path=csv_path)
    return present


def write_splits(
    dataset_dir: str | os.PathLike, folds: int = 3, test_fraction: float = 1 / 3, seed: int = 0,
    overwrite: bool = False, annotation: str = "all.csv",
) -> list[str]:
    """Writes `setup/cv/set<k>/{train,test}.txt` and `setup/{train,test}.txt` for the annotated images.

    Args:
        dataset_dir: The dataset folder.
        folds: Cross-validation folds (>= 2).
        test_fraction: Share of the ids in `setup/test.txt`.
        seed: Seed of the random assignment.
        overwrite: Replace split files that exist; False: refuse, before anything is written.
        annotation: The annotation file in setup/ that lists the annotated ids.

    Returns:
        The ids that were split.

    Raises:
        FileExistsError: A split file exists and `overwrite` is False (names every such file).
    """
    dataset_dir = Path(dataset_dir)
    ids = annotated_image_ids(dataset_dir, annotation)
    setup = dataset_dir / "setup"
    lists = {}
    for k, (train, test) in enumerate(cv_splits(ids, folds, seed), start=1):
        lists[setup / "cv" / f"set{k}" / "train.txt"] = train
        lists[setup / "cv" / f"set{k}" / "test.txt"] = test
    lists[setup / "train.txt"], lists[setup / "test.txt"] = train_test_split(ids, test_fraction, seed)
    existing = [str(path) for path in lists if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"split files exist, nothing was written: {', '.join(existing)}; pass "
                              "--overwrite (overwrite=True) to replace them")
    for path, listed in lists.items():
        write_id_list(path, listed)
    return ids


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset_dir", help="dataset folder with images/ and setup/all.csv")
    parser.add_argument("--folds", type=int, default=3, help="number of cross-validation folds (default 3)")
    parser.add_argument("--test-fraction", type=float, default=1 / 3, help="test share of setup/test.txt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random assignment (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace split files that exist")
    args = parser.parse_args(argv)
    try:
        ids = write_splits(args.dataset_dir, args.folds, args.test_fraction, args.seed, args.overwrite)
    except (OSError, ValueError) as error:  # bad data (DataError), parameters or existing files: no traceback
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(
        f"wrote {args.folds}-fold and train/test split files for {len(ids)} ids to {args.dataset_dir}/setup"
    )


if __name__ == "__main__":
    main()
