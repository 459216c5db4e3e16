"""The model that is trained: a heatmap network plus the targets it is compared with, drawn in the graph.

``HeatmapTrainer`` takes a batch ``{"image", "points", "mask"}`` (see `utils.landmarks.targets`), runs the
network on the image, renders the Gaussian targets from the points (with fixed or learned sigmas) and
computes the loss of Payer et al.: sum of squared differences / 2 / batch size over the present landmarks,
plus the kernels' L2 weight decay, plus, with learned sigmas, the sigma regulariser of the MIA 2019 setups
(``sigma_regularization * sum_{b, n present} sigma_n^2 / 2 / B``). Only `keras.ops`: every backend works.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from utils.landmarks.targets import GaussianTargets
from utils.training.loss import heatmap_l2_loss

__all__ = ["HeatmapTrainer", "make_optimizer"]


class HeatmapTrainer(keras.Model):
    """Network + in-graph targets + loss; ``model(batch)`` returns {"heatmaps", "targets"}.

    Args:
        network: A heatmap network, input (B, [z,] y, x, 1), output (B, [z,] y, x, N).
        targets: The target renderer on the network's output grid.
        sigma_regularization: Weight of the sigma regulariser, in loss units per heatmap voxel^2 (used only
            when the sigmas are learned).

    The loss is computed in float32 whatever the dtype policy of the network.
    """

    def __init__(self, network: keras.Model, targets: GaussianTargets, sigma_regularization: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        output_shape = tuple(network.output.shape[1:])
        if output_shape != (*targets.shape, targets.num_landmarks):
            raise ValueError(f"the targets' grid {(*targets.shape, targets.num_landmarks)} differs from the "
                             f"network's output {output_shape}")
        if sigma_regularization < 0:
            raise ValueError(f"sigma_regularization must be >= 0, got {sigma_regularization}")
        self.network = network
        self.targets = targets
        self.sigma_regularization = float(sigma_regularization)

    def call(self, inputs, training=False):
        heatmaps = self.network(inputs["image"], training=training)
        return {"heatmaps": heatmaps, "targets": self.targets([inputs["points"], inputs["mask"]])}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        mask = ops.cast(x["mask"], "float32")
        prediction = ops.cast(y_pred["heatmaps"], "float32")
        loss = heatmap_l2_loss(y_pred["targets"], prediction, mask)
        if self.targets.learn_sigma and self.sigma_regularization:
            squares = ops.square(ops.convert_to_tensor(self.targets.sigma))
            squares = ops.sum(squares, axis=-1) if self.targets.anisotropic else squares  # (N,)
            batch = ops.cast(ops.shape(mask)[0], "float32")
            loss = loss + self.sigma_regularization * ops.sum(mask * squares[None, :]) / (2.0 * batch)
        for extra in self.losses:  # weight decay of the network's kernels
            loss = loss + ops.cast(extra, "float32")
        return _share_of_replicas(loss)

    def sigmas(self):
        """The current sigmas as a NumPy array, (N,) or (N, dim), heatmap voxels."""
        return ops.convert_to_numpy(self.targets.sigma)


def _share_of_replicas(loss):
    """The loss divided by the number of `tf.distribute` replicas (TensorFlow backend; 1 elsewhere).

    Under a strategy each replica computes the loss of its part of the batch (a mean over that part) and the
    replicas' gradients are SUMMED, so 1/replicas makes the update that of the mean over the global batch.
    Keras does this for compiled losses; `compute_loss` is ours, so here. JAX's DataParallel computes the
    global loss itself and needs nothing.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss / float(replicas)


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.99, clip_norm: float | None = None,
                   lr_boundaries: Sequence[int] = (), lr_values: Sequence[float] = ()
                   ) -> keras.optimizers.Optimizer:
    """The optimizer of the experiment.

    Args:
        name: "sgd" (SGD with Nesterov momentum, as in the paper) or "adam".
        learning_rate: Step size (the paper's SGD uses 1e-7 for its sum-of-squares loss); with
            `lr_boundaries`, the step size of iterations 1 .. lr_boundaries[0].
        momentum: SGD momentum (paper: 0.99); ignored by Adam.
        clip_norm: Clip the gradients to this global norm before the update (Keras ``global_clipnorm``; the
            MIA 2019 setups: 10,000), in loss units per weight unit; None: no clipping.
        lr_boundaries: Iterations after which the learning rate changes, increasing, >= 1: iterations
            b_k + 1 .. b_{k+1} use lr_values[k] (a piecewise-constant schedule). It follows the optimizer's
            iteration counter, which checkpoints save, so a resumed run continues on the schedule.
        lr_values: The learning rates after each boundary, one per boundary.

    Raises:
        ValueError: For an unknown name, a non-positive learning rate or clip norm, or a bad schedule.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    boundaries, values = [int(b) for b in lr_boundaries], [float(v) for v in lr_values]
    if len(boundaries) != len(values):
        raise ValueError(f"lr_values needs one learning rate per boundary of lr_boundaries, got "
                         f"{len(values)} for {len(boundaries)}")
    if boundaries and (boundaries[0] < 1 or sorted(set(boundaries)) != boundaries):
        raise ValueError(f"lr_boundaries must be increasing iterations >= 1, got {tuple(lr_boundaries)}")
    if not all(v > 0 for v in values):
        raise ValueError(f"lr_values must be positive, got {tuple(lr_values)}")
    rate = learning_rate
    if boundaries:  # Keras counts finished updates: iteration i runs at count i - 1
        rate = keras.optimizers.schedules.PiecewiseConstantDecay([b - 1 for b in boundaries],
                                                                 [learning_rate, *values])
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=momentum, nesterov=True,
                                    global_clipnorm=clip_norm)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=rate, global_clipnorm=clip_norm)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
