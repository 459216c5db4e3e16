"""PNG figures for landmark localization: landmarks over an image, heatmaps, error curves, training curves.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global state, no
display needed) and written atomically: a failure while plotting or saving leaves no partial file behind
and keeps an existing file at the path unchanged.

Image arrays are NumPy order: 2D (y, x) or 3D (z, y, x); a volume is shown as its coronal maximum-intensity
projection (along y, z upwards), the view in which landmarks along a body's long axis (a spine, a torso)
stay apart. Points are PIXEL index coordinates (x, y[, z]) of the plotted array, NaN rows missing.
"""

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from utils.io.atomic import atomic_path

__all__ = [
    "plot_error_distribution", "plot_heatmaps", "plot_landmarks", "plot_sigmas", "plot_training_curves"
]

DPI = 100  # pixels per inch of every PNG written here
IMAGE_WIDTH_INCHES = 6.0  # width of image figures; the height follows the image aspect ratio
IMAGE_HEIGHT_LIMITS_INCHES = (2.0, 12.0)  # the height of image figures is clipped to this range
CURVE_FIGURE_INCHES = (8.0, 5.0)  # (width, height) of the error distribution figure
TRAINING_PANEL_INCHES = (6.0, 4.0)  # (width, height) of one panel of the training curves figure


def _new_figure(size_inches: tuple[float, float]) -> Figure:
    """A figure of the given (width, height) in inches attached to an Agg canvas."""
    figure = Figure(figsize=size_inches, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> None:
    """Writes `figure` as a PNG of exactly figsize * DPI pixels to `path`, atomically."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)


def _projection(array: np.ndarray, name: str) -> np.ndarray:
    """A 2D array as it is, or the coronal view of a 3D (z, y, x) one: its maximum along y, rows from the
    highest z down (the (z, x) plane with z upwards)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3:
        return np.nanmax(array, axis=1)[::-1]
    raise ValueError(f"{name} must be 2D (y, x) or 3D (z, y, x), got shape {array.shape}")


def _projected_points(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 2) plot coordinates (column, row) of (N, dim) points in `_projection` of an array of `shape`."""
    if len(shape) == 2:
        return points[:, :2]
    return np.stack([points[:, 0], shape[0] - 1 - points[:, 2]], axis=1)


def _image_figure_size(shape: tuple[int, int]) -> tuple[float, float]:
    """Figure size (width, height) in inches for a (y, x) image: fixed width, height by aspect ratio."""
    height = IMAGE_WIDTH_INCHES * shape[0] / shape[1]
    return IMAGE_WIDTH_INCHES, float(np.clip(height, *IMAGE_HEIGHT_LIMITS_INCHES))


def _image_axes(figure: Figure, image: np.ndarray, title: str | None):
    """Axes filling `figure` that show the (y, x) `image` with pixel centres at integer coordinates."""
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    shown = axes.imshow(image, interpolation="antialiased", aspect="auto")
    axes.set_xlim(-0.5, image.shape[1] - 0.5)
    axes.set_ylim(image.shape[0] - 0.5, -0.5)
    if title:
        axes.text(
            0.01,
            0.99,
            title,
            transform=axes.transAxes,
            va="top",
            ha="left",
            color="white",
            fontsize=10,
            bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"},
        )
    return axes, shown


def _as_points(name: str, points, dim: int, num_landmarks: int | None) -> np.ndarray:
    """`points` as float64 (N, dim), checked against the image dimension and the other point set."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(
            f"{name} must have shape (N, {dim}) (pixel coordinates x, y{', z' if dim == 3 else ''} of the "
            f"image), got shape {array.shape}"
        )
    if num_landmarks is not None and array.shape[0] != num_landmarks:
        raise ValueError(
            f"{name} must hold as many landmarks as the other point set ({num_landmarks}), "
            f"got shape {array.shape}"
        )
    return array


