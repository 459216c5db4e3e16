"""Landmark datasets: which files, which transforms, which targets (2D radiographs and 3D volumes).

A dataset folder holds::

    images/<id>.<ext>                  any format SimpleITK reads (.mha, .nii.gz, .nrrd, .png, ...)
    setup/all.csv                      id,x0,y0[,z0],x1,...   (pixel indices or physical coordinates)
    setup/cv/set<k>/{train,test}.txt   cross-validation folds (one id per line)
    setup/{train,test}.txt             the full split (fold "none")

Usage::

    hands = Dataset("hand_xray_dataset", image_size=(256, 256), heatmap_size=(256, 256), num_landmarks=37,
                    sigma=3.0, fold=1, dim=2)                         # the papers' hand setup
    volumes = Dataset("data/volumes", image_size=(64, 64, 64), heatmap_size=(64, 64, 64), num_landmarks=10,
                      sigma=2.0, fold=1, dim=3)                       # physical mm, real spacing
    batch = next(hands.train_dataset())      # {"image", "heatmaps", "mask"}, endless, augmented
    for sample in hands.validation_dataset():  # each test image once, no randomness
        ...
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.data.cache import LRUCache
from utils.data.debug import write_debug_images
from utils.data.loader import BatchLoader
from utils.data.sample import SampleGenerator, SourceImage, prepare_source, read_geometry
from utils.io.id_list import read_id_list
from utils.io.image import read_image
from utils.io.landmarks import read_landmarks_csv
from utils.landmarks.statistics import reference_distance_scale
from utils.transforms.geometry import Geometry
from utils.transforms.intensity import IntensityAugmentation
from utils.transforms.spatial import (
    CenterToOrigin,
    FitToOutput,
    OriginToOutputCenter,
    RandomBSplineDeformation,
    RandomRotate,
    RandomScale,
    RandomTranslate,
    SampleTransform,
    SpatialAugmentation,
)

__all__ = ["AUGMENTATION_2D", "AUGMENTATION_3D", "Dataset", "ValidationSample"]

# Augmentation strengths (output pixels, radians, relative factors). 2D: the hand radiograph setup of the
# papers; 3D: milder, for volumes resampled to about 64-128 voxels per axis.
AUGMENTATION_2D = {
    "translation": 10.0,  # maximum random translation, output pixels per axis
    "rotation": 0.2,  # maximum random rotation, radians
    "scaling": (0.1, 0.05),  # maximum relative isotropic and per-axis anisotropic scale change
    "deformation_nodes": 5,  # B-spline control nodes per axis over the output grid
    "deformation": 20.0,  # maximum B-spline displacement, output pixels
}
AUGMENTATION_3D = {
    "translation": 8.0,
    "rotation": 0.15,
    "scaling": (0.1, 0.05),
    "deformation_nodes": 4,
    "deformation": 6.0,
}


@dataclass(frozen=True, eq=False)
class ValidationSample:
    """One test image, prepared by the non-random chain, with what is needed to map predictions back.

    Attributes:
        id: Image id.
        image: ([z,] y, x, 1) float32 network input.
        landmarks: (N, dim) true landmarks in the ORIGINAL image's physical coordinates, NaN rows = missing.
        transform: The sample's transform (output pixels <-> original physical coordinates).
        heatmap_geometry: Heatmap grid in output physical space (index -> output pixel coordinates).
        mm_scale: Millimetres per physical unit of the original image (reference distance for hands; 1.0
            with a real spacing in mm). NaN when a reference landmark is missing.
    """

    id: str
    image: np.ndarray
    landmarks: np.ndarray
    transform: SampleTransform
    heatmap_geometry: Geometry
    mm_scale: float


class _Samples:
    """Picklable ``make_sample(index, rng)`` for the loader; each process holds its own image cache.

    Debug images (when `debug_folder` is set) are written for the samples of the first epoch and for the
    validation samples, named ``<id>_epoch<e>`` or ``<id>_validation``.
    """

    def __init__(
        self,
        ids: list[str],
        paths: list[Path],
        landmarks: np.ndarray,
        generator: SampleGenerator,
        ignore_spacing: bool,
        dim: int,
        cache_bytes: int,
        validation: bool,
        debug_folder: Path | None,
    ):
        self.ids, self.paths, self.landmarks, self.generator = ids, paths, landmarks, generator
        self.ignore_spacing, self.dim, self.cache_bytes = ignore_spacing, dim, cache_bytes
        self.validation, self.debug_folder = validation, debug_folder
        self._cache: LRUCache[SourceImage] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # a worker starts with an empty cache of its own

    def _source(self, index: int) -> SourceImage:
        if self._cache is None:
            self._cache = LRUCache(self.cache_bytes, size_of=lambda source: source.nbytes)
        return self._cache.get(index, lambda: prepare_source(
            read_image(self.paths[index], self.ignore_spacing, self.dim), self.generator.spatial,
            self.generator.output))

    def array_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the arrays of one sample (the loader writes them straight into its batch)."""
        spec = self.generator.array_spec(self.landmarks.shape[1])
        return {"image": spec["image"]} if self.validation else spec

    def __call__(self, index: int, rng: np.random.Generator | None, out: dict | None = None) -> dict:
        arrays, transform = self.generator(self._source(index), self.landmarks[index], rng, out)
        epoch = rng.bit_generator.seed_seq.spawn_key[0] if rng is not None else None
        if self.debug_folder is not None and (rng is None or epoch == 0):
            tag = "validation" if rng is None else f"epoch{epoch}"
            write_debug_images(self.debug_folder, f"{self.ids[index]}_{tag}", arrays["image"],
                               arrays["heatmaps"], transform.input_to_output(self.landmarks[index]))
        if self.validation:
            return {"image": arrays["image"], "transform": transform}
        return arrays


