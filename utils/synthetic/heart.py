"""Chest phantoms with one landmark, the heart's centre, as CT (Hounsfield units) or MR (arbitrary units).

A chest: an elliptic cylinder of fat and muscle, two lungs, a spine of a few vertebral bodies behind, and
the heart between the lungs, left of the midline and in front: a myocardium ellipsoid around a blood pool,
tilted along a random long axis. The landmark is the centre of the heart ellipsoid. The whole body gets a
random rigid pose. CT stores HU as int16 (blood with contrast). MR maps the same tissues to MR-like values
(fat bright, lung and bone dark, blood bright), times a smooth random bias field, with Rician-like noise, as
uint16: only the intensity handling of the heart kinds differs between the two.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from utils.synthetic.layout import write_dataset
from utils.synthetic.volume import Canvas

__all__ = ["generate_heart_dataset", "render_heart"]

FIELD_OF_VIEW_MM = (360.0, 300.0, 300.0)  # (x, y, z)
SPACING_MM = 4.0  # jittered by 5 % per axis
TORSO_SEMI_AXES_MM = (150.0, 105.0)
LUNG_SEMI_AXES_MM = (55.0, 70.0, 100.0)
LUNG_CENTER_MM = (70.0, 10.0, 10.0)  # (x mirrored, y, z)
HEART_SEMI_AXES_MM = (55.0, 42.0, 45.0)
HEART_CENTER_MM = ((10.0, 30.0), (-45.0, -25.0), (-30.0, 10.0))  # (x, y, z) ranges; y anterior negative
WALL_MM = 10.0
POSE_ROTATION_DEG = (4.0, 4.0, 8.0)
POSE_SHIFT_MM = 10.0
# tissue -> (CT HU, MR value)
TISSUES = {"air": (-1000.0, 0.0), "fat": (-100.0, 900.0), "muscle": (40.0, 350.0), "lung": (-850.0, 40.0),
           "blood": (250.0, 700.0), "bone": (500.0, 120.0)}


def render_heart(rng: np.random.Generator, modality: str) -> tuple[sitk.Image, np.ndarray]:
    """Renders one chest phantom.

    Args:
        rng: the generator of all draws.
        modality: "ct" (int16 HU) or "mr" (uint16).

    Returns:
        (image, landmarks): a 3D SimpleITK image (identity direction, centred at the origin, spacing in mm)
        and the (1, 3) physical position (x, y, z) in mm of the heart's centre.
    """
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    spacing = np.round(SPACING_MM * rng.uniform(0.95, 1.05, 3), 4)
    size = tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, spacing, strict=True))
    origin = -(np.array(size) - 1) / 2.0 * spacing
    pose = Rotation.from_euler("xyz", np.radians(rng.normal(0.0, POSE_ROTATION_DEG))).as_matrix()
    shift = rng.normal(0.0, POSE_SHIFT_MM, 3)

    def place(point) -> np.ndarray:
        return pose @ np.asarray(point, dtype=np.float64) + shift

    value = {name: ct + 20.0 * rng.standard_normal() if modality == "ct" else mr * rng.normal(1.0, 0.05)
             for name, (ct, mr) in TISSUES.items()}
    canvas = Canvas(size, spacing, origin, value["air"])
    torso = np.array(TORSO_SEMI_AXES_MM) * rng.uniform(0.9, 1.05)
    canvas.elliptic_cylinder(place((0, 0, 0)), pose, torso, value["fat"])
    canvas.elliptic_cylinder(place((0, 0, 0)), pose, torso - 12.0, value["muscle"])
    for side in (-1.0, 1.0):
        lung = (side * LUNG_CENTER_MM[0], LUNG_CENTER_MM[1], LUNG_CENTER_MM[2])
        canvas.ellipsoid(place(lung), pose, np.array(LUNG_SEMI_AXES_MM) * rng.uniform(0.9, 1.1, 3),
                         value["lung"])
    for z in np.arange(-140.0, 141.0, 28.0):
        canvas.ellipsoid(place((0.0, 75.0, z)), pose, (18.0, 15.0, 11.0), value["bone"])
    center = np.array([rng.uniform(*HEART_CENTER_MM[i]) for i in range(3)])
    axes = pose @ Rotation.from_euler("zyx", rng.normal(0.0, 0.25, 3) + (0.6, 0.0, 0.5)).as_matrix()
    semi_axes = np.array(HEART_SEMI_AXES_MM) * rng.uniform(0.85, 1.15, 3)
    canvas.ellipsoid(place(center), axes, semi_axes, value["muscle"])
    canvas.ellipsoid(place(center + (5.0, 0.0, 0.0)), axes, semi_axes - WALL_MM, value["blood"])

    array = ndimage.gaussian_filter(canvas.array, 0.6)
    if modality == "ct":
        array += rng.uniform(10.0, 30.0) * rng.standard_normal(array.shape, dtype=np.float32)
        stored = np.clip(np.round(array), -1024, 3071).astype(np.int16)
    else:
        grid = np.stack(np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in array.shape), indexing="ij"))
        bias = np.exp(np.tensordot(rng.normal(0.0, 0.2, 3), grid, axes=1)).astype(np.float32)
        noise = rng.uniform(10.0, 30.0)
        real = array * bias + noise * rng.standard_normal(array.shape, dtype=np.float32)
        imaginary = noise * rng.standard_normal(array.shape, dtype=np.float32)
        stored = np.clip(np.round(np.hypot(real, imaginary)), 0, 65535).astype(np.uint16)
    image = sitk.GetImageFromArray(stored)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image, place(center)[None]


def generate_heart_dataset(out_dir: str | os.PathLike, modality: str, num_images: int = 60, seed: int = 0,
                           progress: bool = False) -> list[str]:
    """Writes a chest phantom data set of one modality in the standard layout (see
    `utils.synthetic.layout.write_dataset`); ids are "heart_ct_0000" or "heart_mr_0000", ...; `setup/all.csv`
    holds the heart centre in physical mm.

    Args:
        out_dir: the data set folder; it must not exist yet.
        modality: "ct" or "mr".
        num_images: number of volumes, at least 3.
        seed: seed of all draws; the same seed writes the same data set.
        progress: print a progress line to stderr every few seconds and after the last volume.

    Returns:
        The ids written.
    """
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    return write_dataset(out_dir, partial(render_heart, modality=modality), f"heart_{modality}", num_images,
                         seed, progress)
