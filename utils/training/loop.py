"""The training loop: heatmap regression with checkpoints, tests, progress output and logs.

It trains a `utils.training.model.HeatmapTrainer` (network + targets drawn in the graph + loss) with any
Keras backend. The training data come from a function ``batches(start)`` that returns an endless iterator of
batches ``{"image": (B, [z,] y, x, 1), "points": (B, N, dim), "mask": (B, N), ...}`` beginning with batch
number `start` (0-based), so that a resumed run sees the same batches as an uninterrupted one. Learned sigmas
are reported on every progress line, recorded in the history (``sigma_<n>``) and plotted (``sigmas.png``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.landmarks.plots import plot_sigmas
from utils.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from utils.training.logs import TrainingLog
from utils.training.model import HeatmapTrainer
from utils.training.output import RunFolder

__all__ = ["NonFiniteLossError", "Schedule", "train"]

Batch = Mapping[str, Any]
INPUTS = ("image", "points", "mask")  # the batch entries the model takes


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


@dataclass(frozen=True)
class Schedule:
    """When to stop, test and save.

    Attributes:
        max_iter: number of training iterations (batches).
        test_iter: test on the validation images every this many iterations (and at `max_iter`).
        snapshot_iter: save a checkpoint every this many iterations (and at `max_iter`).
        test_at_start: also test before the first iteration.
        report_every_s: seconds between two progress lines.
    """

    max_iter: int
    test_iter: int
    snapshot_iter: int
    test_at_start: bool = False
    report_every_s: float = 5.0

    def __post_init__(self):
        for name in ("max_iter", "test_iter", "snapshot_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def _duration(seconds: float) -> str:
    """12 -> "12s", 125 -> "2m05s", 7300 -> "2h01m"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _keep_progress(run: RunFolder, model: HeatmapTrainer, completed: int, start: int, state: dict,
                   last_good, why: str, log: Callable[[str], None]) -> None:
    """Saves a checkpoint of the last finished iteration (if any since `start`) and says how to resume."""
    if completed > start:
        try:
            last_good = save_checkpoint(run.checkpoints, model, completed, state)
        except OSError as error:
            log(f"could not save iteration {completed}: {error}")
    where = f"the last checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
    log(f"{why} after iteration {completed}: {where}; continue with --resume {run.root}")


def _sigma_record(model: HeatmapTrainer) -> dict[str, float]:
    """{"sigma_<n>": value} of learned sigmas ("sigma_<n>_<axis>" when anisotropic); {} when fixed."""
    if not model.targets.learn_sigma:
        return {}
    sigmas = model.sigmas()
    if sigmas.ndim == 1:
        return {f"sigma_{n}": float(value) for n, value in enumerate(sigmas)}
    return {f"sigma_{n}_{axis}": float(value) for (n, axis), value in np.ndenumerate(sigmas)}


def _plot_sigmas(history: TrainingLog) -> None:
    """``sigmas.png`` from the history's sigma records (nothing when the sigmas are fixed)."""
    rows = [row for row in history.train if any(name.startswith("sigma_") for name in row)]
    if rows:
        names = [name for name in rows[-1] if name.startswith("sigma_")]
        values = np.array([[row.get(name, np.nan) for name in names] for row in rows])
        plot_sigmas(history.run.root / "sigmas.png", [row["iteration"] for row in rows], values)


