"""Tests of main.py: command line, presets, configuration files, and end-to-end runs on synthetic data."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import main
from main import CPU_3D, PRESETS, Parameters, parser, resolve
from network import heatmap_factor
from utils.io.landmarks import read_landmarks_csv
from utils.synthetic import generate_hand_dataset
from utils.training.output import config_from_dict, config_to_dict


def test_unknown_or_mistyped_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--max-itr", "5"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --max-itr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["--network", "resnet"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--data-kind", "knee"])
    with pytest.raises(ValueError, match=r"--cv must be a fold number \(1, 2, ...\), all or none, got 'x'"):
        resolve("cpu", {"cv": "x"})


def test_help_lists_every_parameter_with_its_unit(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(Parameters):
        assert main._option(field.name) in text, field.name
    for option in ("--preset", "--resume", "--cv K", "--dim {2,3}", "--optimizer {sgd,adam}"):
        assert option in text
    assert "network input size in pixels" in text and "in heatmap pixels" in text
    for preset in ("paper", "mia2019"):  # every value of each preset, as options
        assert f"{preset}: --dataset hand_xray_dataset" in text
    assert "--no-random-scaling --bspline-grid mesh --intensity-normalization patch --no-clamp" in text
    assert "--clip-norm 10000.0" in text
    assert "(conv_only: --image-size 128 128, downsampling_net: --sigma 1.5)" in text


def test_command_line_values_override_the_preset():
    args = vars(parser().parse_args(["--preset", "paper", "--max-iter", "7", "--image-size", "64", "64"]))
    assert args == {"preset": "paper", "resume": None, "check": False, "max_iter": 7, "image_size": [64, 64]}
    params = resolve("paper", {"max_iter": 7, "image_size": [64, 64]}, "conv_only")
    assert params.max_iter == 7 and params.image_size == (64, 64) and params.networks == ("conv_only",)
    assert parser().parse_args(["--save-debug-images"]).save_debug_images is True


HAND_SETUP = {  # the authors' hand_xray data, chain and intensities (REFERENCE section 1), both presets
    "dim": 2,
    "num_landmarks": 37,
    "cv": "all",
    "image_size": (256, 256),
    "data_kind": "hand_xray",
    "random_scaling": False,
    "bspline_grid": "mesh",
    "intensity_normalization": "patch",
    "clamp": False,
    "test_at_start": True,
}


def test_presets_resolve_to_the_documented_values():
    assert resolve("cpu", {}) == Parameters()
    paper = resolve("paper", {})
    expected = HAND_SETUP | {
        "sigma": 3.0,
        "networks": ("scn", "unet", "downsampling_net", "conv_only"),
        "num_filters": 128,
        "weight_decay": 5e-5,
        "optimizer": "sgd",
        "learning_rate": 1e-7,
        "momentum": 0.99,
        "batch_size": 8,
        "max_iter": 20000,
        "test_iter": 5000,
        "snapshot_iter": 5000,
    }
    assert {key: getattr(paper, key) for key in expected} == expected
    assert set(PRESETS["paper"]) == set(expected) | {"dataset"}
    assert paper.dataset == "hand_xray_dataset" and not paper.learn_sigma and paper.clip_norm is None
    assert resolve("paper", {}, "conv_only").image_size == (128, 128)
    downsampling = resolve("paper", {}, "downsampling_net")
    assert downsampling.sigma == 1.5 and downsampling.image_size == (256, 256)
    assert resolve("paper", {"sigma": 2.0}, "downsampling_net").sigma == 2.0
    # heatmaps: 256x256 (sigma 3) except Downsampling-Net's 64x64 (sigma 1.5); ConvOnly-Net input 128x128
    assert [heatmap_factor(name) for name in paper.networks] == [1, 1, 4, 1]
    optimizer = main.optimizer(paper)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov
    assert optimizer.momentum == 0.99 and float(optimizer.learning_rate) == pytest.approx(1e-7)
    assert optimizer.global_clipnorm is None
    assert main.chain_options(paper) == {"augmentation": {"deformation_grid": "mesh", "scaling": None},
                                         "normalization": "patch", "clamp": False}
    assert main.chain_options(Parameters())["augmentation"] == {"deformation_grid": "image"}  # the default


def test_mia2019_preset_maps_the_authors_values_onto_ours():
    mia = resolve("mia2019", {})
    expected = HAND_SETUP | {
        "networks": ("scn_mia",),
        "num_filters": 128,
        "learn_sigma": True,
        "sigma": 3.0,
        "target_peak": pytest.approx(1.7684, abs=1e-4),  # scale 100 x a normalised Gaussian at sigma 3
        "sigma_regularization": 100.0,
        "weight_decay": 1e-3,
        "optimizer": "sgd",
        "momentum": 0.99,
        "learning_rate": 1e-6,
        "clip_norm": 10000.0,
        "batch_size": 8,
        "max_iter": 30000,
        "test_iter": 5000,
        "snapshot_iter": 5000,
    }
    assert {key: getattr(mia, key) for key in expected} == expected
    assert set(PRESETS["mia2019"]) == set(expected) | {"dataset"}
    # their target: scale * exp(-r^2 / 2 sigma^2) / (2 pi sigma^2); ours at the initial sigma: peak * exp(...)
    assert mia.target_peak == pytest.approx(100.0 / (2 * np.pi * mia.sigma**2))
    optimizer = main.optimizer(mia)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov and optimizer.momentum == 0.99
    assert optimizer.global_clipnorm == 10000.0 and float(optimizer.learning_rate) == pytest.approx(1e-6)


def test_faithful_options_on_the_command_line():
    args = vars(parser().parse_args(["--clip-norm", "5", "--lr-boundaries", "10", "20", "--lr-values", "1e-4",
                                     "1e-5", "--no-clamp", "--no-random-scaling", "--bspline-grid", "mesh",
                                     "--intensity-normalization", "patch", "--target-peak", "2"]))
    params = resolve("cpu", {k: v for k, v in args.items() if k not in ("preset", "resume", "check")})
    assert (params.clip_norm, params.lr_boundaries, params.lr_values) == (5.0, (10, 20), (1e-4, 1e-5))
    assert not params.clamp and not params.random_scaling and params.target_peak == 2.0
    assert (params.bspline_grid, params.intensity_normalization) == ("mesh", "patch")
    assert main.optimizer(params).global_clipnorm == 5.0
    with pytest.raises(SystemExit):
        parser().parse_args(["--bspline-grid", "fine"])


def test_cpu_preset_sizes_scn_mia_for_its_128_pixel_input():
    """D = 4 gives the 32 x 32 spatial grid of the authors' 512-pixel cephalograms; the command line wins."""
    params = resolve("cpu", {}, "scn_mia")
    assert (params.dropout, params.spatial_downsampling, params.heatmap_init) == (0.0, 4, 1e-3)
    assert params.learning_rate == 1e-3 and resolve("cpu", {}, "scn").learning_rate == 3e-4
    network = main.build_model(params).network
    assert tuple(network.get_layer("spatial_heatmaps_downsampled").output.shape[1:3]) == (32, 32)
    kernel = network.get_layer("local_heatmaps").kernel.numpy()
    assert 0.5e-3 < kernel.std() < 1.5e-3
    authors = resolve("cpu", {"spatial_downsampling": 16, "heatmap_init": 1e-4}, "scn_mia")
    network = main.build_model(authors).network
    assert tuple(network.get_layer("spatial_heatmaps_downsampled").output.shape[1:3]) == (8, 8)
    assert resolve("cpu", {}, "scn").spatial_downsampling is None  # other networks keep the defaults
    assert resolve("cpu", {"dim": 3}, "scn_mia").spatial_downsampling is None  # 3D: the authors' D = 8
    with pytest.raises(ValueError, match="--spatial-downsampling must be at least 1"):
        resolve("cpu", {"spatial_downsampling": 0}, "scn_mia")
    with pytest.raises(ValueError, match="--heatmap-init must be positive"):
        resolve("cpu", {"heatmap_init": -1.0}, "scn_mia")


