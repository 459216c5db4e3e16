"""Spatial augmentation: affine steps, a random cubic B-spline deformation, and the per-sample transform.

Conventions (GUIDE section 3):

- Points are physical, shape (..., dim), coordinate order (x, y[, z]); arrays are NumPy order ([z,] y, x).
- An affine step is a callable ``step(input, output, rng) -> (dim + 1, dim + 1)`` homogeneous matrix that maps
  INPUT physical points to OUTPUT physical points (the forward direction). `SpatialAugmentation` chains the
  steps in list order: the matrix of the chain is ``A = M_k @ ... @ M_1``.
- The output (network) space has origin 0, identity direction and spacing 1, so output physical units are
  output pixels. A step placed after `FitToOutput` therefore works in output pixels.
- The deformation ``d`` (a `BSplineDisplacement`) lives in output physical space. The full map used for
  resampling goes OUTPUT -> INPUT: ``p -> A^-1 (p + d(p))``; landmarks go through its inverse.
- Random steps draw from the injected `numpy.random.Generator`; with ``rng=None`` a random step is the
  identity and no deformation is drawn (the validation chain).

A standard 2D chain (hand radiographs to a 256 x 256 network input)::

    augmentation = SpatialAugmentation(
        [CenterToOrigin(), FitToOutput(), RandomTranslate(10.0), RandomRotate(0.2),
         RandomScale(0.1, 0.05), OriginToOutputCenter()],
        deformation=RandomBSplineDeformation(grid_nodes=5, max_displacement=20.0),
    )
    transform = augmentation.sample(Geometry.from_image(image), Geometry.grid((256, 256)), rng)
    array = transform.resample(image)                      # (256, 256) float32
    points = transform.input_to_output(landmarks)          # (N, 2) output pixels (x, y)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numba
import numpy as np
import SimpleITK as sitk

from utils.transforms.geometry import Geometry, apply_affine

__all__ = [
    "AffineStep",
    "BSplineDisplacement",
    "CenterToOrigin",
    "FitToOutput",
    "Flip",
    "OriginToOutputCenter",
    "RandomBSplineDeformation",
    "RandomFlip",
    "RandomRotate",
    "RandomScale",
    "RandomTranslate",
    "Rotate",
    "SampleTransform",
    "Scale",
    "SpatialAugmentation",
    "Translate",
]


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


@numba.njit(cache=True, nogil=True)
def _cubic_bspline_weights(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform cubic B-spline weights of the four nodes around continuous node coordinates.

    Args:
        u: (n,) continuous node coordinates (finite).

    Returns:
        first: (n,) int64 index of the first of the four nodes (``floor(u) - 1``);
        weights: (n, 4) weights of nodes first .. first + 3 (they sum to 1);
        derivatives: (n, 4) derivatives of those weights with respect to u.
    """
    count = u.shape[0]
    first = np.empty(count, dtype=np.int64)
    weights = np.empty((count, 4))
    derivatives = np.empty((count, 4))
    for i in range(count):
        floor = np.floor(u[i])
        f = u[i] - floor
        g = 1.0 - f
        first[i] = int(floor) - 1
        weights[i, 0] = g**3 / 6.0
        weights[i, 1] = (4.0 - 6.0 * f**2 + 3.0 * f**3) / 6.0
        weights[i, 2] = (1.0 + 3.0 * f + 3.0 * f**2 - 3.0 * f**3) / 6.0
        weights[i, 3] = f**3 / 6.0
        derivatives[i, 0] = -0.5 * g**2
        derivatives[i, 1] = 1.5 * f**2 - 2.0 * f
        derivatives[i, 2] = 0.5 + f - 1.5 * f**2
        derivatives[i, 3] = 0.5 * f**2
    return first, weights, derivatives


