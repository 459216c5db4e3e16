"""Tests of utils.data.sample: the end-to-end coordinate round trip (issue 2 item 6) and the sample layout."""

import keras
import numpy as np
import pytest
import SimpleITK as sitk

from utils.data.sample import SampleGenerator, prepare_source, read_geometry
from utils.io.image import read_image
from utils.io.landmarks import read_landmarks_csv
from utils.landmarks.decode import decode_heatmaps
from utils.landmarks.targets import gaussian_targets
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
from utils.transforms.intensity import IntensityAugmentation
from utils.transforms.spatial import SpatialAugmentation


def full_chain(deformation_nodes: int, max_displacement: float) -> SpatialAugmentation:
    return SpatialAugmentation(
        [CenterToOrigin(), FitToOutput(), RandomTranslate(10.0), RandomRotate(0.2), RandomScale(0.1, 0.05),
         OriginToOutputCenter()],
        deformation=RandomBSplineDeformation(deformation_nodes, max_displacement),
    )


def round_trip_errors(generator: SampleGenerator, source, landmarks, rng, sigma: float) -> np.ndarray:
    """Maxima of the targets the model draws from the sample's points, decoded and mapped back to the
    source: distance to the annotation in heatmap pixels."""
    arrays, transform = generator(source, landmarks, rng)
    heatmaps = gaussian_targets(arrays["points"][None], arrays["mask"][None], sigma,
                                generator.heatmap_geometry.shape)
    points, _ = decode_heatmaps(keras.ops.convert_to_numpy(heatmaps)[0])
    back = transform.output_to_input(generator.heatmap_geometry.index_to_physical(points))
    linear = transform.matrix[:-1, :-1]
    heatmap = generator.heatmap_geometry
    heatmap_pixels_per_unit = abs(np.linalg.det(linear)) ** (1 / len(linear)) / heatmap.spacing[0]
    in_heatmap = generator.heatmap_geometry.physical_to_index(transform.input_to_output(landmarks))
    margin = 4 * sigma  # the Gaussian's peak region inside the grid: not cut off by the border
    size = np.asarray(heatmap.size)
    kept = np.all((in_heatmap >= margin) & (in_heatmap <= size - 1 - margin), axis=1)
    inside = np.all((in_heatmap >= -0.5) & (in_heatmap <= size - 0.5), axis=1)
    np.testing.assert_array_equal(arrays["mask"], inside.astype(np.float32))
    return np.linalg.norm(back - landmarks, axis=1)[kept] * heatmap_pixels_per_unit


def test_round_trip_on_a_real_radiograph(hand_data_dir):
    image_id = "3167"
    image = read_image(hand_data_dir / "images" / f"{image_id}.mha", ignore_spacing=True, dim=2)
    pixels = read_landmarks_csv(hand_data_dir / "setup" / "all.csv", 37, 2)[image_id]
    landmarks = Geometry.from_image(image).index_to_physical(pixels)
    spatial = full_chain(5, 20.0)
    output = Geometry.grid((256, 256))
    source = prepare_source(image, spatial, output)
    generator = SampleGenerator(spatial, IntensityAugmentation(), output, heatmap_geometry=output)
    rng = np.random.default_rng(0)
    errors = np.concatenate([round_trip_errors(generator, source, landmarks, rng, 3.0) for _ in range(4)])
    assert errors.size > 100
    assert errors.max() < 0.05


def synthetic_volume() -> tuple[sitk.Image, np.ndarray]:
    """A random 3D volume with anisotropic spacing, a rotated direction and 8 landmarks inside it."""
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.random((30, 40, 50)).astype(np.float32))  # size (50, 40, 30)
    image.SetSpacing((1.2, 1.0, 2.0))
    image.SetOrigin((-20.0, 5.0, 10.0))
    angle = 0.3
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    indices = rng.uniform([12, 10, 8], [38, 30, 22], size=(8, 3))
    return image, Geometry.from_image(image).index_to_physical(indices)


def test_round_trip_on_a_synthetic_volume():
    image, landmarks = synthetic_volume()
    spatial = SpatialAugmentation(
        [CenterToOrigin(), FitToOutput(), RandomTranslate(3.0), RandomRotate(0.2), RandomScale(0.1, 0.05),
         OriginToOutputCenter()],
        deformation=RandomBSplineDeformation(4, 4.0),
    )
    output = Geometry.grid((64, 64, 64))
    generator = SampleGenerator(spatial, IntensityAugmentation(), output, output.downsampled(2))
    source = prepare_source(image, spatial, output)
    rng = np.random.default_rng(2)
    errors = np.concatenate([round_trip_errors(generator, source, landmarks, rng, 1.5) for _ in range(3)])
    assert errors.size >= 12
    assert errors.max() < 0.05


def test_sample_layout_missing_and_outside_landmarks():
    image, landmarks = synthetic_volume()
    landmarks[2] = np.nan
    landmarks[3] = [1000.0, 0.0, 0.0]  # far outside the image: mapped outside the grid
    spatial = SpatialAugmentation([CenterToOrigin(), FitToOutput(), OriginToOutputCenter()])
    output = Geometry.grid((32, 24, 16))
    heatmap = output.downsampled(2)
    generator = SampleGenerator(spatial, IntensityAugmentation(), output, heatmap)
    arrays, transform = generator(prepare_source(image, spatial, output), landmarks, None)
    assert sorted(arrays) == ["image", "mask", "points"]
    assert arrays["image"].shape == (16, 24, 32, 1) and arrays["image"].dtype == np.float32
    assert arrays["points"].shape == (8, 3) and arrays["points"].dtype == np.float32
    np.testing.assert_array_equal(arrays["mask"], [1, 1, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(arrays["points"][2], [0, 0, 0])  # missing: a finite placeholder
    expected = heatmap.physical_to_index(transform.input_to_output(landmarks))
    np.testing.assert_allclose(arrays["points"][[0, 1, 3, 4, 5, 6, 7]], expected[[0, 1, 3, 4, 5, 6, 7]],
                               rtol=1e-6, atol=1e-4)
    assert arrays["image"].min() >= -1.0 and arrays["image"].max() <= 1.0
    assert transform.deformation is None


def test_read_geometry_matches_read_image(tmp_path):
    image, _ = synthetic_volume()
    flat = sitk.GetImageFromArray(np.zeros((1, 6, 7), np.uint8))  # 2D stored with a third axis of size 1
    flat.SetSpacing((0.5, 0.25, 3.0))
    for name, written in (("volume.nrrd", image), ("flat.mha", flat)):
        sitk.WriteImage(written, str(tmp_path / name))
        for ignore in (False, True):
            expected = Geometry.from_image(read_image(tmp_path / name, ignore_spacing=ignore))
            assert read_geometry(tmp_path / name, ignore_spacing=ignore) == expected
    (tmp_path / "broken.mha").write_text("not an image")
    with pytest.raises(ValueError, match="broken.mha"):
        read_geometry(tmp_path / "broken.mha")
    with pytest.raises(FileNotFoundError, match="missing.mha"):
        read_geometry(tmp_path / "missing.mha")