def test_scn_mia_input_sizes_are_checked_with_its_own_factor(tmp_path, capsys):
    """--spatial-downsampling 12 needs sizes divisible by lcm(8, 12) = 24: refused before anything is
    written (the check used to build the network with its default factor)."""
    with pytest.raises(SystemExit):
        main.main(["--network", "scn_mia", "--spatial-downsampling", "12", "--output", str(tmp_path / "out"),
                   "--dataset", str(tmp_path)])
    assert "must be divisible by 24 for this network" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_schedule_is_an_error_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--lr-boundaries", "5", "--output", str(tmp_path / "out"), "--dataset", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "lr_values needs one learning rate per boundary" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dim_3_takes_the_cpu_sized_3d_defaults():
    volume = resolve("cpu", {"dim": 3})
    assert volume.dim == 3 and {key: getattr(volume, key) for key in CPU_3D} == CPU_3D
    assert volume.networks == Parameters().networks  # the same default network in 2D and 3D
    assert resolve("cpu", {"dim": 3, "max_iter": 5, "image_size": [16, 16, 16]}).image_size == (16, 16, 16)
    assert resolve("cpu", {"dim": 2}) == Parameters()  # 2D keeps the cpu preset


def test_parameter_checks_name_the_option():
    with pytest.raises(ValueError, match=r"--image-size needs 3 positive sizes \(--dim 3\), got \(128, 128"):
        Parameters(dim=3)
    with pytest.raises(ValueError, match="--max-iter must be at least 1, got 0"):
        Parameters(max_iter=0)
    with pytest.raises(ValueError, match="--anisotropic-sigma needs --learn-sigma"):
        Parameters(anisotropic_sigma=True)
    with pytest.raises(ValueError, match="--target-peak must be positive"):
        Parameters(target_peak=0.0)


