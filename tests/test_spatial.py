"""Tests of utils.transforms.affine, .bspline and .spatial: steps, deformation, transforms, resampling."""

import numpy as np
import pytest
import SimpleITK as sitk

from utils.transforms.affine import (
    CenterToOrigin,
    FitToOutput,
    Flip,
    OriginToOutputCenter,
    RandomFlip,
    RandomRotate,
    RandomScale,
    RandomTranslate,
    Rotate,
    Scale,
    Translate,
)
from utils.transforms.bspline import BSplineDisplacement, RandomBSplineDeformation
from utils.transforms.geometry import Geometry
from utils.transforms.spatial import SampleTransform, SpatialAugmentation


def _rotated_direction(dim: int, seed: int) -> tuple[float, ...]:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return tuple(q.ravel())


INPUT_2D = Geometry((400, 300), (0.2, 0.25), (-30.0, 12.0), _rotated_direction(2, 3))
OUTPUT_2D = Geometry.grid((256, 256))
INPUT_3D = Geometry((60, 50, 40), (1.0, 0.8, 1.5), (5.0, -3.0, 20.0), _rotated_direction(3, 4))
OUTPUT_3D = Geometry.grid((48, 40, 32))


def _random_chain(dim: int) -> SpatialAugmentation:
    """Every step type, with a B-spline deformation that keeps the map invertible."""
    return SpatialAugmentation(
        [CenterToOrigin(), FitToOutput(), RandomTranslate(10.0), RandomRotate(0.3), RandomScale(0.1, 0.05),
         RandomFlip(tuple(range(dim))), Translate(0.5), Rotate(0.1 if dim == 2 else (0.1, -0.2, 0.05)),
         Scale(1.1), Flip((1,)), OriginToOutputCenter()],
        deformation=RandomBSplineDeformation(5 if dim == 2 else 4, 20.0 if dim == 2 else 4.0),
    )


CASES = [(INPUT_2D, OUTPUT_2D), (INPUT_3D, OUTPUT_3D)]


def _standard_chain(rotation: float = 0.0) -> SpatialAugmentation:
    return SpatialAugmentation([CenterToOrigin(), FitToOutput(), Rotate(rotation), OriginToOutputCenter()])


def test_fit_to_output_keeps_the_aspect_ratio():
    source = Geometry.grid((2000, 1000))
    transform = _standard_chain().sample(source, OUTPUT_2D, rng=None)
    # scale 256 / 2000 = 0.128 along both axes, input centre (999.5, 499.5) -> output centre (127.5, 127.5)
    np.testing.assert_allclose(transform.matrix[:2, :2], 0.128 * np.eye(2), atol=1e-12)
    corners = np.array([[-0.5, -0.5], [1999.5, 999.5], [999.5, 499.5]])
    np.testing.assert_allclose(transform.input_to_output(corners),
                               [[-0.5, 63.5], [255.5, 191.5], [127.5, 127.5]], atol=1e-9)


def test_fit_to_output_without_aspect_fills_the_output():
    source = Geometry.grid((2000, 1000), spacing=(0.5, 0.5))
    chain = SpatialAugmentation([CenterToOrigin(), FitToOutput(keep_aspect=False), OriginToOutputCenter()])
    transform = chain.sample(source, OUTPUT_2D, rng=None)
    np.testing.assert_allclose(np.diag(transform.matrix)[:2], [0.256, 0.512], atol=1e-12)


def test_rotation_moves_a_known_point_to_a_known_place():
    source = Geometry.grid((200, 200))
    transform = _standard_chain(np.pi / 2).sample(source, Geometry.grid((200, 200)), rng=None)
    # 10 px right of the centre turns onto 10 px below it (+x towards +y)
    np.testing.assert_allclose(transform.input_to_output([[109.5, 99.5]]), [[99.5, 109.5]], atol=1e-9)


