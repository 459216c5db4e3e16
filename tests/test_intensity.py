"""Tests for utils.transforms.intensity: robust range, rescaling, random intensity augmentation."""

import numpy as np
import pytest

from utils.transforms.intensity import (
    IntensityAugmentation,
    normalize_robust,
    rescale_intensity,
    robust_range,
)


def test_robust_range_known_answer():
    values = np.arange(101, dtype=np.float64).reshape(1, 101)  # 0 .. 100: percentile p is p
    assert robust_range(values) == (1.0, 99.0)
    assert robust_range(values, percentiles=(10.0, 50.0)) == (10.0, 50.0)
    assert robust_range(np.array([1.0, np.nan, 3.0]), percentiles=(0.0, 100.0)) == (1.0, 3.0)


def test_robust_range_subsample_is_deterministic_and_close():
    image = np.random.default_rng(0).normal(100.0, 10.0, size=(1500, 2000)).astype(np.float32)
    lo, hi = robust_range(image, max_samples=10_000)
    assert (lo, hi) == robust_range(image, max_samples=10_000)
    full_lo, full_hi = np.percentile(image, [1.0, 99.0])
    assert abs(lo - full_lo) < 1.0 and abs(hi - full_hi) < 1.0
    # a stride of 2 on [0, 1, 2, 3, ...] keeps only even values
    assert robust_range(np.arange(10.0), (0.0, 100.0), max_samples=5) == (0.0, 8.0)


def test_rescale_intensity_known_answer():
    result = rescale_intensity(np.array([[10, 20], [30, 50]], dtype=np.uint8), lo=10.0, hi=30.0)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, [[-1.0, 0.0], [1.0, 3.0]])
    np.testing.assert_allclose(rescale_intensity(np.array([0.0, 5.0]), 0.0, 10.0, out_range=(0.0, 1.0)),
                               [0.0, 0.5])


def test_normalize_robust_known_answer_in_place():
    values = np.arange(101, dtype=np.float32)  # percentile p is p
    normalize_robust(values, (5.0, 95.0))
    np.testing.assert_allclose(values[[0, 5, 50, 95, 100]], [-10 / 9, -1.0, 0.0, 1.0, 10 / 9], atol=1e-6)
    constant = np.full((3, 4), 7.0, np.float32)
    normalize_robust(constant, (5.0, 95.0))
    np.testing.assert_array_equal(constant, 0.0)
    with pytest.raises(ValueError, match="normalize_robust: array must be float32"):
        normalize_robust(np.arange(5.0), (5.0, 95.0))


def test_validation_only_clamps_and_keeps_the_input():
    array = np.array([-2.0, -0.5, 0.0, 0.75, 3.0], dtype=np.float32)
    original = array.copy()
    result = IntensityAugmentation(gamma=0.3, noise_std=0.1)(array, None)
    np.testing.assert_array_equal(result, [-1.0, -0.5, 0.0, 0.75, 1.0])
    np.testing.assert_array_equal(array, original)
    np.testing.assert_array_equal(IntensityAugmentation(clamp=None)(array, None), array)


def test_shift_and_scale_known_answer():
    rng_seed = 3
    draws = np.random.default_rng(rng_seed)
    factor = 1.0 + draws.uniform(-0.15, 0.15)
    shift = draws.uniform(-0.15, 0.15)
    array = np.linspace(-1.0, 1.0, 11, dtype=np.float32)
    result = IntensityAugmentation()(array, np.random.default_rng(rng_seed))
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, np.clip(array * factor + shift, -1.0, 1.0), atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"gamma": 0.3}, {"noise_std": 0.05}, {"clamp": None}])
def test_in_place_equals_a_new_array(options):
    augmentation = IntensityAugmentation(**options)
    array = np.linspace(-1.2, 1.2, 50, dtype=np.float32).reshape(5, 10)
    expected = augmentation(array, np.random.default_rng(8))
    into = np.full_like(array, np.nan)
    assert augmentation(array, np.random.default_rng(8), out=into) is into
    in_place = array.copy()
    augmentation(in_place, np.random.default_rng(8), out=in_place)
    np.testing.assert_array_equal(into, expected)
    np.testing.assert_array_equal(in_place, expected)
    with pytest.raises(ValueError, match=r"out must be a float32 array of shape \(5, 10\), got float64"):
        augmentation(array, None, out=np.zeros((5, 10)))


