"""The shipped setup files of the hand radiographs (hand_xray_dataset/setup, the authors' published 3-fold
split of the Digital Hand Atlas): read by the project's own readers, 895 ids, 37 landmarks, folds disjoint
and covering. The images are not shipped: the dataset check must say so and nothing else."""

from pathlib import Path

import numpy as np

from utils.data.validate import validate_dataset
from utils.io.id_list import read_id_list
from utils.io.landmarks import read_landmarks_csv

SETUP = Path(__file__).resolve().parents[1] / "hand_xray_dataset" / "setup"


def test_published_folds_parse_and_partition_895_annotated_ids():
    table = read_landmarks_csv(SETUP / "all.csv", 37, 2)
    assert len(table) == 910  # the annotation file has rows for more ids than the 895 of the folds
    folds = {k: (read_id_list(SETUP / "cv" / f"set{k}" / "train.txt"),
                 read_id_list(SETUP / "cv" / f"set{k}" / "test.txt")) for k in (1, 2, 3)}
    assert [(len(train), len(test)) for train, test in folds.values()] == [(597, 298), (597, 298), (596, 299)]
    tests = [set(test) for _, test in folds.values()]
    everything = set().union(*tests)
    assert len(everything) == 895 and sum(map(len, tests)) == 895  # each id tested exactly once
    for train, test in folds.values():
        assert set(train) == everything - set(test)  # train = the other folds' test ids
    assert everything <= set(table)
    points = np.stack([table[image_id] for image_id in sorted(everything)])
    assert points.shape == (895, 37, 2) and np.all(np.isfinite(points)) and np.all(points >= 0)


def test_check_without_images_reports_only_the_missing_image_folder():
    report = validate_dataset(SETUP.parent, num_landmarks=37, dim=2, folds="all", progress_seconds=None)
    assert [problem.message for problem in report.errors] == [
        f"image folder not found: {SETUP.parent / 'images'}"]
    assert not report.warnings
