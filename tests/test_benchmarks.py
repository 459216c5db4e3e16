"""Smoke tests of the benchmark scripts: each runs its --quick configuration and writes valid JSON.

No timing is asserted (timings belong in benchmarks/README.md, not in tests).
"""

import json

import numpy as np
import pytest

from benchmarks import common, inference, training


def _read_json(path):
    """The JSON document at `path`; NaN or Infinity (not valid JSON) fail the test."""

    def refuse(constant):
        raise AssertionError(f"{path} contains {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_training_quick_writes_results(tmp_path):
    output = tmp_path / "training.json"
    training.main(["--quick", "--networks", "scn", "downsampling_net", "--precisions", "float32", "mixed",
                   "--output", str(output)])
    document = _read_json(output)
    assert document["benchmark"] == "training"
    assert document["machine"]["keras_backend"]
    assert document["machine"]["cpu_count"] >= 1
    rows = document["results"]["training"]
    assert [(row["network"], row["precision"].startswith("mixed")) for row in rows] == [
        ("scn", False), ("downsampling_net", False), ("scn", True), ("downsampling_net", True)
    ]
    for row in rows:
        assert row["ms_per_step"] > 0 and row["images_per_s"] > 0 and row["gflop_per_step"] > 0
        assert row["rss_peak_bytes"] >= row["rss_baseline_bytes"] > 0
        assert np.isfinite(row["final_loss"])
    scn = document["results"]["scn_spatial"]
    assert scn["max_abs_difference"] <= 1e-5 * scn["output_scale"]
    assert scn["masked"]["train_step_ms"] > 0 and scn["naive"]["train_step_ms"] > 0


def test_inference_quick_writes_results(tmp_path):
    output = tmp_path / "inference.json"
    inference.main(["--quick", "--networks", "downsampling_net", "--batch-sizes", "1", "2",
                    "--output", str(output)])
    rows = _read_json(output)["results"]["inference"]
    assert [(row["batch_size"], row["heatmap_size"]) for row in rows] == [(1, 8), (2, 8)]
    for row in rows:
        shares = sum(row[f"{stage}_percent"] for stage in inference.STAGES)
        assert shares == pytest.approx(100.0)
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["total_ms"] * 1e3)


def test_preset_sizes_match_main():
    main = pytest.importorskip("main", exc_type=ImportError, reason="main.py cannot be imported yet")
    for preset in training.PRESET_SIZES:
        for network in training.NETWORKS:
            params = main.resolve(preset, {}, network)
            size = training.preset_size(preset, network)
            assert params.image_size == size.input_size, (preset, network)
            assert (params.num_filters, params.batch_size) == (size.num_filters, size.batch_size)
    for network in ("scn", "unet", "scn_mia"):  # the 3D networks at main.py's CPU-sized 3D defaults
        params = main.resolve("cpu", {"dim": 3}, network)
        size = training.preset_size("cpu3d", network)
        assert (params.image_size, params.num_filters, params.batch_size, params.num_landmarks) == (
            size.input_size, size.num_filters, size.batch_size, size.num_landmarks)


