"""Intensity normalisation and augmentation of image arrays (any shape, any dimension).

The usual sequence: ``lo, hi = robust_range(source)`` and ``rescale_intensity(source, lo, hi)`` (the robust
range to [-1, 1]) once per source image (a linear map commutes with linear interpolation, so it need not be
repeated per sample), or ``normalize_robust(patch, (5, 95))`` per resampled patch (the authors' hand setup),
then per sample ``IntensityAugmentation()(array, rng)`` draws a random shift and scale
(training) or only clamps (validation, ``rng=None``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["IntensityAugmentation", "normalize_robust", "rescale_intensity", "robust_range"]


def robust_range(array: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0),
                 max_samples: int = 1_000_000) -> tuple[float, float]:
    """Low and high percentiles of an image's intensities, from a deterministic subsample when it is large.

    Arrays with more than `max_samples` values are subsampled with a fixed stride over the flattened array
    (every k-th value, k = ceil(size / max_samples)), so the result is reproducible and cheap.

    Args:
        array: Intensities, any shape; NaN values are ignored.
        percentiles: (low, high) percentiles, 0 <= low < high <= 100.
        max_samples: Largest number of values used (positive).

    Returns:
        (lo, hi) as Python floats.
    """
    low, high = percentiles
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"robust_range: percentiles must satisfy 0 <= low < high <= 100, "
                         f"got {percentiles!r}")
    if max_samples < 1:
        raise ValueError(f"robust_range: max_samples must be positive, got {max_samples!r}")
    values = np.asarray(array).reshape(-1)
    if values.size == 0:
        raise ValueError("robust_range: array is empty")
    stride = -(-values.size // max_samples)
    lo, hi = np.nanpercentile(values[::stride], [low, high])
    return float(lo), float(hi)


def rescale_intensity(array: np.ndarray, lo: float, hi: float,
                      out_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map intensities linearly so that `lo` -> out_range[0] and `hi` -> out_range[1] (no clipping).

    Args:
        array: Intensities, any shape.
        lo: Input value mapped to the lower end of `out_range` (e.g. from `robust_range`).
        hi: Input value mapped to the upper end; must be greater than `lo`.
        out_range: (low, high) of the mapped range.

    Returns:
        float32 array of the same shape.
    """
    if not hi > lo:
        raise ValueError(f"rescale_intensity: hi must be greater than lo, got lo={lo!r}, hi={hi!r} "
                         f"(a constant image has no intensity range)")
    factor = (out_range[1] - out_range[0]) / (hi - lo)
    result = np.asarray(array, dtype=np.float32) - np.float32(lo)
    result *= np.float32(factor)
    result += np.float32(out_range[0])
    return result


def normalize_robust(array: np.ndarray, percentiles: tuple[float, float]) -> None:
    """Maps an array's robust range (`robust_range` at `percentiles`) to [-1, 1], in place.

    The per-patch normalisation of the authors' hand setup (5th/95th percentile of each resampled patch).
    Unclipped; an array without a range (constant) becomes all zeros.

    Args:
        array: float32 intensities, any shape; overwritten.
        percentiles: (low, high) percentiles, 0 <= low < high <= 100.
    """
    if array.dtype != np.float32:
        raise ValueError(f"normalize_robust: array must be float32 (normalised in place), got {array.dtype}")
    lo, hi = robust_range(array, percentiles)
    array[...] = rescale_intensity(array, lo, hi) if hi > lo else 0.0


class IntensityAugmentation:
    """Random intensity shift, scale, gamma and noise, then clamping; for arrays already in about [-1, 1].

    With a generator, in this order: ``x * (1 + U(-scale, scale)) + U(-shift, shift)``; if `gamma` is set,
    the values are clipped to `clamp`, mapped to [0, 1], raised to the power ``exp(U(-gamma, gamma))`` and
    mapped back (so the ends of the clamp range stay fixed); if `noise_std` is set, Gaussian noise of that
    standard deviation is added to every value; finally the values are clipped to `clamp`. Without a
    generator (validation) only the clamp is applied.

    Args:
        shift: Maximum absolute shift (>= 0), in normalised intensity units.
        scale: Maximum relative scale change in [0, 1) (0.15 means factors 0.85 to 1.15).
        clamp: (low, high) range the result is clipped to, or None for no clipping.
        gamma: Maximum absolute log of the gamma exponent (>= 0; 0.3 means exponents 0.74 to 1.35), or
            None for no gamma change. Needs `clamp`.
        noise_std: Standard deviation (>= 0) of additive Gaussian noise, or None for none.
    """

    def __init__(self, shift: float = 0.15, scale: float = 0.15,
                 clamp: tuple[float, float] | None = (-1.0, 1.0), gamma: float | None = None,
                 noise_std: float | None = None) -> None:
        if not shift >= 0.0:
            raise ValueError(f"IntensityAugmentation: shift must be >= 0, got {shift!r}")
        if not 0.0 <= scale < 1.0:
            raise ValueError(f"IntensityAugmentation: scale must be in [0, 1), got {scale!r}")
        if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
            raise ValueError(f"IntensityAugmentation: clamp must be (low, high) with low < high, "
                             f"got {clamp!r}")
        if gamma is not None and not gamma >= 0.0:
            raise ValueError(f"IntensityAugmentation: gamma must be >= 0 or None, got {gamma!r}")
        if gamma is not None and clamp is None:
            raise ValueError("IntensityAugmentation: gamma needs a clamp range to be defined, got clamp=None")
        if noise_std is not None and not noise_std >= 0.0:
            raise ValueError(f"IntensityAugmentation: noise_std must be >= 0 or None, got {noise_std!r}")
        self.shift = float(shift)
        self.scale = float(scale)
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
        self.gamma = None if gamma is None else float(gamma)
        self.noise_std = None if noise_std is None else float(noise_std)

    def __call__(self, array: np.ndarray, rng: np.random.Generator | None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """Augment one array.

        Args:
            array: Normalised intensities, any shape (e.g. ([z,] y, x)); not modified unless it is `out`.
            rng: Generator for the random draws (scale, shift, gamma, then noise), or None for clamping only.
            out: Optional float32 array of the same shape for the result; it may be `array` itself (in
                place, as the loader does in its batch buffer).

        Returns:
            float32 array of the same shape (`out` when given).
        """
        if out is None:
            result = np.array(array, dtype=np.float32)
        elif out.shape != np.shape(array) or out.dtype != np.float32:
            raise ValueError(f"IntensityAugmentation: out must be a float32 array of shape "
                             f"{np.shape(array)}, got {out.dtype} {out.shape}")
        else:
            result = out
            if out is not array:
                result[...] = array
        if rng is not None:
            result *= np.float32(1.0 + rng.uniform(-self.scale, self.scale))
            result += np.float32(rng.uniform(-self.shift, self.shift))
            if self.gamma is not None:
                low, high = self.clamp
                np.clip(result, low, high, out=result)
                unit = (result - np.float32(low)) / np.float32(high - low)
                unit **= np.float32(np.exp(rng.uniform(-self.gamma, self.gamma)))
                np.multiply(unit, np.float32(high - low), out=result)
                result += np.float32(low)
            if self.noise_std is not None:
                result += self.noise_std * rng.standard_normal(result.shape, dtype=np.float32)
        if self.clamp is not None:
            np.clip(result, self.clamp[0], self.clamp[1], out=result)
        return result
