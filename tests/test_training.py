"""Tests of utils.training: run folder, checkpoints and resume, the training loop, evaluation."""

import importlib.util
import json
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest

from utils.io.landmarks import read_landmarks_csv
from utils.landmarks.statistics import landmark_statistics
from utils.landmarks.targets import GaussianTargets
from utils.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from utils.training.evaluation import Evaluation, evaluate, mean_shape_errors, summarize
from utils.training.loop import NonFiniteLossError, Schedule, train
from utils.training.model import HeatmapTrainer, make_optimizer
from utils.training.output import RunFolder, config_from_dict, config_to_dict, read_config
from utils.transforms.geometry import Geometry

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
            points = rng.uniform(0, SHAPE[0] - 1, size=(batch_size, LANDMARKS, 2)).astype(np.float32)
            mask = np.ones((batch_size, LANDMARKS), np.float32)
            mask[:, -1] = 0.0
            yield {"image": image, "points": points, "mask": mask, "id": ["a"] * batch_size}
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
    assert not list(run.root.glob("environment_resumed_*.json"))  # opening writes nothing (--check)
    RunFolder.open(run.root).record_resume()
    (resumed,) = run.root.glob("environment_resumed_*.json")  # a resume may run on other software
    assert json.loads(resumed.read_text()) == json.loads(run.environment.read_text())


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


def compiled(optimizer="sgd", learning_rate=1e-3, learn_sigma=False, sigma_regularization=0.0):
    model = HeatmapTrainer(tiny_network(), GaussianTargets(LANDMARKS, SHAPE, 1.5, learn_sigma=learn_sigma),
                           sigma_regularization)
    model.compile(optimizer=make_optimizer(optimizer, learning_rate))
    return model


def inputs(batch):
    return {key: batch[key] for key in ("image", "points", "mask")}