class Dataset:
    """A landmark dataset folder with its augmentation chain and targets.

    Args:
        base_folder: Dataset folder (layout in the module docstring).
        image_size: Network input size in pixels, order (x, y[, z]).
        num_landmarks: Landmarks per image (hands: 37).
        fold: Cross-validation fold 1, 2 or 3 (int or str), or None / "none" for setup/{train,test}.txt.
        dim: 2 (radiographs) or 3 (volumes).
        heatmap_size: Heatmap size in pixels, order (x, y[, z]); image_size divided by one integer factor
            (None: image_size).
        sigma: Gaussian sigma of the heatmap targets, heatmap pixels.
        batch_size: Samples per training batch.
        landmark_units: What all.csv holds: "pixel" (indices) or "physical"; None: "pixel" in 2D,
            "physical" in 3D. Converted ONCE, at load, to physical points.
        ignore_spacing: Use spacing 1 instead of the file's; None: True in 2D (hand radiographs), False in 3D.
        normalization: (landmark i, landmark j, distance in mm) defining millimetres by a reference distance,
            or None for physical units in mm from the spacing; "auto": (1, 5, 50.0) in 2D, None in 3D.
        translation, rotation, scaling, deformation_nodes, deformation: Augmentation strengths (see
            `AUGMENTATION_2D`: output pixels, radians, relative factors, nodes per axis, output pixels);
            None takes the 2D or 3D preset.
        intensity_shift: Maximum random intensity shift after robust normalisation to [-1, 1].
        intensity_scale: Maximum relative random intensity scale change.
        seed: Seed of the data order and every augmentation draw.
        workers: Loader processes (0: in the calling process).
        cache_bytes: Memory limit of each process's cache of decoded images, bytes.
        debug_folder: If set, debug images of the first epoch's and the validation samples are written
            there (see `save_debug_images`).

    Raises:
        FileNotFoundError: A setup file or an image is missing (names the file or id).
        ValueError: An image is unreadable or has the wrong dimension, a CSV row has the wrong number of
            values, an id list is empty, a listed id has no row in all.csv or several image files, or a
            parameter is invalid (names the value received).
    """

    def __init__(
        self,
        base_folder: str | os.PathLike,
        *,
        image_size: Sequence[int],
        num_landmarks: int,
        fold: int | str | None = 1,
        dim: int = 2,
        heatmap_size: Sequence[int] | None = None,
        sigma: float = 3.0,
        batch_size: int = 8,
        landmark_units: str | None = None,
        ignore_spacing: bool | None = None,
        normalization: tuple[int, int, float] | str | None = "auto",
        translation: float | None = None,
        rotation: float | None = None,
        scaling: tuple[float, float] | None = None,
        deformation_nodes: int | None = None,
        deformation: float | None = None,
        intensity_shift: float = 0.15,
        intensity_scale: float = 0.15,
        seed: int = 0,
        workers: int = 0,
        cache_bytes: int = 1 << 30,
        debug_folder: str | os.PathLike | None = None,
    ):
        # ---- parameters ----
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        if len(image_size) != dim:
            raise ValueError(f"image_size must have {dim} entries for dim={dim}, got {tuple(image_size)}")
        heatmap_size = tuple(image_size) if heatmap_size is None else tuple(heatmap_size)
        factors = {i // h if h and i % h == 0 else 0 for i, h in zip(image_size, heatmap_size, strict=False)}
        if len(heatmap_size) != dim or len(factors) != 1 or 0 in factors:
            raise ValueError(f"heatmap_size must be image_size {tuple(image_size)} divided by one integer "
                             f"factor, got {heatmap_size}")
        landmark_units = landmark_units or ("pixel" if dim == 2 else "physical")
        if landmark_units not in ("pixel", "physical"):
            raise ValueError(f"landmark_units must be 'pixel' or 'physical', got {landmark_units!r}")
        preset = AUGMENTATION_2D if dim == 2 else AUGMENTATION_3D
        self.base_folder = Path(base_folder)
        self.dim = dim
        self.num_landmarks = num_landmarks
        self.batch_size = batch_size
        self.landmark_units = landmark_units
        self.ignore_spacing = dim == 2 if ignore_spacing is None else ignore_spacing
        if normalization == "auto":
            normalization = (1, 5, 50.0) if dim == 2 else None
        self.normalization = normalization
        self.seed = seed
        self.workers = workers
        self.cache_bytes = cache_bytes
        self.debug_folder = None if debug_folder is None else Path(debug_folder)

        # ---- files: ids of the split, image paths, landmarks converted once to physical points ----
        setup = self.base_folder / "setup"
        split = setup if fold is None or str(fold) == "none" else setup / "cv" / f"set{int(fold)}"
        self.train_ids = read_id_list(split / "train.txt")
        self.test_ids = read_id_list(split / "test.txt")
        csv_path = setup / "all.csv"
        table = read_landmarks_csv(csv_path, num_landmarks, dim)
        files = self._image_files()
        self._geometry: dict[str, Geometry] = {}
        self._paths: dict[str, Path] = {}
        self._landmarks: dict[str, np.ndarray] = {}
        for list_name, ids in (("train.txt", self.train_ids), ("test.txt", self.test_ids)):
            for image_id in ids:
                if image_id not in table:
                    raise ValueError(f"id {image_id!r} of {split / list_name} has no row in {csv_path}")
                path = self._image_path(image_id, files)
                geometry = read_geometry(path, self.ignore_spacing)
                if geometry.dim != dim:
                    raise ValueError(f"image {path} is {geometry.dim}D (size {geometry.size}), but dim={dim}")
                points = table[image_id]
                self._geometry[image_id] = geometry
                self._paths[image_id] = path
                if landmark_units == "pixel":
                    points = geometry.index_to_physical(points)
                self._landmarks[image_id] = points

        # ---- transforms: one spatial chain (random parts off for validation), intensity, targets ----
        def pick(value, key):
            return preset[key] if value is None else value

        spatial = SpatialAugmentation(
            [CenterToOrigin(), FitToOutput(keep_aspect=True),
             RandomTranslate(pick(translation, "translation")), RandomRotate(pick(rotation, "rotation")),
             RandomScale(*pick(scaling, "scaling")), OriginToOutputCenter()],
            deformation=RandomBSplineDeformation(pick(deformation_nodes, "deformation_nodes"),
                                                 pick(deformation, "deformation")),
        )
        intensity = IntensityAugmentation(shift=intensity_shift, scale=intensity_scale, clamp=(-1.0, 1.0))
        self.output_geometry = Geometry.grid(tuple(image_size))
        self.generator = SampleGenerator(spatial, intensity, self.output_geometry, factors.pop(), sigma)
        self.heatmap_geometry = self.generator.heatmap_geometry
        self._train_loader: BatchLoader | None = None

    # ---------------------------------------------------------------- files

    def _image_files(self) -> dict[str, list[Path]]:
        folder = self.base_folder / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        files: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file():
                files.setdefault(path.name.split(".", 1)[0], []).append(path)
        return files

    def _image_path(self, image_id: str, files: dict[str, list[Path]]) -> Path:
        found = files.get(image_id, [])
        if not found:
            raise FileNotFoundError(f"no image file for id {image_id!r} in {self.base_folder / 'images'}")
        if len(found) > 1:
            raise ValueError(f"several image files for id {image_id!r}: {[p.name for p in found]}")
        return found[0]

    def _samples(self, ids: list[str], validation: bool) -> _Samples:
        return _Samples(
            ids, [self._paths[i] for i in ids], np.stack([self._landmarks[i] for i in ids]), self.generator,
            self.ignore_spacing, self.dim, self.cache_bytes, validation, self.debug_folder)

    # ---------------------------------------------------------------- public

    def save_debug_images(self, folder: str | os.PathLike) -> None:
        """Writes debug images into `folder` from now on: each generated input of the first training epoch
        and of the validation set as .mha and as a PNG with its landmarks, and the heatmaps as a PNG (maximum
        over landmarks). Call before the first `train_dataset`."""
        self.debug_folder = Path(folder)

    def train_dataset(self, start_batch: int = 0, copy: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Endless shuffled, augmented training batches, deterministic in (seed, batch number).

        Args:
            start_batch: Number of batches already consumed (a resumed run continues identically).
            copy: If False, the arrays are views of the loader's buffers, valid only until the next batch
                is requested (a training loop that consumes each batch first saves copying ~10 MB per hand
                sample); keep them with `.copy()`.

        Returns:
            Iterator of {"image": (B, [z,] y, x, 1), "heatmaps": (B, [z,] y, x, N), "mask": (B, N)}, float32.
        """
        if self._train_loader is None:
            self._train_loader = BatchLoader(
                self._samples(self.train_ids, validation=False), len(self.train_ids), self.batch_size,
                seed=self.seed, num_workers=self.workers)
        return self._train_loader.train_batches(start_batch, copy)

    def validation_dataset(self) -> list[ValidationSample]:
        """Each test image once, through the non-random chain (same result every call).

        Returns:
            `ValidationSample` per test id, in test.txt order.
        """
        targets = np.stack([self._landmarks[i] for i in self.test_ids])
        scales = self._mm_scales(targets)
        samples = []
        with BatchLoader(self._samples(self.test_ids, validation=True), len(self.test_ids), 1,
                         seed=self.seed, num_workers=self.workers) as loader:
            for index, batch in enumerate(loader.ordered_batches()):
                samples.append(ValidationSample(
                    self.test_ids[index], batch["image"][0], targets[index], batch["transform"][0],
                    self.heatmap_geometry, float(scales[index])))
        return samples

    def mean_shape_baseline(self) -> np.ndarray:
        """Mean landmark positions of the training images in output pixels after the validation chain.

        Returns:
            (N, dim) float64 output pixel coordinates (x, y[, z]); NaN for a landmark missing everywhere.
        """
        points = [self.generator.spatial.sample(self._geometry[i], self.output_geometry, None)
                  .input_to_output(self._landmarks[i]) for i in self.train_ids]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a landmark missing in every image: NaN
            return np.nanmean(np.stack(points), axis=0)

    def to_csv_units(self, image_id: str, points: np.ndarray) -> np.ndarray:
        """Converts (N, dim) physical points of image `image_id` into the units of all.csv."""
        if self.landmark_units == "physical":
            return np.asarray(points, dtype=np.float64)
        if image_id not in self._geometry:
            raise ValueError(f"id {image_id!r} is not in this dataset's train or test list")
        return self._geometry[image_id].physical_to_index(points)

    def close(self) -> None:
        """Stops the training loader's worker processes."""
        if self._train_loader is not None:
            self._train_loader.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _mm_scales(self, targets: np.ndarray) -> np.ndarray:
        if self.normalization is None:
            return np.ones(len(targets))
        first, second, distance = self.normalization
        return reference_distance_scale(targets, (first, second), distance)