def plot_landmarks(
    path: str | os.PathLike,
    image: np.ndarray,
    predicted: np.ndarray | None = None,
    target: np.ndarray | None = None,
    title: str | None = None,
) -> None:
    """Writes a PNG of landmarks over an image: true ones as green circles, predicted ones as red crosses.

    A yellow line joins the predicted and true position of each landmark present in both sets; each
    landmark is labelled with its 0-based number (next to the true position, else the predicted one).
    The figure is 600 px wide; its height follows the image aspect ratio (clipped to 200-1200 px).

    Args:
        path: output PNG file; written atomically, parent folders created.
        image: 2D array (y, x), or 3D (z, y, x) shown as its coronal maximum-intensity projection (along y,
            z upwards); grey values displayed between the array's minimum and maximum.
        predicted: predicted landmarks, shape (N, image.ndim), PIXEL index coordinates (x, y[, z]) of
            `image`, NaN rows missing; y is ignored in a 3D projection. None to draw none.
        target: true landmarks, same layout as `predicted`. None to draw none.
        title: text drawn in the top-left corner, or None.

    Raises:
        ValueError: if `image` is not 2D or 3D, or a point set is not (N, image.ndim), or the two point
            sets differ in N.
    """
    image = np.asarray(image, dtype=np.float64)
    projection = _projection(image, "image")
    num_landmarks = None
    point_sets = {}
    for name, points in (("target", target), ("predicted", predicted)):
        if points is not None:
            point_sets[name] = _projected_points(_as_points(name, points, image.ndim, num_landmarks),
                                                 image.shape)
            num_landmarks = point_sets[name].shape[0]

    figure = _new_figure(_image_figure_size(projection.shape))
    axes, shown = _image_axes(figure, projection, title)
    shown.set_cmap("gray")
    if "target" in point_sets and "predicted" in point_sets:
        pairs = np.stack([point_sets["target"], point_sets["predicted"]], axis=1)
        pairs = pairs[~np.isnan(pairs).any(axis=(1, 2))]
        axes.add_collection(LineCollection(pairs, colors="yellow", linewidths=1.0))
    styles = {
        "target": {"marker": "o", "facecolors": "none", "edgecolors": "lime", "label": "true"},
        "predicted": {"marker": "x", "color": "red", "label": "predicted"},
    }
    for name, points in point_sets.items():
        axes.scatter(points[:, 0], points[:, 1], s=30, linewidths=1.2, **styles[name])
    if point_sets:
        label_points = point_sets.get("target", point_sets.get("predicted")).copy()
        if "target" in point_sets and "predicted" in point_sets:
            missing = np.isnan(label_points).any(axis=1)
            label_points[missing] = point_sets["predicted"][missing]
        for index, (x, y) in enumerate(label_points):
            if not (np.isnan(x) or np.isnan(y)):
                axes.annotate(
                    str(index), (x, y), xytext=(4, 4), textcoords="offset points", color="cyan", fontsize=7
                )
        axes.legend(loc="lower right", fontsize=8, framealpha=0.6)
    _save(figure, path)


