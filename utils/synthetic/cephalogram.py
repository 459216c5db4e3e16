"""Lateral cephalogram phantoms with the 19 ISBI 2015 landmarks and two annotators.

A head seen from the side, facing right (+x), y down, in mm: skull vault, sella turcica, orbit, ear canal,
palate, mandible, incisors and the soft tissue profile, each anchored to the landmarks it carries. The
landmark layout is the mean of the ISBI 2015 senior and junior annotations (the authors' setup files,
shipped in cephalometric_dataset/setup), moved per image by a random similarity, a small shear and an
independent jitter per landmark. Images are 8-bit radiographs with 0.1 mm pixels, as the ISBI images, but
a smaller field of view (160 x 160 mm instead of 193.5 x 240 mm) to keep the files small.

The annotation files follow the cephalometric kind: `all_challenge.csv` holds the exact positions,
`all_senior.csv` and `all_junior.csv` the same with the annotators' errors (independent Gaussian noise of
`SENIOR_NOISE_MM` and `JUNIOR_NOISE_MM` per axis), all in physical mm.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from utils.synthetic.layout import write_dataset
from utils.synthetic.projection import add_capsule, add_ellipse, raise_capsule_depth, raise_polygon_depth

__all__ = ["CEPHALOMETRIC_LANDMARKS", "generate_cephalogram_dataset", "render_cephalogram"]

CEPHALOMETRIC_LANDMARKS = (
    "sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion", "menton", "gnathion",
    "gonion", "lower_incisal_incision", "upper_incisal_incision", "upper_lip", "lower_lip", "subnasale",
    "soft_tissue_pogonion", "posterior_nasal_spine", "anterior_nasal_spine", "articulare",
)
# mean of (senior + junior) / 2 over the 400 ISBI 2015 images, mm (x, y)
MEAN_LAYOUT_MM = np.array([
    [81.4, 103.9], [139.8, 96.9], [129.2, 121.6], [60.3, 121.2], [139.3, 151.8], [135.5, 186.2],
    [134.7, 199.1], [128.7, 204.7], [132.8, 203.0], [73.0, 173.5], [142.5, 169.7], [144.4, 170.9],
    [155.9, 160.7], [152.9, 182.2], [150.4, 149.5], [144.8, 200.7], [98.3, 143.3], [141.1, 144.8],
    [67.7, 132.8],
])
PIXEL_MM = 0.1
FIELD_OF_VIEW_MM = (160.0, 160.0)  # (x, y), centred on the mean layout's centre
SCALE = (0.92, 1.08)
ROTATION_RAD = 0.08
SHIFT_MM = 5.0
SHEAR = 0.05
JITTER_MM = 1.5
SENIOR_NOISE_MM = 0.5
JUNIOR_NOISE_MM = 1.0


def sample_cephalogram_layout(rng: np.random.Generator) -> np.ndarray:
    """One head's 19 landmarks in mm of the image frame (x, y), drawn around `MEAN_LAYOUT_MM`."""
    center = MEAN_LAYOUT_MM.mean(axis=0)
    angle = rng.uniform(-ROTATION_RAD, ROTATION_RAD)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-SHEAR, SHEAR)], [rng.uniform(-SHEAR, SHEAR), 1.0]])
    linear = rng.uniform(*SCALE) * rotation @ shear
    points = (MEAN_LAYOUT_MM - center) @ linear.T + center + rng.uniform(-SHIFT_MM, SHIFT_MM, 2)
    return points + rng.normal(0.0, JITTER_MM, points.shape)