def train(
    model: HeatmapTrainer,
    batches: Callable[[int], Iterator[Batch]],
    run: RunFolder,
    schedule: Schedule,
    evaluate: Callable[[int], Mapping[str, float]] | None = None,
    state: Mapping[str, Any] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    step: Callable[[HeatmapTrainer, Batch], Mapping[str, Any]] | None = None,
) -> TrainingLog:
    """Trains `model` for `schedule.max_iter` iterations, testing and saving on the way.

    Args:
        model: a compiled `HeatmapTrainer`.
        batches: ``batches(start)`` -> endless iterator of batches starting at batch number `start`.
        run: the run folder (checkpoints, logs and history are written there).
        schedule: iterations to train, test and save at.
        evaluate: ``evaluate(iteration)`` tests the network on the validation images and returns scalar
            errors to log (e.g. {"pe_mean": 1.2}); None: no tests.
        state: JSON-serialisable loader state saved with every checkpoint (e.g. {"seed": 0}); on resume it
            must equal the saved one, so that the data order stays the same.
        resume: continue from the newest checkpoint in ``run.checkpoints`` instead of starting at 0.
        log: where progress lines go.
        step: ``step(model, batch)`` runs one training step and returns its logs ({"loss": ...});
            None: ``model.train_on_batch`` (`utils.training.distribute.Replicas.train_on_batch` spreads it
            over devices).

    Returns:
        The training log (losses and test errors per iteration), also saved in the run folder.

    Raises:
        NonFiniteLossError: when the loss becomes NaN or infinite; the message names the iteration and the
            last good checkpoint, which is kept.
        ValueError: if the saved loader state differs from `state` on resume.
    """
    state = dict(state or {})
    history = TrainingLog(run, log=log)
    start = 0
    last_good = None
    if resume:
        last_good = latest_checkpoint(run.checkpoints)
        if last_good is None:
            raise FileNotFoundError(f"cannot resume: no checkpoint in {run.checkpoints}")
        restored = load_checkpoint(last_good, model)
        if restored.state != state:
            raise ValueError(
                f"cannot resume from {last_good}: it was saved with loader state {restored.state}, "
                f"this run has {state}"
            )
        start = restored.iteration
        history.restore(start)
        log(f"resumed from {last_good} at iteration {start}")
    if start == 0 and schedule.test_at_start and evaluate is not None:
        history.add_test(0, evaluate(0))
    iterator = batches(start)
    window_start, window_losses, window_wait = time.perf_counter(), [], 0.0
    run_start, run_first = window_start, start
    completed = start  # the last iteration whose update has finished
    try:
        for iteration in range(start + 1, schedule.max_iter + 1):
            asked = time.perf_counter()
            try:
                batch = next(iterator)
            except Exception:  # the loader failed (a broken image, a dead worker): keep the work done so far
                _keep_progress(run, model, completed, start, state, last_good, "the loader failed", log)
                history.save()
                raise
            window_wait += time.perf_counter() - asked  # the loader fell behind the training step
            inputs = {key: batch[key] for key in INPUTS}
            logs = step(model, inputs) if step else model.train_on_batch(inputs, return_dict=True)
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                where = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint yet"
                history.save()
                raise NonFiniteLossError(
                    f"training stopped: the loss became {loss} at iteration {iteration}; {where}. "
                    "Try a lower learning rate."
                )
            completed = iteration
            window_losses.append(loss)
            now = time.perf_counter()
            if now - window_start >= schedule.report_every_s or iteration == schedule.max_iter:
                speed = (iteration - run_first) / max(now - run_start, 1e-9)
                eta = (schedule.max_iter - iteration) / max(speed, 1e-9)
                mean_loss = float(np.mean(window_losses))
                data_wait = window_wait / max(now - window_start, 1e-9)
                sigmas = _sigma_record(model)
                shown = (f"  sigma {np.mean(list(sigmas.values())):.2f} ({min(sigmas.values()):.2f}-"
                         f"{max(sigmas.values()):.2f})" if sigmas else "")
                log(
                    f"iter {iteration:>7d}/{schedule.max_iter}  loss {mean_loss:.4g}{shown}  "
                    f"{speed:.2f} it/s  data wait {100 * data_wait:.0f}%  ETA {_duration(eta)}"
                )
                history.add_train(iteration, mean_loss, speed, data_wait, sigmas)
                window_start, window_losses, window_wait = now, [], 0.0
            if iteration % schedule.snapshot_iter == 0 or iteration == schedule.max_iter:
                try:
                    last_good = save_checkpoint(run.checkpoints, model, iteration, state)
                except OSError as error:  # e.g. a full disk: the previous checkpoint is intact
                    raise OSError(f"cannot write the checkpoint of iteration {iteration} ({error}); the last "
                                  f"good checkpoint {last_good} is kept: free space, then --resume "
                                  f"{run.root}") from error
                history.save()
            testing = iteration % schedule.test_iter == 0 or iteration == schedule.max_iter
            if evaluate is not None and testing:
                history.add_test(iteration, evaluate(iteration))
    except KeyboardInterrupt:  # keep the work done since the last snapshot (a step cut short is not counted)
        _keep_progress(run, model, completed, start, state, last_good, "interrupted", log)
        history.save()
        raise
    history.save()
    history.plot()
    _plot_sigmas(history)
    return history
