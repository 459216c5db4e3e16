"""Heatmaps of a whole image larger than the network input, from overlapping tiles.

The spine setups test on the WHOLE volume, which is longer than the network grid: the image (resampled at
the training spacing, `Geometry.resampled`) is cut into tiles of the network's input size that overlap by
at least `min_overlap` voxels, each tile is predicted, and the tiles' heatmaps are blended with weights that
fall towards each tile's border (a landmark near a border is taken mostly from the tile that also sees its
surroundings). Decode the result as any heatmap (`decode_heatmaps`, or `maxima.local_maxima` per channel).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["predict_tiled", "tile_starts"]


def tile_starts(size: int, tile: int, min_overlap: int) -> list[int]:
    """Start indices of the fewest tiles of length `tile` that cover [0, size) with neighbours sharing at
    least `min_overlap` voxels, spread evenly; the first starts at 0, the last ends at `size` ([0] when the
    image fits in one tile)."""
    if tile < 1 or not 0 <= min_overlap < tile:
        raise ValueError(f"tile_starts: needs tile >= 1 and 0 <= min_overlap < tile, got {tile}, "
                         f"{min_overlap}")
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / (tile - min_overlap)) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _window(shape: Sequence[int]) -> np.ndarray:
    """Blending weights of one tile: per axis a tent, 1 in the middle, 1 / ceil(n / 2) at the borders."""
    weights = np.ones(tuple(shape), dtype=np.float32)
    for axis, n in enumerate(shape):
        index = np.arange(n)
        tent = np.minimum(np.minimum(index + 1, n - index) / math.ceil(n / 2), 1.0)
        along = [1] * len(shape)
        along[axis] = n
        weights *= tent.reshape(along).astype(np.float32)
    return weights


def predict_tiled(image: np.ndarray, tile_shape: Sequence[int],
                  forward: Callable[[np.ndarray], np.ndarray], min_overlap: Sequence[int] | None = None,
                  batch_size: int = 1, pad_value: float = 0.0) -> np.ndarray:
    """Heatmaps of `image` from overlapping tiles of `tile_shape`, blended.

    Args:
        image: ([z,] y, x, C) network input of any size (an axis shorter than the tile is padded with
            `pad_value` at its end, and the result cropped back).
        tile_shape: ([z,] y, x) network input size.
        forward: (B, *tile_shape, C) -> (B, *tile_shape, N): the network (output on the input grid).
        min_overlap: ([z,] y, x) voxels neighbouring tiles share at least; default a quarter of the tile.
        batch_size: tiles per call of `forward`.
        pad_value: input value of padding.

    Returns:
        ([z,] y, x, N) float32 heatmaps on the image's grid.
    """
    image = np.asarray(image, dtype=np.float32)
    tile_shape = tuple(int(n) for n in tile_shape)
    spatial = image.shape[:-1]
    if len(tile_shape) != len(spatial):
        raise ValueError(f"predict_tiled: tile {tile_shape} and image {image.shape} differ in dimension")
    overlap = [n // 4 for n in tile_shape] if min_overlap is None else [int(n) for n in min_overlap]
    pairs = list(zip(overlap, tile_shape, strict=False))
    if len(overlap) != len(tile_shape) or not all(0 <= o < t for o, t in pairs):
        raise ValueError(f"predict_tiled: min_overlap {tuple(overlap)} needs one value per axis of the tile "
                         f"{tile_shape}, each >= 0 and smaller than the tile")
    padded_shape = tuple(max(s, t) for s, t in zip(spatial, tile_shape, strict=True))
    if padded_shape != spatial:
        padding = [(0, p - s) for p, s in zip(padded_shape, spatial, strict=True)] + [(0, 0)]
        image = np.pad(image, padding, constant_values=pad_value)
    starts = list(itertools.product(*(tile_starts(s, t, o) for s, t, o in
                                      zip(padded_shape, tile_shape, overlap, strict=True))))
    window = _window(tile_shape)[..., None]
    total = weight = None
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        boxes = [tuple(slice(b, b + t) for b, t in zip(start, tile_shape, strict=True)) for start in chunk]
        heatmaps = np.asarray(forward(np.stack([image[box] for box in boxes])), dtype=np.float32)
        if heatmaps.shape[:-1] != (len(boxes), *tile_shape):
            raise ValueError(f"predict_tiled: forward must return (B, *{tile_shape}, N) heatmaps on its "
                             f"input grid for (B, *{tile_shape}, C) tiles, got {heatmaps.shape}")
        if total is None:
            total = np.zeros((*padded_shape, heatmaps.shape[-1]), np.float32)
            weight = np.zeros((*padded_shape, 1), np.float32)
        for box, heatmap in zip(boxes, heatmaps, strict=True):
            total[box] += heatmap * window
            weight[box] += window
    crop = tuple(slice(0, s) for s in spatial)
    return total[crop] / weight[crop]
