"""Phantom data sets with known ground truth, generated deterministically from a seed: 2D hand radiographs
with the 37 landmarks of the Digital Hand Atlas (same order) and 3D CT-like torso volumes with 10 vertebra
landmarks. Command line: `python -m utils.synthetic {hand,volume} OUT_DIR [--seed S] [--num-images N]`."""

from utils.synthetic.hand import LANDMARK_NAMES, generate_hand_dataset, render_hand
from utils.synthetic.volume import NUM_VERTEBRA_LANDMARKS, generate_volume_dataset, render_volume

__all__ = [
    "LANDMARK_NAMES",
    "NUM_VERTEBRA_LANDMARKS",
    "generate_hand_dataset",
    "generate_volume_dataset",
    "render_hand",
    "render_volume",
]
