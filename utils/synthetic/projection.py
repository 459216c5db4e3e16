"""Analytic 2D projections of simple solids, drawn into canvases on bounding boxes with vectorised NumPy.

A radiograph shows, per pixel, how much matter an X-ray crossed. Each drawing function here adds the length
of the chord that a ray perpendicular to the image plane cuts through one solid (a bone) to a `thickness`
canvas, or raises a `depth` canvas to the depth inside a region (soft tissue). Everything is in pixel index
coordinates: a point is (x, y), pixel (row r, column c) has its centre at x = c, y = r; canvases are
indexed [y, x]; lengths (radii, widths) are in pixels. Each function touches only the bounding box of its
shape, so a shape costs time in proportion to its area.

Hollow bones: a long bone is a cortical shell around less dense marrow. Its chord is the outer chord minus
`marrow` times the chord of an inner solid scaled by `inner`, which gives the bright edges of a radiograph.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "add_capsule",
    "add_ellipse",
    "add_polygon",
    "add_tube",
    "raise_capsule_depth",
    "raise_polygon_depth",
]


def _box(canvas: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Clips the pixel box [lo, hi] (x, y) to the canvas; returns its slices and broadcastable x, y grids.

    Returns:
        (rows, columns, x (1, w) float64, y (h, 1) float64); an empty box gives empty slices.
    """
    height, width = canvas.shape
    x0, y0 = max(int(np.floor(lo[0])), 0), max(int(np.floor(lo[1])), 0)
    x1, y1 = min(int(np.ceil(hi[0])) + 1, width), min(int(np.ceil(hi[1])) + 1, height)
    x1, y1 = max(x1, x0), max(y1, y0)
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    return slice(y0, y1), slice(x0, x1), xs, ys


def _chord(radius: np.ndarray | float, distance_squared: np.ndarray) -> np.ndarray:
    """Chord length through a circle of `radius` at squared distance `distance_squared` from its centre."""
    return 2.0 * np.sqrt(np.maximum(np.square(radius) - distance_squared, 0.0))


