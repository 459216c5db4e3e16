"""Deterministic parallel batch loading.

A sample is made by a picklable callable ``make_sample(index, rng) -> dict`` (values: NumPy arrays, or any
picklable object such as an id or a `SampleTransform`). A sample maker that also has a method
``array_spec() -> {key: (shape, dtype)}`` is called as ``make_sample(index, rng, out)`` with `out` the views
of its arrays in the batch buffer (a worker's shared-memory slot), so samples are written in place instead
of being made, stacked and copied (for hand samples, ~10 MB of heatmaps each).

The random generator of a sample is seeded from (run seed, epoch, sample index) only, and the order of an
epoch from (run seed, epoch) only, so a run produces the same batches whether the samples are made
in-process or by any number of worker processes.

Training iteration is endless: the epochs' permutations are concatenated into one stream of sample
positions, and batch k holds positions k * batch_size ... (k + 1) * batch_size - 1 (so a data set smaller
than a batch works too, and a run can resume at any batch). The ordered pass visits every sample once, in
index order, with ``rng=None`` (the sample maker's deterministic, validation behaviour).

Workers are started with the "spawn" (default) or "forkserver" method, never "fork", because TensorFlow may
already be loaded in the parent. Each worker holds its own copy of the sample maker, and with it its own
image cache. Arrays of a finished batch travel back through `multiprocessing.shared_memory` (the default
"shared_memory" transport) or inside the pickled message ("pickle" transport).

Reused batch buffers (the in-process buffer of ``copy=False`` and the shared-memory slots) keep their content
from batch to batch. Invariant: the arrays a sample maker with an `array_spec` gets as `out` hold what the
previous batch in that buffer left there when that batch had the same layout (array shapes, dtypes and
offsets), and are all zero otherwise: a fresh buffer is zero-filled, and a slot that served another layout
(e.g. the smaller last batch of an ordered pass) is zeroed before use. So a maker may keep bookkeeping about
its own earlier writes in its arrays and rely on it: e.g. ``gaussian_heatmaps(..., out=heatmaps,
windows=boxes)`` clears only the boxes recorded in `boxes` instead of zeroing ~10 MB of heatmaps per sample.
This needs that nobody else writes into the buffers, which is why ``copy=False`` batches are read-only views.
"""

import hashlib
import itertools
import multiprocessing
import pickle
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

__all__ = ["BatchLoader", "SampleError", "collate", "epoch_permutation", "sample_rng"]

SampleMaker = Callable[[int, np.random.Generator | None], dict[str, Any]]
"""make_sample(index, rng) -> dict: rng is None for the deterministic (validation) version of a sample."""

_TRANSPORTS = ("shared_memory", "pickle")
_START_METHODS = ("spawn", "forkserver")
_ALIGN = 64  # byte alignment of each array inside a shared-memory block
_HEADER = _ALIGN  # bytes at the start of a block holding the fingerprint of the layout its arrays hold
_MAGIC = b"lmlayout"  # first bytes of every fingerprint, so that a zero-filled header never matches one