def test_ranges_of_random_shift_and_scale():
    augmentation = IntensityAugmentation(shift=0.1, scale=0.2, clamp=None)
    rng = np.random.default_rng(0)
    outputs = np.array([augmentation(np.array([0.0, 1.0], dtype=np.float32), rng) for _ in range(500)])
    shifts, factors = outputs[:, 0], outputs[:, 1] - outputs[:, 0]
    assert np.all(np.abs(shifts) <= 0.1) and np.abs(shifts).max() > 0.09
    assert np.all(np.abs(factors - 1.0) <= 0.2 + 1e-6) and np.abs(factors - 1.0).max() > 0.18


def test_gamma_keeps_the_ends_and_is_monotonic():
    augmentation = IntensityAugmentation(shift=0.0, scale=0.0, gamma=0.5)
    array = np.linspace(-1.0, 1.0, 101, dtype=np.float32)
    rng = np.random.default_rng(1)
    changed = 0
    for _ in range(20):
        result = augmentation(array, rng)
        assert result[0] == -1.0 and result[-1] == 1.0
        assert np.all(np.diff(result) > 0.0)
        changed += not np.allclose(result, array, atol=1e-3)
    assert changed > 15


def test_gamma_known_answer():
    seed = 5
    draws = np.random.default_rng(seed)
    draws.uniform(-0.0, 0.0, size=2)  # the scale and shift draws come first
    exponent = np.exp(draws.uniform(-0.4, 0.4))
    array = np.array([-1.0, 0.0, 0.5, 1.0], dtype=np.float32)
    result = IntensityAugmentation(shift=0.0, scale=0.0, gamma=0.4)(array, np.random.default_rng(seed))
    np.testing.assert_allclose(result, ((array + 1.0) / 2.0) ** exponent * 2.0 - 1.0, atol=1e-6)


def test_noise_statistics_and_determinism():
    augmentation = IntensityAugmentation(shift=0.0, scale=0.0, clamp=None, noise_std=0.05)
    array = np.zeros((200, 300), dtype=np.float32)
    first = augmentation(array, np.random.default_rng(2))
    np.testing.assert_array_equal(first, augmentation(array, np.random.default_rng(2)))
    assert abs(first.std() - 0.05) < 0.002 and abs(first.mean()) < 0.002
    assert not np.array_equal(first, augmentation(array, np.random.default_rng(3)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"shift": -0.1}, "shift must be >= 0, got -0.1"),
     ({"scale": 1.0}, r"scale must be in \[0, 1\), got 1.0"),
     ({"clamp": (1.0, -1.0)}, r"clamp must be \(low, high\) with low < high, got \(1.0, -1.0\)"),
     ({"gamma": -0.2}, "gamma must be >= 0 or None, got -0.2"),
     ({"gamma": 0.2, "clamp": None}, "gamma needs a clamp range"),
     ({"noise_std": -1.0}, "noise_std must be >= 0 or None, got -1.0")])
def test_invalid_augmentation_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IntensityAugmentation(**kwargs)


def test_invalid_range_arguments():
    with pytest.raises(ValueError, match=r"percentiles must satisfy .* got \(99.0, 1.0\)"):
        robust_range(np.arange(5.0), percentiles=(99.0, 1.0))
    with pytest.raises(ValueError, match="max_samples must be positive, got 0"):
        robust_range(np.arange(5.0), max_samples=0)
    with pytest.raises(ValueError, match="array is empty"):
        robust_range(np.array([]))
    with pytest.raises(ValueError, match="hi must be greater than lo, got lo=2.0, hi=2.0"):
        rescale_intensity(np.ones(3), 2.0, 2.0)
