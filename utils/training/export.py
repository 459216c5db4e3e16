"""A trained network as files that outlive the training code: ``network.keras`` plus ``predict.json``.

Every run writes ``<run>/export/`` at its end (`write_export`):

- ``network.keras``: the heatmap network in Keras's own format; ``keras.saving.load_model`` opens it once
  ``network`` (the project's registered layers) is imported.
- ``predict.json``: what a prediction needs besides the weights: the run's parameters (input size, data
  spec with its units, spacing policy and millimetres, intensity handling), the heatmap grid, the sigmas,
  the landmark names, the iteration, and the conformal radii of the run's final test
  (`utils.landmarks.conformal`).

`export_savedmodel` adds a TensorFlow SavedModel (serving signature ``serve``) with the same
``predict.json`` beside it. Both are written atomically: an interrupted export leaves no half file. The
pair is written network first, and ``predict.json`` records the network file's SHA-256, so a crash between
the two writes (a new network beside the previous ``predict.json``) is caught by `check_network` instead of
pairing weights with the wrong calibration.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from utils.io.atomic import atomic_path, write_json_atomic
from utils.io.errors import DataError

__all__ = ["EXPORT_FORMAT", "INFO_FILE", "NETWORK_FILE", "check_network", "export_savedmodel", "read_info",
           "write_export"]

NETWORK_FILE = "network.keras"
INFO_FILE = "predict.json"
EXPORT_FORMAT = 1  # version of predict.json's layout


def write_export(folder: str | Path, network: keras.Model, info: Mapping[str, Any]) -> Path:
    """Writes ``network.keras`` and ``predict.json`` (``info`` plus the format version) into `folder`.

    Returns:
        The folder.
    """
    folder = Path(folder)
    with atomic_path(folder / NETWORK_FILE) as temporary:
        network.save(temporary)
    _write_info(folder, {**info, "network_sha256": _sha256(folder / NETWORK_FILE)})
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_network(network_file: str | Path, info: Mapping[str, Any]) -> None:
    """Raises DataError when `network_file` is not the network its ``predict.json`` (`info`) was written
    with: an export interrupted between its two files, or a network copied in from elsewhere."""
    expected = info.get("network_sha256")
    if expected is not None and _sha256(Path(network_file)) != expected:
        raise DataError(f"{network_file} is not the network {INFO_FILE} beside it was written for (an export "
                        "interrupted between its two files?): export again, or predict from the run folder",
                        path=network_file)


def _write_info(folder: Path, info: Mapping[str, Any]) -> None:
    """``predict.json`` in `folder`: `info` stamped with the format version `read_info` checks."""
    write_json_atomic(folder / INFO_FILE, {"format": EXPORT_FORMAT, **info})


def read_info(folder: str | Path) -> dict[str, Any]:
    """The ``predict.json`` of an export folder or SavedModel.

    Raises:
        FileNotFoundError: There is no predict.json in `folder`.
        DataError: It is unreadable or of another format version (names the file).
    """
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {INFO_FILE}: not an export of this project")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read: {error}", path=path) from error
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise DataError(f"{path} is not a format-{EXPORT_FORMAT} {INFO_FILE}", path=path)
    return info


def export_savedmodel(network: keras.Model, info: Mapping[str, Any], folder: str | Path) -> Path:
    """Writes `network` as a TensorFlow SavedModel (signature ``serve``: images -> heatmaps) with
    ``predict.json`` into `folder`, which must not exist yet (it appears complete or not at all).

    Raises:
        RuntimeError: The Keras backend is not TensorFlow.
        FileExistsError: `folder` exists.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"a SavedModel needs the TensorFlow backend; this one is {keras.backend.backend()}"
                           " (KERAS_BACKEND=tensorflow)")
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: choose a new folder for the SavedModel")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        network.export(str(staging / "model"), format="tf_saved_model", verbose=False)
        _write_info(staging / "model", {k: v for k, v in info.items() if k != "network_sha256"})  # no file
        (staging / "model").rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
