"""Data-parallel training with the engines of the Keras backends: `tf.distribute` and `keras.distribution`.

``--distribute`` chooses how a run spreads its global batch (``--batch-size``) over devices:

- ``none``: one device, as Keras places it.
- ``mirrored``: every device of this machine. TensorFlow: ``tf.distribute.MirroredStrategy`` (variables
  mirrored, gradients all-reduced); JAX: ``keras.distribution.DataParallel`` over ``jax.devices()``.
- ``multi_worker``: several machines. TensorFlow: ``tf.distribute.MultiWorkerMirroredStrategy``, configured by
  the ``TF_CONFIG`` environment variable of each worker; JAX: ``jax.distributed.initialize()`` (its
  environment or cluster auto-detection), then ``DataParallel`` over every process's devices.

Each process loads only its share of every global batch (`Replicas.share`): worker w of W takes rows
w*B/W .. (w+1)*B/W - 1, the same samples, drawn the same way, as a one-device run's batch has there. The
PyTorch backend has no such engine in Keras: it is refused with a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

__all__ = ["DISTRIBUTE", "Replicas", "split_cpu"]

DISTRIBUTE = ("none", "mirrored", "multi_worker")


def split_cpu(count: int) -> None:
    """Splits the CPU into `count` logical devices, so that data parallelism can be tested without GPUs.

    TensorFlow only, and only before TensorFlow has placed anything. (With JAX set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before Python starts.)

    Raises:
        ValueError: Another backend, or TensorFlow's devices are already in use.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"--cpu-devices needs the TensorFlow backend (with {keras.backend.backend()}, set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=N for JAX)")
    import tensorflow as tf

    try:
        (cpu, *_) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:
        raise ValueError(f"--cpu-devices {count}: TensorFlow has set up its devices already ({error})"
                         ) from error


class Replicas:
    """How a run spreads its batches over devices (see the module docstring).

    Args:
        mode: One of `DISTRIBUTE`.
        batch_size: The global batch size; it must split evenly over the replicas.

    Attributes:
        count: Number of replicas (devices) over all processes.
        share: (this process's index, number of processes): the part of every global batch it loads.

    Raises:
        ValueError: An unknown mode, the PyTorch backend, or a batch that does not split evenly.
    """

    def __init__(self, mode: str, batch_size: int):
        if mode not in DISTRIBUTE:
            raise ValueError(f"--distribute must be one of {', '.join(DISTRIBUTE)}, got {mode!r}")
        backend = keras.backend.backend()
        self.strategy = None  # tf.distribute strategy (TensorFlow)
        self._step, self._step_model = None, None  # the compiled step of the model trained last
        self.share = (0, 1)
        self.count = 1
        if mode == "none":
            return
        if backend == "tensorflow":
            import tensorflow as tf

            if mode == "mirrored":
                self.strategy = tf.distribute.MirroredStrategy()
            else:
                self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
                resolver = self.strategy.cluster_resolver
                workers = len(resolver.cluster_spec().as_dict().get("worker", [])) or 1
                self.share = (int(resolver.task_id or 0), workers)
            self.count = self.strategy.num_replicas_in_sync
        elif backend == "jax":
            import jax

            if mode == "multi_worker":
                jax.distributed.initialize()
            self.share = (jax.process_index(), jax.process_count())
            self.count = jax.device_count()
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        else:
            raise ValueError(f"--distribute {mode} is not supported with the {backend} backend: Keras has no "
                             "data-parallel engine for it; use KERAS_BACKEND=tensorflow or jax")
        if batch_size % self.count:
            raise ValueError(f"--batch-size {batch_size} does not split evenly over the {self.count} "
                             f"replicas of --distribute {mode}: use a multiple of {self.count}")

    def scope(self) -> contextlib.AbstractContextManager:
        """The context in which the model and its optimizer are made (their variables are then mirrored)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def forward(self, network: keras.Model):
        """One forward pass of a batch for tests: ``network.predict_on_batch``, except under a `tf.distribute`
        strategy, whose ``predict_on_batch`` would run the whole batch on every replica and return their
        outputs one after the other; there the network runs once, compiled, outside the replicas."""
        if self.strategy is None:
            return network.predict_on_batch
        import tensorflow as tf

        compiled = tf.function(lambda images: network(images, training=False), reduce_retracing=True)
        return lambda images: compiled(tf.convert_to_tensor(images))

    def train_on_batch(self, model: keras.Model, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """One training step on this process's share of a global batch; returns the logs ({"loss": ...}).

        Under a `tf.distribute` strategy each replica gets its own rows (Keras's ``train_on_batch`` would
        give every replica the whole batch); elsewhere Keras splits the batch itself.
        """
        if self.strategy is None or self.strategy.num_replicas_in_sync == 1:
            return model.train_on_batch(batch, return_dict=True)
        local = len(next(iter(batch.values())))  # rows of this process: global batch / processes
        rows = local * self.share[1] // self.count  # rows per replica
        first = self.share[0] * local  # global row of this process's first row

        def replica_rows(context) -> dict[str, np.ndarray]:
            start = context.replica_id_in_sync_group * rows - first
            return {key: value[start:start + rows] for key, value in batch.items()}

        values = self.strategy.experimental_distribute_values_from_function(replica_rows)
        if self._step_model is not model:
            self._step, self._step_model = self._replicated_step(model, batch), model
        model.reset_metrics()  # as train_on_batch: the logs are this batch's, not a running mean
        logs = self._step(values)
        return {key: float(keras.ops.convert_to_numpy(value)) for key, value in logs.items()}

    def _replicated_step(self, model: keras.Model, batch: Mapping[str, np.ndarray]):
        """A compiled step: Keras's ``train_step`` on every replica's rows (its optimizer all-reduces the
        gradients), logs averaged over the replicas. Keras's own ``train_function`` fails to average scalar
        logs under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388), so the average is taken here."""
        import tensorflow as tf

        # what train_on_batch does before its first step: build the metrics and optimizer under the scope
        model._maybe_symbolic_build(data_batch=(dict(batch), None, None))

        @tf.function
        def step(values):
            logs = self.strategy.run(model.train_step, args=((values, None, None),))
            return {key: self.strategy.reduce("MEAN", value, axis=None) for key, value in logs.items()}

        return step
