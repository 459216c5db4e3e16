"""Checks a dataset folder before any training: every split file, annotation row and image, all at once.

The readers of `utils.io` stop at the first problem; here the same parsers collect every problem, so that a
user sees the whole list in one go. Each problem names its culprit (file, and line or image id):

    python -m utils.data.validate DIR [--num-landmarks N] [--dim D] [--cv FOLDS ...]

Errors (the run would fail or be wrong): missing, unreadable or truncated images, images of the wrong
dimension or with several channels, split ids without an annotation row or an image, bad or repeated
annotation rows, bad split files, an id in both the training and the test list of a fold. Problems with
an image that no split uses are warnings, as are landmarks outside their image. Counts of missing
landmarks are infos. The exit status is 0 without errors, 1 with errors and 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.io.errors import DataError
from utils.io.id_list import read_id_list_lines
from utils.io.image import read_image
from utils.io.landmarks import read_csv_rows, read_landmarks_csv
from utils.io.splits import cv_folds
from utils.transforms.geometry import Geometry

__all__ = ["Problem", "ValidationReport", "main", "validate_dataset"]

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Problem:
    """One finding about a dataset folder.

    Attributes:
        severity: "error" (the run would fail or be wrong), "warning" (suspicious) or "info".
        message: what is wrong, naming the file and the line or id.
        path: the culprit file, where there is one.
        line: the 1-based line in `path`, where there is one.
        image_id: the image id concerned, where there is one.
    """

    severity: str
    message: str
    path: Path | None = None
    line: int | None = None
    image_id: str | None = None

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.message}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass
class ValidationReport:
    """Everything found in one dataset folder.

    Attributes:
        folder: the dataset folder.
        problems: the findings, in the order they were found.
    """

    folder: Path
    problems: list[Problem] = field(default_factory=list)

    def _of(self, severity: str) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        """Problems that would make a run fail or be wrong."""
        return self._of(ERROR)

    @property
    def warnings(self) -> list[Problem]:
        """Suspicious findings that do not stop a run."""
        return self._of(WARNING)

    @property
    def infos(self) -> list[Problem]:
        """Facts worth knowing (e.g. counts of missing landmarks)."""
        return self._of(INFO)

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def format(self) -> str:
        """Errors, then warnings, then infos, one per line; the last line counts errors and warnings."""
        lines = [str(problem) for problem in (*self.errors, *self.warnings, *self.infos)]
        lines.append(
            f"{self.folder}: {_plural(len(self.errors), 'error')}, {_plural(len(self.warnings), 'warning')}"
        )
        return "\n".join(lines)

    def add(self, severity: str, message: str, **culprit) -> None:
        """Records a problem (`culprit`: path, line, image_id)."""
        self.problems.append(Problem(severity, message, **culprit))

    def add_data_error(self, error: DataError, severity: str = ERROR) -> None:
        """Records a reader's `DataError` with its culprit."""
        self.add(severity, error.message, path=error.path, line=error.line, image_id=error.image_id)


@dataclass(frozen=True)
class _Split:
    """The two id lists of one fold ("none": setup/{train,test}.txt)."""

    fold: str
    train: Path
    test: Path


def _split_files(setup: Path, folds: str | int | Sequence[str | int] | None) -> list[_Split]:
    """The folds to check: those asked for, or (None) every split present under `setup`."""

    def fold_split(fold: str) -> _Split:
        folder = setup if fold == "none" else setup / "cv" / f"set{fold}"
        return _Split(fold, folder / "train.txt", folder / "test.txt")

    if folds is None:
        found = []
        if (setup / "train.txt").exists() or (setup / "test.txt").exists():
            found.append(fold_split("none"))
        if (setup / "cv").is_dir():
            found += [fold_split(fold) for fold in cv_folds(setup.parent)]
        return found
    names: list[str] = []
    for fold in [folds] if isinstance(folds, str | int) else folds:
        fold = str(fold).strip().lower()
        if fold == "all":
            names += cv_folds(setup.parent)
        elif fold == "none" or fold.isdigit():
            names.append(fold)
        else:
            raise ValueError(f"a fold is a number, 'all' or 'none', got {fold!r}")
    return [fold_split(name) for name in dict.fromkeys(names)]


def infer_num_landmarks(csv_path: str | Path, dim: int) -> int | None:
    """The number of landmarks of the most common row length of a landmark CSV file, or None if unknown."""
    try:
        lengths = Counter(len(row.values) for row in read_csv_rows(csv_path, errors=[]))
    except (FileNotFoundError, DataError):
        return None
    if not lengths:
        return None
    length = lengths.most_common(1)[0][0]
    return length // dim if length and length % dim == 0 else None


