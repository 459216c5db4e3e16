"""Several maxima per heatmap, and a consistent sequence of landmarks chosen among them (the spine).

Vertebrae look alike, so the heatmap of one vertebra often also peaks at its neighbours, and its single
maximum can name the wrong one. `local_maxima` lists the candidates of a heatmap; `pick_sequence` takes at
most one candidate per landmark so that the chosen landmarks form a plausible chain: in order along the
spine, each consecutive pair about its typical distance apart, missing landmarks only at the two ends (a scan
shows a contiguous part of the spine). `typical_spacing` learns the distances and the direction from
training annotations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from utils.landmarks.decode import refine_peaks

__all__ = ["local_maxima", "pick_sequence", "typical_spacing"]


def local_maxima(heatmap: np.ndarray, min_relative: float = 0.5, min_distance: float = 2.0,
                 max_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The local maxima of one heatmap, strongest first, refined to sub-voxel positions.

    A voxel is a local maximum when no voxel of its 3x3(x3) neighbourhood is larger; touching maxima of the
    same value (a plateau) count once, at their first voxel in C order. Kept are those of at least
    `min_relative` times the global maximum; of two closer than `min_distance` voxels only the stronger
    stays (ties: the first in C order). Each is refined by `decode.refine_peaks`, as `decode_heatmaps` does.

    Args:
        heatmap: ([z,] y, x) array, finite.
        min_relative: threshold relative to the global maximum, in (0, 1].
        min_distance: smallest distance between two kept maxima, voxels (Euclidean).
        max_count: keep at most this many (None: all).

    Returns:
        points: (K, dim) float64 positions in heatmap index coordinates, order (x, y[, z]).
        values: (K,) float64 heatmap values at the maxima voxels, decreasing. K = 0 when the heatmap has no
            positive maximum.

    Raises:
        ValueError: a heatmap that is not 2D or 3D, not finite, or a parameter out of range.
    """
    heatmap = np.asarray(heatmap)
    if heatmap.dtype not in (np.float32, np.float64):  # e.g. float16 outputs of mixed precision, integers
        heatmap = heatmap.astype(np.float32)
    if heatmap.ndim not in (2, 3) or min(heatmap.shape) < 1:
        raise ValueError(f"local_maxima: the heatmap must have 2 or 3 non-empty axes, got {heatmap.shape}")
    if not 0 < min_relative <= 1 or min_distance < 0 or (max_count is not None and max_count < 1):
        raise ValueError(f"local_maxima: needs 0 < min_relative <= 1, min_distance >= 0 and max_count >= 1, "
                         f"got {min_relative}, {min_distance}, {max_count}")
    if not np.isfinite(heatmap).all():
        raise ValueError("local_maxima: the heatmap holds NaN or infinite values")
    dim = heatmap.ndim
    peak = float(heatmap.max())
    if not peak > 0:
        return np.zeros((0, dim)), np.zeros(0)
    is_maximum = (heatmap == ndimage.maximum_filter(heatmap, size=3, mode="nearest"))
    is_maximum &= heatmap >= min_relative * peak
    components, _ = ndimage.label(is_maximum, structure=np.ones((3,) * dim))
    labels, first = np.unique(components.ravel(), return_index=True)  # first voxel of each, C order
    voxels = np.stack(np.unravel_index(first[labels > 0], heatmap.shape), axis=1)
    values = heatmap[tuple(voxels.T)].astype(np.float64)
    kept: list[int] = []
    for i in np.argsort(-values, kind="stable"):
        if not kept or np.linalg.norm(voxels[kept] - voxels[i], axis=1).min() >= min_distance:
            kept.append(int(i))
            if max_count is not None and len(kept) == max_count:
                break
    voxels, values = voxels[kept], values[kept]
    points = refine_peaks(heatmap[..., None], tuple(voxels.T), np.zeros(len(kept), np.int64), values)
    return points, values