def test_config_round_trip_and_unknown_key():
    schedule = {"lr_boundaries": [9], "lr_values": [1e-7]}
    for params in (resolve("paper", {}, "scn"), resolve("mia2019", schedule)):
        assert config_from_dict(Parameters, json.loads(json.dumps(config_to_dict(params)))) == params
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['learning_rat'\]"):
        config_from_dict(Parameters, {"learning_rat": 1.0})


def test_folds_and_run_names(tmp_path):
    for fold in (2, 1, 10, 4, 3):
        (tmp_path / "setup" / "cv" / f"set{fold}").mkdir(parents=True)
    assert main.folds(Parameters(dataset=str(tmp_path), cv="all")) == ["1", "2", "3", "4", "10"]
    assert main.folds(Parameters(dataset=str(tmp_path / "new"), cv="all")) == ["1", "2", "3"]
    assert main.folds(Parameters(cv="none")) == ["none"] and main.folds(Parameters(cv="4")) == ["4"]
    assert main.run_name("scn", "2") == "scn_cv2" and main.run_name("unet", "none") == "unet_full"


def test_dataset_folder_without_images_is_an_error_that_says_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no images in .*--generate-synthetic"):
        main.prepare_dataset(Parameters(dataset=str(tmp_path / "empty"), data_kind="hand_xray"))
    with pytest.raises(FileNotFoundError, match="--data-kind custom2d has no synthetic phantoms"):
        main.prepare_dataset(Parameters(dataset=str(tmp_path / "empty")))
    (tmp_path / "setup").mkdir()  # a setup waiting for its images, as the shipped authors' setups
    (tmp_path / "setup" / "all.csv").write_text("")
    (tmp_path / "README.md").write_text("where the images come from")
    with pytest.raises(FileNotFoundError, match=r"has no images in .*images: put the images there, named by "
                                                r"the ids of its setup/ lists \(see .*README.md\)"):
        main.prepare_dataset(Parameters(dataset=str(tmp_path), data_kind="cephalometric"))


def test_naming_the_default_synthetic_folder_generates_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folders are relative to the working directory
    params = Parameters(dataset="data/synthetic_volume", dim=3, image_size=(32, 32, 48), synthetic_images=3)
    assert main.prepare_dataset(params) == Path("data/synthetic_volume")
    assert len(list((tmp_path / "data" / "synthetic_volume" / "images").iterdir())) == 3


def test_a_mistyped_dataset_path_is_an_error_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--dataset", str(tmp_path / "hand_xray_datset"), "--data-kind", "hand_xray", "--output",
                   str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "hand_xray_datset does not exist" in error and "python -m utils.synthetic hand" in error
    assert not (tmp_path / "hand_xray_datset").exists() and not (tmp_path / "out").exists()


def test_dataset_problems_are_all_reported_before_any_output_folder(tmp_path, capsys):
    data = tmp_path / "data"
    generate_hand_dataset(data, num_images=8, seed=2, pixels_per_mm=1.0)
    test_ids = (data / "setup" / "cv" / "set1" / "test.txt").read_text().split()
    (data / "images" / f"{test_ids[0]}.mha").unlink()  # an image missing
    with open(data / "setup" / "all.csv", "a") as file:
        file.write("broken,1,2\n")  # a row with the wrong number of values
    options = ["--dataset", str(data), "--output", str(tmp_path / "out"), *TINY]
    for check in (["--check"], []):  # with and without --check: the report, a non-zero exit, nothing written
        with pytest.raises(SystemExit) as exit_info:
            main.main([*check, *options])
        assert str(exit_info.value.code).startswith("2 problem(s) in the dataset"), exit_info.value.code
        printed = capsys.readouterr().err
        assert test_ids[0] in printed and "broken" in printed and "2 errors" in printed
        assert not (tmp_path / "out").exists()
    csv = data / "setup" / "all.csv"
    csv.write_text(csv.read_text().replace("broken,1,2\n", ""))
    generate_hand_dataset(tmp_path / "again", num_images=8, seed=2, pixels_per_mm=1.0)
    (tmp_path / "again" / "images" / f"{test_ids[0]}.mha").rename(data / "images" / f"{test_ids[0]}.mha")
    assert main.main(["--check", *options]) == {}
    assert "0 errors" in capsys.readouterr().out and not (tmp_path / "out").exists()