def test_time_calls_separates_warmup_and_checks_counts():
    calls = []
    timing = common.time_calls(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(timing.warmup_seconds) == 2 and len(timing.seconds) == 3
    assert timing.best <= timing.median
    with pytest.raises(ValueError, match="repeats must be >= 1, received 0"):
        common.time_calls(lambda: None, warmup=0, repeats=0)


def test_peak_memory_sees_an_allocation():
    with common.PeakMemory(interval_s=0.001) as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
    assert memory.peak_bytes - memory.baseline_bytes >= 32 * 2**20


def test_format_table_aligns_and_prints_missing_values():
    table = common.format_table([{"a": "x", "b": 1.5}, {"a": "long", "b": None}],
                                [("a", "name", "s"), ("b", "value", ".2f")])
    assert table.splitlines() == ["name value", "---- -----", "   x  1.50", "long   n/a"]


def test_loader_quick_writes_results(tmp_path):
    from benchmarks import loader

    output = tmp_path / "loader.json"
    loader.main(["--quick", "--cache", str(tmp_path / "data"), "--output", str(output)])
    document = _read_json(output)
    assert document["benchmark"] == "loader"
    for name in ("hand", "volume", "spine"):
        result = document["results"][name]
        stages = {row["stage"]: row["ms"] for row in result["stages"]}
        assert stages["whole sample"] > 0 and stages["resample (SimpleITK, 1 thread, full image)"] > 0
        assert [row["workers"] for row in result["throughput"]] == [0, 1]
        assert all(row["samples_per_s"] > 0 for row in result["throughput"])
        assert result["throughput"][1]["worker_peak_rss_mb"] > 0


def test_warp_quick_compares_with_a_revision_and_refuses_an_unknown_one(tmp_path):
    import subprocess

    from benchmarks import warp

    if subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: no earlier revision to compare with")
    output = tmp_path / "warp.json"
    warp.main(["--quick", "--against", "HEAD", "--cache", str(tmp_path / "data"), "--output", str(output)])
    results = _read_json(output)["results"]
    unchanged = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", warp.KERNEL_PATH]).returncode == 0
    for name in ("hand", "volume"):
        assert results[name]["transforms"] == 6 and len(results[name]["speedup_per_round"]) == 2
        assert results[name]["earlier_ms"] > 0 and results[name]["now_ms"] > 0
        if unchanged:  # the same kernel twice
            assert results[name]["max_abs_difference"] == 0.0
    with pytest.raises(SystemExit, match="git cannot show utils/transforms/warp.py at 'no-such-revision'"):
        warp.main(["--quick", "--against", "no-such-revision", "--output", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_authors_without_their_code_says_why_and_measures_nothing(tmp_path, capsys):
    from benchmarks import authors

    assert authors.main([]) == {"skipped": authors.skip_reason(None, None)}
    printed = capsys.readouterr().out
    assert "not measured" in printed and "--authors-framework" in printed and "--authors-example" in printed
    assert authors.FRAMEWORK_MARKER in authors.skip_reason(tmp_path, tmp_path)
    with pytest.raises(authors.AuthorsFrameworkUnavailable, match="not measured"):
        authors.authors_hand_samples_per_s(tmp_path, tmp_path, tmp_path, num_samples=1)


# A stand-in for the authors' checkouts (their code is not in this repository): the same module names and
# the attributes the driver reads, so that the child process, its imports and the read-back are tested.
_FAKE_FRAMEWORK = {
    "datasets/reference_image_transformation_dataset.py": "",
    "utils/__init__.py": "ORIGIN = 'fake framework'\n",
    "transformations/intensity/np/normalize.py": (
        "def robust_min_max(image, consideration_factors):\n    return 0.05, 0.95\n"),
}
_FAKE_EXAMPLE = '''
from pathlib import Path

import numpy as np

import utils

assert getattr(utils, "ORIGIN", None) == "fake framework", utils.__file__


def normalize_robust(image, out_range=(-1, 1), consideration_factors=(0.1, 0.1)):
    return image


class ShiftScaleClamp:
    def __init__(self, random_shift=None, random_scale=None):
        self.random_shift, self.random_scale = random_shift, random_scale

    def __call__(self, image):
        return image


class Settings:
    def __init__(self, **settings):
        vars(self).update(settings)


class Drawn:
    def __init__(self, count):
        self.count = count

    def GetNumberOfTransforms(self):
        return self.count


class Composite(Settings):
    def get(self, **kwargs):
        return Drawn(len(self.transformations) if self.use_deprecated_behaviour else 0)


class ImageGenerator(Settings):
    def get(self, **kwargs):
        return self.post_processing_np(np.zeros([1, *self.output_size], np.float32))


class HeatmapGenerator(Settings):
    def preprocess_landmarks(self):
        return None

    def get(self, **kwargs):
        self.preprocess_landmarks()
        heatmaps = np.zeros([self.count, *self.output_size], np.float32)
        heatmaps[0, 0, 0] = 1
        return heatmaps


class Train:
    def __init__(self, ids, size, count, sigma):
        chain = [Settings(grid_nodes=[5, 5]), Settings(angle=0.2)]
        self.reference_transformation = Composite(use_deprecated_behaviour=False, transformations=chain)
        self.datasources = {"image_datasource": Settings(get=lambda ids: None)}
        self.data_generators = {
            "image": ImageGenerator(output_size=size, interpolator="linear", resample_default_pixel_value=0,
                                    data_format="channels_first", post_processing_np=augment),
            "landmarks": HeatmapGenerator(output_size=size, count=count, sigma=sigma, normalize_center=True,
                                          scale_factor=1.0, min_max_transformation_distance=None)}
        self.iterator = Settings(random=True, id_list=ids)

    def get_next(self):
        self.datasources["image_datasource"].get(self.iterator.id_list[0])
        return {"transformations": {"image": self.reference_transformation.get(image=None)},
                "generators": {key: generator.get() for key, generator in self.data_generators.items()}}


def augment(image):
    return ShiftScaleClamp(random_shift=0.15, random_scale=0.15)(normalize_robust(image))


class Dataset:
    def __init__(self, image_size, heatmap_size, num_landmarks, sigma, base_folder, cv, data_format,
                 save_debug_images):
        ids = (Path(base_folder) / "setup" / "cv_reduced" / f"set{cv}" / "train.txt").read_text().split()
        self.train = Train(ids, heatmap_size, num_landmarks, sigma)

    def dataset_train(self):
        return self.train
'''


def _fake_checkouts(tmp_path, example_name: str, example_code: str):
    """The stand-in framework, one stand-in example folder beside it, and an empty data folder."""
    framework, example, data = tmp_path / "framework", tmp_path / example_name, tmp_path / "data"
    for path, text in {**_FAKE_FRAMEWORK, f"../{example_name}/dataset.py": example_code}.items():
        (framework / path).parent.mkdir(parents=True, exist_ok=True)
        (framework / path).write_text(text)
    (data / "images").mkdir(parents=True)
    (data / "setup").mkdir()
    return framework, example, data


def test_authors_driver_runs_their_code_alone_in_a_child_process(tmp_path):
    from benchmarks import authors

    framework, example, data = _fake_checkouts(tmp_path, "hand_xray", _FAKE_EXAMPLE)
    for name in ("b", "a", "c"):
        (data / "images" / f"{name}.mha").write_bytes(b"")
    (data / "setup" / "all.csv").write_text("a,1,2\nb,3,4\n")  # c has no landmarks: left out

    result = authors.authors_hand_samples_per_s(framework, example, data, num_samples=3, repeats=2,
                                                stage_samples=2)
    assert result["images"] == ["a", "b"] and result["settings"]["iterator"]["ids"] == ["a", "b"]
    assert len(result["runs"]) == 2 and result["samples_per_s"] > 0 and result["ms_per_sample"] > 0
    assert result["composite_fix"] is not None  # the identity composite was noticed and fixed
    assert result["threads"]["sitk_global_default_threads"] == 1
    assert result["threads"]["environment"]["OMP_NUM_THREADS"] == "1"
    intensity = result["settings"]["intensity"]
    assert intensity["shift_scale_clamp"]["random_shift"] == 0.15
    assert intensity["normalize_robust_percentiles"] == [5.0, 95.0]
    assert result["targets"]["heatmaps_shape"] == [37, 256, 256]
    assert result["targets"]["landmarks_with_nonzero_heatmap_mean"] == 1
    assert {row["stage"] for row in result["stages"]} >= {"37 dense heatmaps", "draw transform (composite)"}
    assert "median of 2 passes of 3 samples" in authors.describe(result)


_FAKE_SPINE_EXAMPLE = '''
from pathlib import Path

import numpy as np


class Settings:
    def __init__(self, **settings):
        vars(self).update(settings)


class Train:
    def __init__(self, folder, size, count):
        self.ids = (folder / "setup" / "train_all.txt").read_text().split()
        rows = (folder / "setup" / "points_world_coordinates.csv").read_text().splitlines()
        self.points = {row.split(",")[0]: np.array(row.split(",")[1:], float).reshape(count, 3)
                       for row in rows}
        self.size, self.count = size, count
        chain = [Settings(grid_nodes=[5, 5, 5]), Settings(angle=0.2)]
        self.transformations = [Settings(transformations=chain)]
        self.data_generators = [Settings(output_size=size)]
        self.data_sources = [Settings(root_location=str(folder / "images"))]
        self.drawn = 0

    def get_next(self):
        image_id = self.ids[self.drawn % len(self.ids)]
        self.drawn += 1
        assert (Path(self.data_sources[0].root_location) / f"{image_id}.nii.gz").is_file()
        return {"generators": {"image": np.zeros([1, *self.size[::-1]], np.float32),
                               "landmarks": self.points[image_id]}}


class Dataset:
    def __init__(self, image_size, image_spacing, sigma, num_landmarks, base_folder, cv, data_format,
                 save_debug_images):
        assert cv == -1 and image_spacing == [2.0, 2.0, 2.0]
        self.train = Train(Path(base_folder), image_size, num_landmarks)

    def dataset_train(self):
        return self.train
'''


def test_authors_spine_driver_converts_the_volumes_and_runs_their_code(tmp_path):
    import SimpleITK as sitk

    from benchmarks import authors

    framework, example, data = _fake_checkouts(tmp_path, "spine", _FAKE_SPINE_EXAMPLE)
    for name in ("v1", "v0"):
        sitk.WriteImage(sitk.Image(4, 4, 8, sitk.sitkInt16), str(data / "images" / f"{name}.mha"))
    row = ",".join(["1.5"] * 3 + [""] * 75)  # vertebra 0 present, the others missing (empty fields)
    (data / "setup" / "all.csv").write_text(f"v0,{row}\nv1,{row}\nv2,{row}\n")  # v2: no image
    (data / "setup" / "train.txt").write_text("v1\nv0\nv2\n")
    result = authors.authors_spine_samples_per_s(framework, example, data, num_samples=2, repeats=2)
    assert result["images"] == ["v1", "v0"] and len(result["runs"]) == 2 and result["samples_per_s"] > 0
    assert result["warmup"] == 4  # two passes over the volumes: all in their cache
    assert result["targets"]["generators"] == {"image": [1, 192, 96, 96], "landmarks": [26, 3]}
    assert result["settings"]["spatial_chain"][0]["grid_nodes"] == [5, 5, 5]
    assert result["threads"]["environment"]["OMP_NUM_THREADS"] == "1"
