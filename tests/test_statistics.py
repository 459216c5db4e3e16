"""Tests of utils.landmarks.statistics against values computed by hand."""

import json
import math

import numpy as np
import pytest

from utils.landmarks.statistics import (
    format_fold_table,
    format_statistics,
    landmark_statistics,
    point_errors,
    reference_distance_scale,
    summarize_folds,
)

NAN = np.nan

# Two images, three landmarks, coordinates (x, y) in pixels. Landmark 2 is missing in image 1.
TARGET = np.array(
    [
        [[0.0, 0.0], [10.0, 0.0], [0.0, 20.0]],
        [[2.0, 2.0], [2.0, 7.0], [NAN, NAN]],
    ]
)
PREDICTED = np.array(
    [
        [[3.0, 4.0], [10.0, 2.0], [1.0, 20.0]],  # distances 5, 2, 1 px
        [[2.0, 3.0], [4.0, 7.0], [5.0, 5.0]],  # distances 1, 2 px, and no target for landmark 2
    ]
)
# Reference landmarks 0 and 1 are 10 mm apart: image 0 has them 10 px apart (1 mm/px), image 1 5 px (2 mm/px).
SCALE = np.array([1.0, 2.0])
# Point errors in mm: image 0: 5, 2, 1; image 1: 2, 4, missing.
ERRORS = np.array([[5.0, 2.0, 1.0], [2.0, 4.0, NAN]])


def test_reference_distance_scale_small_example():
    np.testing.assert_allclose(reference_distance_scale(TARGET, reference=(0, 1), distance_mm=10.0), SCALE)


def test_reference_distance_scale_hand_default_and_missing_reference():
    points = np.full((3, 6, 2), NAN)
    points[:, 1] = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    points[0, 5] = [30.0, 40.0]  # 50 px apart -> 50 mm / 50 px = 1 mm/px
    points[1, 5] = [0.0, 100.0]  # 100 px apart -> 0.5 mm/px
    # image 2: landmark 5 missing -> NaN scale the caller can detect
    scale = reference_distance_scale(points)
    np.testing.assert_allclose(scale[:2], [1.0, 0.5])
    assert np.isnan(scale[2])
    assert np.flatnonzero(np.isnan(scale)).tolist() == [2]


def test_point_errors_small_example():
    np.testing.assert_allclose(point_errors(PREDICTED, TARGET, SCALE), ERRORS)
    np.testing.assert_allclose(point_errors(PREDICTED, TARGET), [[5.0, 2.0, 1.0], [1.0, 2.0, NAN]])


def test_point_errors_missing_prediction_3d_and_nan_scale():
    target = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]])
    predicted = np.array([[[2.0, 3.0, 6.0], [NAN, NAN, NAN]], [[0.0, 0.0, 1.0], [1.0, 2.0, 2.0]]])
    np.testing.assert_allclose(point_errors(predicted, target), [[7.0, NAN], [1.0, 0.0]])
    scaled = point_errors(predicted, target, np.array([NAN, 3.0]))
    np.testing.assert_allclose(scaled, [[NAN, NAN], [3.0, 0.0]])