def render_cephalogram(rng: np.random.Generator) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """Renders one phantom.

    Returns:
        (image, annotations): a 2D uint8 SimpleITK image with 0.1 mm spacing, and {"all_challenge.csv": the
        exact (19, 2) physical positions in mm, "all_senior.csv" and "all_junior.csv": with the annotators'
        noise}.
    """
    truth = sample_cephalogram_layout(rng)
    width, height = (int(round(f / PIXEL_MM)) for f in FIELD_OF_VIEW_MM)
    origin = MEAN_LAYOUT_MM.mean(axis=0) - np.array(FIELD_OF_VIEW_MM) / 2.0  # mm at pixel (0, 0)
    points = (truth - origin) / PIXEL_MM  # pixel coordinates
    mm = 1.0 / PIXEL_MM  # pixels per mm
    (sella, nasion, orbitale, porion, subspinale, supramentale, pogonion, menton, gnathion, gonion,
     lower_incisal, upper_incisal, upper_lip, lower_lip, subnasale, soft_pogonion, pns, ans,
     articulare) = points
    bone = np.zeros((height, width), np.float32)
    tissue = np.full((height, width), -np.inf, np.float32)

    # skull vault and face bones
    vault_center = (sella + nasion) / 2.0 + np.array([-12.0, -14.0]) * mm
    add_ellipse(bone, vault_center, (62.0 * mm, 45.0 * mm), rng.uniform(-0.1, 0.1), depth=40.0 * mm,
                marrow=0.97, inner=0.93)
    add_ellipse(bone, sella + np.array([0.0, 2.0]) * mm, (6.0 * mm, 4.5 * mm), 0.0, depth=6.0 * mm,
                marrow=0.9, inner=0.7)
    add_ellipse(bone, orbitale + np.array([-3.0, -11.0]) * mm, (13.0 * mm, 11.0 * mm), 0.3, depth=8.0 * mm,
                marrow=0.8, inner=0.8)
    add_ellipse(bone, porion + np.array([0.0, 2.5]) * mm, (3.5 * mm, 3.0 * mm), 0.0, depth=4.0 * mm,
                marrow=0.9, inner=0.6)
    _bone(bone, nasion, nasion + np.array([-6.0, -30.0]) * mm, (2.5 * mm, 3.0 * mm))
    _bone(bone, nasion, ans + np.array([-4.0, -12.0]) * mm, (1.5 * mm, 1.2 * mm))
    _bone(bone, sella, nasion, (1.0 * mm, 1.0 * mm))  # the anterior cranial base
    _bone(bone, pns, ans, (3.0 * mm, 2.0 * mm))  # the palate
    _bone(bone, ans, subspinale, (2.0 * mm, 2.5 * mm))
    # mandible: condyle (articulare) - ramus - gonion - body - menton - gnathion - pogonion - supramentale
    for start, end, radii in (
        (articulare, gonion, (4.0, 5.0)), (gonion, menton, (5.0, 4.5)), (menton, gnathion, (4.5, 4.5)),
        (gnathion, pogonion, (4.5, 4.0)), (pogonion, supramentale, (4.0, 3.0)),
    ):
        _bone(bone, start, end, (radii[0] * mm, radii[1] * mm), marrow=0.6)
    _bone(bone, subspinale, upper_incisal, (3.5 * mm, 1.2 * mm))  # upper incisor
    _bone(bone, supramentale, lower_incisal, (3.0 * mm, 1.0 * mm))  # lower incisor
    # soft tissue: the head behind the profile, the profile through its landmarks
    nose_tip = ans + np.array([14.0, -6.0]) * mm
    profile = [nasion + np.array([6.0, -40.0]) * mm, nasion + np.array([4.0, 0.0]) * mm, nose_tip, subnasale,
               upper_lip, lower_lip, soft_pogonion, menton + np.array([0.0, 8.0]) * mm,
               np.array([-1.0, height + 1.0]), np.array([-1.0, -1.0])]
    raise_polygon_depth(tissue, np.array(profile[-2:] + [profile[0], profile[7]]), 6.0 * mm)
    for start, end in zip(profile[:7], profile[1:8], strict=True):
        raise_capsule_depth(tissue, start, end, (5.0 * mm, 5.0 * mm))
        raise_polygon_depth(tissue, np.array([start, end, vault_center]), 5.0 * mm)

    image = _expose(bone / mm, np.clip(tissue / mm, 0.0, 5.0) / 5.0, rng)
    result = sitk.GetImageFromArray(image)
    result.SetSpacing((PIXEL_MM, PIXEL_MM))
    result.SetOrigin(tuple(float(o) for o in origin))
    senior = truth + rng.normal(0.0, SENIOR_NOISE_MM, truth.shape)
    junior = truth + rng.normal(0.0, JUNIOR_NOISE_MM, truth.shape)
    return result, {"all_challenge.csv": truth, "all_senior.csv": senior, "all_junior.csv": junior}


def _bone(bone: np.ndarray, start: np.ndarray, end: np.ndarray, radii: tuple[float, float],
          **options) -> None:
    """`add_capsule`, with the radii shrunk to fit a short segment (ends that came close in a layout)."""
    fit = min(1.0, 0.45 * float(np.linalg.norm(end - start)) / max(radii))
    if fit > 0.05:
        add_capsule(bone, start, end, (radii[0] * fit, radii[1] * fit), **options)


def _expose(bone_mm: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bone chord lengths (mm) and soft tissue fraction (0..1) -> an 8-bit radiograph (bone bright)."""
    attenuation = rng.uniform(0.5, 0.8) * tissue + rng.uniform(0.05, 0.08) * bone_mm
    background, peak = rng.uniform(0.0, 0.15), rng.uniform(0.85, 0.95)
    image = background + (peak - background) * (1.0 - np.exp(-attenuation))
    image = ndimage.gaussian_filter(image, rng.uniform(3.0, 6.0), truncate=3.0)  # 0.3-0.6 mm of blur
    image += rng.uniform(0.01, 0.03) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def generate_cephalogram_dataset(out_dir: str | os.PathLike, num_images: int = 60, seed: int = 0,
                                 progress: bool = False) -> list[str]:
    """Writes a cephalogram phantom data set in the standard layout with the cephalometric kind's three
    annotation files (see `utils.synthetic.layout.write_dataset`). Ids are "ceph_0000", ...

    Args:
        out_dir: the data set folder; it must not exist yet.
        num_images: number of images, at least 3.
        seed: seed of all draws; the same seed writes the same data set.
        progress: print a progress line to stderr every few seconds and after the last image.

    Returns:
        The ids written.
    """
    return write_dataset(out_dir, render_cephalogram, "ceph", num_images, seed, progress)
