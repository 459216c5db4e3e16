"""Gaussian heatmap targets for landmark localization.

One heatmap channel per landmark, channels-last, in NumPy axis order ([z,] y, x, N). Landmark points are
given in heatmap index coordinates (x, y[, z]): the centre of voxel (i_x, i_y) is the point (i_x, i_y).
"""

from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["TRUNCATE_SIGMAS", "gaussian_heatmaps"]

TRUNCATE_SIGMAS = 5.0
"""Along each axis, a Gaussian is set to zero further than this many sigmas from its centre.

At 5 sigmas the dropped values are at most exp(-12.5) ~ 3.7e-6 of the peak.
"""


def gaussian_heatmaps(
    points: np.ndarray,
    shape: Sequence[int],
    sigma: float | np.ndarray,
    normalize: bool = False,
    out: np.ndarray | None = None,
    windows: np.ndarray | None = None,
) -> np.ndarray:
    """Renders one isotropic Gaussian per landmark on a voxel grid.

    Channel n holds ``exp(-|i - p_n|^2 / (2 sigma_n^2))`` at every voxel index i (peak 1), or that value
    times ``(2 pi sigma_n^2)^(-dim / 2)`` with ``normalize=True`` (the continuous density, so the voxel sum
    is 1 up to sampling and truncation errors). Each Gaussian is evaluated only in the box where every
    coordinate is within ``TRUNCATE_SIGMAS * sigma_n`` of its centre, as separable 1D factors combined by
    outer products; outside that box the channel is 0.

    A landmark whose point contains NaN or lies more than half a voxel outside the grid along some axis
    (coordinate < -0.5 or > size - 0.5) gets an all-zero channel.

    Args:
        points: (N, dim) landmark positions in heatmap index coordinates, order (x, y[, z]), dim = len(shape).
            NaN rows mark missing landmarks.
        shape: grid shape in NumPy order ([z,] y, x), 2 or 3 positive integers.
        sigma: Gaussian standard deviation in heatmap voxels, a positive float for all landmarks or an (N,)
            array, one per landmark.
        normalize: if True, scale each Gaussian to unit integral instead of unit peak.
        out: optional float32 array of shape (*shape, N) to render into (it is zeroed first, unless
            `windows` is given). A loader passes a view of its batch buffer, which saves allocating and
            first-touching ~10 MB per hand sample (37 x 256 x 256).
        windows: optional int32 array of shape (N, dim, 2), only together with `out`: per channel and per
            axis (x, y[, z]), the [start, stop) index range of the box outside which the channel of `out` is
            zero. Instead of zeroing all of `out`, only these boxes are cleared; then the boxes of this call
            are recorded in `windows` (start == stop == 0 for a channel left empty), before anything is
            drawn, so that an interrupted call still leaves every non-zero value inside a recorded box.
            Precondition: `out` is zero outside the boxes in `windows`. A zero-filled `out` with a zero-filled
            `windows` satisfies it, and every call keeps it; a loader that reuses a buffer for many samples
            then clears a few small boxes per sample (37 x 33^2 values for a hand) instead of 2.4 M.

    Returns:
        float32 array of shape (*shape, N): `out` when given.

    Raises:
        ValueError: if ``shape`` is not 2 or 3 positive integers, ``points`` is not (N, dim), ``sigma`` is
            not positive and finite or has a length other than N, ``out`` has another shape or dtype, or
            ``windows`` is given without ``out``, has another shape or dtype, or holds a box that is not
            inside the grid.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be 2 or 3 positive sizes ([z,] y, x), got {shape}")
    dim = len(shape)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != dim:
        raise ValueError(f"points must have shape (N, {dim}) for the {dim}D grid {shape}, got {points.shape}")
    num = points.shape[0]
    sigmas = np.asarray(sigma, dtype=np.float64)
    if sigmas.ndim == 0:
        sigmas = np.full(num, float(sigmas))
    elif sigmas.shape != (num,):
        raise ValueError(f"sigma must be a float or have shape ({num},) for {num} points, got {sigmas.shape}")
    if not np.all(np.isfinite(sigmas) & (sigmas > 0)):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")

    if out is not None and (out.shape != (*shape, num) or out.dtype != np.float32):
        raise ValueError(f"out must be a float32 array of shape {(*shape, num)}, got {out.dtype} {out.shape}")
    sizes = np.array(shape[::-1])  # (x, y[, z]) order, like the points
    if windows is not None:
        _check_windows(windows, out, sizes)
    if out is None:
        heatmaps = np.zeros((*shape, num), dtype=np.float32)
    elif windows is None:
        heatmaps = out
        heatmaps.fill(0.0)
    else:
        heatmaps = out
        (_clear_boxes_2d if dim == 2 else _clear_boxes_3d)(heatmaps, windows)
        windows.fill(0)  # all of out is zero now; the boxes drawn below are recorded before drawing
    with np.errstate(invalid="ignore"):
        inside = np.all((points >= -0.5) & (points <= sizes - 0.5), axis=1)
    channels = np.flatnonzero(inside)
    if channels.size == 0:
        return heatmaps
    centers = points[channels]
    sigmas = sigmas[channels]
    cutoffs = TRUNCATE_SIGMAS * sigmas
    radius = int(np.ceil(cutoffs.max() + 0.5))

    # Per axis (x, y[, z]): a window of 2 * radius + 1 indices around the nearest voxel, shifted to lie inside
    # the grid, so every index written is valid and distinct within a channel.
    indices, factors = [], []
    for axis in range(dim):
        width = min(2 * radius + 1, sizes[axis])
        nearest = np.floor(centers[:, axis] + 0.5).astype(np.int64)
        start = np.clip(nearest - radius, 0, sizes[axis] - width)
        index = start[:, None] + np.arange(width)  # (M, width)
        distance = index - centers[:, axis, None]
        factor = np.exp(-0.5 * (distance / sigmas[:, None]) ** 2)
        factor[np.abs(distance) > cutoffs[:, None]] = 0.0
        indices.append(index)
        factors.append(factor.astype(np.float32))

    if normalize:
        factors[0] *= ((2.0 * np.pi * sigmas**2) ** (-dim / 2)).astype(np.float32)[:, None]
    starts = np.stack([index[:, 0] for index in indices], axis=1)  # (M, dim) window origins, (x, y[, z])
    if windows is not None:  # recorded before drawing: an interrupted call leaves no value outside the record
        windows[channels, :, 0] = starts
        windows[channels, :, 1] = starts + np.array([index.shape[1] for index in indices])
    if dim == 2:
        _write_windows_2d(heatmaps, channels, starts, factors[0], factors[1])
    else:
        _write_windows_3d(heatmaps, channels, starts, factors[0], factors[1], factors[2])
    return heatmaps


def _check_windows(windows: np.ndarray, out: np.ndarray | None, sizes: np.ndarray) -> None:
    """Raises ValueError unless `windows` is an (N, dim, 2) int32 record of boxes inside the grid, with `out`.

    The boxes are checked because the compiled clearing loops index `out` with them unchecked.
    """
    if out is None:
        raise ValueError("windows is only allowed together with out (it records the boxes drawn into out)")
    expected = (out.shape[-1], sizes.size, 2)
    if not isinstance(windows, np.ndarray):
        raise ValueError(f"windows must be an int32 array of shape {expected}, got {type(windows).__name__}")
    if windows.shape != expected or windows.dtype != np.int32:
        got = f"{windows.dtype} {windows.shape}"
        raise ValueError(f"windows must be an int32 array of shape {expected}, got {got}")
    start, stop = windows[..., 0], windows[..., 1]
    if not np.all((start >= 0) & (start <= stop) & (stop <= sizes)):
        raise ValueError(f"windows must hold boxes 0 <= start <= stop <= size per axis {sizes.tolist()}")


@numba.njit(cache=True, nogil=True)
def _clear_boxes_2d(heatmaps, windows):
    """heatmaps[y0:y1, x0:x1, c] = 0 for each channel c's box windows[c] = ((x0, x1), (y0, y1)) (compiled)."""
    for c in range(windows.shape[0]):
        for y in range(windows[c, 1, 0], windows[c, 1, 1]):
            for x in range(windows[c, 0, 0], windows[c, 0, 1]):
                heatmaps[y, x, c] = 0.0


