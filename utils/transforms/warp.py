"""Fast resampling of a NumPy array through a `SampleTransform` (the loader's hot path).

`SampleTransform.resample` (SimpleITK) is the reference; this module computes the same linear interpolation
in one compiled pass (numba) per output row: first the row's source coordinates, the affine part of the
output -> input map plus the B-spline displacement evaluated separably (one small weight matrix per axis),
in loops the compiler vectorises; then the interpolation, from a source padded by two voxels per side
(`WarpSource`), so it needs no bounds checks and no branches. With SimpleITK single-threaded, the composed
affine + B-spline resampling of a hand radiograph to 256 x 256 takes about 11 ms on our machines; this
takes well under 1 ms.

Large sources are first reduced by block averaging (`block_average`), once per image: resampling a
2000-pixel radiograph to 256 pixels by linear interpolation alone reads 1 of every ~80 source pixels and
aliases; the block-averaged copy removes that and is small enough to stay in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from utils.transforms.geometry import Geometry
from utils.transforms.spatial import SampleTransform

__all__ = ["WarpSource", "block_average", "block_average_factor", "warp"]

# The interpolation reads the source at unsigned indices: numba tests a signed index for a negative value
# (Python's wrap-around) on every read, eight per voxel in 3D; unsigned, the 3D kernel ran 1.14x faster.
_ONE = np.uint64(1)
# Voxel offsets into the padded source are 32-bit (`_split`).
_MAX_PADDED_VOXELS = 2**31 - 1


def block_average(array: np.ndarray, geometry: Geometry, factor: int) -> tuple[np.ndarray, Geometry]:
    """Averages non-overlapping blocks of `factor` voxels along every axis (an anti-aliasing reduction).

    Args:
        array: Image in NumPy order ([z,] y, x), matching `geometry`.
        geometry: The image's geometry.
        factor: Block size in voxels (1 returns the inputs unchanged, as float32).

    Returns:
        The reduced float32 array and its geometry (`geometry.downsampled(factor)`: block centres). Voxels
        beyond the last whole block are dropped.
    """
    if factor < 1:
        raise ValueError(f"block_average: factor must be >= 1, got {factor}")
    if array.shape != geometry.shape:
        raise ValueError(f"block_average: array shape {array.shape} does not match geometry {geometry.shape}")
    if factor == 1:
        return np.asarray(array, dtype=np.float32), geometry
    reduced = geometry.downsampled(factor)
    cropped = array[tuple(slice(0, n * factor) for n in reduced.shape)].astype(np.float32)
    blocks = cropped.reshape([v for n in reduced.shape for v in (n, factor)])
    return blocks.mean(axis=tuple(range(1, 2 * array.ndim, 2)), dtype=np.float32), reduced


def block_average_factor(transform: SampleTransform, samples_per_block: float = 1.0) -> int:
    """The block size for `block_average` so that an output voxel step spans >= `samples_per_block` blocks.

    Args:
        transform: A (typically the validation) transform from the image to the output grid.
        samples_per_block: How many reduced voxels one output voxel step should cover at least. 1 gives a
            box pre-filter as wide as the output spacing (the usual anti-aliasing width); 2 keeps more
            detail and more aliasing. Measured on a 256^3 volume to 128^3: block size 2 instead of 1 makes
            the warp 2.5x faster (28 vs 72 ms), since the reduced source stays in cache.

    Returns:
        max(1, floor(s / samples_per_block)), s = the smallest number of input voxels per output voxel.
    """
    dim = transform.output.dim
    index_map = transform.input.physical_to_index_matrix @ transform.inverse_matrix
    index_map = (index_map @ transform.output.index_to_physical_matrix)[:dim, :dim]
    smallest = float(np.linalg.svd(index_map, compute_uv=False).min())
    return max(1, math.floor(smallest / samples_per_block))


@dataclass(frozen=True, eq=False)
class WarpSource:
    """An image prepared once for many `warp` calls: float32, padded by two voxels on every side.

    The inner padding layer repeats the border voxels, the outer one holds `default_value`. A point within
    half a voxel outside the image then reads only border voxels (SimpleITK's clamping), and a point further
    out is sent to the padded array's first voxel with zero interpolation weights, so it reads exactly
    `default_value`: the compiled interpolation reads without bounds checks or branches.

    Attributes:
        padded: float32 array in NumPy order ([z,] y, x), two voxels larger than the image on every side.
        geometry: Geometry of the image itself (without the padding).
    """

    padded: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.padded.size > _MAX_PADDED_VOXELS:  # however it was made: the kernels' offsets are 32-bit
            raise ValueError(f"WarpSource: an image of {self.geometry.shape} voxels is too large to resample "
                             f"(at most {_MAX_PADDED_VOXELS} voxels with the padding); reduce it first, e.g. "
                             f"with block_average")

    @classmethod
    def from_array(cls, array: np.ndarray, geometry: Geometry, default_value: float = 0.0) -> WarpSource:
        """Pads `array` (shape `geometry.shape`, any real dtype); `default_value` is the value outside it."""
        if array.shape != geometry.shape:
            raise ValueError(f"WarpSource: array shape {array.shape} does not match its {geometry.dim}-D "
                             f"geometry {geometry.shape}")
        edged = np.pad(np.asarray(array, dtype=np.float32), 1, mode="edge")
        # C order: the compiled kernel indexes the flattened array (np.pad keeps a transposed input's order)
        padded = np.pad(edged, 1, constant_values=np.float32(default_value))
        return cls(np.ascontiguousarray(padded), geometry)

    @property
    def array(self) -> np.ndarray:
        """The image without its padding (a view)."""
        return self.padded[(slice(2, -2),) * self.padded.ndim]

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (for a cache's limit)."""
        return int(self.padded.nbytes)


def warp(source: WarpSource, transform: SampleTransform, out: np.ndarray | None = None) -> np.ndarray:
    """Resamples `source` onto `transform.output` by linear interpolation (what `transform.resample` does).

    A point within half a voxel of the source's border is interpolated from the clamped border voxels, one
    further out gets the source's default value, as in SimpleITK.

    Args:
        source: The prepared image (the image itself or its `block_average`), in the transform's input
            physical space.
        transform: The sample's transform (its deformation must be drawn on the output grid's axes).
        out: Optional float32 array of shape `transform.output.shape` to write into (e.g. a view of a
            loader's batch buffer); allocated when None.

    Returns:
        float32 array of shape `transform.output.shape` (`out` when given).
    """
    dim = transform.output.dim
    if source.geometry.dim != dim:
        raise ValueError(f"warp: the source is {source.geometry.dim}-D (shape {source.geometry.shape}), "
                         f"the output {dim}-D")
    if out is None:
        out = np.empty(transform.output.shape, dtype=np.float32)
    elif out.shape != transform.output.shape or out.dtype != np.float32:
        raise ValueError(f"warp: out must be a float32 array of shape {transform.output.shape}, "
                         f"got {out.dtype} {out.shape}")
    to_index = source.geometry.physical_to_index_matrix @ transform.inverse_matrix
    index_map = to_index @ transform.output.index_to_physical_matrix
    if transform.deformation is None:
        weights = [np.zeros((1, n)) for n in transform.output.size]
        coefficients = np.zeros((1,) * dim + (dim,))
    else:
        weights = [np.ascontiguousarray(w.T) for w in transform.deformation.grid_weights(transform.output)]
        coefficients = transform.deformation.coefficients @ to_index[:dim, :dim].T
    if dim == 2:
        _warp_2d(source.padded, index_map, weights[1], weights[0], coefficients, out)
    else:
        _warp_3d(source.padded, index_map, weights[2], weights[1], weights[0], coefficients, out)
    return out


@numba.njit(cache=True, nogil=True, fastmath=True)
def _weighted_sum(weights, stack, out):
    """out = sum_i weights[i] * stack[i], in place and without temporaries (compiled)."""
    flat_out = out.reshape(-1)
    flat_stack = stack.reshape(stack.shape[0], -1)
    flat_out[:] = 0.0
    for i in range(weights.shape[0]):
        w = weights[i]
        if w != 0.0:
            for k in range(flat_out.shape[0]):
                flat_out[k] += w * flat_stack[i, k]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _row_coordinates(coordinates, index_map, base, weights_x, row, columns):
    """Source index coordinates of one output row: coordinates[a, x] = affine + B-spline part (vectorised).

    `base[a]` is the affine part at x = 0, `weights_x` the (nodes, width) B-spline weights along x, `row`
    the (nodes, dim) coefficients of this row after contracting the other axes, and `columns` the column
    indices as float64 (AVX2 converts no 64-bit integers in vectors). One pass over the row adds the affine
    part and the first four nodes' terms (with fewer nodes, the last one's weights times zero), one more
    pass each further node: for 4 nodes one pass instead of five, each loading and storing the row, made
    the 3D kernel 1.1x faster (benchmarks/README.md, issue 9).
    """
    last = weights_x.shape[0] - 1
    k1, k2, k3 = min(1, last), min(2, last), min(3, last)
    for a in range(coordinates.shape[0]):
        step, start = index_map[a, 0], base[a]
        r0 = row[0, a]
        r1 = row[1, a] if last >= 1 else 0.0
        r2 = row[2, a] if last >= 2 else 0.0
        r3 = row[3, a] if last >= 3 else 0.0
        for x in range(coordinates.shape[1]):
            coordinates[a, x] = (step * columns[x] + start + weights_x[0, x] * r0 + weights_x[k1, x] * r1
                                 + weights_x[k2, x] * r2 + weights_x[k3, x] * r3)
        for k in range(4, last + 1):
            r = row[k, a]
            for x in range(coordinates.shape[1]):
                coordinates[a, x] += weights_x[k, x] * r


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _inside(position, size):
    """Whether a source coordinate is within half a voxel of an axis of `size` voxels (SimpleITK's rule)."""
    return (position >= -0.5) & (position <= size - 0.5)


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _split(position, inside):
    """(padded index of the lower neighbour, weight of the upper one) of a source coordinate; outside, the
    padding's outer corner with zero weight, which reads exactly the default value.

    Inside, the padded position (position + 2) is >= 1.5, so truncation is the floor. Branch-free and in
    32-bit integers (AVX2 has no 64-bit truncation or multiplication), so that the compiler vectorises the
    loop calling it; the voxel offsets it makes fit 32 bits (`WarpSource` checks).
    """
    padded = position + 2.0 if inside else 0.0
    low = np.int32(padded)
    return low, np.float32(padded - low)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _warp_2d(padded, index_map, weights_y, weights_x, coefficients, out):
    height, width = padded.shape[0] - 4, padded.shape[1] - 4
    flat = padded.reshape(-1)
    stride_y = np.int32(padded.shape[1])
    n = out.shape[1]
    row = np.zeros((coefficients.shape[1], 2))
    base = np.zeros(2)
    coordinates = np.empty((2, n))
    columns = np.arange(n).astype(np.float64)
    offsets = np.empty(n, np.int32)
    fractions = np.empty((2, n), np.float32)
    for y in range(out.shape[0]):
        _weighted_sum(weights_y[:, y], coefficients, row)
        for a in range(2):
            base[a] = index_map[a, 1] * y + index_map[a, 2]
        _row_coordinates(coordinates, index_map, base, weights_x, row, columns)
        for x in range(n):
            inside = _inside(coordinates[0, x], width) & _inside(coordinates[1, x], height)
            x0, fractions[0, x] = _split(coordinates[0, x], inside)
            y0, fractions[1, x] = _split(coordinates[1, x], inside)
            offsets[x] = y0 * stride_y + x0
        for x in range(n):
            i, fx, fy = np.uint64(offsets[x]), fractions[0, x], fractions[1, x]
            j = i + np.uint64(stride_y)
            top = flat[i] + fx * (flat[i + _ONE] - flat[i])
            bottom = flat[j] + fx * (flat[j + _ONE] - flat[j])
            out[y, x] = top + fy * (bottom - top)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _warp_3d(padded, index_map, weights_z, weights_y, weights_x, coefficients, out):
    depth, height, width = padded.shape[0] - 4, padded.shape[1] - 4, padded.shape[2] - 4
    flat = padded.reshape(-1)
    sy, sz = np.int32(padded.shape[2]), np.int32(padded.shape[1] * padded.shape[2])
    n = out.shape[2]
    slab = np.zeros((coefficients.shape[1], coefficients.shape[2], 3))
    row = np.zeros((coefficients.shape[2], 3))
    base = np.zeros(3)
    coordinates = np.empty((3, n))
    columns = np.arange(n).astype(np.float64)
    offsets = np.empty(n, np.int32)
    fractions = np.empty((3, n), np.float32)
    for z in range(out.shape[0]):
        _weighted_sum(weights_z[:, z], coefficients, slab)
        for y in range(out.shape[1]):
            _weighted_sum(weights_y[:, y], slab, row)
            for a in range(3):
                base[a] = index_map[a, 1] * y + index_map[a, 2] * z + index_map[a, 3]
            _row_coordinates(coordinates, index_map, base, weights_x, row, columns)
            for x in range(n):
                inside = (_inside(coordinates[0, x], width) & _inside(coordinates[1, x], height)
                          & _inside(coordinates[2, x], depth))
                x0, fractions[0, x] = _split(coordinates[0, x], inside)
                y0, fractions[1, x] = _split(coordinates[1, x], inside)
                z0, fractions[2, x] = _split(coordinates[2, x], inside)
                offsets[x] = z0 * sz + y0 * sy + x0
            for x in range(n):
                i, fx, fy, fz = np.uint64(offsets[x]), fractions[0, x], fractions[1, x], fractions[2, x]
                iy, iz = i + np.uint64(sy), i + np.uint64(sz)
                iyz = iz + np.uint64(sy)
                c00 = flat[i] + fx * (flat[i + _ONE] - flat[i])
                c01 = flat[iy] + fx * (flat[iy + _ONE] - flat[iy])
                c10 = flat[iz] + fx * (flat[iz + _ONE] - flat[iz])
                c11 = flat[iyz] + fx * (flat[iyz + _ONE] - flat[iyz])
                c0 = c00 + fy * (c01 - c00)
                c1 = c10 + fy * (c11 - c10)
                out[z, y, x] = c0 + fz * (c1 - c0)
