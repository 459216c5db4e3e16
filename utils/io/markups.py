"""3D Slicer point lists: read as annotations, written for predictions, in SimpleITK's LPS coordinates.

Two formats, both as Slicer documents them (slicer.readthedocs.io, developer guide, Markups):

- ``.mrk.json`` (Slicer's current format): ``{"markups": [{"type": "Fiducial", "coordinateSystem": "LPS",
  "controlPoints": [{"label": ..., "position": [x, y, z], "positionStatus": "defined"}, ...]}]}``. The
  coordinate system is "LPS" when absent (the schema's default); units must be mm. A point whose status is
  not "defined" (e.g. "missing": skipped while annotating) is missing.
- ``.fcsv`` (legacy): comment lines ``# CoordinateSystem = LPS`` (or ``RAS``; ``0`` = RAS and ``1`` = LPS in
  older files, RAS when absent) and ``# columns = id,x,y,z,...,label,...``, then one CSV row per point.
  Slicer 5 appends two columns the header does not name; the first is the point's status (2 = defined;
  0 undefined, 1 preview, 3 missing: missing here).

SimpleITK's physical space is LPS; a RAS point is converted by negating x and y. Converting a folder of
point lists to the project's ``setup/all.csv`` (physical units, for the ``physical`` data spec):

    python -m utils.io.markups annotations/*.mrk.json --output setup/all.csv [--labels L1 L2 ...] [--dim 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.io.atomic import write_json_atomic
from utils.io.errors import DataError, read_text_file
from utils.io.image import read_image_header
from utils.io.landmarks import write_landmarks_csv
from utils.transforms.geometry import Geometry

__all__ = ["PointList", "in_reset_frame", "markups_id", "read_markups", "write_markups_json"]

# "missing", which Slicer writes and reads for a skipped point, is not in this schema version's enum
SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/Loadable/Markups/Resources/Schema/" \
         "markups-schema-v1.0.3.json#"
SUFFIXES = (".mrk.json", ".fcsv")
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
_FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"
_FCSV_SYSTEMS = {"LPS": "LPS", "RAS": "RAS", "1": "LPS", "0": "RAS"}


@dataclass(frozen=True)
class PointList:
    """The points of one Slicer point list.

    Attributes:
        labels: One label per point, in file order.
        points: (K, 3) LPS physical coordinates, a NaN row for a point that is not placed.
    """

    labels: tuple[str, ...]
    points: np.ndarray


def markups_id(path: str | os.PathLike) -> str:
    """The image id of a point list file: as for images, its name up to the first dot."""
    name = Path(path).name
    if not name.lower().endswith(SUFFIXES):
        raise ValueError(f"{path}: not a Slicer point list (expected a name ending in "
                         f"{' or '.join(SUFFIXES)})")
    return name.split(".", 1)[0]


def read_markups(path: str | os.PathLike) -> PointList:
    """Reads a ``.mrk.json`` or ``.fcsv`` point list into LPS coordinates.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the name ends in neither suffix.
        DataError: the content is not a point list as documented (the message names the file and the field).
    """
    markups_id(path)  # checks the suffix
    path = Path(path)
    text = read_text_file(path, "Slicer point list")
    if path.name.lower().endswith(".fcsv"):
        labels, points, system = _parse_fcsv(text, path)
    else:
        labels, points, system = _parse_json(text, path)
    if system == "RAS":
        points = points * _RAS_TO_LPS
    return PointList(tuple(labels), points)


def _parse_json(text: str, path: Path) -> tuple[list[str], np.ndarray, str]:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})", path=path, line=error.lineno) from None
    lists = content.get("markups") if isinstance(content, dict) else None
    point_lists = [m for m in lists if isinstance(m, dict) and m.get("type") == "Fiducial"] \
        if isinstance(lists, list) else []
    if not point_lists:
        raise DataError(f"{path}: no point list (a 'markups' entry of type 'Fiducial')", path=path)
    markup = point_lists[0]
    system = markup.get("coordinateSystem", "LPS")
    if system not in ("LPS", "RAS"):
        raise DataError(f"{path}: coordinateSystem {system!r} is neither 'LPS' nor 'RAS'", path=path)
    units = markup.get("coordinateUnits", "mm")
    if units != "mm":
        raise DataError(f"{path}: coordinateUnits {units!r}: only 'mm' is read", path=path)
    control_points = markup.get("controlPoints", [])
    if not isinstance(control_points, list):
        raise DataError(f"{path}: controlPoints must be a list, got {control_points!r}", path=path)
    labels, points = [], []
    for number, point in enumerate(control_points, start=1):
        if not isinstance(point, dict):
            raise DataError(f"{path}: control point {number} is not an object, got {point!r}", path=path)
        label = str(point.get("label", f"point {number}"))
        placed = point.get("positionStatus", "defined") == "defined"
        position = point.get("position") if placed else [np.nan] * 3
        if not _is_position(position):
            raise DataError(f"{path}: control point {number} ({label!r}) has no position of three numbers, "
                            f"got {position!r}", path=path)
        labels.append(label)
        points.append(position)
    return labels, np.array(points, dtype=np.float64).reshape(-1, 3), system


def _is_position(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _parse_fcsv(text: str, path: Path) -> tuple[list[str], np.ndarray, str]:
    system, columns = "RAS", _FCSV_COLUMNS.split(",")
    body = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                if value not in _FCSV_SYSTEMS:
                    raise DataError(f"{path}, line {number}: CoordinateSystem {value!r} is none of "
                                    f"{', '.join(_FCSV_SYSTEMS)}", path=path, line=number)
                system = _FCSV_SYSTEMS[value]
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            body.append((number, line))
    missing = [c for c in ("x", "y", "z") if c not in columns]
    if missing:
        raise DataError(f"{path}: the columns line lacks {', '.join(missing)}", path=path)
    labels, points = [], []
    for number, line in body:
        row = next(csv.reader(io.StringIO(line)))
        fields = dict(zip(columns, row, strict=False))
        status = row[len(columns)].strip() if len(row) > len(columns) else "2"  # Slicer 5's status column
        try:
            point = [float(fields[c]) for c in ("x", "y", "z")]
        except (KeyError, ValueError):
            raise DataError(f"{path}, line {number}: x, y and z must be numbers, got {line!r}",
                            path=path, line=number) from None
        points.append(point if status == "2" else [np.nan] * 3)
        labels.append(fields.get("label") or f"point {len(labels) + 1}")
    return labels, np.array(points, dtype=np.float64).reshape(-1, 3), system


def write_markups_json(path: str | os.PathLike, labels: Sequence[str], points: np.ndarray) -> None:
    """Writes a ``.mrk.json`` point list (LPS) that Slicer opens on top of the image, atomically.

    Args:
        path: the file to write (its name should end in ``.mrk.json``).
        labels: one label per point.
        points: (K, 2) or (K, 3) LPS physical coordinates (2D: z = 0); a NaN row is written with the status
            "missing" so that labels keep their order.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3) or len(points) != len(labels):
        raise ValueError(f"write_markups_json: needs (K, 2 or 3) points and K labels, got {points.shape} and "
                         f"{len(labels)} labels")
    if points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
    control_points = []
    for number, (label, point) in enumerate(zip(labels, points, strict=True), start=1):
        placed = bool(np.isfinite(point).all())
        control_points.append({"id": str(number), "label": str(label),
                               "position": point.tolist() if placed else [0.0, 0.0, 0.0],
                               "positionStatus": "defined" if placed else "missing"})
    markup = {"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
              "controlPoints": control_points}
    write_json_atomic(path, {"@schema": SCHEMA, "markups": [markup]})