def state_of(model):
    return model.get_weights(), [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_loss_is_half_sum_of_squares_over_batch_of_present_landmarks_plus_regularisers(learn_sigma):
    model = compiled(learn_sigma=learn_sigma, sigma_regularization=0.5)
    batch = next(fake_batches()(0))
    batch["mask"][1, 0] = 0.0
    out = {k: keras.ops.convert_to_numpy(v) for k, v in model(inputs(batch)).items()}
    grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")[::-1], axis=-1)
    targets = np.exp(-np.sum((grid[None, :, :, None] - batch["points"][:, None, None]) ** 2, -1) / 4.5)
    np.testing.assert_allclose(out["targets"], targets * batch["mask"][:, None, None], atol=1e-6)
    squares = np.sum((out["heatmaps"] - out["targets"]) ** 2, axis=(1, 2)) * batch["mask"]
    expected = np.sum(squares) / 2 / 2  # batch of 2; the tiny network has no kernel regulariser
    if learn_sigma:  # 0.5 * sum over present landmarks of sigma^2 / 2 / B
        expected += 0.5 * np.sum(batch["mask"] * 1.5**2) / 2 / 2
    loss = model.test_on_batch(inputs(batch))
    np.testing.assert_allclose(float(np.asarray(loss).ravel()[0]), expected, rtol=1e-5)


def test_trainer_rejects_targets_on_another_grid():
    with pytest.raises(ValueError, match=r"targets' grid \(4, 4, 3\) differs from the network's output"):
        HeatmapTrainer(tiny_network(), GaussianTargets(LANDMARKS, (4, 4), 1.5))


def test_checkpoint_round_trip_and_keep(tmp_path):
    model = compiled(optimizer="adam")
    batch = next(fake_batches()(0))
    model.train_on_batch(inputs(batch))
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


def test_interrupt_saves_the_last_finished_iteration_and_resumes_exactly(tmp_path):
    good = fake_batches()

    def interrupted(start):
        for index, batch in enumerate(good(start), start=start):
            if index == 5:  # Ctrl-C while the 6th batch is being drawn
                raise KeyboardInterrupt
            yield batch

    run = new_run(tmp_path, "interrupted")
    schedule = Schedule(max_iter=8, test_iter=100, snapshot_iter=4)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(compiled(), interrupted, run, schedule, state={"seed": 0}, log=lines.append)
    assert latest_checkpoint(run.checkpoints).name == "ckpt_00000005.npz"
    assert any("interrupted after iteration 5" in line and f"--resume {run.root}" in line for line in lines)
    assert run.root.joinpath("history.json").is_file()
    resumed = compiled()
    train(resumed, good, RunFolder.open(run.root), schedule, state={"seed": 0}, resume=True,
          log=lambda _: None)
    whole = compiled()
    train(whole, good, new_run(tmp_path, "whole"), schedule, state={"seed": 0}, log=lambda _: None)
    for a, b in zip(state_of(whole), state_of(resumed), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_tests_progress_and_history(tmp_path):
    run = new_run(tmp_path)
    lines, tested = [], []

    def evaluate(iteration):
        tested.append(iteration)
        return {"pe_mean": 1.0 / (iteration + 1), "pe_median": None}

    schedule = Schedule(max_iter=5, test_iter=2, snapshot_iter=10, test_at_start=True, report_every_s=0.0)
    train(compiled(), fake_batches(), run, schedule, evaluate=evaluate, log=lines.append)
    assert tested == [0, 2, 4, 5]
    last = [line for line in lines if line.startswith("iter       5/5  loss ")]
    assert len(last) == 1 and "it/s  data wait " in last[0] and last[0].endswith("%  ETA 0s")
    saved = json.loads(run.history.read_text())
    assert [row["iteration"] for row in saved["train"]] == [1, 2, 3, 4, 5]
    assert saved["test"][1] == {"iteration": 2, "pe_mean": 1 / 3}
    assert "2,test/pe_mean," in run.history.with_suffix(".csv").read_text()
    assert latest_checkpoint(run.checkpoints).name == "ckpt_00000005.npz"
    assert (run.root / "training_curves.png").is_file()
    if importlib.util.find_spec("tensorflow") is not None:
        assert any(path.name.startswith("events.out.tfevents") for path in run.logs.iterdir())


def test_data_wait_is_the_share_of_time_spent_waiting_for_batches(tmp_path):
    """A loader that takes 0.1 s per batch dominates a tiny model's steps; a ready one does not."""

    def slow(start):
        for batch in fake_batches()(start):
            time.sleep(0.1)
            yield batch

    waits = {}
    for name, batches in (("slow", slow), ("ready", fake_batches())):
        model = compiled()
        warm = next(fake_batches()(0))  # compile outside the measured windows
        model.train_on_batch(inputs(warm))
        schedule = Schedule(max_iter=6, test_iter=100, snapshot_iter=100, report_every_s=0.25)
        history = train(model, batches, new_run(tmp_path, name), schedule, log=lambda _: None)
        waits[name] = [row["data_wait"] for row in history.train]
    assert min(waits["slow"]) > 0.6
    assert max(waits["ready"]) < 0.5


def test_make_optimizer_rejects_bad_values():
    assert make_optimizer("sgd", 1e-7).nesterov
    with pytest.raises(ValueError, match="'rmsprop'"):
        make_optimizer("rmsprop", 1e-3)
    with pytest.raises(ValueError, match="learning_rate must be positive, got 0"):
        make_optimizer("adam", 0)
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        make_optimizer("sgd", 1e-3, clip_norm=0.0)
    with pytest.raises(ValueError, match="one learning rate per boundary"):
        make_optimizer("sgd", 1e-3, lr_boundaries=(5,), lr_values=())
    with pytest.raises(ValueError, match="lr_boundaries must be increasing"):
        make_optimizer("sgd", 1e-3, lr_boundaries=(5, 5), lr_values=(1e-4, 1e-5))
    with pytest.raises(ValueError, match="lr_values must be positive"):
        make_optimizer("sgd", 1e-3, lr_boundaries=(5,), lr_values=(0.0,))


def test_gradient_clipping_bounds_the_update():
    """SGD (no momentum) at rate 1 on a loss with gradient 2 * 1000 * x: the step is the clip norm."""
    for clip_norm, step in ((None, 2000.0), (3.0, 3.0)):
        weight = keras.Variable([1.0])
        optimizer = make_optimizer("sgd", 1.0, momentum=0.0, clip_norm=clip_norm)
        optimizer.apply_gradients([(keras.ops.convert_to_tensor([2000.0]), weight)])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight), [1.0 - step], rtol=1e-6)


def test_learning_rate_schedule_by_iteration_survives_a_checkpoint(tmp_path):
    """Iterations 1-2 at 1e-3, 3-4 at 1e-4, then 1e-5; a resumed model continues on the schedule."""
    def build():
        model = HeatmapTrainer(tiny_network(), GaussianTargets(LANDMARKS, SHAPE, 1.5))
        model.compile(optimizer=make_optimizer("sgd", 1e-3, lr_boundaries=(2, 4), lr_values=(1e-4, 1e-5)))
        return model

    model, batches = build(), fake_batches()(0)
    rates = []
    for iteration in range(1, 6):
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))  # this iteration's
        model.train_on_batch(inputs(next(batches)))
        if iteration == 3:
            save_checkpoint(tmp_path, model, iteration, {})
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-6)
    resumed = build()
    load_checkpoint(tmp_path, resumed)
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 3  # the saved update count
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(resumed.optimizer.learning_rate)), 1e-4,
                               rtol=1e-6)