@numba.njit(cache=True, nogil=True)
def _gather_points(padded: np.ndarray, node_counts: np.ndarray, u: np.ndarray, pad: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """B-spline values and their derivatives with respect to node coordinates at P points (compiled).

    Args:
        padded: (n_total, dim) coefficients of the zero-padded node grid, flattened in C order of the
            NumPy-ordered node axes ([z,] y, x).
        node_counts: (dim,) int64 padded node counts, order (x, y[, z]).
        u: (P, dim) continuous node coordinates of the unpadded grid, order (x, y[, z]); finite.
        pad: Zero nodes added on each side of every node axis.

    Returns:
        (P, dim) values and (P, dim, dim) derivatives ``D[p, c, a] = d value_c / d u_a``.
    """
    count, dim = u.shape
    strides = np.ones(dim, dtype=np.int64)
    for axis in range(1, dim):
        strides[axis] = strides[axis - 1] * node_counts[axis - 1]
    values = np.zeros((count, dim))
    derivatives = np.zeros((count, dim, dim))
    for p in range(count):
        first, weights, slopes = _cubic_bspline_weights(u[p])
        for combination in range(4**dim):
            flat = 0
            weight = 1.0
            code = combination
            for axis in range(dim):
                offset = code % 4
                code //= 4
                node = min(max(first[axis] + offset + pad, 0), node_counts[axis] - 1)
                flat += node * strides[axis]
                weight *= weights[axis, offset]
            for component in range(dim):
                values[p, component] += weight * padded[flat, component]
            for by_axis in range(dim):
                partial = 1.0
                code = combination
                for axis in range(dim):
                    offset = code % 4
                    code //= 4
                    partial *= slopes[axis, offset] if axis == by_axis else weights[axis, offset]
                for component in range(dim):
                    derivatives[p, component, by_axis] += partial * padded[flat, component]
    return values, derivatives


@numba.njit(cache=True, nogil=True)
def _newton_solve(padded: np.ndarray, node_counts: np.ndarray, origin: np.ndarray, to_nodes: np.ndarray,
                  targets: np.ndarray, pad: int, tolerance: float, max_iterations: int) -> np.ndarray:
    """Solves ``p + d(p) = target`` for each finite target by Newton's method (compiled).

    Args:
        padded, node_counts, pad: the zero-padded coefficient grid, as for `_gather_points`.
        origin: (dim,) physical position of node 0.
        to_nodes: (dim, dim) matrix with node coordinates ``u = (p - origin) @ to_nodes``.
        targets: (P, dim) finite physical targets.
        tolerance: largest residual component accepted.
        max_iterations: Newton iterations at most.

    Returns:
        (P, dim) solutions; NaN rows for targets whose iteration did not converge.
    """
    count, dim = targets.shape
    result = np.empty_like(targets)
    identity = np.eye(dim)
    u = np.empty((1, dim))
    for n in range(count):
        p = targets[n].copy()
        converged = False
        for _ in range(max_iterations):
            for axis in range(dim):
                u[0, axis] = np.sum((p - origin) * to_nodes[:, axis])
            values, by_u = _gather_points(padded, node_counts, u, pad)
            residual = p + values[0] - targets[n]
            if np.max(np.abs(residual)) < tolerance:
                converged = True
                break
            p = p - np.linalg.solve(identity + by_u[0] @ to_nodes.T, residual)
        if converged:
            result[n] = p
        else:
            result[n] = np.nan
    return result


_PAD = 4  # zero nodes added around the coefficient grid so that clipped gather indices read zeros


@dataclass(frozen=True, eq=False)
class BSplineDisplacement:
    """Cubic B-spline displacement field ``d(p)`` on a regular grid of nodes in physical space.

    ``d(p) = sum_j c_j * prod_a B3(u_a - j_a)`` with node coordinates
    ``u = diag(1 / spacing) R^T (p - origin)`` (R = direction) and the centred cubic B-spline B3. The
    field is zero two node spacings beyond the outermost nodes and C2-continuous everywhere.

    Attributes:
        origin: (dim,) physical position of node (0, 0[, 0]), order (x, y[, z]).
        spacing: (dim,) physical distance between neighbouring nodes along each node axis, order (x, y[, z]).
        direction: (dim, dim) matrix whose columns are the physical directions of the node axes.
        coefficients: ([n_z,] n_y, n_x, dim) float64 coefficients, node axes in NumPy order, displacement
            components (x, y[, z]) in physical units.
    """

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    coefficients: np.ndarray

    def __post_init__(self) -> None:
        dim = self.coefficients.shape[-1]
        if self.coefficients.ndim != dim + 1 or dim not in (2, 3):
            raise ValueError(f"BSplineDisplacement: coefficients must have shape ([n_z,] n_y, n_x, dim), "
                             f"got {self.coefficients.shape}")
        if self.origin.shape != (dim,) or self.spacing.shape != (dim,) or self.direction.shape != (dim, dim):
            raise ValueError(f"BSplineDisplacement: origin {self.origin.shape}, spacing {self.spacing.shape} "
                             f"and direction {self.direction.shape} do not fit {dim}-D coefficients")

    @property
    def dim(self) -> int:
        """Number of spatial dimensions."""
        return self.coefficients.shape[-1]

    @property
    def nodes(self) -> tuple[int, ...]:
        """Number of nodes per axis, order (x, y[, z])."""
        return self.coefficients.shape[-2::-1]

    @cached_property
    def _padded(self) -> np.ndarray:
        pad = [(_PAD, _PAD)] * self.dim + [(0, 0)]
        return np.pad(self.coefficients, pad)

    def _node_coordinates(self, points: np.ndarray) -> np.ndarray:
        return ((points - self.origin) @ self.direction) / self.spacing

    def _gather(self, points: np.ndarray, with_jacobian: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Displacements (P, dim) and optionally Jacobians (P, dim, dim) of finite points (P, dim)."""
        padded = self._padded
        node_counts = np.array(padded.shape[-2::-1], dtype=np.int64)
        values, by_u = _gather_points(padded.reshape(-1, self.dim), node_counts,
                                      np.ascontiguousarray(self._node_coordinates(points)), _PAD)
        if not with_jacobian:
            return values, None
        return values, by_u @ (self.direction / self.spacing).T

    def solve(self, targets: np.ndarray, tolerance: float = 1e-9, max_iterations: int = 50) -> np.ndarray:
        """Points p with ``p + d(p) = target`` (the inverse of p -> p + d(p)), by Newton's method.

        Args:
            targets: (..., dim) physical points, order (x, y[, z]); NaN rows stay NaN.
            tolerance: Largest residual component (physical units) at which a point counts as solved.
            max_iterations: Newton iterations at most, starting at the target itself.

        Returns:
            (..., dim) float64 points; NaN where the iteration did not converge (only possible for a folding
            deformation, far beyond the usual amplitudes).
        """
        targets = np.asarray(targets, dtype=np.float64)
        flat = targets.reshape(-1, self.dim)
        finite = np.all(np.isfinite(flat), axis=1)
        result = np.full(flat.shape, np.nan)
        padded = self._padded
        node_counts = np.array(padded.shape[-2::-1], dtype=np.int64)
        result[finite] = _newton_solve(padded.reshape(-1, self.dim), node_counts, self.origin,
                                       np.ascontiguousarray(self.direction / self.spacing),
                                       np.ascontiguousarray(flat[finite]), _PAD, tolerance, max_iterations)
        return result.reshape(targets.shape)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Displacements at physical points.

        Args:
            points: (..., dim) physical points, order (x, y[, z]); NaN rows give NaN.

        Returns:
            (..., dim) float64 displacements in physical units.
        """
        return self._evaluate(points, with_jacobian=False)[0]

    def value_and_jacobian(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacements and their Jacobians at physical points.

        Args:
            points: (..., dim) physical points, order (x, y[, z]); NaN rows give NaN.

        Returns:
            (..., dim) displacements and (..., dim, dim) Jacobians ``J[..., i, j] = d d_i / d p_j``.
        """
        return self._evaluate(points, with_jacobian=True)

    def _evaluate(self, points: np.ndarray, with_jacobian: bool) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1:] != (self.dim,):
            raise ValueError(f"BSplineDisplacement: points must have shape (..., {self.dim}), "
                             f"got {points.shape}")
        flat = points.reshape(-1, self.dim)
        finite = np.all(np.isfinite(flat), axis=1)
        displacement = np.full(flat.shape, np.nan)
        jacobian = np.full(flat.shape + (self.dim,), np.nan)
        values, derivatives = self._gather(flat[finite], with_jacobian)
        displacement[finite] = values
        if with_jacobian:
            jacobian[finite] = derivatives
        return displacement.reshape(points.shape), jacobian.reshape(points.shape + (self.dim,))

    def grid_weights(self, geometry: Geometry) -> list[np.ndarray]:
        """Per-axis B-spline weight matrices of a grid whose axes are parallel to the node axes.

        The displacement at voxel (i_x, i_y[, i_z]) is ``sum_{k_x, k_y[, k_z]} W_x[i_x, k_x] W_y[i_y, k_y]
        [W_z[i_z, k_z]] c[[k_z,] k_y, k_x]``: the field on a grid is separable.

        Args:
            geometry: Grid with the same direction as the node grid (e.g. the output grid it was drawn on).

        Returns:
            One (size_a, n_a) float64 matrix per axis, order (x, y[, z]).
        """
        if geometry.dim != self.dim or not np.allclose(geometry.direction_matrix, self.direction, atol=1e-9):
            raise ValueError(f"BSplineDisplacement: geometry direction {geometry.direction} is not "
                             f"the node grid's {tuple(self.direction.ravel())}")
        start = self._node_coordinates(np.asarray(geometry.origin))
        matrices = []
        for axis in range(self.dim):
            size = geometry.size[axis]
            u = start[axis] + np.arange(size) * (geometry.spacing[axis] / self.spacing[axis])
            first, weights, _ = _cubic_bspline_weights(u)
            matrix = np.zeros((size, self.nodes[axis] + 2 * _PAD))
            columns = np.clip(first[:, None] + np.arange(4) + _PAD, 0, matrix.shape[1] - 1)
            matrix[np.arange(size)[:, None], columns] = weights
            matrices.append(matrix[:, _PAD:-_PAD])
        return matrices

    def on_grid(self, geometry: Geometry) -> np.ndarray:
        """Displacements at every voxel of a grid whose axes are parallel to the node axes (separable).

        The coefficient grid is contracted with the `grid_weights` matrices, one axis at a time.

        Args:
            geometry: Grid with the same direction as the node grid (e.g. the output grid it was drawn on).

        Returns:
            (*geometry.shape, dim) float64 displacements in physical units, components (x, y[, z]).
        """
        field = self.coefficients
        for axis, matrix in enumerate(self.grid_weights(geometry)):
            array_axis = self.dim - 1 - axis
            field = np.moveaxis(np.tensordot(matrix, field, axes=([1], [array_axis])), 0, array_axis)
        return field

    def to_sitk(self) -> sitk.BSplineTransform:
        """The same field as a SimpleITK cubic `BSplineTransform` (p -> p + d(p)), exact everywhere.

        The transform domain starts two node spacings before the first node and ends two after the last,
        where the field is zero, so SimpleITK's identity outside its domain agrees with `d`.
        """
        nodes = np.asarray(self.nodes)
        transform = sitk.BSplineTransform(self.dim, 3)
        transform.SetTransformDomainOrigin(tuple(self.origin - self.direction @ (2.0 * self.spacing)))
        transform.SetTransformDomainDirection(tuple(self.direction.ravel()))
        transform.SetTransformDomainPhysicalDimensions(tuple((nodes + 3) * self.spacing))
        transform.SetTransformDomainMeshSize([int(n) + 3 for n in nodes])
        padded = np.pad(self.coefficients, [(3, 3)] * self.dim + [(0, 0)])
        transform.SetParameters(np.moveaxis(padded, -1, 0).ravel().tolist())
        return transform


class RandomBSplineDeformation:
    """Random cubic B-spline deformation drawn on a coarse grid of nodes spanning the OUTPUT grid.

    The nodes are evenly spaced from the first to the last output voxel centre along each output axis
    (``grid_nodes`` per axis, corners included); each node's coefficient is uniform in
    [-max_displacement, max_displacement] output pixels per component, so no displacement exceeds it.

    Args:
        grid_nodes: Nodes per axis (>= 2), order (x, y[, z]); one number for every axis (5 -> 5 x 5).
        max_displacement: Non-negative maximum coefficient in output pixels per displacement component,
            order (x, y[, z]); one number for every component.
    """

    def __init__(self, grid_nodes: int | Sequence[int], max_displacement: float | Sequence[float]) -> None:
        nodes = _vector(grid_nodes, "grid_nodes", "RandomBSplineDeformation", minimum=2.0)
        if np.any(nodes != np.round(nodes)):
            raise ValueError(f"RandomBSplineDeformation: grid_nodes must be integers, got {grid_nodes!r}")
        self.grid_nodes = nodes.astype(np.int64)
        self.max_displacement = _vector(max_displacement, "max_displacement", "RandomBSplineDeformation",
                                        minimum=0.0)

    def __call__(self, output: Geometry, rng: np.random.Generator | None) -> BSplineDisplacement | None:
        """Draw one deformation over `output` (None when rng is None: no deformation)."""
        owner = "RandomBSplineDeformation"
        nodes = _per_axis(self.grid_nodes, output.dim, "grid_nodes", owner)
        limit = _per_axis(self.max_displacement, output.dim, "max_displacement", owner)
        if min(output.size) < 2:
            raise ValueError(f"{owner}: the output size {output.size} needs at least 2 voxels per axis")
        if rng is None:
            return None
        pixels = rng.uniform(-limit, limit, size=tuple(nodes[::-1]) + (output.dim,))
        spacing = np.asarray(output.spacing)
        return BSplineDisplacement(
            origin=np.asarray(output.origin),
            spacing=(np.asarray(output.size) - 1) * spacing / (nodes - 1),
            direction=output.direction_matrix,
            coefficients=(pixels * spacing) @ output.direction_matrix.T,
        )


# ----------------------------------------------------------------------------------------------------------
# one sample's transform


@dataclass(frozen=True, eq=False)
class SampleTransform:
    """The spatial transform of one sample, kept to map predictions back to the input image.

    The OUTPUT -> INPUT map (used for resampling) is ``p -> A^-1 (p + d(p))`` with A = `matrix` and
    d = `deformation` (zero when None); landmarks go INPUT -> OUTPUT through its inverse.

    Attributes:
        input: Geometry of the input image.
        output: Geometry of the output (network) grid.
        matrix: (dim + 1, dim + 1) forward affine, input physical -> output physical (before deformation).
        deformation: Displacement field in output physical space, or None.
    """

    input: Geometry
    output: Geometry
    matrix: np.ndarray
    deformation: BSplineDisplacement | None = None

    def __post_init__(self) -> None:
        dim = self.output.dim
        if self.input.dim != dim or self.matrix.shape != (dim + 1, dim + 1):
            raise ValueError(f"SampleTransform: input {self.input.dim}-D, output {dim}-D and matrix "
                             f"{self.matrix.shape} do not agree")
        if self.deformation is not None and self.deformation.dim != dim:
            raise ValueError(f"SampleTransform: deformation is {self.deformation.dim}-D, output {dim}-D")

    @cached_property
    def inverse_matrix(self) -> np.ndarray:
        """(dim + 1, dim + 1) inverse affine, output physical -> input physical (after deformation)."""
        return np.linalg.inv(self.matrix)

    def output_to_input(self, points: np.ndarray) -> np.ndarray:
        """Map output physical points to input physical points: ``A^-1 (p + d(p))``.

        Args:
            points: (..., dim) output physical points (= output pixels), order (x, y[, z]); NaN rows stay NaN.

        Returns:
            (..., dim) float64 input physical points.
        """
        points = np.asarray(points, dtype=np.float64)
        if self.deformation is not None:
            points = points + self.deformation(points)
        return apply_affine(self.inverse_matrix, points)

    def input_to_output(self, points: np.ndarray, tolerance: float = 1e-9, max_iterations: int = 50
                        ) -> np.ndarray:
        """Map input physical points to output physical points (inverse of `output_to_input`).

        The affine part is exact; the deformation is inverted by Newton's method on ``p + d(p) = A x``,
        starting at ``A x``, until every residual is below `tolerance` output units.

        Args:
            points: (..., dim) input physical points, order (x, y[, z]); NaN rows stay NaN.
            tolerance: Residual (output physical units) at which a point counts as converged.
            max_iterations: Newton iterations at most.

        Returns:
            (..., dim) float64 output physical points. A point whose iteration does not converge (only
            possible for a folding deformation, far beyond the usual amplitudes) is returned as NaN: it is
            then treated as a missing landmark.
        """
        target = apply_affine(self.matrix, points)
        if self.deformation is None:
            return target
        return self.deformation.solve(target, tolerance, max_iterations)

    def to_sitk(self) -> sitk.Transform:
        """One SimpleITK transform OUTPUT physical -> INPUT physical, as `sitk.Resample` expects.

        An `AffineTransform` (A^-1), composed with the `BSplineTransform` of the deformation applied first
        (a `CompositeTransform` applies the transform added last first).
        """
        dim = self.output.dim
        affine = sitk.AffineTransform(dim)
        affine.SetMatrix(self.inverse_matrix[:dim, :dim].ravel().tolist())
        affine.SetTranslation(self.inverse_matrix[:dim, dim].tolist())
        if self.deformation is None:
            return affine
        composite = sitk.CompositeTransform(dim)
        composite.AddTransform(affine)
        composite.AddTransform(self.deformation.to_sitk())
        return composite

    def resample(self, image: sitk.Image, interpolator: int = sitk.sitkLinear, default_value: float = 0.0
                 ) -> np.ndarray:
        """Resample an input image onto the output grid with SimpleITK.

        Args:
            image: Input image in the input physical space (same dimension as the output).
            interpolator: SimpleITK interpolator, e.g. `sitk.sitkLinear`.
            default_value: Value outside the input image.

        Returns:
            float32 array of shape `output.shape` (NumPy order ([z,] y, x)).
        """
        if image.GetDimension() != self.output.dim:
            raise ValueError(f"SampleTransform.resample: image is {image.GetDimension()}-D, "
                             f"the output grid {self.output.dim}-D")
        resampled = sitk.Resample(image, list(self.output.size), self.to_sitk(), interpolator,
                                  self.output.origin, self.output.spacing, self.output.direction,
                                  float(default_value), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(resampled)


class SpatialAugmentation:
    """A chain of affine steps plus an optional random deformation; `sample` draws one `SampleTransform`.

    Args:
        steps: Affine steps applied to input points in list order (see `AffineStep`).
        deformation: Optional `RandomBSplineDeformation` applied in output space.
    """

    def __init__(self, steps: Sequence[AffineStep], deformation: RandomBSplineDeformation | None = None
                 ) -> None:
        self.steps = tuple(steps)
        for step in self.steps:
            if not callable(step):
                raise ValueError(f"SpatialAugmentation: every step must be callable, got {step!r}")
        if deformation is not None and not callable(deformation):
            raise ValueError(f"SpatialAugmentation: deformation must be callable or None, "
                             f"got {deformation!r}")
        self.deformation = deformation

    def sample(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> SampleTransform:
        """Draw the transform of one sample (rng None: every random part at its identity).

        Args:
            input: Geometry of the input image.
            output: Geometry of the output grid.
            rng: Generator for the random steps, drawn in chain order; None for the validation chain.
        """
        if input.dim != output.dim:
            raise ValueError(f"SpatialAugmentation.sample: input is {input.dim}-D, output {output.dim}-D")
        matrix = np.eye(input.dim + 1)
        for step in self.steps:
            step_matrix = np.asarray(step(input, output, rng), dtype=np.float64)
            if step_matrix.shape != matrix.shape:
                raise ValueError(f"SpatialAugmentation: step {step!r} returned shape {step_matrix.shape}, "
                                 f"expected {matrix.shape}")
            matrix = step_matrix @ matrix
        deformation = self.deformation(output, rng) if self.deformation is not None else None
        return SampleTransform(input, output, matrix, deformation)