def in_reset_frame(points: np.ndarray, image_path: str | os.PathLike) -> np.ndarray:
    """(N, dim) physical points of an image file -> the same points in the frame of origin 0 and identity
    direction (spacing kept) that `read_image(..., reset_frame=True)` gives the image: index x spacing."""
    header = read_image_header(image_path, dim=points.shape[1])
    geometry = Geometry(header.size, header.spacing, header.origin, header.direction)
    return geometry.physical_to_index(points) * np.asarray(header.spacing)


def _image_file(folder: Path, image_id: str) -> Path:
    """The one image file of `image_id` in `folder` (named `<id>.<ext>`)."""
    found = [path for path in sorted(Path(folder).glob(f"{image_id}.*"))
             if path.name.split(".", 1)[0] == image_id]
    if len(found) != 1:
        raise FileNotFoundError(f"--reset-frame: {len(found)} image files for id {image_id!r} in {folder} "
                                "(one is needed, named <id>.<ext>)")
    return found[0]


def _table(files: Sequence[Path], labels: Sequence[str] | None, dim: int) -> dict[str, np.ndarray]:
    """image id -> (N, dim) points of every file, matched by label (with `labels`) or by position."""
    table: dict[str, np.ndarray] = {}
    count = None if labels is None else len(labels)
    for path in files:
        image_id, point_list = markups_id(path), read_markups(path)
        if image_id in table:
            raise DataError(f"{path}: a second point list for image id {image_id!r}", path=path)
        if labels is None:
            count = len(point_list.points) if count is None else count
            if len(point_list.points) != count:
                raise DataError(f"{path}: {len(point_list.points)} points where the files before had "
                                f"{count}; give --labels to match points by label", path=path,
                                image_id=image_id)
            points = point_list.points
        else:
            unknown = sorted(set(point_list.labels) - set(labels))
            if unknown:
                raise DataError(f"{path}: labels {', '.join(map(repr, unknown))} are not among --labels",
                                path=path, image_id=image_id)
            repeated = sorted({label for label in point_list.labels if point_list.labels.count(label) > 1})
            if repeated:
                raise DataError(f"{path}: label {repeated[0]!r} names more than one point", path=path,
                                image_id=image_id)
            found = dict(zip(point_list.labels, point_list.points, strict=True))
            points = np.array([found.get(label, [np.nan] * 3) for label in labels]).reshape(-1, 3)
        if dim == 2:
            off_plane = np.isfinite(points[:, 2]) & (np.abs(points[:, 2]) > 1e-6)
            if off_plane.any():
                raise DataError(f"{path}: --dim 2 but point {int(np.flatnonzero(off_plane)[0]) + 1} has z = "
                                f"{points[off_plane][0, 2]:g} (a 2D image lies in the plane z = 0)",
                                path=path, image_id=image_id)
        table[image_id] = points[:, :dim]
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.io.markups",
                                     description="Converts Slicer point lists (.mrk.json, .fcsv; one per "
                                     "image, named <id>.mrk.json) into a landmark CSV in physical LPS "
                                     "coordinates, for --landmark-units physical or a 3D data kind.")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="point list files")
    parser.add_argument("--output", required=True, type=Path, metavar="CSV", help="landmark CSV to write")
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="landmark order by label (a point list "
                        "without one of them has it missing); default: the order of the points in each file")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3, help="2: keep x, y (points must lie "
                        "at z = 0); 3: x, y, z (default)")
    parser.add_argument("--reset-frame", type=Path, metavar="IMAGES", help="the folder of the annotated "
                        "images (<id>.<ext>): write the points in the frame of origin 0 and identity "
                        "direction in which --data-kind spine_ct reads them (the authors' frame), instead of "
                        "the files' own")
    args = parser.parse_args(argv)
    if args.labels is not None and len(set(args.labels)) < len(args.labels):
        parser.error(f"--labels names a label twice: {' '.join(args.labels)}")
    try:
        table = _table(args.files, args.labels, args.dim)  # everything is read before anything is written
        if args.reset_frame is not None:
            table = {image_id: in_reset_frame(points, _image_file(args.reset_frame, image_id))
                     for image_id, points in table.items()}
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    write_landmarks_csv(args.output, table)
    print(f"wrote {len(table)} images x {len(next(iter(table.values())))} landmarks to {args.output}")


if __name__ == "__main__":
    main()
