"""Tests for utils.landmarks.heatmaps: known values, brute-force equality, missing points, errors."""

import numpy as np
import pytest

from utils.landmarks.heatmaps import TRUNCATE_SIGMAS, gaussian_heatmaps


def brute_force_heatmaps(points, shape, sigmas, normalize=False):
    """Evaluates every Gaussian on the full grid, without truncation (points inside the grid only)."""
    dim = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")[::-1], axis=-1)  # (x, y[, z])
    channels = []
    for point, sigma in zip(points, sigmas, strict=True):
        squared = np.sum((grid - point) ** 2, axis=-1)
        channel = np.exp(-squared / (2.0 * sigma**2))
        if normalize:
            channel /= (2.0 * np.pi * sigma**2) ** (dim / 2)
        channels.append(channel)
    return np.stack(channels, axis=-1)


def test_known_values_2d():
    sigma = 2.0
    heatmaps = gaussian_heatmaps(np.array([[10.0, 20.0]]), (40, 30), sigma)
    assert heatmaps.shape == (40, 30, 1)
    assert heatmaps.dtype == np.float32
    assert heatmaps[20, 10, 0] == 1.0
    assert heatmaps.max() == 1.0
    # (x, y) = (13, 20): distance 3 along x; (13, 24): distance 5 (3-4-5 triangle).
    assert heatmaps[20, 13, 0] == pytest.approx(np.exp(-9.0 / 8.0), rel=1e-6)
    assert heatmaps[24, 13, 0] == pytest.approx(np.exp(-25.0 / 8.0), rel=1e-6)
    assert heatmaps[16, 7, 0] == pytest.approx(np.exp(-25.0 / 8.0), rel=1e-6)


def test_known_values_3d():
    sigma = 1.5
    heatmaps = gaussian_heatmaps(np.array([[4.0, 5.0, 6.0]]), (12, 11, 10), sigma)
    assert heatmaps.shape == (12, 11, 10, 1)
    assert heatmaps[6, 5, 4, 0] == 1.0
    # (x, y, z) = (5, 7, 8): offsets (1, 2, 2), distance 3.
    assert heatmaps[8, 7, 5, 0] == pytest.approx(np.exp(-9.0 / (2 * sigma**2)), rel=1e-6)


def test_subpixel_position_value():
    heatmaps = gaussian_heatmaps(np.array([[10.5, 7.25]]), (20, 20), 3.0)
    squared = 0.5**2 + 0.75**2  # voxel (x, y) = (10, 8)
    assert heatmaps[8, 10, 0] == pytest.approx(np.exp(-squared / 18.0), rel=1e-6)
    assert heatmaps[8, 11, 0] == heatmaps[8, 10, 0]  # symmetric about x = 10.5


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(48, 64), (20, 24, 28)])
def test_window_equals_brute_force(shape, normalize):
    rng = np.random.default_rng(7)
    num = 9
    sizes = np.array(shape[::-1])
    points = rng.uniform(-0.5, sizes - 0.5, size=(num, len(shape)))
    points[0] = 0.0  # on a corner voxel
    points[1] = sizes - 0.5  # on the far border
    sigmas = rng.uniform(0.8, 6.0, size=num)
    expected = brute_force_heatmaps(points, shape, sigmas, normalize)
    actual = gaussian_heatmaps(points, shape, sigmas, normalize=normalize)
    peaks = 1.0 / (2.0 * np.pi * sigmas**2) ** (len(shape) / 2) if normalize else np.ones(num)
    # Truncation drops at most exp(-TRUNCATE_SIGMAS^2 / 2) of the peak; the rest is float32 rounding.
    tolerance = peaks * (np.exp(-(TRUNCATE_SIGMAS**2) / 2) + 1e-6)
    assert actual.shape == (*shape, num)
    assert np.all(np.abs(actual - expected) <= tolerance)


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("shape", [(64, 64), (40, 40, 40)])
def test_normalize_integrates_to_one(shape, sigma):
    rng = np.random.default_rng(3)
    centre = np.array(shape[::-1]) / 2
    points = centre + rng.uniform(-1.0, 1.0, size=(3, len(shape)))
    heatmaps = gaussian_heatmaps(points, shape, sigma, normalize=True)
    sums = heatmaps.sum(axis=tuple(range(len(shape))), dtype=np.float64)
    np.testing.assert_allclose(sums, 1.0, atol=1e-3)