def _segment_coordinates(
    xs: np.ndarray, ys: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position of pixels relative to the segment start -> end.

    Returns:
        (axial, t, distance_squared): signed distance along the segment from `start` (pixels), the clipped
        parameter t in [0, 1] of the closest segment point, squared distance to that point (pixels^2).
    """
    direction = end - start
    length = float(np.hypot(*direction))
    unit = direction / length
    dx, dy = xs - start[0], ys - start[1]
    axial = dx * unit[0] + dy * unit[1]
    t = np.clip(axial / length, 0.0, 1.0)
    distance_squared = np.square(dx - t * direction[0]) + np.square(dy - t * direction[1])
    return axial, t, distance_squared


def add_capsule(
    thickness: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    radii: tuple[float, float],
    waist: float = 0.0,
    marrow: float = 0.0,
    inner: float = 0.6,
    plate: tuple[float, float, float] | None = None,
) -> None:
    """Adds the projection of a long bone whose ends lie exactly at `start` and `end`.

    The solid is the set of balls centred on the inner segment (start + r0 u, end - r1 u), u = unit(end -
    start), with radius varying from r0 to r1 and narrowed by `waist` (a fraction of the smaller radius) in
    the middle: a shaft with rounded head and base. Its extreme points along the axis are `start` and `end`.

    Args:
        thickness: (H, W) float canvas of chord lengths (pixels), modified in place.
        start: (2,) pixel position (x, y) of the bone's first end.
        end: (2,) pixel position (x, y) of the other end.
        radii: (r0, r1) radii in pixels at the two ends; r0 + r1 must be below the length.
        waist: narrowing of the shaft at its middle, as a fraction of min(r0, r1).
        marrow: share of the inner (marrow) chord subtracted, 0 = solid bone.
        inner: inner radius as a fraction of the outer one.
        plate: optional growth plate (distance from `start` in pixels, half width in pixels, darkening in
            [0, 1]): the chord is multiplied by 1 - darkening * exp(-(a - distance)^2 / half_width^2), a the
            axial position.

    Raises:
        ValueError: the radii do not fit in the bone's length.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    length = float(np.hypot(*(end - start)))
    r0, r1 = radii
    if r0 + r1 >= length:
        raise ValueError(f"capsule radii {radii} do not fit in its length {length:.2f} px")
    unit = (end - start) / length
    inner_start, inner_end = start + r0 * unit, end - r1 * unit
    reach = max(r0, r1) + 1.0
    rows, cols, xs, ys = _box(thickness, np.minimum(start, end) - reach, np.maximum(start, end) + reach)
    if xs.size == 0 or ys.size == 0:
        return
    axial, t, distance_squared = _segment_coordinates(xs, ys, inner_start, inner_end)
    radius = r0 + (r1 - r0) * t - waist * min(r0, r1) * np.sin(np.pi * t)
    chord = _chord(radius, distance_squared)
    if marrow:
        chord -= marrow * _chord(inner * radius, distance_squared)
    if plate is not None:
        distance, half_width, darkening = plate
        chord *= 1.0 - darkening * np.exp(-np.square((axial + r0 - distance) / half_width))
    thickness[rows, cols] += chord


def add_ellipse(
    thickness: np.ndarray,
    center: np.ndarray,
    semi_axes: tuple[float, float],
    angle: float,
    depth: float | None = None,
    marrow: float = 0.0,
    inner: float = 0.7,
) -> None:
    """Adds the projection of an ellipsoid with in-plane semi-axes `semi_axes` and depth semi-axis `depth`.

    Args:
        thickness: (H, W) float canvas of chord lengths (pixels), modified in place.
        center: (2,) pixel position (x, y).
        semi_axes: (a, b) in pixels, a along the direction `angle`, b across it.
        angle: direction of the first semi-axis, radians from the +x axis towards +y.
        depth: semi-axis perpendicular to the image in pixels; None = the smaller in-plane semi-axis.
        marrow: share of the inner chord subtracted (see module docstring).
        inner: inner solid as a fraction of the outer one.
    """
    center = np.asarray(center, dtype=np.float64)
    a, b = semi_axes
    reach = max(a, b) + 1.0
    rows, cols, xs, ys = _box(thickness, center - reach, center + reach)
    if xs.size == 0 or ys.size == 0:
        return
    dx, dy = xs - center[0], ys - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    q = np.square((dx * cos + dy * sin) / a) + np.square((-dx * sin + dy * cos) / b)
    depth = min(a, b) if depth is None else depth
    chord = 2.0 * depth * np.sqrt(np.maximum(1.0 - q, 0.0))
    if marrow:
        chord -= marrow * 2.0 * inner * depth * np.sqrt(np.maximum(1.0 - q / inner**2, 0.0))
    thickness[rows, cols] += chord


def _polygon_signed_distance(xs: np.ndarray, ys: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance-like field of a convex polygon: max over edges of the distance to the edge's line.

    Negative inside (exactly minus the distance to the nearest edge), positive outside (a lower bound of
    the distance near vertices). `vertices` (K, 2) in either winding order.
    """
    centroid = vertices.mean(axis=0)
    field = np.full(np.broadcast_shapes(xs.shape, ys.shape), -np.inf)
    for k in range(len(vertices)):
        a, b = vertices[k], vertices[(k + 1) % len(vertices)]
        normal = np.array([b[1] - a[1], a[0] - b[0]])
        normal /= np.hypot(*normal)
        if np.dot(centroid - a, normal) > 0:
            normal = -normal
        field = np.maximum(field, (xs - a[0]) * normal[0] + (ys - a[1]) * normal[1])
    return field


def add_polygon(thickness: np.ndarray, vertices: np.ndarray, rounding: float) -> None:
    """Adds the projection of a convex slab with rounded rims: chord 2 * rounding inside, falling to 0 at
    the polygon's edges over a quarter circle of radius `rounding`. The vertices are the slab's corners.

    Args:
        thickness: (H, W) float canvas of chord lengths (pixels), modified in place.
        vertices: (K, 2) pixel positions (x, y) of a convex polygon.
        rounding: rim radius in pixels.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    rows, cols, xs, ys = _box(thickness, vertices.min(axis=0), vertices.max(axis=0))
    if xs.size == 0 or ys.size == 0:
        return
    depth = np.minimum(-_polygon_signed_distance(xs, ys, vertices), rounding)
    thickness[rows, cols] += _chord(rounding, np.square(rounding - np.maximum(depth, 0.0)))


def add_tube(
    thickness: np.ndarray,
    corners: tuple[np.ndarray, np.ndarray],
    direction: np.ndarray,
    shaft_half_width: float,
    flare_length: float,
    length: float,
    marrow: float = 0.0,
    inner: float = 0.6,
) -> None:
    """Adds the projection of the end of a long bone (distal radius or ulna) cut flat between two corners.

    The bone is a cylinder along `direction` whose half width flares from `shaft_half_width` to half the
    corner distance at the flat end: w(s) = w_shaft + (w_end - w_shaft) exp(-s / flare_length), s >= 0 the
    distance from the end line. The corners are exactly the end line's extreme points.

    Args:
        thickness: (H, W) float canvas of chord lengths (pixels), modified in place.
        corners: two (2,) pixel positions (x, y) of the flat end's corners.
        direction: (2,) direction from the end into the shaft (need not be unit; it is made perpendicular
            to the end line).
        shaft_half_width: half width far from the end, pixels.
        flare_length: decay length of the flare, pixels.
        length: drawn length of the shaft from the end, pixels.
        marrow: share of the inner chord subtracted (see module docstring).
        inner: inner radius as a fraction of the outer one.
    """
    first, second = (np.asarray(c, dtype=np.float64) for c in corners)
    middle = (first + second) / 2.0
    across = (second - first) / np.hypot(*(second - first))
    along = np.array([-across[1], across[0]])
    if np.dot(along, direction) < 0:
        along = -along
    end_half_width = float(np.hypot(*(second - first))) / 2.0
    reach = max(end_half_width, shaft_half_width) + 1.0
    far = middle + length * along
    rows, cols, xs, ys = _box(thickness, np.minimum(middle, far) - reach, np.maximum(middle, far) + reach)
    if xs.size == 0 or ys.size == 0:
        return
    dx, dy = xs - middle[0], ys - middle[1]
    s = dx * along[0] + dy * along[1]
    e = dx * across[0] + dy * across[1]
    half_width = shaft_half_width + (end_half_width - shaft_half_width) * np.exp(
        -np.maximum(s, 0.0) / flare_length
    )
    chord = _chord(half_width, np.square(e))
    if marrow:
        chord -= marrow * _chord(inner * half_width, np.square(e))
    chord *= np.clip(s + 0.5, 0.0, 1.0) * (s <= length)
    thickness[rows, cols] += chord


def raise_capsule_depth(
    depth: np.ndarray, start: np.ndarray, end: np.ndarray, radii: tuple[float, float]
) -> None:
    """Raises `depth` to the depth inside a capsule (balls of radius r0..r1 along start -> end).

    Args:
        depth: (H, W) float canvas of depth inside the region (pixels; negative outside), modified in place.
        start, end: (2,) pixel positions (x, y) of the segment's ends (the ball centres).
        radii: (r0, r1) in pixels at start and end.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    reach = max(radii) + 1.0
    rows, cols, xs, ys = _box(depth, np.minimum(start, end) - reach, np.maximum(start, end) + reach)
    if xs.size == 0 or ys.size == 0:
        return
    _, t, distance_squared = _segment_coordinates(xs, ys, start, end)
    inside = radii[0] + (radii[1] - radii[0]) * t - np.sqrt(distance_squared)
    np.maximum(depth[rows, cols], inside, out=depth[rows, cols])


def raise_polygon_depth(depth: np.ndarray, vertices: np.ndarray, margin: float) -> None:
    """Raises `depth` to the depth inside a convex polygon, within `margin` pixels around it.

    Args:
        depth: (H, W) float canvas of depth inside the region (pixels; negative outside), modified in place.
        vertices: (K, 2) pixel positions (x, y) of a convex polygon.
        margin: how far outside the polygon the (negative) depth is written, pixels.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    rows, cols, xs, ys = _box(depth, vertices.min(axis=0) - margin, vertices.max(axis=0) + margin)
    if xs.size == 0 or ys.size == 0:
        return
    inside = -_polygon_signed_distance(xs, ys, vertices)
    np.maximum(depth[rows, cols], inside, out=depth[rows, cols])