class SampleError(RuntimeError):
    """Making one sample failed (in the parent or in a worker).

    Attributes:
        index: Index of the sample that failed (None if the batch failed after its samples were made).
        epoch: Epoch of the failing sample (0 in the ordered pass).
        details: Traceback text of the original exception.
    """

    def __init__(self, index: int | None, epoch: int, details: str):
        self.index = index
        self.epoch = epoch
        self.details = details
        where = "preparing a batch" if index is None else f"making sample {index} (epoch {epoch})"
        super().__init__(f"{where} failed; original traceback:\n{details}")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Returns the random generator of one sample, a function of (seed, epoch, index) only.

    Args:
        seed: Run seed (non-negative).
        epoch: Epoch number (non-negative).
        index: Sample index (non-negative).

    Returns:
        A fresh generator; its stream differs from every other (epoch, index) pair and from the shuffle.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, index)))


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """Returns the order of the sample indices in one training epoch, a function of (seed, epoch) only.

    Args:
        seed: Run seed (non-negative).
        epoch: Epoch number (non-negative).
        num_samples: Number of samples in the data set.

    Returns:
        (num_samples,) int64 permutation of 0 ... num_samples - 1.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(num_samples)


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
    batch: dict[str, Any] = {}
    for key in keys:
        values = [_value_of(sample, key) for sample in samples]
        if isinstance(values[0], np.ndarray):
            _check_uniform(key, values)
            batch[key] = np.stack(values)
        else:
            batch[key] = values
    if any(len(sample) != len(keys) for sample in samples):
        raise ValueError(f"samples of one batch have different keys: {[sorted(s) for s in samples]}")
    return batch


def _value_of(sample: dict[str, Any], key: str) -> Any:
    if key not in sample:
        raise ValueError(f"sample lacks key {key!r} that another sample of the batch has: {sorted(sample)}")
    return sample[key]


def _check_uniform(key: str, arrays: list[Any]) -> None:
    first = arrays[0]
    for array in arrays[1:]:
        if not isinstance(array, np.ndarray) or array.shape != first.shape or array.dtype != first.dtype:
            got = (array.shape, array.dtype) if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(
                f"sample value {key!r} differs within a batch: {(first.shape, first.dtype)} vs {got}"
            )


def _make_samples(
    make_sample: SampleMaker,
    items: list[tuple[int, int]],
    seed: int,
    randomize: bool,
    out: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Makes the samples of one batch; items are (epoch, index) pairs. Raises SampleError on failure.

    With `out` (batch arrays (B, ...) per key of the maker's `array_spec`), sample i is written into
    ``out[key][i]``; the returned samples then hold those views.
    """
    samples = []
    for i, (epoch, index) in enumerate(items):
        rng = sample_rng(seed, epoch, index) if randomize else None
        try:
            if out is None:
                samples.append(make_sample(index, rng))
            else:
                samples.append(make_sample(index, rng, {key: array[i, ...] for key, array in out.items()}))
        except Exception as error:
            raise SampleError(index, epoch, traceback.format_exc()) from error
    return samples


def _array_spec(make_sample: SampleMaker) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    """The maker's per-sample array shapes and dtypes, or None when it cannot write into a buffer."""
    spec = getattr(make_sample, "array_spec", None)
    return (
        None
        if spec is None
        else {key: (tuple(shape), np.dtype(dtype)) for key, (shape, dtype) in spec().items()}
    )


def _made_in_place(
    make_sample: SampleMaker, items: list[tuple[int, int]], seed: int, randomize: bool, arrays: dict
) -> dict[str, Any]:
    """A batch whose arrays were written by the maker into `arrays`; its other values collated."""
    samples = _make_samples(make_sample, items, seed, randomize, arrays)
    others = collate([{k: v for k, v in sample.items() if k not in arrays} for sample in samples])
    return {key: arrays[key] if key in arrays else others[key] for key in samples[0]}


# ---------------------------------------------------------------- transport of a batch from worker to parent
#
# Shared-memory transport: the parent owns a pool of reusable segments ("slots"), one per batch in flight.
# A task names its slot; the worker writes the batch's arrays into it (replacing it by a larger segment when
# it does not fit) and sends only the layout; the parent copies the arrays out and puts the slot back into
# the pool. Workers and parent keep their mappings open, because mapping and first-touching fresh shared
# memory costs far more than the copy itself.
#
# A block starts with a header (_HEADER bytes) holding the fingerprint of the layout written after it. The
# worker that packs a batch zeroes the block's arrays when the header names another layout (or none), which
# keeps the module's invariant whichever worker gets the slot next and whatever layout it had before.