TINY = [
    "--data-kind", "hand_xray", "--synthetic-images", "8", "--generate-synthetic",
    "--image-size", "32", "32", "--num-filters", "4",
    "--batch-size", "2", "--max-iter", "4", "--test-iter", "2", "--snapshot-iter", "2", "--test-at-start",
]  # fmt: skip


def test_end_to_end_run_writes_every_output(tmp_path, capsys):
    data, output = tmp_path / "data", tmp_path / "out"
    summary = main.main([*TINY, "--dataset", str(data), "--output", str(output), "--save-debug-images",
                         "--learn-sigma"])
    printed = capsys.readouterr().out
    assert "generating 8 synthetic hand images" in printed and "--dataset FOLDER" in printed
    assert "mean ± std" in printed and "pooled (all folds)" in printed
    assert "mean-shape baseline on the" in printed and "x the mean-shape baseline" in printed
    (run,) = (output / "scn_cv1").iterdir()
    for name in ("config.json", "main.py", "dataset.py", "network.py", "history.json", "history.csv",
                 "training_curves.png", "sigmas.png", "checkpoints/ckpt_00000004.npz"):  # fmt: skip
        assert (run / name).is_file(), name
    assert "sigma 3.0" in printed  # learned sigmas on the progress lines
    history = json.loads((run / "history.json").read_text())
    assert all(len([k for k in row if k.startswith("sigma_")]) == 37 for row in history["train"])
    assert "loss" in history["test"][-1]  # the validation loss
    assert any((run / "logs").iterdir())
    assert any((run / "debug").iterdir())
    for iteration in (0, 2, 4):
        for name in ("prediction.csv", "stats.json", "stats.txt", "error_distribution.png", "heatmaps.png"):
            assert (run / f"iter_{iteration}" / name).is_file(), (iteration, name)
        assert list((run / f"iter_{iteration}").glob("landmarks_*.png"))
    test_ids = (data / "setup" / "cv" / "set1" / "test.txt").read_text().split()
    predictions = read_landmarks_csv(run / "iter_4" / "prediction.csv", 37, 2)
    assert sorted(predictions) == sorted(test_ids)
    assert all(np.all(np.isfinite(points)) for points in predictions.values())
    saved = json.loads((output / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["scn"]["runs"]["scn_cv1"]["num_images"] == len(test_ids)
    assert saved["scn"]["mean_shape_baseline"]["pooled"]["num_images"] == len(test_ids)
    sigmas = json.loads((run / "iter_4" / "stats.json").read_text())["sigmas"]
    assert len(sigmas) == 37 and all(isinstance(value, float) and value > 0 for value in sigmas)
    assert saved["scn"]["runs"]["scn_cv1"]["sigmas"] == sigmas
    assert json.loads((run / "config.json").read_text())["networks"] == ["scn"]

    summary = main.main(["--resume", str(run), "--max-iter", "6"])
    assert "resumed from" in capsys.readouterr().out
    assert (run / "checkpoints" / "ckpt_00000006.npz").is_file() and (run / "iter_6" / "stats.json").is_file()


def test_spawned_loader_workers_import_main_without_keras():
    """A spawned worker runs main.py as "__mp_main__" (runpy, as multiprocessing does): no Keras there."""
    code = ("import runpy, sys; runpy.run_path('main.py', run_name='__mp_main__'); "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'network') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(main.__file__).parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_mia2019_preset_trains_and_tests_on_real_radiographs(hand_data_dir, tmp_path, capsys):
    """The authors' hand chain and intensities (shared with --preset paper), learned sigmas, their target
    peak and clip norm run end to end, CPU-sized (64 x 64, 4 filters, 2 iterations) on the real
    radiographs' full split, tested at 0 and at the end."""
    preset, network = "mia2019", "scn_mia"
    output = tmp_path / "out"
    summary = main.main(["--preset", preset, "--network", network, "--dataset", str(hand_data_dir),
                         "--cv", "none", "--image-size", "64", "64", "--num-filters", "4",
                         "--batch-size", "2", "--max-iter", "2", "--test-iter", "2", "--snapshot-iter", "2",
                         "--output", str(output)])
    (run,) = (output / f"{network}_full").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["bspline_grid"] == "mesh" and config["intensity_normalization"] == "patch"
    assert (run / "iter_0" / "stats.json").is_file() and (run / "iter_2" / "stats.json").is_file()
    assert summary[network]["runs"][f"{network}_full"]["num_images"] == 2
    assert config["learn_sigma"] and config["clip_norm"] == 10000.0 and config["test_at_start"]
    capsys.readouterr()
