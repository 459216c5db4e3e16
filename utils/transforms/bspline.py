"""Cubic B-spline displacement fields: evaluation, Jacobian, inversion, and their random draw.

The displacement ``d`` lives in output physical space (output pixels); `utils.transforms.spatial` adds it to
the affine part of a sample's transform (OUTPUT -> INPUT map ``p -> A^-1 (p + d(p))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
import SimpleITK as sitk

from utils.transforms.affine import _per_axis, _vector
from utils.transforms.geometry import Geometry

__all__ = ["BSPLINE_GRIDS", "BSplineDisplacement", "RandomBSplineDeformation"]


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


BSPLINE_GRIDS = ("image", "mesh")  # the node layouts of `RandomBSplineDeformation`


class RandomBSplineDeformation:
    """Random cubic B-spline deformation drawn on a coarse grid of nodes over the OUTPUT grid.

    Two node layouts (``grid``), each with ``grid_nodes`` nodes per axis whose coefficients are uniform in
    [-max_displacement, max_displacement] output pixels per component, so no displacement exceeds it:

    - ``"image"``: the nodes run evenly from the first to the last output voxel centre (corners included),
      so every node lies on the image and moves it by up to its drawn amplitude (knots every 64 px for 5
      nodes at 256 px).
    - ``"mesh"``: the authors' SimpleITK layout (MedicalDataAugmentationTool ``deformation.Output``): a
      mesh of ``grid_nodes - 3`` cells over the output extent ``size * spacing`` starting at the output
      origin, so the first node lies one cell before the origin and the last two beyond the image (knots
      every 128 px for 5 nodes at 256 px): smoother, larger-scale warps. Needs ``grid_nodes >= 4``.

    Args:
        grid_nodes: Nodes per axis, order (x, y[, z]); one number for every axis (5 -> 5 x 5). At least 2
            ("image") or 4 ("mesh").
        max_displacement: Non-negative maximum coefficient in output pixels per displacement component,
            order (x, y[, z]); one number for every component.
        grid: Node layout, "image" or "mesh" (see above).
    """

    def __init__(self, grid_nodes: int | Sequence[int], max_displacement: float | Sequence[float],
                 grid: str = "image") -> None:
        if grid not in BSPLINE_GRIDS:
            raise ValueError(f"RandomBSplineDeformation: grid must be one of {BSPLINE_GRIDS}, got {grid!r}")
        nodes = _vector(grid_nodes, "grid_nodes", "RandomBSplineDeformation",
                        minimum=2.0 if grid == "image" else 4.0)
        if np.any(nodes != np.round(nodes)):
            raise ValueError(f"RandomBSplineDeformation: grid_nodes must be integers, got {grid_nodes!r}")
        self.grid_nodes = nodes.astype(np.int64)
        self.max_displacement = _vector(max_displacement, "max_displacement", "RandomBSplineDeformation",
                                        minimum=0.0)
        self.grid = grid

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
        size = np.asarray(output.size)
        origin = np.asarray(output.origin)
        if self.grid == "image":
            node_spacing = (size - 1) * spacing / (nodes - 1)
        else:
            node_spacing = size * spacing / (nodes - 3)
            origin = origin - output.direction_matrix @ node_spacing
        return BSplineDisplacement(
            origin=origin,
            spacing=node_spacing,
            direction=output.direction_matrix,
            coefficients=(pixels * spacing) @ output.direction_matrix.T,
        )


# ----------------------------------------------------------------------------------------------------------
# one sample's transform
