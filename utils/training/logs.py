"""Training logs: losses and test errors per iteration, as JSON/CSV (always) and TensorBoard (when possible).

``history.json`` holds ``{"train": [{"iteration", "loss", "iterations_per_s", "data_wait"[, "sigma_<n>",
...]}, ...], "test": [{"iteration", <error name>: value, ...}, ...]}`` (data_wait: the share of the time
spent waiting for batches; sigma_<n>: learned sigmas); ``history.csv`` the same numbers in long form
(``iteration,tag,value``); ``training_curves.png`` plots them.
TensorBoard event files go to the run's ``logs/`` folder through ``tf.summary.write`` with the scalar
plugin's metadata (so the `tensorboard` package is needed only to view them, not to write them); this is
the only TensorFlow-specific code of the project, used with any Keras backend when TensorFlow can be
imported and skipped with one message otherwise.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any

from utils.io.atomic import write_json_atomic, write_text_atomic
from utils.landmarks.plots import plot_training_curves
from utils.training.output import RunFolder

__all__ = ["TrainingLog"]


def _tensorboard_writer(folder, log: Callable[[str], None]) -> Any:
    """A ``tf.summary`` file writer for `folder`, or None (with one message) when TensorFlow is missing."""
    try:
        import tensorflow as tf
    except ImportError:
        log("TensorFlow is not installed: no TensorBoard logs (history.json and history.csv are written)")
        return None
    return tf.summary.create_file_writer(str(folder))


def _scalar_metadata() -> Any:
    """The summary metadata that makes TensorBoard show a scalar tensor as a curve."""
    from tensorflow.core.framework.summary_pb2 import SummaryMetadata

    return SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))


class TrainingLog:
    """Collects training losses and test errors of one run and writes them to its folder.

    Args:
        run: the run folder.
        log: where the one-time message about missing TensorBoard support goes.
    """

    def __init__(self, run: RunFolder, log: Callable[[str], None] = print):
        self.run = run
        self.train: list[dict[str, float]] = []
        self.test: list[dict[str, float]] = []
        self._writer = _tensorboard_writer(run.logs, log)

    def restore(self, iteration: int) -> None:
        """Loads the saved history of a resumed run, dropping entries after `iteration`."""
        if not self.run.history.is_file():
            return
        saved = json.loads(self.run.history.read_text(encoding="utf-8"))
        self.train = [row for row in saved["train"] if row["iteration"] <= iteration]
        self.test = [row for row in saved["test"] if row["iteration"] <= iteration]

    def _scalars(self, iteration: int, prefix: str, values: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        import tensorflow as tf

        metadata = _scalar_metadata()
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.write(f"{prefix}/{name}", tf.constant(value, tf.float32), iteration, metadata)
        self._writer.flush()

    def add_train(self, iteration: int, loss: float, iterations_per_s: float, data_wait: float,
                  extra: Mapping[str, float] | None = None) -> None:
        """Records the mean training loss of the iterations since the previous record, the speed, the
        share of that time spent waiting for batches (near 0 when the loader keeps up with the steps), and
        `extra` scalars (e.g. {"sigma_0": 3.1, ...}, the learned sigmas)."""
        row = {"iteration": int(iteration), "loss": float(loss), "iterations_per_s": float(iterations_per_s),
               "data_wait": float(data_wait), **{name: float(value) for name, value in (extra or {}).items()}}
        self.train.append(row)
        self._scalars(iteration, "train", {k: v for k, v in row.items() if k not in ("iteration",
                                                                                     "iterations_per_s")})

    def add_test(self, iteration: int, errors: Mapping[str, float]) -> None:
        """Records the scalar errors of a test (e.g. {"pe_mean": 1.2}) and saves the history."""
        errors = {name: float(value) for name, value in errors.items() if value is not None}
        row = {"iteration": int(iteration), **errors}
        self.test.append(row)
        self._scalars(iteration, "test", errors)
        self.save()
        self.plot()

    def plot(self) -> None:
        """Writes ``training_curves.png``: training loss and test point errors against iteration."""
        series = {"training loss": [(row["iteration"], row["loss"]) for row in self.train]}
        for name in ("pe_mean", "pe_median"):
            series[f"test {name} [mm]"] = [(row["iteration"], row[name]) for row in self.test if name in row]
        plot_training_curves(self.run.root / "training_curves.png", series)

    def save(self) -> None:
        """Writes ``history.json`` and ``history.csv`` atomically."""
        write_json_atomic(self.run.history, {"train": self.train, "test": self.test})
        text = io.StringIO()
        text.write("iteration,tag,value\n")
        for kind, rows in (("train", self.train), ("test", self.test)):
            for row in rows:
                for name, value in row.items():
                    if name != "iteration":
                        text.write(f"{row['iteration']},{kind}/{name},{value!r}\n")
        write_text_atomic(self.run.history.with_suffix(".csv"), text.getvalue())
