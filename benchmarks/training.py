"""Training throughput of every network, float32 and mixed precision, and the SCN spatial-part comparison.

What it measures, per network and precision: milliseconds per training step and images per second after
warm-up (compilation), the FLOPs of a step (forward + backward = 3 x the analytic forward count of
`network.count_flops`), the achieved FLOP rate and its share of the peak rate (``--peak-tflops``, else the
measured dense matmul rate of the device in the compute dtype, `benchmarks.common.matmul_tflops`), peak host
memory (RSS) and, on a GPU, peak device memory. The training step is the project's own:
`utils.training.model.HeatmapTrainer` (the network, Gaussian targets drawn in the graph from the batch's
points with fixed or, with ``--targets learned``, learned sigmas, or with ``--targets none`` an all-zero
target that tells the rendering's share of the step; L2 heatmap loss, SGD with Nesterov momentum)
and ``train_on_batch``, on random batches of images and points.

Second part: the SCN's spatial configuration as ONE leave-one-out (masked N -> N) convolution, as
`network.LeaveOneOutConv` computes it, against the naive formulation of N separate convolutions, each over
the other N - 1 channels (built here only). Both get the same weights; the script asserts that they give
the same output, then times forward and forward + backward (``train_on_batch``).

Each measurement runs in a fresh process (``--isolate``, the default except with ``--quick``), so peak
memory figures belong to one network and the global dtype policy never leaks.

Commands (from the repository root)::

    python -m benchmarks.training --size cpu --precisions float32 mixed_bfloat16 mixed_float16 \\
        --output benchmarks/results/training_cpu.json
    python -m benchmarks.training --size paper --steps 1 --output benchmarks/results/training_paper.json
    python -m benchmarks.training --quick --output /tmp/training_quick.json      # seconds: smoke test
    KERAS_BACKEND=jax python -m benchmarks.training --size paper --steps 10 --peak-tflops 989 \\
        --output benchmarks/results/training_paper_gpu.json                   # on a GPU machine
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from utils.runtime import configure_graph_optimizer, jit_compile, quiet_tensorflow_start

with quiet_tensorflow_start():  # quiet C++ logs, oneDNN kernels
    import keras

import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    PeakMemory,
    device_peak_memory,
    format_table,
    machine_info,
    matmul_tflops,
    reset_device_peak_memory,
    run_isolated,
    time_calls,
    write_results,
)
from network import NETWORKS, LeaveOneOutConv, build_network, count_flops  # noqa: E402
from utils.landmarks.targets import GaussianTargets  # noqa: E402

configure_graph_optimizer()  # the graph options main.py trains with

# --- parameters --------------------------------------------------------------------------------------------
NUM_LANDMARKS = 37  # hand X-ray setup


@dataclass(frozen=True)
class Size:
    """A network size: input size (x, y[, z]) in pixels, filters per convolution, batch size, landmarks."""

    input_size: tuple[int, ...]
    num_filters: int
    batch_size: int
    num_landmarks: int = NUM_LANDMARKS

    @property
    def label(self) -> str:
        return "x".join(map(str, self.input_size))


# The sizes of main.py's presets (image_size, num_filters, batch_size; per-network exceptions), kept here so
# that the benchmarks run without the data pipeline; tests/test_benchmarks.py checks them against main.py.
PRESET_SIZES = {
    "cpu": {"default": Size(input_size=(128, 128), num_filters=16, batch_size=8)},
    "paper": {
        "default": Size(input_size=(256, 256), num_filters=128, batch_size=8),
        "conv_only": Size(input_size=(128, 128), num_filters=128, batch_size=8),  # the paper's ConvOnly-Net
    },
}
# 3D sizes: the authors' spine CT setup (REFERENCE.md section 2: 26 vertebrae, input 96 x 96 x 192, batch 1,
# SCN with F = 64), for every 3D network: what a full-size 3D run costs per step; and main.py's CPU-sized 3D
# defaults (`--dim 3`, main.CPU_3D; checked against main.py by tests/test_benchmarks.py).
OTHER_SIZES = {
    "spine": {"default": Size(input_size=(96, 96, 192), num_filters=64, batch_size=1, num_landmarks=26)},
    "cpu3d": {"default": Size(input_size=(32, 32, 48), num_filters=16, batch_size=2, num_landmarks=10)},
}
QUICK_SIZE = Size(input_size=(32, 32), num_filters=8, batch_size=2)  # smoke test, seconds
BACKWARD_FACTOR = 3  # forward + backward FLOPs ~ 3 x forward (weight and input gradients cost one each)
LEARNING_RATE = 1e-7  # the paper's SGD step size; the value does not change the timing

# SCN spatial part at the paper size: 37 heatmaps of 256 / 8 = 32 pixels, 15 x 15 kernels
SCN_SPATIAL = {"batch_size": 8, "grid": 32, "kernel_size": 15, "channels": NUM_LANDMARKS}
SCN_SPATIAL_QUICK = {"batch_size": 2, "grid": 8, "kernel_size": 5, "channels": 6}


def resolve_precision(precision: str) -> str:
    """Keras dtype policy name: "mixed" is mixed_float16 on a GPU and mixed_bfloat16 on a CPU."""
    if precision != "mixed":
        return precision
    from benchmarks.common import accelerator_name

    return "mixed_float16" if accelerator_name() is not None else "mixed_bfloat16"


def preset_size(preset: str, network: str) -> Size:
    """The size `main.py` trains `network` at with `preset` ("cpu" or "paper"), see `PRESET_SIZES`, or that
    of `OTHER_SIZES`."""
    sizes = (PRESET_SIZES | OTHER_SIZES)[preset]
    return sizes.get(network, sizes["default"])


def random_batch(network: keras.Model, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random batch for a `HeatmapTrainer`: image (B, y, x, 1) in [-1, 1], points (B, N, 2) uniform on the
    network's output grid, mask (B, N) of ones."""
    *grid, num = network.output.shape[1:]
    image = rng.uniform(-1.0, 1.0, (batch_size, *network.input.shape[1:])).astype(np.float32)
    points = rng.uniform(0.0, 1.0, (batch_size, num, len(grid))) * (np.array(grid[::-1]) - 1)
    mask = np.ones((batch_size, num), np.float32)
    return {"image": image, "points": points.astype(np.float32), "mask": mask}


