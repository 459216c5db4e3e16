"""Tests of utils.io.splits: folds partition the ids, splits are seeded, only annotated images count."""

from __future__ import annotations

import pytest

from utils.io.id_list import read_id_list
from utils.io.splits import cv_splits, main, train_test_split


def test_cv_splits_partition_ids():
    ids = [f"id{i}" for i in range(11)]
    splits = cv_splits(ids, folds=3, seed=1)
    tests = [test for _, test in splits]
    assert sorted(sum(tests, [])) == sorted(ids)
    assert sorted(len(t) for t in tests) == [3, 4, 4]
    for train, test in splits:
        assert set(train).isdisjoint(test) and set(train) | set(test) == set(ids)
        assert train == [i for i in ids if i in train]
    assert cv_splits(ids, 3, seed=1) == splits
    assert cv_splits(ids, 3, seed=2) != splits


def test_train_test_split_and_errors():
    ids = [str(i) for i in range(10)]
    train, test = train_test_split(ids, 0.3, seed=0)
    assert len(test) == 3 and sorted(train + test, key=int) == ids
    with pytest.raises(ValueError, match="folds=3 for 2 ids"):
        cv_splits(["a", "b"], 3, 0)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(ids, 1.5, 0)


def test_command_writes_layout_for_annotated_images_only(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for name in ["a.mha", "b.nii.gz", "c.png", "d.mha"]:
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "setup").mkdir()
    (tmp_path / "setup" / "all.csv").write_text("a,1,2\nb,1,2\nc,1,2\nd,1,2\nnoimage,1,2\n")
    main([str(tmp_path), "--folds", "2", "--test-fraction", "0.5"])
    tests = [read_id_list(tmp_path / "setup" / "cv" / f"set{k}" / "test.txt") for k in (1, 2)]
    assert sorted(tests[0] + tests[1]) == ["a", "b", "c", "d"]
    assert len(read_id_list(tmp_path / "setup" / "test.txt")) == 2
    assert "4 ids" in capsys.readouterr().out


def test_existing_split_files_are_kept_unless_overwrite(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for name in ["a.mha", "b.mha", "c.mha", "d.mha"]:
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "setup" / "cv" / "set2").mkdir(parents=True)
    (tmp_path / "setup" / "all.csv").write_text("a,1,2\nb,1,2\nc,1,2\nd,1,2\n")
    published = tmp_path / "setup" / "cv" / "set2" / "test.txt"
    published.write_text("d\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--folds", "2"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert f"split files exist, nothing was written: {published}" in error and "--overwrite" in error
    assert published.read_text() == "d\n" and not (tmp_path / "setup" / "train.txt").exists()
    main([str(tmp_path), "--folds", "2", "--overwrite"])
    assert published.read_text() != "d\n" and (tmp_path / "setup" / "train.txt").exists()
