"""Spine CT phantoms: 26 vertebra landmarks in the authors' order, many of them outside the scan, in volumes
longer than a network input.

A whole spine is built in the body frame (x to the patient's left, y posterior, z superior, mm): C1-C7,
T1-T12 and L1-L5 (landmarks 0-23; 24 and 25, the rare extra vertebrae of the authors' list, never occur
here), vertebral bodies growing in size and spacing from the neck to the lumbar spine along a randomly curved
line, with ribs on the thoracic vertebrae, lungs beside them, the skull base above C1 and the sacrum below
L5. Each scan shows a random stretch of 10 to 20 vertebrae: a vertebra whose centre lies outside it (also
one the random pose moved out) is missing (NaN in `all.csv`), as in the authors' spine CT list.
Intensities are Hounsfield units (int16).
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from utils.synthetic.layout import write_dataset
from utils.synthetic.volume import Canvas

__all__ = ["NUM_SPINE_LANDMARKS", "generate_spine_dataset", "render_spine"]

NUM_SPINE_LANDMARKS = 26
REGIONS = ((7, 16.0, (8.0, 6.5)), (12, 22.0, (12.0, 10.0)), (5, 29.0, (17.0, 13.0)))  # count, pitch, body
VISIBLE = (10, 20)  # vertebrae per scan
WIDTH_MM = 170.0  # x and y field of view
SPACING_MM = 2.0  # jittered by 5 % per axis
TORSO_SEMI_AXES_MM = (72.0, 52.0)
SPINE_Y_MM = 25.0
POSE_ROTATION_DEG = (4.0, 4.0, 10.0)
POSE_SHIFT_MM = 6.0
AIR, FAT, MUSCLE, LUNG, DISC, CORTEX, CANCELLOUS = -1000.0, -100.0, 40.0, -820.0, 90.0, 700.0, 250.0


def _spine(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (24, 3) mm, body semi-axes (24, 3) mm and pitches (24,) mm of C1..L5 on a curved line."""
    pitches = np.concatenate([np.full(count, pitch) for count, pitch, _ in REGIONS]) * scale
    pitches *= rng.normal(1.0, 0.03, pitches.size)
    bodies = np.concatenate([np.tile(body, (count, 1)) for count, _, body in REGIONS]) * scale
    z = -np.concatenate([[0.0], np.cumsum((pitches[:-1] + pitches[1:]) / 2.0)])
    wavelength, phase = rng.uniform(300.0, 500.0, 2), rng.uniform(0.0, 2.0 * np.pi, 2)
    amplitude = (rng.uniform(0.0, 6.0), rng.uniform(8.0, 20.0))  # lateral (x), sagittal (y)
    x, y = (amplitude[i] * np.sin(2.0 * np.pi * z / wavelength[i] + phase[i]) for i in range(2))
    centers = np.stack([x, y + SPINE_Y_MM * scale, z], axis=1)
    semi_axes = np.column_stack([bodies, 0.36 * pitches])
    return centers, semi_axes, pitches