class ZeroTargets(GaussianTargets):
    """An all-zero target of the same shape: the step without rendering, to measure the rendering's share."""

    def call(self, inputs):
        points, _ = inputs
        return keras.ops.zeros((keras.ops.shape(points)[0], *self.shape, self.num_landmarks), "float32")


TARGET_KINDS = {"fixed": GaussianTargets, "learned": GaussianTargets, "none": ZeroTargets}


def measure_training(network: str, size: Size, precision: str, warmup: int, steps: int,
                     peak_tflops: float | None, matmul_size: int = 2048, targets_kind: str = "fixed",
                     xla: str = "auto") -> dict[str, Any]:
    """Builds `network` at `size` in `precision`, trains `warmup` + `steps` batches, returns the figures.

    Args:
        network: a name of `network.NETWORKS`.
        size: input side, filters and batch size.
        precision: Keras dtype policy ("float32", "mixed_bfloat16", "mixed_float16") or "mixed".
        warmup: untimed steps first.
        steps: timed steps.
        peak_tflops: peak rate for ``percent_of_peak``; None: measure the matmul rate in the compute dtype.
        matmul_size: matrix side of that measurement.
        targets_kind: "fixed" sigmas; "learned": one trainable sigma per landmark (its regulariser included);
            "none": an all-zero target instead of rendering (the step minus the rendering).
        xla: main.py's ``--xla``: "auto" (`utils.runtime.jit_compile`: off for TensorFlow on a CPU), "on",
            "off".

    Returns:
        A dict with the configuration, ``ms_per_step`` (median), ``best_ms_per_step``, ``images_per_s``
        (from the median), ``gflop_per_step``, ``achieved_tflops``, ``peak_tflops`` (and its source),
        ``percent_of_peak``, ``rss_peak_bytes``, ``rss_baseline_bytes``, ``device_peak_bytes`` (None on a
        CPU), ``final_loss``, ``jit_compile`` and the raw timing.
    """
    from utils.training.model import HeatmapTrainer, make_optimizer

    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    peak_source = "--peak-tflops"
    if peak_tflops is None:
        peak_tflops = matmul_tflops(compute_dtype, size=matmul_size)
        peak_source = f"measured {compute_dtype} matmul"
    reset_device_peak_memory()
    with PeakMemory() as memory:
        model = build_network(network, (*size.input_size[::-1], 1), size.num_landmarks,
                              num_filters=size.num_filters)
        targets = TARGET_KINDS[targets_kind](size.num_landmarks, model.output.shape[1:-1], 3.0,
                                             learn_sigma=targets_kind == "learned")
        trainer = HeatmapTrainer(model, targets, sigma_regularization=1.0)
        trainer.compile(optimizer=make_optimizer("sgd", LEARNING_RATE),
                        jit_compile=jit_compile(xla))
        batch = random_batch(model, size.batch_size, np.random.default_rng(0))
        losses = []
        timing = time_calls(lambda: losses.append(float(trainer.train_on_batch(batch))),
                            warmup=warmup, repeats=steps)
    flops = BACKWARD_FACTOR * count_flops(model) * size.batch_size
    achieved = flops / timing.median / 1e12
    keras.mixed_precision.set_global_policy("float32")
    return {
        "network": network,
        "precision": policy,
        "targets": targets_kind,
        "input_size": size.label,
        "num_filters": size.num_filters,
        "batch_size": size.batch_size,
        "ms_per_step": 1e3 * timing.median,
        "best_ms_per_step": 1e3 * timing.best,
        "images_per_s": size.batch_size / timing.median,
        "gflop_per_step": flops / 1e9,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "percent_of_peak": 100.0 * achieved / peak_tflops,
        "rss_peak_bytes": memory.peak_bytes,
        "rss_baseline_bytes": memory.baseline_bytes,
        "device_peak_bytes": device_peak_memory(),
        "final_loss": losses[-1],
        "jit_compile": bool(trainer.jit_compile),
        "timing": timing.to_dict(),
        "machine": machine_info(),
    }


