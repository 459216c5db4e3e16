"""Tests of the kinds of data (issue 11): the specs and --data-kind, several annotators and ground truths,
fixed intensities and output spacing, whole volumes by tiles, the identification rate, the shipped setups and
the phantoms."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import main
from dataset import CEPHALOMETRIC, CUSTOM_3D, DATA_SPECS, HEART_CT, Dataset, kind_spec, sample_generator
from main import Parameters, resolve
from utils.data.sample import prepare_source
from utils.data.validate import validate_dataset
from utils.io.errors import DataError
from utils.io.landmarks import read_landmarks_csv, write_landmarks_csv
from utils.landmarks.statistics import identification_counts, pool_identification_counts
from utils.synthetic import generate_cephalogram_dataset, render_cephalogram, render_heart, render_spine
from utils.transforms.affine import RandomCrop
from utils.transforms.geometry import Geometry

ROOT = Path(__file__).resolve().parents[1]
STILL = {"translation": 0.0, "rotation": 0.0, "scaling": None, "deformation": 0.0}  # no random geometry


@pytest.fixture(scope="module")
def ceph_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ceph") / "data"
    generate_cephalogram_dataset(folder, num_images=6, seed=3)
    return folder


def test_kind_sets_dimension_landmarks_and_checks_its_options():
    assert resolve("cpu", {"data_kind": "cephalometric"}).num_landmarks == 19
    heart = resolve("cpu", {"data_kind": "heart", "modality": "mr"})
    assert heart.dim == 3 and heart.num_landmarks == 1 and main.data_spec(heart).name == "heart_mr"
    assert main.data_spec(resolve("cpu", {})).name == "hand_xray"
    assert main.data_spec(resolve("cpu", {"dim": 3})).name == "custom3d"
    with pytest.raises(ValueError, match="--modality mr or ct goes with --data-kind heart"):
        resolve("cpu", {"data_kind": "heart"})
    with pytest.raises(ValueError, match="--modality mr or ct goes with --data-kind heart"):
        resolve("cpu", {"modality": "ct"})
    with pytest.raises(ValueError, match=r"--landmark-units, --mm-reference describe your own data: use them "
                                         r"with --data-kind custom2d"):
        resolve("cpu", {"landmark_units": "physical", "mm_reference": (1, 5, 50)})
    with pytest.raises(ValueError, match=r"--data-kind spine_ct is 3D data, but --dim is 2"):
        main.data_spec(resolve("cpu", {"data_kind": "spine_ct", "dim": 2}))
    custom = main.data_spec(resolve("cpu", {"data_kind": "custom2d", "mm_reference": (0, 2, 30.0),
                                            "ignore_spacing": True}))
    assert custom.mm_reference == (0, 2, 30.0) and custom.ignore_spacing and custom.landmark_units == "pixel"
    assert main.data_spec(resolve("cpu", {"data_kind": "custom2d"})).mm_reference is None  # never hand mm
    with pytest.raises(ValueError, match=r"heart needs mr or ct"):
        kind_spec("heart")
    with pytest.raises(SystemExit):
        main.main(["--data-kind", "custom2d", "--check"])  # no phantom for it: --dataset is needed


def test_shipped_setups_match_their_kinds():
    for folder, spec, rows in (("cephalometric_dataset", CEPHALOMETRIC, 400),
                               ("spine_ct_dataset", DATA_SPECS["spine_ct"], 302)):
        setup = ROOT / folder / "setup"
        for name in spec.csv_files:
            table = read_landmarks_csv(setup / name, spec.num_landmarks, spec.dim)
            assert len(table) == rows, name
        ids = set(table)
        for split in [setup, *sorted((setup / "cv").iterdir())]:
            listed = [line for line in (split / "train.txt").read_text().split() + (split / "test.txt")
                      .read_text().split()]
            assert set(listed) <= ids and listed, split
    spine = read_landmarks_csv(ROOT / "spine_ct_dataset/setup/all.csv", 26, 3)
    assert any(np.isnan(points).any() for points in spine.values())  # vertebrae outside the scan


def test_training_samples_draw_either_annotator(ceph_dir):
    dataset = Dataset(ceph_dir, spec="cephalometric", image_size=(64, 64), num_landmarks=19, fold=1,
                      batch_size=1, augmentation=STILL)
    seen = np.array([next(iter(dataset.training_batches(start)))["points"][0, 0] for start in range(40)])
    # one training image of fold 1 gives 1-3 distinct ids; each id's two annotators must both appear
    image_id = dataset.train_ids[0]
    annotations = dataset._landmarks[image_id]
    assert annotations.shape == (2, 19, 2) and not np.allclose(annotations[0], annotations[1])
    for annotation in annotations:
        transform = dataset.generator.spatial.sample(dataset._geometry[image_id], dataset.output_geometry,
                                                     None)
        points = dataset.heatmap_geometry.physical_to_index(transform.input_to_output(annotation))
        assert np.min(np.linalg.norm(seen - points[0], axis=1)) < 1e-3  # this annotator was drawn
    batches = []
    for workers in (0, 2):  # the annotator draws are the same whatever the number of workers
        with Dataset(ceph_dir, spec="cephalometric", image_size=(64, 64), num_landmarks=19, fold=1,
                     batch_size=2, seed=5, workers=workers) as seeded:
            batches.append(next(seeded.training_batches()))
    assert np.array_equal(batches[0]["points"], batches[1]["points"])


def test_validation_samples_carry_every_ground_truth(ceph_dir):
    dataset = Dataset(ceph_dir, spec="cephalometric", image_size=(64, 64), num_landmarks=19, fold=1)
    sample = dataset.validation_samples()[0]
    tables = {name: read_landmarks_csv(ceph_dir / "setup" / name, 19, 2) for name in CEPHALOMETRIC.csv_files}
    np.testing.assert_allclose(sample.landmarks, tables["all_challenge.csv"][sample.id])
    assert list(sample.references) == ["senior", "junior", "mean"] and sample.mm_scale == 1.0
    np.testing.assert_allclose(sample.references["mean"], (tables["all_senior.csv"][sample.id]
                                                          + tables["all_junior.csv"][sample.id]) / 2)


def test_cephalogram_of_another_spacing_is_an_error_naming_the_file(tmp_path, ceph_dir):
    image = sitk.ReadImage(str(ceph_dir / "images" / "ceph_0000.mha"))
    image.SetSpacing((1.0, 1.0))
    folder = tmp_path / "copy"
    (folder / "images").mkdir(parents=True)
    for path in (ceph_dir / "images").iterdir():
        (folder / "images" / path.name).symlink_to(path)
    (folder / "images" / "ceph_0000.mha").unlink()
    sitk.WriteImage(image, str(folder / "images" / "ceph_0000.mha"))
    (folder / "setup").symlink_to(ceph_dir / "setup")
    with pytest.raises(DataError, match=r"^cephalometric: image .*ceph_0000.mha has spacing \(1.0, 1.0\), "
                                        r"but this kind of data needs 0.1 mm"):
        Dataset(folder, spec="cephalometric", image_size=(64, 64), num_landmarks=19, fold="none")


def test_every_annotation_file_is_validated(tmp_path, ceph_dir):
    report = validate_dataset(ceph_dir, num_landmarks=19, annotations=CEPHALOMETRIC.csv_files,
                              landmark_units="physical", ignore_spacing=False, progress_seconds=None)
    assert report.ok, report.format()
    folder = tmp_path / "broken"
    (folder / "setup").mkdir(parents=True)
    (folder / "images").symlink_to(ceph_dir / "images")
    for path in (ceph_dir / "setup").iterdir():
        (folder / "setup" / path.name).symlink_to(path)
    (folder / "setup" / "all_junior.csv").unlink()
    junior = read_landmarks_csv(ceph_dir / "setup" / "all_junior.csv", 19, 2)
    missing = sorted(junior)[0]
    write_landmarks_csv(folder / "setup" / "all_junior.csv",
                        {key: value for key, value in junior.items() if key != missing})
    report = validate_dataset(folder, num_landmarks=19, annotations=CEPHALOMETRIC.csv_files,
                              landmark_units="physical", ignore_spacing=False, progress_seconds=None)
    assert not report.ok and any(f"{missing}" in e.message and "all_junior.csv" in e.message
                                 for e in report.errors)


def test_fixed_intensities_floor_and_padding():
    array = np.array([[-3000.0, -1024.0], [0.0, 2048.0]], np.float32)
    generator = sample_generator(HEART_CT, (4, 4, 4), augmentation=STILL)
    volume = sitk.GetImageFromArray(np.broadcast_to(array, (2, 2, 2)).copy())
    volume.SetSpacing((10.0, 10.0, 10.0))  # the kind's output spacing: no block averaging
    source = prepare_source(volume, generator.spatial, generator.output, HEART_CT.intensity_range,
                            HEART_CT.intensity_floor)
    assert source.warp_source.padded[0, 0, 0] == pytest.approx(-0.5)  # padding: air, -1024 HU / 2048
    values = np.unique(source.warp_source.array)
    np.testing.assert_allclose(values, [-0.5, 0.0, 1.0], atol=1e-6)  # -3000 raised to the floor


def test_fixed_output_spacing_makes_pixels_of_that_many_mm():
    for spec in (HEART_CT, DATA_SPECS["spine_ct"]):
        generator = sample_generator(spec, (8, 8, 8))
        image = sitk.Image(50, 40, 30, sitk.sitkInt16)
        image.SetSpacing((0.7, 0.9, 2.5))
        transform = generator.spatial.sample(Geometry.from_image(image), generator.output, None)
        ends = transform.output_to_input(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        np.testing.assert_allclose(np.linalg.norm(ends[1:] - ends[0], axis=1), spec.image_spacing)


def test_identification_counts_known_answer():
    target = np.array([[[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [np.nan, np.nan]]])
    predicted = np.array([[[1.0, 0.0], [14.0, 0.0], [17.0, 0.0], [30.0, 0.0]]])
    # landmark 1 at 4 mm is closer to its own (4) than to landmark 2 (6): identified; landmark 2 at 3 mm too
    counts = identification_counts(predicted, target, None, radius_mm=20.0)
    assert counts == {"radius_mm": 20.0, "identified": 3, "count": 3, "percent": 100.0}
    predicted[0, 1] = [16.0, 0.0]  # now closer to landmark 2 than to its own
    assert identification_counts(predicted, target, None, radius_mm=20.0)["identified"] == 2
    assert identification_counts(predicted, target, np.array([10.0]), radius_mm=20.0)["identified"] == 1
    pooled = pool_identification_counts([counts, identification_counts(predicted, target, None, 20.0)])
    assert pooled == {"radius_mm": 20.0, "identified": 5, "count": 6, "percent": pytest.approx(500.0 / 6)}


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_heart_phantom_is_deterministic_and_its_centre_is_blood(modality):
    image, points = render_heart(np.random.default_rng([1, 2]), modality)
    again, same = render_heart(np.random.default_rng([1, 2]), modality)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(again))
    np.testing.assert_array_equal(points, same)
    assert image.GetPixelID() == (sitk.sitkInt16 if modality == "ct" else sitk.sitkUInt16)
    index = np.round(image.TransformPhysicalPointToContinuousIndex(points[0].tolist())).astype(int)
    array = sitk.GetArrayFromImage(image).astype(float)
    at_centre = array[index[2], index[1], index[0]]
    assert at_centre > np.percentile(array, 90)  # the bright blood pool (contrast CT, MR blood)


def test_cephalogram_annotators_scatter_around_the_truth():
    image, tables = render_cephalogram(np.random.default_rng([0, 1]))
    assert image.GetSpacing() == (0.1, 0.1) and image.GetPixelID() == sitk.sitkUInt8
    truth = tables["all_challenge.csv"]
    for name, noise in (("all_senior.csv", 0.5), ("all_junior.csv", 1.0)):
        spread = np.std(tables[name] - truth)
        assert 0.5 * noise < spread < 1.6 * noise, name
    index = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in truth])
    assert np.all(index >= 0) and np.all(index < np.array(image.GetSize()))


def write_long_ct(folder, landmark_index=(20.0, 15.0, 52.0)):
    """A CT longer than a 16^3 grid of 2 mm: anisotropic spacing, rotated direction, one bright blob (sigma 3
    mm) at the landmark near one end, on a faint ramp."""
    size, spacing = (40, 30, 60), (0.8, 1.1, 2.5)
    angle = np.radians(20.0)
    direction = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)],
                          [0.0, np.sin(angle), np.cos(angle)]])
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin((5.0, -7.0, 11.0))
    image.SetDirection(direction.ravel().tolist())
    geometry = Geometry.from_image(image)
    landmark = geometry.index_to_physical(np.array([landmark_index]))
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = geometry.index_to_physical(np.stack([xx, yy, zz], axis=-1).reshape(-1, 3))
    distance = np.linalg.norm(points - landmark, axis=1).reshape(size[::-1])
    array = 1000.0 * np.exp(-distance**2 / (2 * 3.0**2)) + 10.0 * zz / size[2]
    volume = sitk.GetImageFromArray(array.astype(np.float32))
    volume.CopyInformation(image)
    (folder / "images").mkdir(parents=True)
    (folder / "setup").mkdir()
    sitk.WriteImage(volume, str(folder / "images" / "long.mha"))
    write_landmarks_csv(folder / "setup" / "all.csv", {"long": landmark})
    for name in ("train.txt", "test.txt"):
        (folder / "setup" / name).write_text("long\n")
    return landmark


def test_whole_volume_by_tiles_recovers_the_landmarks(tmp_path):
    import keras

    from utils.training.evaluation import evaluate

    landmark = write_long_ct(tmp_path / "data")
    spec = dataclasses.replace(CUSTOM_3D, image_spacing=2.0)
    dataset = Dataset(tmp_path / "data", spec=spec, image_size=(16, 16, 16), num_landmarks=1, fold=None,
                      clamp=False)
    sample = dataset.validation_samples()[0]
    assert sample.image.shape[0] > 16  # longer than one tile in z (and in y: the rotated direction)
    centre = dataset.generator.spatial.sample(dataset._geometry["long"], dataset.output_geometry, None)
    outside = centre.input_to_output(landmark)[0]
    assert outside[2] > 16  # the landmark lies outside the centre crop: only the whole volume has it
    inputs = keras.Input((16, 16, 16, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))  # heatmap = image: its blob
    result = evaluate(identity, [sample], tmp_path / "iter_0", dataset.to_csv_units, num_plots=1)
    assert result.errors[0, 0] < 0.5 * 2.0  # within half a voxel of 2 mm
    assert (tmp_path / "iter_0" / "landmarks_long.png").is_file()


def test_random_crop_shows_any_part_of_a_long_image():
    image = Geometry.grid((40, 30, 60), (0.8, 1.1, 2.5))  # 32 x 33 x 150 mm
    crop = RandomCrop(2.0)
    output = Geometry.grid((16, 16, 16))  # 32 mm per axis at 2 mm
    np.testing.assert_array_equal(crop(image, output, None), np.eye(4))
    shifts = np.array([crop(image, output, np.random.default_rng(k))[:3, 3] for k in range(200)])
    room = np.array([0.0, 0.5, 59.0])  # (extent - 32) / 2, 0 where the image fits
    assert np.all(np.abs(shifts) <= room + 1e-9)
    assert shifts[:, 2].min() < -0.8 * room[2] and shifts[:, 2].max() > 0.8 * room[2]
    with pytest.raises(ValueError, match="RandomCrop: spacing must be positive"):
        RandomCrop(0.0)


def test_spine_phantom_misses_vertebrae_and_is_longer_than_the_network_grid():
    image, points = render_spine(np.random.default_rng([2, 0]))
    again, same = render_spine(np.random.default_rng([2, 0]))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(again))
    np.testing.assert_array_equal(points, same)
    visible = ~np.isnan(points[:, 0])
    assert points.shape == (26, 3) and 10 <= visible.sum() <= 20 and not visible[24:].any()
    assert np.all(np.diff(np.flatnonzero(visible)) == 1)  # one contiguous stretch of the spine
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    assert extent[2] > 2.0 * 48  # longer than the CPU grid of 48 voxels of 2 mm
    array = sitk.GetArrayFromImage(image).astype(float)
    for point in points[visible]:
        x, y, z = np.round(image.TransformPhysicalPointToContinuousIndex(point.tolist())).astype(int)
        assert 150.0 < array[z, y, x] < 400.0  # inside a vertebral body (cancellous bone)


def test_predict_runs_whole_volumes_by_tiles(tmp_path):
    import predict

    landmark = write_long_ct(tmp_path / "data")
    spec = dataclasses.replace(CUSTOM_3D, image_spacing=2.0)
    params = Parameters(dim=3, data_kind="custom3d", image_spacing=2.0, image_size=(16, 16, 16),
                        num_landmarks=1, clamp=False, batch_size=2)
    model = predict.LoadedModel(params=params, heatmaps=lambda batch: batch,  # heatmap = image: its blob
                                info={"data_spec": dataclasses.asdict(spec), "heatmap_size": [16, 16, 16],
                                      "landmark_names": ["blob"]}, description="identity")
    result = predict.predict_files(model, {"long": tmp_path / "data" / "images" / "long.mha"},
                                   tmp_path / "out", overlays=True)
    found = np.array(result["images"]["long"]["landmarks"])
    assert np.linalg.norm(found - landmark) < 1.0  # half a voxel of 2 mm, outside the centre crop
    assert (tmp_path / "out" / "overlays" / "long.png").is_file()


def test_configs_of_earlier_versions_keep_their_meaning():
    from utils.training.output import config_from_dict

    for old, dim, kind, units in (("hand_xray", 2, "hand_xray", None), (None, 2, "hand_xray", None),
                                  (None, 3, "custom3d", None), ("physical", 3, "custom3d", None),
                                  ("physical", 2, "custom2d", "physical")):
        values = {"data_spec": old, "dim": dim, "image_size": [32] * dim, "dataset": "somewhere"}
        params = config_from_dict(Parameters, values)
        assert (params.data_kind, params.landmark_units) == (kind, units), old


def test_options_of_your_own_data_and_their_checks(capsys):
    mine = resolve("cpu", {"dataset": "mine", "landmark_units": "physical"})
    assert main.data_spec(mine).name == "custom2d" and main.data_spec(mine).landmark_units == "physical"
    assert main.data_kind(resolve("cpu", {"dataset": "data/synthetic_hand"})) == "hand_xray"
    assert main.data_kind(resolve("cpu", {"dataset": "mine"})) == "custom2d"
    with pytest.raises(ValueError, match=r"--mm-reference needs I J MM .*got 1.5 5 50"):
        resolve("cpu", {"dataset": "mine", "mm_reference": (1.5, 5, 50)})
    with pytest.raises(ValueError, match=r"--intensity-normalization patch cannot go with a fixed --image-"):
        sample_generator(DATA_SPECS["heart_mr"], (8, 8, 8), normalization="patch")
    with pytest.raises(SystemExit):
        main.main(["--data-kind", "heart", "--modality", "ct", "--network", "downsampling_net", "--check"])
    assert "--network downsampling_net: its heatmaps are smaller than its input" in capsys.readouterr().err


def test_check_reports_a_cephalogram_of_another_spacing(tmp_path, ceph_dir):
    folder = tmp_path / "copy"
    (folder / "images").mkdir(parents=True)
    for path in (ceph_dir / "images").iterdir():
        (folder / "images" / path.name).symlink_to(path)
    image = sitk.ReadImage(str(ceph_dir / "images" / "ceph_0001.mha"))
    image.SetSpacing((0.2, 0.2))
    (folder / "images" / "ceph_0001.mha").unlink()
    sitk.WriteImage(image, str(folder / "images" / "ceph_0001.mha"))
    (folder / "setup").symlink_to(ceph_dir / "setup")
    report = validate_dataset(folder, num_landmarks=19, annotations=CEPHALOMETRIC.csv_files,
                              landmark_units="physical", ignore_spacing=False, pixel_spacing=0.1,
                              progress_seconds=None)
    assert any("ceph_0001.mha has spacing (0.2, 0.2), but this kind of data needs 0.1 mm" in error.message
               for error in report.errors)


def test_spine_kind_reads_volumes_in_the_authors_frame(tmp_path):
    from utils.data.sample import read_geometry
    from utils.io.image import read_image

    image = sitk.Image(6, 5, 4, sitk.sitkInt16)
    image.SetOrigin((-30.0, 12.0, 400.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    for geometry in (Geometry.from_image(read_image(tmp_path / "ct.nii.gz", reset_frame=True)),
                     read_geometry(tmp_path / "ct.nii.gz", reset_frame=True)):
        assert geometry.origin == (0.0, 0.0, 0.0) and geometry.direction == tuple(np.eye(3).ravel())
        assert geometry.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert DATA_SPECS["spine_ct"].reset_frame and not DATA_SPECS["custom3d"].reset_frame
    _, points = render_spine(np.random.default_rng([3, 1]))  # the phantom writes that frame itself
    assert np.nanmin(points) > 0.0


def test_a_kind_in_the_reset_frame_trains_tests_and_predicts_in_it(tmp_path):
    import keras

    import predict
    from utils.io.markups import read_markups
    from utils.training.evaluation import evaluate

    in_file_frame = write_long_ct(tmp_path / "data")[0]  # origin (5, -7, 11), rotated direction
    image = sitk.ReadImage(str(tmp_path / "data" / "images" / "long.mha"))
    index = np.array(image.TransformPhysicalPointToContinuousIndex(in_file_frame.tolist()))
    in_reset_frame = index * np.array(image.GetSpacing())  # origin 0, identity direction
    write_landmarks_csv(tmp_path / "data" / "setup" / "all.csv", {"long": in_reset_frame[None]})
    spec = dataclasses.replace(CUSTOM_3D, image_spacing=2.0, reset_frame=True)
    dataset = Dataset(tmp_path / "data", spec=spec, image_size=(16, 16, 16), num_landmarks=1, fold=None,
                      clamp=False)
    inputs = keras.Input((16, 16, 16, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    result = evaluate(identity, dataset.validation_samples(), tmp_path / "iter_0", dataset.to_csv_units)
    assert result.errors[0, 0] < 1.0
    params = Parameters(dim=3, data_kind="custom3d", image_spacing=2.0, image_size=(16, 16, 16),
                        num_landmarks=1, clamp=False)
    model = predict.LoadedModel(params=params, heatmaps=lambda batch: batch, description="identity",
                                info={"data_spec": dataclasses.asdict(spec), "heatmap_size": [16, 16, 16],
                                      "landmark_names": ["blob"]})
    found = predict.predict_files(model, {"long": tmp_path / "data" / "images" / "long.mha"},
                                  tmp_path / "out", markups=True)["images"]["long"]["landmarks"][0]
    assert np.linalg.norm(np.array(found) - in_reset_frame) < 1.0  # landmarks.csv: the CSV's frame
    markups = read_markups(tmp_path / "out" / "markups" / "long.mrk.json")
    assert np.linalg.norm(markups.points[0] - in_file_frame) < 1.0  # Slicer: the file's own frame
