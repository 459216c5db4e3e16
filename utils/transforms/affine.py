"""Affine steps of a spatial chain: centring, fitting to the output, translation, rotation, scaling, flips.

Conventions (GUIDE section 3): points are physical, coordinate order (x, y[, z]). A step is a callable
``step(input, output, rng) -> (dim + 1, dim + 1)`` homogeneous matrix that maps INPUT physical points to
OUTPUT physical points (the forward direction); `utils.transforms.spatial.SpatialAugmentation` chains them.
The output (network) space has origin 0, identity direction and spacing 1, so a step placed after
`FitToOutput` works in output pixels. Random steps draw from the injected `numpy.random.Generator`; with
``rng=None`` they are the identity (the validation chain).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from utils.transforms.geometry import Geometry

__all__ = ["AffineStep", "CenterToOrigin", "FitToOutput", "Flip", "OriginToOutputCenter", "RandomCrop",
           "RandomFlip", "RandomRotate", "RandomScale", "RandomTranslate", "Rotate", "Scale", "Translate"]


class AffineStep(Protocol):
    """One affine step of a spatial chain (forward direction, input physical -> output physical)."""

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        """Return the (dim + 1, dim + 1) homogeneous matrix of this step for one sample."""
        ...


# ----------------------------------------------------------------------------------------------------------
# argument checking and small matrix helpers


def _vector(value: float | Sequence[float], name: str, owner: str, minimum: float | None = None,
            below: float | None = None) -> np.ndarray:
    """A number or a sequence of 1 to 3 finite numbers as a 1-D float64 array, range-checked."""
    array = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if array.ndim != 1 or not 1 <= array.size <= 3 or not np.all(np.isfinite(array)):
        raise ValueError(f"{owner}: {name} must be a finite number or a sequence of 1 to 3 finite numbers, "
                         f"got {value!r}")
    if minimum is not None and np.any(array < minimum):
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    if below is not None and np.any(array >= below):
        raise ValueError(f"{owner}: {name} must be < {below}, got {value!r}")
    return array


def _per_axis(array: np.ndarray, dim: int, name: str, owner: str) -> np.ndarray:
    """Broadcast a length-1 vector to `dim` entries; reject any other length that is not `dim`."""
    if array.size == 1:
        return np.full(dim, array[0])
    if array.size != dim:
        raise ValueError(f"{owner}: {name} has {array.size} entries but the geometry is {dim}-D")
    return array


def _translation(offset: np.ndarray) -> np.ndarray:
    matrix = np.eye(offset.size + 1)
    matrix[:-1, -1] = offset
    return matrix


def _linear(linear: np.ndarray) -> np.ndarray:
    matrix = np.eye(linear.shape[0] + 1)
    matrix[:-1, :-1] = linear
    return matrix


def _rotation(angles: np.ndarray, dim: int, owner: str) -> np.ndarray:
    """Rotation matrix: 2D one angle (x towards y); 3D angles about x, y, z applied in that order."""
    expected = 1 if dim == 2 else 3
    if angles.size != expected:
        raise ValueError(f"{owner}: a {dim}-D rotation needs {expected} angle(s), got {angles.size}")
    cos, sin = np.cos(angles), np.sin(angles)
    if dim == 2:
        return np.array([[cos[0], -sin[0]], [sin[0], cos[0]]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cos[0], -sin[0]], [0.0, sin[0], cos[0]]])
    about_y = np.array([[cos[1], 0.0, sin[1]], [0.0, 1.0, 0.0], [-sin[1], 0.0, cos[1]]])
    about_z = np.array([[cos[2], -sin[2], 0.0], [sin[2], cos[2], 0.0], [0.0, 0.0, 1.0]])
    return about_z @ about_y @ about_x


def _axes(axes: Sequence[int], owner: str) -> tuple[int, ...]:
    values = tuple(axes)
    if not values or len(set(values)) != len(values) or any(
            not isinstance(a, int | np.integer) or not 0 <= a <= 2 for a in values):
        raise ValueError(f"{owner}: axes must be distinct axis numbers 0 (x), 1 (y), 2 (z), got {axes!r}")
    return tuple(int(a) for a in values)


def _check_axes_fit(axes: tuple[int, ...], dim: int, owner: str) -> None:
    if max(axes) >= dim:
        raise ValueError(f"{owner}: axes {axes} include an axis beyond a {dim}-D geometry")


def _flip(axes: Sequence[int], dim: int) -> np.ndarray:
    factors = np.ones(dim)
    factors[list(axes)] = -1.0
    return _linear(np.diag(factors))


def _bounding_extent(geometry: Geometry) -> np.ndarray:
    """Physical size, per physical axis, of the axis-aligned box around the voxel grid's extent."""
    return np.abs(geometry.direction_matrix) @ geometry.extent


