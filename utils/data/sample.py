"""Sample assembly: one spatial draw moves an image and its landmarks alike, then the intensities.

Dataset-agnostic: a `SourceImage` (decoded once per image and cached by the caller) and its landmarks in
PHYSICAL coordinates go in; the network input, the landmarks in heatmap index coordinates with their mask,
and the sample's `SampleTransform` (kept to map predictions back) come out.

    source = prepare_source(read_image(path), spatial, output)      # once per image (cache it)
    sample = SampleGenerator(spatial, intensity, output, heatmap_geometry=output)
    arrays, transform = sample(source, landmarks, rng)               # rng None: validation chain
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from utils.io.image import read_image_header
from utils.transforms.geometry import Geometry
from utils.transforms.intensity import (
    IntensityAugmentation,
    normalize_robust,
    rescale_intensity,
    robust_range,
)
from utils.transforms.spatial import SampleTransform, SpatialAugmentation
from utils.transforms.warp import WarpSource, block_average, block_average_factor, warp

__all__ = ["SampleGenerator", "SourceImage", "heatmap_points", "prepare_source", "read_geometry"]


@dataclass(frozen=True, eq=False)
class SourceImage:
    """A decoded source image, ready to be resampled many times.

    Attributes:
        geometry: Geometry of the original image (the physical space its landmarks live in).
        warp_source: The image ready for `utils.transforms.warp.warp`: block-averaged when it is much finer
            than the output grid (anti-aliasing; see `utils.transforms.warp.block_average`), with its robust
            intensity range (1st/99th percentiles) mapped to [-1, 1] (`rescale_intensity`), and, outside
            it, the value that intensity 0 of the original image maps to.
    """

    geometry: Geometry
    warp_source: WarpSource

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (for the cache's limit)."""
        return self.warp_source.nbytes