def _layout(
    spec: dict[str, tuple[tuple[int, ...], np.dtype]], batch_size: int
) -> tuple[list[tuple[str, tuple[int, ...], str, int]], int]:
    """Byte layout of a batch's arrays in one block, after its header: [(key, batch shape, dtype, offset)],
    total bytes."""
    layout = []
    offset = _HEADER
    for key, (shape, dtype) in spec.items():
        offset = -(-offset // _ALIGN) * _ALIGN
        layout.append((key, (batch_size, *shape), dtype.str, offset))
        offset += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize * batch_size
    return layout, offset


def _fingerprint(layout: list[tuple[str, tuple[int, ...], str, int]]) -> bytes:
    """Header bytes naming a layout: a fixed non-zero prefix, then a hash of keys, shapes, dtypes, offsets."""
    return _MAGIC + hashlib.blake2b(repr(layout).encode(), digest_size=_HEADER - len(_MAGIC)).digest()


def _claim(block: SharedMemory, layout: list[tuple[str, tuple[int, ...], str, int]], needed: int) -> None:
    """Zeroes the block's arrays unless its header says they hold `layout` from an earlier batch.

    The header is invalidated before zeroing and written after, so an interrupted call leaves either the old
    content under its own header or a header that matches no layout.
    """
    header = _fingerprint(layout)
    if bytes(block.buf[:_HEADER]) == header:
        return
    block.buf[:_HEADER] = bytes(_HEADER)
    np.ndarray(needed - _HEADER, np.uint8, buffer=block.buf, offset=_HEADER).fill(0)
    block.buf[:_HEADER] = header


def _spec_of(samples: list[dict[str, Any]]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The array spec of made samples (checked to agree within the batch)."""
    spec = {}
    for key, value in samples[0].items():
        if isinstance(value, np.ndarray):
            _check_uniform(key, [sample[key] for sample in samples])
            spec[key] = (value.shape, value.dtype)
    return spec


def _views(block: SharedMemory, layout: list[tuple[str, tuple[int, ...], str, int]]) -> dict[str, np.ndarray]:
    """The arrays of a batch layout inside a shared-memory block."""
    return {
        key: np.ndarray(shape, dtype=dtype, buffer=block.buf, offset=start)
        for key, shape, dtype, start in layout
    }


def _read_only(batch: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The batch with read-only views of its buffer arrays, so a consumer cannot spoil what a reused buffer
    carries over to the next batch."""
    views = {}
    for key, value in batch.items():
        if key in arrays:
            value = value.view()
            value.flags.writeable = False
        views[key] = value
    return views


def _close_block(block: SharedMemory) -> None:
    """Unmaps a slot; while a consumer still holds views of it (copy=False), they keep the mapping alive."""
    try:
        block.close()
    except BufferError:
        pass


class _WorkerSlots:
    """A worker's open mappings of the parent's slots (least recently used closed beyond the pool size)."""

    def __init__(self):
        self._open: OrderedDict[str, SharedMemory] = OrderedDict()

    def block(self, name: str | None, size: int, needed: int, num_slots: int) -> SharedMemory:
        """The slot `name` when it holds `needed` bytes, else a new segment of that size."""
        if name is not None and size >= needed:
            block = self._open.pop(name, None) or SharedMemory(name=name)
        else:
            block = SharedMemory(create=True, size=needed)
        self._open[block.name] = block
        while len(self._open) > max(num_slots, 1):
            self._open.popitem(last=False)[1].close()
        return block

    def close(self) -> None:
        for block in self._open.values():
            block.close()
        self._open.clear()


def _pack(
    make_sample: SampleMaker,
    items: list[tuple[int, int]],
    seed: int,
    randomize: bool,
    slot: tuple | None,
    slots: _WorkerSlots,
) -> tuple:
    """Makes a batch in a worker and turns it into a message for the parent: the pickled batch when `slot`
    is None, else ("shared_memory", segment name, layout, non-array values, keys) with the arrays in the
    slot (written there directly when the maker has an `array_spec`, else copied there)."""
    if slot is None:
        return ("pickle", collate(_make_samples(make_sample, items, seed, randomize)))
    name, size, num_slots = slot
    spec = _array_spec(make_sample)
    samples = None if spec is not None else _make_samples(make_sample, items, seed, randomize)
    layout, needed = _layout(spec if spec is not None else _spec_of(samples), len(items))
    block = slots.block(name, size, needed, num_slots)
    _claim(block, layout, needed)
    views = _views(block, layout)
    if samples is None:
        batch = _made_in_place(make_sample, items, seed, randomize, views)
    else:
        batch = collate([{k: v for k, v in sample.items() if k not in views} for sample in samples])
        for key, target in views.items():
            for i, sample in enumerate(samples):
                target[i] = sample[key]
        batch = {key: views[key] if key in views else batch[key] for key in samples[0]}
    others = {key: value for key, value in batch.items() if key not in views}
    return ("shared_memory", block.name, layout, others, list(batch))


def _worker_loop(make_sample: SampleMaker, seed: int, tasks, results, results_lock) -> None:
    """Worker process: makes batches until it receives None. Interrupts are left to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slots = _WorkerSlots()
    while True:
        task = tasks.get()
        if task is None:
            slots.close()
            return
        key, items, randomize, slot = task
        try:
            message = _pack(make_sample, items, seed, randomize, slot, slots)
            data = pickle.dumps((key, "ok", message), protocol=pickle.HIGHEST_PROTOCOL)
        except SampleError as error:
            data = pickle.dumps((key, "error", (error.index, error.epoch, error.details)))
        except Exception:
            data = pickle.dumps((key, "error", (None, items[0][0], traceback.format_exc())))
        with results_lock:
            results.send_bytes(data)


class BatchLoader:
    """Makes batches of samples, in-process or in worker processes, identically for any worker count.

    Args:
        make_sample: Picklable callable ``make_sample(index, rng) -> dict[str, value]``; `rng` is a
            `numpy.random.Generator` for training samples and None for the ordered (validation) pass. Every
            sample of a data set must give arrays of the same shape and dtype per key.
        num_samples: Number of samples (indices 0 ... num_samples - 1).
        batch_size: Samples per training batch.
        seed: Run seed; with the epoch and the sample index it determines every random draw.
        num_workers: Worker processes; 0 makes the samples in the calling process.
        prefetch_batches: Batches requested ahead of the consumer (bounds memory); default 2 per worker.
        transport: "shared_memory" (arrays through reusable `multiprocessing.shared_memory` segments) or
            "pickle" (arrays inside the pickled message; slower for large batches).
        start_method: "spawn" or "forkserver" (never "fork": TensorFlow may be loaded in the parent).

    Raises:
        ValueError: For a non-positive `num_samples` or `batch_size`, a negative `num_workers` or `seed`,
            or an unknown `transport` or `start_method`.

    Workers start at the first iteration and serve every iterator of the loader (several may be live, e.g.
    a training stream interrupted by a validation pass). Use the loader as a context manager (or call
    `close()`) so the workers stop; they also stop when it is garbage-collected and at interpreter exit.
    """

    def __init__(
        self,
        make_sample: SampleMaker,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        num_workers: int = 0,
        prefetch_batches: int | None = None,
        transport: str = "shared_memory",
        start_method: str = "spawn",
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {_TRANSPORTS}, got {transport!r}")
        if start_method not in _START_METHODS:
            raise ValueError(f"start_method must be one of {_START_METHODS}, got {start_method!r}")
        if prefetch_batches is not None and prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be >= 1, got {prefetch_batches}")
        self.make_sample = make_sample
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.prefetch_batches = prefetch_batches or 2 * max(self.num_workers, 1)
        self.transport = transport
        self.start_method = start_method
        self._processes: list = []
        self._tasks = None
        self._results = None
        self._results_lock = None
        self._stream_ids = itertools.count()
        self._ready: dict[tuple[int, int], tuple[str, Any, int | None]] = {}
        self._slots: list[SharedMemory | None] = []
        self._free_slots: list[int] = []
        self._slot_of: dict[tuple[int, int], int] = {}
        self._abandoned: set[int] = set()

    # ------------------------------------------------------------------ public iteration

    def train_batches(self, start_batch: int = 0, copy: bool = True) -> Iterator[dict[str, Any]]:
        """Endless shuffled, augmented batches (epochs follow one another).

        Args:
            start_batch: Number of batches already consumed (to resume a run exactly).
            copy: If False, a batch's arrays are read-only views of the loader's buffer (its shared-memory
                slot, or one reused in-process buffer), valid only until the next batch is requested: a
                training step that consumes each batch before asking for the next saves copying ~10 MB per
                hand sample. They are read-only because the buffer is reused: the sample maker may rely on
                what it left there for the next batch of the same layout (see the module docstring), so a
                consumer must not write into them (copy them first).

        Yields:
            Batches from `collate`: arrays (batch_size, ...), other values as lists.

        Raises:
            SampleError: When a sample fails (names its index; carries the original traceback text).
        """
        return self._run(self._train_items(start_batch), randomize=True, copy=copy)

    def ordered_batches(self, batch_size: int | None = None) -> Iterator[dict[str, Any]]:
        """One pass over all samples in index order, without randomness (``rng=None``).

        Args:
            batch_size: Samples per batch (default: the loader's); the last batch may be smaller.

        Yields:
            Batches from `collate`.

        Raises:
            SampleError: When a sample fails.
        """
        size = batch_size or self.batch_size
        n = self.num_samples
        items = ([(0, i) for i in range(start, min(start + size, n))] for start in range(0, n, size))
        return self._run(items, randomize=False)

    def close(self) -> None:
        """Stops the workers and frees every pending batch; the loader may be iterated again afterwards."""
        if not getattr(self, "_processes", None):
            return
        processes, self._processes = self._processes, []
        while True:  # drop queued tasks so the workers reach their stop signal soon
            try:
                self._tasks.get_nowait()
            except Exception:
                break
        for _ in processes:
            self._tasks.put(None)
        deadline = time.monotonic() + 10.0
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            self._drain(timeout=0.05)
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        self._drain(timeout=0.0)
        for block in self._slots:
            if block is not None:
                _close_block(block)
                block.unlink()
        self._slots, self._free_slots = [], []
        self._slot_of.clear()
        self._ready.clear()
        self._abandoned.clear()
        self._tasks.cancel_join_thread()
        self._tasks.close()
        self._results.close()
        self._tasks = self._results = self._results_lock = None

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _train_items(self, start_batch: int) -> Iterator[list[tuple[int, int]]]:
        n = self.num_samples
        permutations: dict[int, np.ndarray] = {}
        for batch in itertools.count(start_batch):
            items = []
            for position in range(batch * self.batch_size, (batch + 1) * self.batch_size):
                epoch = position // n
                if epoch not in permutations:
                    permutations.clear()  # positions only move forward; keep the current epoch's order
                    permutations[epoch] = epoch_permutation(self.seed, epoch, n)
                items.append((epoch, int(permutations[epoch][position % n])))
            yield items

    def _run(
        self, batches: Iterator[list[tuple[int, int]]], randomize: bool, copy: bool = True
    ) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:
            spec = _array_spec(self.make_sample)
            reused: dict[str, np.ndarray] = {}
            for items in batches:
                if spec is None:
                    yield collate(_make_samples(self.make_sample, items, self.seed, randomize))
                    continue
                shapes = {key: ((len(items), *shape), dtype) for key, (shape, dtype) in spec.items()}
                if copy or any(reused.get(k, np.empty(0)).shape != shape for k, (shape, _) in shapes.items()):
                    reused = {key: np.zeros(shape, dtype) for key, (shape, dtype) in shapes.items()}
                batch = _made_in_place(self.make_sample, items, self.seed, randomize, reused)
                yield batch if copy else _read_only(batch, reused)
            return
        self._start()
        stream = next(self._stream_ids)
        submitted = consumed = 0
        exhausted = False
        held = None  # slot whose views the consumer holds (copy=False), freed when it asks for more
        try:
            while True:
                while not exhausted and submitted - consumed < self.prefetch_batches:
                    items = next(batches, None)
                    if items is None:
                        exhausted = True
                    else:
                        self._submit((stream, submitted), items, randomize)
                        submitted += 1
                if consumed == submitted:
                    return
                status, payload, slot = self._wait_for((stream, consumed))
                consumed += 1
                if status == "error":
                    raise SampleError(*payload)
                held = None if copy else slot
                yield self._unpack(payload, slot, copy)
                if held is not None:
                    self._free_slots.append(held)
                    held = None
        finally:
            if held is not None:
                self._free_slots.append(held)
            self._abandon(stream)

    def _start(self) -> None:
        if self._processes:
            return
        context = multiprocessing.get_context(self.start_method)
        self._tasks = context.Queue()
        self._results, writer = context.Pipe(duplex=False)
        self._results_lock = context.Lock()
        args = (self.make_sample, self.seed, self._tasks, writer, self._results_lock)
        for _ in range(self.num_workers):
            process = context.Process(target=_worker_loop, args=args, daemon=True)
            process.start()
            self._processes.append(process)
        writer.close()

    def _submit(self, key: tuple[int, int], items: list[tuple[int, int]], randomize: bool) -> None:
        """Queues one batch; with shared memory it gets a free slot: (segment name, its size, pool size)."""
        slot = None
        if self.transport == "shared_memory":
            if not self._free_slots:
                self._free_slots.append(len(self._slots))
                self._slots.append(None)
            index = self._free_slots.pop()
            self._slot_of[key] = index
            block = self._slots[index]
            slot = (None, 0) if block is None else (block.name, block.size)
            slot = (*slot, len(self._slots))
        self._tasks.put((key, items, randomize, slot))

    def _unpack(self, message: tuple, slot: int | None, copy: bool = True) -> dict[str, Any]:
        """The batch of a worker's message: arrays copied out of the slot, which is freed (copy=True), or
        views of the slot, which the caller frees once the consumer is done with them (copy=False)."""
        if message[0] == "pickle":
            return message[1]
        _, _, layout, others, keys = message
        arrays = _views(self._slots[slot], layout)
        if copy:
            arrays = {key: view.copy() for key, view in arrays.items()}
            self._free_slots.append(slot)
        batch = {key: arrays[key] if key in arrays else others[key] for key in keys}
        return batch if copy else _read_only(batch, arrays)

    def _wait_for(self, key: tuple[int, int]) -> tuple[str, Any, int | None]:
        while key not in self._ready:
            if not self._drain(timeout=1.0):
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    codes = [(p.pid, p.exitcode) for p in dead]
                    self.close()
                    raise RuntimeError(f"loader worker(s) (pid, exit code) {codes} stopped unexpectedly")
        return self._ready.pop(key)

    def _drain(self, timeout: float) -> bool:
        """Receives every message available within `timeout` seconds; returns whether one arrived."""
        received = False
        while self._results.poll(timeout):
            try:
                data = self._results.recv_bytes()
            except EOFError:  # every worker has exited and closed its end of the pipe
                time.sleep(timeout)
                break
            key, status, payload = pickle.loads(data)
            received = True
            timeout = 0.0
            slot = self._slot_of.pop(key, None)
            if slot is not None and status == "ok":
                self._adopt(slot, payload[1])
            keep = key[0] not in self._abandoned and bool(self._processes)
            if keep:
                self._ready[key] = (status, payload, slot if status == "ok" else None)
            if slot is not None and (status == "error" or not keep):
                self._free_slots.append(slot)
        return received

    def _adopt(self, slot: int, name: str) -> None:
        """Makes segment `name` the slot's segment (a worker replaced a slot that was too small)."""
        block = self._slots[slot]
        if block is not None and block.name == name:
            return
        if block is not None:
            _close_block(block)
            block.unlink()
        self._slots[slot] = SharedMemory(name=name)

    def _abandon(self, stream: int) -> None:
        """Marks a stream as finished: its pending and future results are dropped and their slots freed."""
        self._abandoned.add(stream)
        for key in [k for k in self._ready if k[0] == stream]:
            slot = self._ready.pop(key)[2]
            if slot is not None:
                self._free_slots.append(slot)
