"""Tests for utils.landmarks.decode: sub-pixel recovery, hand-computed refinements, edge cases, errors."""

import re

import keras
import numpy as np
import pytest

from utils.landmarks.decode import _channel_argmax, decode_heatmaps
from utils.landmarks.targets import gaussian_targets


def gaussian_heatmaps(points, shape, sigma):
    """Peak-1 Gaussians at (N, dim) points on a ([z,] y, x) grid as (..., N) float32, model-drawn."""
    points = np.asarray(points, np.float32)[None]
    return keras.ops.convert_to_numpy(gaussian_targets(points, np.ones(points.shape[:2]), sigma, shape))[0]


def line_heatmap(values, centre):
    """A (3, 9, 1) heatmap: ``values`` along x in row y = 1, centred on x = ``centre``, 0 elsewhere."""
    heatmap = np.zeros((3, 9, 1))
    heatmap[1, centre - 1 : centre + 2, 0] = values
    return heatmap


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("shape", [(64, 72), (32, 36, 40)])
def test_recovers_subpixel_gaussian_centres(shape, sigma):
    rng = np.random.default_rng(11)
    sizes = np.array(shape[::-1])
    points = rng.uniform(2.0, sizes - 3.0, size=(6, len(shape)))
    decoded, values = decode_heatmaps(gaussian_heatmaps(points, shape, sigma))
    assert decoded.shape == points.shape
    assert np.max(np.abs(decoded - points)) < 0.05
    # Refinement on the logarithm is exact for a sampled Gaussian, up to float32 rounding.
    assert np.max(np.abs(decoded - points)) < 1e-3
    # The maximum voxel is within half a voxel of the centre along each axis.
    assert np.all(values >= np.exp(-len(shape) * 0.25 / (2 * sigma**2)) - 1e-6)
    assert np.all(values <= 1.0)


def test_round_trip_37_landmarks():
    rng = np.random.default_rng(5)
    points = rng.uniform(0.0, 255.0, size=(37, 2))
    points[3] = [0.2, 100.0]  # next to the left border: x is not refined beyond the border voxel
    decoded, values = decode_heatmaps(gaussian_heatmaps(points, (256, 256), 3.0))
    interior = np.all((points >= 1.0) & (points <= 254.0), axis=1)
    np.testing.assert_allclose(decoded[interior], points[interior], atol=1e-3)
    np.testing.assert_allclose(decoded[3], [0.0, 100.0], atol=1e-3)
    assert values.shape == (37,)
    assert np.all(values > 0.9)


def test_log_refinement_hand_computed():
    # log values (-1, 0, -0.25): vertex at 0.5 * (-1 + 0.25) / (-1 - 0 - 0.25) = 0.3.
    heatmap = line_heatmap([np.exp(-1.0), 1.0, np.exp(-0.25)], centre=4)
    points, values = decode_heatmaps(heatmap)
    np.testing.assert_allclose(points, [[4.3, 1.0]], atol=1e-12)
    np.testing.assert_array_equal(values, [1.0])


def test_raw_refinement_when_a_neighbour_is_not_positive():
    # Raw values (0, 1, 0.5): vertex at 0.5 * (0 - 0.5) / (0 - 2 + 0.5) = 1/6.
    points, _ = decode_heatmaps(line_heatmap([0.0, 1.0, 0.5], centre=4))
    np.testing.assert_allclose(points, [[4.0 + 1.0 / 6.0, 1.0]], atol=1e-12)
    # Raw values (0.5, 1, -0.5): vertex at 0.5 * (0.5 + 0.5) / (0.5 - 2 - 0.5) = -0.25.
    points, _ = decode_heatmaps(line_heatmap([0.5, 1.0, -0.5], centre=4))
    np.testing.assert_allclose(points, [[3.75, 1.0]], atol=1e-12)


def test_plateau_of_two_voxels_gives_their_midpoint():
    points, values = decode_heatmaps(line_heatmap([0.2, 0.8, 0.8], centre=4))
    np.testing.assert_allclose(points, [[4.5, 1.0]], atol=1e-12)
    np.testing.assert_array_equal(values, [0.8])


def test_no_refinement_at_border():
    heatmap = np.zeros((5, 6, 1))
    heatmap[:, 0, 0] = [0.1, 0.5, 0.9, 0.6, 0.2]  # maximum at x = 0, y = 2
    heatmap[2, 1, 0] = 0.4
    points, values = decode_heatmaps(heatmap)
    # x stays on the border voxel; y refined on log values (log 0.5, log 0.9, log 0.6).
    lower, centre, upper = np.log([0.5, 0.9, 0.6])
    expected_y = 2.0 + 0.5 * (lower - upper) / (lower - 2 * centre + upper)
    np.testing.assert_allclose(points, [[0.0, expected_y]], atol=1e-12)
    assert values[0] == 0.9


def test_constant_channels_give_first_voxel_and_their_value():
    heatmaps = np.zeros((4, 5, 6, 3), dtype=np.float32)
    heatmaps[..., 1] = 0.7
    heatmaps[..., 2] = gaussian_heatmaps(np.array([[2.0, 3.0, 1.0]]), (4, 5, 6), 1.0)[..., 0]
    points, values = decode_heatmaps(heatmaps)
    np.testing.assert_allclose(points, [[0, 0, 0], [0, 0, 0], [2, 3, 1]], atol=1e-9)
    np.testing.assert_allclose(values, [0.0, 0.7, 1.0], rtol=1e-6)


def test_channels_are_decoded_independently():
    shape = (30, 40)
    points = np.array([[10.3, 5.8], [35.1, 22.4], [20.0, 15.0]])
    heatmaps = gaussian_heatmaps(points, shape, np.array([1.5, 4.0, 2.0]))
    heatmaps[..., 2] *= -1.0  # a negative channel: its maximum is somewhere in the flat zero region
    decoded, _ = decode_heatmaps(heatmaps)
    for n in range(3):
        single, _ = decode_heatmaps(heatmaps[..., n : n + 1])
        np.testing.assert_array_equal(decoded[n], single[0])
    np.testing.assert_allclose(decoded[:2], points[:2], atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_argmax_is_numpys_with_ties_first(dtype):
    """Many ties (small integers): the first maximum in C order wins, as with np.argmax."""
    flat = np.random.default_rng(2).integers(0, 4, size=(210, 9)).astype(dtype)
    np.testing.assert_array_equal(_channel_argmax(flat), np.argmax(flat, axis=0))


@pytest.mark.parametrize("dtype", [np.float16, np.int16, np.float32])
def test_any_dtype_decodes(dtype):
    """float16 (mixed-precision outputs) and integers are decoded like float32."""
    points = np.array([[10.3, 5.8], [3.0, 12.6]])
    heatmaps = gaussian_heatmaps(points, (16, 20), 2.0) * 1000
    decoded, values = decode_heatmaps(heatmaps.astype(dtype))
    np.testing.assert_allclose(decoded, points, atol=0.05)
    np.testing.assert_allclose(values, heatmaps.reshape(-1, 2).max(axis=0), rtol=2e-3)


def test_no_channels():
    points, values = decode_heatmaps(np.zeros((4, 5, 6, 0)))
    assert points.shape == (0, 3)
    assert values.shape == (0,)


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 4, 5, 6), (0, 4, 2)])
def test_invalid_shape(shape):
    with pytest.raises(ValueError, match=r"heatmaps must have shape.*got " + re.escape(str(shape))):
        decode_heatmaps(np.zeros(shape))
