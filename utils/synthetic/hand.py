"""Hand radiograph phantoms with the 37 landmarks of the Digital Hand Atlas, in the same order.

A phantom is drawn in three steps, all from one injected generator:

1. Layout: the mean landmark layout `MEAN_LAYOUT` (the similarity-aligned mean of the annotated atlas
   radiographs, scaled so that landmarks 1 and 5 are 50 mm apart) is varied like real hands vary: finger
   spread, finger and metacarpal lengths, small joint bends, thumb abduction, wrist deviation, hand width.
2. Anatomy: bones are placed on the landmarks so that every landmark is exact ground truth of the drawn
   structure: a joint landmark (MCP, PIP, DIP, thumb IP) is the centre of the gap between the two bone ends
   meeting there (each bone ends half a gap from it along its own axis), a finger tip is the distal end of
   the distal phalanx, a metacarpal base is the proximal end of the metacarpal, a carpal landmark is a pole
   of its carpal bone's ellipse, the radius and ulna landmarks are the corners of their flat metaphysis ends
   and the tips of their epiphyses. Soft tissue (fingers, palm, thumb, forearm) surrounds the bones.
3. Image: the layout is rotated, scaled to pixels and placed in an image of the real radiographs' size;
   bone and soft tissue thickness become intensities with random contrast, gamma, blur and noise, stored
   as 8-bit with a random pixel spacing of the real radiographs' order.

Coordinate frames: the hand frame has x towards the thumb (radial side), y towards the forearm (proximal),
units millimetres of the mean hand, origin between landmarks 3 and 4; image landmarks are pixel indices
(x = column, y = row), as in the atlas CSV. Hands are left hands seen as in the atlas (thumb on the right).
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull

from utils.synthetic.layout import write_dataset
from utils.synthetic.projection import (
    add_capsule,
    add_ellipse,
    add_polygon,
    add_tube,
    raise_capsule_depth,
    raise_polygon_depth,
)

__all__ = [
    "FINGERS",
    "LANDMARK_NAMES",
    "MEAN_LAYOUT",
    "generate_hand_dataset",
    "render_hand",
    "sample_hand_layout",
]

LANDMARK_NAMES: tuple[str, ...] = (
    "ulna metaphysis, ulnar corner",  # 0
    "ulna epiphysis, styloid tip",  # 1
    "ulna metaphysis, radial corner",  # 2
    "radius metaphysis, ulnar corner",  # 3
    "radius metaphysis, radial corner",  # 4
    "radius epiphysis, styloid tip",  # 5
    "triquetrum",  # 6
    "lunate",  # 7
    "scaphoid",  # 8
    "hamate",  # 9
    "capitate",  # 10
    "trapezoid",  # 11
    "trapezium",  # 12
    "metacarpal 5 base",  # 13
    "metacarpal 4 base",  # 14
    "metacarpal 3 base",  # 15
    "metacarpal 2 base",  # 16
    "metacarpal 1 base",  # 17
    "thumb MCP",  # 18
    "thumb IP",  # 19
    "thumb tip",  # 20
    "index MCP",  # 21
    "index PIP",  # 22
    "index DIP",  # 23
    "index tip",  # 24
    "middle MCP",  # 25
    "middle PIP",  # 26
    "middle DIP",  # 27
    "middle tip",  # 28
    "ring MCP",  # 29
    "ring PIP",  # 30
    "ring DIP",  # 31
    "ring tip",  # 32
    "little MCP",  # 33
    "little PIP",  # 34
    "little DIP",  # 35
    "little tip",  # 36
)

# Landmark chains from the metacarpal base to the tip; consecutive landmarks bound one bone.
FINGERS: dict[str, tuple[int, ...]] = {
    "thumb": (17, 18, 19, 20),
    "index": (16, 21, 22, 23, 24),
    "middle": (15, 25, 26, 27, 28),
    "ring": (14, 29, 30, 31, 32),
    "little": (13, 33, 34, 35, 36),
}

# Mean layout (37, 2), hand frame (x radial, y proximal, mm; |L1 - L5| = 50 mm, origin between L3 and L4),
# the generalised-Procrustes mean of the atlas annotations, rotated so that the middle MCP is straight above
# the origin.
MEAN_LAYOUT = np.array(
    [
        [-37.7, -0.6], [-33.4, -12.4], [-19.8, 0.5], [-16.3, -1.1], [16.3, 1.1], [16.3, -18.0],
        [-25.2, -18.7], [-12.8, -11.4], [2.6, -14.0], [-14.6, -27.4], [-3.9, -22.6], [13.7, -35.7],
        [20.5, -29.7], [-24.7, -48.4], [-15.2, -51.6], [-2.3, -51.9], [13.4, -49.6], [29.6, -41.0],
        [63.4, -84.1], [81.0, -116.0], [94.8, -138.8], [28.4, -130.2], [39.2, -175.9], [44.6, -203.7],
        [47.5, -224.5], [0.0, -131.5], [3.3, -184.3], [4.1, -218.8], [3.0, -241.4], [-24.3, -121.8],
        [-29.9, -171.1], [-33.9, -203.3], [-35.9, -226.3], [-47.0, -109.4], [-60.9, -145.1],
        [-68.7, -166.1], [-74.0, -185.5],
    ]
)  # fmt: skip

# --- variation of the layout (hand frame) ---
CARPAL_JITTER_MM = 1.2  # std of independent shifts of landmarks 0-12
WRIST_DEVIATION_DEG = 4.0  # std of radial/ulnar deviation: forearm (0-5) rotated about the carpus
HAND_WIDTH_STD = 0.03  # std of the relative hand width (x scale)
FINGER_LENGTH_STD = (0.04, 0.025)  # std of all fingers' length factor, and of each finger's own factor
METACARPAL_LENGTH_STD = 0.03  # std of each metacarpal's length factor
# Finger spread: each finger's phalanges turn about its MCP by g * SPREAD_DEG + N(0, SPREAD_STD_DEG) with one
# g ~ N(0, 1) per hand (positive turns towards +x, the thumb); the metacarpal turns by METACARPAL_SPREAD
# times that about its base.
SPREAD_DEG = {"thumb": 8.0, "index": 4.0, "middle": 0.5, "ring": -3.0, "little": -7.0}
SPREAD_STD_DEG = {"thumb": 6.0, "index": 2.5, "middle": 2.0, "ring": 2.5, "little": 3.0}
METACARPAL_SPREAD = 0.3
JOINT_BEND_STD_DEG = (2.5, 5.0)  # std of the turn at each further joint: fingers, thumb

# --- anatomy (hand frame, mm) ---
FINGER_WIDTH = {"thumb": 1.1, "index": 1.0, "middle": 1.05, "ring": 0.95, "little": 0.85}
# per bone of a finger chain (metacarpal, proximal, middle, distal phalanx): end radii (proximal, distal)
BONE_RADII = ((5.0, 5.4), (5.4, 4.4), (4.5, 3.6), (3.8, 2.8))
THUMB_BONE_RADII = ((5.4, 5.2), (5.2, 4.3), (4.3, 3.2))
BONE_WAIST = 0.4  # shaft narrowing at mid-length, fraction of the smaller end radius
JOINT_GAP_MM = (1.8, 1.4, 1.2)  # gap between bone ends at the MCP, PIP, DIP (thumb: MCP, IP)
# Carpal bones: (landmark, centre offset from the landmark (x, y), minor/major axis ratio, major axis angle in
# degrees from +x towards +y); the bone is the ellipse through its landmark at the pole facing away from the
# offset, sized so that the landmark lies exactly on its outline.
CARPALS = (
    (6, (7.0, -5.5), 0.75, -35.0),  # triquetrum
    (7, (0.0, -6.0), 0.75, 0.0),  # lunate
    (8, (4.0, -10.5), 0.55, -65.0),  # scaphoid
    (9, (-3.5, -10.0), 0.8, -100.0),  # hamate
    (10, (0.5, -13.0), 0.6, -90.0),  # capitate
    (11, (2.0, -6.5), 0.8, -60.0),  # trapezoid
    (12, (6.5, -5.5), 0.75, -40.0),  # trapezium
    (1, (3.5, 6.0), 0.55, None),  # ulna epiphysis (axis along the offset)
)
RADIUS_SHAFT_HALF_WIDTH_MM = 8.0
CARPAL_DEPTH = 0.6  # depth semi-axis of a carpal bone, fraction of its smaller in-plane semi-axis
ULNA_SHAFT_HALF_WIDTH_MM = 6.0
METAPHYSIS_FLARE_MM = 12.0
GROWTH_PLATE_GAP_MM = 1.5  # between the radius metaphysis and its epiphysis
EPIPHYSIS_ULNAR_HEIGHT_MM = 6.5  # height of the radius epiphysis on its ulnar side
RADIUS_RIM_MM = 4.0
MARROW = 0.55  # share of the marrow chord missing from long bones (bright cortex)
SOFT_FINGER_RADII_MM = (10.5, 8.0)  # soft tissue around a finger at the MCP and at the tip
SOFT_THUMB_RADII_MM = (13.0, 8.5)
TIP_PAD_MM = 4.5  # soft tissue beyond the finger tip
SOFT_ROUNDING_MM = 10.0  # soft tissue thickness rises over this depth from the skin
FOREARM_MARGIN_MM = 8.0  # soft tissue beyond the ulna and radius corners
FOREARM_OVERLAP_MM = 30.0  # the forearm's soft tissue reaches this far distal of the radius and ulna
WEB_MM = 12.0  # skin webs between the fingers lie this far distal of the mean of two MCPs

# --- image ---
PIXELS_PER_MM = (6.5, 9.2)  # range of the layout's scale in pixels per hand-frame mm (atlas: about 7.7)
PHYSICAL_SCALE = (0.8, 1.05)  # range of real mm per hand-frame mm; spacing = physical scale / pixels per mm
ROTATION_DEG = (-2.5, 4.0)  # mean and std of the in-plane rotation (atlas: -2.6 and 3.6)
MARGIN_PX = (10.0, 150.0)  # range of the free border beyond the soft tissue, left, right and top
BOTTOM_MARGIN_PX = (60.0, 300.0)  # range of the forearm length shown below the lowest landmark
SIZE_MULTIPLE = 16  # image width and height are multiples of this


def _rotation(angle: float) -> np.ndarray:
    """2x2 matrix turning vectors by `angle` radians from +x towards +y."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def sample_hand_layout(rng: np.random.Generator) -> np.ndarray:
    """Draws one hand's landmark layout in the hand frame.

    Args:
        rng: the generator all draws come from.

    Returns:
        (37, 2) float64 landmarks (x, y) in hand-frame mm, atlas order.
    """
    layout = MEAN_LAYOUT.copy()
    layout[:13] += rng.normal(0.0, CARPAL_JITTER_MM, (13, 2))
    carpus = layout[6:13].mean(axis=0)
    deviation = _rotation(np.radians(rng.normal(0.0, WRIST_DEVIATION_DEG)))
    layout[:6] = (layout[:6] - carpus) @ deviation.T + carpus
    spread = rng.normal()
    length = rng.normal(1.0, FINGER_LENGTH_STD[0])
    for name, chain in FINGERS.items():
        segments = np.diff(MEAN_LAYOUT[list(chain)], axis=0)
        segments[0] *= rng.normal(1.0, METACARPAL_LENGTH_STD)
        segments[1:] *= length * rng.normal(1.0, FINGER_LENGTH_STD[1])
        finger_turn = np.radians(spread * SPREAD_DEG[name] + rng.normal(0.0, SPREAD_STD_DEG[name]))
        bend_std = JOINT_BEND_STD_DEG[1] if name == "thumb" else JOINT_BEND_STD_DEG[0]
        turns = [METACARPAL_SPREAD * finger_turn, (1.0 - METACARPAL_SPREAD) * finger_turn]
        turns += list(np.radians(rng.normal(0.0, bend_std, len(segments) - 2)))
        point, angle = layout[chain[0]], 0.0
        for landmark, segment, turn in zip(chain[1:], segments, turns, strict=True):
            angle += turn
            point = point + _rotation(angle) @ segment
            layout[landmark] = point
    layout[:, 0] *= rng.normal(1.0, HAND_WIDTH_STD)
    return layout


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.hypot(*vector)


