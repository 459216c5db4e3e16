"""Testing a network on the validation images: predict, decode, map back, score, write and plot.

For each validation sample the network's heatmaps are decoded to heatmap index coordinates (x, y[, z]),
mapped to output (network) physical space by the sample's heatmap geometry and back to the original image
by the sample's spatial transform (output -> input). Point errors are the distances to the true landmarks,
in mm (the sample's ``mm_scale`` converts physical units to mm).

A test writes into ``iter_<n>/``: ``prediction.csv`` (in the units of the input CSV), ``stats.json``,
``stats.txt``, ``error_distribution.png``, ``heatmaps.png`` (first sample) and ``landmarks_<id>.png`` for
the first few samples (predicted and true landmarks over the network input image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from utils.data.sample import heatmap_points
from utils.io.atomic import write_json_atomic, write_text_atomic
from utils.io.landmarks import write_landmarks_csv
from utils.landmarks.decode import decode_heatmaps
from utils.landmarks.plots import plot_error_distribution, plot_heatmaps, plot_landmarks
from utils.landmarks.statistics import (
    format_statistics,
    identification_counts,
    landmark_statistics,
    point_errors,
    pool_identification_counts,
    summarize_folds,
)
from utils.landmarks.targets import GaussianTargets
from utils.landmarks.tiles import predict_tiled
from utils.training.loss import heatmap_l2_loss

__all__ = [
    "Evaluation", "evaluate", "main_figures", "mean_shape_errors", "predict", "predict_samples", "summarize",
    "to_original",
    "validation_loss",
]


class ValidationSampleLike(Protocol):
    """What `evaluate` needs of a validation sample (dataset.py's ``ValidationSample``)."""

    id: str
    image: np.ndarray  # ([z,] y, x, 1) network input
    landmarks: np.ndarray  # (N, dim) true landmarks, original physical coordinates, NaN = missing
    transform: Any  # SampleTransform: output_to_input(points), input_to_output(points), output grid
    heatmap_geometry: Any  # Geometry of the heatmap grid in output physical space
    mm_scale: float  # millimetres per physical unit of the original image
    references: Mapping[str, np.ndarray]  # further ground truths, name -> (N, dim) like `landmarks`


@dataclass(frozen=True)
class Evaluation:
    """The result of one test.

    Attributes:
        ids: sample ids, length M.
        predicted: (M, N, dim) predicted landmarks, original physical coordinates (x, y[, z]).
        target: (M, N, dim) true landmarks, same coordinates, NaN = missing.
        errors: (M, N) point errors in mm, NaN where the true landmark is missing.
        stats: `landmark_statistics` of `errors` (with "references": the same for each further ground
            truth, and "identification": `identification_counts`, when asked for).
        reference_errors: name -> (M, N) point errors in mm against each further ground truth.
        thresholds: The outlier thresholds of the statistics, mm.
    """

    ids: list[str]
    predicted: np.ndarray
    target: np.ndarray
    errors: np.ndarray
    stats: dict
    reference_errors: Mapping[str, np.ndarray] = field(default_factory=dict)
    thresholds: tuple[float, ...] = (2.0, 4.0, 10.0)

    def scalars(self) -> dict[str, float | None]:
        """`main_figures` of this test's statistics."""
        return main_figures(self.stats)


def main_figures(stats: Mapping) -> dict[str, float | None]:
    """The figures logged and printed for a test: PE mean and median, IPE mean, outlier percentages.

    Args:
        stats: `landmark_statistics` output.

    Returns:
        {"pe_mean", "pe_median", "ipe_mean", "outliers_<t>mm_percent" per threshold t}: values in mm or %;
        with "loss" when the test computed the validation loss, "identification_percent" when it counted it.
    """
    figures = {key: stats[key] for key in ("pe_mean", "pe_median", "ipe_mean", "loss") if key in stats}
    for threshold, percent in stats["outlier_percent"].items():
        figures[f"outliers_{threshold}mm_percent"] = percent
    if "identification" in stats:
        figures["identification_percent"] = stats["identification"]["percent"]
    return figures


def predict(network: keras.Model, images: np.ndarray, batch_size: int = 8,
            forward: Callable[[np.ndarray], Any] | None = None) -> np.ndarray:
    """Heatmaps of a stack of images, computed `batch_size` images at a time.

    Args:
        network: heatmap network, (B, [z,] y, x, 1) -> (B, [z,] y, x, N).
        images: (M, [z,] y, x, 1) float32.
        batch_size: images per forward pass.
        forward: one forward pass of a batch; None: ``network.predict_on_batch``.

    Returns:
        (M, [z,] y, x, N) float32 NumPy array.
    """
    forward = forward or network.predict_on_batch
    parts = [
        np.asarray(forward(images[start : start + batch_size]), dtype=np.float32)
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def predict_samples(images: Sequence[np.ndarray], tile_shape: Sequence[int],
                    forward: Callable[[np.ndarray], Any], batch_size: int = 8) -> Iterator[np.ndarray]:
    """Heatmaps of images of the network's input size `tile_shape` (([z,] y, x), `batch_size` at a time)
    or larger (whole images at a fixed spacing: by overlapping tiles of that size, `utils.landmarks.tiles`),
    one image at a time: a whole volume's heatmaps can take a gigabyte, so decode each before the next.

    Args:
        images: ([z,] y, x, 1) float32 network inputs.
        tile_shape: The network's input size, ([z,] y, x).
        forward: (B, *tile_shape, 1) -> (B, ..., N) heatmaps, for any B up to `batch_size`.
        batch_size: Images or tiles per call of `forward`.

    Yields:
        One ([z,] y, x, N) float32 array per image, in order.
    """
    tile = tuple(int(n) for n in tile_shape)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if all(image.shape[:-1] == tile for image in chunk):
            yield from np.asarray(forward(np.stack(chunk)), dtype=np.float32)
        else:
            for image in chunk:
                yield predict_tiled(image, tile, forward, batch_size=batch_size)


def to_original(points: np.ndarray, transform: Any, heatmap_geometry: Any) -> np.ndarray:
    """Heatmap index coordinates (N, dim) -> original image physical coordinates (N, dim), through the
    heatmap grid (index -> output physical) and the sample's `SampleTransform` (output -> input)."""
    return transform.output_to_input(heatmap_geometry.index_to_physical(points))


def evaluate(
    network: keras.Model,
    samples: Iterable[ValidationSampleLike],
    folder: str | Path,
    to_csv_units: Callable[[str, np.ndarray], np.ndarray],
    batch_size: int = 8,
    num_plots: int = 4,
    name: str = "test",
    targets: GaussianTargets | None = None,
    forward: Callable[[np.ndarray], Any] | None = None,
    thresholds: Sequence[float] = (2.0, 4.0, 10.0),
    identification_radius: float | None = None,
) -> Evaluation:
    """Predicts, scores and writes one test of `network` on the validation samples.

    Args:
        network: heatmap network.
        samples: validation samples (see `ValidationSampleLike`): of the network's input size, or larger
            (whole images at a fixed spacing, predicted by overlapping tiles).
        folder: the test folder ``iter_<n>`` (created).
        to_csv_units: ``to_csv_units(id, points)`` converts (N, dim) original physical coordinates into the
            units of the dataset's landmark CSV (e.g. pixel indices), for ``prediction.csv``.
        batch_size: images per forward pass.
        num_plots: number of samples drawn with their predicted and true landmarks.
        name: label of the error-distribution curve.
        targets: the model's target renderer: if given, the validation loss (the training loss's heatmap
            term; not for whole images larger than the input) and the sigmas are added to the statistics
            ("loss"; "sigmas": N values in heatmap pixels, in landmark order, or N lists of per-axis values
            when anisotropic).
        forward: one forward pass of a batch (see `predict`).
        thresholds: outlier thresholds, mm.
        identification_radius: if given, the identification rate at this radius (mm) is added to the
            statistics ("identification": `identification_counts`).

    Returns:
        The predictions, errors and statistics.

    Raises:
        ValueError: if there are no samples.
    """
    samples = list(samples)
    if not samples:
        raise ValueError(f"no validation samples to evaluate for {folder}")
    folder = Path(folder)
    tile = tuple(network.input.shape[1:-1])
    whole = any(sample.image.shape[:-1] != tile for sample in samples)  # whole images, by tiles
    kept, predicted = [], []
    for maps, sample in zip(predict_samples([sample.image for sample in samples], tile,
                                            lambda images: predict(network, images, batch_size, forward),
                                            batch_size), samples, strict=True):
        if not whole or not kept:  # every map for the validation loss; of whole images the first, to plot
            kept.append(maps)
        predicted.append(to_original(decode_heatmaps(maps)[0], sample.transform, sample.heatmap_geometry))
    predicted = np.stack(predicted)
    target = np.stack([np.asarray(sample.landmarks, dtype=np.float64) for sample in samples])
    scale = np.array([sample.mm_scale for sample in samples], dtype=np.float64)
    errors = point_errors(predicted, target, scale)
    stats = landmark_statistics(errors, thresholds)
    if identification_radius is not None:
        stats["identification"] = identification_counts(predicted, target, scale, identification_radius)
    reference_errors = {name: point_errors(predicted, np.stack([s.references[name] for s in samples]), scale)
                        for name in samples[0].references}
    if reference_errors:
        stats["references"] = {name: landmark_statistics(errors_, thresholds)
                               for name, errors_ in reference_errors.items()}
    if targets is not None:
        if not whole:
            stats["loss"] = validation_loss(np.stack(kept), samples, targets)
        stats["sigmas"] = keras.ops.convert_to_numpy(targets.sigma).tolist()
    ids = [sample.id for sample in samples]
    write_landmarks_csv(
        folder / "prediction.csv",
        {id_: to_csv_units(id_, points) for id_, points in zip(ids, predicted, strict=True)},
    )
    write_json_atomic(folder / "stats.json", stats)
    identified = stats.get("identification")
    write_text_atomic(folder / "stats.txt", format_statistics(stats) + (
        f"identified: {identified['identified']} of {identified['count']} landmarks within "
        f"{identified['radius_mm']:g} mm and closest to their own\n" if identified else "") + "".join(
        f"\nagainst the {name} ground truth:\n{format_statistics(other)}"
        for name, other in stats.get("references", {}).items()))
    if np.any(np.isfinite(errors)):
        plot_error_distribution(folder / "error_distribution.png", {name: errors})
    plot_heatmaps(folder / "heatmaps.png", kept[0])
    for sample, points in zip(samples[:num_plots], predicted, strict=False):
        grid = sample.transform.output  # output physical -> the image's pixels (a whole image's grid is
        plot_landmarks(  # not at the origin)
            folder / f"landmarks_{sample.id}.png",
            sample.image[..., 0],
            predicted=grid.physical_to_index(sample.transform.input_to_output(points)),
            target=grid.physical_to_index(
                sample.transform.input_to_output(np.asarray(sample.landmarks, dtype=np.float64))),
            title=sample.id,
        )
    return Evaluation(ids=ids, predicted=predicted, target=target, errors=errors, stats=stats,
                      reference_errors=reference_errors, thresholds=tuple(thresholds))


def validation_loss(heatmaps: np.ndarray, samples: Sequence[ValidationSampleLike], targets: GaussianTargets,
                    batch_size: int = 8) -> float:
    """The heatmap term of the training loss on the validation samples (sum of squares / 2 / images).

    Args:
        heatmaps: (M, [z,] y, x, N) predicted heatmaps of the M samples.
        samples: The validation samples (their landmarks give the targets, drawn by `targets`).
        targets: The model's target renderer.
        batch_size: Targets drawn at a time.
    """
    total = 0.0
    for start in range(0, len(samples), batch_size):
        points, mask = zip(*[heatmap_points(sample.heatmap_geometry, sample.transform.input_to_output(
            np.asarray(sample.landmarks, dtype=np.float64))) for sample in samples[start:start + batch_size]],
            strict=True)
        points, mask = np.stack(points), np.stack(mask)
        target = targets([points, mask])
        part = heatmaps[start:start + batch_size]
        total += float(heatmap_l2_loss(target, part.astype(np.float32), mask)) * len(part)
    return total / len(samples)


def mean_shape_errors(mean_shape: np.ndarray, samples: Sequence[ValidationSampleLike]) -> np.ndarray:
    """Point errors (mm) of the mean-shape baseline: every image gets the same landmarks in output space.

    Args:
        mean_shape: (N, dim) landmarks in output (network) physical coordinates, e.g. the mean of the
            training images' landmarks after the validation (fit-to-size) transform.
        samples: validation samples.

    Returns:
        (M, N) point errors in mm, NaN where the true landmark is missing.
    """
    predicted = np.stack([sample.transform.output_to_input(mean_shape) for sample in samples])
    target = np.stack([np.asarray(sample.landmarks, dtype=np.float64) for sample in samples])
    return point_errors(
        predicted, target, np.array([sample.mm_scale for sample in samples], dtype=np.float64)
    )


def summarize(
    evaluations: Mapping[str, Evaluation], baselines: Mapping[str, np.ndarray] | None = None
) -> dict:
    """The content of ``summary.json``: every fold's statistics, mean ± std across folds, pooled figures.

    Args:
        evaluations: run name (e.g. "scn_cv1") -> final test of that run. Runs of different networks are
            summarised together; call once per network for a per-network summary.
        baselines: run name -> (M, N) point errors in mm of a baseline on the same test images (e.g.
            `mean_shape_errors`), or None.

    Returns:
        ``{"runs": {name: stats}, "across_runs": summarize_folds(...), "pooled": landmark_statistics of all
        point errors together}``, plus ``"mean_shape_baseline": {"runs": {name: stats}, "pooled": stats}``
        when `baselines` is given, ``"pooled_references"`` (name -> stats) with further ground truths and
        ``pooled["identification"]`` when the tests counted it. The outlier thresholds are the tests'.
    """
    stats = [evaluation.stats for evaluation in evaluations.values()]
    thresholds = next(iter(evaluations.values())).thresholds
    pooled = np.concatenate([evaluation.errors for evaluation in evaluations.values()])
    summary = {
        "runs": {name: evaluation.stats for name, evaluation in evaluations.items()},
        "across_runs": summarize_folds(stats),
        "pooled": landmark_statistics(pooled, thresholds),
    }
    references = next(iter(evaluations.values())).reference_errors
    if references:
        summary["pooled_references"] = {
            name: landmark_statistics(
                np.concatenate([e.reference_errors[name] for e in evaluations.values()]), thresholds)
            for name in references}
    counts = [e.stats["identification"] for e in evaluations.values() if "identification" in e.stats]
    if counts:
        summary["pooled"]["identification"] = pool_identification_counts(counts)
    if baselines is not None:
        summary["mean_shape_baseline"] = {
            "runs": {name: landmark_statistics(errors, thresholds) for name, errors in baselines.items()},
            "pooled": landmark_statistics(np.concatenate(list(baselines.values())), thresholds),
        }
    return summary
