"""Tests of utils.io: images keep their geometry, landmark CSV and id lists round-trip, bad input is named."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from utils.io.atomic import _umask, atomic_path, write_json_atomic
from utils.io.id_list import read_id_list, write_id_list
from utils.io.image import read_image, write_image
from utils.io.landmarks import read_landmarks_csv, write_landmarks_csv


def _image(size, spacing, origin, direction) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    array = sitk.GetArrayViewFromImage(image)
    image = sitk.GetImageFromArray(np.arange(array.size, dtype=np.float32).reshape(array.shape))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
def test_3d_image_round_trip_keeps_geometry(tmp_path, suffix):
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    image = _image((5, 4, 3), (0.5, 0.7, 2.0), (10.0, -3.0, 4.5), direction)
    path = tmp_path / f"volume{suffix}"
    write_image(image, path)
    loaded = read_image(path, dim=3)
    assert loaded.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(loaded.GetSpacing(), (0.5, 0.7, 2.0), atol=1e-6)
    np.testing.assert_allclose(loaded.GetOrigin(), (10.0, -3.0, 4.5), atol=1e-5)
    np.testing.assert_allclose(loaded.GetDirection(), direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(image))


def test_png_reads_as_2d(tmp_path):
    array = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    path = tmp_path / "image.png"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    image = read_image(path, dim=2)
    assert image.GetSize() == (4, 3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_2d_stored_with_third_axis_becomes_2d(tmp_path):
    image = _image((6, 4, 1), (0.1, 0.2, 0.3), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    path = tmp_path / "radiograph.mha"
    write_image(image, path)
    loaded = read_image(path)
    assert loaded.GetDimension() == 2
    assert loaded.GetSize() == (6, 4)
    np.testing.assert_allclose(loaded.GetSpacing(), (0.1, 0.2))
    np.testing.assert_allclose(loaded.GetOrigin(), (1.0, 2.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(image)[0])
    ignored = read_image(path, ignore_spacing=True)
    assert ignored.GetSpacing() == (1.0, 1.0)
    np.testing.assert_allclose(ignored.GetOrigin(), (1.0, 2.0))


def test_real_radiograph_is_2d(hand_data_dir):
    image = read_image(hand_data_dir / "images" / "3167.mha", ignore_spacing=True, dim=2)
    assert image.GetSize() == (1600, 2350)
    assert image.GetSpacing() == (1.0, 1.0)


def test_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mha"):
        read_image(tmp_path / "missing.mha")
    broken = tmp_path / "broken.mha"
    broken.write_text("this is not an image")
    with pytest.raises(ValueError, match="broken.mha"):
        read_image(broken)
    path = tmp_path / "volume.mha"
    write_image(_image((3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), path)
    with pytest.raises(ValueError, match=r"volume.mha is 3D .*dim=2"):
        read_image(path, dim=2)


def test_landmark_csv_round_trip_with_missing(tmp_path):
    rng = np.random.default_rng(0)
    landmarks = {f"id{i}": rng.uniform(-1000, 3000, size=(4, 3)) for i in range(5)}
    landmarks["id2"][1] = np.nan
    path = tmp_path / "all.csv"
    write_landmarks_csv(path, landmarks)
    loaded = read_landmarks_csv(path, num_landmarks=4, dim=3)
    assert list(loaded) == list(landmarks)
    for key, points in landmarks.items():
        np.testing.assert_allclose(loaded[key], points, atol=1e-4, equal_nan=True)
    assert ",,," in path.read_text().splitlines()[2]


def test_landmark_csv_reads_empty_and_nan_fields(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text("a,1,2,,,5,6\nb,1,2,nan,nan,5,6\n\n")
    loaded = read_landmarks_csv(path, num_landmarks=3, dim=2)
    expected = np.array([[1, 2], [np.nan, np.nan], [5, 6]])
    np.testing.assert_array_equal(loaded["a"], expected)
    np.testing.assert_array_equal(loaded["b"], expected)


def test_landmark_csv_errors_name_file_line_and_id(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text("a,1,2,3,4\nbad,1,2,3\n")
    with pytest.raises(ValueError, match=r"all.csv, line 2, id 'bad': expected 4 values .* found 3"):
        read_landmarks_csv(path, num_landmarks=2, dim=2)
    path.write_text("a,1,2,3,4,5,6\n")
    with pytest.raises(ValueError, match=r"expected 4 values .* found 6 \(3 landmarks in 2D\)"):
        read_landmarks_csv(path, num_landmarks=2, dim=2)
    path.write_text("a,1,x,3,4\n")
    with pytest.raises(ValueError, match=r"line 1, id 'a'"):
        read_landmarks_csv(path, num_landmarks=2, dim=2)
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_landmarks_csv(tmp_path / "nothing.csv", num_landmarks=2, dim=2)


def test_real_annotation_file_reads(hand_data_dir):
    landmarks = read_landmarks_csv(hand_data_dir / "setup" / "all.csv", num_landmarks=37, dim=2)
    assert len(landmarks) == 910
    assert landmarks["3167"].shape == (37, 2)
    with pytest.raises(ValueError, match="found 74 .*37 landmarks in 2D"):
        read_landmarks_csv(hand_data_dir / "setup" / "all.csv", num_landmarks=36, dim=2)


def test_id_list_ignores_comments_and_blank_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("# training ids\n3167\n\n  3229  # a comment\n")
    assert read_id_list(path) == ["3167", "3229"]
    write_id_list(path, ["x", "y"])
    assert read_id_list(path) == ["x", "y"]


def test_id_list_errors(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match=r"test.txt is empty"):
        read_id_list(path)
    path.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"test.txt lists id 'a' twice"):
        read_id_list(path)
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        read_id_list(tmp_path / "absent.txt")


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "stats.json"
    write_json_atomic(path, {"pe_mean": 1.0})
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash while writing")
    assert path.read_text() == '{\n  "pe_mean": 1.0\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(ValueError):
        write_json_atomic(path, {"pe_mean": float("nan")})
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]
