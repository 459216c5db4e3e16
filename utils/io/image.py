"""Reading and writing images with SimpleITK, keeping their physical geometry (origin, spacing, direction).

Errors follow the rule of `utils.io.errors`: a missing file raises FileNotFoundError; a file whose header
cannot be read or is invalid, or whose pixel data cannot be decoded, raises `DataError` naming the file.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.io.atomic import atomic_path
from utils.io.errors import DataError, missing_file

__all__ = ["ImageHeader", "read_image", "read_image_header", "write_image"]


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, as `read_image` would give the image (see there for the squeeze).

    Attributes:
        size: pixels per axis, order (x, y[, z]).
        spacing: physical distance between pixel centres per axis, order (x, y[, z]).
        origin: physical point of the centre of pixel index 0, order (x, y[, z]).
        direction: row-major (dim x dim) direction matrix, SimpleITK's `GetDirection()` order.
        pixel_type: SimpleITK's name of the pixel type, e.g. "8-bit unsigned integer".
        components: values per pixel (1 for a grey-value image).
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    components: int

    @property
    def dim(self) -> int:
        """The number of axes."""
        return len(self.size)


def _reason(error: RuntimeError) -> str:
    """SimpleITK's explanation in an exception, without the source location and object address lines."""
    lines = [line.strip() for line in str(error).strip().splitlines()[1:] if line.strip()]
    text = " ".join(lines) or str(error).strip()
    return re.sub(r"^(ITK ERROR: \w+\(0x[0-9a-fA-F]+\): |sitk::ERROR: )", "", text)


_NDIMS = re.compile(rb"^[ \t]*NDims[ \t]*[=:][ \t]*(\S*)")


def _check_metaimage_ndims(path: Path) -> None:
    """Refuses a MetaImage header whose NDims is not a whole number from 1 to 5, before SimpleITK reads it.

    ITK's MetaImage reader crashes the process (segmentation fault) on such a header, e.g. "NDims = -3"
    followed by "ElementSpacing = 1 1" (SimpleITK 2.5, found by tests/test_fuzz_readers.py), so the header
    lines up to "ElementDataFile" are looked at here first.
    """
    if path.suffix.lower() not in (".mha", ".mhd"):
        return
    try:
        with path.open("rb") as file:
            for _ in range(10_000):  # the header is a few dozen lines; bounded for binary junk
                line = file.readline(1 << 16)
                if not line or line.lstrip().startswith(b"ElementDataFile"):
                    break
                match = _NDIMS.match(line)
                if match and not (match.group(1).isdigit() and 1 <= int(match.group(1)) <= 5):
                    value = match.group(1).decode("utf-8", errors="replace")
                    raise DataError(
                        f"cannot read the header of image {path}: NDims = {value!r} is not a whole number "
                        "from 1 to 5", path=path,
                    )
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error.strerror or error}", path=path) from error


def _open(path: Path) -> tuple[sitk.ImageFileReader, ImageHeader]:
    """Reads the header of `path`; returns the reader (ready to decode the pixels) and the checked header."""
    if not path.is_file():
        raise missing_file(path, "image file")
    _check_metaimage_ndims(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size, spacing, origin = reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()
        direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(len(size), len(size))
        pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        components = reader.GetNumberOfComponents()
    except RuntimeError as error:
        raise DataError(f"cannot read the header of image {path}: {_reason(error)}", path=path) from error
    if len(size) == 3 and size[2] == 1:
        size, spacing, origin, direction = size[:2], spacing[:2], origin[:2], direction[:2, :2]
    header = ImageHeader(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                         tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()),
                         pixel_type, int(components))
    return reader, header


