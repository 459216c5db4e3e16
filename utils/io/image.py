"""Reading and writing images with SimpleITK, keeping their physical geometry (origin, spacing, direction)."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from utils.io.atomic import atomic_path

__all__ = ["read_image", "write_image"]


def read_image(path: str | os.PathLike, ignore_spacing: bool = False, dim: int | None = None) -> sitk.Image:
    """Reads an image in any format SimpleITK reads (.mha, .nii.gz, .nrrd, .png, ...).

    A 3D image whose last axis has size 1 (how 2D radiographs are often stored) becomes a 2D image with the
    origin, spacing and direction of its first two axes.

    Args:
        path: the image file.
        ignore_spacing: if True, the spacing is set to 1 on every axis (used for the hand radiographs, whose
            stored spacing is unreliable; origin and direction are kept).
        dim: the expected dimension (2 or 3) after the squeeze above, or None to accept either.

    Returns:
        The image, with its geometry.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: SimpleITK cannot read the file, or its dimension differs from `dim`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"cannot read image {path}: {first_line}") from error
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = _drop_last_axis(image)
    if dim is not None and image.GetDimension() != dim:
        raise ValueError(
            f"image {path} is {image.GetDimension()}D (size {image.GetSize()}), but dim={dim} was configured"
        )
    if ignore_spacing:
        image.SetSpacing([1.0] * image.GetDimension())
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
