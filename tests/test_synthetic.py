"""Tests of the phantom data sets: layout on disk, determinism, ground truth tied to the rendered image, and
resemblance of the hand layout to the real atlas annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from utils.io.id_list import read_id_list
from utils.io.image import read_image
from utils.io.landmarks import read_landmarks_csv
from utils.synthetic import (
    LANDMARK_NAMES,
    NUM_VERTEBRA_LANDMARKS,
    generate_hand_dataset,
    generate_volume_dataset,
    render_hand,
    render_volume,
)
from utils.synthetic.__main__ import main
from utils.synthetic.hand import FINGERS, MEAN_LAYOUT, sample_hand_layout
from utils.synthetic.layout import write_dataset

SMALL_HAND = 1.5  # pixels per mm: images of about 300 x 450 px
SMALL_VOLUME = (24, 24, 36)


def _check_layout(out_dir: Path, num_images: int, values_per_row: int) -> list[str]:
    """Asserts the standard layout: images, all.csv columns, folds partitioning the ids, train/test split."""
    ids = sorted(path.name.removesuffix(".mha") for path in (out_dir / "images").glob("*.mha"))
    assert len(ids) == num_images
    rows = (out_dir / "setup" / "all.csv").read_text().splitlines()
    assert sorted(row.split(",")[0] for row in rows) == ids
    assert all(len(row.split(",")) == 1 + values_per_row for row in rows)
    tests = []
    for k in (1, 2, 3):
        train = read_id_list(out_dir / "setup" / "cv" / f"set{k}" / "train.txt")
        test = read_id_list(out_dir / "setup" / "cv" / f"set{k}" / "test.txt")
        assert sorted(train + test) == ids and not set(train) & set(test)
        tests += test
    assert sorted(tests) == ids  # every id in exactly one test fold
    train, test = read_id_list(out_dir / "setup" / "train.txt"), read_id_list(out_dir / "setup" / "test.txt")
    assert sorted(train + test) == ids and test and train
    assert not list(out_dir.parent.glob(".*partial*"))
    return ids


def test_hand_dataset_layout(tmp_path):
    out_dir = tmp_path / "hand"
    ids = generate_hand_dataset(out_dir, num_images=4, seed=3, pixels_per_mm=SMALL_HAND)
    assert ids == ["hand_0000", "hand_0001", "hand_0002", "hand_0003"]
    _check_layout(out_dir, 4, 37 * 2)
    landmarks = read_landmarks_csv(out_dir / "setup" / "all.csv", 37, 2)
    for image_id in ids:
        image = read_image(out_dir / "images" / f"{image_id}.mha", dim=2)
        assert image.GetPixelID() == sitk.sitkUInt8
        size = np.array(image.GetSize())
        points = landmarks[image_id]
        assert np.all(points >= 0) and np.all(points < size)  # pixel indices inside the image


def test_hand_image_has_atlas_size_and_spacing():
    image, landmarks = render_hand(np.random.default_rng(0))
    width, height = image.GetSize()
    assert image.GetDimension() == 2 and image.GetPixelID() == sitk.sitkUInt8
    assert 1000 <= width <= 1900 and 1700 <= height <= 2700 and height > width
    assert image.GetSpacing()[0] == image.GetSpacing()[1] and 0.08 <= image.GetSpacing()[0] <= 0.17
    assert landmarks.shape == (37, 2) and len(LANDMARK_NAMES) == 37
    assert landmarks[28, 1] < landmarks[25, 1] < landmarks[15, 1] < landmarks[3, 1]  # fingers point up
    assert landmarks[20, 0] > landmarks[24, 0] > landmarks[36, 0]  # thumb on the right, as in the atlas


def test_volume_dataset_layout(tmp_path):
    out_dir = tmp_path / "volume"
    ids = generate_volume_dataset(out_dir, num_images=3, seed=1, size=SMALL_VOLUME)
    _check_layout(out_dir, 3, NUM_VERTEBRA_LANDMARKS * 3)
    landmarks = read_landmarks_csv(out_dir / "setup" / "all.csv", NUM_VERTEBRA_LANDMARKS, 3)
    for image_id in ids:
        image = read_image(out_dir / "images" / f"{image_id}.mha", dim=3)
        assert image.GetSize() == SMALL_VOLUME and image.GetPixelID() == sitk.sitkInt16
        assert all(4.0 < s < 8.5 for s in image.GetSpacing())  # ~ 112 x 112 x 176 mm field of view
        index = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in landmarks[image_id]])
        assert np.all(index > 0) and np.all(index < np.array(SMALL_VOLUME) - 1)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_hand_dataset(tmp_path / name, num_images=3, seed=seed, pixels_per_mm=SMALL_HAND)
        runs[name] = {
            path.relative_to(tmp_path / name): path.read_bytes()
            for path in sorted((tmp_path / name).rglob("*"))
            if path.is_file()
        }
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys()
    assert runs["a"][Path("setup/all.csv")] != runs["c"][Path("setup/all.csv")]
    first, second = (render_volume(np.random.default_rng(5), SMALL_VOLUME) for _ in range(2))
    assert np.array_equal(sitk.GetArrayFromImage(first[0]), sitk.GetArrayFromImage(second[0]))
    assert np.array_equal(first[1], second[1])


def _sample(image: np.ndarray, point: np.ndarray) -> float:
    """Mean of the 3 x 3 pixels around the (x, y) point (damps the noise)."""
    x, y = np.round(point).astype(int)
    return float(image[y - 1 : y + 2, x - 1 : x + 2].mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_hand_landmarks_lie_on_the_rendered_bones(seed):
    image, landmarks = render_hand(np.random.default_rng(seed))
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    mm = 1.0 / image.GetSpacing()[0] * 0.9  # about one mm of the hand in pixels (lower bound)
    for chain in FINGERS.values():
        for previous, joint, following in zip(chain[:-2], chain[1:-1], chain[2:], strict=True):
            before = landmarks[joint] - 3.0 * mm * _unit(landmarks[joint] - landmarks[previous])
            after = landmarks[joint] + 3.0 * mm * _unit(landmarks[following] - landmarks[joint])
            gap = _sample(array, landmarks[joint])
            # a joint landmark is the dark gap between two bright bone ends
            assert _sample(array, before) > gap + 5 and _sample(array, after) > gap + 5, (seed, joint)
        tip, axis = landmarks[chain[-1]], _unit(landmarks[chain[-1]] - landmarks[chain[-2]])
        # a tip is the distal end of bone: bone just inside, only soft tissue just beyond
        assert _sample(array, tip - 1.5 * mm * axis) > _sample(array, tip + 2.5 * mm * axis) + 10, (
            seed,
            chain,
        )
    background = np.median(array[:20, :20])
    soft_tissue = [_sample(array, landmarks[tip] + 2.5 * mm * _unit(landmarks[tip] - landmarks[tip - 1]))
                   for tip in (24, 28, 32, 36)]  # fmt: skip
    assert min(soft_tissue) > background + 10
    tips = [_sample(array, landmarks[tip]) for tip in (20, 24, 28, 32, 36)]
    assert np.mean(tips) > max(soft_tissue)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_volume_landmarks_lie_in_bright_vertebral_bodies():
    image, landmarks = render_volume(np.random.default_rng(2))
    array = sitk.GetArrayFromImage(image)
    assert landmarks.shape == (NUM_VERTEBRA_LANDMARKS, 3)
    values = []
    for point in landmarks:
        x, y, z = np.round(image.TransformPhysicalPointToContinuousIndex(point)).astype(int)
        values.append(array[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2].mean())
    muscle = np.median(array[array.shape[0] // 2, :, :][array[array.shape[0] // 2] > -300])
    assert min(values) > muscle + 100  # bone, well above soft tissue
    spacing = np.linalg.norm(np.diff(landmarks, axis=0), axis=1)
    assert np.all((spacing > 8.0) & (spacing < 16.0))  # consecutive vertebrae, ordered from the top


def _align(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Similarity (Procrustes) alignment of points (N, 2) onto reference (N, 2)."""
    a, b = points - points.mean(axis=0), reference - reference.mean(axis=0)
    u, s, vt = np.linalg.svd(a.T @ b)
    return a @ (u @ vt) * (s.sum() / np.square(a).sum()) + reference.mean(axis=0)


