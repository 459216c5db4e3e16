"""Landmark datasets: which files, what the data is (a `DataSpec`), the augmentation chains, the loader.

A dataset folder holds::

    images/<id>.<ext>                  any format SimpleITK reads (.mha, .nii.gz, .nrrd, .png, ...)
    setup/all.csv                      id,x0,y0[,z0],x1,...   (pixel indices or physical coordinates;
                                       a kind with several annotators has one CSV each: `DataSpec`)
    setup/cv/set<k>/{train,test}.txt   cross-validation folds (one id per line)
    setup/{train,test}.txt             the full split (fold "none")

Usage::

    hands = Dataset("hand_xray_dataset", spec=HAND_XRAY, image_size=(256, 256), heatmap_size=(256, 256),
                    num_landmarks=37, fold=1)                        # the papers' hand setup
    volumes = Dataset("data/volumes", spec=CUSTOM_3D, image_size=(64, 64, 64), heatmap_size=(64, 64, 64),
                      num_landmarks=10, fold=1)                      # physical mm, real spacing
    batch = next(hands.training_batches())   # {"image", "points", "mask", "id"}, endless, augmented
    for sample in hands.validation_samples():  # each test image once, no randomness
        ...
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.data.cache import LRUCache
from utils.data.loader import BatchLoader
from utils.data.sample import SampleGenerator, SourceImage, prepare_source, read_geometry
from utils.data.validate import spacing_problem
from utils.io.errors import DataError
from utils.io.id_list import read_id_list
from utils.io.image import read_image
from utils.io.landmarks import read_landmarks_csv
from utils.landmarks.statistics import reference_distance_scale
from utils.transforms.affine import (
    CenterToOrigin,
    FitToOutput,
    OriginToOutputCenter,
    RandomCrop,
    RandomRotate,
    RandomScale,
    RandomTranslate,
    Scale,
)
from utils.transforms.bspline import RandomBSplineDeformation
from utils.transforms.geometry import Geometry
from utils.transforms.intensity import IntensityAugmentation
from utils.transforms.spatial import SampleTransform, SpatialAugmentation

__all__ = ["AUGMENTATION_2D", "AUGMENTATION_3D", "CEPHALOMETRIC", "CUSTOM_2D", "CUSTOM_3D", "DATA_KINDS",
           "DATA_SPECS", "HAND_XRAY", "HEART_CT", "HEART_MR", "NORMALIZATIONS", "SPINE_CT", "DataSpec",
           "Dataset", "ImageSamples", "ValidationSample", "check_pixel_spacing", "csv_units", "kind_spec",
           "sample_generator", "spatial_chain"]


@dataclass(frozen=True)
class DataSpec:
    """What the data of a dataset folder is: its annotation files and their units, the trust in the spacing,
    how millimetres are defined, the intensities and the output grid's spacing. One per kind of data
    (`DATA_KINDS`); `--data-kind` picks it, and a run's export records it whole (``predict.json``).

    Attributes:
        name: The spec's name.
        dim: The dimension of the data (2 or 3).
        landmark_units: What the CSVs hold: "pixel" (indices) or "physical" (the image's physical space).
            Converted ONCE, at load, to physical points.
        ignore_spacing: Use spacing 1 instead of the files' spacing (untrustworthy spacing).
        reset_frame: Read every image with origin 0 and identity direction: the authors' readers do by
            default, so their shipped spine coordinates are in that frame. (Their heart reader does too; the
            heart kinds keep the files' frame, since no heart setup of theirs ships and yours will be in
            it.)
        mm_reference: (landmark i, landmark j, distance in mm): millimetres defined by a reference distance
            in every image; None: physical units are millimetres (from the spacing).
        num_landmarks: Landmarks per image of the kind (None: the user says, --num-landmarks).
        annotations: Landmark CSVs in setup/; with several (annotators), each training sample uses one of
            them, drawn with equal probability.
        references: Ground truths of the tests: name -> CSVs averaged into it; the first is the main one
            (stats.json, summary.json, the conformal radii), the others are reported beside it. None: the
            one annotation file.
        outlier_thresholds: Point errors (mm) at and above which a landmark counts as an outlier.
        pixel_spacing: Spacing (mm) every image file must carry (an image of another spacing is an error
            that names the file); None: any.
        image_spacing: Fixed spacing of the network input grid, mm per pixel: an image keeps its size in mm,
            training samples are random crops of an image longer than the grid, translation and
            deformation strengths are in mm, and tests run on the whole image by overlapping tiles; None:
            each image is fitted into the grid.
        intensity_range: Fixed intensities (lo, hi) mapped to [-1, 1] (cephalograms: 0, 256 = (x - 128) /
            128; CT: -2048, 2048 = HU / 2048); None: the robust range of each image or patch
            (--intensity-normalization).
        intensity_floor: Intensities below it are raised to it before the mapping, and the padding outside
            the image is it (CT: -1024 HU, air; the authors pad CT with -1024).
        intensity_shift: Maximum random intensity shift after the mapping to [-1, 1].
        intensity_scale: Maximum relative random intensity scale change.
        intensity_gamma: Maximum absolute log of a random gamma exponent on the clamped range (MR), or None.
        augmentation: The kind's spatial augmentation strengths (output pixels, or mm with `image_spacing`;
            radians, relative factors), over `AUGMENTATION_2D` / `AUGMENTATION_3D`; None: those.
        identification_radius: Radius (mm) of the identification rate (a landmark is identified when its
            prediction is within the radius of its own true position and closer to it than to any other
            true landmark); None: not reported.
    """

    name: str
    dim: int
    landmark_units: str
    ignore_spacing: bool
    mm_reference: tuple[int, int, float] | None
    num_landmarks: int | None = None
    reset_frame: bool = False
    annotations: tuple[str, ...] = ("all.csv",)
    references: dict[str, tuple[str, ...]] | None = None
    outlier_thresholds: tuple[float, ...] = (2.0, 4.0, 10.0)
    pixel_spacing: float | None = None
    image_spacing: float | None = None
    intensity_range: tuple[float, float] | None = None
    intensity_floor: float | None = None
    intensity_shift: float = 0.15
    intensity_scale: float = 0.15
    intensity_gamma: float | None = None
    augmentation: dict | None = None
    identification_radius: float | None = None

    def __post_init__(self) -> None:
        def tuples(value):  # JSON gives lists back (an export's spec): the same spec, whatever the source
            return tuple(tuples(v) for v in value) if isinstance(value, list | tuple) else value

        for name in ("mm_reference", "annotations", "outlier_thresholds", "intensity_range"):
            object.__setattr__(self, name, tuples(getattr(self, name)))
        for name in ("references", "augmentation"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, {k: tuples(v) for k, v in getattr(self, name).items()})
        if self.landmark_units not in ("pixel", "physical"):
            raise ValueError(f"DataSpec {self.name!r}: landmark_units must be 'pixel' or 'physical', "
                             f"got {self.landmark_units!r}")
        if self.dim not in (2, 3):
            raise ValueError(f"DataSpec {self.name!r}: dim must be 2 or 3, got {self.dim!r}")
        if not self.annotations:
            raise ValueError(f"DataSpec {self.name!r}: annotations needs at least one CSV file name")
        if self.image_spacing is not None and not self.image_spacing > 0:
            raise ValueError(f"DataSpec {self.name!r}: image_spacing must be positive, "
                             f"got {self.image_spacing}")

    @property
    def reference_files(self) -> dict[str, tuple[str, ...]]:
        """The test ground truths, name -> CSVs averaged; the first is the main one."""
        if self.references:
            return {name: tuple(files) for name, files in self.references.items()}
        return {"annotation": (self.annotations[0],)}

    @property
    def csv_files(self) -> tuple[str, ...]:
        """Every landmark CSV the kind reads from setup/, once each."""
        files = [*self.annotations, *(f for names in self.reference_files.values() for f in names)]
        return tuple(dict.fromkeys(files))


# The kinds of data (`--data-kind`); sources in REFERENCE.md of the authors' code (`../shared`), README
# "Kinds of data". Strengths in `augmentation` are mm with a fixed `image_spacing`, else output pixels.
HAND_XRAY = DataSpec("hand_xray", 2, landmark_units="pixel", ignore_spacing=True, mm_reference=(1, 5, 50.0),
                     num_landmarks=37)
"""Hand radiographs (Digital Hand Atlas): pixel CSV, spacing ignored, landmarks 1 and 5 are 50 mm apart."""
CEPHALOMETRIC = DataSpec(
    "cephalometric", 2, landmark_units="physical", ignore_spacing=False, mm_reference=None, num_landmarks=19,
    annotations=("all_senior.csv", "all_junior.csv"),  # each sample: senior or junior with p = 0.5
    references={"challenge": ("all_challenge.csv",), "senior": ("all_senior.csv",),
                "junior": ("all_junior.csv",), "mean": ("all_senior.csv", "all_junior.csv")},
    outlier_thresholds=(2.0, 2.5, 3.0, 4.0, 10.0),  # the ISBI 2015 radii 2, 2.5, 3, 4 mm (and 10)
    pixel_spacing=0.1,  # the 1935 x 2400 BMPs are 0.1 mm pixels; the CSVs are in mm
    intensity_range=(0.0, 256.0), intensity_shift=0.25, intensity_scale=0.25,  # (x - 128) / 128, +-0.25
    augmentation={"translation": 10.0, "rotation": 0.25, "scaling": (0.2, 0.2), "deformation_nodes": 5,
                  "deformation": 10.0},  # their mm at about 1 mm per pixel of a 256 x 256 input
)
"""ISBI 2015 cephalograms: 19 landmarks in mm on 0.1 mm pixels, two annotators, four ground truths."""
SPINE_CT = DataSpec(
    "spine_ct", 3, landmark_units="physical", ignore_spacing=False, mm_reference=None, num_landmarks=26,
    reset_frame=True,  # their reader sets origin 0 and identity direction: the CSV is in that frame
    image_spacing=2.0,  # 2 mm voxels (their input 96 x 96 x 192)
    intensity_range=(-2048.0, 2048.0), intensity_floor=-1024.0,  # HU / 2048, below -1024 raised to it
    intensity_shift=0.15, intensity_scale=0.15,
    augmentation={"translation": 20.0, "rotation": 0.2, "scaling": (0.0, 0.1), "deformation_nodes": 5,
                  "deformation": 15.0},  # +-20 mm, 0.2 rad, per-axis 0.1, 5 nodes of up to 15 mm
    outlier_thresholds=(2.0, 2.5, 3.0, 4.0, 10.0, 20.0),  # their spine overview's radii
    identification_radius=20.0,
)
"""Spine CT: 26 vertebrae in mm (NaN = not in the scan), HU intensities, 2 mm voxels."""
_HEART_CHAIN = {"rotation": 0.35, "scaling": (0.2, 0.1), "deformation_nodes": 6}  # +-0.35 rad, 0.2 and 0.1
HEART_CT = DataSpec(
    "heart_ct", 3, landmark_units="physical", ignore_spacing=False, mm_reference=None, num_landmarks=1,
    image_spacing=10.0,  # their 32^3 input at 10 mm
    intensity_range=(-2048.0, 2048.0), intensity_floor=-1024.0, intensity_shift=0.2, intensity_scale=0.2,
    augmentation=_HEART_CHAIN | {"translation": 20.0, "deformation": 15.0},  # +-20 mm, 15 mm
)
"""Heart CT: the heart centre, HU clamped below at -1024, / 2048, random shift and scale +-0.2."""
HEART_MR = DataSpec(
    "heart_mr", 3, landmark_units="physical", ignore_spacing=False, mm_reference=None, num_landmarks=1,
    image_spacing=12.0,  # their 32^3 input at 12 mm
    intensity_shift=0.6, intensity_scale=0.6, intensity_gamma=0.4,  # robust range, +-0.6, gamma 0.67-1.49
    augmentation=_HEART_CHAIN | {"translation": 20.0, "deformation": 15.0},
)
"""Heart MR: the heart centre, robust intensity normalisation, random gamma, shift and scale +-0.6."""
CUSTOM_2D = DataSpec("custom2d", 2, landmark_units="pixel", ignore_spacing=False, mm_reference=None)
"""Your 2D data: pixel CSV, the files' spacing in mm (--landmark-units, --ignore-spacing, --mm-reference)."""
CUSTOM_3D = DataSpec("custom3d", 3, landmark_units="physical", ignore_spacing=False, mm_reference=None)
"""Your 3D data: CSV in the images' physical coordinates (mm), errors in mm (the same options)."""
DATA_SPECS = {spec.name: spec for spec in (HAND_XRAY, CEPHALOMETRIC, SPINE_CT, HEART_CT, HEART_MR, CUSTOM_2D,
                                           CUSTOM_3D)}