def _carpal_ellipse(layout: np.ndarray, landmark: int, offset, ratio: float, angle_deg: float | None):
    """Centre, semi-axes and angle (hand frame) of the ellipse whose outline passes through the landmark at
    the pole facing away from `offset`."""
    offset = np.asarray(offset, dtype=np.float64)
    angle = np.arctan2(offset[1], offset[0]) if angle_deg is None else np.radians(angle_deg)
    toward = -_unit(offset)
    along = toward[0] * np.cos(angle) + toward[1] * np.sin(angle)
    across = -toward[0] * np.sin(angle) + toward[1] * np.cos(angle)
    major = np.hypot(*offset) * np.sqrt(along**2 + (across / ratio) ** 2)
    return layout[landmark] + offset, (major, ratio * major), angle


def render_hand(
    rng: np.random.Generator, pixels_per_mm: float | None = None
) -> tuple[sitk.Image, np.ndarray]:
    """Renders one hand radiograph phantom.

    Args:
        rng: the generator all draws come from; the same generator state gives the same image.
        pixels_per_mm: the layout's scale in pixels per hand-frame mm, or None to draw it from
            `PIXELS_PER_MM` (atlas size, about 1200-1700 x 1900-2400 px). Small values give small images
            for tests.

    Returns:
        (image, landmarks): a 2D 8-bit SimpleITK image (origin 0, identity direction, isotropic spacing in mm
        of the real radiographs' order) and its (37, 2) float64 landmarks as pixel indices (x, y), atlas
        order (see `LANDMARK_NAMES`).
    """
    layout = sample_hand_layout(rng)
    scale = rng.uniform(*PIXELS_PER_MM) if pixels_per_mm is None else float(pixels_per_mm)
    spacing = rng.uniform(*PHYSICAL_SCALE) / scale
    rotation = _rotation(np.radians(rng.normal(*ROTATION_DEG)))
    posed = layout @ rotation.T * scale
    margins = (
        rng.uniform(*MARGIN_PX, 3)
        + np.array([SOFT_FINGER_RADII_MM[1], SOFT_THUMB_RADII_MM[1], TIP_PAD_MM]) * scale
    )
    bottom = rng.uniform(*BOTTOM_MARGIN_PX) * scale / np.mean(PIXELS_PER_MM)
    low, high = posed.min(axis=0), posed.max(axis=0)
    width = int(np.ceil((high[0] - low[0] + margins[0] + margins[1]) / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    height = int(np.ceil((high[1] - low[1] + margins[2] + bottom) / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    shift = np.array([margins[0], margins[2]]) - low
    landmarks = posed + shift

    def to_pixels(points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ rotation.T * scale + shift

    bone = np.zeros((height, width))
    tissue = np.full((height, width), -np.inf)
    growth_plate = rng.uniform(0.0, 0.8)
    _draw_fingers(bone, tissue, layout, to_pixels, scale, growth_plate)
    _draw_wrist(bone, tissue, layout, to_pixels, scale, rotation)
    image = _expose(bone / scale, tissue / scale, rng)
    result = sitk.GetImageFromArray(image)
    result.SetSpacing((spacing, spacing))
    return result, landmarks


def _draw_fingers(bone, tissue, layout, to_pixels, scale: float, growth_plate: float) -> None:
    """Draws the metacarpals, phalanges and the soft tissue of fingers and thumb (pixel canvases)."""
    for name, chain in FINGERS.items():
        width = FINGER_WIDTH[name]
        points = layout[list(chain)]
        radii = THUMB_BONE_RADII if name == "thumb" else BONE_RADII
        gaps = (0.0, *JOINT_GAP_MM[: len(chain) - 2], 0.0)
        for k in range(len(chain) - 1):
            unit = _unit(points[k + 1] - points[k])
            start = points[k] + gaps[k] / 2 * unit
            end = points[k + 1] - gaps[k + 1] / 2 * unit
            r0, r1 = (width * r * scale for r in radii[k])
            # growth plates: metacarpals 2-5 at their head, the thumb metacarpal and phalanges at their base
            at_head = k == 0 and name != "thumb"
            length = float(np.hypot(*(end - start))) * scale
            plate_position = length - 2.2 * r1 if at_head else 2.2 * r0
            add_capsule(
                bone,
                to_pixels(start),
                to_pixels(end),
                (r0, r1),
                waist=BONE_WAIST,
                marrow=MARROW,
                plate=(plate_position, 0.35 * scale, growth_plate),
            )
        soft = SOFT_THUMB_RADII_MM if name == "thumb" else SOFT_FINGER_RADII_MM
        first = 0 if name == "thumb" else 1
        pad_end = points[-1] + (TIP_PAD_MM - soft[1] * width) * _unit(points[-1] - points[-2])
        skin = np.vstack([points[first:-1], pad_end])
        radii_along = np.linspace(soft[0], soft[1], len(skin)) * width * scale
        for k in range(len(skin) - 1):
            raise_capsule_depth(
                tissue, to_pixels(skin[k]), to_pixels(skin[k + 1]), tuple(radii_along[k : k + 2])
            )


def _draw_wrist(bone, tissue, layout, to_pixels, scale: float, rotation: np.ndarray) -> None:
    """Draws radius, ulna, carpal bones, and the soft tissue of palm and forearm (pixel canvases)."""
    across = _unit(layout[4] - layout[3])
    proximal = np.array([-across[1], across[0]])
    if proximal[1] < 0:
        proximal = -proximal
    # radius and ulna metaphyses (flat ends at 3-4 and 0-2) and the radius epiphysis (slab up to 5)
    angle = np.arctan2(rotation[1, 0], rotation[0, 0])
    long_shaft = 2.0 * float(np.hypot(*bone.shape))
    for corners, half_width in (((3, 4), RADIUS_SHAFT_HALF_WIDTH_MM), ((0, 2), ULNA_SHAFT_HALF_WIDTH_MM)):
        add_tube(
            bone,
            tuple(to_pixels(layout[list(corners)])),
            rotation @ proximal,
            half_width * scale,
            METAPHYSIS_FLARE_MM * scale,
            long_shaft,
            marrow=MARROW,
        )
    gap = GROWTH_PLATE_GAP_MM * proximal
    epiphysis = np.array(
        [
            layout[3] - gap + 1.0 * across,
            layout[4] - gap - 1.0 * across,
            layout[5],
            layout[3] - EPIPHYSIS_ULNAR_HEIGHT_MM * proximal + 1.5 * across,
        ]
    )
    add_polygon(bone, to_pixels(epiphysis), RADIUS_RIM_MM * scale)
    for landmark, offset, ratio, angle_deg in CARPALS:
        center, semi_axes, axis_angle = _carpal_ellipse(layout, landmark, offset, ratio, angle_deg)
        add_ellipse(
            bone,
            to_pixels(center),
            tuple(a * scale for a in semi_axes),
            axis_angle + angle,
            marrow=0.3,
            depth=CARPAL_DEPTH * min(semi_axes) * scale,
        )
    # soft tissue: palm (hull of the hand's outline points) and forearm
    webs = [(layout[a] + layout[b]) / 2.0 for a, b in ((21, 25), (25, 29), (29, 33))]
    palm = np.array(
        [
            layout[33] + (-9.0, 0.0),
            layout[13] + (-13.0, 2.0),
            layout[0] + (-FOREARM_MARGIN_MM, 10.0),
            layout[4] + (FOREARM_MARGIN_MM, 10.0),
            layout[17] + (10.0, 0.0),
            layout[21] + 0.4 * (layout[18] - layout[21]),
            layout[21] + (7.0, 0.0),
            *(web + (0.0, -WEB_MM) for web in webs),
        ]
    )
    hull = palm[ConvexHull(palm).vertices]
    margin = SOFT_ROUNDING_MM * scale
    raise_polygon_depth(tissue, to_pixels(hull), margin)
    forearm_top = np.array([layout[0] - FOREARM_MARGIN_MM * across, layout[4] + FOREARM_MARGIN_MM * across])
    far = long_shaft / scale * proximal
    forearm = np.vstack([forearm_top - FOREARM_OVERLAP_MM * proximal, forearm_top[::-1] + far])
    raise_polygon_depth(tissue, to_pixels(forearm), margin)


def _expose(bone_mm: np.ndarray, tissue_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turns bone chord length and soft tissue depth (mm of the hand frame) into an 8-bit radiograph.

    Args:
        bone_mm: (H, W) summed bone chord lengths.
        tissue_mm: (H, W) depth inside the soft tissue (negative or -inf outside).
        rng: the generator for contrast, blur and noise.

    Returns:
        (H, W) uint8 image.
    """
    height, width = bone_mm.shape
    depth = np.clip(tissue_mm, 0.0, SOFT_ROUNDING_MM).astype(np.float32)
    tissue = np.sqrt(1.0 - np.square(1.0 - depth / SOFT_ROUNDING_MM))
    # smooth, separable variation of the soft tissue (thickness, heel effect) from a few random nodes
    rows, columns = (
        np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, 5), rng.normal(0.0, 1.0, 5)).astype(
            np.float32
        )
        for n in (height, width)
    )
    # attenuation along each ray: soft tissue (with smooth, separable thickness variation) plus bone
    attenuation = rng.uniform(0.45, 0.8) * tissue * (1.0 + 0.05 * (rows[:, None] + columns[None, :]))
    attenuation += rng.uniform(0.11, 0.17) * bone_mm.astype(np.float32)
    background, peak = rng.uniform(0.0, 0.3), rng.uniform(0.82, 0.95)
    image = background + (peak - background) * (1.0 - np.exp(-attenuation))
    image = ndimage.gaussian_filter(image, rng.uniform(0.7, 1.5), truncate=3.0)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image += rng.uniform(0.004, 0.015) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def generate_hand_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 60,
    seed: int = 0,
    pixels_per_mm: float | None = None,
    progress: bool = False,
) -> list[str]:
    """Writes a hand phantom data set in the standard layout (see `utils.synthetic.layout.write_dataset`).

    Ids are "hand_0000", "hand_0001", ...; `setup/all.csv` holds the 37 landmarks as pixel indices (x, y),
    like the atlas CSV; images are 2D 8-bit .mha files.

    Args:
        out_dir: the data set folder; it must not exist yet.
        num_images: number of radiographs, at least 3.
        seed: seed of all draws; the same seed writes the same data set.
        pixels_per_mm: fixed layout scale (pixels per hand-frame mm), or None for the atlas-like range.
        progress: print a progress line to stderr every few seconds and after the last image.

    Returns:
        The ids written.
    """
    return write_dataset(
        out_dir, partial(render_hand, pixels_per_mm=pixels_per_mm), "hand", num_images, seed, progress
    )