def test_missing_and_outside_points_give_zero_channels():
    shape = (20, 30)  # y, x
    points = np.array(
        [
            [5.0, 5.0],
            [np.nan, np.nan],
            [np.nan, 4.0],
            [-0.6, 10.0],  # more than half a pixel left of x = 0
            [10.0, 19.6],  # more than half a pixel below y = 19
            [np.inf, 3.0],
            [-0.5, 10.0],  # exactly on the grid boundary: still rendered
            [29.5, 19.5],
        ]
    )
    heatmaps = gaussian_heatmaps(points, shape, 2.0)
    nonzero = heatmaps.reshape(-1, len(points)).any(axis=0)
    np.testing.assert_array_equal(nonzero, [True, False, False, False, False, False, True, True])
    assert heatmaps[5, 5, 0] == 1.0
    assert heatmaps[10, 0, 6] == pytest.approx(np.exp(-0.25 / 8.0), rel=1e-6)
    assert heatmaps[19, 29, 7] == pytest.approx(np.exp(-0.5 / 8.0), rel=1e-6)


def test_per_landmark_sigma_matches_single_renders():
    points = np.array([[10.0, 12.0], [30.3, 20.7], [5.5, 35.0]])
    sigmas = np.array([1.0, 4.0, 2.5])
    heatmaps = gaussian_heatmaps(points, (40, 40), sigmas)
    for n in range(3):
        single = gaussian_heatmaps(points[n : n + 1], (40, 40), sigmas[n])
        np.testing.assert_array_equal(heatmaps[..., n], single[..., 0])


def test_large_sigma_on_small_grid():
    heatmaps = gaussian_heatmaps(np.array([[2.0, 1.0]]), (4, 5), 50.0)
    expected = brute_force_heatmaps(np.array([[2.0, 1.0]]), (4, 5), [50.0])
    np.testing.assert_allclose(heatmaps, expected, rtol=1e-6)


def test_no_points():
    heatmaps = gaussian_heatmaps(np.zeros((0, 3)), (4, 5, 6), 2.0)
    assert heatmaps.shape == (4, 5, 6, 0)


@pytest.mark.parametrize(
    ("points", "shape", "sigma", "message"),
    [
        (np.zeros((3, 3)), (16, 16), 2.0, r"points must have shape \(N, 2\).*got \(3, 3\)"),
        (np.zeros((3, 2)), (8, 16, 16), 2.0, r"points must have shape \(N, 3\).*got \(3, 2\)"),
        (np.zeros(2), (16, 16), 2.0, r"points .*got \(2,\)"),
        (np.zeros((3, 2)), (16, 16), 0.0, r"sigma must be positive and finite, got 0.0"),
        (np.zeros((3, 2)), (16, 16), -1.5, r"sigma must be positive and finite, got -1.5"),
        (np.zeros((3, 2)), (16, 16), [1.0, np.nan, 2.0], r"sigma must be positive.*got \[1.0, nan"),
        (np.zeros((3, 2)), (16, 16), [1.0, 2.0], r"sigma must be a float or have shape \(3,\).*got \(2,\)"),
        (np.zeros((3, 1)), (16,), 2.0, r"shape must be 2 or 3 positive sizes.*got \(16,\)"),
        (np.zeros((3, 2)), (0, 16), 2.0, r"shape must be 2 or 3 positive sizes.*got \(0, 16\)"),
    ],
)
def test_invalid_arguments(points, shape, sigma, message):
    with pytest.raises(ValueError, match=message):
        gaussian_heatmaps(points, shape, sigma)


def test_out_buffer_is_zeroed_and_filled_like_a_fresh_array():
    points = np.array([[10.3, 20.7], [np.nan, np.nan], [50.0, 5.5]])
    expected = gaussian_heatmaps(points, (64, 80), 2.0)
    out = np.full((64, 80, 3), 7.0, dtype=np.float32)  # stale values of an earlier sample
    result = gaussian_heatmaps(points, (64, 80), 2.0, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match=r"out must be a float32 array of shape \(64, 80, 3\)"):
        gaussian_heatmaps(points, (64, 80), 2.0, out=np.zeros((64, 80, 2), np.float32))
