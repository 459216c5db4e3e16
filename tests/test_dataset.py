"""Tests of dataset.py on tiny random datasets written in tmp_path (2D and 3D): shapes, mapping back,
determinism across worker counts, error messages and debug images."""

import numpy as np
import pytest
import SimpleITK as sitk

from dataset import Dataset, spatial_chain
from utils.data.debug import write_debug_batch
from utils.io.errors import DataError
from utils.io.image import read_image
from utils.io.landmarks import write_landmarks_csv
from utils.landmarks.decode import decode_heatmaps
from utils.landmarks.targets import GaussianTargets
from utils.transforms.affine import RandomScale

NUM_LANDMARKS = 6


def write_tiny_dataset(folder, dim, num_images=5, units="pixel"):
    """Random images (anisotropic spacing, shifted origin), landmarks inside them, full split and fold 1."""
    rng = np.random.default_rng(dim)
    size = (40, 32) if dim == 2 else (24, 20, 16)
    (folder / "images").mkdir(parents=True)
    table = {}
    for i in range(num_images):
        image_id = f"case{i}"
        image = sitk.GetImageFromArray(rng.integers(0, 255, size[::-1]).astype(np.uint8))
        image.SetSpacing((0.8, 1.1, 1.5)[:dim])
        image.SetOrigin((3.0, -2.0, 7.0)[:dim])
        sitk.WriteImage(image, str(folder / "images" / f"{image_id}.{'png' if dim == 2 else 'nii.gz'}"))
        indices = rng.uniform(3, np.asarray(size) - 4, size=(NUM_LANDMARKS, dim))
        table[image_id] = indices if units == "pixel" else np.asarray(
            [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in indices])
    table["unused"] = np.zeros((NUM_LANDMARKS, dim))  # rows for ids without an image are fine
    (folder / "setup" / "cv" / "set1").mkdir(parents=True)
    write_landmarks_csv(folder / "setup" / "all.csv", table)
    for split in (folder / "setup", folder / "setup" / "cv" / "set1"):
        (split / "train.txt").write_text("case0\ncase1\ncase2\n")
        (split / "test.txt").write_text("# held out\ncase3\ncase4\n")
    return table


def make(folder, dim, **options):
    size = (32, 32) if dim == 2 else (16, 16, 16)
    heatmap = (16, 16) if dim == 2 else (16, 16, 16)
    defaults = dict(image_size=size, heatmap_size=heatmap, num_landmarks=NUM_LANDMARKS,
                    spec="hand_xray" if dim == 2 else "custom3d", batch_size=2, fold=1)
    return Dataset(folder, **{**defaults, **options})


@pytest.mark.parametrize("dim", [2, 3])
def test_shapes_and_validation_samples_map_back(tmp_path, dim):
    table = write_tiny_dataset(tmp_path, dim, units="pixel" if dim == 2 else "physical")
    dataset = make(tmp_path, dim)
    batch = next(dataset.training_batches())
    spatial = (32, 32) if dim == 2 else (16, 16, 16)
    heatmap = (16, 16) if dim == 2 else (16, 16, 16)
    assert sorted(batch) == ["id", "image", "mask", "points"]
    assert batch["image"].shape == (2, *spatial, 1)
    assert batch["points"].shape == (2, NUM_LANDMARKS, dim)
    assert batch["mask"].shape == (2, NUM_LANDMARKS)
    assert all(batch[k].dtype == np.float32 for k in ("image", "points", "mask"))
    assert set(batch["id"]) <= {"case0", "case1", "case2"}
    assert np.all((batch["points"] >= -0.5) & (batch["points"] <= np.array(heatmap[::-1]) - 0.5)
                  | (batch["mask"][..., None] == 0))
    samples = dataset.validation_samples()
    assert [s.id for s in samples] == ["case3", "case4"]
    for sample in samples:
        assert sample.image.shape == (*spatial, 1)
        points = sample.transform.input_to_output(sample.landmarks)
        heatmaps = np.stack([np.exp(-np.sum((np.indices(heatmap[::-1]).T.reshape(-1, dim) - p) ** 2, axis=1)
                                    .reshape(heatmap) / 4.5)
                             for p in sample.heatmap_geometry.physical_to_index(points)], axis=-1)
        decoded = decode_heatmaps(heatmaps)[0]
        back = sample.transform.output_to_input(sample.heatmap_geometry.index_to_physical(decoded))
        np.testing.assert_allclose(back, sample.landmarks, atol=1e-3)
        np.testing.assert_allclose(dataset.to_csv_units(sample.id, sample.landmarks), table[sample.id],
                                   atol=1e-9)
    assert (samples[0].mm_scale == 1.0) == (dim == 3)
    assert dataset.mean_shape().shape == (NUM_LANDMARKS, dim)


def test_same_batches_with_0_and_2_workers(tmp_path):
    write_tiny_dataset(tmp_path, 2)
    reference = make(tmp_path, 2, seed=7).training_batches()
    expected = [next(reference) for _ in range(3)]
    with make(tmp_path, 2, seed=7, workers=2) as dataset:
        batches = dataset.training_batches()
        for want in expected:
            got = next(batches)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
        resumed = next(dataset.training_batches(start_batch=2))
        np.testing.assert_array_equal(resumed["image"], expected[2]["image"])


