"""Tests of utils.landmarks.tiles and Geometry.resampled: a whole volume, longer than the network grid, at a
fixed physical spacing, predicted tile by tile."""

from __future__ import annotations

import numpy as np
import pytest

from utils.landmarks.decode import decode_heatmaps
from utils.landmarks.tiles import predict_tiled, tile_starts
from utils.transforms.geometry import Geometry
from utils.transforms.spatial import SampleTransform
from utils.transforms.warp import WarpSource, warp


@pytest.mark.parametrize("size, tile, overlap, starts", [
    (100, 48, 12, [0, 26, 52]),  # 3 tiles: overlaps 22 and 22 >= 12
    (48, 48, 12, [0]),
    (30, 48, 12, [0]),           # shorter than a tile: one, padded
    (49, 48, 0, [0, 1]),
])
def test_tile_starts(size, tile, overlap, starts):
    assert tile_starts(size, tile, overlap) == starts
    ends = [s + tile for s in starts]
    assert max(ends) >= size and all(e - s >= overlap for s, e in zip(starts[1:], ends[:-1], strict=False))


@pytest.mark.parametrize("shape, tile", [((37, 41), (16, 16)), ((20, 9, 41), (8, 16, 16))])
def test_blended_tiles_equal_the_network_applied_to_the_whole_image(shape, tile):
    """A network that acts voxel by voxel gives the same heatmaps tiled as on the whole image, also along an
    axis shorter than the tile (padded, then cropped)."""
    image = np.random.default_rng(0).random((*shape, 1), dtype=np.float32)
    calls = []

    def forward(batch):
        assert batch.shape[1:-1] == tile
        calls.append(len(batch))
        return np.concatenate([2 * batch, batch**2], axis=-1)

    heatmaps = predict_tiled(image, tile, forward, batch_size=3)
    assert heatmaps.shape == (*shape, 2) and heatmaps.dtype == np.float32
    np.testing.assert_allclose(heatmaps, np.concatenate([2 * image, image**2], axis=-1), rtol=1e-6)
    assert max(calls) <= 3 and len(calls) > 1


def test_the_window_trusts_a_tiles_middle_more_than_its_border():
    """A network that errs by E within 2 pixels of its input's border. One row of tiles along x, 7 pixels
    apart: a pixel is in the border of one or two of its two or three tiles; the tent window leaves 1/3 E
    at most, plain averaging up to 2/3 E."""
    error = 1.0
    image = np.random.default_rng(1).random((16, 50, 1), dtype=np.float32)
    border = np.ones((16, 16), bool)
    border[2:-2, 2:-2] = False

    def forward(batch):
        return 2 * batch + error * border[None, ..., None]

    heatmaps = predict_tiled(image, (16, 16), forward, min_overlap=(8, 8), batch_size=8)
    blended_error = np.abs(heatmaps - 2 * image)[2:-2, 2:-2]  # inside: every pixel is in a tile's middle too
    assert 0 < blended_error.max() < 0.4 * error


def test_predict_tiled_names_what_is_wrong():
    image = np.zeros((20, 20, 1), np.float32)
    with pytest.raises(ValueError, match="forward must return"):
        predict_tiled(image, (8, 8), lambda batch: batch[:, :4])
    with pytest.raises(ValueError, match="min_overlap"):
        predict_tiled(image, (8, 8), lambda batch: batch, min_overlap=(8, 2))
    with pytest.raises(ValueError, match="spacing must be one positive number or 3"):
        Geometry.grid((4, 4, 4)).resampled((1.0, 2.0))


def test_a_long_rotated_anisotropic_ct_gets_its_landmarks_back_through_the_tiles():
    """The issue's case: a CT of anisotropic spacing and rotated direction, longer than the network grid,
    resampled at a fixed 2 mm spacing, predicted in tiles, decoded and mapped back to physical points."""
    angle_z, angle_x = 0.3, 0.2
    rotation_z = np.array([[np.cos(angle_z), -np.sin(angle_z), 0], [np.sin(angle_z), np.cos(angle_z), 0],
                           [0, 0, 1]])
    rotation_x = np.array([[1, 0, 0], [0, np.cos(angle_x), -np.sin(angle_x)],
                           [0, np.sin(angle_x), np.cos(angle_x)]])
    ct = Geometry((30, 28, 90), (0.9, 0.9, 2.5), (10.0, -20.0, 5.0), tuple((rotation_z @ rotation_x).ravel()))
    landmarks = ct.index_to_physical(np.array([[15.3, 14.2, 10.0 + 17.1 * i] for i in range(5)]))
    grid = ct.resampled(2.0)
    assert grid.size == (14, 13, 113) and grid.direction == ct.direction
    np.testing.assert_allclose(grid.center, ct.center)
    # the "image": each voxel's own physical coordinates (linear, so resampling is exact inside the CT)
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in ct.size], indexing="ij"), -1)
    physical = ct.index_to_physical(index).transpose(2, 1, 0, 3)  # NumPy order (z, y, x, 3)
    transform = SampleTransform(ct, grid, np.eye(4))
    channels = [warp(WarpSource.from_array(physical[..., a].astype(np.float32), ct), transform)
                for a in range(3)]
    image = np.stack(channels, axis=-1)
    tile = (32, 16, 16)  # the network grid, shorter than the volume's 113 voxels along z

    def forward(batch):  # a perfect network: a Gaussian of 4 mm around each landmark it can see
        squared = ((batch[..., None, :] - landmarks.astype(np.float32)) ** 2).sum(axis=-1)
        return np.exp(-squared / (2 * 4.0**2))

    heatmaps = predict_tiled(image, tile, forward, batch_size=4)
    points, _ = decode_heatmaps(heatmaps)
    recovered = grid.index_to_physical(points)
    error_voxels = np.linalg.norm(recovered - landmarks, axis=1) / 2.0
    assert error_voxels.max() < 0.5  # the bound: half a voxel of the 2 mm grid
    assert error_voxels.max() < 0.01  # what float32 resampling and blending actually leave