# --- SCN spatial part: one masked convolution against N convolutions over N - 1 channels ------------------


def naive_spatial_model(grid: int, channels: int, kernel_size: int) -> keras.Model:
    """The spatial configuration written the naive way: output i = Conv(inputs without channel i).

    Input ``(B, grid, grid, channels)``, output ``(B, grid, grid, channels)``; layer ``spatial_i`` is a
    ``kernel_size`` convolution from ``channels - 1`` channels to 1, 'same' padding, linear, with bias.
    """
    inputs = keras.Input((grid, grid, channels), name="pooled_local_heatmaps")
    outputs = []
    for i in range(channels):
        others = keras.layers.Lambda(
            lambda x, i=i: keras.ops.concatenate([x[..., :i], x[..., i + 1:]], axis=-1), name=f"others_{i}"
        )(inputs)
        outputs.append(keras.layers.Conv2D(1, kernel_size, padding="same", name=f"spatial_{i}")(others))
    return keras.Model(inputs, keras.layers.Concatenate(name="spatial_heatmaps")(outputs), name="naive")


def masked_spatial_model(grid: int, channels: int, kernel_size: int) -> keras.Model:
    """The spatial configuration as the SCN computes it: one `network.LeaveOneOutConv` (N -> N, masked)."""
    inputs = keras.Input((grid, grid, channels), name="pooled_local_heatmaps")
    outputs = LeaveOneOutConv(kernel_size, name="spatial_heatmaps")(inputs)
    return keras.Model(inputs, outputs, name="masked")