def prepare_source(image: sitk.Image, spatial: SpatialAugmentation, output: Geometry,
                   intensity_range: tuple[float, float] | None = None, intensity_floor: float | None = None
                   ) -> SourceImage:
    """Decodes an image once: a block-averaged, intensity-normalised, padded copy for resampling.

    The block size is chosen from the validation (non-random) transform so that one output pixel spans
    about one averaged pixel (`utils.transforms.warp.block_average_factor`): a box pre-filter as wide as
    the output spacing. The intensities are normalised here, once, instead of in every sample: linear
    interpolation commutes with the linear map.

    Args:
        image: The source image (2D or 3D, any pixel type with one component).
        spatial: The spatial chain the samples will be drawn from.
        output: The output (network input) grid.
        intensity_range: Fixed (lo, hi) mapped to [-1, 1] (e.g. CT: -2048, 2048 HU); None: the image's
            robust range (1st/99th percentile).
        intensity_floor: Intensities below it are raised to it first, and the padding outside the image is
            it (CT: -1024 HU, air); None: no floor, padding 0.

    Returns:
        The prepared `SourceImage`.

    Raises:
        ValueError: The image has several values per pixel (RGB, vectors): a single-channel one is needed,
            as `utils.data.validate` checks for a dataset.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"the image has {image.GetNumberOfComponentsPerPixel()} values per pixel "
                         f"({image.GetPixelIDTypeAsString()}); a single-channel (grey-value) image is needed")
    geometry = Geometry.from_image(image)
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    if intensity_floor is not None:
        np.maximum(array, np.float32(intensity_floor), out=array)
    factor = min(block_average_factor(spatial.sample(geometry, output, None)), min(geometry.size))  # a block
    # never exceeds the image (a small image at a coarse fixed spacing)
    reduced, reduced_geometry = block_average(array, geometry, factor)
    lo, hi = robust_range(array) if intensity_range is None else intensity_range
    outside = 0.0 if intensity_floor is None else intensity_floor  # padding: 0, or the floor (CT: air)
    outside = float(rescale_intensity(np.array([outside]), lo, hi)[0])
    normalised = rescale_intensity(reduced, lo, hi)
    return SourceImage(geometry, WarpSource.from_array(normalised, reduced_geometry, outside))


def read_geometry(path: str | os.PathLike, ignore_spacing: bool = False, reset_frame: bool = False
                  ) -> Geometry:
    """Reads only the header of an image file and returns its geometry (as `utils.io.image.read_image`
    would give it: a 3D image with a last axis of size 1 becomes 2D; spacing 1 with `ignore_spacing`; origin
    0 and identity direction with `reset_frame`).

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: The header is unreadable or its geometry unusable (names the file).
    """
    header = read_image_header(path, ignore_spacing, reset_frame=reset_frame)
    return Geometry(header.size, header.spacing, header.origin, header.direction)


class SampleGenerator:
    """Makes one training or validation sample from a source image and its landmarks.

    Per sample: one `SpatialAugmentation` draw gives the transform; the image is resampled through it onto
    the output grid and the landmarks are mapped input -> output -> heatmap grid with it; the intensities
    (already rescaled to [-1, 1] in the source, and with `patch_percentiles` rescaled again per patch) are
    augmented. No target is drawn here: the model renders
    the Gaussians from the points (`utils.landmarks.targets`).

    Args:
        spatial: Spatial chain (OUTPUT -> INPUT map; landmarks go through its inverse).
        intensity: Intensity augmentation applied after the robust rescaling.
        output: Output (network input) grid; identity direction, spacing 1 (output pixels), origin 0 (a
            `covering` grid of a whole image extends it around the same centre).
        heatmap_geometry: The network's output grid in output physical space (``output.downsampled(f)`` for
            a network whose heatmaps are f times smaller than its input).
        patch_percentiles: (low, high) percentiles of each resampled patch, padding included, mapped to
            [-1, 1] before the augmentation (`normalize_robust`), or None to keep the source's whole-image
            normalisation. The source's linear map does not change the result: percentiles move with it.
    """

    def __init__(
        self,
        spatial: SpatialAugmentation,
        intensity: IntensityAugmentation,
        output: Geometry,
        heatmap_geometry: Geometry,
        patch_percentiles: tuple[float, float] | None = None,
    ):
        self.spatial = spatial
        self.patch_percentiles = patch_percentiles
        self.intensity = intensity
        self.output = output
        self.heatmap_geometry = heatmap_geometry

    def covering(self, geometry: Geometry) -> SampleGenerator:
        """This sample maker on a grid that covers the whole image of `geometry` under the validation
        transform: the output grid grown symmetrically about its centre (at least the original size), so
        that the transform, the output coordinates and the mean shape stay those of the original grid. The
        heatmaps are on the same grid (for tiled prediction of networks whose heatmaps are as large as
        their input)."""
        transform = self.spatial.sample(geometry, self.output, None)
        corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in geometry.size])))
        reach = np.abs(transform.input_to_output(geometry.index_to_physical(corners)) - self.output.center)
        size = np.maximum(np.ceil(2.0 * reach.max(axis=0)).astype(int), self.output.size)
        size += (size - np.asarray(self.output.size)) % 2  # the same centre: grow by an even count
        origin = self.output.center - (size - 1) / 2.0
        grid = Geometry.grid(tuple(int(n) for n in size), self.output.spacing, tuple(map(float, origin)))
        return SampleGenerator(self.spatial, self.intensity, grid, grid, self.patch_percentiles)

    def __call__(
        self, source: SourceImage, landmarks: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[dict[str, np.ndarray], SampleTransform]:
        """Makes one sample.

        Args:
            source: The prepared source image.
            landmarks: (N, dim) physical landmarks of the source, order (x, y[, z]); NaN rows = missing.
            rng: Generator for every random draw of this sample (spatial first, then intensity), or None
                for the validation chain (no randomness).

        Returns:
            arrays: {"image": (*output.shape, 1) float32, "points": (N, dim) float32 heatmap index
                coordinates (x, y[, z]), "mask": (N,) float32: 1 where the landmark is present and inside
                the heatmap grid, 0 where it is missing (its point is then 0) or mapped outside};
            transform: the sample's `SampleTransform` (output physical = output pixels <-> source physical).
        """
        transform = self.spatial.sample(source.geometry, self.output, rng)
        image = np.empty((*self.output.shape, 1), np.float32)
        warp(source.warp_source, transform, out=image[..., 0])
        if self.patch_percentiles is not None:
            normalize_robust(image[..., 0], self.patch_percentiles)
        self.intensity(image[..., 0], rng, out=image[..., 0])
        points, mask = heatmap_points(self.heatmap_geometry, transform.input_to_output(landmarks))
        return {"image": image, "points": points, "mask": mask}, transform


def heatmap_points(heatmap_geometry: Geometry, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output physical points -> (heatmap index points, mask), as the model's target renderer takes them.

    Args:
        heatmap_geometry: The heatmap grid in output physical space.
        points: (N, dim) output physical coordinates (x, y[, z]); NaN rows = missing.

    Returns:
        (N, dim) float32 heatmap index coordinates with NaN replaced by 0, and (N,) float32 mask: 1 for a
        present point within half a voxel of the grid, else 0.
    """
    index = heatmap_geometry.physical_to_index(points)
    size = np.asarray(heatmap_geometry.size)
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=1)  # NaN compares False
    return np.nan_to_num(index, nan=0.0).astype(np.float32), inside.astype(np.float32)