DATA_KINDS = ("hand_xray", "cephalometric", "spine_ct", "heart", "custom2d", "custom3d")
"""The kinds a user picks (`--data-kind`): the specs, with heart split by modality."""


def kind_spec(kind: str, modality: str | None = None) -> DataSpec:
    """The `DataSpec` of a kind of data (`DATA_KINDS`; heart needs its modality, "mr" or "ct")."""
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; known: {', '.join(DATA_KINDS)}")
    if (kind == "heart") != (modality is not None):
        raise ValueError(f"data kind {kind!r} with modality {modality!r}: heart needs mr or ct, "
                         "the others none")
    return DATA_SPECS[f"heart_{modality}" if kind == "heart" else kind]

# Augmentation strengths (output pixels, or mm with a fixed output spacing; radians, relative factors). 2D:
# the hand radiograph setup of the papers; 3D: milder, for volumes resampled to about 64-128 voxels per axis.
AUGMENTATION_2D = {
    "translation": 10.0,  # maximum random translation, output pixels per axis
    "rotation": 0.2,  # maximum random rotation, radians
    "scaling": (0.1, 0.05),  # maximum relative isotropic and per-axis anisotropic scale change
    "deformation_nodes": 5,  # B-spline control nodes per axis over the output grid
    "deformation": 20.0,  # maximum B-spline displacement, output pixels
    "deformation_grid": "image",  # B-spline node layout: "image" (ours) or "mesh" (the authors')
}
AUGMENTATION_3D = {
    "translation": 8.0,
    "rotation": 0.15,
    "scaling": (0.1, 0.05),
    "deformation_nodes": 4,
    "deformation": 6.0,
    "deformation_grid": "image",
}
# Robust intensity normalisation to [-1, 1], before the random shift and scale. "image": the 1st/99th
# percentile of the whole source image, once per image (ours: every sample of an image gets the same map,
# and a patch showing mostly padding or bone is not stretched); "patch": the 5th/95th percentile of each
# resampled patch, padding zeros included (the authors' hand setup).
NORMALIZATIONS = {"image": None, "patch": (5.0, 95.0)}


