"""Anatomical landmark localisation by heatmap regression (Payer et al., MICCAI 2016 and MIA 2019), Keras 3.

Run from the repository root:

    python main.py                                      # CPU preset: synthetic hands (generated on the
                                                        # first run into data/synthetic_hand/), a few minutes
    python main.py --preset paper                       # the authors' MICCAI 2016 hand setup, 3-fold CV (GPU)
    python main.py --preset mia2019                     # their MIA 2019 SCN with learned sigmas on the hands
    python main.py --network scn unet --cv all --max-iter 2000  # several networks x folds
    python main.py --dim 3                              # 3D: synthetic volumes (data/synthetic_volume/),
                                                        # CPU-sized defaults (CPU_3D), about 13 minutes
    python main.py --dim 3 --dataset DIR --num-landmarks 26 --image-size 64 64 128  # your volumes
    python main.py --data-kind cephalometric            # a kind of data (README "Kinds of data"); its
    python main.py --data-kind spine_ct --image-spacing 4   # phantoms go to data/synthetic_<phantom>/
    python main.py --resume output/scn_cv1/<timestamp>  # continue a run from its last checkpoint
    python main.py --help                               # every parameter, with its unit
    KERAS_BACKEND=jax python main.py ...                # any Keras backend: tensorflow (default), jax, torch

The parameters below are the defaults (the "cpu" preset); edit them here or override any of them on the
command line. A dataset folder holds ``images/<id>.<ext>``, ``setup/all.csv`` (``id,x0,y0,...``),
``setup/cv/set<k>/{train,test}.txt`` and ``setup/{train,test}.txt`` (for ``--cv none``). Each run writes
``<output>/<network>_<fold>/<timestamp>/`` (config, script copies, checkpoints, logs, ``iter_<n>/`` tests);
``<output>/summary.json`` summarises all runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import DATA_KINDS, NORMALIZATIONS, Dataset, DataSpec, kind_spec, sample_generator
from utils.data.loader import LoaderError, SampleError
from utils.data.validate import ValidationReport, validate_dataset
from utils.io.atomic import write_json_atomic
from utils.io.errors import DataError
from utils.io.splits import cv_folds
from utils.landmarks.statistics import format_fold_table, landmark_statistics
from utils.synthetic import PHANTOMS, phantom_of
from utils.training.output import RunFolder, config_to_dict, read_config
from utils.transforms.bspline import BSPLINE_GRIDS

# Loader workers are spawned processes that import this file again, as "__mp_main__", before they unpickle
# their sample maker (from dataset.py). They need no Keras: leaving it (and TensorFlow) out saves each worker
# about 0.3 GB and seconds of start-up.
if __name__ != "__mp_main__":
    from utils.runtime import configure_graph_optimizer, jit_compile, quiet_tensorflow_start

    with quiet_tensorflow_start():  # quiet C++ logs, oneDNN kernels
        import keras

    from network import NETWORKS, build_network
    from utils.data.debug import write_debug_batch
    from utils.landmarks.conformal import conformal_radii
    from utils.landmarks.targets import GaussianTargets
    from utils.training.distribute import Replicas, split_cpu
    from utils.training.evaluation import Evaluation, evaluate, mean_shape_errors, summarize
    from utils.training.export import INFO_FILE, NETWORK_FILE, write_export
    from utils.training.loop import NonFiniteLossError, Schedule, train
    from utils.training.model import HeatmapTrainer, make_optimizer


def _field(default, help: str, **cli):
    """A parameter: its default, its help text (written once, here) and command-line details (metavar...)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


# --dim 3 with the cpu preset: CPU-sized 3D defaults (`python main.py --dim 3`: 120 synthetic volumes of about
# 1.75 mm, 13 minutes on 2 cores, 0.49 x the mean-shape error; README). 32 x 32 x 48 voxels of 3.5 mm cover
# the phantoms' 112 x 112 x 176 mm; batch 2 and Adam at 1e-3; sigma 2 voxels (7 mm: with 3, 10.5 mm, the
# Gaussians of neighbouring vertebrae, 11 mm apart, merged and the error stayed at 0.59 x the baseline);
# 10 landmarks, as the phantoms have.
CPU_3D: dict = {
    "image_size": (32, 32, 48),
    "num_landmarks": 10,
    "sigma": 2.0,
    "batch_size": 2,
    "learning_rate": 1e-3,
    "max_iter": 750,
    "test_iter": 250,
    "snapshot_iter": 250,
}


# ... and the exceptions of single networks in 3D, over NETWORK_PRESETS["cpu"]: scn_mia keeps the authors' 3D
# D = 8 (the 2D preset's D = 4 on the 32 x 32 x 48 grid: 8.85 mm after 200 iterations of
# tests/test_learning.py's 3D case, 0.90 x the mean shape, against 6.78 mm, 0.69 x, with D = 8).
CPU_3D_NETWORKS: dict[str, dict] = {"scn_mia": {"spatial_downsampling": None}}


