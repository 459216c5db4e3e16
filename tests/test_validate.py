"""Dataset validation: every problem of a broken folder reported at once, each naming its culprit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from utils.data.validate import main, validate_dataset

SIZE = (8, 6)  # x, y pixels of the small test images


def write_flat_image(path: Path, size=SIZE, value=1, channels: int = 1) -> None:
    """A 2D image stored as 3D with a last axis of size 1, as the hand radiographs are."""
    shape = (1, size[1], size[0]) + ((channels,) if channels > 1 else ())
    image = sitk.GetImageFromArray(np.full(shape, value, np.uint8), isVector=channels > 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), False)


def make_dataset(root: Path, rows: str, train: str, test: str, images=("a", "b", "c")) -> Path:
    """A dataset folder with setup/{all.csv,train.txt,test.txt}, setup/cv/set1 alike, and images."""
    setup = root / "setup"
    (setup / "cv" / "set1").mkdir(parents=True)
    (setup / "all.csv").write_text(rows)
    for folder in (setup, setup / "cv" / "set1"):
        (folder / "train.txt").write_text(train)
        (folder / "test.txt").write_text(test)
    (root / "images").mkdir()
    for image_id in images:
        write_flat_image(root / "images" / f"{image_id}.mha")
    return root


GOOD_ROWS = "a,1,2,3,4\nb,0,0,7,5\nc,2,2,,\n"


def messages(problems) -> str:
    return "\n".join(problem.message for problem in problems)


def test_clean_dataset_has_no_errors(tmp_path):
    folder = make_dataset(tmp_path, GOOD_ROWS, "a\nb\n", "c\n")
    report = validate_dataset(folder, num_landmarks=2, dim=2)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.format().splitlines()[-1] == f"{folder}: 0 errors, 0 warnings"
    assert "landmark 1 is missing (empty or NaN) in 1 of 3 rows" in messages(report.infos)
    checked = "checked 4 split files (folds none, 1), 3 valid annotation rows and 3 images"
    assert checked in messages(report.infos)


def test_every_problem_is_reported_at_once_with_its_culprit(tmp_path):
    rows = (
        "a,1,2,3,4\n"
        "b,1,2,3,40\n"  # landmark 1 outside the 8 x 6 image: warning
        "x,1,abc,3,4\n"  # not a number
        "w,1,2,3\n"  # wrong number of values
        "a,5,5,5,5\n"  # repeated id
        "u,1,1,1,1\nt,1,1,1,1\nv,1,1,1,1\nm,1,1,1,1\n"
    )
    train, test = "a\nb\nx\nw\nu\nt\n", "v\nm\nn\na\n"
    folder = make_dataset(tmp_path, rows, train, test, images=("a", "b", "x", "w", "n"))
    (folder / "images" / "u.mha").write_text("not an image")  # unreadable
    write_flat_image(folder / "images" / "t.mha", size=(64, 64))
    data = (folder / "images" / "t.mha").read_bytes()
    (folder / "images" / "t.mha").write_bytes(data[: len(data) - 100])  # truncated
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkUInt8), str(folder / "images" / "v.mha"))  # 3D

    report = validate_dataset(folder, num_landmarks=2, dim=2, folds="none", progress_seconds=None)

    errors = messages(report.errors)
    setup = folder / "setup"
    assert f"{setup / 'train.txt'}, line 3: id 'x'" not in errors  # bad row is reported once, as a row
    expected = [
        f"{setup / 'test.txt'}, line 2: id 'm' has no image in {folder / 'images'}",
        f"cannot read the header of image {folder / 'images' / 'u.mha'}",
        f"cannot decode the pixel data of image {folder / 'images' / 't.mha'} (truncated or corrupt file?)",
        f"image {folder / 'images' / 'v.mha'} is 3D (size 4 x 4 x 4), but dim=2",
        f"{setup / 'test.txt'}, line 3: id 'n' has no row in {setup / 'all.csv'}",
        f"{setup / 'all.csv'}, line 3, id 'x': not a finite number: y0 = 'abc'",
        f"{setup / 'all.csv'}, line 4, id 'w': expected 4 values (2 landmarks x 2 coordinates), found 3",
        f"{setup / 'all.csv'}, line 5, id 'a': id 'a' appears twice (first on line 1)",
        f"id 'a' is in both the training list {setup / 'train.txt'} (line 1) and the test list "
        f"{setup / 'test.txt'} (line 4) of fold none",
    ]
    for message in expected:
        assert message in errors
    assert len(report.errors) == len(expected)
    (warning,) = report.warnings
    assert warning.message == (
        f"id 'b': 1 landmark (1) of the annotations lie outside image {folder / 'images' / 'b.mha'} "
        "(size 8 x 6 pixels)"
    )
    assert warning.image_id == "b" and warning.path == folder / "images" / "b.mha"
    line = next(p for p in report.errors if "appears twice" in p.message)
    assert (line.path, line.line, line.image_id) == (setup / "all.csv", 5, "a")
    text = report.format()
    assert text.splitlines()[-1] == f"{folder}: 9 errors, 1 warning"
    assert text.index("ERROR") < text.index("WARNING") < text.index("INFO")


def test_split_file_problems_and_folds(tmp_path):
    folder = make_dataset(tmp_path, GOOD_ROWS, "a\nb\na\n\xff\n", "# none\n")
    (folder / "setup" / "cv" / "set1" / "train.txt").write_bytes(b"a\nb\n\xff\n")
    report = validate_dataset(folder, num_landmarks=2, folds=["1", 2])
    errors = messages(report.errors)
    set1, set2 = folder / "setup" / "cv" / "set1", folder / "setup" / "cv" / "set2"
    assert f"id list {set1 / 'train.txt'}, line 3 is not UTF-8 text" in errors
    assert f"id list {set1 / 'test.txt'} is empty" in errors
    assert f"split file not found: {set2 / 'train.txt'}" in errors
    assert f"split file not found: {set2 / 'test.txt'}" in errors
    assert str(folder / "setup" / "train.txt") not in errors  # fold none not asked for
    assert len(report.errors) == 4
    report = validate_dataset(folder, num_landmarks=2, folds="none")
    twice = f"id list {folder / 'setup' / 'train.txt'} lists id 'a' twice (lines 1 and 3)"
    assert twice in messages(report.errors)
    with pytest.raises(ValueError, match="got 'first'"):
        validate_dataset(folder, num_landmarks=2, folds="first")


def test_missing_setup_and_images(tmp_path):
    report = validate_dataset(tmp_path, num_landmarks=2)
    errors = messages(report.errors)
    assert f"no split files in {tmp_path / 'setup'}" in errors
    assert f"annotation file not found: {tmp_path / 'setup' / 'all.csv'}" in errors
    assert f"image folder not found: {tmp_path / 'images'}" in errors
    assert not validate_dataset(tmp_path / "absent", num_landmarks=2).ok


def test_unused_images_only_warn_and_multichannel_images_are_errors(tmp_path):
    folder = make_dataset(tmp_path, GOOD_ROWS, "a\nb\n", "c\n")
    (folder / "images" / "notes.txt").write_text("not an image")  # in no split: a warning
    (folder / "images" / ".DS_Store").write_bytes(b"\0\1")  # hidden: skipped
    write_flat_image(folder / "images" / "c.mha", channels=3)
    report = validate_dataset(folder, num_landmarks=2, folds="none")
    assert [p.path.name for p in report.warnings] == ["notes.txt"]
    (error,) = report.errors
    assert f"image {folder / 'images' / 'c.mha'} has 3 values per pixel" in error.message
    write_flat_image(folder / "images" / "c.png", size=(2, 2))
    report = validate_dataset(folder, num_landmarks=2, folds="none")
    assert "several image files for id 'c': c.mha, c.png" in messages(report.errors)


def test_physical_units_in_3d(tmp_path):
    folder = make_dataset(tmp_path, "a,5,5,5,50,5,5\nb,1,1,1,,,\n", "a\n", "b\n", images=())
    for image_id in ("a", "b"):
        volume = sitk.Image([4, 4, 4], sitk.sitkFloat32)
        volume.SetSpacing((2.0, 2.0, 2.0))  # 8 mm wide: (5, 5, 5) mm inside, x = 50 mm outside
        sitk.WriteImage(volume, str(folder / "images" / f"{image_id}.nii.gz"))
    report = validate_dataset(folder, num_landmarks=2, dim=3, folds="none")
    assert report.ok
    (warning,) = report.warnings
    assert warning.image_id == "a" and "1 landmark (1) of the annotations lie outside" in warning.message
    nan = sitk.GetImageFromArray(np.full((4, 4, 4), np.nan, np.float32))
    (folder / "images" / "b.nii.gz").unlink()
    sitk.WriteImage(nan, str(folder / "images" / "b.mha"))  # (the NIfTI writer turns NaN into 0)
    report = validate_dataset(folder, num_landmarks=2, dim=3, folds="none")
    assert "holds NaN or infinite pixel values" in messages(report.errors)


def test_number_of_landmarks_is_inferred_and_progress_is_shown(tmp_path, capsys):
    folder = make_dataset(tmp_path, GOOD_ROWS + "d,1,2\n", "a\nb\n", "c\n")
    report = validate_dataset(folder, num_landmarks=None, folds="none", progress_seconds=0)
    assert "2 landmarks per row assumed" in messages(report.infos)
    assert "found 2 (1 landmark in 2D)" in messages(report.errors)
    assert "validate: checked 3/3 images" in capsys.readouterr().err


def test_command_line_exit_codes(tmp_path, capsys):
    folder = make_dataset(tmp_path / "good", GOOD_ROWS, "a\nb\n", "c\n")
    assert main([str(folder), "--num-landmarks", "2", "--cv", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{folder}: 0 errors, 0 warnings"
    (folder / "images" / "a.mha").unlink()
    assert main([str(folder), "--cv", "none", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (  # once, though two folds list it
        f"ERROR: {folder / 'setup' / 'train.txt'}, line 1: id 'a' (and 1 other split file) has no image in "
        f"{folder / 'images'}"
    )
    assert out[-1] == f"{folder}: 1 error, 0 warnings"
    for usage in ([str(tmp_path / "absent")], [str(folder), "--dim", "4"], [str(folder), "--cv", "x"],
                  [str(folder), "--num-landmarks", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(usage)
        assert exit_.value.code == 2


def test_real_hand_data_validates(hand_data_dir):
    report = validate_dataset(hand_data_dir, num_landmarks=37, dim=2, folds="none")
    assert report.errors == [], report.format()
    assert "6 images" in messages(report.infos)
    assert report.format().splitlines()[-1].endswith(" 0 errors, 0 warnings")