def render_spine(rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """Renders one spine CT phantom.

    Returns:
        (image, landmarks): a 3D int16 SimpleITK image (HU, spacing in mm, origin 0 and identity direction,
        the frame of the authors' spine coordinates) and the (26, 3) physical positions (x, y, z) in mm of
        the vertebral body centres, NaN rows for the vertebrae outside the scan.
    """
    scale = rng.uniform(0.9, 1.05)
    centers, semi_axes, pitches = _spine(rng, scale)
    first = int(rng.integers(0, 24 - VISIBLE[0] + 1))
    last = min(23, first + int(rng.integers(VISIBLE[0], VISIBLE[1] + 1)) - 1)
    top, bottom = centers[first, 2] + pitches[first] * 0.6, centers[last, 2] - pitches[last] * 0.6
    length = top - bottom
    spacing = np.round(SPACING_MM * rng.uniform(0.95, 1.05, 3), 4)
    extents = (WIDTH_MM, WIDTH_MM, length)
    size = tuple(int(round(extent / s)) for extent, s in zip(extents, spacing, strict=True))
    origin = -(np.array(size) - 1) / 2.0 * spacing
    pose = Rotation.from_euler("xyz", np.radians(rng.normal(0.0, POSE_ROTATION_DEG))).as_matrix()
    middle = np.array([0.0, SPINE_Y_MM * scale, (top + bottom) / 2.0])
    shift = rng.normal(0.0, POSE_SHIFT_MM, 3)

    def place(point) -> np.ndarray:
        return pose @ (np.asarray(point, dtype=np.float64) - middle) + shift

    canvas = Canvas(size, spacing, origin, AIR)
    torso = np.array(TORSO_SEMI_AXES_MM) * scale * rng.normal(1.0, 0.05, 2)
    axis = place((0.0, 0.0, middle[2]))
    canvas.elliptic_cylinder(axis, pose, torso, FAT + rng.normal(0.0, 20.0))
    canvas.elliptic_cylinder(axis, pose, torso - 8.0 * scale, MUSCLE + rng.normal(0.0, 20.0))
    thoracic = range(7, 19)
    lung_center = centers[list(thoracic)].mean(axis=0)
    for side in (-1.0, 1.0):
        canvas.ellipsoid(place(lung_center + np.array([side * 38.0, -25.0, 0.0]) * scale), pose,
                         np.array([28.0, 35.0, 110.0]) * scale, LUNG + rng.normal(0.0, 20.0))
    canvas.ellipsoid(place(centers[0] + np.array([0.0, -10.0, 45.0]) * scale), pose,
                     np.array([70.0, 80.0, 40.0]) * scale, CORTEX)  # skull base above C1
    canvas.ellipsoid(place(centers[23] + np.array([0.0, 5.0, -45.0]) * scale), pose,
                     np.array([30.0, 18.0, 28.0]) * scale, CORTEX)  # sacrum below L5
    for k, (center, semi, pitch) in enumerate(zip(centers, semi_axes, pitches, strict=True)):
        if k > 0:
            canvas.ellipsoid(place((center + centers[k - 1]) / 2.0), pose,
                             np.array([semi[0] * 0.9, semi[1] * 0.9, 0.16 * pitch]), DISC)
        canvas.ellipsoid(place(center), pose, semi, CORTEX)
        canvas.ellipsoid(place(center), pose, np.maximum(semi - 1.5, 0.5), CANCELLOUS)
        canvas.ellipsoid(place(center + np.array([0.0, semi[1] + 12.0 * scale, -2.0])), pose,
                         np.array([3.0, 9.0, 4.0]) * scale, CORTEX)  # spinous process
        if k in thoracic:
            for side in (-1.0, 1.0):
                angle = np.radians(np.linspace(0.0, 150.0, 10))
                rib = np.stack([side * (torso[0] - 12.0) * np.sin(angle), (torso[1] - 12.0) * np.cos(angle),
                                center[2] - 15.0 * scale * np.sin(angle / 2.0)], axis=1)
                rib[0] = center + np.array([side * (semi[0] + 6.0), semi[1] + 4.0, 0.0])
                canvas.tube(np.array([place(p) for p in rib]), 2.5 * scale, CORTEX)
    array = ndimage.gaussian_filter(canvas.array, rng.uniform(0.4, 0.8))
    array += rng.uniform(15.0, 40.0) * rng.standard_normal(array.shape, dtype=np.float32)
    image = sitk.GetImageFromArray(np.clip(np.round(array), -1024, 3071).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing))  # origin 0, identity direction: the frame of the
    landmarks = np.full((NUM_SPINE_LANDMARKS, 3), np.nan)  # authors' spine coordinates (spine_ct kind)
    visible = slice(first, last + 1)
    landmarks[visible] = np.array([place(c) for c in centers[visible]]) - origin
    index = landmarks / spacing  # a centre the pose moved out of the scan is not in it
    landmarks[np.any((index < 0) | (index > np.array(size) - 1), axis=1)] = np.nan
    return image, landmarks


def generate_spine_dataset(out_dir: str | os.PathLike, num_images: int = 40, seed: int = 0,
                           progress: bool = False) -> list[str]:
    """Writes a spine CT phantom data set in the standard layout (see `utils.synthetic.layout.write_dataset`);
    ids are "spine_0000", ...; `setup/all.csv` holds the 26 vertebrae as physical (x, y, z) in mm, NaN for
    those outside the scan.

    Args:
        out_dir: the data set folder; it must not exist yet.
        num_images: number of volumes, at least 3.
        seed: seed of all draws; the same seed writes the same data set.
        progress: print a progress line to stderr every few seconds and after the last volume.

    Returns:
        The ids written.
    """
    return write_dataset(out_dir, render_spine, "spine", num_images, seed, progress)