class _Progress:
    """Prints "checked k/n images" on stderr every `seconds` while a long loop runs."""

    def __init__(self, total: int, seconds: float | None):
        self.total, self.seconds = total, seconds
        self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.seconds is None or time.monotonic() - self.last < self.seconds:
            return
        self.last = time.monotonic()
        print(f"validate: checked {done}/{self.total} images", file=sys.stderr, flush=True)


def _check_splits(report: ValidationReport, splits: list[_Split]) -> dict[str, tuple[Path, int, int]]:
    """Reads every split file; returns id -> (first file listing it, its line, how many files list it)."""
    used: dict[str, tuple[Path, int, int]] = {}
    for split in splits:
        lists: dict[str, dict[str, int]] = {}
        for path in (split.train, split.test):
            errors: list[DataError] = []
            try:
                lists[path.name] = read_id_list_lines(path, errors)
            except FileNotFoundError:
                report.add(ERROR, f"split file not found: {path}", path=path)
                continue
            for error in errors:
                report.add_data_error(error)
            for image_id, line in lists[path.name].items():
                first = used.get(image_id)
                used[image_id] = (path, line, 1) if first is None else (first[0], first[1], first[2] + 1)
        train, test = lists.get("train.txt", {}), lists.get("test.txt", {})
        for image_id in train.keys() & test.keys():
            report.add(
                ERROR,
                f"id {image_id!r} is in both the training list {split.train} (line {train[image_id]}) and "
                f"the test list {split.test} (line {test[image_id]}) of fold {split.fold}",
                path=split.test, line=test[image_id], image_id=image_id,
            )
    return used


def _where(image_id: str, first: tuple[Path, int, int]) -> str:
    """"<split file>, line <n>: id '<id>'" and how many other split files list it."""
    path, line, count = first
    others = f" (and {_plural(count - 1, 'other split file')})" if count > 1 else ""
    return f"{path}, line {line}: id {image_id!r}{others}"


def _check_landmarks(
    report: ValidationReport, csv_path: Path, num_landmarks: int, dim: int
) -> tuple[dict[str, np.ndarray] | None, set[str]]:
    """Reads every annotation row; records bad rows and per-landmark counts of missing values.

    Returns:
        The valid rows (None when the file is missing), and the ids of the rows found bad.
    """
    errors: list[DataError] = []
    try:
        table = read_landmarks_csv(csv_path, num_landmarks, dim, errors)
    except FileNotFoundError:
        report.add(ERROR, f"annotation file not found: {csv_path}", path=csv_path)
        return None, set()
    for error in errors:
        report.add_data_error(error)
    if not table and not errors:
        report.add(ERROR, f"annotation file {csv_path} has no rows", path=csv_path)
    if table:
        missing = np.isnan(np.stack(list(table.values()))[:, :, 0]).sum(axis=0)
        for landmark in np.flatnonzero(missing):
            report.add(INFO, f"{csv_path}: landmark {landmark} is missing (empty or NaN) in "
                             f"{missing[landmark]} of {len(table)} rows", path=csv_path)
    return table, {error.image_id for error in errors if error.image_id is not None}


def spacing_problem(spacing: Sequence[float], required: float | None, path: Path) -> str | None:
    """What is wrong with an image's `spacing` where the kind of data requires one (the cephalograms'
    0.1 mm): its landmarks, in mm, would be read at the wrong place. None when fine or nothing is required."""
    if required and not np.allclose(spacing, required, rtol=1e-3):
        return (f"image {path} has spacing {tuple(spacing)}, but this kind of data needs {required} mm (its "
                "landmarks are in mm): set it in the file (see the dataset folder's README)")
    return None


