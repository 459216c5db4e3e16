"""Batches from a sample maker, in-process or from a pool of worker processes, identically either way.

A sample is made by a picklable callable ``make_sample(index, rng) -> dict`` (values: NumPy arrays, or any
picklable object such as an id or a `SampleTransform`); ``rng`` is None for the deterministic (validation)
version of a sample. Which samples form a batch and how each is seeded comes from `utils.data.order`.

Workers are a `concurrent.futures.ProcessPoolExecutor` started with "spawn" (never "fork": TensorFlow may be
loaded in the parent). Each holds its own copy of the sample maker (and with it its own image cache) and
returns whole batches, pickled: a batch is small now that targets are drawn in the model (a hand batch of 8
is 2 MB), so nothing more elaborate pays. At most `prefetch_batches` batches are in flight; they are
received in order. A worker that raises stops the iteration with a `SampleError` naming the sample; one
that dies stops it with a `LoaderError`, never a hang.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from utils.data.order import Item, ordered_items, sample_rng, training_items

__all__ = ["BatchLoader", "LoaderError", "SampleError", "collate"]

SampleMaker = Callable[[int, np.random.Generator | None], dict[str, Any]]


class LoaderError(RuntimeError):
    """A loader worker process died (killed, or out of memory): the batches cannot continue."""


class SampleError(RuntimeError):
    """Making one sample failed (in the parent or in a worker); the message ends with the original error.

    Attributes:
        index: Index of the sample that failed.
        epoch: Epoch of the failing sample (0 in the ordered pass).
        details: Traceback text of the original exception.
    """

    def __init__(self, index: int, epoch: int, details: str):
        self.index, self.epoch, self.details = index, epoch, details
        cause = (details.strip().splitlines() or ["unknown error"])[-1]
        super().__init__(f"making sample {index} (epoch {epoch}) failed: {cause}")

    def __reduce__(self):  # pickled from a worker to the parent with its own arguments
        return SampleError, (self.index, self.epoch, self.details)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks samples into a batch.

    Args:
        samples: Sample dicts with the same keys; a key's arrays must share shape and dtype.

    Returns:
        Dict with the samples' keys: arrays stacked along a new first axis (B, ...), other values as a list
        of length B.

    Raises:
        ValueError: If the samples' keys or a key's array shapes or dtypes differ (names the key).
    """
    keys = list(samples[0])
    if any(list(sample) != keys for sample in samples):
        raise ValueError(f"samples of one batch have different keys: {[sorted(s) for s in samples]}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [sample[key] for sample in samples]
        if not isinstance(values[0], np.ndarray):
            batch[key] = values
            continue
        first = values[0]
        for value in values[1:]:
            if not isinstance(value, np.ndarray) or value.shape != first.shape or value.dtype != first.dtype:
                got = (value.shape, value.dtype) if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(f"sample value {key!r} differs within a batch: {(first.shape, first.dtype)} "
                                 f"vs {got}")
        batch[key] = np.stack(values)
    return batch


def _make_batch(make_sample: SampleMaker, seed: int, items: list[Item], randomize: bool) -> dict[str, Any]:
    """Makes and collates the samples of one batch; a failing sample raises `SampleError`."""
    samples = []
    for epoch, index in items:
        try:
            samples.append(make_sample(index, sample_rng(seed, epoch, index) if randomize else None))
        except Exception as error:
            raise SampleError(index, epoch, traceback.format_exc()) from error
    return collate(samples)


_worker_maker: SampleMaker | None = None  # the sample maker of a worker process


def _init_worker(make_sample: SampleMaker) -> None:
    """Worker start: keep the maker; interrupts (Ctrl-C) are the parent's to handle."""
    global _worker_maker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_maker = make_sample


def _worker_batch(seed: int, items: list[Item], randomize: bool) -> dict[str, Any]:
    return _make_batch(_worker_maker, seed, items, randomize)


class BatchLoader:
    """Makes batches of samples, in-process or in worker processes, identically for any worker count.

    Args:
        make_sample: Picklable ``make_sample(index, rng) -> dict``; every sample must give arrays of the same
            shape and dtype per key.
        num_samples: Number of samples (indices 0 ... num_samples - 1).
        batch_size: Samples per training batch.
        seed: Run seed; with the epoch and the sample index it determines every random draw.
        num_workers: Worker processes; 0 makes the samples in the calling process.
        prefetch_batches: Batches requested ahead of the consumer (bounds memory); default 2 per worker.

    Raises:
        ValueError: For a non-positive `num_samples`, `batch_size` or `prefetch_batches`, or a negative
            `num_workers` or `seed` (names the value).

    Workers start at the first iteration and serve every iterator of the loader (several may be live, e.g. a
    training stream interrupted by a validation pass). Use the loader as a context manager (or call
    `close()`) so the workers stop.
    """

    def __init__(self, make_sample: SampleMaker, num_samples: int, batch_size: int, *, seed: int = 0,
                 num_workers: int = 0, prefetch_batches: int | None = None):
        for name, value, minimum in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1),
                                     ("num_workers", num_workers, 0), ("seed", seed, 0)):
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if prefetch_batches is not None and prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be >= 1, got {prefetch_batches}")
        self.make_sample = make_sample
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.prefetch_batches = prefetch_batches or 2 * max(self.num_workers, 1)
        self._pool: ProcessPoolExecutor | None = None

    def train_batches(self, start_batch: int = 0, share: tuple[int, int] = (0, 1)
                      ) -> Iterator[dict[str, Any]]:
        """Endless shuffled, augmented batches, beginning with batch number `start_batch` (to resume).

        With ``share=(k, K)`` only the k-th of K equal parts of every batch is made (the rows one process of a
        K-process data-parallel run trains on): the same samples, drawn the same way, as in the whole batch.

        Raises:
            ValueError: The batch does not split into K equal parts.
            SampleError: When a sample fails (names its index; carries the original traceback text).
            LoaderError: When a worker process dies.
        """
        part, parts = share
        if self.batch_size % parts or not 0 <= part < parts:
            raise ValueError(f"share {share}: a batch of {self.batch_size} does not split into {parts} parts")
        size = self.batch_size // parts
        items = (batch[part * size:(part + 1) * size]
                 for batch in training_items(self.seed, self.num_samples, self.batch_size, start_batch))
        return self._run(items, randomize=True)

    def ordered_batches(self, batch_size: int | None = None) -> Iterator[dict[str, Any]]:
        """One pass over all samples in index order, without randomness (``rng=None``); the last batch may
        be smaller."""
        return self._run(ordered_items(self.num_samples, batch_size or self.batch_size), randomize=False)

    def close(self) -> None:
        """Stops the workers; the loader may be iterated again afterwards (new workers start)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self, batches: Iterator[list[Item]], randomize: bool) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:
            for items in batches:
                yield _make_batch(self.make_sample, self.seed, items, randomize)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(self.make_sample,))
        pending: deque = deque()
        try:
            while True:
                while len(pending) < self.prefetch_batches:
                    items = next(batches, None)
                    if items is None:
                        break
                    pending.append(self._pool.submit(_worker_batch, self.seed, items, randomize))
                if not pending:
                    return
                try:
                    batch = pending.popleft().result()
                except BrokenProcessPool as error:
                    self.close()
                    raise LoaderError("a loader worker process stopped unexpectedly (killed, or out of "
                                      "memory?); the run cannot continue") from error
                yield batch
        finally:
            for future in pending:
                future.cancel()