@pytest.mark.parametrize(
    ("angles", "point", "expected"),
    [((0.0, 0.0, np.pi / 2), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
     ((np.pi / 2, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
     ((0.0, np.pi / 2, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)),
     ((np.pi / 2, 0.0, np.pi / 2), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),  # x first: y -> z, z stays
     ((np.pi / 2, 0.0, np.pi / 2), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))])  # then z: x -> y
def test_3d_rotation_axes_and_order(angles, point, expected):
    matrix = Rotate(angles)(OUTPUT_3D, OUTPUT_3D, None)
    np.testing.assert_allclose(matrix[:3, :3] @ np.asarray(point), expected, atol=1e-12)


def test_fixed_steps_known_answers():
    geometry = Geometry.grid((10, 20))
    np.testing.assert_allclose(Translate((3.0, -2.0))(geometry, geometry, None)[:2, 2], [3.0, -2.0])
    np.testing.assert_allclose(np.diag(Scale((2.0, 0.5))(geometry, geometry, None)), [2.0, 0.5, 1.0])
    np.testing.assert_allclose(np.diag(Flip((0,))(geometry, geometry, None)), [-1.0, 1.0, 1.0])
    np.testing.assert_allclose(CenterToOrigin()(geometry, geometry, None)[:2, 2], [-4.5, -9.5])
    np.testing.assert_allclose(OriginToOutputCenter()(geometry, geometry, None)[:2, 2], [4.5, 9.5])


def test_random_steps_are_identity_without_rng_and_in_range_with_it():
    geometry = Geometry.grid((64, 64))
    steps = [RandomTranslate((4.0, 1.0)), RandomRotate(0.2), RandomScale(0.1, 0.05), RandomFlip((0, 1), 1.0)]
    for step in steps:
        np.testing.assert_array_equal(step(geometry, geometry, None), np.eye(3))
    rng = np.random.default_rng(0)
    offsets = np.array([steps[0](geometry, geometry, rng)[:2, 2] for _ in range(200)])
    assert np.all(np.abs(offsets) <= [4.0, 1.0]) and np.abs(offsets[:, 0]).max() > 3.0
    angles = [np.arctan2(steps[1](geometry, geometry, rng)[1, 0], 1.0) for _ in range(200)]
    assert np.all(np.abs(np.arctan2(np.sin(angles), np.cos(angles))) <= 0.2)
    factors = np.array([np.diag(steps[2](geometry, geometry, rng))[:2] for _ in range(200)])
    assert np.all((factors >= 0.9 * 0.95) & (factors <= 1.1 * 1.05))
    np.testing.assert_array_equal(np.diag(steps[3](geometry, geometry, rng)), [-1.0, -1.0, 1.0])


def test_validation_chain_is_deterministic_and_same_seed_same_sample():
    chain = _random_chain(2)
    first = chain.sample(INPUT_2D, OUTPUT_2D, None)
    assert first.deformation is None
    np.testing.assert_array_equal(first.matrix, chain.sample(INPUT_2D, OUTPUT_2D, None).matrix)
    a = chain.sample(INPUT_2D, OUTPUT_2D, np.random.default_rng(7))
    b = chain.sample(INPUT_2D, OUTPUT_2D, np.random.default_rng(7))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.deformation.coefficients, b.deformation.coefficients)


def test_composite_transform_applies_the_last_added_first():
    composite = sitk.CompositeTransform(2)
    composite.AddTransform(sitk.TranslationTransform(2, (1.0, 0.0)))
    composite.AddTransform(sitk.ScaleTransform(2, (2.0, 2.0)))
    # scale first, then translate: (1, 1) -> (2, 2) -> (3, 2); the other order would give (4, 2)
    np.testing.assert_allclose(composite.TransformPoint((1.0, 1.0)), (3.0, 2.0))


@pytest.mark.parametrize(("source", "target"), CASES, ids=["2d", "3d"])
def test_output_to_input_agrees_with_sitk(source, target):
    rng = np.random.default_rng(1)
    transform = _random_chain(source.dim).sample(source, target, rng)
    # inside the output grid, around it, and well beyond the deformation's support
    points = rng.uniform(-0.5 * target.extent, 1.5 * target.extent, size=(300, source.dim))
    sitk_transform = transform.to_sitk()
    expected = np.array([sitk_transform.TransformPoint(p.tolist()) for p in points])
    np.testing.assert_allclose(transform.output_to_input(points), expected, atol=1e-6)


def test_bspline_displacement_with_rotated_direction_agrees_with_sitk():
    rng = np.random.default_rng(2)
    field = BSplineDisplacement(origin=np.array([3.0, -2.0, 1.0]), spacing=np.array([4.0, 5.0, 6.0]),
                                direction=np.reshape(_rotated_direction(3, 9), (3, 3)),
                                coefficients=rng.uniform(-2.0, 2.0, size=(3, 5, 4, 3)))
    points = rng.uniform(-25.0, 40.0, size=(400, 3))
    sitk_transform = field.to_sitk()
    expected = np.array([sitk_transform.TransformPoint(p.tolist()) for p in points]) - points
    np.testing.assert_allclose(field(points), expected, atol=1e-9)
    assert np.any(np.abs(expected) > 0.5) and np.any(np.all(expected == 0.0, axis=1))


def test_bspline_jacobian_matches_finite_differences():
    rng = np.random.default_rng(3)
    field = BSplineDisplacement(origin=np.zeros(2), spacing=np.array([10.0, 8.0]),
                                direction=np.reshape(_rotated_direction(2, 5), (2, 2)),
                                coefficients=rng.uniform(-3.0, 3.0, size=(5, 6, 2)))
    points = rng.uniform(-10.0, 50.0, size=(50, 2))
    _, jacobian = field.value_and_jacobian(points)
    step = 1e-5
    for axis in range(2):
        delta = np.zeros(2)
        delta[axis] = step
        numeric = (field(points + delta) - field(points - delta)) / (2 * step)
        np.testing.assert_allclose(jacobian[:, :, axis], numeric, atol=1e-7)


@pytest.mark.parametrize(("source", "target"), CASES, ids=["2d", "3d"])
def test_random_chain_round_trips(source, target):
    rng = np.random.default_rng(4)
    for _ in range(5):
        transform = _random_chain(source.dim).sample(source, target, rng)
        output_points = rng.uniform(-0.2 * target.extent, 1.2 * target.extent, size=(100, source.dim))
        there = transform.output_to_input(output_points)
        np.testing.assert_allclose(transform.input_to_output(there), output_points, atol=1e-6)
        input_index = rng.uniform(0.0, np.array(source.size) - 1.0, size=(100, source.dim))
        input_points = source.index_to_physical(input_index)
        back = transform.output_to_input(transform.input_to_output(input_points))
        np.testing.assert_allclose(source.physical_to_index(back), input_index, atol=1e-6)


def test_nan_points_pass_through_both_directions():
    transform = _random_chain(2).sample(INPUT_2D, OUTPUT_2D, np.random.default_rng(5))
    points = np.array([[10.0, 20.0], [np.nan, np.nan], [100.0, 50.0]])
    for mapped in (transform.input_to_output(points), transform.output_to_input(points)):
        assert np.all(np.isnan(mapped[1])) and np.all(np.isfinite(mapped[[0, 2]]))


def test_deformation_stays_within_its_maximum():
    deformation = RandomBSplineDeformation((5, 4), (20.0, 5.0))(OUTPUT_2D, np.random.default_rng(8))
    assert deformation.nodes == (5, 4)
    field = deformation.on_grid(OUTPUT_2D)
    assert np.all(np.abs(field[..., 0]) <= 20.0) and np.all(np.abs(field[..., 1]) <= 5.0)
    assert np.abs(field[..., 0]).max() > 5.0
    np.testing.assert_allclose(deformation.spacing, [255.0 / 4, 255.0 / 3])


@pytest.mark.parametrize("dim", [2, 3])
def test_mesh_grid_is_the_authors_simpleitk_layout(dim):
    """grid="mesh": a SimpleITK BSplineTransform with domain origin 0, physical dimensions size * spacing and
    mesh nodes - 3 (the authors' output deformation), parameters = our coefficients, moves points alike."""
    output = Geometry.grid((256, 200) if dim == 2 else (40, 32, 48))
    nodes = (5, 6) if dim == 2 else (4, 5, 4)
    deformation = RandomBSplineDeformation(nodes, 20.0, grid="mesh")(output, np.random.default_rng(4))
    reference = sitk.BSplineTransform(dim, 3)
    reference.SetTransformDomainOrigin([0.0] * dim)
    reference.SetTransformDomainMeshSize([n - 3 for n in nodes])
    reference.SetTransformDomainPhysicalDimensions([float(n) for n in output.size])
    reference.SetParameters(np.moveaxis(deformation.coefficients, -1, 0).ravel().tolist())
    assert reference.GetCoefficientImages()[0].GetSize() == nodes  # one node per coefficient
    # on the output image (outside its domain SimpleITK's transform is the identity; there is nothing to warp)
    points = np.random.default_rng(5).uniform(0.0, np.asarray(output.size) - 1.0, size=(300, dim))
    expected = np.array([reference.TransformPoint(p.tolist()) for p in points]) - points
    np.testing.assert_allclose(deformation(points), expected, atol=1e-9)
    np.testing.assert_allclose(deformation.spacing, np.asarray(output.size) / (np.asarray(nodes) - 3))


def test_image_and_mesh_grids_place_their_nodes_as_documented():
    image = RandomBSplineDeformation(5, 20.0)(OUTPUT_2D, np.random.default_rng(8))
    mesh = RandomBSplineDeformation(5, 20.0, grid="mesh")(OUTPUT_2D, np.random.default_rng(8))
    np.testing.assert_array_equal(image.coefficients, mesh.coefficients)  # same draw, other layout
    np.testing.assert_allclose(image.origin, OUTPUT_2D.origin)
    np.testing.assert_allclose(mesh.spacing, np.asarray(OUTPUT_2D.size) / 2)  # 2 cells over the output
    np.testing.assert_allclose(mesh.origin, np.asarray(OUTPUT_2D.origin) - mesh.spacing)
    assert np.all(np.abs(mesh.on_grid(OUTPUT_2D)) <= 20.0)


def _blob_image(geometry: Geometry, centre_index: np.ndarray, sigma: float) -> sitk.Image:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in geometry.shape], indexing="ij")
    squared = sum((grid - c) ** 2 for grid, c in zip(grids, centre_index[::-1], strict=True))
    image = sitk.GetImageFromArray(np.exp(-squared / (2 * sigma**2)).astype(np.float32))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


