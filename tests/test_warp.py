"""Tests of utils.transforms.warp: compiled resampling equals SimpleITK's; block averaging keeps geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from utils.transforms.affine import (
    CenterToOrigin,
    FitToOutput,
    OriginToOutputCenter,
    RandomRotate,
    RandomScale,
    RandomTranslate,
)
from utils.transforms.bspline import RandomBSplineDeformation
from utils.transforms.geometry import Geometry
from utils.transforms.spatial import SpatialAugmentation
from utils.transforms.warp import WarpSource, block_average, block_average_factor, warp


def _image(shape, spacing, origin, rng) -> sitk.Image:
    array = rng.random(shape, dtype=np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _chain(dim: int, deform: bool) -> SpatialAugmentation:
    rotation = RandomRotate(0.3 if dim == 2 else [0.2] * 3)
    steps = [CenterToOrigin(), FitToOutput(), RandomTranslate(5.0), rotation, RandomScale(0.1, 0.05),
             OriginToOutputCenter()]
    return SpatialAugmentation(steps, RandomBSplineDeformation(5 if dim == 2 else 4, 8.0) if deform else None)


@pytest.mark.parametrize("deform", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warp_2d_equals_simpleitk(seed, deform):
    rng = np.random.default_rng(seed)
    image = _image((90, 70), (0.7, 1.3), (5.0, -2.0), rng)
    transform = _chain(2, deform).sample(Geometry.from_image(image), Geometry.grid((48, 40)), rng)
    expected = transform.resample(image)
    result = warp(WarpSource.from_array(sitk.GetArrayFromImage(image), Geometry.from_image(image)), transform)
    assert result.shape == expected.shape == (40, 48) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=2e-5)


@pytest.mark.parametrize("deform", [False, True])
def test_warp_3d_equals_simpleitk(deform):
    rng = np.random.default_rng(3)
    image = _image((30, 26, 22), (1.0, 1.0, 0.8), (0.0, 3.0, -4.0), rng)
    transform = _chain(3, deform).sample(Geometry.from_image(image), Geometry.grid((20, 18, 16)), rng)
    expected = transform.resample(image, default_value=-1.0)
    source = WarpSource.from_array(sitk.GetArrayFromImage(image), Geometry.from_image(image), -1.0)
    out = np.full((16, 18, 20), np.nan, np.float32)
    result = warp(source, transform, out=out)
    assert result is out
    assert 0.0 < (result == -1.0).mean() < 0.5  # outside points are exactly the default value
    np.testing.assert_allclose(result, expected, atol=2e-5)


def test_warp_source_of_a_transposed_array_warps_like_its_copy():
    """np.pad keeps a Fortran-ordered input's order; the compiled kernel needs C order."""
    rng = np.random.default_rng(4)
    geometry = Geometry.grid((9, 8, 7))
    array = rng.random((9, 8, 7), dtype=np.float32).T  # shape (7, 8, 9), Fortran order
    transform = _chain(3, False).sample(geometry, Geometry.grid((6, 5, 4)), rng)
    expected = warp(WarpSource.from_array(np.ascontiguousarray(array), geometry), transform)
    np.testing.assert_array_equal(warp(WarpSource.from_array(array, geometry), transform), expected)


def test_warp_source_pads_with_border_then_default():
    geometry = Geometry.grid((3, 2))
    array = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16)
    source = WarpSource.from_array(array, geometry, default_value=-7.0)
    assert source.padded.dtype == np.float32 and source.padded.shape == (6, 7)
    np.testing.assert_array_equal(source.array, array)
    np.testing.assert_array_equal(source.padded[1], [-7, 1, 1, 2, 3, 3, -7])  # the first padded row
    np.testing.assert_array_equal(source.padded[0], np.full(7, -7.0))
    assert source.nbytes == 6 * 7 * 4


def test_warp_border_clamps_within_half_a_voxel_then_default():
    """Points within half a voxel outside the image get the border value, further ones the default."""
    geometry = Geometry.grid((4, 3))
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    source = WarpSource.from_array(array, geometry, default_value=100.0)
    chain = SpatialAugmentation([RandomTranslate(0.0)])
    output = Geometry.grid((12, 10), spacing=(0.5, 0.5), origin=(-1.25, -1.25))
    transform = chain.sample(geometry, output, None)
    expected = transform.resample(sitk.GetImageFromArray(array), default_value=100.0)
    result = warp(source, transform)
    assert result[0, 0] == 100.0 and result[2, 2] == array[0, 0]  # (-1.25, -1.25) and (-0.25, -0.25)
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_block_average_keeps_geometry_and_means():
    geometry = Geometry.grid((7, 4), spacing=(0.5, 2.0), origin=(1.0, 1.0))
    array = np.arange(28, dtype=np.float32).reshape(4, 7)
    reduced, reduced_geometry = block_average(array, geometry, 2)
    np.testing.assert_allclose(reduced, [[4, 6, 8], [18, 20, 22]])  # e.g. mean of 0, 1, 7, 8
    assert reduced_geometry == geometry.downsampled(2)
    # the physical centre of block (0, 0) is the mean position of its four voxels
    corners = geometry.index_to_physical(np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float))
    np.testing.assert_allclose(reduced_geometry.index_to_physical(np.zeros(2)), corners.mean(axis=0))
    with pytest.raises(ValueError, match="factor must be >= 1"):
        block_average(array, geometry, 0)