def test_landmark_statistics_small_example():
    stats = landmark_statistics(ERRORS)
    assert list(stats) == [
        "pe_mean",
        "pe_std",
        "pe_median",
        "ipe_mean",
        "ipe_std",
        "ipe_median",
        "outliers",
        "outlier_percent",
        "num_images",
        "num_landmarks",
        "per_landmark",
    ]
    # Valid PEs 5, 2, 1, 2, 4 (the missing one is skipped, not counted as 0).
    assert stats["pe_mean"] == pytest.approx(14.0 / 5.0)
    # Population std: squared deviations 4.84 + 0.64 + 3.24 + 0.64 + 1.44 = 10.8, / 5 = 2.16.
    assert stats["pe_std"] == pytest.approx(math.sqrt(2.16))
    assert stats["pe_median"] == pytest.approx(2.0)
    # IPEs: image 0 (5 + 2 + 1) / 3 = 8/3, image 1 (2 + 4) / 2 = 3.
    assert stats["ipe_mean"] == pytest.approx((8.0 / 3.0 + 3.0) / 2.0)
    assert stats["ipe_std"] == pytest.approx(1.0 / 6.0)
    assert stats["ipe_median"] == pytest.approx(17.0 / 6.0)
    # PEs exactly at 2 and 4 count as outliers (>=).
    assert stats["outliers"] == {"2": 4, "4": 2, "10": 0}
    assert stats["outlier_percent"] == pytest.approx({"2": 80.0, "4": 40.0, "10": 0.0})
    assert stats["num_images"] == 2
    assert stats["num_landmarks"] == 3
    some, none = {"2": 2, "4": 1, "10": 0}, {"2": 0, "4": 0, "10": 0}
    assert stats["per_landmark"] == [
        {"index": 0, "count": 2, "mean": 3.5, "std": 1.5, "median": 3.5, "outliers": some},
        {"index": 1, "count": 2, "mean": 3.0, "std": 1.0, "median": 3.0, "outliers": some},
        {"index": 2, "count": 1, "mean": 1.0, "std": 0.0, "median": 1.0, "outliers": none},
    ]
    # Plain Python numbers, strict JSON.
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats
    assert all(type(stats[key]) is float for key in ("pe_mean", "pe_std", "ipe_mean"))
    assert type(stats["outliers"]["2"]) is int


def test_landmark_statistics_thresholds_at_exact_values_and_custom_keys():
    errors = np.array([[0.5, 1.0, 2.5, 3.0]])
    stats = landmark_statistics(errors, thresholds=(1.0, 2.5, 3.0))
    assert stats["outliers"] == {"1": 3, "2.5": 2, "3": 1}
    assert stats["outlier_percent"] == pytest.approx({"1": 75.0, "2.5": 50.0, "3": 25.0})


def test_landmark_statistics_missing_landmarks_and_images_excluded():
    errors = np.array([[NAN, NAN], [3.0, NAN], [1.0, NAN]])
    stats = landmark_statistics(errors)
    assert stats["pe_mean"] == pytest.approx(2.0)
    assert stats["ipe_mean"] == pytest.approx(2.0)  # image 0 has no valid PE and no IPE
    assert stats["num_images"] == 3
    assert stats["per_landmark"][1] == {
        "index": 1,
        "count": 0,
        "mean": None,
        "std": None,
        "median": None,
        "outliers": {"2": 0, "4": 0, "10": 0},
    }
    empty = landmark_statistics(np.full((2, 2), NAN))
    assert empty["pe_mean"] is None and empty["ipe_median"] is None
    assert empty["outliers"] == {"2": 0, "4": 0, "10": 0}
    assert empty["outlier_percent"] == {"2": None, "4": None, "10": None}
    json.dumps(empty, allow_nan=False)


def test_format_statistics_lists_summary_and_per_landmark_rows():
    text = format_statistics(landmark_statistics(ERRORS))
    lines = text.splitlines()
    assert lines[0] == "images: 2, landmarks: 3, valid point errors: 5"
    assert "PE  mean 2.800 mm" in lines[1]
    assert "IPE mean 2.833 mm" in lines[2]
    assert "outliers >= 2 mm: 4 (80.00 %)" in text
    assert lines[-1].split() == ["2", "1", "1.000", "0.000", "1.000", "0", "0", "0"]
    empty_text = format_statistics(landmark_statistics(np.full((1, 1), NAN)), unit="px")
    assert "PE  mean - px" in empty_text
    assert empty_text.splitlines()[-1].split() == ["0", "0", "-", "-", "-", "0", "0", "0"]