def spatial_chain(translation: float, rotation: float, scaling: tuple[float, float] | None,
                  deformation_nodes: int, deformation: float, deformation_grid: str = "image",
                  spacing: float | None = None) -> SpatialAugmentation:
    """The spatial chain: image centre to the origin, fit to the output keeping the aspect ratio, random
    translation (output pixels), rotation (radians) and scaling (relative isotropic, per-axis; None: no
    scaling step, as in the authors' hand chain), origin to the output centre, then a random B-spline
    deformation (nodes per axis, output pixels, node layout "image" or "mesh": see
    `utils.transforms.bspline.RandomBSplineDeformation`). With a fixed `spacing` (mm per output pixel)
    the image keeps its size in mm instead of being fitted: a random crop first shows any part of an image
    longer than the grid, translation and deformation are in mm, and the scale to output pixels comes last.
    Validation samples take it without its random parts. Edit it to change the chain:
    `utils.transforms.affine` also has fixed `Translate`, `Rotate`, `Scale`, `Flip` and a `RandomFlip`
    (which keeps the landmark order: use it only for data whose landmarks have no left/right identity)."""
    scale = [] if scaling is None else [RandomScale(*scaling)]
    random = [RandomTranslate(translation), RandomRotate(rotation), *scale]
    if spacing is None:
        steps = [CenterToOrigin(), FitToOutput(keep_aspect=True), *random, OriginToOutputCenter()]
    else:
        steps = [CenterToOrigin(), RandomCrop(spacing), *random, Scale(1.0 / spacing), OriginToOutputCenter()]
        deformation /= spacing
    return SpatialAugmentation(
        steps, deformation=RandomBSplineDeformation(deformation_nodes, deformation, deformation_grid))


