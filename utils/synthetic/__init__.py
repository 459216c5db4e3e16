"""Phantom data sets with known ground truth, generated deterministically from a seed, one per kind of data:
2D hand radiographs with the 37 landmarks of the Digital Hand Atlas (same order), 2D cephalograms with the 19
ISBI 2015 landmarks and two annotators, 3D CT-like torso volumes with 10 vertebra landmarks, long spine CTs
with 26 vertebrae (many outside each scan), and 3D chest CT or MR volumes with the heart's centre. Command
line: `python -m utils.synthetic KIND OUT_DIR [--seed S] [--num-images N]`."""

from functools import partial

from utils.synthetic.cephalogram import (
    CEPHALOMETRIC_LANDMARKS,
    generate_cephalogram_dataset,
    render_cephalogram,
)
from utils.synthetic.hand import LANDMARK_NAMES, generate_hand_dataset, render_hand
from utils.synthetic.heart import generate_heart_dataset, render_heart
from utils.synthetic.spine import NUM_SPINE_LANDMARKS, generate_spine_dataset, render_spine
from utils.synthetic.volume import NUM_VERTEBRA_LANDMARKS, generate_volume_dataset, render_volume

PHANTOMS = {
    "hand": generate_hand_dataset,
    "volume": generate_volume_dataset,
    "cephalometric": generate_cephalogram_dataset,
    "spine_ct": generate_spine_dataset,
    "heart_ct": partial(generate_heart_dataset, modality="ct"),
    "heart_mr": partial(generate_heart_dataset, modality="mr"),
}
"""The phantom generators by name, each ``generate(out_dir, num_images=N, seed=S, progress=True)``."""
PHANTOM_NAMES = {"hand_xray": "hand", "custom3d": "volume"}
"""Data kinds (`dataset.DATA_SPECS` names) whose phantom has another name; the others share theirs."""


def phantom_of(kind: str) -> str | None:
    """The phantom name of a data kind or phantom name ("hand_xray" -> "hand"), or None when it has none."""
    name = PHANTOM_NAMES.get(kind, kind)
    return name if name in PHANTOMS else None


__all__ = [
    "CEPHALOMETRIC_LANDMARKS",
    "LANDMARK_NAMES",
    "NUM_SPINE_LANDMARKS",
    "NUM_VERTEBRA_LANDMARKS",
    "PHANTOMS",
    "PHANTOM_NAMES",
    "generate_cephalogram_dataset",
    "generate_hand_dataset",
    "generate_heart_dataset",
    "generate_spine_dataset",
    "generate_volume_dataset",
    "phantom_of",
    "render_cephalogram",
    "render_hand",
    "render_heart",
    "render_spine",
    "render_volume",
]
