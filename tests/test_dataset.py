"""Tests of dataset.py on tiny random datasets written in tmp_path (2D and 3D): shapes, mapping back,
determinism across worker counts, error messages and debug images."""

import numpy as np
import pytest
import SimpleITK as sitk

from dataset import Dataset
from utils.io.landmarks import write_landmarks_csv
from utils.landmarks.decode import decode_heatmaps

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
    defaults = dict(image_size=size, heatmap_size=heatmap, num_landmarks=NUM_LANDMARKS, sigma=1.5, dim=dim,
                    batch_size=2, fold=1)
    return Dataset(folder, **{**defaults, **options})


@pytest.mark.parametrize("dim", [2, 3])
def test_shapes_and_validation_samples_map_back(tmp_path, dim):
    table = write_tiny_dataset(tmp_path, dim, units="pixel" if dim == 2 else "physical")
    dataset = make(tmp_path, dim)
    batch = next(dataset.train_dataset())
    spatial = (32, 32) if dim == 2 else (16, 16, 16)
    heatmap = (16, 16) if dim == 2 else (16, 16, 16)
    assert batch["image"].shape == (2, *spatial, 1)
    assert batch["heatmaps"].shape == (2, *heatmap, NUM_LANDMARKS)
    assert batch["mask"].shape == (2, NUM_LANDMARKS)
    assert all(batch[k].dtype == np.float32 for k in batch)
    samples = dataset.validation_dataset()
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
    assert dataset.mean_shape_baseline().shape == (NUM_LANDMARKS, dim)


def test_same_batches_with_0_and_2_workers(tmp_path):
    write_tiny_dataset(tmp_path, 2)
    reference = make(tmp_path, 2, seed=7).train_dataset()
    expected = [next(reference) for _ in range(3)]
    with make(tmp_path, 2, seed=7, workers=2) as dataset:
        batches = dataset.train_dataset()
        for want in expected:
            got = next(batches)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
        resumed = next(dataset.train_dataset(start_batch=2))
        np.testing.assert_array_equal(resumed["image"], expected[2]["image"])


@pytest.mark.parametrize("dim", [2, 3])
def test_reused_buffers_give_the_same_batches_as_fresh_ones(tmp_path, dim):
    """Buffers reused across batches (copy=False: heatmaps cleared only in the previous samples' boxes, in
    the parent and in shared-memory slots that move between workers) hold exactly the fresh samples."""
    write_tiny_dataset(tmp_path, dim)
    size = (32, 32) if dim == 2 else (24, 24, 24)  # larger than a heatmap window (13 voxels at sigma 1)
    options = dict(seed=3, image_size=size, heatmap_size=size, sigma=1.0)
    fresh = make(tmp_path, dim, **options).train_dataset(copy=True)
    expected = [next(fresh) for _ in range(8)]
    assert all(0.0 < np.mean(b["heatmaps"] > 0) < 0.5 for b in expected)
    for workers in (0, 2):
        with make(tmp_path, dim, workers=workers, **options) as dataset:
            for want, got in zip(expected, dataset.train_dataset(copy=False), strict=False):
                assert sorted(got) == ["heatmaps", "image", "mask"]
                for key in want:
                    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key}, {workers} workers")


def test_errors_name_the_file_or_id(tmp_path):
    write_tiny_dataset(tmp_path, 2)
    with pytest.raises(ValueError, match=r"all\.csv.*case0.*expected 14 values"):
        make(tmp_path, 2, num_landmarks=7)  # landmark count differs from the CSV's
    with pytest.raises(ValueError, match=r"case0.png is 2D .* dim=3"):
        make(tmp_path, 3, image_size=(16, 16, 16), heatmap_size=(16, 16, 16), num_landmarks=4)
    (tmp_path / "images" / "case1.mha").write_text("not an image")
    with pytest.raises(ValueError, match=r"several image files for id 'case1'"):
        make(tmp_path, 2)
    (tmp_path / "images" / "case1.png").unlink()
    with pytest.raises(ValueError, match=r"cannot read image .*case1.mha"):
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


def test_debug_images_are_written(tmp_path):
    write_tiny_dataset(tmp_path / "data", 2)
    dataset = make(tmp_path / "data", 2)
    dataset.save_debug_images(tmp_path / "debug")
    next(dataset.train_dataset())
    dataset.validation_dataset()
    names = sorted(path.name for path in (tmp_path / "debug").iterdir())
    assert "case3_validation_image.mha" in names and "case3_validation_heatmaps.png" in names
    assert sum(name.endswith("_epoch0_image.png") for name in names) == 2
    image = sitk.ReadImage(str(tmp_path / "debug" / "case3_validation_image.mha"))
    assert image.GetSize() == (32, 32)
