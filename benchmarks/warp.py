"""The resampling kernels against an earlier revision's, in one process: the same output, and the speed-up.

Loads `utils/transforms/warp.py` as it was at a git revision (``git show REV:utils/transforms/warp.py``)
beside today's, draws training transforms of the loader benchmark's configurations (`benchmarks.loader`:
hand radiographs to 256 x 256, 256^3 volumes to 128^3), checks that both kernels give the same arrays, then
times them in alternating rounds (every transform once with each kernel per round), so that a slow spell of
a shared machine hits both. One core: the kernels are single-threaded.

Commands (from the repository root)::

    python -m benchmarks.warp --against 4a808f5
    python -m benchmarks.warp --against 4a808f5 --configs volume --rounds 12
    python -m benchmarks.warp --quick --against HEAD --output /tmp/warp_quick.json   # seconds: smoke test

The earlier module runs on today's `WarpSource` and transforms, so revisions from 7d20dfd on (the padded
source with its two-voxel border) compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.common import format_table, machine_info, write_results
from benchmarks.loader import CONFIGS, QUICK_CONFIGS, hand_folder, make_dataset, volume_folder
from utils.data.order import sample_rng
from utils.transforms import warp as warp_now

KERNEL_PATH = "utils/transforms/warp.py"


def kernel_at(revision: str, folder: Path) -> ModuleType:
    """`utils/transforms/warp.py` as it was at `revision`, imported as a module of its own from `folder`."""
    shown = subprocess.run(["git", "show", f"{revision}:{KERNEL_PATH}"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent.parent)
    if shown.returncode != 0:
        raise SystemExit(f"benchmarks.warp: git cannot show {KERNEL_PATH} at {revision!r}: "
                         f"{shown.stderr.strip()}")
    path = folder / "warp_earlier.py"
    path.write_text(shown.stdout, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("warp_earlier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def training_warps(name: str, config: tuple, cache: Path, quick: bool, per_image: int) -> list[tuple]:
    """(prepared source, transform) pairs of the configuration's training chain: `per_image` transforms of
    each of the first three training images."""
    folder, _ = {"hand": hand_folder, "volume": volume_folder}[name](cache, quick)
    with make_dataset(folder, config, 0) as dataset:
        samples = dataset._samples(dataset.train_ids, validation=False)
        generator = samples.generator
        pairs = []
        for image in range(min(3, len(dataset.train_ids))):
            source = samples._source(image)
            pairs += [(source.warp_source, generator.spatial.sample(source.geometry, generator.output,
                                                                    sample_rng(1, image, k)))
                      for k in range(per_image)]
    return pairs


def compare(earlier: ModuleType, pairs: list[tuple], rounds: int) -> dict[str, Any]:
    """Largest difference between the kernels' outputs, then their times in alternating rounds."""
    difference = max(float(np.abs(earlier.warp(source, transform) - warp_now.warp(source, transform)).max())
                     for source, transform in pairs)
    out = np.empty(pairs[0][1].output.shape, np.float32)
    times: dict[str, list[list[float]]] = {"earlier": [], "now": []}
    for _ in range(rounds):
        for name, module in (("earlier", earlier), ("now", warp_now)):
            round_times = []
            for source, transform in pairs:
                start = time.perf_counter()
                module.warp(source, transform, out=out)
                round_times.append(time.perf_counter() - start)
            times[name].append(round_times)
    earlier_ms = 1e3 * statistics.median(t for r in times["earlier"] for t in r)
    now_ms = 1e3 * statistics.median(t for r in times["now"] for t in r)
    per_round = [statistics.median(a) / statistics.median(b)
                 for a, b in zip(times["earlier"], times["now"], strict=True)]
    return {"transforms": len(pairs), "rounds": rounds, "max_abs_difference": difference,
            "earlier_ms": earlier_ms, "now_ms": now_ms, "speedup": earlier_ms / now_ms,
            "speedup_per_round": per_round}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD", help="git revision of the earlier kernel (default HEAD)")
    parser.add_argument("--configs", nargs="+", choices=("hand", "volume"), default=["hand", "volume"])
    parser.add_argument("--per-image", type=int, default=8, help="transforms of each of three images")
    parser.add_argument("--rounds", type=int, default=8, help="alternating timed rounds")
    parser.add_argument("--cache", default="benchmarks/results/data", help="folder for generated data")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of seconds")
    parser.add_argument("--output", default="benchmarks/results/warp.json", help="results JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    per_image, rounds = (2, 2) if args.quick else (args.per_image, args.rounds)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="warp_earlier_") as folder:
        earlier = kernel_at(args.against, Path(folder))
        for name in args.configs:
            pairs = training_warps(name, configs[name], Path(args.cache), args.quick, per_image)
            results[name] = {"output_size": list(configs[name][0]), **compare(earlier, pairs, rounds)}
    rows = [{"config": name, **result, "rounds_range": f"{min(result['speedup_per_round']):.2f}-"
             f"{max(result['speedup_per_round']):.2f}x"} for name, result in results.items()]
    print(f"warp kernel at {args.against} against the working tree, one core")
    print(format_table(rows, [("config", "config", "s"), ("transforms", "transforms", "d"),
                              ("max_abs_difference", "max |difference|", ".3g"),
                              ("earlier_ms", f"{args.against} ms", ".2f"), ("now_ms", "now ms", ".2f"),
                              ("speedup", "speed-up", ".2f"), ("rounds_range", "per round", "s")]))
    return write_results(args.output, "warp", vars(args), results, machine=machine_info())


if __name__ == "__main__":
    main()
