"""Gaussian heatmap targets rendered from landmark points inside the model (keras.ops, every backend).

The loader ships points, not heatmaps: a batch holds ``points`` (B, N, dim) in heatmap index coordinates
(x, y[, z]; the centre of voxel (i_x, i_y) is the point (i_x, i_y)) and ``mask`` (B, N), 1 for a landmark
that is present and inside the heatmap grid. The targets are drawn where they are used (training step,
validation loss, debug images), on the device the model runs on, always in float32.

A target channel is ``amplitude_n * exp(-d^T S_n^-1 d / 2) * mask_n`` with ``d`` the offset of a voxel from
the point and ``S_n`` the landmark's covariance in heatmap voxels^2: ``sigma_n^2 I`` (isotropic, computed
as separable 1D factors) or ``R_n diag(sigma_n)^2 R_n^T`` (anisotropic, with a rotation R_n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

__all__ = ["GaussianTargets", "gaussian_targets", "rotation_matrices"]


def rotation_matrices(angles):
    """Rotation matrices from angles in radians: (N,) -> (N, 2, 2) in 2D; (N, 3) -> (N, 3, 3) in 3D.

    In 3D the angles rotate about x, then y, then z (R = Rz @ Ry @ Rx), axes in (x, y, z) order.
    """
    angles = ops.convert_to_tensor(angles, "float32")
    cos, sin = ops.cos(angles), ops.sin(angles)
    if len(angles.shape) == 1:
        return ops.stack([ops.stack([cos, -sin], -1), ops.stack([sin, cos], -1)], -2)
    one, zero = ops.ones_like(cos[:, 0]), ops.zeros_like(cos[:, 0])

    def rows(*values):
        return ops.stack([ops.stack(values[k:k + 3], -1) for k in (0, 3, 6)], -2)

    (cx, cy, cz), (sx, sy, sz) = ([c[:, i] for i in range(3)] for c in (cos, sin))
    rx = rows(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    ry = rows(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rz = rows(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    return ops.matmul(rz, ops.matmul(ry, rx))


def gaussian_targets(points, mask, sigma, shape: Sequence[int], amplitude=1.0, rotation=None):
    """Renders one Gaussian per landmark and sample on a voxel grid, in float32.

    Args:
        points: (B, N, dim) landmark positions in heatmap index coordinates, order (x, y[, z]); must be finite
            (the loader gives masked landmarks a finite placeholder).
        mask: (B, N), 1 for a landmark to draw, 0 for an all-zero channel (missing or outside the grid).
        sigma: Standard deviation in heatmap voxels: a float, (N,) per landmark (isotropic), or (N, dim)
            per landmark and principal axis (anisotropic, with `rotation`).
        shape: Grid shape in NumPy order ([z,] y, x).
        amplitude: Peak value: a float or (N,) per landmark.
        rotation: Only with (N, dim) sigmas: rotation angles in radians of the principal axes, (N,) in 2D
            or (N, 3) in 3D (see `rotation_matrices`); None means no rotation (axis-aligned).

    Returns:
        (B, [z,] y, x, N) float32 targets.

    Raises:
        ValueError: If `shape` is not 2 or 3 sizes or disagrees with the points' dimension, or `sigma` has
            another shape than described.
    """
    shape = tuple(int(size) for size in shape)
    dim = len(shape)
    points = ops.cast(points, "float32")
    if dim not in (2, 3) or points.shape[-1] != dim:
        raise ValueError(f"gaussian_targets: shape {shape} must be 2D or 3D and match points of shape "
                         f"{tuple(points.shape)} (B, N, dim)")
    mask = ops.cast(mask, "float32")
    sigma = ops.cast(sigma, "float32")
    num = points.shape[1]
    anisotropic = len(sigma.shape) == 2
    if len(sigma.shape) > 2 or (anisotropic and tuple(sigma.shape) != (num, dim)):
        raise ValueError(f"gaussian_targets: sigma must be a float, ({num},) or ({num}, {dim}), "
                         f"got shape {tuple(sigma.shape)}")
    if rotation is not None and not anisotropic:
        raise ValueError("gaussian_targets: rotation needs per-axis sigmas of shape (N, dim)")
    scale = ops.cast(amplitude, "float32") * mask  # (B, N)
    # Per axis (x, y[, z]): the offsets of the grid's voxel centres from the points, (B, N, size).
    offsets = [ops.arange(size, dtype="float32")[None, None, :] - points[:, :, axis, None]
               for axis, size in enumerate(reversed(shape))]
    if not anisotropic:
        inverse_variance = ops.broadcast_to(1.0 / ops.square(sigma), (num,))[None, :, None]
        targets = None  # the outer product of the per-axis factors, broadcast channels-last (TF's einsum
        for axis, offset in enumerate(offsets):  # of the same product was 3x slower on a CPU)
            factor = ops.transpose(ops.exp(-0.5 * ops.square(offset) * inverse_variance), (0, 2, 1))
            if axis == 0:
                factor = factor * scale[:, None, :]  # (B, size, N): cheaper here than on the whole grid
            grid_axis = dim - 1 - axis  # x is the last grid axis
            factor = ops.reshape(factor, (-1,) + tuple(shape[a] if a == grid_axis else 1 for a in range(dim))
                                 + (num,))
            targets = factor if targets is None else targets * factor
        return targets
    # Anisotropic: exponent -0.5 * sum_ij P_ij d_i d_j with P = R diag(1 / sigma^2) R^T, evaluated densely
    # in (B, N, [z,] y, x) and moved to channels-last at the end.
    axes_inverse = ops.eye(dim)[None] / ops.square(sigma)[:, None, :]  # (N, dim, dim) diag(1 / sigma^2)
    if rotation is not None:
        turn = rotation_matrices(rotation)
        axes_inverse = ops.matmul(ops.matmul(turn, axes_inverse), ops.transpose(turn, (0, 2, 1)))
    grids = []  # offsets broadcast to (B, N, [z,] y, x), axis order (x, y[, z])
    for axis, offset in enumerate(offsets):
        grid_axis = dim - 1 - axis  # x is the last grid axis
        grids.append(ops.reshape(offset, (-1, num) + tuple(
            shape[grid_axis] if a == grid_axis else 1 for a in range(dim))))
    exponent = 0.0
    for i in range(dim):
        for j in range(i, dim):
            weight = axes_inverse[:, i, j] * (1.0 if i == j else 2.0)
            exponent = exponent + ops.reshape(weight, (1, num) + (1,) * dim) * grids[i] * grids[j]
    targets = ops.exp(-0.5 * exponent) * ops.reshape(scale, (-1, num) + (1,) * dim)
    return ops.transpose(targets, (0, *range(2, dim + 2), 1))


@keras.saving.register_keras_serializable(package="landmarks")
class GaussianTargets(keras.layers.Layer):
    """Renders the target heatmaps of a batch from its points, with fixed or learned sigmas (float32).

    With ``learn_sigma`` each landmark's sigma is a trainable weight, initialised at `sigma`. While sigma
    moves, the Gaussian keeps its integral (``amplitude = peak * (sigma_0 / sigma)^dim``, the authors'
    normalised Gaussian times a constant): a wider target is lower, so the network cannot shrink the loss
    by spreading sigma, and the peak is `peak` at the initial sigma. With fixed sigmas the amplitude is
    `peak`.

    Args:
        num_landmarks: N.
        shape: Heatmap grid shape in NumPy order ([z,] y, x).
        sigma: Initial (or fixed) sigma in heatmap voxels, > 0.
        learn_sigma: Train one sigma per landmark (or per landmark and axis with `anisotropic`).
        anisotropic: Per-axis sigmas (N, dim) and a rotation per landmark, learned with `learn_sigma`.
        peak: Target peak height at the initial sigma.

    Input shape:
        ``[points, mask]``: (B, N, dim) heatmap index coordinates (x, y[, z]) and (B, N).

    Output shape:
        (B, [z,] y, x, N).
    """

    def __init__(self, num_landmarks: int, shape: Sequence[int], sigma: float = 3.0,
                 learn_sigma: bool = False, anisotropic: bool = False, peak: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # targets stay float32 under mixed precision
        super().__init__(**kwargs)
        shape = tuple(int(size) for size in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"GaussianTargets: shape must be 2 or 3 positive sizes, got {shape}")
        if int(num_landmarks) < 1:
            raise ValueError(f"GaussianTargets: num_landmarks must be >= 1, got {num_landmarks}")
        if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(peak) and peak > 0):
            raise ValueError(f"GaussianTargets: sigma and peak must be positive, got {sigma} and {peak}")
        self.num_landmarks, self.shape, self.initial_sigma = int(num_landmarks), shape, float(sigma)
        self.learn_sigma, self.anisotropic, self.peak = bool(learn_sigma), bool(anisotropic), float(peak)
        dim = len(shape)
        sigma_shape = (self.num_landmarks, dim) if self.anisotropic else (self.num_landmarks,)
        self.sigma = self.add_weight(shape=sigma_shape, initializer=keras.initializers.Constant(sigma),
                                     trainable=self.learn_sigma, name="sigma")
        self.rotation = None
        if self.anisotropic:
            rotation_shape = (self.num_landmarks,) if dim == 2 else (self.num_landmarks, 3)
            self.rotation = self.add_weight(shape=rotation_shape, initializer="zeros",
                                            trainable=self.learn_sigma, name="rotation")

    def amplitude(self):
        """(N,) peak height per landmark: `peak`, times (sigma_0 / sigma)^dim when sigma is learned."""
        if not self.learn_sigma:
            return ops.full((self.num_landmarks,), self.peak)
        ratio = self.initial_sigma / ops.convert_to_tensor(self.sigma)
        ratio = ops.prod(ratio, axis=-1) if self.anisotropic else ratio ** len(self.shape)
        return self.peak * ratio

    def call(self, inputs):
        points, mask = inputs
        return gaussian_targets(points, mask, self.sigma, self.shape, self.amplitude(), self.rotation)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], *self.shape, self.num_landmarks)

    def get_config(self):
        return {**super().get_config(), "num_landmarks": self.num_landmarks, "shape": self.shape,
                "sigma": self.initial_sigma, "learn_sigma": self.learn_sigma, "anisotropic": self.anisotropic,
                "peak": self.peak}
