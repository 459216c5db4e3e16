"""Landmark coordinates from predicted heatmaps: per-channel maximum with sub-pixel refinement."""

import math

import numba
import numpy as np

__all__ = ["decode_heatmaps", "refine_peaks"]


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Locates the maximum of every heatmap channel to sub-voxel precision.

    The maximum voxel of each channel (the first one in C order on ties) is refined independently along each
    axis by fitting a parabola through it and its two neighbours on that axis; the vertex offset is clipped to
    [-0.5, 0.5] voxel. When the three values are positive the parabola is fitted to their logarithms, which is
    exact for a sampled Gaussian; otherwise to the raw values. Along an axis where the maximum lies on the
    grid border, or where the three values are equal, the offset is 0.

    A constant channel (for example all zeros) yields the voxel at index 0 along every axis, unrefined, and
    that constant as its value; callers flag such channels by their value.

    Args:
        heatmaps: ([z,] y, x, N) array, channels-last, NumPy axis order, 2 or 3 spatial axes. Values are
            expected to be finite.

    Returns:
        points: (N, dim) float64 positions in heatmap index coordinates, order (x, y[, z]).
        values: (N,) float64 heatmap values at the maximum voxels (before refinement).

    Raises:
        ValueError: if ``heatmaps`` does not have 2 or 3 non-empty spatial axes plus a channel axis.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim not in (3, 4) or min(heatmaps.shape[:-1]) < 1:
        raise ValueError(
            "heatmaps must have shape ([z,] y, x, N) with 2 or 3 non-empty spatial axes, "
            f"got {heatmaps.shape}"
        )
    spatial = heatmaps.shape[:-1]
    num = heatmaps.shape[-1]
    channels = np.arange(num)
    flat = np.ascontiguousarray(heatmaps).reshape(math.prod(spatial), num)
    if flat.dtype not in (np.float32, np.float64):  # e.g. float16 outputs of mixed precision, integers
        flat = flat.astype(np.float32)
    peak = np.unravel_index(_channel_argmax(flat), spatial)  # per NumPy axis, each (N,)
    values = flat[np.ravel_multi_index(peak, spatial), channels].astype(np.float64)
    return refine_peaks(heatmaps, peak, channels, values), values


def refine_peaks(heatmaps: np.ndarray, peak: tuple[np.ndarray, ...], channels: np.ndarray, values: np.ndarray
                 ) -> np.ndarray:
    """Sub-voxel positions of peak voxels: a parabola per axis, as `decode_heatmaps` describes.

    Args:
        heatmaps: ([z,] y, x, N) array.
        peak: the peak voxels' indices per NumPy axis, each (K,).
        channels: (K,) channel of each peak.
        values: (K,) heatmap values at the peaks.

    Returns:
        (K, dim) float64 positions in heatmap index coordinates, order (x, y[, z]).
    """
    values = np.asarray(values, dtype=np.float64)
    coordinates = []
    for axis, size in enumerate(heatmaps.shape[:-1]):
        below = list(peak)
        above = list(peak)
        below[axis] = np.maximum(peak[axis] - 1, 0)
        above[axis] = np.minimum(peak[axis] + 1, size - 1)
        lower = heatmaps[(*below, channels)].astype(np.float64)
        upper = heatmaps[(*above, channels)].astype(np.float64)
        centre = values
        use_log = (lower > 0) & (upper > 0) & (centre > 0)
        lower, centre, upper = (
            np.where(use_log, np.log(np.where(use_log, v, 1.0)), v) for v in (lower, centre, upper)
        )
        curvature = lower - 2.0 * centre + upper  # <= 0 at a maximum
        interior = (peak[axis] > 0) & (peak[axis] < size - 1) & (curvature < 0)
        offset = np.zeros(len(values))
        offset[interior] = 0.5 * (lower - upper)[interior] / curvature[interior]
        coordinates.append(peak[axis] + np.clip(offset, -0.5, 0.5))
    return np.stack(coordinates[::-1], axis=1).reshape(len(values), len(coordinates))


@numba.njit(cache=True, nogil=True)
def _channel_argmax(flat):
    """np.argmax(flat, axis=0) in one pass over the rows (compiled): the channels of a row are contiguous,
    so this reads memory in order, where NumPy's column-wise argmax strides (3.5 vs 0.5 ms for 256^2 x 37).
    Ties keep the first row, as NumPy does."""
    best = flat[0].copy()
    index = np.zeros(flat.shape[1], np.int64)
    for i in range(1, flat.shape[0]):
        row = flat[i]
        for c in range(row.shape[0]):
            if row[c] > best[c]:
                best[c] = row[c]
                index[c] = i
    return index