def _check_geometry(header: ImageHeader, path: Path, ignore_spacing: bool, dim: int | None) -> None:
    """Raises DataError when the header's geometry is unusable or its dimension is not `dim`."""
    problem = None
    if dim is not None and header.dim != dim:
        problem = f"is {header.dim}D (size {header.size}), but dim={dim} was configured"
    elif header.dim == 0 or min(header.size) < 1:
        problem = f"has no pixels (size {header.size})"
    elif not ignore_spacing and not all(math.isfinite(s) and s > 0 for s in header.spacing):
        problem = f"has an invalid spacing {header.spacing} (must be finite and positive)"
    elif not all(math.isfinite(o) for o in header.origin):
        problem = f"has an invalid origin {header.origin}"
    else:
        matrix = np.asarray(header.direction).reshape(header.dim, header.dim)
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
            problem = f"has a direction matrix that is not invertible: {header.direction}"
    if problem:
        raise DataError(f"image {path} {problem}", path=path)


def read_image_header(
    path: str | os.PathLike, ignore_spacing: bool = False, dim: int | None = None, reset_frame: bool = False
) -> ImageHeader:
    """Reads only the header of an image file (fast: the pixel data is not decoded).

    Args:
        path: the image file, in any format SimpleITK reads.
        ignore_spacing: if True, the spacing is reported as 1 on every axis (and not checked).
        dim: the expected dimension (2 or 3) after the squeeze of `read_image`, or None to accept any.
        reset_frame: if True, the origin is reported as 0 and the direction as identity (`read_image`).

    Returns:
        The header, with the geometry `read_image` would give the image.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: SimpleITK cannot read the header, the dimension differs from `dim`, or the geometry is
            unusable (no pixels, a spacing that is not positive, a non-finite origin, a singular direction).
    """
    path = Path(path)
    _, header = _open(path)
    _check_geometry(header, path, ignore_spacing, dim)
    spacing = (1.0,) * header.dim if ignore_spacing else header.spacing
    origin, direction = header.origin, header.direction
    if reset_frame:
        origin, direction = (0.0,) * header.dim, tuple(np.eye(header.dim).ravel())
    return ImageHeader(header.size, spacing, origin, direction, header.pixel_type, header.components)


def read_image(path: str | os.PathLike, ignore_spacing: bool = False, dim: int | None = None,
               reset_frame: bool = False) -> sitk.Image:
    """Reads an image in any format SimpleITK reads (.mha, .nii.gz, .nrrd, .png, ...).

    A 3D image whose last axis has size 1 (how 2D radiographs are often stored) becomes a 2D image with the
    origin, spacing and direction of its first two axes. The header is read and checked first (as by
    `read_image_header`), so a bad header and bad pixel data are told apart.

    Args:
        path: the image file.
        ignore_spacing: if True, the spacing is set to 1 on every axis (used for the hand radiographs, whose
            stored spacing is unreliable; origin and direction are kept).
        dim: the expected dimension (2 or 3) after the squeeze above, or None to accept either.
        reset_frame: if True, the origin is set to 0 and the direction to identity (what the authors'
            readers do by default: their spine coordinates are in that frame).

    Returns:
        The image, with its geometry.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the header is unreadable or invalid (see `read_image_header`), its dimension differs from
            `dim`, or the pixel data cannot be decoded (a truncated or corrupt file).
    """
    path = Path(path)
    reader, header = _open(path)
    _check_geometry(header, path, ignore_spacing, dim)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise DataError(
            f"cannot decode the pixel data of image {path} (truncated or corrupt file?): {_reason(error)}",
            path=path,
        ) from error
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = _drop_last_axis(image)
    if ignore_spacing:
        image.SetSpacing([1.0] * image.GetDimension())
    if reset_frame:
        image.SetOrigin([0.0] * image.GetDimension())
        image.SetDirection(np.eye(image.GetDimension()).ravel().tolist())
    return image


def _drop_last_axis(image: sitk.Image) -> sitk.Image:
    """Turns a 3D image of size (x, y, 1) into a 2D image with the geometry of its first two axes."""
    flat = image[:, :, 0]
    direction = image.GetDirection()
    flat.SetDirection((direction[0], direction[1], direction[3], direction[4]))
    flat.SetOrigin(image.GetOrigin()[:2])
    flat.SetSpacing(image.GetSpacing()[:2])
    return flat


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Writes `image` to `path` atomically; the format follows the file name's suffix."""
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), compress)