@numba.njit(cache=True, nogil=True)
def _clear_boxes_3d(heatmaps, windows):
    """heatmaps[z0:z1, y0:y1, x0:x1, c] = 0 for each channel c's box windows[c] (compiled)."""
    for c in range(windows.shape[0]):
        for z in range(windows[c, 2, 0], windows[c, 2, 1]):
            for y in range(windows[c, 1, 0], windows[c, 1, 1]):
                for x in range(windows[c, 0, 0], windows[c, 0, 1]):
                    heatmaps[z, y, x, c] = 0.0


@numba.njit(cache=True, nogil=True)
def _write_windows_2d(heatmaps, channels, starts, fx, fy):
    """heatmaps[y0 + j, x0 + i, c] = fy[m, j] * fx[m, i] over each landmark m's window (compiled)."""
    for m in range(channels.shape[0]):
        c, x0, y0 = channels[m], starts[m, 0], starts[m, 1]
        for j in range(fy.shape[1]):
            for i in range(fx.shape[1]):
                heatmaps[y0 + j, x0 + i, c] = fy[m, j] * fx[m, i]


@numba.njit(cache=True, nogil=True)
def _write_windows_3d(heatmaps, channels, starts, fx, fy, fz):
    """heatmaps[z0 + k, y0 + j, x0 + i, c] = fz[m, k] * fy[m, j] * fx[m, i] over each window (compiled)."""
    for m in range(channels.shape[0]):
        c, x0, y0, z0 = channels[m], starts[m, 0], starts[m, 1], starts[m, 2]
        for k in range(fz.shape[1]):
            for j in range(fy.shape[1]):
                zy = fz[m, k] * fy[m, j]
                for i in range(fx.shape[1]):
                    heatmaps[z0 + k, y0 + j, x0 + i, c] = zy * fx[m, i]
