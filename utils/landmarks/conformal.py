"""Calibrated uncertainty per landmark: split-conformal radii from held-out point errors.

A run's final test scores images the network never trained on. For landmark n with n_k held-out point
errors e_1..e_k (mm), the split-conformal radius at coverage 1 - alpha is the ceil((k + 1)(1 - alpha))-th
smallest error. For a new image exchangeable with the held-out ones, the true landmark lies within that
radius of the prediction with probability at least 1 - alpha (and less than 1 - alpha + 1 / (k + 1)).
With too few errors for the coverage asked ((k + 1)(1 - alpha) > k) the radius is infinite.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["conformal_radii", "empirical_coverage"]


def conformal_radii(errors: np.ndarray, coverage: float = 0.9) -> np.ndarray:
    """Per-landmark split-conformal radii.

    Args:
        errors: (M, N) held-out point errors in mm, NaN where a landmark is missing.
        coverage: Probability 1 - alpha that a new true landmark lies within its radius, in (0, 1).

    Returns:
        (N,) radii in mm; inf for a landmark with too few errors for `coverage`.

    Raises:
        ValueError: For a coverage outside (0, 1) or errors that are not (M, N).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2:
        raise ValueError(f"errors must be (images, landmarks), got shape {errors.shape}")
    radii = np.full(errors.shape[1], np.inf)
    for landmark in range(errors.shape[1]):
        values = np.sort(errors[np.isfinite(errors[:, landmark]), landmark])
        rank = math.ceil((len(values) + 1) * coverage)  # 1-based rank of the radius among the errors
        if rank <= len(values):
            radii[landmark] = values[rank - 1]
    return radii


def empirical_coverage(errors: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(N,) fraction of the finite errors of each landmark (M, N) that are within its radius (N,)."""
    errors = np.asarray(errors, dtype=np.float64)
    present = np.isfinite(errors)
    inside = present & (errors <= np.asarray(radii)[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inside.sum(axis=0) / present.sum(axis=0)
