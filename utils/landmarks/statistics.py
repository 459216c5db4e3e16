"""Landmark localization error statistics (point error, image point error, outliers).

All functions are pure NumPy. Landmark coordinates follow the project convention: arrays of shape
(M, N, dim) for M images with N landmarks each, coordinate order (x, y[, z]), NaN rows for missing
landmarks. Missing landmarks are skipped everywhere: they never count as a zero error.

Terms (Payer et al., MIA 2019):

- point error (PE): Euclidean distance between the predicted and the true position of one landmark in
  one image, in millimetres;
- image point error (IPE): the mean PE of one image over its valid landmarks;
- outliers: PEs greater than or equal to a threshold (2, 4 and 10 mm by default).

Standard deviations are population standard deviations (``ddof=0``) throughout.
"""

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "reference_distance_scale",
    "point_errors",
    "landmark_statistics",
    "identification_counts",
    "pool_identification_counts",
    "format_statistics",
    "summarize_folds",
    "format_fold_table",
]

# Figures of one fold that summarize_folds averages across folds (besides outlier_percent).
_FOLD_FIGURES = ("pe_mean", "pe_std", "pe_median", "ipe_mean")


def _as_landmark_array(name: str, points) -> np.ndarray:
    """Returns `points` as float64 (M, N, dim) with dim 2 or 3, or raises ValueError naming `name`."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] not in (2, 3):
        raise ValueError(f"{name} must have shape (M, N, dim) with dim 2 or 3, got shape {array.shape}")
    return array


def reference_distance_scale(
    points: np.ndarray, reference: tuple[int, int] = (1, 5), distance_mm: float = 50.0
) -> np.ndarray:
    """Millimetres per coordinate unit of each image, from the distance of two reference landmarks.

    Used where the image spacing is unreliable (hand radiographs): the ground-truth distance between
    the two reference landmarks is defined to be `distance_mm`, so the scale of image m is
    ``distance_mm / ||points[m, reference[1]] - points[m, reference[0]]||``.

    Args:
        points: ground-truth landmarks, shape (M, N, dim), order (x, y[, z]), any unit (pixels or
            physical), NaN rows for missing landmarks.
        reference: 0-based indices of the two reference landmarks (hands: 1 and 5).
        distance_mm: true distance between the reference landmarks in millimetres.

    Returns:
        float64 array of shape (M,): millimetres per coordinate unit. NaN for an image where either
        reference landmark is missing; detect those with ``np.isnan`` (passing the NaN on to
        `point_errors` makes every error of that image NaN, i.e. excluded from the statistics).

    Raises:
        ValueError: if `points` has the wrong shape, `reference` is not two distinct indices in
            [0, N), `distance_mm` is not positive and finite, or both reference landmarks of an image
            coincide.
    """
    points = _as_landmark_array("points", points)
    num_landmarks = points.shape[1]
    if (
        len(reference) != 2
        or reference[0] == reference[1]
        or not all(0 <= int(i) < num_landmarks for i in reference)
    ):
        raise ValueError(
            f"reference must be two distinct landmark indices in [0, {num_landmarks}), got {reference}"
        )
    if not (np.isfinite(distance_mm) and distance_mm > 0):
        raise ValueError(f"distance_mm must be positive and finite, got {distance_mm}")
    first, second = int(reference[0]), int(reference[1])
    distance = np.linalg.norm(points[:, second] - points[:, first], axis=-1)
    coincident = np.flatnonzero(distance == 0)
    if coincident.size:
        raise ValueError(
            f"reference landmarks {reference} coincide in image(s) {coincident.tolist()} of points "
            f"with shape {points.shape}; cannot derive a millimetre scale"
        )
    return distance_mm / distance


def point_errors(predicted: np.ndarray, target: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Point errors: Euclidean distance between predicted and true landmarks, optionally scaled.

    Args:
        predicted: predicted landmarks, shape (M, N, dim), order (x, y[, z]), NaN rows = missing.
        target: ground-truth landmarks in the same coordinates, shape (M, N, dim), NaN rows = missing.
        scale: millimetres per coordinate unit of each image, shape (M,) (e.g. from
            `reference_distance_scale`), or None when the coordinates are already millimetres.
            A NaN entry marks an image without a scale: all its errors become NaN.

    Returns:
        float64 array of shape (M, N): point errors in millimetres (or coordinate units when `scale`
        is None and the coordinates are not in mm). NaN where the target or the prediction is missing
        (any NaN coordinate) or the image's scale is NaN.

    Raises:
        ValueError: if the shapes of `predicted` and `target` differ or are not (M, N, dim), or
            `scale` is not of shape (M,) with positive finite (or NaN) entries.
    """
    predicted = _as_landmark_array("predicted", predicted)
    target = _as_landmark_array("target", target)
    if predicted.shape != target.shape:
        raise ValueError(
            f"predicted and target must have the same shape, got {predicted.shape} and {target.shape}"
        )
    errors = np.linalg.norm(predicted - target, axis=-1)
    if scale is None:
        return errors
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (predicted.shape[0],):
        raise ValueError(
            f"scale must have shape ({predicted.shape[0]},) (one value per image), got shape {scale.shape}"
        )
    known = scale[~np.isnan(scale)]
    if not np.all(np.isfinite(known) & (known > 0)):
        raise ValueError(f"scale entries must be positive and finite (or NaN), got {scale.tolist()}")
    return errors * scale[:, np.newaxis]


