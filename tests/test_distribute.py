"""Data-parallel training (`utils.training.distribute`, main.py --distribute) on two logical CPU devices.

TensorFlow's devices can be split only before it places anything, so each case runs in a fresh Python
process. The JAX case runs when JAX is installed (a separate environment here: KERAS_BACKEND=jax with
XLA_FLAGS giving two host devices) and is skipped otherwise.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from utils.training.distribute import Replicas

ROOT = Path(__file__).resolve().parents[1]

# One training step of a global batch of 8 on 2 replicas against one step on one device, same start.
ONE_STEP = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    from utils.training.distribute import Replicas, split_cpu
    if keras.backend.backend() == "tensorflow":
        split_cpu(2)
    import main

    params = main.resolve("cpu", {"image_size": (32, 32), "num_filters": 4, "num_landmarks": 3,
                                  "optimizer": "sgd", "learning_rate": 0.01, "learn_sigma": True,
                                  "precision": sys.argv[1]})
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 32, 32, 1)).astype("float32"),
             "points": rng.uniform(2, 30, size=(8, 3, 2)).astype("float32"),
             "mask": np.ones((8, 3), "float32")}
    batch["mask"][1, 2] = 0  # a missing landmark in the first replica's half

    def step(mode):
        if keras.backend.backend() == "jax":
            keras.distribution.set_distribution(None)
        replicas = Replicas(mode, 8)
        keras.utils.set_random_seed(0)
        with replicas.scope():
            model = main.build_model(params)
            model.compile(optimizer=main.optimizer(params))
        logs = replicas.train_on_batch(model, batch)
        forward = replicas.forward(model.network)(batch["image"][:3])
        return replicas.count, logs["loss"], model.get_weights(), np.asarray(forward, "float32")

    count_one, loss_one, weights_one, forward_one = step("none")
    count_two, loss_two, weights_two, forward_two = step("mirrored")
    difference = max(float(np.max(np.abs(a.astype("float64") - b))) for a, b in zip(weights_one, weights_two))
    print(f"RESULT {count_one} {count_two} {loss_one} {loss_two} {difference} {forward_two.shape[0]} "
          f"{float(np.max(np.abs(forward_one - forward_two)))}")
""")


def _run(code_or_args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


def _result(done: subprocess.CompletedProcess) -> list[float]:
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    return [float(value) for value in line.split()[1:]]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute: TensorFlow backend")
@pytest.mark.parametrize(("precision", "tolerance"),
                         [("float32", 1e-5), ("mixed_bfloat16", 2e-2), ("mixed_float16", 1e-3)])
def test_mirrored_step_on_two_devices_equals_one_step_on_one(precision, tolerance):
    """SGD (scale-sensitive), learned sigmas, weight decay, and float16's loss scaling: the weights after one
    step agree; so do the losses; the test-time forward pass gives one output per image, as on one device."""
    one, two, loss_one, loss_two, difference, rows, forward = _result(_run(["-c", ONE_STEP, precision]))
    assert (one, two) == (1, 2)
    assert loss_two == pytest.approx(loss_one, rel=tolerance)
    assert difference < tolerance
    assert rows == 3 and forward < tolerance


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_jax_data_parallel_step_on_two_devices_equals_one_step_on_one():
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one, two, loss_one, loss_two, difference, rows, forward = _result(_run(["-c", ONE_STEP, "float32"], env))
    assert (one, two) == (1, 2)
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    assert difference < 1e-5 and rows == 3 and forward < 1e-5


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_a_checkpoint_written_under_the_strategy_resumes_without_it(tmp_path):
    """2 iterations mirrored on two devices, then resumed on one device to 4: the same weights as 4
    iterations on one device."""
    from utils.synthetic import generate_hand_dataset

    data = tmp_path / "hands"
    generate_hand_dataset(data, num_images=12, seed=1, pixels_per_mm=1.5)
    common = ["main.py", "--dataset", str(data), "--data-kind", "hand_xray", "--image-size", "32", "32",
              "--num-filters", "4",
              "--batch-size", "4", "--test-iter", "2", "--snapshot-iter", "2"]
    plain = _run([*common, "--output", str(tmp_path / "plain"), "--max-iter", "4"])
    assert plain.returncode == 0, plain.stderr[-3000:]
    mirrored = _run([*common, "--output", str(tmp_path / "mirrored"), "--max-iter", "2", "--distribute",
                     "mirrored", "--cpu-devices", "2"])
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    (run,) = (tmp_path / "mirrored" / "scn_cv1").iterdir()
    resumed = _run(["main.py", "--resume", str(run), "--max-iter", "4", "--distribute", "none",
                    "--cpu-devices", "0"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (reference,) = (tmp_path / "plain" / "scn_cv1").iterdir()
    with np.load(reference / "checkpoints" / "ckpt_00000004.npz") as a, \
            np.load(run / "checkpoints" / "ckpt_00000004.npz") as b:
        weights = [key for key in a.files if key.startswith("weight_")]
        assert weights and all(np.allclose(a[key], b[key], atol=1e-4) for key in weights)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_two_worker_processes_train_as_one_process_does(tmp_path):
    """MultiWorkerMirroredStrategy over two local processes (TF_CONFIG), each loading its half of every
    batch: both end with the weights of a one-process run."""
    from utils.synthetic import generate_hand_dataset

    data = tmp_path / "hands"
    generate_hand_dataset(data, num_images=12, seed=1, pixels_per_mm=1.5)
    common = ["main.py", "--dataset", str(data), "--data-kind", "hand_xray", "--image-size", "32", "32",
              "--num-filters", "4",
              "--batch-size", "4", "--max-iter", "3", "--test-iter", "3", "--snapshot-iter", "3"]
    plain = _run([*common, "--output", str(tmp_path / "plain")])
    assert plain.returncode == 0, plain.stderr[-3000:]
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    def start(index: int) -> subprocess.Popen:
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        return subprocess.Popen(
            [sys.executable, *common, "--output", str(tmp_path / f"worker{index}"),
             "--distribute", "multi_worker"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(config)})

    processes = [start(0), start(1)]
    for process in processes:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-3000:]
    (reference,) = (tmp_path / "plain" / "scn_cv1").iterdir()
    with np.load(reference / "checkpoints" / "ckpt_00000003.npz") as expected:
        for index in (0, 1):
            (run,) = (tmp_path / f"worker{index}" / "scn_cv1").iterdir()
            with np.load(run / "checkpoints" / "ckpt_00000003.npz") as found:
                keys = [key for key in expected.files if key.startswith("weight_")]
                assert keys and all(np.allclose(expected[key], found[key], atol=1e-5) for key in keys)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="--cpu-devices: TensorFlow backend")
def test_a_batch_that_does_not_split_over_the_replicas_is_refused_before_anything_is_written(tmp_path):
    done = _run(["main.py", "--distribute", "mirrored", "--cpu-devices", "2", "--batch-size", "3",
                 "--dataset", str(tmp_path / "none"), "--output", str(tmp_path / "out")])
    assert done.returncode == 2
    assert "--batch-size 3 does not split evenly over the 2 replicas" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_pytorch_backend_is_refused_with_a_message(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="not supported with the torch backend"):
        Replicas("mirrored", 8)
    assert Replicas("none", 8).count == 1