def test_patch_normalisation_maps_each_patch_percentiles_padding_included(tmp_path):
    """normalization="patch", clamp=False (the authors' hand setup): the 5th/95th percentile of the resampled
    patch, padding zeros included, go to -1/1, whatever the source's own normalisation; no clipping."""
    write_tiny_dataset(tmp_path, 2)
    dataset = make(tmp_path, 2, normalization="patch", clamp=False)
    for sample in dataset.validation_samples():
        raw = sample.transform.resample(read_image(tmp_path / "images" / f"{sample.id}.png", True, 2))
        assert np.mean(raw == 0.0) > 0.05  # the 40 x 32 image fitted to 32 x 32 leaves padding zeros
        lo, hi = np.percentile(raw, [5.0, 95.0])
        np.testing.assert_allclose(sample.image[..., 0], (raw - lo) / (hi - lo) * 2 - 1, atol=1e-3)
    image = next(dataset.training_batches())["image"]
    assert image.max() > 1.0 and image.min() < -1.0  # shift and scale, no clamp
    clamped = next(make(tmp_path, 2, normalization="patch").training_batches())["image"]
    assert clamped.max() <= 1.0 and clamped.min() >= -1.0
    with pytest.raises(ValueError, match="normalization must be one of"):
        make(tmp_path, 2, normalization="slice")


def test_chain_without_random_scaling_has_no_scale_step():
    with_scaling = spatial_chain(10.0, 0.2, (0.1, 0.05), 5, 20.0)
    without = spatial_chain(10.0, 0.2, None, 5, 20.0, "mesh")
    assert any(isinstance(step, RandomScale) for step in with_scaling.steps)
    assert not any(isinstance(step, RandomScale) for step in without.steps)
    assert len(without.steps) == len(with_scaling.steps) - 1 and without.deformation.grid == "mesh"


def test_errors_name_the_file_or_id(tmp_path):
    write_tiny_dataset(tmp_path, 2)
    with pytest.raises(ValueError, match=r"all\.csv.*case0.*expected 14 values"):
        make(tmp_path, 2, num_landmarks=7)  # landmark count differs from the CSV's
    with pytest.raises(ValueError, match=r"case0.png is 2D .* input size \(16, 16, 16\) is 3D"):
        make(tmp_path, 3, spec="custom3d", num_landmarks=4)
    with pytest.raises(ValueError, match=r"kind 'hand_xray' is 2D, but the image size \(16, 16, 16\) is 3D"):
        make(tmp_path, 3, spec="hand_xray", num_landmarks=4)
    (tmp_path / "images" / "case1.mha").write_text("not an image")
    with pytest.raises(ValueError, match=r"several image files for id 'case1'"):
        make(tmp_path, 2)
    (tmp_path / "images" / "case1.png").unlink()
    with pytest.raises(DataError, match=r"cannot read the header of image .*case1.mha"):
        make(tmp_path, 2)
    (tmp_path / "images" / "case1.mha").unlink()
    with pytest.raises(FileNotFoundError, match=r"no image file for id 'case1'"):
        make(tmp_path, 2)
    (tmp_path / "setup" / "cv" / "set1" / "train.txt").write_text("case9\n")
    with pytest.raises(ValueError, match=r"id 'case9' of .*train.txt has no row in .*all.csv"):
        make(tmp_path, 2)
    (tmp_path / "setup" / "cv" / "set1" / "train.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match=r"train.txt is empty"):
        make(tmp_path, 2)
    with open(tmp_path / "setup" / "all.csv", "a") as file:
        file.write("bad,1,2,3\n")
    with pytest.raises(ValueError, match=r"all.csv, line 7, id 'bad': expected 12 values"):
        make(tmp_path, 2, fold=None)
    with pytest.raises(ValueError, match=r"heatmap_size .* got \(10, 10\)"):
        make(tmp_path, 2, heatmap_size=(10, 10))
    with pytest.raises(ValueError, match=r"unknown data spec 'xray'; known: hand_xray, cephalometric"):
        make(tmp_path, 2, spec="xray")
    with pytest.raises(ValueError, match=r"unknown augmentation strengths \['shear'\]"):
        make(tmp_path, 2, augmentation={"shear": 0.1})


def test_debug_images_of_a_batch_are_written(tmp_path):
    write_tiny_dataset(tmp_path / "data", 2)
    dataset = make(tmp_path / "data", 2)
    batch = next(dataset.training_batches())
    targets = GaussianTargets(NUM_LANDMARKS, (16, 16), sigma=1.5)
    written = write_debug_batch(tmp_path / "debug", ["a", "b"], batch, dataset.heatmap_geometry,
                                lambda points, mask: targets([points, mask]))
    names = sorted(path.name for path in (tmp_path / "debug").iterdir())
    assert names == ["a_heatmaps.png", "a_image.mha", "a_image.png", "b_heatmaps.png", "b_image.mha",
                     "b_image.png"]
    assert all(path.is_file() for path in written)
    image = sitk.ReadImage(str(tmp_path / "debug" / "a_image.mha"))
    assert image.GetSize() == (32, 32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), batch["image"][0, ..., 0])
