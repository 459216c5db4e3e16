"""Tests of utils.landmarks.maxima: several maxima per heatmap, and the consistent sequence of vertebrae."""

from __future__ import annotations

import numpy as np
import pytest

from utils.landmarks.decode import decode_heatmaps
from utils.landmarks.maxima import local_maxima, pick_sequence, typical_spacing


def _blobs(shape, blobs, sigma=2.0) -> np.ndarray:
    """A heatmap ([z,] y, x) of Gaussians: blobs = [((x, y[, z]) centre, height), ...]."""
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")[::-1]  # x, y[, z]
    heatmap = np.zeros(shape)
    for centre, height in blobs:
        squared = sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True))
        heatmap += height * np.exp(-squared / (2 * sigma**2))
    return heatmap


@pytest.mark.parametrize("shape, centres", [
    ((40, 50), [(10.3, 12.6), (35.8, 25.2), (20.0, 30.4)]),
    ((24, 30, 36), [(8.4, 10.7, 6.2), (25.6, 20.3, 15.5), (12.0, 22.0, 18.0)]),
])
def test_local_maxima_finds_each_blob_strongest_first(shape, centres):
    heatmap = _blobs(shape, list(zip(centres, (0.6, 1.0, 0.3), strict=True)))
    points, values = local_maxima(heatmap, min_relative=0.5)
    np.testing.assert_allclose(values, [1.0, 0.6], atol=0.07)  # the voxels' values; 0.3 is below half 1.0
    np.testing.assert_allclose(points, [centres[1], centres[0]], atol=0.02)
    all_points, _ = local_maxima(heatmap, min_relative=0.2)
    assert len(all_points) == 3
    np.testing.assert_allclose(all_points[2], centres[2], atol=0.02)
    assert len(local_maxima(heatmap, min_relative=0.2, max_count=2)[0]) == 2
    # a distance larger than the blobs' separations keeps only the strongest
    far = local_maxima(heatmap, min_relative=0.2, min_distance=100.0)[0]
    np.testing.assert_allclose(far, [centres[1]], atol=0.02)


def test_local_maxima_counts_a_plateau_once_and_a_zero_map_not_at_all():
    heatmap = np.zeros((5, 8))
    heatmap[2, 3:5] = 1.0  # two equal neighbours
    points, values = local_maxima(heatmap, min_distance=0.0)
    np.testing.assert_array_equal(points, [[3.5, 2.0]])  # the first in C order, refined to the centre
    np.testing.assert_array_equal(values, [1.0])
    points, values = local_maxima(np.full((60, 60), 0.5, np.float16), min_distance=0.0)  # flat: one maximum
    np.testing.assert_array_equal(points, [[0.0, 0.0]])
    points, values = local_maxima(np.zeros((6, 6)))
    assert points.shape == (0, 2) and values.shape == (0,)


def test_local_maxima_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        local_maxima(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="2 or 3 non-empty axes"):
        local_maxima(np.zeros(5))
    with pytest.raises(ValueError, match="min_relative"):
        local_maxima(np.ones((4, 4)), min_relative=0.0)


def test_typical_spacing_averages_over_the_images_that_have_both():
    landmarks = np.array([
        [[0, 0, 0], [0, 0, 10], [0, 0, 22]],
        [[0, 0, 5], [0, 0, 17], [np.nan] * 3],
    ], dtype=float)
    spacing, direction = typical_spacing(landmarks)
    np.testing.assert_allclose(spacing, [11.0, 12.0])
    np.testing.assert_allclose(direction, [0, 0, 1])
    with pytest.raises(ValueError, match="no image has both landmarks 1 and 2"):
        typical_spacing(landmarks[1:])
    with pytest.raises(ValueError, match="no mean direction"):
        typical_spacing(np.array([[[0, 0, 0], [0, 0, 1]], [[0, 0, 1], [0, 0, 0]]], dtype=float))


def _spine_heatmaps():
    """Six vertebra heatmaps in a 20 x 20 x 80 volume (x, y, z), vertebrae 10 voxels apart along z.

    Vertebra 0 is outside the scan: its heatmap has one spurious peak far down. The heatmap of vertebra 3
    responds more strongly at vertebra 4 than at its own place (they look alike).
    """
    truth = np.array([[10.0, 10.0, 10.0 * i - 5.0] for i in range(6)])  # vertebra 0 at z = -5: outside
    shape = (80, 20, 20)
    blobs = {i: [(truth[i], 1.0)] for i in range(1, 6)}
    blobs[0] = [((10.0, 10.0, 70.0), 0.5)]
    blobs[3] = [(truth[3], 0.7), (truth[4], 1.0)]
    heatmaps = np.stack([_blobs(shape, blobs[i]) for i in range(6)], axis=-1)
    return heatmaps, truth


def test_the_sequence_picks_the_right_vertebra_where_the_single_maximum_picks_its_neighbour():
    heatmaps, truth = _spine_heatmaps()
    single, _ = decode_heatmaps(heatmaps)
    np.testing.assert_allclose(single[3], truth[4], atol=0.05)  # the single maximum: the wrong vertebra
    candidates = [local_maxima(heatmaps[..., i], min_relative=0.3, min_distance=4.0) for i in range(6)]
    assert len(candidates[3][0]) == 2
    chosen = pick_sequence(candidates, spacing=np.full(5, 10.0), direction=np.array([0.0, 0.0, 1.0]))
    assert np.isnan(chosen[0]).all()  # missing at the end: its spurious peak is not 10 mm from vertebra 1
    np.testing.assert_allclose(chosen[1:], truth[1:], atol=0.05)


def test_the_sequence_respects_the_direction_and_the_spacing_tolerance():
    # two candidates for landmark 1: 10 before landmark 0 along the direction, and 10 behind it
    candidates = [(np.array([[0.0, 0.0, 20.0]]), np.array([1.0])),
                  (np.array([[0.0, 0.0, 30.0], [0.0, 0.0, 10.0]]), np.array([0.6, 0.9]))]
    chosen = pick_sequence(candidates, spacing=[10.0], direction=[0.0, 0.0, 1.0])
    np.testing.assert_array_equal(chosen, [[0, 0, 20], [0, 0, 30]])
    chosen = pick_sequence(candidates, spacing=[10.0])  # no direction: the stronger one
    np.testing.assert_array_equal(chosen, [[0, 0, 20], [0, 0, 10]])
    # 10 apart where 20 is typical: outside a tolerance of 0.4, so only one landmark is kept
    chosen = pick_sequence(candidates, spacing=[20.0], tolerance=0.4)
    np.testing.assert_array_equal(chosen[0], [0, 0, 20])
    assert np.isnan(chosen[1]).all()
    assert np.isnan(pick_sequence([(np.zeros((0, 3)), np.zeros(0))] * 2, spacing=[5.0])).all()
    with pytest.raises(ValueError, match="N - 1 = 1 positive spacings"):
        pick_sequence(candidates, spacing=[10.0, 10.0])
    np.testing.assert_array_equal(pick_sequence(candidates, spacing=10.0), [[0, 0, 20], [0, 0, 10]])
