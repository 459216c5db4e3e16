"""Tests for utils.transforms.geometry: index <-> physical mapping, downsampling, reference images."""

import numpy as np
import pytest
import SimpleITK as sitk

from utils.transforms.geometry import Geometry, apply_affine


def _rotation_2d(angle: float) -> tuple[float, ...]:
    return (np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle))


def _random_direction_3d(rng: np.random.Generator) -> tuple[float, ...]:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return tuple(q.ravel())


GEOMETRIES = [
    Geometry((40, 30), (0.5, 2.0), (3.0, -7.0), _rotation_2d(0.3)),
    Geometry((20, 25, 7), (0.8, 1.1, 3.0), (-4.0, 2.0, 10.0), _random_direction_3d(np.random.default_rng(1))),
]


def test_grid_defaults_and_properties():
    geometry = Geometry.grid((256, 128))
    assert geometry.dim == 2
    assert geometry.shape == (128, 256)
    assert geometry.spacing == (1.0, 1.0) and geometry.origin == (0.0, 0.0)
    assert geometry.direction == (1.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(geometry.center, [127.5, 63.5])
    np.testing.assert_allclose(geometry.extent, [256.0, 128.0])


def test_known_answer_with_rotated_direction():
    # index axis x points along physical +y, index axis y along physical -x (90 degree rotation)
    geometry = Geometry((10, 20), (2.0, 3.0), (100.0, 50.0), (0.0, -1.0, 1.0, 0.0))
    np.testing.assert_allclose(geometry.index_to_physical([1.0, 0.0]), [100.0, 52.0])
    np.testing.assert_allclose(geometry.index_to_physical([0.0, 1.0]), [97.0, 50.0])
    np.testing.assert_allclose(geometry.index_to_physical([2.0, 4.0]), [88.0, 54.0])
    np.testing.assert_allclose(geometry.physical_to_index([88.0, 54.0]), [2.0, 4.0])
    np.testing.assert_allclose(geometry.center, geometry.index_to_physical([4.5, 9.5]))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["2d", "3d"])
def test_round_trip_and_sitk_agreement(geometry):
    rng = np.random.default_rng(0)
    indices = rng.uniform(-5.0, 30.0, size=(4, 50, geometry.dim))
    physical = geometry.index_to_physical(indices)
    assert physical.shape == indices.shape
    np.testing.assert_allclose(geometry.physical_to_index(physical), indices, atol=1e-10)
    image = geometry.reference_image()
    flat = indices.reshape(-1, geometry.dim)
    expected = [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in flat]
    np.testing.assert_allclose(physical.reshape(-1, geometry.dim), expected, atol=1e-10)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["2d", "3d"])
def test_from_image_and_reference_image_agree(geometry):
    image = geometry.reference_image(sitk.sitkUInt8)
    assert image.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayViewFromImage(image).shape == geometry.shape
    restored = Geometry.from_image(image)
    assert restored.size == geometry.size
    np.testing.assert_allclose(restored.spacing, geometry.spacing)
    np.testing.assert_allclose(restored.origin, geometry.origin)
    np.testing.assert_allclose(restored.direction, geometry.direction, atol=1e-12)


def test_nan_rows_pass_through():
    geometry = GEOMETRIES[0]
    points = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])
    mapped = geometry.index_to_physical(points)
    assert np.all(np.isnan(mapped[1])) and np.all(np.isfinite(mapped[[0, 2]]))
    assert np.all(np.isnan(geometry.physical_to_index(mapped)[1]))


def test_downsampled_is_the_centre_of_each_block():
    geometry = Geometry((256, 250), (0.5, 2.0), (10.0, 20.0), _rotation_2d(0.4))
    coarse = geometry.downsampled(4)
    assert coarse.size == (64, 62)
    np.testing.assert_allclose(coarse.spacing, [2.0, 8.0])
    assert coarse.direction == geometry.direction
    # coarse voxel (i, j) is the mean of fine voxels 4i .. 4i + 3 (and likewise along y)
    coarse_index = np.array([[0.0, 0.0], [5.0, 7.0], [63.0, 61.0]])
    fine_centres = geometry.index_to_physical(4.0 * coarse_index + 1.5)
    np.testing.assert_allclose(coarse.index_to_physical(coarse_index), fine_centres, atol=1e-10)
    assert geometry.downsampled(1) == geometry


def test_apply_affine_known_answer():
    matrix = np.array([[0.0, -1.0, 5.0], [1.0, 0.0, -2.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(apply_affine(matrix, [[1.0, 2.0], [0.0, 0.0]]), [[3.0, -1.0], [5.0, -2.0]])
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        apply_affine(matrix, np.zeros((4, 3)))


@pytest.mark.parametrize(
    ("size", "spacing", "direction", "message"),
    [
        ((4,), (1.0,), (1.0,), "size"),
        ((4, 4), (1.0,), (1, 0, 0, 1), "spacing"),
        ((4, 4), (1.0, 1.0), (1, 0, 0), "direction"),
        ((4, 0), (1.0, 1.0), (1, 0, 0, 1), "size"),
        ((4, 4), (1.0, -1.0), (1, 0, 0, 1), "spacing"),
        ((4, 4), (1.0, 1.0), (1, 1, 1, 1), "direction"),
    ],
)
def test_invalid_geometry_is_rejected(size, spacing, direction, message):
    with pytest.raises(ValueError, match=message):
        Geometry(size, spacing, (0.0,) * len(spacing), direction)


def test_invalid_downsampling_factor():
    with pytest.raises(ValueError, match="factor must be a positive integer, got 0"):
        Geometry.grid((8, 8)).downsampled(0)
    with pytest.raises(ValueError, match="factor 16 exceeds"):
        Geometry.grid((8, 8)).downsampled(16)
