"""Tests of utils.data.loader (determinism across worker counts, errors, shutdown) and utils.data.cache."""

import gc
import glob
import multiprocessing
import os

import numpy as np
import pytest

from utils.data.cache import LRUCache
from utils.data.loader import BatchLoader, SampleError, collate, epoch_permutation, sample_rng
from utils.landmarks.heatmaps import gaussian_heatmaps

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


class InPlaceSample(TinySample):
    """The same samples, written into the loader's batch buffer (`array_spec` + `out`)."""

    def array_spec(self) -> dict:
        return {"index": ((), np.int64), "image": ((4, 5), np.float32)}

    def __call__(self, index: int, rng: np.random.Generator | None, out: dict | None = None) -> dict:
        sample = super().__call__(index, rng)
        out["index"][...] = sample["index"]
        out["image"][...] = sample["image"]
        return {"index": out["index"], "image": out["image"], "id": sample["id"]}


class HeatmapSample:
    """Picklable sample maker: Gaussian heatmaps of 3 landmarks (some missing or outside), rendered fresh."""

    shape = (20, 24)
    landmarks = 3

    def points(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None:  # deterministic: along the diagonal, the last landmark missing for odd indices
            points = np.stack([np.arange(1, 4) * 5.0 + index] * 2, axis=1)
            points[2] = np.nan if index % 2 else points[2]
            return points
        points = rng.uniform(-3.0, 26.0, size=(self.landmarks, 2))
        points[rng.random(self.landmarks) < 0.2] = np.nan
        return points

    def __call__(self, index: int, rng: np.random.Generator | None) -> dict:
        heatmaps = gaussian_heatmaps(self.points(index, rng), self.shape, 0.8)
        return {"index": np.array(index), "heatmaps": heatmaps}


class WindowedHeatmapSample(HeatmapSample):
    """The same samples, rendered into the batch buffer, clearing only the boxes recorded there last time.

    It relies on the loader's invariant: its arrays hold what it wrote for the previous batch of the same
    layout, or are all zero. The windows come first in the spec: the heatmaps' offset changes with the batch
    size.
    """

    def array_spec(self) -> dict:
        return {
            "windows": ((self.landmarks, 2, 2), np.int32),
            "index": ((), np.int64),
            "heatmaps": ((*self.shape, self.landmarks), np.float32),
        }

    def __call__(self, index: int, rng: np.random.Generator | None, out: dict | None = None) -> dict:
        points = self.points(index, rng)
        gaussian_heatmaps(points, self.shape, 0.8, out=out["heatmaps"], windows=out["windows"])
        out["index"][...] = index
        return {"index": out["index"], "heatmaps": out["heatmaps"]}


class WitnessSample:
    """Picklable sample maker that reports what its buffer held before it wrote: the loader's invariant says
    the values of the previous batch of the same layout in that buffer, or zeros. It never writes zeros."""

    def array_spec(self) -> dict:
        return {"value": ((5,), np.int64)}

    def __call__(self, index: int, rng: np.random.Generator | None, out: dict | None = None) -> dict:
        found = out["value"].copy()
        out["value"][...] = 10 * index + np.arange(1, 6) + (0 if rng is None else rng.integers(1, 1000))
        return {"value": out["value"], "found": found}


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


def shared_memory_segments() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def unmapped(segments: set[str]) -> set[str]:
    """The segments that no other live process maps: leaked ones. Segments of another program (tests or
    training running beside this one) are mapped by their owner, so they do not count as our leak."""
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        if maps == f"/proc/{os.getpid()}/maps":
            continue
        try:
            with open(maps) as file:
                lines = [line for line in file if "/dev/shm/" in line]
        except OSError:  # the process ended or is not ours to read
            continue
        mapped.update(line.rsplit("/dev/shm/", 1)[1].split()[0] for line in lines)
    return segments - mapped


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


def test_same_batches_with_0_1_and_4_workers_and_both_transports():
    reference = take(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3).train_batches(), 6)
    ordered = list(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3).ordered_batches())
    assert [len(b["id"]) for b in ordered] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in ordered]), np.arange(NUM_SAMPLES))
    for workers, transport in ((1, "pickle"), (4, "shared_memory")):
        with BatchLoader(
            TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3, num_workers=workers, transport=transport
        ) as loader:
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


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sample_error_names_index_and_keeps_traceback(num_workers):
    with BatchLoader(TinySample(fail_index=4), NUM_SAMPLES, BATCH_SIZE, num_workers=num_workers) as loader:
        with pytest.raises(SampleError, match="sample 4") as info:
            list(loader.ordered_batches())
    assert info.value.index == 4
    assert "ValueError: broken sample 4" in info.value.details
    assert "in __call__" in info.value.details


def test_workers_stop_on_close_exit_interrupt_and_garbage_collection():
    before = shared_memory_segments()
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

    loader = BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, num_workers=1)
    batches = loader.train_batches()
    next(batches)
    del batches, loader
    gc.collect()
    assert multiprocessing.active_children() == []
    assert unmapped(shared_memory_segments() - before) == set()