@pytest.mark.parametrize(
    ("source", "target", "nodes", "displacement", "sigma"),
    [(INPUT_2D, OUTPUT_2D, 5, 20.0, 3.0),  # the hand setting: 5 x 5 nodes, 20 px on 256 x 256
     (Geometry((60, 50, 40), (1.0, 1.0, 1.0), (5.0, -3.0, 20.0), _rotated_direction(3, 4)),
      Geometry.grid((48, 48, 48)), 4, 2.0, 2.0)],
    ids=["2d", "3d"])
def test_resampled_blob_lands_where_input_to_output_says(source, target, nodes, displacement, sigma):
    rng = np.random.default_rng(9)
    chain = SpatialAugmentation(
        [CenterToOrigin(), FitToOutput(), RandomTranslate(3.0), RandomRotate(0.3), RandomScale(0.1, 0.05),
         OriginToOutputCenter()],
        deformation=RandomBSplineDeformation(nodes, displacement))
    size = np.array(source.size)
    centre_index = (size - 1) / 2 + rng.uniform(-0.15, 0.15, source.dim) * size
    transform = chain.sample(source, target, rng)
    array = transform.resample(_blob_image(source, centre_index, sigma))
    assert array.dtype == np.float32 and array.shape == target.shape
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in target.shape], indexing="ij")
    centroid = np.array([np.sum(grid * array) for grid in grids])[::-1] / array.sum()
    expected = target.physical_to_index(transform.input_to_output(source.index_to_physical(centre_index)))
    np.testing.assert_allclose(centroid, expected, atol=0.1)


