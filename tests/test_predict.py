"""predict.py: a trained run applied to image files gives the run's own test predictions, from its checkpoint
and from each export; broken inputs are named and skipped; the export opens with only the project's layers.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import SimpleITK as sitk

import main
import predict
from utils.data.sample import read_geometry
from utils.io.id_list import read_id_list
from utils.io.landmarks import read_landmarks_csv
from utils.io.markups import read_markups
from utils.synthetic import generate_hand_dataset, generate_volume_dataset
from utils.training.export import INFO_FILE, NETWORK_FILE

NUM_LANDMARKS = 37
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-iteration run on 16 synthetic hands (fold 1: 6 test images): (dataset folder, run folder)."""
    folder = tmp_path_factory.mktemp("predict")
    data = folder / "hands"
    generate_hand_dataset(data, num_images=16, seed=1, pixels_per_mm=1.5)
    main.main(["--dataset", str(data), "--data-kind", "hand_xray", "--output", str(folder / "output"),
               "--image-size", "64", "64",
               "--num-filters", "4", "--batch-size", "4", "--max-iter", "4", "--test-iter", "4",
               "--snapshot-iter", "4", "--coverage", "0.5"])
    (run,) = (folder / "output" / "scn_cv1").iterdir()
    return data, run


def _landmarks(path: Path) -> dict[str, np.ndarray]:
    return read_landmarks_csv(path, NUM_LANDMARKS, 2)


def _max_difference(first: dict, second: dict) -> float:
    assert sorted(first) == sorted(second)
    return max(float(np.nanmax(np.abs(first[key] - second[key]))) for key in first)


def test_predict_reproduces_the_runs_test_predictions(trained, tmp_path):
    data, run = trained
    test_ids = read_id_list(data / "setup" / "cv" / "set1" / "test.txt")
    files = [str(data / "images" / f"{image_id}.mha") for image_id in test_ids]
    result = predict.main_cli([str(run), *files, "--output", str(tmp_path), "--overlays", "--heatmaps",
                               "--markups", "--candidates"])
    tested = _landmarks(run / "iter_4" / "prediction.csv")
    assert _max_difference(_landmarks(tmp_path / "landmarks.csv"), tested) < 1e-3
    assert result["failed"] == {} and result["units"] == "pixel" and result["iteration"] == 4
    first = result["images"][test_ids[0]]
    assert len(first["peak"]) == len(first["radius_mm"]) == len(first["radius"]) == NUM_LANDMARKS
    points = np.array(first["landmarks"])  # pixels; millimetres from the predicted landmarks 1 and 5
    assert first["mm_per_unit"] == pytest.approx(50.0 / np.linalg.norm(points[5] - points[1]))
    assert first["radius"] == pytest.approx(np.array(first["radius_mm"]) / first["mm_per_unit"])
    assert json.loads((tmp_path / "landmarks.json").read_text())["images"][test_ids[0]] == first
    assert (tmp_path / "overlays" / f"{test_ids[0]}.png").stat().st_size > 0
    assert np.load(tmp_path / "heatmaps" / f"{test_ids[0]}.npy").shape == (64, 64, NUM_LANDMARKS)
    # the Slicer point list: the pixel landmarks in the file's own geometry (hand_xray ignores its spacing)
    point_list = read_markups(tmp_path / "markups" / f"{test_ids[0]}.mrk.json")
    assert point_list.labels == tuple(result["landmark_names"])
    geometry = read_geometry(files[0])
    assert not np.allclose(geometry.spacing, 1.0)
    np.testing.assert_allclose(point_list.points[:, :2], geometry.index_to_physical(points), atol=1e-9)
    assert (point_list.points[:, 2] == 0).all()
    # every landmark's candidates start with its decoded maximum (same point, same peak value)
    for landmark, candidates in enumerate(first["candidates"]):
        peak = first["peak"][landmark]
        assert candidates[:1] == ([] if peak <= 0 else [pytest.approx([*points[landmark], peak], abs=1e-6)])
        assert all(c[-1] >= 0.5 * peak for c in candidates)


def test_every_export_gives_the_checkpoints_landmarks(trained, tmp_path):
    data, run = trained
    images = str(data / "images")
    predict.main_cli([str(run), images, "--output", str(tmp_path / "checkpoint")])
    reference = _landmarks(tmp_path / "checkpoint" / "landmarks.csv")
    assert len(reference) == 16
    renamed = tmp_path / "renamed"
    shutil.copytree(run / "export", renamed)
    (renamed / NETWORK_FILE).rename(renamed / "scn_fold1.keras")
    models = {"export": run / "export", "keras_file": run / "export" / NETWORK_FILE,
              "renamed_keras_file": renamed / "scn_fold1.keras"}
    if keras.backend.backend() == "tensorflow":
        predict.main_cli([str(run), "--export-savedmodel", str(tmp_path / "savedmodel")])
        assert "network_sha256" not in json.loads((tmp_path / "savedmodel" / INFO_FILE).read_text())
        models["savedmodel"] = tmp_path / "savedmodel"
    for name, model in models.items():
        predict.main_cli([str(model), images, "--output", str(tmp_path / name), "--batch-size", "3"])
        assert _max_difference(_landmarks(tmp_path / name / "landmarks.csv"), reference) < 1e-4, name


