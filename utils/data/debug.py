"""Debug images of a batch: what the network is actually fed, and the targets it is trained towards."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.io.image import write_image
from utils.landmarks.plots import plot_heatmaps, plot_landmarks
from utils.transforms.geometry import Geometry

__all__ = ["write_debug_batch"]


def write_debug_batch(
    folder: str | os.PathLike,
    names: Sequence[str],
    batch: dict[str, np.ndarray],
    heatmap_geometry: Geometry,
    render_targets: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> list[Path]:
    """Writes each sample of a batch as ``<name>_image.mha``, ``<name>_image.png`` (its landmarks drawn) and
    ``<name>_heatmaps.png`` (the maximum over its target heatmaps).

    Args:
        folder: Output folder (created).
        names: One file name prefix per sample, e.g. ``<id>_batch0``.
        batch: {"image": (B, [z,] y, x, 1), "points": (B, N, dim) heatmap index coordinates, "mask": (B, N)}.
        heatmap_geometry: The heatmap grid in output (network input) pixel coordinates.
        render_targets: ``render_targets(points, mask) -> (B, [z,] y, x, N)``, the model's own renderer.

    Returns:
        The PNG files written.
    """
    folder = Path(folder)
    targets = np.asarray(render_targets(batch["points"], batch["mask"]))
    written = []
    for name, image, points, mask, heatmaps in zip(names, batch["image"], batch["points"], batch["mask"],
                                                   targets, strict=True):
        shown = heatmap_geometry.index_to_physical(points.astype(np.float64))
        shown[mask == 0] = np.nan  # missing or outside the grid: not drawn
        write_image(sitk.GetImageFromArray(image[..., 0]), folder / f"{name}_image.mha")
        plot_landmarks(folder / f"{name}_image.png", image[..., 0], target=shown, title=name)
        plot_heatmaps(folder / f"{name}_heatmaps.png", heatmaps)
        written += [folder / f"{name}_image.png", folder / f"{name}_heatmaps.png"]
    return written
