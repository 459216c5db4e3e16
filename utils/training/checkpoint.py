"""Training checkpoints: model weights, optimizer state, iteration and data-loader state in one atomic file.

A checkpoint is ``checkpoints/ckpt_<iteration, 8 digits>.npz`` in the run folder, holding

- ``weight_<k>``: the model weights in `keras.Model.get_weights` order,
- ``optimizer_<k>``: the optimizer variables (its iteration counter, momenta, ...) in their own order,
- ``state``: a JSON string with the iteration and the loader state (seed, position), so that a resumed run
  continues at the same iteration with the same data order.

Files are written through a hidden temporary file that is flushed to disk and then renamed
(`utils.io.atomic`), so every ``ckpt_*.npz`` present is complete and the newest one is the last good state:
a failed write (a full disk, a killed process) leaves the previous checkpoints as they were, and its
temporary file is never taken for a checkpoint; the next successful save deletes any such leftover. Only
NumPy arrays are stored, so a checkpoint is independent of the Keras backend that wrote it.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from utils.io.atomic import atomic_path
from utils.io.errors import DataError

__all__ = [
    "Checkpoint", "checkpoint_path", "latest_checkpoint", "load_checkpoint", "load_weights", "save_checkpoint"
]

_NAME = re.compile(r"^ckpt_(\d+)\.npz$")
_TEMPORARY = ".ckpt_*.tmp.npz"  # what `atomic_path` names its temporary files while a checkpoint is written


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the file.
        iteration: number of training iterations done when it was written.
        state: the extra JSON state saved with it (loader seed and position, ...).
    """

    path: Path
    iteration: int
    state: dict[str, Any]


def _optimizer_variables(model: keras.Model) -> list:
    """The optimizer's variables, building its slots for the model's trainable weights if needed."""
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError(f"model {model.name!r} has no optimizer: compile it before saving or loading")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def checkpoint_path(folder: str | Path, iteration: int) -> Path:
    """The checkpoint file of `iteration` in the ``checkpoints/`` folder: ``ckpt_<8 digits>.npz``."""
    return Path(folder) / f"ckpt_{int(iteration):08d}.npz"


def save_checkpoint(
    folder: str | Path, model: keras.Model, iteration: int, state: Mapping[str, Any], keep: int = 2
) -> Path:
    """Writes the training state atomically and deletes all but the newest `keep` checkpoints.

    Args:
        folder: the ``checkpoints/`` folder.
        model: the compiled training model (its weights and its optimizer's variables are saved).
        iteration: training iterations done.
        state: JSON-serialisable extra state (e.g. {"seed": 0, "position": 800}).
        keep: number of checkpoints to keep, at least 1.

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: if a weight is not finite (a diverged model is never saved over a good state) or
            `keep` < 1.
        OSError: if writing fails (e.g. the disk is full); the checkpoints already there are untouched and
            no partial file is left.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    arrays = {f"weight_{k}": w for k, w in enumerate(model.get_weights())}
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"weights of {model.name!r} are not finite at iteration {iteration} ({name})")
    for k, variable in enumerate(_optimizer_variables(model)):
        arrays[f"optimizer_{k}"] = keras.ops.convert_to_numpy(variable)
    arrays["state"] = np.array(json.dumps({"iteration": int(iteration), **state}))
    folder = Path(folder)
    path = checkpoint_path(folder, iteration)
    with atomic_path(path) as temporary:
        np.savez(temporary, **arrays)
    for old in _checkpoints(folder)[:-keep]:
        old.unlink()
    for leftover in folder.glob(_TEMPORARY):  # from a process killed while saving (one run, one writer)
        leftover.unlink(missing_ok=True)
    return path


def _checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint file in `folder`, or None when there is none."""
    found = _checkpoints(Path(folder))
    return found[-1] if found else None


def _numbered(data: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The arrays named ``<prefix>0``, ``<prefix>1``, ... of an ``.npz`` archive, in number order."""
    count = sum(key.startswith(prefix) for key in data)
    return [data[f"{prefix}{k}"] for k in range(count)]


def _read(path: Path) -> tuple[Path, list[np.ndarray], list[np.ndarray], dict]:
    """(file, weights, optimizer variables, state) of a checkpoint file or of a folder's newest one."""
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint (ckpt_*.npz) in {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = _numbered(data, "weight_")
            slots = _numbered(data, "optimizer_")
            state = json.loads(str(data["state"]))
        if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
            raise ValueError(f"its state {state!r} has no iteration")
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"checkpoint {path} cannot be read: {error}", path=path) from error
    return path, weights, slots, state


def _set_weights(path: Path, model: keras.Model, weights: list[np.ndarray]) -> None:
    """`model.set_weights(weights)` after checking that their number and shapes match."""
    expected = model.get_weights()
    if [w.shape for w in weights] != [w.shape for w in expected]:
        raise ValueError(
            f"checkpoint {path} holds {len(weights)} weights of shapes {[w.shape for w in weights]}, model "
            f"{model.name!r} has {len(expected)} of shapes {[w.shape for w in expected]}"
        )
    model.set_weights(weights)


def load_weights(path: str | Path, model: keras.Model) -> Checkpoint:
    """Restores only the weights of `model` (compiled or not) from a checkpoint: for inference.

    Args and errors as `load_checkpoint`'s, without the optimizer.
    """
    path, weights, _, state = _read(Path(path))
    _set_weights(path, model, weights)
    iteration = int(state.pop("iteration"))
    return Checkpoint(path=path, iteration=iteration, state=state)


def load_checkpoint(path: str | Path, model: keras.Model) -> Checkpoint:
    """Restores weights and optimizer variables of the compiled `model` from a checkpoint file.

    Args:
        path: a ``ckpt_*.npz`` file, or a ``checkpoints/`` folder (its newest checkpoint is loaded).
        model: a compiled model with the same architecture and optimizer as the one saved.

    Returns:
        The checkpoint's iteration and extra state.

    Raises:
        FileNotFoundError: if there is no checkpoint at `path`.
        DataError: if the file is not a readable checkpoint (damaged, or not written by `save_checkpoint`).
        ValueError: if the numbers of weights or optimizer variables or their shapes do not match.
    """
    path, weights, slots, state = _read(Path(path))
    _set_weights(path, model, weights)
    variables = _optimizer_variables(model)
    if len(slots) != len(variables):
        raise ValueError(
            f"checkpoint {path} holds {len(slots)} optimizer variables, the optimizer of {model.name!r} has "
            f"{len(variables)}: was it saved with another optimizer?"
        )
    for variable, value in zip(variables, slots, strict=True):
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"checkpoint {path}: optimizer variable {variable.path} has shape {tuple(variable.shape)}, "
                f"saved value {value.shape}"
            )
        variable.assign(value)
    iteration = int(state.pop("iteration"))
    return Checkpoint(path=path, iteration=iteration, state=state)