def _threshold_key(threshold: float) -> str:
    """The dictionary key of a threshold: 2.0 -> "2", 2.5 -> "2.5"."""
    return f"{threshold:g}"


def _summary(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(mean, population std, median) of a 1-D array without NaN; None each when it is empty."""
    if values.size == 0:
        return None, None, None
    return float(np.mean(values)), float(np.std(values)), float(np.median(values))


def landmark_statistics(errors: np.ndarray, thresholds: Sequence[float] = (2.0, 4.0, 10.0)) -> dict:
    """Summary statistics of point errors, overall, per image and per landmark.

    NaN errors (missing landmarks) are skipped. An image without any valid error does not enter the IPE
    statistics. Standard deviations are population standard deviations (``ddof=0``). An outlier is a
    PE greater than or equal to a threshold.

    Args:
        errors: point errors, shape (M, N) (M images, N landmarks), e.g. from `point_errors`, usually
            in millimetres; NaN = missing.
        thresholds: outlier thresholds in the unit of `errors`, positive, distinct as keys.

    Returns:
        A JSON-serialisable dictionary of plain Python numbers with exactly the keys

        - ``pe_mean``, ``pe_std``, ``pe_median``: over all valid PEs;
        - ``ipe_mean``, ``ipe_std``, ``ipe_median``: over the IPEs of images with a valid PE;
        - ``outliers``: ``{"2": n, "4": n, "10": n}``, the number of valid PEs >= each threshold
          (key ``f"{threshold:g}"``);
        - ``outlier_percent``: same keys, percent of the valid PEs;
        - ``num_images``: M; ``num_landmarks``: N (the shape of `errors`);
        - ``per_landmark``: one dictionary per landmark with ``index``, ``count`` (valid PEs),
          ``mean``, ``std``, ``median`` and ``outliers`` (same keys as above).

        A statistic of an empty set (no valid PE at all, or a landmark missing in every image) is
        None (JSON null), never NaN.

    Raises:
        ValueError: if `errors` is not 2-D, contains negative or infinite values, or `thresholds` is
            empty, not positive and finite, or has two thresholds with the same key.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2:
        raise ValueError(f"errors must have shape (M, N) (images, landmarks), got shape {errors.shape}")
    valid = ~np.isnan(errors)
    if np.any(np.isinf(errors)) or np.any(errors[valid] < 0):
        raise ValueError(
            f"errors must be non-negative and finite (NaN = missing), got values in "
            f"[{np.nanmin(errors)}, {np.nanmax(errors)}]"
        )
    thresholds = [float(t) for t in thresholds]
    keys = [_threshold_key(t) for t in thresholds]
    if not thresholds or not all(np.isfinite(t) and t > 0 for t in thresholds) or len(set(keys)) != len(keys):
        raise ValueError(f"thresholds must be distinct, positive and finite, got {thresholds}")

    all_errors = errors[valid]
    pe_mean, pe_std, pe_median = _summary(all_errors)
    image_has_error = valid.any(axis=1)
    image_errors = np.nanmean(errors[image_has_error], axis=1)
    ipe_mean, ipe_std, ipe_median = _summary(image_errors)
    outliers = {key: int(np.count_nonzero(all_errors >= t)) for key, t in zip(keys, thresholds, strict=True)}
    outlier_percent = {
        key: (100.0 * count / all_errors.size if all_errors.size else None) for key, count in outliers.items()
    }
    per_landmark = []
    for index in range(errors.shape[1]):
        column = errors[valid[:, index], index]
        mean, std, median = _summary(column)
        per_landmark.append(
            {
                "index": index,
                "count": int(column.size),
                "mean": mean,
                "std": std,
                "median": median,
                "outliers": {
                    key: int(np.count_nonzero(column >= t)) for key, t in zip(keys, thresholds, strict=True)
                },
            }
        )
    return {
        "pe_mean": pe_mean,
        "pe_std": pe_std,
        "pe_median": pe_median,
        "ipe_mean": ipe_mean,
        "ipe_std": ipe_std,
        "ipe_median": ipe_median,
        "outliers": outliers,
        "outlier_percent": outlier_percent,
        "num_images": int(errors.shape[0]),
        "num_landmarks": int(errors.shape[1]),
        "per_landmark": per_landmark,
    }


def identification_counts(predicted: np.ndarray, target: np.ndarray, scale: np.ndarray | None,
                          radius_mm: float) -> dict:
    """How many landmarks are identified: predicted within `radius_mm` of their own true position and
    closer to it than to any other true landmark of the image (the spine CT identification rate).

    Args:
        predicted, target: (M, N, dim) landmarks as for `point_errors`, NaN rows = missing.
        scale: (M,) millimetres per coordinate unit, or None for millimetres.
        radius_mm: The identification radius in mm (spine: 20).

    Returns:
        {"radius_mm", "identified", "count" (landmarks with a true position), "percent" (None when count is
        0)}, plain Python numbers.
    """
    if not radius_mm > 0:
        raise ValueError(f"radius_mm must be positive, got {radius_mm}")
    own = point_errors(predicted, target, scale)
    target = _as_landmark_array("target", target)
    distances = np.linalg.norm(np.asarray(predicted, np.float64)[:, :, None] - target[:, None], axis=-1)
    if scale is not None:
        distances = distances * np.asarray(scale, np.float64)[:, None, None]
    distances[np.isnan(distances)] = np.inf  # a missing true landmark is never the closer one
    count = int(np.count_nonzero(~np.isnan(target[..., 0])))
    others = distances + np.where(np.eye(target.shape[1], dtype=bool), np.inf, 0.0)
    identified = int(np.count_nonzero((own <= radius_mm) & (own < others.min(axis=2))))
    return _identification(radius_mm, identified, count)


def pool_identification_counts(counts: Sequence[Mapping]) -> dict:
    """`identification_counts` of several tests (e.g. the folds) together: their sums and the percent."""
    return _identification(counts[0]["radius_mm"], sum(c["identified"] for c in counts),
                           sum(c["count"] for c in counts))


def _identification(radius_mm: float, identified: int, count: int) -> dict:
    return {"radius_mm": float(radius_mm), "identified": int(identified), "count": int(count),
            "percent": 100.0 * identified / count if count else None}


def _number(value: float | None, width: int = 8) -> str:
    """A statistic right-aligned with three decimals, or "-" for None."""
    return f"{'-' if value is None else f'{value:.3f}':>{width}}"


def format_statistics(stats: Mapping, unit: str = "mm") -> str:
    """A readable text report of `landmark_statistics` output (the content of ``stats.txt``).

    Args:
        stats: dictionary returned by `landmark_statistics`.
        unit: unit of the errors, printed after the numbers and thresholds.

    Returns:
        Multi-line text: summary lines (PE, IPE, outliers per threshold) followed by a table with one
        row per landmark (index, count, mean, std, median, outlier counts). Undefined values print
        as "-". Ends with a newline.
    """
    keys = list(stats["outliers"])
    valid = sum(entry["count"] for entry in stats["per_landmark"])
    lines = [
        f"images: {stats['num_images']}, landmarks: {stats['num_landmarks']}, valid point errors: {valid}",
        f"PE  mean {_number(stats['pe_mean'], 0)} {unit}, std {_number(stats['pe_std'], 0)} {unit}, "
        f"median {_number(stats['pe_median'], 0)} {unit}",
        f"IPE mean {_number(stats['ipe_mean'], 0)} {unit}, std {_number(stats['ipe_std'], 0)} {unit}, "
        f"median {_number(stats['ipe_median'], 0)} {unit}",
    ]
    for key in keys:
        percent = stats["outlier_percent"][key]
        percent_text = "-" if percent is None else f"{percent:.2f} %"
        lines.append(f"outliers >= {key} {unit}: {stats['outliers'][key]} ({percent_text})")
    lines.append("")
    header = f"{'landmark':>8} {'count':>6} {'mean':>8} {'std':>8} {'median':>8}"
    header += "".join(f" {'>=' + key:>6}" for key in keys)
    lines.append(header)
    for entry in stats["per_landmark"]:
        row = f"{entry['index']:>8} {entry['count']:>6} {_number(entry['mean'])} {_number(entry['std'])}"
        row += f" {_number(entry['median'])}" + "".join(f" {entry['outliers'][key]:>6}" for key in keys)
        lines.append(row)
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    """{"mean": .., "std": ..} (population std) of the defined values; None each when none is defined."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    mean, std, _ = _summary(defined)
    return {"mean": mean, "std": std}


def summarize_folds(fold_stats: Sequence[Mapping]) -> dict:
    """Mean and population standard deviation (``ddof=0``) across folds of the main figures.

    The pooled statistics over all folds are not computed here: call `landmark_statistics` on the
    concatenated errors of all folds for those.

    Args:
        fold_stats: one `landmark_statistics` dictionary per fold, all with the same outlier keys.

    Returns:
        ``{"num_folds": k, "pe_mean": {"mean": .., "std": ..}, "pe_std": {..}, "pe_median": {..},
        "ipe_mean": {..}, "outlier_percent": {"2": {"mean": .., "std": ..}, ...}}``; folds whose value
        is None (no valid error) are left out of that figure, which is None when no fold defines it.

    Raises:
        ValueError: if `fold_stats` is empty or the folds have different outlier thresholds.
    """
    if not fold_stats:
        raise ValueError("fold_stats must hold at least one fold's statistics, got an empty sequence")
    keys = list(fold_stats[0]["outlier_percent"])
    for number, stats in enumerate(fold_stats):
        if list(stats["outlier_percent"]) != keys:
            raise ValueError(
                f"fold {number} has outlier thresholds {list(stats['outlier_percent'])}, "
                f"fold 0 has {keys}; all folds must use the same thresholds"
            )
    summary: dict = {"num_folds": len(fold_stats)}
    for figure in _FOLD_FIGURES:
        summary[figure] = _mean_std([stats[figure] for stats in fold_stats])
    summary["outlier_percent"] = {
        key: _mean_std([stats["outlier_percent"][key] for stats in fold_stats]) for key in keys
    }
    return summary


def format_fold_table(
    fold_stats: Sequence[Mapping],
    names: Sequence[str],
    unit: str = "mm",
    extra_rows: Mapping[str, Mapping] | None = None,
) -> str:
    """A text table with one row per fold, a row of mean ± std across folds, then optional extra rows.

    Columns: PE mean, PE std, PE median, IPE mean (in `unit`) and the outlier percentage per threshold.

    Args:
        fold_stats: one `landmark_statistics` dictionary per fold.
        names: one row label per fold (e.g. "scn_cv1").
        unit: unit of the errors, shown in the header.
        extra_rows: label -> `landmark_statistics` dictionary of rows printed after "mean ± std" and left
            out of it (e.g. "pooled" statistics of all folds, a baseline on the same images).

    Returns:
        Multi-line text ending with a newline; the row labelled "mean ± std" uses the population standard
        deviation across folds (see `summarize_folds`). Undefined values print as "-".

    Raises:
        ValueError: if `names` and `fold_stats` differ in length, or as `summarize_folds`.
    """
    if len(names) != len(fold_stats):
        raise ValueError(
            f"names must give one label per fold: got {len(names)} names for {len(fold_stats)} folds"
        )
    summary = summarize_folds(fold_stats)
    extra_rows = dict(extra_rows or {})
    keys = list(summary["outlier_percent"])
    label_width = max([len("mean ± std"), *(len(name) for name in [*names, *extra_rows])])
    columns = [f"PE mean [{unit}]", f"PE std [{unit}]", f"PE median [{unit}]", f"IPE mean [{unit}]"]
    columns += [f">={key} {unit} [%]" for key in keys]
    widths = [max(len(column), 15) for column in columns]
    lines = [f"{'':<{label_width}}" + "".join(f"  {c:>{w}}" for c, w in zip(columns, widths, strict=True))]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{label_width}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))

    def cell(value: float | None, decimals: int) -> str:
        return "-" if value is None else f"{value:.{decimals}f}"

    def stats_row(label: str, stats: Mapping) -> str:
        cells = [cell(stats[figure], 3) for figure in _FOLD_FIGURES]
        cells += [cell(stats["outlier_percent"].get(key), 2) for key in keys]
        return row(label, cells)

    lines += [stats_row(name, stats) for name, stats in zip(names, fold_stats, strict=True)]

    def mean_std(entry: dict, decimals: int) -> str:
        if entry["mean"] is None:
            return "-"
        return f"{entry['mean']:.{decimals}f} ± {entry['std']:.{decimals}f}"

    cells = [mean_std(summary[figure], 3) for figure in _FOLD_FIGURES]
    cells += [mean_std(summary["outlier_percent"][key], 2) for key in keys]
    lines.append(row("mean ± std", cells))
    lines += [stats_row(label, stats) for label, stats in extra_rows.items()]
    return "\n".join(lines) + "\n"