@dataclass
class Parameters:
    """The experiment parameters. Coordinates and sizes are in (x, y[, z]) order; units are in the help."""

    # ---- I/O ----
    dataset: str | None = _field(None, "dataset folder (images/, setup/); None: the synthetic phantoms of "
                                 "the data kind in data/synthetic_<kind> (hand in 2D, volume in 3D), "
                                 "generated on the first run", metavar="DIR")
    output: str = _field("output", "experiment output folder (one subfolder per network and fold)",
                         metavar="DIR")
    save_debug_images: bool = _field(False, "write the first training batch (inputs as .mha and PNG with "
                                     "landmarks, targets as PNG) into each run folder's debug/")
    synthetic_images: int = _field(120, "number of synthetic images generated into an empty dataset folder")
    generate_synthetic: bool = _field(False, "generate the synthetic phantoms into --dataset when it has no "
                                      "images (always done for the default folder)")
    # ---- data ----
    dim: int = _field(2, "spatial dimension: 2 (radiographs) or 3 (volumes; with the cpu preset, 3 also sets "
                      "the CPU-sized 3D defaults: " + ", ".join(f"{k} {v}" for k, v in CPU_3D.items()) + ")",
                      choices=(2, 3))
    data_kind: str | None = _field(
        None, "what the data is (dataset.py DATA_SPECS; README \"Kinds of data\"): hand_xray (pixel CSV, "
        "spacing ignored, mm from landmarks 1 and 5 = 50 mm), cephalometric (ISBI 2015: mm on 0.1 mm pixels, "
        "two annotators), spine_ct (mm, HU, 2 mm voxels, identification rate), heart (with --modality), "
        "custom2d / custom3d (yours: --landmark-units, --ignore-spacing, --mm-reference); it also sets --dim "
        "and --num-landmarks; None: hand_xray for the synthetic hands (no --dataset), else custom2d or 3d",
        choices=DATA_KINDS)
    modality: str | None = _field(None, "--data-kind heart only: mr or ct (intensities of each)",
                                  choices=("mr", "ct"))
    landmark_units: str | None = _field(None, "custom kinds only: what setup/all.csv holds, pixel (indices) "
                                        "or physical (the images' physical coordinates); None: pixel in "
                                        "2D, physical in 3D", choices=("pixel", "physical"))
    ignore_spacing: bool = _field(False, "custom kinds only: use spacing 1 instead of the files' spacing "
                                  "(errors then in pixels unless --mm-reference)")
    mm_reference: tuple[float, ...] = _field(
        (), "custom kinds only: I J MM: millimetres defined by landmarks I and J (0-based) being MM mm apart "
        "in every image (the hands: 1 5 50); none: the spacing's mm", type=float, nargs="*", metavar="X")
    num_landmarks: int = _field(37, "landmarks per image (hand: 37; a --data-kind sets its own)")
    cv: str = _field("1", "cross-validation fold K (setup/cv/setK); 'all' runs every fold of the dataset, "
                     "'none' uses setup/{train,test}.txt", metavar="K")
    image_size: tuple[int, ...] = _field((128, 128), "network input size in pixels, W H [D]", metavar="N")
    image_spacing: float | None = _field(
        None, "fixed spacing of the network input in mm per pixel: images keep their size in mm "
        "(training: random crops of longer ones; tests: the whole image by overlapping tiles), translation "
        "and deformation strengths are mm, sigma is in pixels of this spacing; None: the kind's (spine_ct 2, "
        "heart 10 CT / 12 MR; others fit each image to the input)", type=float, metavar="MM")
    # ---- augmentation (strengths in dataset.py AUGMENTATION_2D / AUGMENTATION_3D) ----
    random_scaling: bool = _field(True, "random scaling in the spatial chain (2D: factors 1 +- 0.1, times "
                                  "1 +- 0.05 per axis; the authors' hand chain has none)")
    bspline_grid: str = _field("image", "B-spline node layout: image (ours: the nodes span the image from "
                               "corner to corner, every node moves it) or mesh (the authors': nodes - 3 mesh "
                               "cells over the output, nodes reach one cell beyond it: smoother warps)",
                               choices=BSPLINE_GRIDS)
    intensity_normalization: str = _field("image", "robust normalisation to [-1, 1]: image (1st/99th "
                                          "percentile of the whole image, once per image) or patch (the "
                                          "authors': 5th/95th percentile of each resampled patch, padding "
                                          "included); the kinds with fixed intensities (cephalometric, "
                                          "spine_ct, heart ct) map theirs instead",
                                          choices=tuple(NORMALIZATIONS))
    clamp: bool = _field(True, "clip the intensities to [-1, 1] after the random shift and scale (the "
                         "authors' hand setup does not; heart mr's random gamma always clamps)")
    # ---- targets ----
    sigma: float = _field(3.0, "Gaussian sigma of the targets in heatmap pixels (the initial value with "
                          "--learn-sigma)", metavar="S")
    learn_sigma: bool = _field(False, "learn one sigma per landmark (MIA 2019), with the regulariser below")
    anisotropic_sigma: bool = _field(False, "with --learn-sigma: learn per-axis sigmas and a rotation per "
                                     "landmark instead of one sigma")
    sigma_regularization: float = _field(1.0, "weight of the sigma regulariser sum(sigma^2) / 2 / batch, "
                                         "in loss units per heatmap pixel^2", metavar="X")
    target_peak: float = _field(1.0, "peak height of the targets at the initial sigma (the MIA 2019 setups: "
                                "their scale / (2 pi sigma^2) in 2D)", metavar="X")
    # ---- model ----
    networks: tuple[str, ...] = _field(("scn",), "network(s) to train", metavar="NAME")
    num_filters: int = _field(16, "convolution filters per layer (paper: 128)")
    weight_decay: float = _field(5e-5, "L2 weight decay factor on the convolution kernels", metavar="X")
    dropout: float = _field(0.5, "scn_mia only: fraction of the features dropped in its contracting blocks "
                            "during training (the authors': 0.5; the cpu preset sets 0: see "
                            "NETWORK_PRESETS)", metavar="X")
    spatial_downsampling: int | None = _field(None, "scn_mia only: factor D by which its spatial part works "
                                              "coarser than the input (None: the authors' 16 in 2D, 8 in "
                                              "3D; the cpu preset sets 4 in 2D: see NETWORK_PRESETS)",
                                              type=int, metavar="D")
    heatmap_init: float | None = _field(None, "scn_mia only: std of the initial kernels of its two heatmap "
                                        "layers (None: the authors' 1e-4 in 2D, 1e-3 in 3D; the cpu preset "
                                        "sets 1e-3: see NETWORK_PRESETS)", type=float, metavar="X")
    # ---- optimiser ----
    optimizer: str = _field("adam", "sgd (Nesterov momentum, as in the paper) or adam",
                            choices=("sgd", "adam"))
    learning_rate: float = _field(3e-4, "step size (paper SGD: 1e-7, for the loss sum of squares / 2 / "
                                  "batch)", metavar="LR")
    momentum: float = _field(0.99, "SGD momentum (ignored by Adam)", metavar="X")
    clip_norm: float | None = _field(None, "clip the gradients to this global norm (MIA 2019: 10000); None: "
                                     "off", type=float, metavar="X")
    lr_boundaries: tuple[int, ...] = _field((), "iterations after which the learning rate changes to the "
                                            "next of --lr-values (piecewise constant; resumed runs stay on "
                                            "it)", type=int, nargs="*", metavar="ITER")
    lr_values: tuple[float, ...] = _field((), "learning rates after each of --lr-boundaries", type=float,
                                          nargs="*", metavar="LR")
    batch_size: int = _field(8, "images per iteration")
    max_iter: int = _field(1000, "training iterations (batches)")
    test_iter: int = _field(250, "test on the validation images every N iterations")
    snapshot_iter: int = _field(500, "save a checkpoint every N iterations")
    test_at_start: bool = _field(False, "also test before the first training iteration")
    coverage: float = _field(0.9, "coverage of the per-landmark conformal radii computed from the last "
                             "test (the true landmark of a new image lies within its radius with this "
                             "probability; in export/predict.json)", metavar="P")
    # ---- system ----
    seed: int = _field(0, "random seed of weights, augmentation and data order")
    workers: int = _field(0, "data-loading processes (0: load in the main process)")
    distribute: str = _field("none", "data-parallel training: none; mirrored (this machine's devices: "
                             "tf.distribute.MirroredStrategy, or keras.distribution.DataParallel with JAX); "
                             "multi_worker (several machines: MultiWorkerMirroredStrategy with TF_CONFIG, or "
                             "jax.distributed); --batch-size stays the global batch",
                             choices=("none", "mirrored", "multi_worker"))
    cpu_devices: int = _field(0, "for testing data parallelism without GPUs: split the CPU into N logical "
                              "devices (TensorFlow backend); 0: off")
    cache_mb: int = _field(1024, "memory for decoded images per loading process, MiB; least recently used "
                           "images leave first", metavar="MIB")
    precision: str = _field("float32", "Keras dtype policy: float32; mixed_float16 (float16 compute, float32 "
                            "weights: GPUs); mixed_bfloat16 (CPUs with bfloat16 units: 1.3-2.4x faster than "
                            "float32 on our 2-core machine, where float16 was 6-8x slower)",
                            choices=("float32", "mixed_float16", "mixed_bfloat16"))
    xla: str = _field("auto", "XLA compilation of the training step: auto (off for TensorFlow on a CPU, "
                      "where at the cpu presets' sizes its oneDNN kernels ran scn 1.9x, scn_mia 7.2x and the "
                      "3D networks 7x faster than with XLA, unet at 0.9x; Keras' choice elsewhere); on (on a "
                      "CPU: the paper-size 2D steps, 128 filters, ran 1.4-2x faster with it); off. With "
                      "--distribute over several devices, TensorFlow's step is compiled without XLA",
                      choices=("auto", "on", "off"))

    @staticmethod
    def from_older(values: dict) -> dict:
        """The keys of a config.json written before the kinds of data: its "data_spec" (hand_xray, physical
        or None: hand_xray in 2D, physical in 3D) becomes the --data-kind of the same meaning."""
        if "data_spec" not in values:
            return values
        values = dict(values)
        old, dim = values.pop("data_spec"), values.get("dim", 2)
        values["data_kind"] = ("hand_xray" if old == "hand_xray" or (old is None and dim == 2)
                               else f"custom{dim}d")
        if values["data_kind"] == "custom2d":  # "physical" in 2D: CSV in mm, spacing trusted
            values["landmark_units"] = "physical"
        return values

    def __post_init__(self) -> None:
        """Raises ValueError naming the parameter that is out of range."""
        for name in ("num_landmarks", "batch_size", "max_iter", "test_iter", "snapshot_iter", "num_filters",
                     "cache_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_option(name)} must be at least 1, got {getattr(self, name)}")
        if len(self.image_size) != self.dim or min(self.image_size) < 1:
            raise ValueError(f"--image-size needs {self.dim} positive sizes (--dim {self.dim}), "
                             f"got {self.image_size}")
        if not self.sigma > 0 or not self.target_peak > 0 or self.weight_decay < 0:
            raise ValueError(f"--sigma and --target-peak must be positive and --weight-decay >= 0, got "
                             f"{self.sigma}, {self.target_peak}, {self.weight_decay}")
        if self.sigma_regularization < 0 or self.workers < 0 or self.cpu_devices < 0:
            raise ValueError(f"--sigma-regularization, --workers and --cpu-devices must be >= 0, got "
                             f"{self.sigma_regularization}, {self.workers}, {self.cpu_devices}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.image_spacing is not None and not self.image_spacing > 0:
            raise ValueError(f"--image-spacing must be positive, got {self.image_spacing}")
        if self.spatial_downsampling is not None and self.spatial_downsampling < 1:
            raise ValueError(f"--spatial-downsampling must be at least 1, got {self.spatial_downsampling}")
        if self.heatmap_init is not None and not self.heatmap_init > 0:
            raise ValueError(f"--heatmap-init must be positive, got {self.heatmap_init}")
        if not 0 < self.coverage < 1:
            raise ValueError(f"--coverage must be between 0 and 1, got {self.coverage}")
        if self.cv not in ("all", "none") and not (self.cv.isdigit() and int(self.cv) >= 1):
            raise ValueError(f"--cv must be a fold number (1, 2, ...), all or none, got {self.cv!r}")
        if (self.modality is None) == (self.data_kind == "heart"):
            raise ValueError("--modality mr or ct goes with --data-kind heart, and only with it")
        custom = {"landmark_units": self.landmark_units, "ignore_spacing": self.ignore_spacing or None,
                  "mm_reference": self.mm_reference or None}
        kind = data_kind(self)
        if not kind.startswith("custom") and any(v is not None for v in custom.values()):
            given = ", ".join(_option(k) for k, v in custom.items() if v is not None)
            raise ValueError(f"{given} describe your own data: use them with --data-kind "
                             f"custom{self.dim}d (the kind {kind} defines them)")
        reference = self.mm_reference
        if reference and (len(reference) != 3 or reference[0] != int(reference[0]) or reference[1] != int(
                reference[1]) or not reference[2] > 0):
            raise ValueError(f"--mm-reference needs I J MM (two landmark indices and a positive distance), "
                             f"got {' '.join(map(str, reference))}")
        if self.anisotropic_sigma and not self.learn_sigma:
            raise ValueError("--anisotropic-sigma needs --learn-sigma (fixed sigmas are isotropic)")


# Presets: values that replace the defaults above, each with where it comes from. "cpu" is the default
# above (a few minutes on 2 cores). The sources are the authors' public code (christianpayer/
# MedicalDataAugmentationTool-HeatmapRegression); README "Training on the real hand radiographs" lists the
# same values, their sources and the published figures to compare with.
_HAND_SETUP = {  # the data and chain of the authors' hand_xray example (REFERENCE section 1)
    "dataset": "hand_xray_dataset",  # their all.csv and published folds cv/set1-3, shipped there
    "dim": 2,
    "data_kind": "hand_xray",  # pixel CSV, spacing ignored, mm from landmarks 1 and 5 = 50 mm
    "num_landmarks": 37,
    "cv": "all",  # 3-fold cross-validation on the published folds
    "image_size": (256, 256),  # input 256 x 256 (ConvOnly-Net: NETWORK_PRESETS)
    "random_scaling": False,  # translation +-10 px, rotation +-0.2 rad, no scaling (dataset.AUGMENTATION_2D)
    "bspline_grid": "mesh",  # 5 x 5 nodes, max 20 px, their mesh of nodes - 3 cells over the output
    "intensity_normalization": "patch",  # 5th/95th percentile of each patch -> [-1, 1], then shift and
    "clamp": False,  # scale +-0.15 (DataSpec hand_xray), no clamp
    "test_at_start": True,  # they test at iteration 0
}
PRESETS: dict[str, dict] = {
    "cpu": {},
    # MICCAI 2016, the authors' hand_xray example exactly (REFERENCE section 1): the four networks.
    "paper": _HAND_SETUP | {
        "sigma": 3.0,  # heatmaps 256 x 256, sigma 3 px (Downsampling-Net: NETWORK_PRESETS)
        "networks": ("scn", "unet", "downsampling_net", "conv_only"),
        "num_filters": 128,
        "weight_decay": 5e-5,  # L2 on the kernels, 5e-5 * sum(w^2) / 2
        "optimizer": "sgd",  # SGD, Nesterov momentum 0.99, lr 1e-7 for the loss sum of squares / 2 / batch
        "learning_rate": 1e-7,
        "momentum": 0.99,
        "batch_size": 8,
        "max_iter": 20000,
        "test_iter": 5000,  # tests every 5,000 iterations and at 0
        "snapshot_iter": 5000,
    },
    # MIA 2019: scn_mia (F=128, D=16, K=11: their cephalogram network) with learned sigmas, trained with
    # their cephalogram optimiser and schedule, adapted to the hands. Adaptations are marked "hands:".
    "mia2019": _HAND_SETUP | {
        # hands: 256 x 256 input, the hand chain and intensities above (cep: 512 x 512, mm-based chain,
        # intensities (x - 128) / 128 with a clamp)
        "networks": ("scn_mia",),
        "num_filters": 128,
        "learn_sigma": True,
        "sigma": 3.0,  # hands: the initial sigma of the hand heatmaps at 256 x 256 (cep: 2.5 px at 512 x 512)
        "target_peak": 100.0 / (2.0 * math.pi * 3.0**2),  # their Gaussian normalised to integral 1 times
        # scale 100, peak 100 / (2 pi sigma_0^2) = 1.77 at sigma_0 = 3: the loss keeps their units, so the
        # regulariser, the clip norm and the learning rate below keep their values
        "sigma_regularization": 100.0,  # sigma_reg * sum(sigma^2 of present landmarks) / 2 / batch
        "weight_decay": 1e-3,  # their cep L2 factor, as 1e-3 * sum(w^2) / 2
        "optimizer": "sgd",  # SGD with Nesterov momentum 0.99
        "momentum": 0.99,
        "learning_rate": 1e-6,
        "clip_norm": 10000.0,  # gradients clipped to global norm 10,000
        "batch_size": 8,  # hands: batch 8 of the hand setup (cep: 1); the loss is a mean over the batch, so
        # the learning rate stays; 30,000 x 8 = 400 epochs of 597 images (cep: 200 epochs of 150)
        "max_iter": 30000,
        "test_iter": 5000,  # tests every 5,000 iterations and at 0
        "snapshot_iter": 5000,
    },
}
# Per-network exceptions of a preset (the paper: ConvOnly-Net at 128x128; Downsampling-Net heatmaps of
# 64x64 with sigma 1.5). An option given on the command line wins over these.
NETWORK_PRESETS: dict[str, dict[str, dict]] = {
    # scn_mia at 16 filters: dropout 0.5 leaves 8 channels per layer and holds it at the mean shape for the
    # first hundreds of iterations (3D phantoms after 200: 9.96 mm with 0.5, 6.78 without, mean shape 9.82).
    # At the 128 x 128 input, D = 4 gives the spatial part the 32 x 32 grid the authors' D = 16 gives their
    # 512 x 512 cephalograms (D = 16 leaves 8 x 8 here), heatmap layers starting at std 1e-3 (their
    # spine value) leave the all-zero start sooner, and Adam at 1e-3 lets the local x spatial product grow
    # within a short run. Real hands, experiments/real_hands_cv.sh, 300 iterations, dropout 0 (scn: 4.50 /
    # 3.35 mm on folds 1 / 2): fold 1: D 16, std 1e-3: 6.72 mm; D 8, std 1e-4: 4.89; D 8, std 1e-3: 4.35;
    # D 8, std 1e-2: 4.26. Fold 2 at std 1e-3: D 8: 4.67; D 8, lr 1e-3: 4.08; D 4: 5.42; D 4, lr 1e-3: 3.04.
    "cpu": {"downsampling_net": {"sigma": 1.5},
            "scn_mia": {"dropout": 0.0, "spatial_downsampling": 4, "heatmap_init": 1e-3,
                        "learning_rate": 1e-3}},
    "paper": {"conv_only": {"image_size": (128, 128)}, "downsampling_net": {"sigma": 1.5}},
    "mia2019": {},
}


# ---------------------------------------------------------------------------------------------------------
# Command line: every parameter above is an option (--max-iter for max_iter); unknown options are errors.
# ---------------------------------------------------------------------------------------------------------


def _option(name: str) -> str:
    """The command-line option of a parameter: "max_iter" -> "--max-iter" ("networks" -> "--network")."""
    return "--network" if name == "networks" else "--" + name.replace("_", "-")


def parser() -> argparse.ArgumentParser:
    """The command-line parser: one option per `Parameters` field, plus --preset and --resume.

    Options left out keep the value of the preset (or of the resumed run); argparse rejects unknown ones.
    """
    parse = argparse.ArgumentParser(
        prog="main.py",
        description="Landmark localisation by heatmap regression: train, test, summarise networks x folds.",
        epilog="presets (the values they set; each value's source is in main.py PRESETS and the README):\n"
        + "\n".join(_preset_text(name) for name in PRESETS if name != "cpu"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                       help="parameter preset: cpu (the defaults below), paper (the authors' MICCAI 2016 "
                       "hand setup), mia2019 (their MIA 2019 SCN with learned sigmas, adapted to the "
                       "hands); their values at the end (default: cpu)")
    parse.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run folder from its last checkpoint, with its config.json")
    parse.add_argument("--check", action="store_true",
                       help="only check the parameters and the dataset (every split file, annotation row and "
                       "image), report every problem, and exit")
    defaults = Parameters()
    for field in dataclasses.fields(Parameters):
        default = getattr(defaults, field.name)
        shown = " ".join(map(str, default)) or "none" if isinstance(default, tuple) else default
        cli = dict(field.metadata)
        kwargs: dict = {"dest": field.name, "default": argparse.SUPPRESS,
                        "help": f"{cli.pop('help')} (default: {shown})"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.name == "image_size":
            kwargs.update(type=int, nargs="+")
        elif field.name == "networks":
            kwargs.update(nargs="+", choices=NETWORKS)
            kwargs["help"] = f"{field.metadata['help']}: {', '.join(NETWORKS)} (default: {shown})"
        elif default is not None and "choices" not in cli:
            kwargs.update(type=type(default), metavar="N" if isinstance(default, int) else "X")
        elif field.name == "dim":
            kwargs["type"] = int
        kwargs.update(cli)
        parse.add_argument(_option(field.name), **kwargs)
    return parse


def _preset_text(name: str) -> str:
    """A preset's values as options, wrapped: "  paper: --dim 2 ... (conv_only: --image-size 128 128)"."""
    def options(values: dict) -> str:
        words = []
        for key, value in values.items():
            if isinstance(value, bool):
                words.append(_option(key) if value else _option(key).replace("--", "--no-", 1))
            else:
                shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
                words.append(f"{_option(key)} {shown}")
        return " ".join(words)

    exceptions = [f"{network}: {options(values)}" for network, values in NETWORK_PRESETS[name].items()]
    text = f"{name}: {options(PRESETS[name])}" + (f" ({', '.join(exceptions)})" if exceptions else "")
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="    ",
                         break_on_hyphens=False)


def _replace(params: Parameters, values: dict) -> Parameters:
    """`params` with `values` replacing fields (lists become tuples)."""
    return dataclasses.replace(
        params, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    )


def resolve(preset: str, overrides: dict, network: str | None = None) -> Parameters:
    """The parameters of an experiment (or of one network's runs): defaults < preset (< CPU_3D in 3D) < the
    data kind's dimension and landmark count < network preset < CLI.

    Args:
        preset: a key of `PRESETS`.
        overrides: parameters given explicitly (command line), field name -> value.
        network: apply this network's exceptions of the preset and train only it; None: the whole experiment.
    """
    values = dict(PRESETS[preset])
    kind = overrides.get("data_kind", values.get("data_kind"))
    spec = kind_spec(kind, "ct" if kind == "heart" else None) if kind in DATA_KINDS else None
    if spec is not None and "dim" not in overrides:
        values["dim"] = spec.dim  # the kind's dimension (--dim, if given, must agree: `data_spec`)
    cpu_3d = preset == "cpu" and overrides.get("dim", values.get("dim")) == 3
    if cpu_3d:
        values |= {"dim": 3, **CPU_3D}
    if spec is not None and spec.num_landmarks is not None:
        values["num_landmarks"] = spec.num_landmarks
    params = _replace(Parameters(), values)
    if network is not None:
        network_values = NETWORK_PRESETS[preset].get(network, {})
        if cpu_3d:
            network_values = network_values | CPU_3D_NETWORKS.get(network, {})
        params = _replace(params, network_values | {"networks": (network,)})
    return _replace(params, {k: v for k, v in overrides.items() if network is None or k != "networks"})


def folds(params: Parameters) -> list[str]:
    """The folds a run's --cv runs: "all" -> every setup/cv/set<k> of its dataset (1-3 for a synthetic set
    yet to be generated), others -> [cv]."""
    return cv_folds(dataset_folder(params)) if params.cv == "all" else [params.cv]


# ---------------------------------------------------------------------------------------------------------
# The experiment: data -> network -> train (with tests) -> summary across folds.
# ---------------------------------------------------------------------------------------------------------


# The scripts that define a run, copied into every run folder.
SCRIPTS = tuple(Path(__file__).resolve().with_name(name) for name in ("main.py", "dataset.py", "network.py"))


def synthetic_folder(phantom: str) -> Path:
    """The default dataset folder of a phantom ("hand": data/synthetic_hand), generated on the first run."""
    return Path(f"data/synthetic_{phantom}")


def _synthetic_kind(params: Parameters) -> str | None:
    """The phantom of the run's data kind (`utils.synthetic.PHANTOMS`; None: it has none)."""
    return phantom_of(kind_spec(data_kind(params), params.modality).name)


def dataset_folder(params: Parameters) -> Path:
    """The dataset folder of a run: --dataset, or the default synthetic folder of its kind of data."""
    if params.dataset:
        return Path(params.dataset)
    kind = _synthetic_kind(params)
    if kind is None:
        raise ValueError(f"--data-kind {data_kind(params)} has no synthetic phantom yet: give --dataset DIR")
    return synthetic_folder(kind)


def prepare_dataset(params: Parameters) -> Path:
    """The dataset folder, with the synthetic phantoms of its kind generated into it when it is the default
    folder (named or not; or --generate-synthetic is given) and has no images yet.

    Raises:
        FileNotFoundError: The folder has no images and is not to get the phantoms: a mistyped path, or real
            data not yet placed there. The message says how to get the synthetic data.
    """
    folder = dataset_folder(params)
    images = folder / "images"
    if images.is_dir() and any(images.iterdir()):
        return folder
    kind = _synthetic_kind(params)
    default = kind is not None and folder.resolve() == synthetic_folder(kind).resolve()
    if not default and not (params.generate_synthetic and kind):
        if (folder / "setup").is_dir():  # a data set's setup waiting for its images (e.g. the authors')
            guide = folder / "README.md"
            raise FileNotFoundError(f"dataset folder {folder} has no images in {images}: put the images "
                                    "there, named by the ids of its setup/ lists"
                                    + (f" (see {guide})" if guide.is_file() else ""))
        what = "does not exist" if not folder.exists() else f"has no images in {images}"
        phantoms = (f", or for the synthetic phantoms leave out --dataset, add --generate-synthetic, or run "
                    f"python -m utils.synthetic {kind} {folder}" if kind else
                    f"; --data-kind {data_kind(params)} has no synthetic phantoms (the other kinds have)")
        raise FileNotFoundError(f"dataset folder {folder} {what}. Put images/<id>.<ext> and setup/ there "
                                f"(see README.md){phantoms}")
    print(f"{images} has no images: generating {params.synthetic_images} synthetic {kind} images into "
          f"{folder} ...")
    PHANTOMS[kind](folder, num_images=params.synthetic_images, seed=params.seed, progress=True)
    print(f"Synthetic data set written to {folder.resolve()}. To use real data, put images/<id>.mha, "
          "setup/all.csv and setup/cv/set<k>/{train,test}.txt into a folder and pass --dataset FOLDER "
          "(see README.md).")
    return folder


def data_kind(params: Parameters) -> str:
    """The run's kind of data: --data-kind; else hand_xray for the synthetic hands (2D without --dataset, or
    with their folder), custom2d / custom3d otherwise: a data set of yours is never scored in hand-atlas
    millimetres unless you say so."""
    if params.data_kind:
        return params.data_kind
    hands = not params.dataset or Path(params.dataset).resolve() == synthetic_folder("hand").resolve()
    return "hand_xray" if params.dim == 2 and hands else f"custom{params.dim}d"


def data_spec(params: Parameters) -> DataSpec:
    """The run's `DataSpec`: its kind's, with --image-spacing, and --landmark-units, --ignore-spacing and
    --mm-reference for the custom kinds.

    Raises:
        ValueError: The kind is for the other dimension.
    """
    spec = kind_spec(data_kind(params), params.modality)
    if spec.dim != params.dim:
        raise ValueError(f"--data-kind {data_kind(params)} is {spec.dim}D data, but --dim is {params.dim}")
    if params.image_spacing is not None:
        spec = dataclasses.replace(spec, image_spacing=params.image_spacing)
    if not spec.name.startswith("custom"):
        return spec
    first, second, mm = params.mm_reference or (None, None, None)
    return dataclasses.replace(spec, landmark_units=params.landmark_units or spec.landmark_units,
                               ignore_spacing=params.ignore_spacing,
                               mm_reference=None if mm is None else (int(first), int(second), mm))


def check_dataset(params: Parameters, folds_to_check: str) -> ValidationReport:
    """Reads every split file, annotation row and image of the dataset once: all problems together."""
    spec = data_spec(params)
    return validate_dataset(dataset_folder(params), num_landmarks=params.num_landmarks, dim=params.dim,
                            folds=folds_to_check, landmark_units=spec.landmark_units,
                            ignore_spacing=spec.ignore_spacing, annotations=spec.csv_files,
                            pixel_spacing=spec.pixel_spacing, reset_frame=spec.reset_frame)


def chain_options(params: Parameters) -> dict:
    """How the run prepares a sample, as `Dataset` and `dataset.sample_generator` take it: its changes to the
    spatial chain (the B-spline layout; no scaling step with --no-random-scaling), the intensity
    normalisation and the clamp. Training, tests and predict.py all use this."""
    changes = {"deformation_grid": params.bspline_grid} | ({} if params.random_scaling else {"scaling": None})
    return {"augmentation": changes, "normalization": params.intensity_normalization, "clamp": params.clamp}


def optimizer(params: Parameters) -> keras.optimizers.Optimizer:
    """The run's optimizer (checks the learning rate, clip norm and schedule)."""
    return make_optimizer(params.optimizer, params.learning_rate, params.momentum, params.clip_norm,
                          params.lr_boundaries, params.lr_values)


def run_name(network: str, fold: str) -> str:
    """The run folder name of a network on a fold: "scn_cv1", or "scn_full" for --cv none."""
    return f"{network}_full" if fold == "none" else f"{network}_cv{fold}"


def network_options(params: Parameters) -> dict:
    """Builder options of the run's network besides size, landmarks, filters and weight decay."""
    if params.networks[0] != "scn_mia":
        return {}
    return {"dropout_rate": params.dropout, "downsampling_factor": params.spatial_downsampling,
            "heatmap_init_stddev": params.heatmap_init}


def build_model(params: Parameters) -> HeatmapTrainer:
    """The run's model, uncompiled: its network (under the run's precision policy) and the targets drawn on
    the network's output grid."""
    keras.mixed_precision.set_global_policy(params.precision)
    network = build_network(params.networks[0], (*reversed(params.image_size), 1), params.num_landmarks,
                            num_filters=params.num_filters, weight_decay=params.weight_decay,
                            **network_options(params))
    heatmap_shape = tuple(network.output.shape[1:-1])  # ([z,] y, x): the one source of the heatmap grid
    targets = GaussianTargets(params.num_landmarks, heatmap_shape, params.sigma,
                              learn_sigma=params.learn_sigma, anisotropic=params.anisotropic_sigma,
                              peak=params.target_peak)
    return HeatmapTrainer(network, targets, params.sigma_regularization)


def heatmap_size(model: HeatmapTrainer) -> tuple[int, ...]:
    """The network's output grid size, (x, y[, z]) pixels."""
    return tuple(reversed(model.targets.shape))


def train_and_test(params: Parameters, run: RunFolder, replicas: Replicas, resume: bool = False
                   ) -> tuple[Evaluation, np.ndarray]:
    """Trains `params.networks[0]` on fold `params.cv` in `run`, testing on the way.

    The story of one run: model -> data on the model's output grid -> look at a batch -> train -> test.
    `replicas` spreads each batch over the devices (`--distribute`).

    Returns:
        The last test, and the (M, N) point errors in mm of the mean-shape baseline on the same M test
        images (the training images' mean landmark positions after the validation transform).
    """
    keras.backend.clear_session()  # free the previous run's models and traced functions
    keras.utils.set_random_seed(params.seed)
    with replicas.scope():  # under a tf.distribute strategy the variables are mirrored on every device
        model = build_model(params)
        configure_graph_optimizer()
        model.compile(optimizer=optimizer(params), jit_compile=jit_compile(params.xla))
    # ---- data: images and points on the network's output grid ----
    with Dataset(
        dataset_folder(params),
        spec=data_spec(params),
        image_size=params.image_size,
        heatmap_size=heatmap_size(model),
        num_landmarks=params.num_landmarks,
        fold=params.cv,
        batch_size=params.batch_size,
        **chain_options(params),
        seed=params.seed,
        workers=params.workers,
        cache_bytes=params.cache_mb * 2**20,
    ) as dataset:
        if params.save_debug_images:  # look at a batch: what the network is fed and trained towards
            batch = next(dataset.training_batches())
            names = [f"{image_id}_batch0_{i}" for i, image_id in enumerate(batch["id"])]
            write_debug_batch(run.root / "debug", names, batch, dataset.heatmap_geometry,
                              lambda points, mask: keras.ops.convert_to_numpy(model.targets([points, mask])))
            print(f"debug images of the first batch written to {run.root / 'debug'}")
        return _train_and_test(params, run, resume, dataset, model, replicas)


def _train_and_test(
    params: Parameters, run: RunFolder, resume: bool, dataset: Dataset, model: HeatmapTrainer,
    replicas: Replicas,
) -> tuple[Evaluation, np.ndarray]:
    """`train_and_test` with its model and open dataset: baseline, training with tests, the last test."""
    validation = dataset.validation_samples()
    baseline = mean_shape_errors(dataset.mean_shape(), validation)
    spec = dataset.spec
    print(f"mean-shape baseline on the {len(validation)} test images: "
          f"{describe(landmark_statistics(baseline, spec.outlier_thresholds))}")
    tests: list[Evaluation] = []
    forward = replicas.forward(model.network)

    def test(iteration: int) -> dict:
        start = time.perf_counter()
        result = evaluate(model.network, validation, run.iteration(iteration), dataset.to_csv_units,
                          batch_size=params.batch_size, name=run.root.parent.name, targets=model.targets,
                          forward=forward, thresholds=spec.outlier_thresholds,
                          identification_radius=spec.identification_radius)
        tests.append(result)
        seconds = time.perf_counter() - start
        print(f"--- test at iteration {iteration} ({len(validation)} images, {seconds:.1f} s): "
              f"{describe(result.stats)}")
        return result.scalars()

    schedule = Schedule(params.max_iter, params.test_iter, params.snapshot_iter, params.test_at_start)
    state = {"seed": params.seed, "batch_size": params.batch_size}
    train(model, lambda start: dataset.training_batches(start, replicas.share), run, schedule, evaluate=test,
          state=state, resume=resume, step=replicas.train_on_batch)
    if not tests:  # resumed a finished run: test its final state
        test(params.max_iter)
    export(params, run, model, tests[-1])
    return tests[-1], baseline


def export_info(params: Parameters, model: HeatmapTrainer, iteration: int, calibration: dict | None) -> dict:
    """What predict.py needs besides the weights (``predict.json``): the parameters, the input and heatmap
    grids, the data spec (units, spacing policy, millimetres, intensities), landmark names, the sigmas (and
    rotations when anisotropic), the iteration and the conformal calibration (None: unknown)."""
    rotation = model.targets.rotation
    return {
        "network": params.networks[0],
        "iteration": int(iteration),
        "parameters": config_to_dict(params),
        "input_size": list(params.image_size),
        "heatmap_size": list(heatmap_size(model)),
        "data_spec": dataclasses.asdict(data_spec(params)),
        "landmark_names": [f"landmark_{n}" for n in range(params.num_landmarks)],
        "sigmas": model.sigmas().tolist(),
        "sigma_rotations": None if rotation is None else keras.ops.convert_to_numpy(rotation).tolist(),
        "calibration": calibration,
    }


def export(params: Parameters, run: RunFolder, model: HeatmapTrainer, final: Evaluation) -> None:
    """Writes the trained network and what predict.py needs into ``<run>/export/``, with the conformal
    radii of the final test (held-out images) at --coverage."""
    radii = conformal_radii(final.errors, params.coverage)
    calibration = {"coverage": params.coverage, "num_images": len(final.ids),
                   "radii_mm": [None if math.isinf(r) else float(r) for r in radii],
                   "source": "split-conformal on the last test"}
    folder = write_export(run.root / "export", model.network,
                          export_info(params, model, params.max_iter, calibration))
    finite = radii[np.isfinite(radii)]
    shown = (f"median {np.median(finite):.2f} mm, {finite.min():.2f}-{finite.max():.2f} mm" if finite.size
             else f"none: too few test images for coverage {params.coverage}")
    print(f"exported to {folder} ({NETWORK_FILE}, {INFO_FILE}); {100 * params.coverage:g} % landmark "
          f"radii: {shown}")


def describe(stats: dict) -> str:
    """One line of `landmark_statistics`: "PE 2.10 ± 1.73 mm (median 1.67), >= 2/4/10 mm: 39.5/10.7/0.3 %"."""
    if stats["pe_mean"] is None:
        return "no valid point errors"
    thresholds = "/".join(stats["outlier_percent"])
    percents = "/".join(f"{percent:.1f}" for percent in stats["outlier_percent"].values())
    identification = stats.get("identification")
    identified = ""
    if identification and identification["percent"] is not None:
        identified = (f", identified {identification['percent']:.1f} % "
                      f"(within {identification['radius_mm']:g} mm)")
    others = "".join(f"; vs {name} {other['pe_mean']:.2f} mm"
                     for name, other in stats.get("references", {}).items() if other["pe_mean"] is not None)
    return (
        f"PE {stats['pe_mean']:.2f} ± {stats['pe_std']:.2f} mm (median {stats['pe_median']:.2f}), "
        f">= {thresholds} mm: {percents} %{identified}{others}"
    )


def describe_kind(spec: DataSpec) -> str:
    """One line on what the data is taken to be: "data kind custom2d: pixel CSV, errors in mm from the files'
    spacing"."""
    if spec.mm_reference is not None:
        first, second, distance = spec.mm_reference
        units = f"errors in mm from landmarks {first} and {second} = {distance:g} mm"
    elif spec.ignore_spacing:
        units = "spacing ignored: errors in pixels"
    else:
        units = "errors in mm from the files' spacing"
    grid = f", input at {spec.image_spacing:g} mm per pixel" if spec.image_spacing else ""
    files = f", annotations {' / '.join(spec.annotations)}" if len(spec.annotations) > 1 else ""
    return f"data kind {spec.name}: {spec.landmark_units} CSV, {units}{grid}{files} (--data-kind)"


def start_replicas(params: Parameters) -> Replicas:
    """The run's device set-up (--cpu-devices, --distribute), made before TensorFlow places anything: it
    fixes its logical devices and collective ops at its first operation."""
    if params.cpu_devices:
        split_cpu(params.cpu_devices)
    return Replicas(params.distribute, params.batch_size)


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the experiment of the command line; returns the summary (also written to summary.json)."""
    parse = parser()
    args = vars(parse.parse_args(argv))
    preset, resume, check_only = args.pop("preset"), args.pop("resume"), args.pop("check")
    # ---- everything is checked before anything is written ----
    try:
        if resume:
            saved = read_config(Path(resume) / "config.json", Parameters)
            experiment = _replace(saved, args)
            replicas = start_replicas(experiment)
            runs = [(experiment, RunFolder.open(resume))]
        else:
            experiment = resolve(preset, args)
            replicas = start_replicas(experiment)  # before TensorFlow sets up its devices (network checks)
            runs = []
            for network in experiment.networks:
                per_network = resolve(preset, args, network)
                for fold in folds(experiment):
                    runs.append((dataclasses.replace(per_network, cv=fold), None))
            spec = data_spec(experiment)  # the kind fits the dimension
            # the sizes and options the networks take, and the data's chain (strengths, intensities)
            for network, size, options in {(p.networks[0], p.image_size, tuple(network_options(p).items()))
                                           for p, _ in runs}:
                try:
                    built = build_network(network, (*reversed(size), 1), experiment.num_landmarks,
                                          num_filters=1, **dict(options))
                except ValueError as error:
                    raise ValueError(f"--network {network}: {error}") from error
                if spec.image_spacing is not None and tuple(built.output.shape[1:-1]) != tuple(size[::-1]):
                    raise ValueError(f"--network {network}: its heatmaps are smaller than its input, but "
                                     f"{spec.name} at a fixed spacing is tested on whole images by tiles, "
                                     "which needs heatmaps as large as the input")
            for params, _ in runs:
                sample_generator(spec, params.image_size, None, **chain_options(params))
            optimizer(experiment)
        if not check_only:
            prepare_dataset(experiment)
        report = check_dataset(experiment, experiment.cv)
    except (ValueError, FileNotFoundError) as error:
        parse.error(str(error))
    if check_only or not report.ok or report.warnings:
        print(report.format(), file=sys.stdout if check_only and report.ok else sys.stderr)
    if not report.ok:
        sys.exit(f"{len(report.errors)} problem(s) in the dataset {dataset_folder(experiment)}: nothing was "
                 "run or written. Fix them and run again (--check checks without training).")
    if check_only:
        return {}
    print(describe_kind(data_spec(experiment)))
    results: dict[str, dict[str, Evaluation]] = {}
    baselines: dict[str, dict[str, np.ndarray]] = {}
    for params, run in runs:
        name = run_name(params.networks[0], params.cv)
        if run is None:
            run = RunFolder.create(params.output, name, config_to_dict(params), scripts=SCRIPTS)
        else:
            write_json_atomic(run.config, config_to_dict(params))  # the resumed run's (possibly new) settings
            run.record_resume()
        print(f"=== {name}: {run.root}")
        evaluation, baseline = train_and_test(params, run, replicas, resume=bool(resume))
        results.setdefault(params.networks[0], {})[name] = evaluation
        baselines.setdefault(params.networks[0], {})[name] = baseline
    summary = {network: summarize(results[network], baselines[network]) for network in results}
    for network, evaluations in results.items():
        pooled = summary[network]["pooled"]
        baseline = summary[network]["mean_shape_baseline"]["pooled"]
        print(f"\n{network}: point errors of the last test per fold, in mm (outliers: % of point errors)")
        rows = {"pooled (all folds)": pooled, "mean-shape baseline": baseline}
        fold_stats = [evaluation.stats for evaluation in evaluations.values()]
        print(format_fold_table(fold_stats, list(evaluations), extra_rows=rows), end="")
        if pooled["pe_mean"] is not None and baseline["pe_mean"]:
            ratio = pooled["pe_mean"] / baseline["pe_mean"]
            print(
                f"{network}: mean point error {pooled['pe_mean']:.2f} mm = {ratio:.2f} x the mean-shape "
                f"baseline ({baseline['pe_mean']:.2f} mm) on the same {pooled['num_images']} test images"
            )
    if not resume:  # a resumed run is one fold: keep the experiment's summary.json
        output = Path(runs[0][0].output)
        write_json_atomic(output / "summary.json", summary)
        print(f"\nsummary written to {output / 'summary.json'}")
    return summary


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # the training loop has saved a checkpoint and said how to resume
        sys.exit("\ninterrupted")
    except (SampleError, LoaderError, NonFiniteLossError, DataError, OSError) as error:
        # found mid-run (a broken image, a dead loader worker, divergence, a full disk): the loop has kept
        # the last checkpoint and said how to resume; no traceback, the message names the culprit
        sys.exit(f"\nerror: {error}")
