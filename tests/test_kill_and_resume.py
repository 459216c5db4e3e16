"""A run killed with SIGKILL between checkpoints, then resumed, ends like an uninterrupted run; the same seed
gives the same losses; a loader failure mid-run keeps the work done so far."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import main
from utils.data.loader import SampleError
from utils.synthetic import generate_hand_dataset
from utils.training.loop import Schedule, train
from utils.training.output import RunFolder

ROOT = Path(main.__file__).parent
RUN = ["--data-kind", "hand_xray",
       "--image-size", "32", "32", "--num-filters", "4", "--batch-size", "2", "--max-iter", "60",
       "--test-iter", "60", "--snapshot-iter", "20", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def hands(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("hands") / "data"
    generate_hand_dataset(data, num_images=8, seed=5, pixels_per_mm=1.0)
    return data


def final_weights(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / "ckpt_00000060.npz") as saved:
        return {key: saved[key] for key in saved.files if key.startswith(("weight_", "optimizer_"))}


def test_sigkill_between_checkpoints_then_resume_ends_like_an_uninterrupted_run(hands, tmp_path):
    command = [sys.executable, "main.py", "--dataset", str(hands), *RUN]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([*command, "--output", str(tmp_path / "whole")], cwd=ROOT, env=environment, check=True,
                   capture_output=True, timeout=600)
    process = subprocess.Popen([*command, "--output", str(tmp_path / "killed")], cwd=ROOT, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "killed").glob("scn_cv1/*/checkpoints/ckpt_00000020.npz")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no handler runs: whatever the last checkpoint is, it must do
    process.wait(timeout=60)
    (run,) = (tmp_path / "killed" / "scn_cv1").iterdir()
    assert not (run / "checkpoints" / "ckpt_00000060.npz").exists()
    resumed = subprocess.run([sys.executable, "main.py", "--resume", str(run)], cwd=ROOT, env=environment,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    (whole,) = (tmp_path / "whole" / "scn_cv1").iterdir()
    expected, got = final_weights(whole), final_weights(run)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for name in ("prediction.csv", "stats.json"):
        assert (run / "iter_60" / name).is_file()
    history = json.loads((run / "history.json").read_text())
    assert history["train"][-1]["iteration"] == 60


def test_same_seed_same_losses(hands, tmp_path):
    losses = []
    for output in ("a", "b"):
        main.main(["--dataset", str(hands), "--output", str(tmp_path / output), *RUN[:-4], "--max-iter", "3",
                   "--test-iter", "3", "--snapshot-iter", "3", "--seed", "3"])
        (run,) = (tmp_path / output / "scn_cv1").iterdir()
        losses.append([row["loss"] for row in json.loads((run / "history.json").read_text())["train"]])
    assert losses[0] == losses[1]


def test_a_loader_failure_mid_run_keeps_the_last_finished_iteration(tmp_path):
    from tests.test_training import compiled, fake_batches

    def failing(start):
        for index, batch in enumerate(fake_batches()(start)):
            if start + index == 3:
                raise SampleError(7, 0, "Traceback ...\nDataError: image 'case7' (case7.mha): truncated")
            yield batch

    run = RunFolder.create(tmp_path, "tiny_cv1", {"seed": 0})
    printed = []
    with pytest.raises(SampleError, match="image 'case7'"):
        train(compiled(), failing, run, Schedule(max_iter=10, test_iter=10, snapshot_iter=10),
              log=printed.append)
    assert (run.checkpoints / "ckpt_00000003.npz").is_file()
    assert any("the loader failed after iteration 3" in line and "--resume" in line for line in printed)
