"""Loader throughput: augmented samples per second, per stage, per core and with N worker processes.

Three configurations (issues 5 and 11):
- hand: 2D radiographs (the real ones in ../shared/data/hand_xray_real when present, else synthetic
  phantoms of the same size) -> 256 x 256 input + 37 landmark points on the 256 x 256 heatmap grid, the full
  training chain (fit to size, translation, rotation, scaling, 5 x 5 B-spline deformation, intensity
  augmentation);
- volume: synthetic 256^3 volumes of 1 mm voxels (a torso phantom with air around it) -> 128^3 input + 10
  points on the 128^3 grid, the 3D training chain;
- spine: synthetic spine CTs of 2 mm voxels, 250-450 mm long -> the authors' 96 x 96 x 192 input at 2 mm
  (`--data-kind spine_ct`: random crops along the long axis, mm augmentation, HU intensities) + 26 points.

The targets are drawn in the model (`utils.landmarks.targets`), not here. For each configuration it reports
(1) the time of every stage of one sample in this process (transform draw, resampling, intensity, landmark
mapping), next to SimpleITK's single-threaded resampling of the same transform, (2) the samples per second
that a consumer receives from `dataset.Dataset.training_batches` with 0 (in-process), 1, ..., N workers,
and the peak resident memory of each worker process (VmHWM).

Commands (from the repository root)::

    python -m benchmarks.loader --output benchmarks/results/loader.json
    python -m benchmarks.loader --configs hand --workers 0 1 2 --batches 40
    python -m benchmarks.loader --quick --output /tmp/loader_quick.json        # seconds: smoke test
    python -m benchmarks.loader --configs hand --workers 0 --authors-framework PATH --authors-example PATH

With ``--authors-framework`` and ``--authors-example`` (checkouts of the authors' code, see
benchmarks/README.md), the hand configuration is also measured with the authors' framework in the same run
(`benchmarks.authors`: their hand_xray chain, one core), and so is the spine configuration (their spine
chain on the same volumes, from the ``spine`` folder beside ``--authors-example``); the ratio per core is
reported: our in-process samples/s (one core) over theirs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import SimpleITK as sitk

from benchmarks.authors import (
    HOW_TO,
    AuthorsFrameworkUnavailable,
    authors_hand_samples_per_s,
    authors_spine_samples_per_s,
    skip_reason,
)
from benchmarks.common import format_table, machine_info, time_calls, write_results
from dataset import Dataset
from utils.data.order import sample_rng
from utils.data.sample import heatmap_points
from utils.io.id_list import write_id_list
from utils.io.image import read_image
from utils.synthetic import generate_hand_dataset, generate_spine_dataset, generate_volume_dataset
from utils.transforms.warp import warp

REAL_HANDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_xray_real"
CONFIGS = {
    # name: (image size (x, y[, z]), landmarks, batch size, dim, data kind)
    "hand": ((256, 256), 37, 8, 2, "hand_xray"),
    "volume": ((128, 128, 128), 10, 2, 3, "custom3d"),
    "spine": ((96, 96, 192), 26, 1, 3, "spine_ct"),  # the authors' spine input: 2 mm, crops of long volumes
}
QUICK_CONFIGS = {"hand": ((64, 64), 37, 4, 2, "hand_xray"), "volume": ((24, 24, 24), 10, 2, 3, "custom3d"),
                 "spine": ((24, 24, 48), 26, 1, 3, "spine_ct")}


def hand_folder(cache: Path, quick: bool) -> tuple[Path, str]:
    """A dataset folder of hand radiographs: the real ones (linked, never copied) or phantoms."""
    if REAL_HANDS.is_dir() and not quick:
        folder = Path(tempfile.mkdtemp(prefix="loader_hands_"))
        (folder / "setup").mkdir()
        (folder / "images").symlink_to(REAL_HANDS / "images")
        (folder / "setup" / "all.csv").symlink_to(REAL_HANDS / "setup" / "all.csv")
        ids = sorted(path.name.split(".")[0] for path in (REAL_HANDS / "images").iterdir())
        write_id_list(folder / "setup" / "train.txt", ids)
        write_id_list(folder / "setup" / "test.txt", ids[:1])
        return folder, "real radiographs (Digital Hand Atlas)"
    folder = cache / ("hand_quick" if quick else "hand")
    if not folder.is_dir():
        generate_hand_dataset(folder, num_images=6, seed=0, pixels_per_mm=1.5 if quick else None)
    return folder, "synthetic hand phantoms"


def volume_folder(cache: Path, quick: bool) -> tuple[Path, str]:
    """A dataset folder of synthetic volumes of 256^3 voxels of about 1 mm (32^3 of 8 mm with --quick)."""
    size = (32, 32, 32) if quick else (256, 256, 256)
    folder = cache / f"volume{size[0]}_fov256mm"
    if not folder.is_dir():
        generate_volume_dataset(folder, num_images=4, seed=0, size=size, field_of_view=(256.0, 256.0, 256.0))
    return folder, f"synthetic volumes of {size[0]}^3 voxels, 256 mm field of view"


def spine_folder(cache: Path, quick: bool) -> tuple[Path, str]:
    """A dataset folder of spine CT phantoms (about 85 x 85 x 125-225 voxels of 2 mm, 26 vertebrae, those
    outside each scan missing)."""
    folder = cache / ("spine_quick" if quick else "spine")
    if not folder.is_dir():
        generate_spine_dataset(folder, num_images=3 if quick else 8, seed=0)
    return folder, "synthetic spine CTs (2 mm, 250-450 mm long)"


def make_dataset(folder: Path, config: tuple, workers: int) -> Dataset:
    size, landmarks, batch, _, kind = config
    return Dataset(folder, spec=kind, image_size=size, heatmap_size=size, num_landmarks=landmarks, fold=None,
                   batch_size=batch, workers=workers, seed=0)


def stage_times(dataset: Dataset, repeats: int) -> list[dict[str, Any]]:
    """Milliseconds per stage of one training sample, made in this process from a cached source image."""
    samples = dataset._samples(dataset.train_ids, validation=False)
    generator = samples.generator
    source, landmarks = samples._source(0), samples.landmarks[0]
    rngs = iter([sample_rng(1, 0, k) for k in range(10 * (repeats + 2))])
    # every stage cycles through the same random transforms (the cost of a warp varies with the draw)
    transforms = [generator.spatial.sample(source.geometry, generator.output, next(rngs)) for _ in range(8)]
    draws = itertools.cycle(range(len(transforms)))
    image = np.zeros(generator.output.shape, np.float32)
    stages = {
        "draw transform": lambda: generator.spatial.sample(source.geometry, generator.output, next(rngs)),
        "resample (compiled)": lambda: warp(source.warp_source, transforms[next(draws)], out=image),
        "intensity": lambda: generator.intensity(image, next(rngs), out=image),
        "map landmarks (points + mask)": lambda: heatmap_points(
            generator.heatmap_geometry, transforms[next(draws)].input_to_output(landmarks)),
        "whole sample": lambda: generator(source, landmarks, next(rngs)),
    }
    rows = [{"stage": name, "ms": 1e3 * time_calls(call, warmup=1, repeats=repeats).median}
            for name, call in stages.items()]
    spec = dataset.spec  # the image as the loader reads it (spacing, frame), for SimpleITK's resampling
    original = sitk.Cast(read_image(samples.paths[0], spec.ignore_spacing, dataset.dim, spec.reset_frame),
                         sitk.sitkFloat32)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        reference = time_calls(lambda: transforms[next(draws)].resample(original), warmup=1,
                               repeats=max(1, repeats // 4))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    rows.append({"stage": "resample (SimpleITK, 1 thread, full image)", "ms": 1e3 * reference.median})
    return rows


def worker_peak_rss() -> list[int]:
    """Peak resident set size (VmHWM, bytes) of every child process of this one; [] where unknown."""
    peaks = []
    for child in psutil.Process().children(recursive=True):
        try:
            text = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    return peaks


def throughput(folder: Path, config: tuple, workers: int, batches: int) -> dict[str, Any]:
    """Samples per second received from the training stream, after the workers' warm-up."""
    with make_dataset(folder, config, workers) as dataset:
        stream = dataset.training_batches()  # as main.py consumes it
        # start the workers, fill their image caches and compile
        for _ in range(2 + 3 * max(1, workers)):
            next(stream)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        seconds = time.perf_counter() - start
        peaks = worker_peak_rss() if workers else []
        rate = batches * config[2] / seconds
    return {"workers": workers, "samples_per_s": rate,
            "per_core": rate / max(workers, 1),
            "worker_peak_rss_mb": max(peaks) / 2**20 if peaks else None}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default 0 .. number of cores)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per worker count")
    parser.add_argument("--repeats", type=int, default=40, help="timed repeats per stage")
    parser.add_argument("--cache", default="benchmarks/results/data", help="folder for generated data")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of seconds")
    parser.add_argument("--output", default="benchmarks/results/loader.json", help="results JSON file")
    parser.add_argument("--authors-framework", type=Path, help="checkout of MedicalDataAugmentationTool")
    parser.add_argument("--authors-example", type=Path,
                        help="the hand_xray folder of MedicalDataAugmentationTool-HeatmapRegression")
    parser.add_argument("--authors-samples", type=int, default=100, help="samples per timed pass of theirs")
    parser.add_argument("--authors-spine-samples", type=int, default=10,
                        help="samples per timed pass of their spine chain (seconds each)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    workers = args.workers or ([0, 1] if args.quick else list(range(0, (os.cpu_count() or 1) + 1)))
    batches, repeats = (3, 3) if args.quick else (args.batches, args.repeats)
    cache = Path(args.cache)
    results: dict[str, Any] = {}
    for name in args.configs:
        folder, data = {"hand": hand_folder, "volume": volume_folder, "spine": spine_folder}[name](
            cache, args.quick)
        with make_dataset(folder, configs[name], 0) as dataset:
            stages = stage_times(dataset, repeats)
        rates = [throughput(folder, configs[name], count, batches) for count in workers]
        size, landmarks, batch, *_ = configs[name]
        print(f"\n{name}: {data}, input {'x'.join(map(str, size))} + {landmarks} points, batch {batch}")
        print(format_table(stages, [("stage", "stage", "s"), ("ms", "ms/sample", ".2f")]))
        print(format_table(rates, [("workers", "workers", "d"), ("samples_per_s", "samples/s", ".1f"),
                                   ("per_core", "per worker", ".1f"),
                                   ("worker_peak_rss_mb", "worker peak RSS MB", ".0f")]))
        results[name] = {"data": data, "input_size": list(size), "num_landmarks": landmarks,
                         "batch_size": batch, "stages": stages, "throughput": rates}
        if name in ("hand", "spine") and not args.quick:
            results[name]["authors"] = side_by_side(args, name, folder, configs[name], rates, batches)
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return write_results(args.output, "loader", config, results, machine=machine_info())


def side_by_side(args: argparse.Namespace, name: str, folder: Path, config: tuple, rates: list[dict],
                 batches: int) -> dict[str, Any]:
    """The authors' framework on the same images (their hand example on the radiographs, or their spine
    example on the spine volumes), then ours in-process again: samples/s per core."""
    reason = skip_reason(args.authors_framework, args.authors_example)
    if reason is not None:
        print(f"authors' framework not measured: {HOW_TO}")
        return {"skipped": reason}
    try:
        if name == "spine":
            spine_example = Path(args.authors_example).parent / "spine"
            theirs = authors_spine_samples_per_s(args.authors_framework, spine_example, folder,
                                                 args.authors_spine_samples, repeats=3, timeout_s=3600)
        else:
            theirs = authors_hand_samples_per_s(args.authors_framework, args.authors_example, REAL_HANDS,
                                                args.authors_samples, repeats=3, timeout_s=3600)
    except (AuthorsFrameworkUnavailable, RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"authors' framework not measured for {name}: {error}")  # ours is kept and written
        return {"failed": str(error)}
    ours = [rate["samples_per_s"] for rate in rates if rate["workers"] == 0]
    ours.append(throughput(folder, config, 0, batches)["samples_per_s"])  # after theirs: same conditions
    mine = float(np.median(ours))
    print(f"authors' framework: {theirs['samples_per_s']:.2f} samples/s per core "
          f"({theirs['ms_per_sample']:.1f} ms/sample); ours in-process: {mine:.1f} samples/s "
          f"(runs {', '.join(f'{r:.1f}' for r in ours)}): {mine / theirs['samples_per_s']:.1f}x per core")
    return {"authors": theirs, "ours_in_process": ours, "ratio_per_core": mine / theirs["samples_per_s"]}


if __name__ == "__main__":
    main()
