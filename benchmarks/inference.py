"""Inference throughput: test images per second including decoding and mapping back, and where the time goes.

Per network, preset size ("cpu" and/or "paper", as `main.py` trains it) and batch size, three stages are
timed separately on one batch (after warm-up):

1. predict: ``utils.training.evaluation.predict`` (the network's ``predict_on_batch``), heatmaps to host;
2. decode: `utils.landmarks.decode.decode_heatmaps` for every image of the batch (argmax + sub-pixel);
3. map back: heatmap index -> output physical (``Geometry.index_to_physical`` of the heatmap grid) ->
   original image (``SampleTransform.output_to_input`` of the validation chain), per image.

Images/s = batch size / (sum of the three medians). The images are random (timing does not depend on them);
each sample's transform fits a radiograph-sized input (1500 x 2000 px, 0.1 mm) to the network input, as
the validation chain does.

Commands (from the repository root)::

    python -m benchmarks.inference --sizes cpu paper --output benchmarks/results/inference.json
    python -m benchmarks.inference --quick --output /tmp/inference_quick.json     # seconds: smoke test
    KERAS_BACKEND=jax python -m benchmarks.inference --sizes paper --repeats 20   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from utils.runtime import quiet_tensorflow_start

with quiet_tensorflow_start():  # quiet C++ logs, oneDNN kernels
    import keras  # noqa: F401  (TensorFlow's start, without its notices)

import numpy as np  # noqa: E402

from benchmarks.common import format_table, time_calls, write_results  # noqa: E402
from benchmarks.training import NUM_LANDMARKS, QUICK_SIZE, Size, preset_size  # noqa: E402
from network import NETWORKS, build_network, heatmap_factor  # noqa: E402
from utils.landmarks.decode import decode_heatmaps  # noqa: E402
from utils.training.evaluation import predict  # noqa: E402
from utils.transforms.affine import CenterToOrigin, FitToOutput, OriginToOutputCenter  # noqa: E402
from utils.transforms.geometry import Geometry  # noqa: E402
from utils.transforms.spatial import SampleTransform, SpatialAugmentation  # noqa: E402

# --- parameters --------------------------------------------------------------------------------------------
ORIGINAL_SIZE = (1500, 2000)  # original radiograph size (x, y), pixels: within the real 1200-1600 x 1900-2350
ORIGINAL_SPACING = (0.1, 0.1)  # original pixel spacing (x, y), mm
STAGES = ("predict", "decode", "map_back")


def validation_transforms(side: int, count: int) -> list[SampleTransform]:
    """`count` validation-chain transforms (no random part) from an `ORIGINAL_SIZE` radiograph to a square
    network input of `side` pixels."""
    chain = SpatialAugmentation([CenterToOrigin(), FitToOutput(), OriginToOutputCenter()])
    original = Geometry.grid(ORIGINAL_SIZE, spacing=ORIGINAL_SPACING)
    return [chain.sample(original, Geometry.grid((side, side)), None) for _ in range(count)]


def measure_inference(network: str, size: Size, batch_size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Times predict, decode and map back of one batch of `batch_size` images for `network` at `size`.

    Returns:
        A dict with the configuration, ``<stage>_ms`` (median per batch) for each of `STAGES`,
        ``total_ms``, ``images_per_s``, ``<stage>_percent`` (share of the total) and the raw timings.
    """
    side = size.input_size[0]  # square 2D sizes (the 2D presets)
    model = build_network(network, (side, side, 1), NUM_LANDMARKS, num_filters=size.num_filters)
    factor = heatmap_factor(network)
    images = np.random.default_rng(0).uniform(-1.0, 1.0, (batch_size, side, side, 1)).astype(np.float32)
    transforms = validation_transforms(side, batch_size)
    heatmap_geometry = transforms[0].output.downsampled(factor)

    heatmaps = predict(model, images, batch_size)
    points = [decode_heatmaps(maps)[0] for maps in heatmaps]

    def map_back():
        return [
            transform.output_to_input(heatmap_geometry.index_to_physical(p))
            for p, transform in zip(points, transforms, strict=True)
        ]

    timings = {
        "predict": time_calls(lambda: predict(model, images, batch_size), warmup, repeats),
        "decode": time_calls(lambda: [decode_heatmaps(maps) for maps in heatmaps], warmup, repeats),
        "map_back": time_calls(map_back, warmup, repeats),
    }
    total = sum(timing.median for timing in timings.values())
    result: dict[str, Any] = {
        "network": network,
        "input_size": side,
        "heatmap_size": side // factor,
        "num_filters": size.num_filters,
        "batch_size": batch_size,
        "total_ms": 1e3 * total,
        "images_per_s": batch_size / total,
    }
    for stage, timing in timings.items():
        result[f"{stage}_ms"] = 1e3 * timing.median
        result[f"{stage}_percent"] = 100.0 * timing.median / total
    result["timings"] = {stage: timing.to_dict() for stage, timing in timings.items()}
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--sizes", nargs="+", choices=("cpu", "paper"), default=["cpu", "paper"],
                        help="main.py presets whose input sizes and filters are used")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per stage first")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage")
    parser.add_argument("--quick", action="store_true",
                        help="tiny network, 1 repeat: a smoke test of seconds")
    parser.add_argument("--output", default="benchmarks/results/inference.json", help="results JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = ["quick"], 1
    if args.warmup < 0 or args.repeats < 1 or min(args.batch_sizes) < 1:
        parser.error(f"need --warmup >= 0, --repeats >= 1 and batch sizes >= 1, received --warmup "
                     f"{args.warmup}, --repeats {args.repeats}, --batch-sizes {args.batch_sizes}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    rows = []
    for preset in args.sizes:
        for network in args.networks:
            size = QUICK_SIZE if preset == "quick" else preset_size(preset, network)
            for batch_size in args.batch_sizes:
                print(f"inference {network} at {size.label} px, batch {batch_size} ...", flush=True)
                rows.append({"preset": preset,
                             **measure_inference(network, size, batch_size, args.warmup, args.repeats),
                             "load_average": list(os.getloadavg())})
    print(format_table(
        rows,
        [("network", "network", "s"), ("input_size", "px", "d"), ("batch_size", "batch", "d"),
         ("images_per_s", "img/s", ".2f"), ("total_ms", "total ms", ".1f"),
         ("predict_ms", "predict ms", ".1f"),
         ("decode_ms", "decode ms", ".2f"), ("map_back_ms", "map back ms", ".2f"),
         ("predict_percent", "predict %", ".1f"), ("decode_percent", "decode %", ".1f"),
         ("map_back_percent", "map back %", ".1f")],
    ))
    results = {"inference": rows}
    write_results(args.output, "inference", vars(args), results)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