# ----------------------------------------------------------------------------------------------------------
# affine steps


class CenterToOrigin:
    """Move the physical centre of the input grid to the origin (translation by ``-input.center``)."""

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        return _translation(-input.center)


class OriginToOutputCenter:
    """Move the origin to the physical centre of the output grid (translation by ``output.center``)."""

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        return _translation(output.center)


class FitToOutput:
    """Scale about the origin so that the input grid's extent fits the output grid's extent.

    The extents are the axis-aligned physical boxes around the grids (size * spacing along each index axis,
    rotated by the direction). Place after `CenterToOrigin` and before `OriginToOutputCenter`.

    Args:
        keep_aspect: If True, one factor for all axes (the smallest per-axis factor: the whole input fits and
            the aspect ratio is kept); if False, each axis is stretched to fill the output.
    """

    def __init__(self, keep_aspect: bool = True) -> None:
        if not isinstance(keep_aspect, bool):
            raise ValueError(f"FitToOutput: keep_aspect must be a bool, got {keep_aspect!r}")
        self.keep_aspect = keep_aspect

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        factors = _bounding_extent(output) / _bounding_extent(input)
        if self.keep_aspect:
            factors = np.full_like(factors, factors.min())
        return _linear(np.diag(factors))


class Translate:
    """Fixed translation.

    Args:
        offset: Translation in physical units of the current stage of the chain, order (x, y[, z]); after
            `FitToOutput` these are output pixels. A single number is used for every axis.
    """

    def __init__(self, offset: float | Sequence[float]) -> None:
        self.offset = _vector(offset, "offset", "Translate")

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        return _translation(_per_axis(self.offset, input.dim, "offset", "Translate"))


class RandomCrop:
    """Random translation that lets a training sample show any part of an input longer than the output grid
    (a spine CT longer than the network input): uniform per axis within +-(input extent - output extent) / 2,
    0 along an axis where the input fits; identity when rng is None (the centre, for validation). Place after
    `CenterToOrigin`, while the chain is still in the input's physical units (mm).

    Args:
        spacing: The output grid's fixed spacing, physical units (mm) per output pixel.
    """

    def __init__(self, spacing: float) -> None:
        if not spacing > 0:
            raise ValueError(f"RandomCrop: spacing must be positive, got {spacing!r}")
        self.spacing = float(spacing)

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None:
            return np.eye(input.dim + 1)
        room = np.maximum(_bounding_extent(input) - np.asarray(output.size) * self.spacing, 0.0) / 2.0
        return _translation(rng.uniform(-room, room))


class RandomTranslate:
    """Random translation, uniform in [-max_offset, max_offset] per axis; identity when rng is None.

    Args:
        max_offset: Non-negative maximum per axis in physical units of the current stage (output pixels after
            `FitToOutput`), order (x, y[, z]); a single number is used for every axis.
    """

    def __init__(self, max_offset: float | Sequence[float]) -> None:
        self.max_offset = _vector(max_offset, "max_offset", "RandomTranslate", minimum=0.0)

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        limit = _per_axis(self.max_offset, input.dim, "max_offset", "RandomTranslate")
        if rng is None:
            return np.eye(input.dim + 1)
        return _translation(rng.uniform(-limit, limit))


class Rotate:
    """Fixed rotation about the origin (place between `CenterToOrigin` and `OriginToOutputCenter`).

    Args:
        angles: Radians. 2D: one angle; positive turns the +x axis towards +y. 3D: three angles about the
            x, y and z axes, applied in that order (matrix ``Rz @ Ry @ Rx``), right-handed.
    """

    def __init__(self, angles: float | Sequence[float]) -> None:
        self.angles = _vector(angles, "angles", "Rotate")

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        return _linear(_rotation(self.angles, input.dim, "Rotate"))


