"""The authors' augmentation framework, timed per core on the same hand radiographs as our loader (issue 9).

Issue 9 asks our loader for at least 6x the samples per second per core of the original framework
(christianpayer/MedicalDataAugmentationTool with the ``hand_xray`` example of
christianpayer/MedicalDataAugmentationTool-HeatmapRegression) on the real hand radiographs: 256 x 256 input,
the full training chain with the B-spline deformation, 37 landmarks (their generator renders 37 dense
256 x 256 heatmaps), SimpleITK and every thread pool at one thread. This module is only the driver: it
imports their ``Dataset`` (``hand_xray/dataset.py``) and framework from paths given on the command line, and
holds none of their (GPL) code. Without the paths it measures nothing and says so. How to obtain their code:
see benchmarks/README.md.

What is measured: their training dataset (``Dataset.dataset_train()``, what their ``main.py`` feeds to its
TensorFlow queue) built on the images and ``setup/all.csv`` of ``--data``; ``get_next()`` draws one sample
(cached image, random composite transform, SimpleITK resampling, robust normalisation and random
shift/scale, inverse landmark mapping, 37 heatmaps). One process, one thread, in a fresh child process:
their top-level ``utils`` and ``dataset`` modules have the names of ours, and the thread limits
(``OMP_NUM_THREADS=1`` etc., ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``,
``sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)``, threadpoolctl where installed) must be set before
NumPy and SimpleITK load. Samples/s per core = timed samples / wall seconds; the child's CPU seconds are
reported beside it (CPU / wall near 1: one busy thread, not preempted). After a warm-up that loads every
image into their cache, ``repeats`` passes of ``num_samples`` samples are timed and the median pass is
reported; a separate, untimed pass splits a sample into stages.

One runtime setting is applied to their objects, and reported: since the framework's commit of 2020-10-27
("change default behaviour of Composite transformation ...") a ``Composite`` composes only what a graph
runner passes to ``get()``, while the (older) hand example's ``ReferenceTransformationDataset`` calls
``get(image=...)`` directly, which then returns an EMPTY composite: an identity transform (no fit, no
augmentation, landmarks mostly outside, ~10x cheaper). The driver sets the composite's own
``use_deprecated_behaviour`` flag, which restores the example's chain, and checks that every sample's
transform holds all of the chain's transforms.

Commands (from the repository root)::

    python -m benchmarks.authors --authors-framework /tmp/authors/MedicalDataAugmentationTool \\
        --authors-example /tmp/authors/MedicalDataAugmentationTool-HeatmapRegression/hand_xray \\
        --data ../shared/data/hand_xray_real --samples 200
    python -m benchmarks.authors          # no paths: prints why nothing was measured
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HAND",
    "SPINE",
    "AuthorsFrameworkUnavailable",
    "authors_hand_samples_per_s",
    "authors_spine_samples_per_s",
    "main",
    "skip_reason",
]

REAL_HANDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_xray_real"
# the paper's hand configuration (U-Net / SCN): the example's Dataset is built with these
HAND = {"image_size": [256, 256], "heatmap_size": [256, 256], "num_landmarks": 37, "sigma": 3.0}
# the authors' spine configuration (their spine/main.py: 96 x 96 x 192 at 2 mm, 26 vertebrae, sigma 4; the
# MIA 2019 network draws its targets in the graph, so their generator gives landmarks, not heatmaps)
SPINE = {"image_size": [96, 96, 192], "image_spacing": [2.0, 2.0, 2.0], "num_landmarks": 26, "sigma": 4.0}
# every thread pool that NumPy, SciPy, numba or SimpleITK (ITK) may start, limited to one thread
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
# a file that identifies each checkout
FRAMEWORK_MARKER = "datasets/reference_image_transformation_dataset.py"
EXAMPLE_MARKER = "dataset.py"
HOW_TO = ("give --authors-framework (a checkout of christianpayer/MedicalDataAugmentationTool) and "
          "--authors-example (the hand_xray folder of christianpayer/MedicalDataAugmentationTool-"
          "HeatmapRegression); see benchmarks/README.md")


class AuthorsFrameworkUnavailable(RuntimeError):
    """The authors' code or the data cannot be used; the message says why and what to pass."""