def test_resample_known_answer_without_augmentation():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = sitk.GetImageFromArray(array)
    transform = SpatialAugmentation([Translate((-1.0, 0.0))]).sample(
        Geometry.from_image(image), Geometry.grid((2, 3)), rng=None)
    # output pixel (x, y) samples input (x + 1, y)
    np.testing.assert_allclose(transform.resample(image, default_value=-5.0), array[:, 1:3])


@pytest.mark.parametrize(
    ("factory", "message"),
    [(lambda: Translate((1.0, np.inf)), "Translate: offset"),
     (lambda: RandomTranslate(-1.0), r"RandomTranslate: max_offset must be >= 0.0, got -1.0"),
     (lambda: Rotate((0.1, 0.2, 0.3, 0.4)), "Rotate: angles"),
     (lambda: RandomRotate(-0.2), "RandomRotate: max_angle"),
     (lambda: Scale(0.0), r"Scale: factors must be positive, got 0.0"),
     (lambda: RandomScale(1.5), r"RandomScale: max_isotropic must be < 1.0, got 1.5"),
     (lambda: RandomScale((0.1, 0.2)), "RandomScale: max_isotropic must be a single number"),
     (lambda: Flip((0, 0)), r"Flip: axes .* got \(0, 0\)"),
     (lambda: RandomFlip((0,), 1.5), r"RandomFlip: probability must be in \[0, 1\], got 1.5"),
     (lambda: FitToOutput("yes"), "FitToOutput: keep_aspect must be a bool, got 'yes'"),
     (lambda: RandomBSplineDeformation(1, 20.0), "RandomBSplineDeformation: grid_nodes must be >= 2.0"),
     (lambda: RandomBSplineDeformation(4.5, 20.0), "RandomBSplineDeformation: grid_nodes must be integers"),
     (lambda: RandomBSplineDeformation(5, -1.0), "RandomBSplineDeformation: max_displacement"),
     (lambda: RandomBSplineDeformation(3, 20.0, grid="mesh"), "grid_nodes must be >= 4"),
     (lambda: RandomBSplineDeformation(5, 20.0, grid="coarse"), "grid must be one of")])
