"""The sampling order: which sample goes into which batch, and the random generator of each sample.

Everything is a function of the run seed and positions only, never of who makes the samples, so a run gives
the same batches in-process and with any number of worker processes, and a resumed run continues exactly.

Training is endless: the epochs' permutations are concatenated into one stream of sample positions, and
batch k holds positions k * batch_size ... (k + 1) * batch_size - 1 (so a data set smaller than a batch works
too, and a run can resume at any batch). An item is an (epoch, sample index) pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

__all__ = ["epoch_permutation", "ordered_items", "sample_rng", "training_items"]

Item = tuple[int, int]  # (epoch, sample index)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample, a function of (seed, epoch, index) only.

    Its stream differs from every other (epoch, index) pair and from the shuffle of `epoch_permutation`.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, index)))


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The (num_samples,) int64 order of the sample indices in one training epoch, from (seed, epoch) only."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(num_samples)


def training_items(seed: int, num_samples: int, batch_size: int, start_batch: int = 0
                   ) -> Iterator[list[Item]]:
    """Endless batches of (epoch, index) items, beginning with batch number `start_batch` (0-based)."""
    permutation, current = None, -1
    for batch in itertools.count(start_batch):
        items = []
        for position in range(batch * batch_size, (batch + 1) * batch_size):
            epoch = position // num_samples
            if epoch != current:  # positions only move forward: keep the current epoch's order
                permutation, current = epoch_permutation(seed, epoch, num_samples), epoch
            items.append((epoch, int(permutation[position % num_samples])))
        yield items


def ordered_items(num_samples: int, batch_size: int) -> Iterator[list[Item]]:
    """Every sample once, in index order (epoch 0), in batches of `batch_size` (the last may be smaller)."""
    for start in range(0, num_samples, batch_size):
        yield [(0, index) for index in range(start, min(start + batch_size, num_samples))]