def typical_spacing(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean distance between consecutive landmarks and the mean direction of the chain, from annotations.

    Args:
        landmarks: (M, N, dim) points of M training images, NaN for a missing landmark, N >= 2.

    Returns:
        spacing: (N - 1,) mean distance between landmarks i and i + 1 over the images that have both.
        direction: (dim,) unit vector, the mean of the steps from landmark i to i + 1.

    Raises:
        ValueError: a pair of consecutive landmarks that no image has both of (its spacing is unknown).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1] < 2:
        raise ValueError(f"typical_spacing: needs (M, N >= 2, dim) landmarks, got {landmarks.shape}")
    steps = landmarks[:, 1:] - landmarks[:, :-1]  # (M, N - 1, dim), NaN where either is missing
    distances = np.linalg.norm(steps, axis=-1)
    known = np.isfinite(distances)
    unknown = np.flatnonzero(~known.any(axis=0))
    if unknown.size:
        raise ValueError(f"typical_spacing: no image has both landmarks {unknown[0]} and {unknown[0] + 1}")
    spacing = np.where(known, distances, 0.0).sum(axis=0) / known.sum(axis=0)
    direction = np.nanmean(steps.reshape(-1, steps.shape[-1]), axis=0)
    length = np.linalg.norm(direction)
    if not length > 0:
        raise ValueError("typical_spacing: the landmarks have no mean direction (their steps cancel out)")
    return spacing, direction / length


def pick_sequence(candidates: Sequence[tuple[np.ndarray, np.ndarray]], spacing: np.ndarray,
                  direction: np.ndarray | None = None, tolerance: float = 0.5) -> np.ndarray:
    """At most one candidate per landmark: the plausible contiguous chain of the largest summed value.

    A chain is landmarks a, a + 1, ..., b (those before a and after b are missing), one candidate each. It
    is plausible when every consecutive pair (i, i + 1) is between (1 - tolerance) and (1 + tolerance) times
    `spacing[i]` apart and, with a `direction`, steps forward along it. Of all plausible chains the one whose
    candidates' values sum highest wins (found exactly, by dynamic programming over the landmarks).

    Args:
        candidates: per landmark, (points (K_i, dim), values (K_i,)) in one physical space (K_i may be 0;
            then points may be (0, dim) or (0,)), e.g. `local_maxima` mapped to millimetres.
        spacing: (N - 1,) typical distance between landmarks i and i + 1, same units (`typical_spacing`);
            a number: the same for every pair.
        direction: (dim,) the direction from landmark i to i + 1; None: no order constraint.
        tolerance: allowed relative deviation from `spacing`, in [0, 1).

    Returns:
        (N, dim) chosen points, NaN rows for the landmarks outside the chain.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.ndim == 0:
        spacing = np.full(max(len(candidates) - 1, 0), float(spacing))
    if len(spacing) != len(candidates) - 1 or not (spacing > 0).all() or not 0 <= tolerance < 1:
        raise ValueError(f"pick_sequence: needs N - 1 = {len(candidates) - 1} positive spacings and "
                         f"0 <= tolerance < 1, got {spacing.tolist()} and {tolerance}")
    points = [np.asarray(p, dtype=np.float64) for p, _ in candidates]
    values = [np.asarray(v, dtype=np.float64) for _, v in candidates]
    dim = next((p.shape[1] for p in points if len(p)), 3 if direction is None else len(direction))
    points = [p.reshape(len(v), dim) for p, v in zip(points, values, strict=True)]
    # best[i][k]: the highest sum of a chain ending at candidate k of landmark i; origin[i][k]: its
    # predecessor's candidate index in landmark i - 1, or -1 where the chain starts at landmark i
    best: list[np.ndarray] = []
    origin: list[np.ndarray] = []
    for i, (here, value) in enumerate(zip(points, values, strict=True)):
        total, previous = value.copy(), np.full(len(value), -1)
        if i > 0 and len(here) and len(points[i - 1]):
            steps = here[None, :, :] - points[i - 1][:, None, :]  # (K_{i-1}, K_i, dim)
            ratio = np.linalg.norm(steps, axis=-1) / spacing[i - 1]
            allowed = np.abs(ratio - 1) <= tolerance
            if direction is not None:
                allowed &= steps @ np.asarray(direction, dtype=np.float64) > 0
            reachable = np.where(allowed, best[i - 1][:, None], -np.inf)  # (K_{i-1}, K_i)
            chained = reachable.max(axis=0)
            better = chained > 0  # a predecessor with a positive sum beats starting here
            total[better] += chained[better]
            previous[better] = reachable.argmax(axis=0)[better]
        best.append(total)
        origin.append(previous)
    chosen = np.full((len(candidates), dim), np.nan)
    ends = [(float(b.max()), i, int(b.argmax())) for i, b in enumerate(best) if len(b)]
    if not ends:
        return chosen
    _, i, k = max(ends, key=lambda end: end[0])  # ties: the first landmark
    while k >= 0:
        chosen[i] = points[i][k]
        i, k = i - 1, origin[i][k]
    return chosen