def test_an_export_whose_two_files_do_not_belong_together_is_refused(trained, tmp_path, capsys):
    """A crash between writing network.keras and predict.json leaves a new network beside the old JSON."""
    data, run = trained
    export = tmp_path / "export"
    shutil.copytree(run / "export", export)
    (export / NETWORK_FILE).write_bytes((export / NETWORK_FILE).read_bytes() + b"\0")
    with pytest.raises(SystemExit):
        predict.main_cli([str(export), str(data / "images"), "--output", str(tmp_path / "out")])
    assert "is not the network predict.json beside it was written for" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_holds_what_predict_needs_and_opens_with_only_the_projects_layers(trained):
    _, run = trained
    info = json.loads((run / "export" / INFO_FILE).read_text())
    assert info["network"] == "scn" and info["iteration"] == 4
    assert info["input_size"] == [64, 64] and info["heatmap_size"] == [64, 64]
    assert info["data_spec"]["name"] == "hand_xray" and info["data_spec"]["landmark_units"] == "pixel"
    assert len(info["sigmas"]) == len(info["landmark_names"]) == NUM_LANDMARKS
    calibration = info["calibration"]
    assert calibration["coverage"] == 0.5 and calibration["num_images"] == 6
    assert all(radius > 0 for radius in calibration["radii_mm"])  # rank ceil(7 * 0.5) = 4 of 6 errors
    path = str(run / "export" / NETWORK_FILE)
    code = f"import keras, network; print(keras.saving.load_model({path!r}).output.shape)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"(None, 64, 64, {NUM_LANDMARKS})" in done.stdout


def test_a_broken_file_is_named_the_others_are_predicted_and_the_exit_status_is_1(trained, tmp_path):
    data, run = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("hand_0000.mha", "hand_0001.mha"):
        shutil.copy(data / "images" / name, inputs / name)
    (inputs / "broken.mha").write_text("not an image")
    sitk.WriteImage(sitk.Image([40, 30], sitk.sitkVectorUInt8, 3), str(inputs / "colour.png"))  # RGB
    done = subprocess.run([sys.executable, "predict.py", str(run / "export"), str(inputs), "--output",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "broken.mha" in done.stderr
    assert "colour.png" in done.stderr and "a single-channel (grey-value) image is needed" in done.stderr
    assert sorted(_landmarks(tmp_path / "out" / "landmarks.csv")) == ["hand_0000", "hand_0001"]
    failed = json.loads((tmp_path / "out" / "landmarks.json").read_text())["failed"]
    assert sorted(failed) == ["broken", "colour"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{run}", "--iteration", "3", "{images}", "--output", "{out}"], "no checkpoint of iteration 3"),
        (["{tmp}", "{images}", "--output", "{out}"], "neither a run folder"),
        (["{run}", "{tmp}/nowhere.mha", "--output", "{out}"], "nowhere.mha does not exist"),
        (["{run}", "{images}", "{images}", "--output", "{out}"], "two inputs have the id"),
        (["{run}", "{images}"], "--output DIR is needed"),
        (["{run}/export", "--iteration", "4", "{images}", "--output", "{out}"], "not one"),
        (["{run}", "{images}", "--output", "{run}/config.json"], "is a file, not a folder"),
        (["{run}", "--export-savedmodel", "{run}"], "exists: choose a new folder"),
    ],
)
def test_command_line_mistakes_stop_before_anything_is_written(trained, tmp_path, capsys, arguments, message):
    data, run = trained
    values = {"run": run, "images": data / "images", "out": tmp_path / "out", "tmp": tmp_path}
    with pytest.raises(SystemExit) as stopped:
        predict.main_cli([argument.format(**values) for argument in arguments])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_reproduces_a_3d_runs_test_predictions_in_physical_units(tmp_path):
    data, output = tmp_path / "volumes", tmp_path / "output"
    generate_volume_dataset(data, num_images=6, seed=1, size=(32, 32, 48))
    main.main(["--dim", "3", "--dataset", str(data), "--output", str(output), "--num-filters", "4",
               "--max-iter", "2", "--test-iter", "2", "--snapshot-iter", "2"])
    (run,) = (output / "scn_cv1").iterdir()
    test_ids = read_id_list(data / "setup" / "cv" / "set1" / "test.txt")
    files = [str(data / "images" / f"{image_id}.mha") for image_id in test_ids]
    result = predict.main_cli([str(run / "export"), *files, "--output", str(tmp_path / "out"), "--overlays",
                               "--markups"])
    assert result["units"] == "physical"
    predicted = read_landmarks_csv(tmp_path / "out" / "landmarks.csv", 10, 3)
    assert _max_difference(predicted, read_landmarks_csv(run / "iter_2" / "prediction.csv", 10, 3)) < 1e-3
    assert (tmp_path / "out" / "overlays" / f"{test_ids[0]}.png").stat().st_size > 0
    point_list = read_markups(tmp_path / "out" / "markups" / f"{test_ids[0]}.mrk.json")  # physical: as is
    np.testing.assert_allclose(point_list.points, predicted[test_ids[0]], atol=1e-6)
