"""Shared helpers of the benchmark scripts: timing, machine description, peak memory, tables, JSON results.

Every benchmark runs unchanged on a CPU machine (TensorFlow backend) and on a GPU machine (for example
``KERAS_BACKEND=jax``): backend-specific calls (device name, device memory) import their framework inside
the function that needs it, only for the active Keras backend, and report None where they do not apply.

Timings are wall-clock seconds from ``time.perf_counter``. The timed callables must return host values
(``train_on_batch`` and ``predict_on_batch`` do), so that asynchronous device work is finished when the
clock stops.
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from utils.io.atomic import write_json_atomic
from utils.runtime import quiet_tensorflow_start

__all__ = [
    "PeakMemory",
    "Timing",
    "accelerator_name",
    "device_peak_memory",
    "format_table",
    "machine_info",
    "matmul_tflops",
    "reset_device_peak_memory",
    "run_isolated",
    "time_calls",
    "write_results",
]

# distributions whose versions are recorded with every result (those not installed are left out)
_VERSIONED = ("numpy", "keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "SimpleITK")


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls after warm-up.

    Attributes:
        seconds: duration of each timed call, seconds, in call order.
        warmup_seconds: duration of each warm-up call (compilation, first-touch allocation), seconds.
    """

    seconds: tuple[float, ...]
    warmup_seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median of the timed calls, seconds."""
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        """Fastest timed call, seconds (least disturbed by other processes on a shared machine)."""
        return min(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: median, best, mean and every single time, seconds."""
        return {
            "median_s": self.median,
            "best_s": self.best,
            "mean_s": statistics.fmean(self.seconds),
            "times_s": list(self.seconds),
            "warmup_s": list(self.warmup_seconds),
        }


def time_calls(function: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Calls `function` `warmup` times, then `repeats` times, timing every call.

    Args:
        function: the work to time; must block until its result is on the host.
        warmup: calls before timing (>= 0); their durations are kept separately (they include compilation).
        repeats: timed calls (>= 1).

    Returns:
        The `Timing` of the timed and the warm-up calls.

    Raises:
        ValueError: if `warmup` < 0 or `repeats` < 1.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, received {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, received {repeats}")
    durations = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return Timing(seconds=tuple(durations[warmup:]), warmup_seconds=tuple(durations[:warmup]))


class PeakMemory:
    """Context manager that samples this process's resident set size (RSS) in a background thread.

    Args:
        interval_s: seconds between two samples; peaks shorter than that can be missed.

    Attributes:
        baseline_bytes: RSS when the block was entered, bytes.
        peak_bytes: highest RSS seen while the block ran (including its entry and exit), bytes.

    Example::

        with PeakMemory() as memory:
            model.train_on_batch(...)
        print(memory.peak_bytes)
    """

    def __init__(self, interval_s: float = 0.02):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, received {interval_s}")
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_bytes = 0
        self.peak_bytes = 0

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self.baseline_bytes = self._process.memory_info().rss
        self.peak_bytes = self.baseline_bytes
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _backend() -> str:
    """The Keras backend's name; a benchmark that has not loaded Keras yet (the loader's) loads it quietly."""
    with quiet_tensorflow_start():
        import keras

    return keras.backend.backend()


def accelerator_name() -> str | None:
    """Name of the first GPU (or other accelerator) the active Keras backend uses; None on a CPU-only run."""
    backend = _backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        try:
            import tensorflow as tf
        except ImportError:
            return None
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    return None


def reset_device_peak_memory() -> None:
    """Resets the accelerator's peak-memory counter where the backend allows it (TensorFlow, torch).

    JAX keeps one peak per process and cannot reset it; run each measurement in its own process
    (`run_isolated`) to get per-measurement peaks there.
    """
    if accelerator_name() is None:
        return
    backend = _backend()
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def device_peak_memory() -> int | None:
    """Peak accelerator memory in use by this process so far (since the last reset), bytes; None on CPU.

    JAX: ``peak_bytes_in_use`` of the first device; torch: ``torch.cuda.max_memory_allocated``;
    TensorFlow: ``tf.config.experimental.get_memory_info("GPU:0")["peak"]``.
    """
    if accelerator_name() is None:
        return None
    backend = _backend()
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if backend == "tensorflow":
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return None


def matmul_tflops(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """Measured dense matrix-multiplication rate of the device Keras computes on, TFLOP/s.

    This is the practical ceiling ("matrix-unit rate") that convolution-heavy training steps are compared
    against: a chain of ``size x size`` products in `dtype`, best of `repeats`, after one warm-up call.

    Args:
        dtype: Keras dtype of the operands ("float32", "bfloat16", "float16").
        size: matrix side; 2048 keeps one call well under a second on a 2-core CPU.
        repeats: timed calls.

    Returns:
        ``2 * size**3 * chain / best_seconds / 1e12``.
    """
    import keras

    chain = 4
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32) / size**0.5, dtype)
    b = keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32) / size**0.5, dtype)

    def products():
        c = a
        for _ in range(chain):
            c = keras.ops.matmul(c, b)
        return keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(c, "float32")))

    timing = time_calls(products, warmup=1, repeats=repeats)
    return 2 * size**3 * chain / timing.best / 1e12


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where a result was measured: CPU model and cores, memory, load, Keras backend, versions, GPU name.

    ``load_average`` (1, 5, 15 minutes) tells whether other processes shared the machine;
    ``tf_enable_onednn_opts`` which TensorFlow CPU kernels ran ("1": oneDNN, "0": Eigen).
    """
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": psutil.virtual_memory().total,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras_backend": _backend(),
        "versions": versions,
        "gpu": accelerator_name(),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def write_results(
    path: str | os.PathLike,
    benchmark: str,
    config: Mapping[str, Any],
    results: Any,
    machine: Mapping[str, Any] | None = None,
) -> dict:
    """Writes one benchmark's results as JSON (atomically), with the machine and the time of the run.

    Args:
        path: the JSON file.
        benchmark: name of the benchmark (e.g. "training").
        config: the resolved command-line configuration.
        results: JSON-serialisable measurements (no NaN).
        machine: `machine_info()` as taken where the measurements ran (e.g. in an isolated worker, so that
            the parent process never initialises the accelerator); None: taken here.

    Returns:
        The object written: ``{"benchmark", "created", "machine", "config", "results"}``.
    """
    document = {
        "benchmark": benchmark,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": dict(machine) if machine is not None else machine_info(),
        "config": dict(config),
        "results": results,
    }
    write_json_atomic(path, document)
    return document


def run_isolated(function: Callable[..., Any], *args: Any) -> Any:
    """Runs ``function(*args)`` in a fresh Python process and returns its (picklable) result.

    A fresh process gives each measurement its own peak-memory figures (RSS and JAX's unresettable device
    peak) and its own Keras global state (dtype policy). `function` must be importable at module level.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table, one line per row, columns right-aligned.

    Args:
        rows: mappings from key to value; a missing key or None prints as "n/a".
        columns: ``(key, header, format_spec)`` per column, e.g. ``("ms", "ms/step", ".1f")``.

    Returns:
        The table with a header line and a rule, no trailing newline.
    """
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("n/a" if value is None else format(value, spec))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    text = [" ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    text.insert(1, " ".join("-" * width for width in widths))
    return "\n".join(text)