def test_invalid_arguments_are_rejected_in_init(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    ("step", "message"),
    [(Translate((1.0, 2.0, 3.0)), "Translate: offset has 3 entries but the geometry is 2-D"),
     (Rotate((0.1, 0.2, 0.3)), "Rotate: a 2-D rotation needs 1 angle"),
     (RandomRotate((0.1, 0.2, 0.3)), "RandomRotate: max_angle has 3 entries"),
     (Flip((2,)), r"Flip: axes \(2,\) include an axis beyond a 2-D geometry"),
     (RandomScale(0.1, (0.1, 0.1, 0.1)), "RandomScale: max_anisotropic has 3 entries")])
def test_wrong_dimension_is_rejected_when_called(step, message):
    with pytest.raises(ValueError, match=message):
        step(OUTPUT_2D, OUTPUT_2D, np.random.default_rng(0))


def test_mismatched_dimensions_are_rejected():
    with pytest.raises(ValueError, match="input is 3-D, output 2-D"):
        _random_chain(2).sample(INPUT_3D, OUTPUT_2D, None)
    transform = _random_chain(2).sample(INPUT_2D, OUTPUT_2D, np.random.default_rng(0))
    with pytest.raises(ValueError, match="image is 3-D"):
        transform.resample(sitk.Image([4, 4, 4], sitk.sitkFloat32))
    with pytest.raises(ValueError, match="direction"):
        transform.deformation.on_grid(INPUT_2D)
    with pytest.raises(ValueError, match="matrix"):
        SampleTransform(INPUT_2D, OUTPUT_2D, np.eye(4))