def test_block_averaged_blob_lands_where_the_landmark_goes():
    """A smooth blob in a large image, resampled from its block average, peaks where input_to_output says."""
    rng = np.random.default_rng(4)
    geometry = Geometry.grid((1200, 1600))
    centre = np.array([530.3, 870.6])
    yy, xx = np.mgrid[0:1600, 0:1200]
    array = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * 40.0**2)).astype(np.float32)
    transform = _chain(2, True).sample(geometry, Geometry.grid((128, 128)), rng)
    factor = block_average_factor(_chain(2, True).sample(geometry, Geometry.grid((128, 128)), None))
    assert factor == 12  # 1600 / 128 = 12.5 input pixels per output pixel in the validation chain
    reduced, reduced_geometry = block_average(array, geometry, factor)
    result = warp(WarpSource.from_array(reduced, reduced_geometry), transform)
    expected = transform.input_to_output(centre)
    weights = np.clip(result - 0.5, 0, None)
    oy, ox = np.mgrid[0:128, 0:128]
    centroid = np.array([(weights * ox).sum(), (weights * oy).sum()]) / weights.sum()
    np.testing.assert_allclose(centroid, expected, atol=0.1)


def test_warp_rejects_mismatched_source_and_out():
    rng = np.random.default_rng(5)
    geometry = Geometry.grid((10, 12))
    transform = _chain(2, False).sample(geometry, Geometry.grid((8, 8)), rng)
    with pytest.raises(ValueError, match=r"array shape \(10, 12\) does not match"):
        WarpSource.from_array(np.zeros((10, 12), np.float32), geometry)
    with pytest.raises(ValueError, match="source is 3-D"):
        warp(WarpSource.from_array(np.zeros((2, 12, 10)), Geometry.grid((10, 12, 2))), transform)
    with pytest.raises(ValueError, match=r"out must be a float32 array of shape \(8, 8\)"):
        warp(WarpSource.from_array(np.zeros((12, 10)), geometry), transform, out=np.zeros((8, 8)))


def test_warp_source_refuses_an_image_beyond_the_kernels_32_bit_offsets(monkeypatch):
    """The kernels' voxel offsets are 32-bit: a larger (padded) source is refused with its shape, not read
    out of bounds. The limit is lowered here so that the test needs no 8 GB array."""
    import utils.transforms.warp as warp_module

    monkeypatch.setattr(warp_module, "_MAX_PADDED_VOXELS", 16 * 14 - 1)
    WarpSource.from_array(np.zeros((11, 9)), Geometry.grid((9, 11)))  # 15 x 13 padded: fits
    with pytest.raises(ValueError, match=r"an image of \(12, 10\) voxels is too large"):
        WarpSource.from_array(np.zeros((12, 10)), Geometry.grid((10, 12)))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("size", [127, 128])
def test_border_rule_holds_to_the_last_float_step(size, dim):
    """Along each axis, a point within half a voxel of the border reads the border voxel and one a single
    float step further out reads the default value (SimpleITK's rule); NaN reads the default value. Called
    on the compiled kernels with one output pixel at a chosen source coordinate."""
    from utils.transforms.warp import _warp_2d, _warp_3d

    shape = (size,) * dim  # [z,] y, x
    source = WarpSource.from_array(np.full(shape, 7.0, np.float32), Geometry.grid(shape[::-1]), -1.0)
    no_deformation = [np.zeros((1, 1))] * dim
    coefficients = np.zeros((1,) * dim + (dim,))
    kernel = _warp_2d if dim == 2 else _warp_3d
    cases = {-0.5: 7.0, np.nextafter(-0.5, -1.0): -1.0, size - 0.5: 7.0, np.nextafter(size - 0.5, size): -1.0,
             float("nan"): -1.0, 1e300: -1.0, -1e300: -1.0}
    for axis in range(dim):
        for coordinate, expected in cases.items():
            index_map = np.zeros((dim, dim + 1))
            index_map[:, dim] = size / 2.0
            index_map[axis, dim] = coordinate
            out = np.zeros((1,) * dim, np.float32)
            kernel(source.padded, index_map, *no_deformation, coefficients, out)
            assert out.item() == expected, (axis, coordinate)


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 5, 7])
def test_row_coordinates_add_the_affine_part_and_every_node(nodes):
    """The compiled row pass groups the first four B-spline nodes with the affine part: with fewer nodes
    nothing is read beyond them (NaN lies there), with more every further node is added."""
    from utils.transforms.warp import _row_coordinates

    rng = np.random.default_rng(nodes)
    width = 37
    index_map, base = rng.normal(size=(3, 4)), rng.normal(size=3)
    beyond = np.full((nodes + 4, width), np.nan)
    beyond[:nodes] = rng.normal(size=(nodes, width))
    weights_x, row = beyond[:nodes], rng.normal(size=(nodes, 3))
    coordinates = np.empty((3, width))
    _row_coordinates(coordinates, index_map, base, weights_x, row, np.arange(width, dtype=np.float64))
    expected = index_map[:, :1] * np.arange(width) + base[:, None] + row.T @ weights_x
    np.testing.assert_allclose(coordinates, expected, rtol=1e-12, atol=1e-12)