class RandomRotate:
    """Random rotation about the origin, each angle uniform in [-max_angle, max_angle]; identity for rng None.

    Args:
        max_angle: Non-negative maximum in radians; one number (used for every angle) or, in 3D, three
            numbers for the angles about x, y, z (applied in that order, as in `Rotate`).
    """

    def __init__(self, max_angle: float | Sequence[float]) -> None:
        self.max_angle = _vector(max_angle, "max_angle", "RandomRotate", minimum=0.0)

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        count = 1 if input.dim == 2 else 3
        if self.max_angle.size not in (1, count):
            raise ValueError(f"RandomRotate: max_angle has {self.max_angle.size} entries; a {input.dim}-D "
                             f"rotation takes 1 or {count}")
        limit = np.broadcast_to(self.max_angle, (count,))
        if rng is None:
            return np.eye(input.dim + 1)
        return _linear(_rotation(rng.uniform(-limit, limit), input.dim, "RandomRotate"))


class Scale:
    """Fixed scaling about the origin.

    Args:
        factors: Positive factors (> 1 enlarges), order (x, y[, z]); a single number scales isotropically.
    """

    def __init__(self, factors: float | Sequence[float]) -> None:
        self.factors = _vector(factors, "factors", "Scale")
        if np.any(self.factors <= 0.0):
            raise ValueError(f"Scale: factors must be positive, got {factors!r}")

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        return _linear(np.diag(_per_axis(self.factors, input.dim, "factors", "Scale")))


class RandomScale:
    """Random scaling about the origin; identity when rng is None.

    The factor along axis a is ``(1 + U(-max_isotropic, max_isotropic)) * (1 + U(-m_a, m_a))`` with
    ``m = max_anisotropic``: one isotropic draw shared by all axes, one anisotropic draw per axis.

    Args:
        max_isotropic: Relative amount in [0, 1) (0.1 means factors 0.9 to 1.1).
        max_anisotropic: Relative amount per axis in [0, 1), order (x, y[, z]); one number for every axis.
    """

    def __init__(self, max_isotropic: float = 0.0, max_anisotropic: float | Sequence[float] = 0.0) -> None:
        self.max_isotropic = float(_vector(max_isotropic, "max_isotropic", "RandomScale", 0.0, 1.0)[0])
        if np.ndim(max_isotropic) != 0:
            raise ValueError(f"RandomScale: max_isotropic must be a single number, got {max_isotropic!r}")
        self.max_anisotropic = _vector(max_anisotropic, "max_anisotropic", "RandomScale", 0.0, 1.0)

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        limit = _per_axis(self.max_anisotropic, input.dim, "max_anisotropic", "RandomScale")
        if rng is None:
            return np.eye(input.dim + 1)
        isotropic = 1.0 + rng.uniform(-self.max_isotropic, self.max_isotropic)
        return _linear(np.diag(isotropic * (1.0 + rng.uniform(-limit, limit))))


class Flip:
    """Mirror about the origin along the given physical axes (place while the image is centred on 0).

    Args:
        axes: Axis numbers in coordinate order: 0 = x, 1 = y, 2 = z.
    """

    def __init__(self, axes: Sequence[int]) -> None:
        self.axes = _axes(axes, "Flip")

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        _check_axes_fit(self.axes, input.dim, "Flip")
        return _flip(self.axes, input.dim)


class RandomFlip:
    """Mirror about the origin along each given axis independently with a probability; identity for rng None.

    Args:
        axes: Axis numbers in coordinate order: 0 = x, 1 = y, 2 = z.
        probability: Chance in [0, 1] that each listed axis is flipped.
    """

    def __init__(self, axes: Sequence[int], probability: float = 0.5) -> None:
        self.axes = _axes(axes, "RandomFlip")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"RandomFlip: probability must be in [0, 1], got {probability!r}")
        self.probability = float(probability)

    def __call__(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> np.ndarray:
        _check_axes_fit(self.axes, input.dim, "RandomFlip")
        if rng is None:
            return np.eye(input.dim + 1)
        chosen = rng.random(len(self.axes)) < self.probability
        return _flip(tuple(a for a, c in zip(self.axes, chosen, strict=True) if c), input.dim)


# ----------------------------------------------------------------------------------------------------------
# cubic B-spline deformation