def test_summarize_folds_and_fold_table():
    fold1 = landmark_statistics(np.array([[1.0, 1.0]]))  # pe 1, no outliers
    fold2 = landmark_statistics(np.array([[3.0, 5.0]]))  # pe 3 and 5: mean 4, std 1, 100 % >= 2, 50 % >= 4
    summary = summarize_folds([fold1, fold2])
    assert summary["num_folds"] == 2
    assert summary["pe_mean"] == pytest.approx({"mean": 2.5, "std": 1.5})
    assert summary["pe_std"] == pytest.approx({"mean": 0.5, "std": 0.5})
    assert summary["pe_median"] == pytest.approx({"mean": 2.5, "std": 1.5})
    assert summary["ipe_mean"] == pytest.approx({"mean": 2.5, "std": 1.5})
    assert summary["outlier_percent"]["2"] == pytest.approx({"mean": 50.0, "std": 50.0})
    assert summary["outlier_percent"]["4"] == pytest.approx({"mean": 25.0, "std": 25.0})
    assert summary["outlier_percent"]["10"] == pytest.approx({"mean": 0.0, "std": 0.0})
    json.dumps(summary, allow_nan=False)

    lines = format_fold_table([fold1, fold2], ["scn_cv1", "scn_cv2"]).splitlines()
    assert len(lines) == 4
    assert lines[1].split() == ["scn_cv1", "1.000", "0.000", "1.000", "1.000", "0.00", "0.00", "0.00"]
    assert lines[2].split()[:2] == ["scn_cv2", "4.000"]
    assert lines[3].startswith("mean ± std")
    assert "2.500 ± 1.500" in lines[3] and "50.00 ± 50.00" in lines[3]

    baseline = landmark_statistics(np.array([[10.0, 12.0]]))
    lines = format_fold_table([fold1, fold2], ["scn_cv1", "scn_cv2"], extra_rows={"baseline": baseline})
    lines = lines.splitlines()
    assert len(lines) == 5 and "2.500 ± 1.500" in lines[3]  # the extra row stays out of mean ± std
    expected = ["baseline", "11.000", "1.000", "11.000", "11.000", "100.00", "100.00", "100.00"]
    assert lines[4].split() == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: reference_distance_scale(np.zeros((2, 3))), r"points must have shape .*got shape \(2, 3\)"),
        (lambda: reference_distance_scale(TARGET), r"reference .* \[0, 3\), got \(1, 5\)"),
        (lambda: reference_distance_scale(TARGET, (1, 1)), r"reference .* got \(1, 1\)"),
        (lambda: reference_distance_scale(TARGET, (0, 1), 0.0), r"distance_mm .* got 0.0"),
        (lambda: reference_distance_scale(np.zeros((2, 2, 2)), (0, 1)), r"coincide in image\(s\) \[0, 1\]"),
        (lambda: point_errors(PREDICTED[:1], TARGET), r"same shape, got \(1, 3, 2\) and \(2, 3, 2\)"),
        (lambda: point_errors(PREDICTED, TARGET[..., :1]), r"target must have shape .*\(2, 3, 1\)"),
        (lambda: point_errors(PREDICTED, TARGET, np.ones(3)), r"scale must have shape \(2,\).*\(3,\)"),
        (lambda: point_errors(PREDICTED, TARGET, np.array([1.0, -2.0])), r"scale entries .* \[1.0, -2.0\]"),
        (lambda: landmark_statistics(np.zeros(4)), r"errors must have shape \(M, N\).*\(4,\)"),
        (lambda: landmark_statistics(np.array([[1.0, -1.0]])), r"errors must be non-negative.*\[-1.0, 1.0\]"),
        (lambda: landmark_statistics(ERRORS, thresholds=(2.0, 2.0)), r"thresholds .* \[2.0, 2.0\]"),
        (lambda: landmark_statistics(ERRORS, thresholds=()), r"thresholds .* got \[\]"),
        (lambda: summarize_folds([]), r"fold_stats .* empty"),
        (
            lambda: summarize_folds([landmark_statistics(ERRORS), landmark_statistics(ERRORS, (1.0,))]),
            r"fold 1 has outlier thresholds \['1'\]",
        ),
        (lambda: format_fold_table([landmark_statistics(ERRORS)], ["a", "b"]), r"got 2 names for 1 folds"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()