def _check_image(
    report: ValidationReport,
    path: Path,
    severity: str,
    points: np.ndarray | None,
    dim: int,
    landmark_units: str,
    ignore_spacing: bool,
    pixel_spacing: float | None = None,
    reset_frame: bool = False,
) -> None:
    """Decodes one image; records problems with it (at `severity`): among them a spacing other than
    `pixel_spacing` where one is required; landmarks outside it (warning)."""
    try:
        image = read_image(path, ignore_spacing=ignore_spacing, reset_frame=reset_frame)
    except DataError as error:
        report.add_data_error(error, severity)
        return
    image_id = path.name.split(".", 1)[0]
    size = " x ".join(str(s) for s in image.GetSize())
    if image.GetDimension() != dim:
        report.add(severity, f"image {path} is {image.GetDimension()}D (size {size}), but dim={dim}",
                   path=path, image_id=image_id)
        return
    if image.GetNumberOfComponentsPerPixel() != 1:
        report.add(severity, f"image {path} has {image.GetNumberOfComponentsPerPixel()} values per pixel "
                             f"({image.GetPixelIDTypeAsString()}); a single-channel image is needed",
                   path=path, image_id=image_id)
        return
    problem = spacing_problem(image.GetSpacing(), pixel_spacing, path)
    if problem:
        report.add(severity, problem, path=path, image_id=image_id)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.all(np.isfinite(sitk.GetArrayViewFromImage(image))):
            report.add(severity, f"image {path} holds NaN or infinite pixel values", path=path,
                       image_id=image_id)
    if points is None:
        return
    index = points if landmark_units == "pixel" else Geometry.from_image(image).physical_to_index(points)
    upper = np.asarray(image.GetSize(), dtype=np.float64) - 0.5
    with np.errstate(invalid="ignore"):
        outside = np.flatnonzero(((index < -0.5) | (index > upper)).any(axis=1))
    if outside.size:
        report.add(
            WARNING,
            f"id {image_id!r}: {_plural(outside.size, 'landmark')} ({', '.join(map(str, outside))}) of the "
            f"annotations lie outside image {path} (size {size} pixels)",
            path=path, image_id=image_id,
        )