def skip_reason(framework: Path | str | None, example: Path | str | None) -> str | None:
    """Why the authors' framework cannot be measured with these paths, or None when it can be tried."""
    if framework is None or example is None:
        return f"authors' framework not measured: {HOW_TO}"
    for path, marker, what in ((Path(framework), FRAMEWORK_MARKER, "--authors-framework"),
                               (Path(example), EXAMPLE_MARKER, "--authors-example")):
        if not (path / marker).is_file():
            return f"authors' framework not measured: {what} {path} has no {marker}; {HOW_TO}"
    return None


def hand_ids(data: Path) -> list[str]:
    """Ids of the radiographs in ``data/images/*.mha`` that have landmarks in ``data/setup/all.csv``."""
    images, points = data / "images", data / "setup" / "all.csv"
    if not images.is_dir() or not points.is_file():
        raise AuthorsFrameworkUnavailable(f"{data} needs images/*.mha and setup/all.csv")
    annotated = {line.split(",", 1)[0].strip() for line in points.read_text().splitlines() if line.strip()}
    ids = sorted(path.stem for path in images.glob("*.mha") if path.stem in annotated)
    if not ids:
        raise AuthorsFrameworkUnavailable(f"no image of {images} has landmarks in {points}")
    return ids


def example_folder(data: Path, ids: Sequence[str], folder: Path) -> Path:
    """The folder layout their hand example reads (``images``, ``setup/all.csv``, one cross-validation set
    ``setup/cv_reduced/set1/{train,test}.txt`` listing `ids`), made of links to `data` inside `folder`."""
    (folder / "setup" / "cv_reduced" / "set1").mkdir(parents=True)
    (folder / "images").symlink_to((data / "images").resolve(), target_is_directory=True)
    (folder / "setup" / "all.csv").symlink_to((data / "setup" / "all.csv").resolve())
    for name in ("train.txt", "test.txt"):
        (folder / "setup" / "cv_reduced" / "set1" / name).write_text("".join(f"{i}\n" for i in ids))
    return folder


