"""Fast resampling of a NumPy array through a `SampleTransform` (the loader's hot path).

`SampleTransform.resample` (SimpleITK) is the reference; this module computes the same linear interpolation
in one compiled pass (numba): for every output voxel, the affine part of the output -> input map is applied
along the index axes, the B-spline displacement is evaluated separably (one small weight matrix per axis,
re-used along each row), and the source is interpolated linearly. With SimpleITK single-threaded, the
composed affine + B-spline resampling of a hand radiograph to 256 x 256 takes about 11 ms on our machines;
this takes well under 1 ms.

Large sources are first reduced by block averaging (`block_average`), once per image: resampling a
2000-pixel radiograph to 256 pixels by linear interpolation alone reads 1 of every ~80 source pixels and
aliases; the block-averaged copy removes that and is small enough to stay in cache.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from utils.transforms.geometry import Geometry
from utils.transforms.spatial import SampleTransform

__all__ = ["block_average", "block_average_factor", "warp"]


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


def warp(source: np.ndarray, source_geometry: Geometry, transform: SampleTransform,
         default_value: float = 0.0) -> np.ndarray:
    """Resamples `source` onto `transform.output` by linear interpolation (what `transform.resample` does).

    A point within half a voxel of the source's border is interpolated from the clamped border voxels, one
    further out gets `default_value`, as in SimpleITK.

    Args:
        source: float32 array in NumPy order ([z,] y, x) on `source_geometry` (the image itself or its
            `block_average`), in the transform's input physical space.
        source_geometry: Geometry of `source`.
        transform: The sample's transform (its deformation must be drawn on the output grid's axes).
        default_value: Value outside the source.

    Returns:
        float32 array of shape `transform.output.shape`.
    """
    dim = transform.output.dim
    if source.ndim != dim or source.shape != source_geometry.shape:
        raise ValueError(f"warp: source shape {source.shape} does not match its {source_geometry.dim}-D "
                         f"geometry {source_geometry.shape} and the {dim}-D output")
    to_index = source_geometry.physical_to_index_matrix @ transform.inverse_matrix
    index_map = to_index @ transform.output.index_to_physical_matrix
    if transform.deformation is None:
        weights = [np.zeros((n, 1)) for n in transform.output.size]
        coefficients = np.zeros((1,) * dim + (dim,))
    else:
        weights = transform.deformation.grid_weights(transform.output)
        coefficients = transform.deformation.coefficients @ to_index[:dim, :dim].T
    out = np.empty(transform.output.shape, dtype=np.float32)
    source = np.ascontiguousarray(source, dtype=np.float32)
    if dim == 2:
        _warp_2d(source, index_map, weights[1], weights[0], coefficients, float(default_value), out)
    else:
        _warp_3d(source, index_map, weights[2], weights[1], weights[0], coefficients, float(default_value),
                 out)
    return out


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _corner(position: float, size: int) -> tuple[int, int, float, bool]:
    """Lower and upper neighbour (clamped), weight of the upper one, and whether the point is inside."""
    if position < -0.5 or position > size - 0.5:
        return 0, 0, 0.0, False
    low = math.floor(position)
    fraction = position - low
    high = min(low + 1, size - 1)
    low = max(low, 0)
    return low, high, fraction, True


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
def _warp_2d(source, index_map, weights_y, weights_x, coefficients, default_value, out):
    height, width = source.shape
    nodes_x = coefficients.shape[1]
    row = np.zeros((nodes_x, 2))
    for y in range(out.shape[0]):
        _weighted_sum(weights_y[y], coefficients, row)
        base_x = index_map[0, 1] * y + index_map[0, 2]
        base_y = index_map[1, 1] * y + index_map[1, 2]
        for x in range(out.shape[1]):
            sx = index_map[0, 0] * x + base_x
            sy = index_map[1, 0] * x + base_y
            for k in range(nodes_x):
                w = weights_x[x, k]
                sx += w * row[k, 0]
                sy += w * row[k, 1]
            x0, x1, fx, inside_x = _corner(sx, width)
            y0, y1, fy, inside_y = _corner(sy, height)
            if not (inside_x and inside_y):
                out[y, x] = default_value
                continue
            top = source[y0, x0] + fx * (source[y0, x1] - source[y0, x0])
            bottom = source[y1, x0] + fx * (source[y1, x1] - source[y1, x0])
            out[y, x] = top + fy * (bottom - top)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _warp_3d(source, index_map, weights_z, weights_y, weights_x, coefficients, default_value, out):
    depth, height, width = source.shape
    nodes_y, nodes_x = coefficients.shape[1], coefficients.shape[2]
    slab = np.zeros((nodes_y, nodes_x, 3))
    row = np.zeros((nodes_x, 3))
    for z in range(out.shape[0]):
        _weighted_sum(weights_z[z], coefficients, slab)
        for y in range(out.shape[1]):
            _weighted_sum(weights_y[y], slab, row)
            base_x = index_map[0, 1] * y + index_map[0, 2] * z + index_map[0, 3]
            base_y = index_map[1, 1] * y + index_map[1, 2] * z + index_map[1, 3]
            base_z = index_map[2, 1] * y + index_map[2, 2] * z + index_map[2, 3]
            for x in range(out.shape[2]):
                sx = index_map[0, 0] * x + base_x
                sy = index_map[1, 0] * x + base_y
                sz = index_map[2, 0] * x + base_z
                for k in range(nodes_x):
                    w = weights_x[x, k]
                    sx += w * row[k, 0]
                    sy += w * row[k, 1]
                    sz += w * row[k, 2]
                x0, x1, fx, inside_x = _corner(sx, width)
                y0, y1, fy, inside_y = _corner(sy, height)
                z0, z1, fz, inside_z = _corner(sz, depth)
                if not (inside_x and inside_y and inside_z):
                    out[z, y, x] = default_value
                    continue
                c00 = source[z0, y0, x0] + fx * (source[z0, y0, x1] - source[z0, y0, x0])
                c01 = source[z0, y1, x0] + fx * (source[z0, y1, x1] - source[z0, y1, x0])
                c10 = source[z1, y0, x0] + fx * (source[z1, y0, x1] - source[z1, y0, x0])
                c11 = source[z1, y1, x0] + fx * (source[z1, y1, x1] - source[z1, y1, x0])
                c0 = c00 + fy * (c01 - c00)
                c1 = c10 + fy * (c11 - c10)
                out[z, y, x] = c0 + fz * (c1 - c0)
