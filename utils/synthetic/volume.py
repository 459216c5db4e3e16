"""CT-like torso phantoms with 10 vertebra landmarks that only context tells apart.

The torso is an elliptic cylinder of fat around muscle along the z axis, with a curved spine of look-alike
vertebrae (body, spinous and transverse processes, discs between them). The landmarks are the centres of
the vertebral bodies 1-10 (counted from the top). One more, unlabelled vertebra (0) sits above vertebra 1 at
the upper edge of the field of view, so the first and last landmarks are not simply the outermost
vertebrae: which vertebra is which follows from the configuration: ribs on vertebrae 0-5, lungs beside the
upper ones, a sacrum and iliac wings below vertebra 10.

Frames: the body frame has x to the patient's left, y posterior, z superior, in mm, origin at the middle of
the landmark span. A random rigid pose maps it into the physical frame of the volume, which has identity
direction and its centre at the origin. Intensities are Hounsfield-like units stored as int16.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from utils.synthetic.layout import write_dataset

__all__ = ["NUM_VERTEBRA_LANDMARKS", "Canvas", "generate_volume_dataset", "render_volume"]

NUM_VERTEBRA_LANDMARKS = 10

# --- geometry (body frame, mm, before the body scale) ---
FIELD_OF_VIEW_MM = (112.0, 112.0, 176.0)  # (x, y, z) physical extent of the volume, jittered by 5 % per axis
BODY_SCALE = (0.9, 1.05)  # range of the overall body size factor
TORSO_SEMI_AXES_MM = (46.0, 32.0)  # (x, y) of the torso's elliptic cross-section
FAT_MM = 5.0  # subcutaneous fat layer thickness
SPINE_Y_MM = 16.0  # vertebral bodies lie this far posterior of the torso axis
PITCH_MM = 11.0  # distance between vertebra centres at the top, growing by PITCH_GROWTH per vertebra
PITCH_GROWTH = 0.02
BODY_SEMI_AXES_MM = (9.0, 7.5, 0.36)  # vertebral body (x, y, z as a fraction of the pitch)
SPINOUS_OFFSET_MM = (0.0, 15.0, -2.0)  # spinous process centre relative to the body centre
SPINOUS_SEMI_AXES_MM = (2.5, 6.0, 3.0)
TRANSVERSE_OFFSET_MM = (11.0, 7.0, 0.0)  # transverse processes (mirrored in x)
TRANSVERSE_SEMI_AXES_MM = (6.0, 2.5, 2.5)
RIBBED_VERTEBRAE = 6  # vertebrae 0 .. RIBBED_VERTEBRAE - 1 carry ribs
RIB_RADIUS_MM = 2.2
RIB_SWEEP_DEG = 150.0  # a rib runs this far around the torso from the spine
RIB_DROP_MM = 10.0  # and falls this much
LUNG_SEMI_AXES_MM = (17.0, 20.0, 40.0)
LUNG_CENTER_MM = (22.0, -2.0)  # (x mirrored, y); z at vertebra 2
SACRUM_SEMI_AXES_MM = (15.0, 9.0, 13.0)
ILIUM_SEMI_AXES_MM = (7.0, 22.0, 20.0)
ILIUM_OFFSET_MM = (30.0, 4.0, -16.0)  # relative to the sacrum centre (x mirrored)
CURVE_AMPLITUDE_MM = ((2.0, 7.0), (0.0, 3.0))  # ranges of the sagittal (y) and lateral (x) spine curvature
CURVE_WAVELENGTH_MM = (150.0, 260.0)
POSE_ROTATION_DEG = (5.0, 5.0, 12.0)  # std of rotations about x, y, z
POSE_SHIFT_MM = 6.0  # std of the translation per axis

# --- intensities (Hounsfield-like units) ---
AIR, FAT, MUSCLE, LUNG, DISC = -1000.0, -100.0, 40.0, -800.0, 90.0
CORTEX, CANCELLOUS = 700.0, 250.0
INTENSITY_JITTER = 25.0  # std of a per-volume shift of each tissue's value
NOISE_STD = (15.0, 40.0)
BLUR_VOXELS = (0.4, 0.8)
EDGE_MM = 1.0  # width of the soft edge of every structure


class Canvas:
    """A volume painted back to front: each structure replaces what lies below it, with a soft edge.

    Args:
        size: (x, y, z) voxels. spacing: (x, y, z) mm. origin: (x, y, z) mm of voxel (0, 0, 0).
    """

    def __init__(self, size: tuple[int, ...], spacing: np.ndarray, origin: np.ndarray, value: float) -> None:
        self.spacing, self.origin = spacing, origin
        self.array = np.full(size[::-1], value, dtype=np.float32)  # (z, y, x)

    def _grid(self, center: np.ndarray, reach: float):
        """Physical coordinates (x, y, z) of the voxels within `reach` mm of `center`, and their slices."""
        shape = np.array(self.array.shape[::-1])
        low = np.clip(np.floor((center - reach - self.origin) / self.spacing), 0, shape).astype(int)
        high = np.clip(np.ceil((center + reach - self.origin) / self.spacing) + 1, 0, shape).astype(int)
        axes = [self.origin[i] + self.spacing[i] * np.arange(low[i], high[i]) for i in range(3)]
        slices = tuple(slice(low[i], high[i]) for i in (2, 1, 0))
        return slices, axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]

    def _blend(self, slices, inside_mm: np.ndarray, value: float) -> None:
        weight = np.clip(inside_mm / EDGE_MM + 0.5, 0.0, 1.0)
        self.array[slices] += weight * (value - self.array[slices])

    def ellipsoid(self, center: np.ndarray, rotation: np.ndarray, semi_axes, value: float) -> None:
        """Paints a solid ellipsoid; rotation (3, 3) has the ellipsoid's axes as columns (physical frame)."""
        semi_axes = np.asarray(semi_axes, dtype=np.float64)
        slices, x, y, z = self._grid(center, semi_axes.max() + EDGE_MM)
        offset = (x - center[0], y - center[1], z - center[2])
        radius = np.sqrt(
            sum(np.square(sum(offset[i] * rotation[i, j] for i in range(3)) / semi_axes[j]) for j in range(3))
        )
        self._blend(slices, (1.0 - radius) * semi_axes.min(), value)

    def elliptic_cylinder(self, center: np.ndarray, rotation: np.ndarray, semi_axes, value: float) -> None:
        """Paints an elliptic cylinder along the rotation's third column, through the whole volume."""
        semi_axes = np.asarray(semi_axes, dtype=np.float64)
        slices, x, y, z = self._grid(center, np.inf)
        offset = (x - center[0], y - center[1], z - center[2])
        radius = np.sqrt(
            sum(np.square(sum(offset[i] * rotation[i, j] for i in range(3)) / semi_axes[j]) for j in range(2))
        )
        self._blend(slices, (1.0 - radius) * semi_axes.min(), value)

    def tube(self, points: np.ndarray, radius: float, value: float) -> None:
        """Paints a tube of `radius` mm around the polyline `points` (K, 3), segment by segment."""
        for start, end in zip(points[:-1], points[1:], strict=True):
            middle = (start + end) / 2.0
            slices, x, y, z = self._grid(middle, np.linalg.norm(end - start) / 2.0 + radius + EDGE_MM)
            direction = end - start
            offset = (x - start[0], y - start[1], z - start[2])
            t = np.clip(sum(offset[i] * direction[i] for i in range(3)) / direction.dot(direction), 0.0, 1.0)
            distance = np.sqrt(sum(np.square(offset[i] - t * direction[i]) for i in range(3)))
            self._blend(slices, radius - distance, value)


