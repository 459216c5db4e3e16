"""Tests of utils.training: run folder, checkpoints and resume, the training loop, evaluation."""

import importlib.util
import json
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest

from utils.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from utils.training.loop import (
    NonFiniteLossError,
    Schedule,
    compile_training_model,
    make_optimizer,
    train,
    training_model,
)
from utils.training.output import RunFolder, config_from_dict, config_to_dict, read_config

SHAPE = (8, 8)
LANDMARKS = 3


def tiny_network(seed: int = 1) -> keras.Model:
    """A one-layer heatmap 'network': (B, 8, 8, 1) -> (B, 8, 8, 3)."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((*SHAPE, 1))
    heatmaps = keras.layers.Conv2D(LANDMARKS, 3, padding="same")(image)
    return keras.Model(image, heatmaps, name="tiny")


def fake_batches(seed: int = 0, batch_size: int = 2):
    """batches(start) -> endless iterator of batch dicts; batch k depends only on (seed, k)."""

    def batches(start: int):
        index = start
        while True:
            rng = np.random.default_rng([seed, index])
            image = rng.normal(size=(batch_size, *SHAPE, 1)).astype(np.float32)
            heatmaps = rng.uniform(size=(batch_size, *SHAPE, LANDMARKS)).astype(np.float32)
            mask = np.ones((batch_size, LANDMARKS), np.float32)
            mask[:, -1] = 0.0
            heatmaps[..., -1] = 0.0
            yield {"image": image, "heatmaps": heatmaps, "mask": mask}
            index += 1

    return batches


def new_run(tmp_path, name="tiny_cv1"):
    return RunFolder.create(tmp_path / "out", name, {"seed": 0})


# ---- output folder ----------------------------------------------------------------------------------------


@dataclass
class Inner:
    size: tuple[int, ...] = (4, 4)
    rate: float = 1.0


@dataclass
class Params:
    name: str = "a"
    inner: Inner = field(default_factory=Inner)
    resume: str | None = None


def test_run_folder_contract(tmp_path):
    script = tmp_path / "main.py"
    script.write_text("print('hi')\n")
    config = config_to_dict(Params(inner=Inner(size=(2, 3), rate=2)))
    run = RunFolder.create(tmp_path / "out", "scn_cv1", config, scripts=[script], stamp="2024-01-01_00-00-00")
    assert run.root == tmp_path / "out" / "scn_cv1" / "2024-01-01_00-00-00"
    assert run.checkpoints.is_dir() and run.logs.is_dir()
    assert (run.root / "main.py").read_text() == "print('hi')\n"
    assert read_config(run.config, Params) == Params(inner=Inner(size=(2, 3), rate=2.0))
    again = RunFolder.create(tmp_path / "out", "scn_cv1", config, stamp="2024-01-01_00-00-00")
    assert again.root.name == "2024-01-01_00-00-00_2"
    assert RunFolder.open(run.root) == run


def test_run_folder_missing_script_and_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        RunFolder.create(tmp_path, "x", {}, scripts=[tmp_path / "nope.py"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        RunFolder.open(tmp_path)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nmae'\]"):
        config_from_dict(Params, {"nmae": "b"})
    with pytest.raises(ValueError, match=r"config.inner: unknown parameter\(s\) \['szie'\]"):
        config_from_dict(Params, {"inner": {"szie": [1]}})


# ---- checkpoints and the loop -----------------------------------------------------------------------------


def compiled(optimizer="sgd", learning_rate=1e-3):
    return compile_training_model(tiny_network(), make_optimizer(optimizer, learning_rate))


def state_of(model):
    return model.get_weights(), [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]


def test_masked_training_model_zeroes_missing_channels():
    network = tiny_network()
    model = training_model(network)
    batch = next(fake_batches()(0))
    batch["mask"][1, 0] = 0.0
    out = keras.ops.convert_to_numpy(model([batch["image"], batch["mask"]]))
    full = keras.ops.convert_to_numpy(network(batch["image"]))
    np.testing.assert_allclose(out[..., :2][0], full[0, ..., :2], rtol=1e-6)
    assert np.all(out[..., 2] == 0) and np.all(out[1, ..., 0] == 0)


def test_loss_is_half_sum_of_squares_over_batch():
    model = compiled()
    batch = next(fake_batches()(0))
    prediction = keras.ops.convert_to_numpy(model([batch["image"], batch["mask"]]))
    expected = np.sum((prediction - batch["heatmaps"]) ** 2) / 2 / len(prediction)
    loss = model.test_on_batch([batch["image"], batch["mask"]], batch["heatmaps"])
    np.testing.assert_allclose(float(np.asarray(loss).ravel()[0]), expected, rtol=1e-5)


def test_checkpoint_round_trip_and_keep(tmp_path):
    model = compiled(optimizer="adam")
    batch = next(fake_batches()(0))
    model.train_on_batch([batch["image"], batch["mask"]], batch["heatmaps"])
    for iteration in (1, 2, 3):
        path = save_checkpoint(tmp_path, model, iteration, {"seed": 7}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000002.npz", "ckpt_00000003.npz"]
    assert latest_checkpoint(tmp_path) == path
    weights, slots = state_of(model)
    other = compiled(optimizer="adam")
    restored = load_checkpoint(tmp_path, other)
    assert restored.iteration == 3 and restored.state == {"seed": 7}
    for a, b in zip((weights, slots), state_of(other), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="optimizer variables"):
        load_checkpoint(path, compiled(optimizer="sgd"))


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    schedule = Schedule(max_iter=6, test_iter=100, snapshot_iter=3)
    whole = compiled()
    train(whole, fake_batches(), new_run(tmp_path, "whole"), schedule, state={"seed": 0}, log=lambda _: None)

    run = new_run(tmp_path, "split")
    first = compiled()
    train(
        first,
        fake_batches(),
        run,
        Schedule(max_iter=3, test_iter=100, snapshot_iter=3),
        state={"seed": 0},
        log=lambda _: None,
    )
    resumed = compiled()
    lines = []
    history = train(
        resumed,
        fake_batches(),
        RunFolder.open(run.root),
        schedule,
        state={"seed": 0},
        resume=True,
        log=lines.append,
    )
    assert any("resumed from" in line and "iteration 3" in line for line in lines)
    assert history.train[-1]["iteration"] == 6
    assert latest_checkpoint(run.checkpoints).name == "ckpt_00000006.npz"
    for a, b in zip(state_of(whole), state_of(resumed), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="loader state"):
        train(compiled(), fake_batches(), run, schedule, state={"seed": 1}, resume=True, log=lambda _: None)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = new_run(tmp_path)
    good = fake_batches()

    def batches(start):
        for index, batch in enumerate(good(start), start=start):
            if index >= 4:
                batch["image"][0, 0, 0, 0] = np.nan
            yield batch

    model = compiled()
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss became nan at iteration 5; the last good checkpoint "
        r".*ckpt_00000004\.npz is kept",
    ):
        train(model, batches, run, Schedule(max_iter=10, test_iter=100, snapshot_iter=2), log=lambda _: None)
    assert latest_checkpoint(run.checkpoints).name == "ckpt_00000004.npz"
    restored = load_checkpoint(run.checkpoints, compiled())
    assert restored.iteration == 4


def test_tests_progress_and_history(tmp_path):
    run = new_run(tmp_path)
    lines, tested = [], []

    def evaluate(iteration):
        tested.append(iteration)
        return {"pe_mean": 1.0 / (iteration + 1), "pe_median": None}

    schedule = Schedule(max_iter=5, test_iter=2, snapshot_iter=10, test_at_start=True, report_every_s=0.0)
    train(compiled(), fake_batches(), run, schedule, evaluate=evaluate, log=lines.append)
    assert tested == [0, 2, 4, 5]
    assert any(line.startswith("iter       5/5  loss ") and "it/s  ETA 0s" in line for line in lines)
    saved = json.loads(run.history.read_text())
    assert [row["iteration"] for row in saved["train"]] == [1, 2, 3, 4, 5]
    assert saved["test"][1] == {"iteration": 2, "pe_mean": 1 / 3}
    assert "2,test/pe_mean," in run.history.with_suffix(".csv").read_text()
    assert latest_checkpoint(run.checkpoints).name == "ckpt_00000005.npz"
    if importlib.util.find_spec("tensorflow") is not None:
        assert any(path.name.startswith("events.out.tfevents") for path in run.logs.iterdir())


def test_make_optimizer_rejects_bad_values():
    assert make_optimizer("sgd", 1e-7).nesterov
    with pytest.raises(ValueError, match="'rmsprop'"):
        make_optimizer("rmsprop", 1e-3)
    with pytest.raises(ValueError, match="learning_rate must be positive, got 0"):
        make_optimizer("adam", 0)