def spine_example_folder(data: Path, folder: Path) -> tuple[Path, list[str]]:
    """The folder layout their spine example reads (``images/<id>.nii.gz``, ``setup/points_world_coordinates.
    csv``, ``setup/train_all.txt``), written into `folder` from a dataset folder of ours (``images/*.mha``,
    ``setup/all.csv`` in mm, NaN for missing vertebrae, ``setup/train.txt``): the training volumes that our
    loader draws from (`Dataset` with fold None), converted once, untimed."""
    import SimpleITK as sitk

    points, listed = data / "setup" / "all.csv", data / "setup" / "train.txt"
    if not points.is_file() or not listed.is_file():
        raise AuthorsFrameworkUnavailable(f"{data} needs setup/all.csv, setup/train.txt and images/*.mha")
    (folder / "images").mkdir(parents=True)
    (folder / "setup").mkdir()
    annotated = {line.split(",", 1)[0].strip() for line in points.read_text().splitlines() if line.strip()}
    ids = [image_id for image_id in listed.read_text().split()
           if image_id in annotated and (data / "images" / f"{image_id}.mha").is_file()]
    for image_id in ids:
        sitk.WriteImage(sitk.ReadImage(str(data / "images" / f"{image_id}.mha")),
                        str(folder / "images" / f"{image_id}.nii.gz"))
    if not ids:
        raise AuthorsFrameworkUnavailable(f"no id of {listed} has an image in {data / 'images'} and a row in "
                                          f"{points}")
    rows = [line.split(",") for line in points.read_text().splitlines() if line.strip()]
    (folder / "setup" / "points_world_coordinates.csv").write_text(
        "".join(",".join([row[0], *(value.strip() or "nan" for value in row[1:])]) + "\n" for row in rows))
    (folder / "setup" / "train_all.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder, ids


def authors_spine_samples_per_s(framework: Path | str, example: Path | str, data: Path | str,
                                num_samples: int = 20, seed: int = 0, *, repeats: int = 3,
                                warmup: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Training samples per second of the authors' spine example on one core, in a fresh child process.

    Their ``spine/dataset.py`` ``Dataset.dataset_train()`` at their configuration (`SPINE`): a volume of
    the cache, B-spline deformation of the input (5^3 nodes, 15 mm), translation 20 mm, a random crop along
    z (a factor of 0.5 of the 384 mm input), rotation 0.2, scale 0.1 per axis, SimpleITK resampling to 96 x
    96 x 192 at 2 mm, HU / 2048 with random shift and scale 0.15 and a clamp, the 26 landmarks mapped to the
    output. Args and result as `authors_hand_samples_per_s` (without the stage pass); `data` is a dataset
    folder of ours with volumes and their landmarks in mm (e.g. `python -m utils.synthetic spine_ct`).
    """
    reason = skip_reason(framework, example)  # example: their spine folder (spine/dataset.py)
    if reason is not None:
        raise AuthorsFrameworkUnavailable(reason)
    if num_samples < 1 or repeats < 1:
        raise ValueError(f"num_samples and repeats must be >= 1, received {num_samples} and {repeats}")
    with tempfile.TemporaryDirectory(prefix="authors_spine_") as scratch:
        folder, ids = spine_example_folder(Path(data), Path(scratch) / "spine_dataset")
        config = {"experiment": "spine", "framework": str(Path(framework).resolve()),
                  "example": str(Path(example).resolve()), "num_samples": num_samples, "seed": seed,
                  "repeats": repeats, "warmup": 2 * len(ids) if warmup is None else warmup,
                  "stage_samples": 0, "cpu": None, "ids": ids, "base_folder": str(folder) + os.sep, **SPINE}
        result = _run_child(config, Path(scratch), timeout_s)
    result.update(framework=config["framework"], example=config["example"], data=str(Path(data).resolve()))
    return result


def authors_hand_samples_per_s(
    framework: Path | str,
    example: Path | str,
    data: Path | str = REAL_HANDS,
    num_samples: int = 200,
    seed: int = 0,
    *,
    repeats: int = 3,
    warmup: int | None = None,
    stage_samples: int = 30,
    ids: Sequence[str] | None = None,
    cpu: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Training samples per second of the authors' hand example on one core, in a fresh child process.

    Args:
        framework: checkout of MedicalDataAugmentationTool (its ``datasets``, ``utils`` ... folders).
        example: the ``hand_xray`` folder of MedicalDataAugmentationTool-HeatmapRegression.
        data: folder with ``images/*.mha`` and ``setup/all.csv`` (37 landmarks per row, pixels).
        num_samples: samples per timed pass.
        seed: seeds Python's and NumPy's global generators (their augmentation draws from these).
        repeats: timed passes; the median pass is reported.
        warmup: untimed samples first (default: two passes over the images, so that all are cached).
        stage_samples: samples of the separate pass that times each stage (0: none).
        ids: the images to draw from (default: every image of ``data`` with landmarks).
        cpu: pin the child to this CPU (default: not pinned; it runs one thread either way).
        timeout_s: kill the child after this many seconds.

    Returns:
        ``samples_per_s`` (per core, median pass), ``ms_per_sample``, ``cpu_ms_per_sample`` (the process's
        CPU time, median pass), ``samples_per_cpu_s`` (1000 / median CPU ms), ``runs`` (every pass with its
        load average), ``stages`` (ms per sample), ``settings`` (their chain, read back from
        their objects), ``targets`` (shapes, dtypes, landmarks with a non-zero heatmap), ``threads``,
        ``composite_fix``, ``versions``, ``images``, ``load_average_start``/``_end``.

    Raises:
        AuthorsFrameworkUnavailable: paths missing or not the expected checkouts, or no usable data.
        RuntimeError: the child failed (the message ends with its output).
    """
    reason = skip_reason(framework, example)
    if reason is not None:
        raise AuthorsFrameworkUnavailable(reason)
    if num_samples < 1 or repeats < 1:
        raise ValueError(f"num_samples and repeats must be >= 1, received {num_samples} and {repeats}")
    data = Path(data)
    ids = list(ids) if ids is not None else hand_ids(data)
    config = {"experiment": "hand", "framework": str(Path(framework).resolve()),
              "example": str(Path(example).resolve()), "num_samples": num_samples, "seed": seed,
              "repeats": repeats, "warmup": 2 * len(ids) if warmup is None else warmup,
              "stage_samples": stage_samples, "cpu": cpu, "ids": ids, **HAND}
    with tempfile.TemporaryDirectory(prefix="authors_hand_") as scratch:
        config["base_folder"] = str(example_folder(data, ids, Path(scratch) / "hand_xray_dataset")) + os.sep
        result = _run_child(config, Path(scratch), timeout_s)
    result.update(framework=config["framework"], example=config["example"], data=str(data.resolve()))
    return result


def _run_child(config: dict[str, Any], scratch: Path, timeout_s: float | None) -> dict[str, Any]:
    """Runs `_child` on `config` in a fresh interpreter with every thread pool at one thread."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    load_start = os.getloadavg()
    config_file, result_file = scratch / "config.json", scratch / "result.json"
    config_file.write_text(json.dumps(config))
    # -I: neither the script's folder nor the working directory on sys.path (our utils, dataset)
    command = [sys.executable, "-I", str(Path(__file__).resolve()), "--child", str(config_file),
               str(result_file)]
    done = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if done.returncode != 0 or not result_file.is_file():
        output = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"the authors' framework failed (exit {done.returncode}):\n{output}")
    result = json.loads(result_file.read_text())
    result.update(load_average_start=list(load_start), load_average_end=list(os.getloadavg()))
    return result


# ---------------------------------------------------------------------------------------------------------
# the child process: imports their code, never ours


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data: numbers, strings, lists, None; callables and types by name; else None."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, type):
        return value.__name__
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # NumPy scalar
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return None


def _attributes(obj: Any, skip: Sequence[str] = ("name", "parents", "kwparents")) -> dict[str, Any]:
    """Settings of one of their objects (its instance attributes, not the last draw's ``current_*``)."""
    settings = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for key, value in vars(obj).items():
        if key in skip or key.startswith(("_", "current_")) or key in ("lock", "cache"):
            continue
        settings[key] = _plain(value)
    return settings


class _StageClock:
    """Wraps methods of their objects (as instance attributes, restored afterwards) to sum their times."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._restore: list[Callable[[], None]] = []

    def wrap(self, obj: Any, attribute: str, stage: str) -> None:
        had_own = attribute in vars(obj)
        original = getattr(obj, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        setattr(obj, attribute, timed)
        if had_own:
            self._restore.append(lambda: setattr(obj, attribute, original))
        else:
            self._restore.append(lambda: delattr(obj, attribute))

    def restore(self) -> None:
        while self._restore:
            self._restore.pop()()


def _isolate_imports(config: dict[str, Any]) -> None:
    """Put their checkouts first on sys.path and make sure none of our modules can be found instead."""
    ours = {Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]}
    sys.path[:] = [entry for entry in sys.path if entry and Path(entry).resolve() not in ours]
    sys.path[:0] = [config["example"], config["framework"]]
    clashing = [name for name in ("utils", "dataset", "datasets", "generators") if name in sys.modules]
    if clashing:
        raise RuntimeError(f"modules {clashing} were imported before the authors' code")


def _child(config_file: str, result_file: str) -> None:
    config = json.loads(Path(config_file).read_text())
    _isolate_imports(config)
    if config["cpu"] is not None:
        os.sched_setaffinity(0, {config["cpu"]})
    import random

    import numpy as np
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_info = threadpool_limits = None
    if threadpool_limits is not None:
        threadpool_limits(1)
    random.seed(config["seed"])
    np.random.seed(config["seed"])  # noqa: NPY002 (their code draws from NumPy's global generator)

    import transformations.intensity.np.normalize as their_normalize

    import dataset as example  # their hand_xray/dataset.py or spine/dataset.py

    for module, root in ((example, config["example"]), (their_normalize, config["framework"])):
        if not Path(module.__file__).resolve().is_relative_to(Path(root).resolve()):
            raise RuntimeError(f"{module.__name__} was imported from {module.__file__}, not from {root}")
    if config["experiment"] == "spine":
        train = example.Dataset(image_size=config["image_size"], image_spacing=config["image_spacing"],
                                sigma=config["sigma"], num_landmarks=config["num_landmarks"],
                                base_folder=config["base_folder"], cv=-1, data_format="channels_first",
                                save_debug_images=False).dataset_train()
        next_sample, composite_fix = train.get_next, None
    else:
        train, next_sample, composite_fix = _hand_train(example, config)

    for _ in range(config["warmup"]):
        next_sample()
    runs = []
    for _ in range(config["repeats"]):
        load = os.getloadavg()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(config["num_samples"]):
            next_sample()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        count = config["num_samples"]
        runs.append({"samples_per_s": count / wall, "ms_per_sample": 1e3 * wall / count,
                     "cpu_ms_per_sample": 1e3 * cpu / count, "cpu_per_wall": cpu / wall,
                     "load_average_start": list(load), "load_average_end": list(os.getloadavg())})
    median = sorted(runs, key=lambda run: run["samples_per_s"])[(len(runs) - 1) // 2]
    if config["experiment"] == "spine":
        entry = next_sample()
        stages, targets = [], {"generators": {key: list(np.shape(value)) for key, value in
                                              entry["generators"].items()}}
        settings = {"spatial_chain": [_attributes(transform) for transformation in train.transformations
                                      for transform in transformation.transformations],
                    "generators": [_attributes(generator) for generator in train.data_generators],
                    "datasources": [_attributes(source) for source in train.data_sources]}
    else:
        stages, targets, settings = _hand_details(example, their_normalize, train, next_sample, config)

    status = Path("/proc/self/status")
    native_threads = next((int(line.split()[1]) for line in status.read_text().splitlines()
                           if line.startswith("Threads:")), None) if status.is_file() else None
    threads = {"sitk_global_default_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
               "environment": {key: os.environ.get(key) for key in THREAD_VARIABLES},
               "threadpoolctl": ([{"api": pool.get("internal_api"), "threads": pool.get("num_threads")}
                                  for pool in threadpool_info()] if threadpool_info is not None else None),
               "native_threads_of_process": native_threads,
               "cpu_affinity": sorted(os.sched_getaffinity(0))}
    result = {"samples_per_s": median["samples_per_s"], "ms_per_sample": median["ms_per_sample"],
              "cpu_ms_per_sample": median["cpu_ms_per_sample"], "cpu_per_wall": median["cpu_per_wall"],
              "samples_per_cpu_s": 1e3 / statistics.median(run["cpu_ms_per_sample"] for run in runs),
              "num_samples": config["num_samples"], "repeats": config["repeats"], "warmup": config["warmup"],
              "seed": config["seed"], "runs": runs, "stages": stages, "targets": targets,
              "settings": settings, "threads": threads, "composite_fix": composite_fix,
              "images": config["ids"],
              "versions": {"numpy": np.__version__, "SimpleITK": sitk.Version_VersionString(),
                           "python": sys.version.split()[0]}}
    Path(result_file).write_text(json.dumps(result))


def _hand_train(hand_example: Any, config: dict[str, Any]) -> tuple[Any, Callable[[], dict], str | None]:
    """Their hand training dataset, a checked ``next_sample`` and the note of the composite fix (or None)."""
    hand = hand_example.Dataset(image_size=config["image_size"], heatmap_size=config["heatmap_size"],
                                num_landmarks=config["num_landmarks"], sigma=config["sigma"],
                                base_folder=config["base_folder"], cv=1, data_format="channels_first",
                                save_debug_images=False)
    train = hand.dataset_train()
    composite = train.reference_transformation
    composite_fix = None
    if getattr(composite, "use_deprecated_behaviour", True) is False:
        composite.use_deprecated_behaviour = True
        composite_fix = ("set Composite.use_deprecated_behaviour = True: without it this framework version "
                         "composes only graph-evaluated parents and the example's get(image=...) returns "
                         "an empty composite (identity transform)")
    chain_length = len(composite.transformations)

    def next_sample() -> dict[str, Any]:
        entry = train.get_next()
        count = entry["transformations"]["image"].GetNumberOfTransforms()
        if count != chain_length:
            raise RuntimeError(f"their sample transform holds {count} transforms, the chain {chain_length}")
        return entry

    return train, next_sample, composite_fix


def _hand_details(hand_example: Any, their_normalize: Any, train: Any, next_sample: Callable[[], dict],
                  config: dict[str, Any]) -> tuple[list, dict, dict]:
    """An untimed pass of the hand chain: ms per stage, the targets' shapes, and their chain's settings."""
    import numpy as np

    composite = train.reference_transformation
    image_generator, landmark_generator = train.data_generators["image"], train.data_generators["landmarks"]
    # the intensity settings (their ShiftScaleClamp is made inside each call)
    clock, clamps = _StageClock(), []
    shift_scale_clamp = hand_example.ShiftScaleClamp

    class Recording(shift_scale_clamp):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            clamps.append(_attributes(self))

    hand_example.ShiftScaleClamp = Recording
    for name, source in train.datasources.items():
        clock.wrap(source, "get", f"load ({name}, cached)")
    clock.wrap(composite, "get", "draw transform (composite)")
    clock.wrap(image_generator, "get", "image")
    clock.wrap(image_generator, "post_processing_np", "intensity (robust normalisation, shift/scale)")
    clock.wrap(landmark_generator, "get", "targets")
    clock.wrap(landmark_generator, "preprocess_landmarks", "landmarks to output (inverse transform)")
    valid, image_dtypes, start = [], set(), time.perf_counter()
    try:
        for _ in range(config["stage_samples"]):
            entry = next_sample()
            heatmaps = entry["generators"]["landmarks"]
            valid.append(int((heatmaps.reshape(heatmaps.shape[0], -1).max(axis=1) > 0).sum()))
            image_dtypes.add(str(entry["generators"]["image"].dtype))
    finally:
        clock.restore()
        hand_example.ShiftScaleClamp = shift_scale_clamp
    whole = time.perf_counter() - start
    stages, targets = [], {}
    if config["stage_samples"]:
        seconds = dict(clock.seconds)
        intensity = "intensity (robust normalisation, shift/scale)"
        inverse = "landmarks to output (inverse transform)"
        seconds["resample (SimpleITK) and to NumPy"] = seconds.pop("image") - seconds[intensity]
        seconds["37 dense heatmaps"] = seconds.pop("targets") - seconds[inverse]
        seconds["whole sample (with the stage clocks)"] = whole
        stages = [{"stage": stage, "ms": 1e3 * value / config["stage_samples"]}
                  for stage, value in seconds.items()]
        heatmaps = entry["generators"]["landmarks"]
        targets = {"heatmaps_shape": list(heatmaps.shape), "heatmaps_dtype": str(heatmaps.dtype),
                   "heatmaps_mb_per_sample": heatmaps.nbytes / 2**20,
                   "image_shape": list(entry["generators"]["image"].shape),
                   "image_dtypes": sorted(image_dtypes),
                   "landmarks_with_nonzero_heatmap_mean": statistics.fmean(valid),
                   "landmarks_with_nonzero_heatmap_min_max": [min(valid), max(valid)]}
    normalize_defaults = {name: _plain(parameter.default) for name, parameter in
                          inspect.signature(hand_example.normalize_robust).parameters.items()
                          if parameter.default is not parameter.empty}
    ramp = np.linspace(0.0, 1.0, 100001)
    percentiles = their_normalize.robust_min_max(ramp, normalize_defaults["consideration_factors"])
    settings = {
        "spatial_chain": [_attributes(transform) for transform in composite.transformations],
        "image_generator": _attributes(image_generator),
        "landmark_generator": _attributes(landmark_generator),
        "intensity": {"post_processing": _plain(image_generator.post_processing_np),
                      "normalize_robust_defaults": normalize_defaults,
                      "normalize_robust_percentiles": [round(100 * float(p), 6) for p in percentiles],
                      "shift_scale_clamp": clamps[0] if clamps else None},
        "image_datasource": _attributes(train.datasources["image_datasource"]),
        "iterator": {"class": type(train.iterator).__name__, "random": train.iterator.random,
                     "ids": list(train.iterator.id_list)},
    }
    return stages, targets, settings


# ---------------------------------------------------------------------------------------------------------
# command line


def describe(result: dict[str, Any]) -> str:
    """The measurement as text: the rate per core, each pass, the stages and their chain's settings."""
    from benchmarks.common import format_table

    settings = result["settings"]
    chain = ", ".join(
        step["class"].rsplit(".", 2)[-2] + "." + step["class"].rsplit(".", 1)[-1]
        + "(" + ", ".join(f"{key}={value}" for key, value in step.items() if key not in ("class", "dim"))
        + ")" for step in settings["spatial_chain"])
    image, heatmap = settings["image_generator"], settings["landmark_generator"]
    intensity = settings["intensity"]
    clamp = intensity["shift_scale_clamp"] or {}
    targets = result["targets"]
    lines = [
        f"authors' framework, hand_xray example: {len(result['images'])} radiographs of {result['data']}, "
        f"one core (SimpleITK {result['versions']['SimpleITK']}, NumPy {result['versions']['numpy']})",
        f"load average (1 min) at start {result['load_average_start'][0]:.2f}, "
        f"at end {result['load_average_end'][0]:.2f}",
        format_table([{"run": k + 1, **run} for k, run in enumerate(result["runs"])],
                     [("run", "pass", "d"), ("samples_per_s", "samples/s", ".1f"),
                      ("ms_per_sample", "ms/sample", ".2f"), ("cpu_ms_per_sample", "CPU ms/sample", ".2f"),
                      ("cpu_per_wall", "CPU/wall", ".2f")]),
        f"median of {result['repeats']} passes of {result['num_samples']} samples: "
        f"{result['samples_per_s']:.1f} samples/s per core, {result['ms_per_sample']:.2f} ms/sample "
        f"(per CPU second of the process: {result['samples_per_cpu_s']:.1f} samples)",
    ]
    if result["stages"]:
        lines.append(format_table(result["stages"], [("stage", "stage (separate pass)", "s"),
                                                     ("ms", "ms/sample", ".2f")]))
    lines += [
        f"chain: {chain}",
        f"input {image['output_size']} ({image['interpolator']}, default pixel "
        f"{image['resample_default_pixel_value']}, {image['data_format']}); "
        f"heatmaps {heatmap['output_size']}, sigma {heatmap['sigma']}, "
        f"normalize_center {heatmap['normalize_center']}, scale {heatmap['scale_factor']}, "
        f"min_max_transformation_distance {heatmap['min_max_transformation_distance']}",
        f"intensity: {intensity['post_processing']} = normalize_robust (percentiles "
        f"{intensity['normalize_robust_percentiles']} -> "
        f"{intensity['normalize_robust_defaults'].get('out_range')}) "
        f"then shift {clamp.get('random_shift')}, scale {clamp.get('random_scale')}, "
        f"clamp [{clamp.get('clamp_min')}, {clamp.get('clamp_max')}]",
    ]
    if targets:
        lines.append(
            f"targets: heatmaps {targets['heatmaps_shape']} {targets['heatmaps_dtype']} "
            f"({targets['heatmaps_mb_per_sample']:.1f} MiB/sample), image {targets['image_shape']} "
            f"{'/'.join(targets['image_dtypes'])}; landmarks with a non-zero heatmap: "
            f"{targets['landmarks_with_nonzero_heatmap_mean']:.1f} of {targets['heatmaps_shape'][0]}"
            f" on average (min/max {targets['landmarks_with_nonzero_heatmap_min_max']})")
    threads = result["threads"]
    lines.append(f"threads: SimpleITK {threads['sitk_global_default_threads']}, threadpoolctl "
                 f"{threads['threadpoolctl']}, CPUs allowed {threads['cpu_affinity']}")
    if result["composite_fix"]:
        lines.append(f"note: {result['composite_fix']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-framework", type=Path, help="checkout of MedicalDataAugmentationTool")
    parser.add_argument("--authors-example", type=Path,
                        help="the hand_xray folder of MedicalDataAugmentationTool-HeatmapRegression")
    parser.add_argument("--data", type=Path, default=REAL_HANDS, help="images/*.mha and setup/all.csv")
    parser.add_argument("--samples", type=int, default=200, help="samples per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the median is reported)")
    parser.add_argument("--stage-samples", type=int, default=30, help="samples of the stage pass (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", type=int, help="pin the measuring process to this CPU")
    parser.add_argument("--output", default="benchmarks/results/authors.json", help="results JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    reason = skip_reason(args.authors_framework, args.authors_example)
    if reason is not None:
        print(reason)
        return {"skipped": reason}
    result = authors_hand_samples_per_s(args.authors_framework, args.authors_example, args.data, args.samples,
                                        args.seed, repeats=args.repeats, stage_samples=args.stage_samples,
                                        cpu=args.cpu)
    print(describe(result))
    from benchmarks.common import machine_info, write_results

    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return write_results(args.output, "authors", config, {"hand": result}, machine=machine_info())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