def copy_masked_to_naive(masked: keras.Model, naive: keras.Model) -> None:
    """Gives the naive model the masked model's weights: spatial_i gets kernel[..., others(i), i], bias[i]."""
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in masked.get_layer("spatial_heatmaps").weights)
    channels = kernel.shape[-1]
    for i in range(channels):
        others = np.delete(np.arange(channels), i)
        naive.get_layer(f"spatial_{i}").set_weights([kernel[:, :, others, i:i + 1], bias[i:i + 1]])


def measure_scn_spatial(batch_size: int, grid: int, channels: int, kernel_size: int, warmup: int,
                        repeats: int) -> dict[str, Any]:
    """Times forward and forward + backward of the masked and the naive spatial part, after checking that
    they agree (AssertionError otherwise).

    Returns:
        ``{"config": ..., "max_abs_difference": float, "masked": {...}, "naive": {...}}`` with per
        formulation ``forward_ms``, ``train_step_ms`` (medians) and ``gflop_forward`` per batch.
    """
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((batch_size, grid, grid, channels)).astype(np.float32)
    targets = rng.standard_normal((batch_size, grid, grid, channels)).astype(np.float32)
    masked = masked_spatial_model(grid, channels, kernel_size)
    naive = naive_spatial_model(grid, channels, kernel_size)
    masked.get_layer("spatial_heatmaps").bias.assign(rng.standard_normal(channels).astype(np.float32))
    copy_masked_to_naive(masked, naive)
    expected = masked.predict_on_batch(inputs)
    received = naive.predict_on_batch(inputs)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(received, expected, rtol=1e-4, atol=1e-5 * scale,
                               err_msg="naive and masked spatial configuration disagree")
    results = {
        "config": {"batch_size": batch_size, "grid": grid, "channels": channels, "kernel_size": kernel_size},
        "max_abs_difference": float(np.max(np.abs(received - expected))),
        "output_scale": scale,
    }
    for model, inner_channels in ((masked, channels), (naive, channels - 1)):
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-9), loss="mean_squared_error")
        forward = time_calls(lambda m=model: m.predict_on_batch(inputs), warmup=warmup, repeats=repeats)
        train = time_calls(lambda m=model: m.train_on_batch(inputs, targets), warmup=warmup, repeats=repeats)
        results[model.name] = {
            "forward_ms": 1e3 * forward.median,
            "train_step_ms": 1e3 * train.median,
            "gflop_forward": 2 * kernel_size**2 * inner_channels * channels * grid**2 * batch_size / 1e9,
            "forward_timing": forward.to_dict(),
            "train_timing": train.to_dict(),
        }
    return results


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--size", choices=(*PRESET_SIZES, *OTHER_SIZES), default="cpu",
                        help="main.py preset whose sizes are used (cpu: 128 px, 16 filters; paper: 256 px, "
                             "128 filters, ConvOnly-Net 128 px; batch 8), cpu3d (main.py --dim 3: 32x32x48, "
                             "16 filters, batch 2) or spine (the authors' 3D spine CT: 96x96x192, 64 "
                             "filters, batch 1)")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="override the input size of the preset, x y [z] pixels")
    parser.add_argument("--filters", type=int, help="override the filters per convolution of the preset")
    parser.add_argument("--batch-size", type=int, help="override the batch size of the preset")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed"],
                        help="Keras dtype policies; 'mixed': mixed_float16 on a GPU, mixed_bfloat16 on a CPU")
    parser.add_argument("--targets", nargs="+", choices=tuple(TARGET_KINDS), default=["fixed"],
                        help="in-graph targets: fixed sigmas, learned sigmas (reports the extra cost), none "
                             "(all-zero targets: the step without rendering, for the rendering's share)")
    parser.add_argument("--xla", choices=("auto", "on", "off"), default="auto",
                        help="XLA for the step, as main.py's --xla: auto (off for TensorFlow on a CPU), on "
                             "or off")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--peak-tflops", type=float,
                        help="peak rate for the percentage (TFLOP/s); default: the measured matmul rate")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="matrix side of the peak-rate measurement (8192 on a large GPU)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="one fresh process per measurement (default: on, off with --quick)")
    parser.add_argument("--skip-scn-spatial", action="store_true",
                        help="leave out the SCN spatial comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 step: a smoke test of seconds")
    parser.add_argument("--output", default="benchmarks/results/training.json", help="results JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps = 1, 1
    if args.isolate is None:
        args.isolate = not args.quick
    for name in ("warmup", "steps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} is too small: {getattr(args, name)}")
    return args


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def network_size(args: argparse.Namespace, network: str) -> Size:
    """The size to measure `network` at: the preset's (or `QUICK_SIZE`), with the command-line overrides."""
    base = QUICK_SIZE if args.quick else preset_size(args.size, network)
    return Size(
        input_size=tuple(args.input_size or base.input_size),
        num_filters=args.filters or base.num_filters,
        batch_size=args.batch_size or base.batch_size,
        num_landmarks=base.num_landmarks,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    run = run_isolated if args.isolate else (lambda function, *a: function(*a))
    rows = []
    for precision in args.precisions:
        for network in args.networks:
            for kind in args.targets:
                size = network_size(args, network)
                print(f"training {network} at {size.label} px, {precision}, {kind} targets ...",
                      flush=True)
                rows.append(run(measure_training, network, size, precision, args.warmup, args.steps,
                                args.peak_tflops, 256 if args.quick else args.matmul_size, kind, args.xla))
                row = rows[-1]  # printed at once: a long run that is stopped keeps what it measured
                print(f"  {row['ms_per_step']:.1f} ms/step (best {row['best_ms_per_step']:.1f}), "
                      f"{row['gflop_per_step']:.0f} GFLOP, {row['achieved_tflops']:.2f} TFLOP/s = "
                      f"{row['percent_of_peak']:.0f} % of {row['peak_tflops']:.1f} ({row['peak_source']}), "
                      f"last loss {row['final_loss']:.6g}",
                      flush=True)
    machine = rows[0]["machine"]
    for row in rows:  # keep only the load of each measurement: it tells which ones shared the machine
        row["load_average"] = row.pop("machine")["load_average"]
    print(format_table(
        [{**row, "rss_mib": _mib(row["rss_peak_bytes"]), "device_mib": _mib(row["device_peak_bytes"])}
         for row in rows],
        [("network", "network", "s"), ("precision", "precision", "s"), ("targets", "targets", "s"),
         ("input_size", "px", "s"), ("jit_compile", "XLA", ""),
         ("ms_per_step", "ms/step", ".0f"), ("images_per_s", "img/s", ".2f"),
         ("gflop_per_step", "GFLOP", ".0f"),
         ("achieved_tflops", "TFLOP/s", ".3f"), ("percent_of_peak", "% peak", ".0f"),
         ("rss_mib", "RSS MiB", ".0f"), ("device_mib", "dev MiB", ".0f")],
    ))
    results: dict[str, Any] = {"training": rows}
    if not args.skip_scn_spatial:
        spatial = SCN_SPATIAL_QUICK if args.quick else SCN_SPATIAL
        print("SCN spatial part: masked vs naive ...", flush=True)
        scn = run(measure_scn_spatial, spatial["batch_size"], spatial["grid"], spatial["channels"],
                  spatial["kernel_size"], args.warmup, max(args.steps, 3))
        results["scn_spatial"] = scn
        print(format_table(
            [{"formulation": name, **scn[name]} for name in ("masked", "naive")],
            [("formulation", "formulation", "s"), ("gflop_forward", "GFLOP fwd", ".2f"),
             ("forward_ms", "forward ms", ".1f"), ("train_step_ms", "fwd+bwd ms", ".1f")],
        ))
        print(f"max |masked - naive| = {scn['max_abs_difference']:.3g} "
              f"(output scale {scn['output_scale']:.3g})")
    config = vars(args)
    write_results(args.output, "training", config, results, machine=machine)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