def validate_dataset(
    folder: str | Path,
    *,
    num_landmarks: int | None,
    dim: int = 2,
    folds: str | int | Sequence[str | int] | None = None,
    landmark_units: str | None = None,
    ignore_spacing: bool | None = None,
    progress_seconds: float | None = 5.0,
    annotations: Sequence[str] = ("all.csv",),
    pixel_spacing: float | None = None,
    reset_frame: bool = False,
) -> ValidationReport:
    """Checks a dataset folder (layout: README "Your own 2D data") and reports every problem found.

    Reads the split files of the folds, every row of setup/all.csv and decodes every image in images/
    once (hidden files skipped). A problem with an image that no split lists is a warning, not an error.

    Args:
        folder: the dataset folder.
        num_landmarks: landmarks per annotation row; None infers it from the most common row length (an
            info says so).
        dim: 2 or 3, the dimension of the images after a last axis of size 1 is dropped.
        folds: which splits to check: "all" (every setup/cv/set<k>), "none" (setup/{train,test}.txt), a fold
            number, or a sequence of these; None checks every split present.
        landmark_units: what the CSVs hold: "pixel" (indices) or "physical"; None: "pixel" in 2D,
            "physical" in 3D.
        ignore_spacing: use spacing 1 instead of the file's; None: True in 2D, False in 3D (main.py passes
            its data kind's).
        progress_seconds: print progress on stderr every this many seconds while decoding images; None:
            never.
        annotations: the landmark CSVs in setup/ (several for a kind with several annotators); each is
            checked, and the images' landmarks against the first.
        pixel_spacing: the spacing (mm) every image must carry (cephalograms: 0.1), or None.
        reset_frame: read the images with origin 0 and identity direction (the spine CT kind).

    Returns:
        The report: `errors`, `warnings`, `infos`, `ok` and `format()`.

    Raises:
        ValueError: an invalid argument (dim, num_landmarks, landmark_units or a fold), naming it.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if num_landmarks is not None and num_landmarks < 1:
        raise ValueError(f"num_landmarks must be at least 1, got {num_landmarks!r}")
    landmark_units = landmark_units or ("pixel" if dim == 2 else "physical")
    if landmark_units not in ("pixel", "physical"):
        raise ValueError(f"landmark_units must be 'pixel' or 'physical', got {landmark_units!r}")
    ignore_spacing = dim == 2 if ignore_spacing is None else ignore_spacing
    folder = Path(folder)
    setup, image_dir, csv_path = folder / "setup", folder / "images", folder / "setup" / annotations[0]
    report = ValidationReport(folder)
    if not folder.is_dir():
        report.add(ERROR, f"dataset folder not found: {folder}", path=folder)
        return report
    splits = _split_files(setup, folds)

    # ---- split files, then annotations ----
    if not splits:
        report.add(ERROR, f"no split files in {setup}: need train.txt and test.txt there or in cv/set<k>/",
                   path=setup)
    used = _check_splits(report, splits)
    if num_landmarks is None:
        num_landmarks = infer_num_landmarks(csv_path, dim)
        if num_landmarks is not None:
            report.add(INFO, f"{csv_path}: {num_landmarks} landmarks per row assumed (the most common row "
                             "length); pass num_landmarks to check it", path=csv_path)
    table, bad_rows, others = None, set(), {}
    if num_landmarks is not None:
        table, bad_rows = _check_landmarks(report, csv_path, num_landmarks, dim)
        for name in annotations[1:]:
            other, other_bad = _check_landmarks(report, setup / name, num_landmarks, dim)
            others[setup / name] = (other, other_bad)
    elif not csv_path.is_file():
        report.add(ERROR, f"annotation file not found: {csv_path}", path=csv_path)
    else:
        report.add(ERROR, f"{csv_path}: cannot tell the number of landmarks per row (no row holds a whole "
                          "number of landmarks); pass num_landmarks", path=csv_path)

    # ---- images: one file per used id, each decoded once ----
    files: dict[str, list[Path]] = {}
    if image_dir.is_dir():
        for path in sorted(image_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                files.setdefault(path.name.split(".", 1)[0], []).append(path)
    else:
        report.add(ERROR, f"image folder not found: {image_dir}", path=image_dir)
    for image_id, first in used.items():
        for path, (rows, bad) in {csv_path: (table, bad_rows), **others}.items():
            if rows is not None and image_id not in rows and image_id not in bad:
                report.add(ERROR, f"{_where(image_id, first)} has no row in {path}",
                           path=first[0], line=first[1], image_id=image_id)
        if image_dir.is_dir() and image_id not in files:
            report.add(ERROR, f"{_where(image_id, first)} has no image in {image_dir}",
                       path=first[0], line=first[1], image_id=image_id)
    for image_id, paths in files.items():
        if len(paths) > 1:
            report.add(ERROR if image_id in used else WARNING,
                       f"several image files for id {image_id!r}: {', '.join(p.name for p in paths)}",
                       path=paths[0], image_id=image_id)
    progress = _Progress(sum(map(len, files.values())), progress_seconds)
    done = 0
    for image_id, paths in files.items():
        severity = ERROR if image_id in used else WARNING
        points = None if table is None else table.get(image_id)
        for path in paths:
            _check_image(report, path, severity, points, dim, landmark_units, ignore_spacing, pixel_spacing,
                         reset_frame)
            done += 1
            progress(done)
    report.add(INFO, f"{folder}: checked {_plural(2 * len(splits), 'split file')} (folds "
                     f"{', '.join(split.fold for split in splits) or '-'}), "
                     f"{_plural(len(table or ()), 'valid annotation row')} and {_plural(done, 'image')}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0: no errors, 1: errors, 2: usage error)."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.data.validate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset_dir", metavar="DIR", help="dataset folder with images/ and setup/")
    parser.add_argument("--num-landmarks", type=int, metavar="N",
                        help="landmarks per annotation row (default: the most common row length)")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2, help="image dimension (default 2)")
    parser.add_argument("--cv", nargs="+", metavar="FOLDS",
                        help="folds to check: numbers, 'all' (every cv/set<k>) or 'none' "
                             "(setup/{train,test}.txt); "
                             "default: every split present")
    parser.add_argument("--landmark-units", choices=("pixel", "physical"),
                        help="what all.csv holds (default: pixel in 2D, physical in 3D)")
    parser.add_argument("--ignore-spacing", action=argparse.BooleanOptionalAction,
                        help="use spacing 1 instead of the files' (default: yes in 2D, no in 3D)")
    parser.add_argument("--reset-frame", action="store_true",
                        help="read the images with origin 0 and identity direction (the spine CT kind, whose "
                             "coordinates are in that frame)")
    parser.add_argument("--annotations", nargs="+", default=["all.csv"], metavar="CSV",
                        help="landmark files in setup/, the first checked against the images (default "
                             "all.csv; cephalograms: all_challenge.csv all_senior.csv all_junior.csv; "
                             "python main.py --check --data-kind KIND knows each kind's)")
    args = parser.parse_args(argv)
    if not Path(args.dataset_dir).is_dir():
        parser.error(f"not a folder: {args.dataset_dir}")
    try:
        report = validate_dataset(
            args.dataset_dir, num_landmarks=args.num_landmarks, dim=args.dim, folds=args.cv,
            landmark_units=args.landmark_units, ignore_spacing=args.ignore_spacing,
            annotations=args.annotations, reset_frame=args.reset_frame,
        )
    except ValueError as error:
        parser.error(str(error))
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
