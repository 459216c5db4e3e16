"""The per-sample spatial transform: a chain of affine steps plus a random B-spline deformation.

Conventions (GUIDE section 3):

- Points are physical, shape (..., dim), coordinate order (x, y[, z]); arrays are NumPy order ([z,] y, x).
- An affine step (`utils.transforms.affine`) maps INPUT physical points to OUTPUT physical points.
  `SpatialAugmentation` chains the steps in list order: the matrix of the chain is ``A = M_k @ ... @ M_1``.
- The output (network) space has origin 0, identity direction and spacing 1, so output physical units are
  output pixels. A step placed after `FitToOutput` therefore works in output pixels.
- The deformation ``d`` (a `utils.transforms.bspline.BSplineDisplacement`) lives in output physical space.
  The full map used for resampling goes OUTPUT -> INPUT: ``p -> A^-1 (p + d(p))``; landmarks go through its
  inverse.
- Random steps draw from the injected `numpy.random.Generator`; with ``rng=None`` a random step is the
  identity and no deformation is drawn (the validation chain).

A standard 2D chain (hand radiographs to a 256 x 256 network input)::

    augmentation = SpatialAugmentation(
        [CenterToOrigin(), FitToOutput(), RandomTranslate(10.0), RandomRotate(0.2),
         RandomScale(0.1, 0.05), OriginToOutputCenter()],
        deformation=RandomBSplineDeformation(grid_nodes=5, max_displacement=20.0),
    )
    transform = augmentation.sample(Geometry.from_image(image), Geometry.grid((256, 256)), rng)
    array = transform.resample(image)                      # (256, 256) float32
    points = transform.input_to_output(landmarks)          # (N, 2) output pixels (x, y)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk

from utils.transforms.affine import AffineStep
from utils.transforms.bspline import BSplineDisplacement, RandomBSplineDeformation
from utils.transforms.geometry import Geometry, apply_affine

__all__ = ["SampleTransform", "SpatialAugmentation"]


@dataclass(frozen=True, eq=False)
class SampleTransform:
    """The spatial transform of one sample, kept to map predictions back to the input image.

    The OUTPUT -> INPUT map (used for resampling) is ``p -> A^-1 (p + d(p))`` with A = `matrix` and
    d = `deformation` (zero when None); landmarks go INPUT -> OUTPUT through its inverse.

    Attributes:
        input: Geometry of the input image.
        output: Geometry of the output (network) grid.
        matrix: (dim + 1, dim + 1) forward affine, input physical -> output physical (before deformation).
        deformation: Displacement field in output physical space, or None.
    """

    input: Geometry
    output: Geometry
    matrix: np.ndarray
    deformation: BSplineDisplacement | None = None

    def __post_init__(self) -> None:
        dim = self.output.dim
        if self.input.dim != dim or self.matrix.shape != (dim + 1, dim + 1):
            raise ValueError(f"SampleTransform: input {self.input.dim}-D, output {dim}-D and matrix "
                             f"{self.matrix.shape} do not agree")
        if self.deformation is not None and self.deformation.dim != dim:
            raise ValueError(f"SampleTransform: deformation is {self.deformation.dim}-D, output {dim}-D")

    @cached_property
    def inverse_matrix(self) -> np.ndarray:
        """(dim + 1, dim + 1) inverse affine, output physical -> input physical (after deformation)."""
        return np.linalg.inv(self.matrix)

    def output_to_input(self, points: np.ndarray) -> np.ndarray:
        """Map output physical points to input physical points: ``A^-1 (p + d(p))``.

        Args:
            points: (..., dim) output physical points (= output pixels), order (x, y[, z]); NaN rows stay NaN.

        Returns:
            (..., dim) float64 input physical points.
        """
        points = np.asarray(points, dtype=np.float64)
        if self.deformation is not None:
            points = points + self.deformation(points)
        return apply_affine(self.inverse_matrix, points)

    def input_to_output(self, points: np.ndarray, tolerance: float = 1e-9, max_iterations: int = 50
                        ) -> np.ndarray:
        """Map input physical points to output physical points (inverse of `output_to_input`).

        The affine part is exact; the deformation is inverted by Newton's method on ``p + d(p) = A x``,
        starting at ``A x``, until every residual is below `tolerance` output units.

        Args:
            points: (..., dim) input physical points, order (x, y[, z]); NaN rows stay NaN.
            tolerance: Residual (output physical units) at which a point counts as converged.
            max_iterations: Newton iterations at most.

        Returns:
            (..., dim) float64 output physical points. A point whose iteration does not converge (only
            possible for a folding deformation, far beyond the usual amplitudes) is returned as NaN: it is
            then treated as a missing landmark.
        """
        target = apply_affine(self.matrix, points)
        if self.deformation is None:
            return target
        return self.deformation.solve(target, tolerance, max_iterations)

    def to_sitk(self) -> sitk.Transform:
        """One SimpleITK transform OUTPUT physical -> INPUT physical, as `sitk.Resample` expects.

        An `AffineTransform` (A^-1), composed with the `BSplineTransform` of the deformation applied first
        (a `CompositeTransform` applies the transform added last first).
        """
        dim = self.output.dim
        affine = sitk.AffineTransform(dim)
        affine.SetMatrix(self.inverse_matrix[:dim, :dim].ravel().tolist())
        affine.SetTranslation(self.inverse_matrix[:dim, dim].tolist())
        if self.deformation is None:
            return affine
        composite = sitk.CompositeTransform(dim)
        composite.AddTransform(affine)
        composite.AddTransform(self.deformation.to_sitk())
        return composite

    def resample(self, image: sitk.Image, interpolator: int = sitk.sitkLinear, default_value: float = 0.0
                 ) -> np.ndarray:
        """Resample an input image onto the output grid with SimpleITK.

        Args:
            image: Input image in the input physical space (same dimension as the output).
            interpolator: SimpleITK interpolator, e.g. `sitk.sitkLinear`.
            default_value: Value outside the input image.

        Returns:
            float32 array of shape `output.shape` (NumPy order ([z,] y, x)).
        """
        if image.GetDimension() != self.output.dim:
            raise ValueError(f"SampleTransform.resample: image is {image.GetDimension()}-D, "
                             f"the output grid {self.output.dim}-D")
        resampled = sitk.Resample(image, list(self.output.size), self.to_sitk(), interpolator,
                                  self.output.origin, self.output.spacing, self.output.direction,
                                  float(default_value), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(resampled)


class SpatialAugmentation:
    """A chain of affine steps plus an optional random deformation; `sample` draws one `SampleTransform`.

    Args:
        steps: Affine steps applied to input points in list order (see `AffineStep`).
        deformation: Optional `RandomBSplineDeformation` applied in output space.
    """

    def __init__(self, steps: Sequence[AffineStep], deformation: RandomBSplineDeformation | None = None
                 ) -> None:
        self.steps = tuple(steps)
        for step in self.steps:
            if not callable(step):
                raise ValueError(f"SpatialAugmentation: every step must be callable, got {step!r}")
        if deformation is not None and not callable(deformation):
            raise ValueError(f"SpatialAugmentation: deformation must be callable or None, "
                             f"got {deformation!r}")
        self.deformation = deformation

    def sample(self, input: Geometry, output: Geometry, rng: np.random.Generator | None) -> SampleTransform:
        """Draw the transform of one sample (rng None: every random part at its identity).

        Args:
            input: Geometry of the input image.
            output: Geometry of the output grid.
            rng: Generator for the random steps, drawn in chain order; None for the validation chain.
        """
        if input.dim != output.dim:
            raise ValueError(f"SpatialAugmentation.sample: input is {input.dim}-D, output {output.dim}-D")
        matrix = np.eye(input.dim + 1)
        for step in self.steps:
            step_matrix = np.asarray(step(input, output, rng), dtype=np.float64)
            if step_matrix.shape != matrix.shape:
                raise ValueError(f"SpatialAugmentation: step {step!r} returned shape {step_matrix.shape}, "
                                 f"expected {matrix.shape}")
            matrix = step_matrix @ matrix
        deformation = self.deformation(output, rng) if self.deformation is not None else None
        return SampleTransform(input, output, matrix, deformation)
