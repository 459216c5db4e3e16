"""Split-conformal landmark radii: known answers and the coverage they promise on fresh data."""

import numpy as np
import pytest

from utils.landmarks.conformal import conformal_radii, empirical_coverage


def test_radius_is_the_ceil_n_plus_1_times_coverage_th_smallest_error():
    errors = np.arange(1.0, 10.0)[:, None]  # 9 errors 1..9 mm of one landmark
    assert conformal_radii(errors, 0.9)[0] == 9.0  # rank ceil(10 * 0.9) = 9
    assert conformal_radii(errors, 0.5)[0] == 5.0  # rank ceil(10 * 0.5) = 5
    assert conformal_radii(errors[::-1], 0.5)[0] == 5.0  # order does not matter


def test_missing_errors_are_skipped_and_too_few_give_an_infinite_radius():
    errors = np.array([[1.0, np.nan], [2.0, 1.0], [3.0, np.nan], [np.nan, 2.0]])
    radii = conformal_radii(errors, 0.5)
    assert radii[0] == 2.0  # 3 errors: rank ceil(4 * 0.5) = 2
    assert radii[1] == 2.0  # 2 errors: rank ceil(3 * 0.5) = 2
    assert np.isinf(conformal_radii(errors, 0.9)).all()  # ranks 4 and 3 exceed the counts


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_fresh_held_out_errors_are_covered_at_the_nominal_rate(coverage):
    """Simulated predictions: Gaussian 2D offsets of a different size per landmark. Radii calibrated on 2,000
    images cover the offsets of 20,000 fresh images at the nominal rate, within 3 percentage points."""
    rng = np.random.default_rng(0)
    scales = np.array([0.5, 1.0, 2.0, 5.0])  # mm per axis

    def errors(count):
        return np.linalg.norm(rng.normal(size=(count, len(scales), 2)) * scales[:, None], axis=-1)

    radii = conformal_radii(errors(2000), coverage)  # coverage given these: std under 0.01
    covered = empirical_coverage(errors(20000), radii)
    assert np.all(np.abs(covered - coverage) < 0.03), (covered, coverage)
    assert np.all(np.diff(radii) > 0)  # larger scatter, larger radius


def test_invalid_coverage_and_shape_are_rejected():
    with pytest.raises(ValueError, match="coverage"):
        conformal_radii(np.ones((3, 2)), 1.0)
    with pytest.raises(ValueError, match="images, landmarks"):
        conformal_radii(np.ones(3), 0.9)
