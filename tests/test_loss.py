"""Tests for utils.training.loss: hand-computed values, the missing-landmark mask and its gradient."""

import keras
import numpy as np
import pytest

from utils.training.loss import heatmap_l2_loss


def _example():
    """Batch of 2, heatmaps 1 x 3 pixels, 2 landmarks; target zero, so the residual is the prediction.

    Sums of squares per (sample, landmark): (0, 0): 1 + 4 + 0 = 5, (0, 1): 9, (1, 0): 3, (1, 1): 4.
    """
    prediction = np.zeros((2, 1, 3, 2), dtype="float32")
    prediction[0, 0, :, 0] = [1, 2, 0]
    prediction[0, 0, :, 1] = [0, 0, 3]
    prediction[1, 0, :, 0] = [1, 1, 1]
    prediction[1, 0, :, 1] = [2, 0, 0]
    return np.zeros_like(prediction), prediction


def _gradient(function, x: np.ndarray) -> np.ndarray:
    """Gradient of the scalar ``function`` at ``x`` with the active Keras backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = function(variable)
        return np.asarray(tape.gradient(value, variable))
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(function)(x))
    if backend == "torch":
        import torch

        tensor = torch.tensor(x, requires_grad=True)
        function(tensor).backward()
        return tensor.grad.cpu().numpy()
    pytest.skip(f"no gradient helper for backend {backend}")


def test_known_value_without_mask():
    target, prediction = _example()
    # (5 + 9 + 3 + 4) / 2 / 2
    assert float(heatmap_l2_loss(target, prediction)) == pytest.approx(5.25)


def test_mask_excludes_missing_landmark_channel():
    target, prediction = _example()
    mask = np.array([[1, 0], [1, 1]], dtype="float32")
    # (5 + 3 + 4) / 2 / 2: the batch size stays 2
    assert float(heatmap_l2_loss(target, prediction, mask)) == pytest.approx(3.0)
    assert float(heatmap_l2_loss(target, prediction, np.ones((2, 2)))) == pytest.approx(5.25)


def test_residual_not_target_values_matter_3d():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 2, 4, 5, 6)).astype("float32")
    prediction = target + 0.5
    expected = 0.25 * target.size / 2 / 3
    assert float(heatmap_l2_loss(target, prediction)) == pytest.approx(expected, rel=1e-5)


def test_gradient_zero_for_masked_channels():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    prediction = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    mask = np.array([[1, 0, 1], [0, 1, 1]], dtype="float32")
    gradient = _gradient(lambda p: heatmap_l2_loss(target, p, mask), prediction)
    expected = mask[:, None, None, :] * (prediction - target) / 2
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)
    assert np.all(gradient[0, ..., 1] == 0) and np.all(gradient[1, ..., 0] == 0)


def test_shape_mismatch_is_rejected():
    target, prediction = _example()
    with pytest.raises(ValueError, match="target and prediction shapes differ"):
        heatmap_l2_loss(target[:, :, :2], prediction)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, N\)"):
        heatmap_l2_loss(target, prediction, np.ones((2, 3)))
