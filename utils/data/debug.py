"""Debug images of generated samples: what the network is actually fed, to look at before training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.io.image import write_image
from utils.landmarks.plots import plot_heatmaps, plot_landmarks

__all__ = ["write_debug_images"]


def write_debug_images(
    folder: str | os.PathLike, name: str, image: np.ndarray, heatmaps: np.ndarray, points: np.ndarray
) -> None:
    """Writes one sample as ``<name>_image.mha``, ``<name>_image.png`` (landmarks drawn) and
    ``<name>_heatmaps.png`` (maximum over the landmarks).

    Args:
        folder: Output folder (created).
        name: File name prefix, e.g. ``<id>_epoch0``.
        image: ([z,] y, x, 1) network input (output grid: spacing 1, origin 0).
        heatmaps: ([z,] y, x, N) heatmap targets.
        points: (N, dim) landmarks in output pixel coordinates (x, y[, z]); NaN rows are not drawn.
    """
    folder = Path(folder)
    write_image(sitk.GetImageFromArray(image[..., 0]), folder / f"{name}_image.mha")
    plot_landmarks(folder / f"{name}_image.png", image[..., 0], target=points, title=name)
    plot_heatmaps(folder / f"{name}_heatmaps.png", heatmaps)