def sample_generator(spec: DataSpec, image_size: Sequence[int], heatmap_size: Sequence[int] | None = None,
                     augmentation: dict | None = None, normalization: str = "image", clamp: bool = True
                     ) -> SampleGenerator:
    """The sample maker of a run: its spatial chain (`spatial_chain` with the strengths of its dimension,
    then the spec's, then `augmentation`, at the spec's fixed spacing if it has one), intensity handling
    and output and heatmap grids. Training draws it with a random generator; validation and prediction with
    None (the non-random chain). Arguments as `Dataset`'s.

    Raises:
        ValueError: A size, strength or normalisation is invalid (names the value received).
    """
    dim = len(image_size)
    if dim not in (2, 3):
        raise ValueError(f"image_size must have 2 or 3 entries, got {tuple(image_size)}")
    if dim != spec.dim:
        raise ValueError(f"data kind {spec.name!r} is {spec.dim}D, but the image size {tuple(image_size)} is "
                         f"{dim}D")
    heatmap_size = tuple(image_size) if heatmap_size is None else tuple(heatmap_size)
    factors = {i // h if h and i % h == 0 else 0 for i, h in zip(image_size, heatmap_size, strict=False)}
    if len(heatmap_size) != dim or len(factors) != 1 or 0 in factors:
        raise ValueError(f"heatmap_size must be image_size {tuple(image_size)} divided by one integer "
                         f"factor, got {heatmap_size}")
    strengths = {**(AUGMENTATION_2D if dim == 2 else AUGMENTATION_3D), **(spec.augmentation or {}),
                 **(augmentation or {})}
    unknown = set(strengths) - set(AUGMENTATION_2D)
    if unknown:
        raise ValueError(f"unknown augmentation strengths {sorted(unknown)}; "
                         f"known: {sorted(AUGMENTATION_2D)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    if spec.image_spacing is not None and normalization == "patch" and spec.intensity_range is None:
        raise ValueError("--intensity-normalization patch cannot go with a fixed --image-spacing: the tests "
                         "see whole images, whose percentiles differ from those of the training crops")
    intensity = IntensityAugmentation(shift=spec.intensity_shift, scale=spec.intensity_scale,
                                      clamp=(-1.0, 1.0) if clamp or spec.intensity_gamma else None,
                                      gamma=spec.intensity_gamma)
    output = Geometry.grid(tuple(image_size))
    return SampleGenerator(spatial_chain(**strengths, spacing=spec.image_spacing), intensity, output,
                           output.downsampled(factors.pop()),
                           None if spec.intensity_range else NORMALIZATIONS[normalization])


def check_pixel_spacing(spec: DataSpec, geometry: Geometry, path: Path, image_id: str | None = None) -> None:
    """Raises DataError naming the file when the kind fixes the pixel spacing (the cephalograms' 0.1 mm) and
    the image carries another: its landmarks in mm would be read at the wrong place."""
    problem = spacing_problem(geometry.spacing, spec.pixel_spacing, path)
    if problem:
        raise DataError(f"{spec.name}: {problem}", path=path, image_id=image_id)


def csv_units(spec: DataSpec, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """(N, dim) physical points of an image of `geometry` in the units of the spec's CSV (pixel indices or
    physical coordinates)."""
    if spec.landmark_units == "physical":
        return np.asarray(points, dtype=np.float64)
    return geometry.physical_to_index(points)


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
        references: Further ground truths, name -> (N, dim) in the coordinates of `landmarks` (e.g. the
            cephalograms' senior, junior and mean annotations beside the challenge's).
    """

    id: str
    image: np.ndarray
    landmarks: np.ndarray
    transform: SampleTransform
    heatmap_geometry: Geometry
    mm_scale: float
    references: dict[str, np.ndarray] = field(default_factory=dict)


class ImageSamples:
    """Picklable ``make_sample(index, rng)`` over image files, for the loader and for prediction; each process
    holds its own image cache. ``validation=True`` returns {"image", "transform", "geometry" (of the source
    image)} (landmarks may be NaN: unknown), else the training arrays and the id. With several annotations
    per image (`landmarks` of shape (M, A, N, dim)), a training sample draws one of the A first. With
    ``whole=True`` a validation sample covers the whole image (`SampleGenerator.covering`). An image that
    fails is reported by id and path."""

    def __init__(self, ids: list[str], paths: list[Path], landmarks: np.ndarray, generator: SampleGenerator,
                 spec: DataSpec, cache_bytes: int, validation: bool, whole: bool = False):
        self.ids, self.paths, self.generator, self.spec, self.whole = ids, paths, generator, spec, whole
        self.landmarks = landmarks if landmarks.ndim == 4 else landmarks[:, None]  # (M, A, N, dim)
        self.cache_bytes, self.validation = cache_bytes, validation
        self._cache: LRUCache[SourceImage] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # a worker starts with an empty cache of its own

    def _source(self, index: int) -> SourceImage:
        if self._cache is None:
            self._cache = LRUCache(self.cache_bytes, size_of=lambda source: source.nbytes)
        return self._cache.get(index, lambda: self._prepare(self.paths[index]))

    def _prepare(self, path: Path) -> SourceImage:
        spec = self.spec
        image = read_image(path, spec.ignore_spacing, self.generator.output.dim, spec.reset_frame)
        check_pixel_spacing(spec, Geometry.from_image(image), path)
        return prepare_source(image, self.generator.spatial, self.generator.output, spec.intensity_range,
                              spec.intensity_floor)

    def __call__(self, index: int, rng: np.random.Generator | None) -> dict:
        try:
            source = self._source(index)
            annotations = self.landmarks[index]
            chosen = 0 if rng is None or len(annotations) == 1 else int(rng.integers(len(annotations)))
            generator = self.generator.covering(source.geometry) if self.whole else self.generator
            arrays, transform = generator(source, annotations[chosen], rng)
        except Exception as error:  # name the image: the loader only knows the sample's index
            path, image_id = self.paths[index], self.ids[index]
            raise DataError(f"image {image_id!r} ({path}): {error}", path=path, image_id=image_id) from error
        if self.validation:
            return {"image": arrays["image"], "transform": transform, "geometry": source.geometry}
        return {**arrays, "id": self.ids[index]}


class Dataset:
    """A landmark dataset folder: its files and splits, its augmentation chain and its batch loader.

    Args:
        base_folder: Dataset folder (layout in the module docstring).
        spec: What the data is (`DataSpec`, or the name of one in `DATA_SPECS`).
        image_size: Network input size in pixels, order (x, y[, z]); its length is the dimension.
        heatmap_size: The network's output grid in pixels, order (x, y[, z]): image_size divided by one
            integer factor (None: image_size). Points are given in this grid's index coordinates.
        num_landmarks: Landmarks per image (hands: 37).
        fold: Cross-validation fold k of setup/cv/set<k> (int or str), or None / "none" for
            setup/{train,test}.txt.
        batch_size: Samples per training batch.
        augmentation: Strengths for `spatial_chain` over the spec's and those of `AUGMENTATION_2D` /
            `AUGMENTATION_3D` (output pixels, or mm with the spec's fixed spacing; radians, relative factors
            or None, nodes per axis, node layout).
        normalization: Robust intensity normalisation, a key of `NORMALIZATIONS`: "image" (1st/99th
            percentile of each source image) or "patch" (5th/95th of each resampled patch).
        clamp: Clip the intensities to [-1, 1] after the random shift and scale (the authors' hand setup
            does not).
        seed: Seed of the data order and every augmentation draw.
        workers: Loader processes (0: in the calling process).
        cache_bytes: Memory limit of each process's cache of decoded images, bytes.

    Raises:
        FileNotFoundError: A setup file or an image is missing (names the file or id).
        ValueError: An image is unreadable or has the wrong dimension, a CSV row has the wrong number of
            values, an id list is empty, a listed id has no row in one of the spec's CSVs or several image
            files, an image has another spacing than the spec requires, or a parameter is invalid (names the
            value received).
    """

    def __init__(
        self,
        base_folder: str | os.PathLike,
        *,
        spec: DataSpec | str,
        image_size: Sequence[int],
        num_landmarks: int,
        heatmap_size: Sequence[int] | None = None,
        fold: int | str | None = 1,
        batch_size: int = 8,
        augmentation: dict | None = None,
        normalization: str = "image",
        clamp: bool = True,
        seed: int = 0,
        workers: int = 0,
        cache_bytes: int = 1 << 30,
    ):
        # ---- parameters ----
        if isinstance(spec, str):
            if spec not in DATA_SPECS:
                raise ValueError(f"unknown data spec {spec!r}; known: {', '.join(DATA_SPECS)}")
            spec = DATA_SPECS[spec]
        self.generator = sample_generator(spec, image_size, heatmap_size, augmentation, normalization, clamp)
        dim = self.generator.output.dim
        self.base_folder = Path(base_folder)
        self.spec = spec
        self.dim = dim
        self.num_landmarks = num_landmarks
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self.cache_bytes = cache_bytes

        # ---- files: ids of the split, image paths, landmarks converted once to physical points ----
        setup = self.base_folder / "setup"
        split = setup if fold is None or str(fold) == "none" else setup / "cv" / f"set{int(fold)}"
        self.train_ids = read_id_list(split / "train.txt")
        self.test_ids = read_id_list(split / "test.txt")
        tables = {name: (setup / name, read_landmarks_csv(setup / name, num_landmarks, dim))
                  for name in spec.csv_files}
        files = self._image_files()
        self._geometry: dict[str, Geometry] = {}
        self._paths: dict[str, Path] = {}
        self._landmarks: dict[str, np.ndarray] = {}  # id -> (A, N, dim): the training annotations
        self._references: dict[str, dict[str, np.ndarray]] = {}  # id -> {ground truth: (N, dim)}
        for list_name, ids in (("train.txt", self.train_ids), ("test.txt", self.test_ids)):
            for image_id in ids:
                for csv_path, table in tables.values():
                    if image_id not in table:
                        raise DataError(f"id {image_id!r} of {split / list_name} has no row in {csv_path}",
                                        path=split / list_name, image_id=image_id)
                path = self._image_path(image_id, files)
                geometry = read_geometry(path, spec.ignore_spacing, spec.reset_frame)
                if geometry.dim != dim:
                    raise ValueError(f"image {path} is {geometry.dim}D (size {geometry.size}), but the input "
                                     f"size {tuple(image_size)} is {dim}D")
                check_pixel_spacing(spec, geometry, path, image_id)
                self._geometry[image_id] = geometry
                self._paths[image_id] = path
                points = {name: table[image_id] if spec.landmark_units == "physical"
                          else geometry.index_to_physical(table[image_id])
                          for name, (_, table) in tables.items()}
                self._landmarks[image_id] = np.stack([points[name] for name in spec.annotations])
                self._references[image_id] = {
                    name: np.mean([points[f] for f in csvs], axis=0)
                    for name, csvs in spec.reference_files.items()}

        self.output_geometry = self.generator.output
        self.heatmap_geometry = self.generator.heatmap_geometry
        self.whole_images = spec.image_spacing is not None  # tests on the whole image, by tiles
        if self.whole_images and self.heatmap_geometry.size != self.output_geometry.size:
            raise ValueError(f"data kind {spec.name!r} tests on whole images by tiles at its fixed spacing: "
                             f"that needs heatmaps as large as the input {tuple(image_size)}, got "
                             f"{tuple(heatmap_size)}")
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
            raise DataError(f"several image files for id {image_id!r}: {[p.name for p in found]}",
                            path=self.base_folder / "images", image_id=image_id)
        return found[0]

    def _samples(self, ids: list[str], validation: bool) -> ImageSamples:
        return ImageSamples(ids, [self._paths[i] for i in ids], np.stack([self._landmarks[i] for i in ids]),
                            self.generator, self.spec, self.cache_bytes, validation,
                            whole=validation and self.whole_images)

    # ---------------------------------------------------------------- public

    def training_batches(self, start_batch: int = 0, share: tuple[int, int] = (0, 1)) -> Iterator[dict]:
        """Endless shuffled, augmented training batches, deterministic in (seed, batch number).

        Args:
            start_batch: Number of batches already consumed (a resumed run continues identically).
            share: (k, K): make only the k-th of K equal parts of every batch (one process's rows in a
                data-parallel run over K processes).

        Returns:
            Iterator of {"image": (B, [z,] y, x, 1) float32, "points": (B, N, dim) float32 heatmap index
            coordinates (x, y[, z]), "mask": (B, N) float32 (1 = present and inside the heatmap grid),
            "id": list of B image ids}.
        """
        if self._train_loader is None:
            self._train_loader = BatchLoader(
                self._samples(self.train_ids, validation=False), len(self.train_ids), self.batch_size,
                seed=self.seed, num_workers=self.workers)
        return self._train_loader.train_batches(start_batch, share)

    def validation_samples(self) -> list[ValidationSample]:
        """Each test image once, through the non-random chain (same result every call), in test.txt order.
        Its landmarks are the spec's main ground truth; the others are in `references`. With a fixed output
        spacing (`whole_images`) each covers its whole image, larger than the network input: predict it by
        tiles (`utils.landmarks.tiles.predict_tiled`, as `utils.training.evaluation.evaluate` does)."""
        names = list(self.spec.reference_files)
        targets = np.stack([self._references[i][names[0]] for i in self.test_ids])
        scales = self.mm_scales(targets)
        samples = []
        with BatchLoader(self._samples(self.test_ids, validation=True), len(self.test_ids), 1,
                         seed=self.seed, num_workers=self.workers) as loader:
            for index, batch in enumerate(loader.ordered_batches()):
                image_id = self.test_ids[index]
                samples.append(ValidationSample(
                    image_id, batch["image"][0], targets[index], batch["transform"][0],
                    batch["transform"][0].output if self.whole_images else self.heatmap_geometry,
                    float(scales[index]),
                    {name: self._references[image_id][name] for name in names[1:]}))
        return samples

    def mean_shape(self) -> np.ndarray:
        """Mean landmark positions of the training images (over their annotations) in output pixels after the
        validation chain.

        Returns:
            (N, dim) float64 output pixel coordinates (x, y[, z]); NaN for a landmark missing everywhere.
        """
        points = [self.generator.spatial.sample(self._geometry[i], self.output_geometry, None)
                  .input_to_output(annotation) for i in self.train_ids for annotation in self._landmarks[i]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a landmark missing in every image: NaN
            return np.nanmean(np.stack(points), axis=0)

    def to_csv_units(self, image_id: str, points: np.ndarray) -> np.ndarray:
        """Converts (N, dim) physical points of image `image_id` into the units of all.csv."""
        if image_id not in self._geometry:
            raise ValueError(f"id {image_id!r} is not in this dataset's train or test list")
        return csv_units(self.spec, self._geometry[image_id], points)

    def mm_scales(self, landmarks: np.ndarray) -> np.ndarray:
        """(M,) millimetres per physical unit of M images with (M, N, dim) landmarks (see `DataSpec`)."""
        if self.spec.mm_reference is None:
            return np.ones(len(landmarks))
        first, second, distance = self.spec.mm_reference
        return reference_distance_scale(landmarks, (first, second), distance)

    def close(self) -> None:
        """Stops the training loader's worker processes."""
        if self._train_loader is not None:
            self._train_loader.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
