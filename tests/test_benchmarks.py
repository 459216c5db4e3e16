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
            assert params.image_size == (size.input_size, size.input_size), (preset, network)
            assert (params.num_filters, params.batch_size) == (size.num_filters, size.batch_size)


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
    for name in ("hand", "volume"):
        result = document["results"][name]
        stages = {row["stage"]: row["ms"] for row in result["stages"]}
        assert stages["whole sample"] > 0 and stages["resample (SimpleITK, 1 thread, full image)"] > 0
        assert [row["workers"] for row in result["throughput"]] == [0, 1]
        assert all(row["samples_per_s"] > 0 for row in result["throughput"])
        assert result["throughput"][1]["worker_peak_rss_mb"] > 0
