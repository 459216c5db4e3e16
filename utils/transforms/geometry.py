"""Voxel grid geometry: size, spacing, origin and direction, with index <-> physical mapping.

A `Geometry` describes a grid exactly as SimpleITK does: the physical point of the continuous index
``i`` (order x, y[, z]) is ``origin + direction @ (spacing * i)``, with ``direction`` stored row-major.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk

__all__ = ["Geometry", "apply_affine"]


@dataclass(frozen=True)
class Geometry:
    """Size, spacing, origin and direction of a 2D or 3D voxel grid (SimpleITK conventions).

    Attributes:
        size: Number of voxels per axis, order (x, y[, z]).
        spacing: Physical distance between voxel centres per axis, order (x, y[, z]), positive.
        origin: Physical point of the centre of voxel index 0, order (x, y[, z]).
        direction: Row-major (dim x dim) matrix whose columns are the physical directions of the index
            axes (x, y[, z]); SimpleITK's `GetDirection()` order.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        dim = len(self.size)
        if dim not in (2, 3):
            raise ValueError(f"Geometry: size must have 2 or 3 entries, got {self.size!r}")
        for name, expected in (("spacing", dim), ("origin", dim), ("direction", dim * dim)):
            if len(getattr(self, name)) != expected:
                raise ValueError(
                    f"Geometry: {name} must have {expected} entries for a {dim}-D size, "
                    f"got {getattr(self, name)!r}"
                )
        if any(int(s) != s or s < 1 for s in self.size):
            raise ValueError(f"Geometry: size must hold positive integers, got {self.size!r}")
        if any(not s > 0 for s in self.spacing):
            raise ValueError(f"Geometry: spacing must be positive, got {self.spacing!r}")
        matrix = np.asarray(self.direction, dtype=np.float64).reshape(dim, dim)
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
            raise ValueError(f"Geometry: direction must be an invertible matrix, got {self.direction!r}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in self.direction))

    @classmethod
    def from_image(cls, image: sitk.Image) -> Geometry:
        """Geometry of a SimpleITK image (2D or 3D)."""
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def grid(
        cls,
        size: Sequence[int],
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
    ) -> Geometry:
        """Grid with identity direction.

        Args:
            size: Voxels per axis, order (x, y[, z]).
            spacing: Per axis, order (x, y[, z]); default 1 everywhere.
            origin: Physical point of voxel index 0; default 0 everywhere.
        """
        dim = len(size)
        return cls(
            tuple(size),
            tuple(spacing) if spacing is not None else (1.0,) * dim,
            tuple(origin) if origin is not None else (0.0,) * dim,
            tuple(np.eye(dim).ravel()),
        )

    @property
    def dim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape in NumPy order ([z,] y, x)."""
        return self.size[::-1]

    @cached_property
    def direction_matrix(self) -> np.ndarray:
        """Direction as a (dim, dim) float64 array; column a is the physical direction of index axis a."""
        return np.asarray(self.direction, dtype=np.float64).reshape(self.dim, self.dim)

    @cached_property
    def index_to_physical_matrix(self) -> np.ndarray:
        """(dim + 1, dim + 1) homogeneous matrix mapping continuous index (x, y[, z]) to physical point."""
        matrix = np.eye(self.dim + 1)
        matrix[: self.dim, : self.dim] = self.direction_matrix * np.asarray(self.spacing)
        matrix[: self.dim, self.dim] = self.origin
        return matrix

    @cached_property
    def physical_to_index_matrix(self) -> np.ndarray:
        """(dim + 1, dim + 1) homogeneous matrix mapping physical point to continuous index (x, y[, z])."""
        return np.linalg.inv(self.index_to_physical_matrix)

    @property
    def center(self) -> np.ndarray:
        """Physical point at the centre of the voxel grid, shape (dim,), order (x, y[, z])."""
        return self.index_to_physical((np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0)

    @property
    def extent(self) -> np.ndarray:
        """Physical size of the grid along each index axis (size * spacing), shape (dim,)."""
        return np.asarray(self.size, dtype=np.float64) * np.asarray(self.spacing)

    def index_to_physical(self, points: np.ndarray) -> np.ndarray:
        """Map continuous indices to physical points.

        Args:
            points: (..., dim) continuous indices, order (x, y[, z]); NaN rows stay NaN.

        Returns:
            (..., dim) float64 physical points, order (x, y[, z]).
        """
        return apply_affine(self.index_to_physical_matrix, points)

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map physical points to continuous indices (inverse of `index_to_physical`).

        Args:
            points: (..., dim) physical points, order (x, y[, z]); NaN rows stay NaN.

        Returns:
            (..., dim) float64 continuous indices, order (x, y[, z]).
        """
        return apply_affine(self.physical_to_index_matrix, points)

    def resampled(self, spacing: Sequence[float]) -> Geometry:
        """The grid of `spacing` that covers this one: same direction and centre, ceil(extent / spacing)
        voxels per axis (a whole volume at a fixed physical spacing, e.g. for tiled prediction)."""
        spacing = np.asarray(spacing, dtype=np.float64)
        spacing = np.full(self.dim, float(spacing)) if spacing.ndim == 0 else spacing
        if spacing.shape != (self.dim,) or not (spacing > 0).all():
            raise ValueError(f"Geometry.resampled: spacing must be one positive number or {self.dim}, got "
                             f"{spacing.tolist()}")
        size = np.maximum(np.ceil(self.extent / spacing - 1e-9), 1).astype(int)
        origin = self.center - self.direction_matrix @ ((size - 1) / 2.0 * spacing)
        return Geometry(tuple(int(n) for n in size), tuple(float(v) for v in spacing),
                        tuple(float(v) for v in origin), self.direction)

    def downsampled(self, factor: int) -> Geometry:
        """Grid downsampled by an integer factor, as average pooling by `factor` sees it.

        Each new voxel is the centre of an f-block of the old grid: size // f, spacing * f, origin moved to
        the centre of the first block (old index (f - 1) / 2 along every axis); direction unchanged.

        Args:
            factor: Positive integer downsampling factor, the same along every axis.
        """
        if int(factor) != factor or factor < 1:
            raise ValueError(f"Geometry.downsampled: factor must be a positive integer, got {factor!r}")
        factor = int(factor)
        if any(s < factor for s in self.size):
            raise ValueError(f"Geometry.downsampled: factor {factor} exceeds the size {self.size}")
        origin = self.index_to_physical(np.full(self.dim, (factor - 1) / 2.0))
        return Geometry(
            tuple(s // factor for s in self.size),
            tuple(s * factor for s in self.spacing),
            tuple(origin),
            self.direction,
        )

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """A zero-filled SimpleITK image with this geometry (e.g. the reference of `sitk.Resample`)."""
        image = sitk.Image(list(self.size), pixel_type)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homogeneous affine matrix to points.

    Args:
        matrix: (dim + 1, dim + 1) homogeneous matrix (last row 0, ..., 0, 1).
        points: (..., dim) points, order (x, y[, z]); NaN propagates.

    Returns:
        (..., dim) float64 mapped points.
    """
    points = np.asarray(points, dtype=np.float64)
    dim = matrix.shape[0] - 1
    if points.shape[-1:] != (dim,):
        raise ValueError(f"points must have shape (..., {dim}), got {points.shape}")
    return points @ matrix[:dim, :dim].T + matrix[:dim, dim]