def test_hand_layout_resembles_the_atlas(hand_data_dir):
    real = np.stack(list(read_landmarks_csv(hand_data_dir / "setup" / "all.csv", 37, 2).values()))
    real = real[~np.isnan(real).any(axis=(1, 2))]
    real_mean = np.mean([_align(points, MEAN_LAYOUT) for points in real], axis=0)
    rng = np.random.default_rng(0)
    phantoms = np.stack([_align(sample_hand_layout(rng), real_mean) for _ in range(100)])
    hand_size = np.sqrt(np.square(real_mean - real_mean.mean(axis=0)).sum(axis=1).mean())
    distance = np.linalg.norm(phantoms.mean(axis=0) - real_mean, axis=1)
    assert distance.mean() < 0.02 * hand_size and distance.max() < 0.05 * hand_size
    # the phantoms vary about as much as real hands do, landmark by landmark
    real_spread = np.sqrt(
        np.square(np.stack([_align(p, real_mean) for p in real]) - real_mean).sum(-1).mean(0)
    )
    phantom_spread = np.sqrt(np.square(phantoms - phantoms.mean(axis=0)).sum(-1).mean(0))
    assert np.all((phantom_spread > 0.3 * real_spread) & (phantom_spread < 2.5 * real_spread))


def test_interrupted_run_leaves_no_dataset(tmp_path):
    def failing(rng):
        if failing.calls == 1:
            raise RuntimeError("interrupted")
        failing.calls += 1
        return render_volume(rng, SMALL_VOLUME)

    failing.calls = 0
    with pytest.raises(RuntimeError, match="interrupted"):
        write_dataset(tmp_path / "out", failing, "volume", 3, 0)
    assert not (tmp_path / "out").exists()
    generate_volume_dataset(tmp_path / "out", num_images=3, size=SMALL_VOLUME)  # the leftover is replaced
    with pytest.raises(FileExistsError, match="out"):
        generate_volume_dataset(tmp_path / "out", num_images=3, size=SMALL_VOLUME)
    with pytest.raises(ValueError, match="num_images must be at least 3.*got 2"):
        generate_volume_dataset(tmp_path / "other", num_images=2, size=SMALL_VOLUME)


def test_command_line(tmp_path, capsys):
    main(
        ["volume", str(tmp_path / "v"), "--num-images", "3", "--size", *map(str, SMALL_VOLUME), "--seed", "4"]
    )
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("wrote 3 volume images")
    assert str(tmp_path / "v") in captured.out and "[3/3] volume_0002.mha" in captured.err
    assert len(list((tmp_path / "v" / "images").glob("*.mha"))) == 3


def test_volume_field_of_view_sets_the_spacing():
    """A larger field of view at the same size gives proportionally larger voxels around the same body."""
    image, landmarks = render_volume(np.random.default_rng(6), (32, 32, 32), field_of_view=(256.0,) * 3)
    spacing = np.array(image.GetSpacing())
    assert np.all((spacing >= 8.0 * 0.95 - 1e-3) & (spacing <= 8.0 * 1.05 + 1e-3))
    index = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in landmarks])
    assert np.all(index > 0) and np.all(index < 31)