def _spine(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertebra centres, their local axis rotations and heights along a randomly curved spine (body frame).

    Returns:
        (centers (11, 3) mm, rotations (11, 3, 3), pitches (11,) mm) for vertebrae 0 (unlabelled) to 10.
    """
    count = NUM_VERTEBRA_LANDMARKS + 1
    pitches = PITCH_MM * scale * (1.0 + PITCH_GROWTH * np.arange(count)) * rng.normal(1.0, 0.02, count)
    z = -np.concatenate([[0.0], np.cumsum((pitches[:-1] + pitches[1:]) / 2.0)])
    z -= (z[1] + z[-1]) / 2.0
    wavelength = rng.uniform(*CURVE_WAVELENGTH_MM, 2)
    phase = rng.uniform(0.0, 2.0 * np.pi, 2)
    amplitude = np.array([rng.uniform(*CURVE_AMPLITUDE_MM[1]), rng.uniform(*CURVE_AMPLITUDE_MM[0])])
    x, y = (amplitude[i] * np.sin(2.0 * np.pi * z / wavelength[i] + phase[i]) for i in range(2))
    slope = [
        amplitude[i] * 2.0 * np.pi / wavelength[i] * np.cos(2.0 * np.pi * z / wavelength[i] + phase[i])
        for i in range(2)
    ]
    centers = np.stack([x, y + SPINE_Y_MM * scale, z], axis=1)
    # tilt each vertebra so that its z axis follows the spine's tangent
    rotations = Rotation.from_euler("yx", np.stack([np.arctan(slope[0]), -np.arctan(slope[1])], axis=1))
    return centers, rotations.as_matrix(), pitches


def render_volume(
    rng: np.random.Generator,
    size: tuple[int, int, int] = (64, 64, 96),
    field_of_view: tuple[float, float, float] = FIELD_OF_VIEW_MM,
) -> tuple[sitk.Image, np.ndarray]:
    """Renders one torso phantom.

    Args:
        rng: the generator all draws come from; the same generator state gives the same volume.
        size: (x, y, z) voxels; the spacing is field of view / size (about 1.8 mm at the default size).
        field_of_view: (x, y, z) physical extent in mm, jittered by 5 % per axis; the default frames the
            lower spine, a larger one adds air around the body (e.g. (256, 256, 256) with a size of 256^3
            gives 1 mm voxels).

    Returns:
        (image, landmarks): a 3D int16 SimpleITK image (identity direction, centred at the origin, spacing
        in mm) and the (10, 3) float64 physical positions (x, y, z) in mm of the vertebral body centres 1-10.
    """
    size = tuple(int(s) for s in size)
    spacing = np.round(np.array(field_of_view) * rng.uniform(0.95, 1.05, 3) / np.array(size), 4)
    origin = -(np.array(size) - 1) / 2.0 * spacing
    scale = rng.uniform(*BODY_SCALE)
    pose = Rotation.from_euler("xyz", np.radians(rng.normal(0.0, POSE_ROTATION_DEG))).as_matrix()
    shift = rng.normal(0.0, POSE_SHIFT_MM, 3)

    def place(point) -> np.ndarray:
        return pose @ np.asarray(point, dtype=np.float64) + shift

    values = {
        name: value + rng.normal(0.0, INTENSITY_JITTER)
        for name, value in {"fat": FAT, "muscle": MUSCLE, "lung": LUNG, "disc": DISC}.items()
    }
    canvas = Canvas(size, spacing, origin, AIR)
    torso = np.array(TORSO_SEMI_AXES_MM) * scale * rng.normal(1.0, 0.05, 2)
    canvas.elliptic_cylinder(place((0, 0, 0)), pose, torso, values["fat"])
    canvas.elliptic_cylinder(place((0, 0, 0)), pose, torso - FAT_MM * scale, values["muscle"])

    centers, rotations, pitches = _spine(rng, scale)
    for side in (-1.0, 1.0):
        lung = (side * LUNG_CENTER_MM[0] * scale, LUNG_CENTER_MM[1] * scale, centers[2, 2])
        canvas.ellipsoid(place(lung), pose, np.array(LUNG_SEMI_AXES_MM) * scale, values["lung"])
    for k in range(RIBBED_VERTEBRAE):
        for side in (-1.0, 1.0):
            angle = np.radians(np.linspace(0.0, RIB_SWEEP_DEG, 12))
            inner = (torso - 2.5 * FAT_MM * scale)[:, None]
            rib = np.stack(
                [
                    side * inner[0, 0] * np.sin(angle),
                    inner[1, 0] * np.cos(angle),
                    centers[k, 2] - RIB_DROP_MM * scale * np.sin(angle / 2.0),
                ],
                axis=1,
            )
            rib[0] = (
                centers[k] + np.array([side * TRANSVERSE_OFFSET_MM[0], TRANSVERSE_OFFSET_MM[1], 0]) * scale
            )
            canvas.tube(np.array([place(p) for p in rib]), RIB_RADIUS_MM * scale, CORTEX)
    sacrum = centers[-1] + np.array([0.0, 2.0, -1.4 * pitches[-1] - SACRUM_SEMI_AXES_MM[2] * scale * 0.5])
    canvas.ellipsoid(place(sacrum), pose, np.array(SACRUM_SEMI_AXES_MM) * scale, CORTEX)
    for side in (-1.0, 1.0):
        offset = np.array(ILIUM_OFFSET_MM) * scale * (side, 1.0, 1.0)
        tilt = pose @ Rotation.from_euler("z", side * 0.5).as_matrix()
        canvas.ellipsoid(place(sacrum + offset), tilt, np.array(ILIUM_SEMI_AXES_MM) * scale, CORTEX)

    for k, (center, rotation, pitch) in enumerate(zip(centers, rotations, pitches, strict=True)):
        axes = pose @ rotation
        if k > 0:
            disc = (center + centers[k - 1]) / 2.0
            canvas.ellipsoid(
                place(disc), axes, np.array([8.0, 6.5, 0.5 * pitch / scale]) * scale, values["disc"]
            )
        body = np.array(
            [BODY_SEMI_AXES_MM[0] * scale, BODY_SEMI_AXES_MM[1] * scale, BODY_SEMI_AXES_MM[2] * pitch]
        )
        canvas.ellipsoid(place(center), axes, body, CORTEX)
        canvas.ellipsoid(place(center), axes, body - 1.2, CANCELLOUS)
        local = rotation * scale
        canvas.ellipsoid(
            place(center + local @ SPINOUS_OFFSET_MM), axes, np.array(SPINOUS_SEMI_AXES_MM) * scale, CORTEX
        )
        for side in (-1.0, 1.0):
            offset = np.array(TRANSVERSE_OFFSET_MM) * (side, 1.0, 1.0)
            canvas.ellipsoid(
                place(center + local @ offset), axes, np.array(TRANSVERSE_SEMI_AXES_MM) * scale, CORTEX
            )

    array = ndimage.gaussian_filter(canvas.array, rng.uniform(*BLUR_VOXELS))
    array += rng.uniform(*NOISE_STD) * rng.standard_normal(array.shape, dtype=np.float32)
    image = sitk.GetImageFromArray(np.clip(np.round(array), -1024, 3071).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    landmarks = np.array([place(center) for center in centers[1:]])
    return image, landmarks


def generate_volume_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 30,
    seed: int = 0,
    size: tuple[int, int, int] = (64, 64, 96),
    progress: bool = False,
    field_of_view: tuple[float, float, float] = FIELD_OF_VIEW_MM,
) -> list[str]:
    """Writes a torso phantom data set in the standard layout (see `utils.synthetic.layout.write_dataset`).

    Ids are "volume_0000", ...; `setup/all.csv` holds the 10 landmarks as physical (x, y, z) in mm; images
    are 3D int16 .mha files with spacing and origin.

    Args:
        out_dir: the data set folder; it must not exist yet.
        num_images: number of volumes, at least 3.
        seed: seed of all draws; the same seed writes the same data set.
        size: (x, y, z) voxels per volume.
        progress: print a progress line to stderr every few seconds and after the last volume.
        field_of_view: (x, y, z) physical extent of each volume in mm (see `render_volume`).

    Returns:
        The ids written.
    """
    render = partial(render_volume, size=size, field_of_view=field_of_view)
    return write_dataset(out_dir, render, "volume", num_images, seed, progress)
