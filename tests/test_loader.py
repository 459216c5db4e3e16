"""Tests of utils.data.loader and .order (determinism across worker counts, errors, shutdown) and .cache."""

import multiprocessing
import os

import numpy as np
import pytest

from utils.data.cache import LRUCache
from utils.data.loader import BatchLoader, LoaderError, SampleError, collate
from utils.data.order import epoch_permutation, sample_rng

NUM_SAMPLES = 7
BATCH_SIZE = 3


class TinySample:
    """Picklable sample maker: the index, one random number and a small array; fails for `fail_index`."""

    def __init__(self, fail_index: int | None = None):
        self.fail_index = fail_index

    def __call__(self, index: int, rng: np.random.Generator | None) -> dict:
        if index == self.fail_index:
            raise ValueError(f"broken sample {index}")
        noise = np.zeros((4, 5), np.float32) if rng is None else rng.normal(size=(4, 5)).astype(np.float32)
        return {"index": np.array(index), "image": noise + index, "id": f"case{index}"}


class DyingSample(TinySample):
    """Kills its own (worker) process at `index`, as the out-of-memory killer would."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def __call__(self, index: int, rng: np.random.Generator | None) -> dict:
        if index == self.index:
            os._exit(9)
        return super().__call__(index, rng)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], np.ndarray):
                np.testing.assert_array_equal(a[key], b[key])
            else:
                assert a[key] == b[key]


def test_epochs_are_permutations_and_batches_cross_epochs():
    loader = BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=5)
    batches = take(loader.train_batches(), 7)  # 21 positions = 3 epochs of 7
    indices = np.concatenate([b["index"] for b in batches])
    for epoch in range(3):
        np.testing.assert_array_equal(indices[epoch * 7 : (epoch + 1) * 7], epoch_permutation(5, epoch, 7))
    assert batches[0]["image"].shape == (BATCH_SIZE, 4, 5)
    assert batches[0]["id"] == [f"case{i}" for i in batches[0]["index"]]
    first = int(batches[0]["index"][0])
    expected = sample_rng(5, 0, first).normal(size=(4, 5)).astype(np.float32) + first
    np.testing.assert_array_equal(batches[0]["image"][0], expected)


def test_same_batches_with_0_1_and_4_workers():
    reference = take(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3).train_batches(), 6)
    ordered = list(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3).ordered_batches())
    assert [len(b["id"]) for b in ordered] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in ordered]), np.arange(NUM_SAMPLES))
    for workers in (1, 4):
        with BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3, num_workers=workers) as loader:
            assert_same_batches(take(loader.train_batches(), 6), reference)
            assert_same_batches(list(loader.ordered_batches()), ordered)
    other_seed = take(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=4).train_batches(), 1)
    assert not np.array_equal(other_seed[0]["image"], reference[0]["image"])


def test_resume_and_interleaved_iterators_with_workers():
    reference = take(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=1).train_batches(), 5)
    with BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=1, num_workers=2) as loader:
        assert_same_batches(take(loader.train_batches(start_batch=2), 3), reference[2:])
        train = loader.train_batches()
        first = take(train, 2)
        validation = list(loader.ordered_batches(batch_size=4))  # interleaved with a live training stream
        assert_same_batches(first + take(train, 3), reference)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in validation]), np.arange(NUM_SAMPLES))


def test_each_share_of_a_batch_holds_the_same_samples_as_that_part_of_the_whole_batch():
    """A data-parallel process loads only its part of every global batch, drawn as in the whole batch."""
    whole = take(BatchLoader(TinySample(), NUM_SAMPLES, 4, seed=2).train_batches(start_batch=1), 3)
    with BatchLoader(TinySample(), NUM_SAMPLES, 4, seed=2, num_workers=1) as loader:
        for part in (0, 1):
            shares = take(loader.train_batches(start_batch=1, share=(part, 2)), 3)
            for share, batch in zip(shares, whole, strict=True):
                np.testing.assert_array_equal(share["image"], batch["image"][2 * part:2 * part + 2])
                assert share["id"] == batch["id"][2 * part:2 * part + 2]
    with pytest.raises(ValueError, match="does not split into 3 parts"):
        BatchLoader(TinySample(), NUM_SAMPLES, 4).train_batches(share=(0, 3))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sample_error_names_index_and_keeps_traceback(num_workers):
    with BatchLoader(TinySample(fail_index=4), NUM_SAMPLES, BATCH_SIZE, num_workers=num_workers) as loader:
        with pytest.raises(SampleError, match="sample 4 .* failed: ValueError: broken sample 4") as info:
            list(loader.ordered_batches())
    assert info.value.index == 4
    assert "ValueError: broken sample 4" in info.value.details
    assert "in __call__" in info.value.details


def test_a_dying_worker_stops_the_iteration_with_an_error_not_a_hang():
    with BatchLoader(DyingSample(index=2), NUM_SAMPLES, BATCH_SIZE, num_workers=2) as loader:
        with pytest.raises(LoaderError, match="loader worker process stopped unexpectedly"):
            list(loader.ordered_batches())


def test_workers_stop_on_close_and_interrupt():
    loader = BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, num_workers=2, prefetch_batches=4)
    next(loader.train_batches())  # leaves prefetched batches pending
    assert len(multiprocessing.active_children()) == 2
    loader.close()
    assert multiprocessing.active_children() == []

    with pytest.raises(KeyboardInterrupt):
        with BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, num_workers=2) as loader:
            next(loader.train_batches())
            raise KeyboardInterrupt
    assert multiprocessing.active_children() == []


def test_invalid_arguments_name_the_value():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchLoader(TinySample(), 3, 0)
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        BatchLoader(TinySample(), 3, 1, num_workers=-1)
    with pytest.raises(ValueError, match="'image'"):
        collate([{"image": np.zeros(2)}, {"image": np.zeros(3)}])


def test_lru_cache_evicts_least_recently_used_beyond_the_byte_limit():
    loads = []

    def loader(key):
        def load():
            loads.append(key)
            return np.zeros(key, np.uint8)

        return load

    cache = LRUCache(max_bytes=10, size_of=lambda a: a.nbytes)
    cache.get(4, loader(4))
    cache.get(5, loader(5))
    cache.get(4, loader(4))  # hit: 4 becomes the most recent
    cache.get(3, loader(3))  # 4 + 5 + 3 > 10: evicts 5
    assert loads == [4, 5, 3]
    assert 4 in cache and 3 in cache and 5 not in cache
    assert cache.total_bytes == 7
    cache.get(11, loader(11))  # larger than the limit: returned, not kept
    assert 11 not in cache and cache.total_bytes == 7
    with pytest.raises(ValueError, match="-1"):
        LRUCache(-1, size_of=len)