def test_invalid_arguments_name_the_value():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchLoader(TinySample(), 3, 0)
    with pytest.raises(ValueError, match="'fork'"):
        BatchLoader(TinySample(), 3, 1, start_method="fork")
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


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_makers_writing_into_the_batch_give_the_same_batches(workers):
    expected = take(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=3).train_batches(), 4)
    with BatchLoader(InPlaceSample(), NUM_SAMPLES, BATCH_SIZE, seed=3, num_workers=workers) as loader:
        batches = take(loader.train_batches(), 4)
        ordered = list(loader.ordered_batches())
    assert_same_batches(batches, expected)
    assert_same_batches(ordered, list(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE).ordered_batches()))
    assert batches[0]["image"].dtype == np.float32 and batches[0]["index"].dtype == np.int64


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_without_copy_are_views_valid_until_the_next_request(workers):
    expected = take(BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=4).train_batches(), 6)
    with BatchLoader(InPlaceSample(), NUM_SAMPLES, BATCH_SIZE, seed=4, num_workers=workers) as loader:
        stream = loader.train_batches(copy=False)
        received, images = [], []
        for _ in range(6):
            batch = next(stream)
            images.append(batch["image"])
            received.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in batch.items()})
        if workers:  # views of the shared-memory slots, not copies
            assert not any(image.flags.owndata for image in images)
        else:  # one buffer, reused for every batch
            assert all(image.base is images[0].base for image in images)
        assert not any(image.flags.writeable for image in images)  # the maker may rely on what it left there
        with pytest.raises(ValueError, match="read-only"):
            images[-1][...] = 0.0
        stream.close()
        resumed = take(loader.train_batches(6), 2)  # slots handed back by the closed stream are reused
    assert_same_batches(received, expected)
    reference = BatchLoader(TinySample(), NUM_SAMPLES, BATCH_SIZE, seed=4)
    assert_same_batches(resumed, take(reference.train_batches(6), 2))


def copied(batch: dict) -> dict:
    return {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in batch.items()}


def heatmap_batches(loader: BatchLoader) -> list[dict]:
    """Training batches (kept views, then copies) around ordered passes whose last batch is smaller, so that
    slots serve several layouts one after another."""
    train = loader.train_batches(copy=False)
    batches = [copied(next(train)) for _ in range(4)]
    batches += list(loader.ordered_batches())  # 3, 3, 1
    batches += [copied(next(train)) for _ in range(3)]
    batches += list(loader.ordered_batches(batch_size=2))  # 2, 2, 2, 1
    batches += take(loader.train_batches(start_batch=7), 3)
    return batches


@pytest.mark.parametrize("workers", [0, 2])
def test_makers_relying_on_their_earlier_writes_give_the_batches_made_fresh(workers):
    expected = heatmap_batches(BatchLoader(HeatmapSample(), NUM_SAMPLES, BATCH_SIZE, seed=6))
    with BatchLoader(WindowedHeatmapSample(), NUM_SAMPLES, BATCH_SIZE, seed=6, num_workers=workers) as loader:
        batches = heatmap_batches(loader)
    assert [len(b["index"]) for b in batches] == [3] * 4 + [3, 3, 1] + [3] * 3 + [2, 2, 2, 1] + [3] * 3
    assert all(b["heatmaps"].any() for b in batches)
    assert_same_batches(batches, expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_reused_buffer_holds_the_last_batch_of_its_layout_or_zeros(workers):
    # With workers, prefetch_batches=1 and copies: a single slot, filled by either worker, serves every batch.
    # In-process, training without copies reuses one buffer.
    loader = BatchLoader(WitnessSample(), NUM_SAMPLES, BATCH_SIZE, num_workers=workers, prefetch_batches=1)
    with loader:
        train = loader.train_batches(copy=workers > 0)
        batches = [copied(next(train)) for _ in range(3)]
        ordered = [copied(batch) for batch in loader.ordered_batches()]  # 3, 3, then 1: another layout
        batches += [copied(next(train)) for _ in range(2)]
        assert len(loader._slots) == (0 if workers == 0 else 1)
    zeros = np.zeros((BATCH_SIZE, 5), np.int64)
    np.testing.assert_array_equal(batches[0]["found"], zeros)
    for previous, batch in zip(batches[:2], batches[1:3], strict=True):
        np.testing.assert_array_equal(batch["found"], previous["value"])
    if workers:  # the slot went through the ordered pass: 3, 3, then 1 (zeroed), then 3 again (zeroed)
        np.testing.assert_array_equal(ordered[0]["found"], batches[2]["value"])
        np.testing.assert_array_equal(ordered[1]["found"], ordered[0]["value"])
        np.testing.assert_array_equal(ordered[2]["found"], np.zeros((1, 5), np.int64))
        np.testing.assert_array_equal(batches[3]["found"], zeros)
    else:  # the ordered pass copies, so it gets fresh zeroed buffers; training keeps its own
        assert not any(batch["found"].any() for batch in ordered)
        np.testing.assert_array_equal(batches[3]["found"], batches[2]["value"])
    np.testing.assert_array_equal(batches[4]["found"], batches[3]["value"])