# ---- evaluation -------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tests")
class BlobAndMirror(keras.layers.Layer):
    """'Network' with two heatmaps: the image itself and the image mirrored along x."""

    def call(self, image):
        return keras.ops.concatenate([image, keras.ops.flip(image, axis=2)], axis=-1)


class ShiftScale:
    """Fake SampleTransform: input = 2 * output + (10, 20), on a 16 x 16 output grid."""

    output = Geometry.grid((16, 16))

    def output_to_input(self, points):
        return np.asarray(points) * 2.0 + np.array([10.0, 20.0])

    def input_to_output(self, points):
        return (np.asarray(points) - np.array([10.0, 20.0])) / 2.0


@dataclass
class FakeSample:
    id: str
    image: np.ndarray
    landmarks: np.ndarray
    transform: ShiftScale = field(default_factory=ShiftScale)
    heatmap_geometry: Geometry = field(default_factory=lambda: Geometry.grid((16, 16)))
    mm_scale: float = 0.5
    references: dict = field(default_factory=dict)


def blob(x, y, sigma=1.5):
    yy, xx = np.mgrid[:16, :16]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)[..., None]


def test_evaluate_maps_back_scores_and_writes(tmp_path):
    image = keras.Input((16, 16, 1))
    network = keras.Model(image, BlobAndMirror()(image))
    samples = [
        FakeSample("a", blob(5, 7), np.array([[20.0, 34.0], [33.0, 34.0]])),  # landmark 1 off by 3 units in x
        FakeSample("b", blob(4, 4), np.array([[18.0, 28.0], [np.nan, np.nan]])),
    ]
    result = evaluate(
        network,
        samples,
        tmp_path / "iter_10",
        lambda _, p: p - np.array([10.0, 20.0]),
        batch_size=1,
        num_plots=1,
    )
    np.testing.assert_allclose(result.predicted[0], [[20.0, 34.0], [30.0, 34.0]], atol=1e-6)
    np.testing.assert_allclose(result.errors, [[0.0, 1.5], [0.0, np.nan]], atol=1e-6)
    assert result.stats["num_images"] == 2 and result.stats["pe_mean"] == pytest.approx(0.5, abs=1e-6)
    folder = tmp_path / "iter_10"
    for name in (
        "prediction.csv",
        "stats.json",
        "stats.txt",
        "error_distribution.png",
        "heatmaps.png",
        "landmarks_a.png",
    ):
        assert (folder / name).is_file(), name
    assert not (folder / "landmarks_b.png").exists()
    csv = read_landmarks_csv(folder / "prediction.csv", 2, 2)
    np.testing.assert_allclose(csv["b"], [[8.0, 8.0], [22.0, 8.0]], atol=1e-6)
    assert json.loads((folder / "stats.json").read_text())["outliers"] == {"2": 0, "4": 0, "10": 0}
    assert result.scalars()["pe_mean"] == pytest.approx(0.5, abs=1e-6)


def test_mean_shape_errors_and_summary():
    samples = [FakeSample("a", blob(5, 7), np.array([[20.0, 34.0], [np.nan, np.nan]]))]
    errors = mean_shape_errors(np.array([[6.0, 7.0], [0.0, 0.0]]), samples)
    np.testing.assert_allclose(errors, [[1.0, np.nan]])
    runs = {
        name: Evaluation([name], np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), e, landmark_statistics(e))
        for name, e in (("scn_cv1", np.array([[1.0, 3.0]])), ("scn_cv2", np.array([[5.0, np.nan]])))
    }
    summary = summarize(runs)
    assert summary["runs"]["scn_cv2"]["pe_mean"] == 5.0
    assert summary["across_runs"]["pe_mean"] == {"mean": 3.5, "std": 1.5}
    assert summary["pooled"]["pe_mean"] == 3.0 and summary["pooled"]["num_images"] == 2
    assert "mean_shape_baseline" not in summary
    baselines = {"scn_cv1": np.array([[6.0, 10.0]]), "scn_cv2": np.array([[2.0, np.nan]])}
    summary = summarize(runs, baselines)
    assert summary["mean_shape_baseline"]["runs"]["scn_cv1"]["pe_mean"] == 8.0
    assert summary["mean_shape_baseline"]["pooled"]["pe_mean"] == 6.0