def plot_heatmaps(path: str | os.PathLike, heatmaps: np.ndarray) -> None:
    """Writes a PNG of the maximum over all landmark heatmaps, with a colour bar.

    The figure is 600 px wide; its height follows the heatmap aspect ratio (clipped to 200-1200 px).

    Args:
        path: output PNG file; written atomically, parent folders created.
        heatmaps: channels-last heatmaps, 2D (y, x, N) or 3D (z, y, x, N); a 3D maximum is shown as its
            coronal maximum-intensity projection (along y, z upwards).

    Raises:
        ValueError: if `heatmaps` is not 3- or 4-dimensional or has no landmark channel.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim not in (3, 4) or heatmaps.shape[-1] == 0:
        raise ValueError(
            f"heatmaps must have shape (y, x, N) or (z, y, x, N) with N >= 1, got shape {heatmaps.shape}"
        )
    projection = _projection(np.nanmax(heatmaps, axis=-1), "heatmaps")
    figure = _new_figure(_image_figure_size(projection.shape))
    projected = " (coronal MIP: along y, z up)" if heatmaps.ndim == 4 else ""
    axes, shown = _image_axes(
        figure,
        projection,
        f"max over {heatmaps.shape[-1]} heatmaps{projected}, range "
        f"[{np.nanmin(projection):.3g}, {np.nanmax(projection):.3g}]",
    )
    shown.set_cmap("magma")
    colorbar_axes = axes.inset_axes((0.88, 0.05, 0.025, 0.6))
    figure.colorbar(shown, cax=colorbar_axes)
    colorbar_axes.tick_params(colors="white", labelsize=7)
    _save(figure, path)


def plot_error_distribution(
    path: str | os.PathLike,
    errors_by_name: Mapping[str, np.ndarray],
    unit: str = "mm",
    thresholds: Sequence[float] = (2.0, 4.0, 10.0),
) -> None:
    """Writes a PNG of the cumulative distribution of point errors, one curve per network or fold.

    The x axis is logarithmic (errors spread over orders of magnitude) and starts at half the 1st
    percentile of the positive errors; smaller errors (e.g. exact zeros) are drawn at its left end.
    Dashed vertical lines mark the outlier thresholds. NaN errors (missing landmarks) are skipped; each
    legend entry gives the number of valid errors and their mean. The figure is 800 x 500 px.

    Args:
        path: output PNG file; written atomically, parent folders created.
        errors_by_name: curve label -> point errors of any shape (e.g. (M, N) from `point_errors`),
            non-negative, in `unit`.
        unit: unit of the errors, for the axis label and threshold labels.
        thresholds: outlier thresholds in `unit`, drawn as vertical lines.

    Raises:
        ValueError: if `errors_by_name` is empty, or a curve has negative or infinite errors.
    """
    if not errors_by_name:
        raise ValueError("errors_by_name must hold at least one curve, got an empty mapping")
    curves = {}
    for name, errors in errors_by_name.items():
        values = np.asarray(errors, dtype=np.float64).ravel()
        values = np.sort(values[~np.isnan(values)])
        if np.any(np.isinf(values)) or np.any(values < 0):
            raise ValueError(
                f"errors_by_name[{name!r}] must be non-negative and finite (NaN = missing), got values in "
                f"[{values.min()}, {values.max()}]"
            )
        curves[name] = values
    everything = np.concatenate([*curves.values(), np.asarray(thresholds, dtype=np.float64)])
    positive = everything[everything > 0]
    left = 0.5 * np.quantile(positive, 0.01) if positive.size else 0.1
    right = 1.5 * positive.max() if positive.size else 10.0

    figure = _new_figure(CURVE_FIGURE_INCHES)
    axes = figure.add_subplot()
    for name, values in curves.items():
        if values.size == 0:
            axes.plot([], [], label=f"{name} (no valid errors)")
            continue
        fraction = 100.0 * np.arange(1, values.size + 1) / values.size
        x = np.concatenate([[left], np.maximum(values, left)])
        y = np.concatenate([[0.0], fraction])
        axes.step(x, y, where="post", label=f"{name} (n={values.size}, mean {values.mean():.2f} {unit})")
    for threshold in thresholds:
        axes.axvline(threshold, color="gray", linestyle="--", linewidth=1.0)
        axes.text(
            threshold, 101.0, f"{threshold:g} {unit}", ha="center", va="bottom", fontsize=8, color="gray"
        )
    axes.set_xscale("log")
    axes.set_xlim(left, right)
    axes.set_ylim(0.0, 100.0)
    axes.set_xlabel(f"point error [{unit}] (log scale)")
    axes.set_ylabel("point errors at most x [%]")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def plot_training_curves(path: str | os.PathLike, history: Mapping[str, Sequence[tuple[int, float]]]) -> None:
    """Writes a PNG of training curves against iteration: losses on the left, other metrics on the right.

    A series whose name contains "loss" (case-insensitive) goes to the loss panel, whose y axis is
    logarithmic when all its finite values are positive; every other series (e.g. validation point error)
    goes to the metrics panel. A panel without series is left out. Series with at most 50 points are
    drawn with markers. Each panel is 600 x 400 px, side by side.

    Args:
        path: output PNG file; written atomically, parent folders created.
        history: series name -> list of (iteration, value) pairs; an empty list is allowed (drawn as a
            legend entry only).

    Raises:
        ValueError: if `history` is empty or a series is not a list of (iteration, value) pairs.
    """
    if not history:
        raise ValueError("history must hold at least one series, got an empty mapping")
    panels: dict[str, dict[str, np.ndarray]] = {"loss": {}, "metrics": {}}
    for name, series in history.items():
        array = np.asarray(series, dtype=np.float64)
        if array.size == 0:
            array = array.reshape(0, 2)
        elif array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(
                f"history[{name!r}] must be a list of (iteration, value) pairs, got an array of shape "
                f"{array.shape}"
            )
        panels["loss" if "loss" in name.lower() else "metrics"][name] = array
    panels = {panel: series for panel, series in panels.items() if series}

    width, height = TRAINING_PANEL_INCHES
    figure = _new_figure((width * len(panels), height))
    for number, (panel, series) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), number + 1)
        for name, array in series.items():
            marker = "o" if len(array) <= 50 else None
            axes.plot(array[:, 0], array[:, 1], marker=marker, markersize=3, label=name)
        values = np.concatenate([array[:, 1] for array in series.values()])
        finite = values[np.isfinite(values)]
        if panel == "loss" and finite.size and np.all(finite > 0):
            axes.set_yscale("log")
        axes.set_xlabel("iteration")
        axes.set_ylabel("loss" if panel == "loss" else "value")
        axes.set_title("training loss" if panel == "loss" else "validation metrics")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def plot_sigmas(path: str | os.PathLike, iterations: Sequence[int], sigmas: np.ndarray) -> None:
    """Writes a PNG of learned sigmas: each landmark's sigma against iteration (left) and the last values
    per landmark (right), both in heatmap pixels.

    Args:
        path: Output PNG file; written atomically, parent folders created.
        iterations: (T,) iterations of the records.
        sigmas: (T, N) sigma of each landmark at each record.

    Raises:
        ValueError: If `sigmas` is not (T, N) with T = len(iterations) >= 1.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 2 or sigmas.shape[0] != len(iterations) or sigmas.shape[0] == 0:
        raise ValueError(f"sigmas must have shape (T, N) with T = {len(iterations)} >= 1 records, "
                         f"got {sigmas.shape}")
    figure = _new_figure((12, 4))
    curves, bars = figure.subplots(1, 2)
    curves.plot(np.asarray(iterations), sigmas, linewidth=1)
    curves.set(xlabel="iteration", ylabel="sigma [heatmap px]", title=f"learned sigmas of {sigmas.shape[1]} "
               "landmarks")
    bars.bar(np.arange(sigmas.shape[1]), sigmas[-1], color="tab:blue")
    bars.set(xlabel="landmark", ylabel="sigma [heatmap px]", title=f"at iteration {iterations[-1]}")
    figure.tight_layout()
    _save(figure, path)
