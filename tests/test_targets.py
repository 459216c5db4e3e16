"""Tests of utils.landmarks.targets: Gaussian targets drawn in the graph, against direct NumPy evaluation."""

import keras
import numpy as np
import pytest

from dataset import Dataset
from utils.landmarks.targets import GaussianTargets, gaussian_targets, rotation_matrices


def numpy_gaussians(points, mask, shape, covariances, amplitude=1.0):
    """Direct evaluation at every voxel: amplitude * exp(-d^T C^-1 d / 2) * mask, (B, [z,] y, x, N)."""
    grids = np.meshgrid(*[np.arange(size, dtype=np.float64) for size in shape], indexing="ij")
    voxels = np.stack(grids[::-1], axis=-1)  # ([z,] y, x, dim), coordinates (x, y[, z])
    out = np.zeros((points.shape[0], *shape, points.shape[1]))
    amplitude = np.broadcast_to(amplitude, (points.shape[1],))
    for b in range(points.shape[0]):
        for n in range(points.shape[1]):
            d = voxels - points[b, n]
            quadratic = np.einsum("...i,ij,...j->...", d, np.linalg.inv(covariances[n]), d)
            out[b, ..., n] = amplitude[n] * np.exp(-0.5 * quadratic) * mask[b, n]
    return out


def render(*args, **kwargs):
    return keras.ops.convert_to_numpy(gaussian_targets(*args, **kwargs))


@pytest.mark.parametrize("shape", [(20, 24), (10, 12, 14)])
def test_isotropic_targets_equal_direct_evaluation_also_at_and_beyond_the_border(shape):
    rng = np.random.default_rng(3)
    dim = len(shape)
    sizes = np.array(shape[::-1], dtype=np.float64)
    inside = rng.uniform(0, sizes - 1, size=(2, 4, dim))
    border = np.stack([np.zeros(dim) - 0.4, sizes - 0.6, np.array([-3.0] + [2.0] * (dim - 1)),
                       sizes + 2.0])  # just inside, at the edge, and beyond the grid
    points = np.concatenate([inside, np.broadcast_to(border, (2, 4, dim))], axis=1).astype(np.float32)
    mask = np.ones(points.shape[:2], np.float32)
    mask[0, 1] = mask[1, 6] = 0.0
    sigmas = rng.uniform(0.8, 3.0, size=points.shape[1])
    expected = numpy_gaussians(points, mask, shape, [s**2 * np.eye(dim) for s in sigmas], 1.7)
    actual = render(points, mask, sigmas, shape, amplitude=1.7)
    assert actual.shape == (2, *shape, 8) and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert not actual[0, ..., 1].any() and not actual[1, ..., 6].any()


@pytest.mark.parametrize("dim", [2, 3])
def test_anisotropic_rotated_targets_equal_direct_evaluation(dim):
    rng = np.random.default_rng(5)
    shape = (18, 22) if dim == 2 else (9, 11, 13)
    points = rng.uniform(2, 8, size=(2, 3, dim)).astype(np.float32)
    mask = np.ones((2, 3), np.float32)
    sigmas = rng.uniform(0.8, 3.0, size=(3, dim))
    angles = rng.uniform(-1, 1, size=(3,) if dim == 2 else (3, 3))
    turns = keras.ops.convert_to_numpy(rotation_matrices(angles))
    covariances = [turn @ np.diag(s**2) @ turn.T for turn, s in zip(turns, sigmas, strict=True)]
    np.testing.assert_allclose(render(points, mask, sigmas, shape, rotation=angles),
                               numpy_gaussians(points, mask, shape, covariances), atol=1e-5)
    # rotation matrices are proper rotations
    np.testing.assert_allclose(turns @ np.swapaxes(turns, 1, 2), np.broadcast_to(np.eye(dim), turns.shape),
                               atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(turns), 1.0, atol=1e-6)


def test_shape_errors_name_what_is_wrong():
    points, mask = np.zeros((1, 3, 2), np.float32), np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="sigma must be a float, \\(3,\\) or \\(3, 2\\)"):
        gaussian_targets(points, mask, np.ones((3, 3)), (8, 8))
    with pytest.raises(ValueError, match="shape \\(8, 8, 8\\) must be 2D or 3D and match points"):
        gaussian_targets(points, mask, 1.0, (8, 8, 8))
    with pytest.raises(ValueError, match="rotation needs per-axis sigmas"):
        gaussian_targets(points, mask, 1.0, (8, 8), rotation=np.zeros(3))
    with pytest.raises(ValueError, match="sigma and peak must be positive"):
        GaussianTargets(3, (8, 8), sigma=0.0)


def test_learned_sigma_keeps_the_integral_and_fixed_sigma_the_peak():
    points = np.array([[[20.0, 22.0], [30.0, 25.0]]], np.float32)
    mask = np.ones((1, 2), np.float32)
    layer = GaussianTargets(2, (48, 50), sigma=3.0, learn_sigma=True, peak=2.0)
    before = keras.ops.convert_to_numpy(layer([points, mask]))
    assert np.allclose(before.max(axis=(1, 2)), 2.0, atol=1e-6)
    layer.sigma.assign(np.array([4.5, 2.0], np.float32))
    after = keras.ops.convert_to_numpy(layer([points, mask]))
    np.testing.assert_allclose(after.sum(axis=(1, 2)), before.sum(axis=(1, 2)), rtol=1e-4)
    np.testing.assert_allclose(after.max(axis=(1, 2))[0], 2.0 * (3.0 / np.array([4.5, 2.0])) ** 2, rtol=1e-5)
    fixed = GaussianTargets(2, (48, 50), sigma=3.0, peak=2.0)
    assert not fixed.trainable_weights and len(layer.trainable_weights) == 1


def test_targets_are_float32_under_mixed_precision():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = GaussianTargets(2, (8, 8), sigma=1.0)
        targets = layer([np.full((1, 2, 2), 3.3, np.float32), np.ones((1, 2), np.float32)])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert keras.backend.standardize_dtype(targets.dtype) == "float32"


def test_on_a_real_radiograph_equal_to_the_targets_the_loader_used_to_make(hand_data_dir):
    """The previous loader drew, per sample, peak-1 Gaussians truncated at 5 sigma around the mapped points
    and zero channels for points missing or outside; the model's renderer must give the same (1e-5)."""
    sigma = 3.0
    dataset = Dataset(hand_data_dir, spec="hand_xray", image_size=(128, 128), num_landmarks=37, fold=None,
                      batch_size=2, seed=4)
    batch = next(dataset.training_batches())
    targets = keras.ops.convert_to_numpy(GaussianTargets(37, (128, 128), sigma)([batch["points"],
                                                                                   batch["mask"]]))
    grid = np.stack(np.meshgrid(np.arange(128.0), np.arange(128.0), indexing="ij")[::-1], axis=-1)
    for b, image_id in enumerate(batch["id"]):
        assert batch["mask"][b].sum() >= 30  # the hand lies in the image
        for n in range(37):
            offset = grid - batch["points"][b, n]
            previous = np.exp(-0.5 * np.sum(offset**2, axis=-1) / sigma**2)
            previous[np.any(np.abs(offset) > 5 * sigma, axis=-1)] = 0.0
            previous *= batch["mask"][b, n]
            np.testing.assert_allclose(targets[b, ..., n], previous, atol=1e-5, err_msg=f"{image_id} {n}")
