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



def random_points(rng, shape, num):
    """(num, dim) points in (x, y[, z]) order: inside, outside, on and just past the border, and NaN rows."""
    sizes = np.array(shape[::-1], dtype=np.float64)
    points = rng.uniform(-0.2, 1.2, size=(num, len(shape))) * sizes
    border = rng.random(num) < 0.4
    offsets = np.array([-0.51, -0.5, 0.0, 0.4])  # from the first voxel, or back from the last one
    near = rng.choice(offsets, size=(border.sum(), len(shape)))
    points[border] = np.where(rng.random(near.shape) < 0.5, near, sizes - 1.0 - near)
    points[rng.random(num) < 0.15] = np.nan
    return points


@pytest.mark.parametrize(("shape", "num"), [((40, 56), 9), ((18, 20, 22), 5)])
def test_reused_buffer_with_windows_equals_a_fresh_render_after_every_call(shape, num):
    rng = np.random.default_rng(11)
    out = np.zeros((*shape, num), np.float32)
    windows = np.zeros((num, len(shape), 2), np.int32)
    for call in range(40):
        points = random_points(rng, shape, num)
        if call % 10 == 9:
            points[:] = np.nan  # a sample without a single landmark empties every box
        sigma = rng.uniform(0.5, 4.0, size=num) if call % 2 else float(rng.uniform(0.5, 4.0))
        normalize = call % 3 == 0
        result = gaussian_heatmaps(points, shape, sigma, normalize=normalize, out=out, windows=windows)
        assert result is out
        expected = gaussian_heatmaps(points, shape, sigma, normalize=normalize)
        assert np.array_equal(out, expected), f"call {call} differs from a fresh render"
        nonzero = np.argwhere(out != 0)  # every value drawn lies inside its channel's recorded box
        for axis in range(len(shape)):
            coordinate = nonzero[:, len(shape) - 1 - axis]
            assert np.all(windows[nonzero[:, -1], axis, 0] <= coordinate)
            assert np.all(coordinate < windows[nonzero[:, -1], axis, 1])


def test_windows_record_the_drawn_boxes_and_empty_ones_for_missing_and_outside_points():
    points = np.array([[10.0, 12.0], [np.nan, np.nan], [-3.0, 5.0], [39.0, 0.0]])
    out = np.full((30, 40, 4), 5.0, np.float32)
    windows = np.zeros((4, 2, 2), np.int32)
    windows[:] = [[0, 40], [0, 30]]  # boxes covering the whole grid: the precondition holds for any `out`
    gaussian_heatmaps(points, (30, 40), 1.0, out=out, windows=windows)
    np.testing.assert_array_equal(out, gaussian_heatmaps(points, (30, 40), 1.0))
    radius = int(np.ceil(TRUNCATE_SIGMAS * 1.0 + 0.5))  # 2 * radius + 1 indices around the nearest voxel
    np.testing.assert_array_equal(windows[0], [[10 - radius, 11 + radius], [12 - radius, 13 + radius]])
    np.testing.assert_array_equal(windows[1], 0)
    np.testing.assert_array_equal(windows[2], 0)
    np.testing.assert_array_equal(windows[3], [[40 - 2 * radius - 1, 40], [0, 2 * radius + 1]])


OUT = "a zero float32 (8, 8, 3) buffer"


@pytest.mark.parametrize(
    ("out", "windows", "message"),
    [
        (None, np.zeros((3, 2, 2), np.int32), r"windows is only allowed together with out"),
        (OUT, np.zeros((3, 2, 2), np.int64), r"int32 array of shape \(3, 2, 2\), got int64 \(3, 2, 2\)"),
        (OUT, np.zeros((2, 2, 2), np.int32), r"int32 array of shape \(3, 2, 2\), got int32 \(2, 2, 2\)"),
        (OUT, [[[0, 1]] * 2] * 3, r"int32 array .*got list"),
        (OUT, np.full((3, 2, 2), [0, 9], np.int32), r"start <= stop <= size per axis \[8, 8\]"),
        (OUT, np.full((3, 2, 2), [-1, 2], np.int32), r"0 <= start"),
        (OUT, np.full((3, 2, 2), [3, 2], np.int32), r"start <= stop"),
    ],
)
def test_invalid_windows_are_refused_before_anything_is_written(out, windows, message):
    out = np.zeros((8, 8, 3), np.float32) if out == OUT else out
    with pytest.raises(ValueError, match=message):
        gaussian_heatmaps(np.full((3, 2), 4.0), (8, 8), 1.0, out=out, windows=windows)
    if out is not None:
        assert not out.any()
