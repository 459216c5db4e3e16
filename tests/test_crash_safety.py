"""Reliability of run outputs: a failed or interrupted checkpoint save never costs the previous checkpoint,
and every run folder records the software it ran with."""

from __future__ import annotations

import errno
import io
import json
import os
import platform

import keras
import numba
import numpy as np
import pytest
import SimpleITK as sitk

from utils.io.errors import DataError
from utils.training import checkpoint
from utils.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from utils.training.output import RunFolder, software_environment


def small_model(seed: int) -> keras.Model:
    """A compiled two-layer model whose optimizer has state (momentum), with weights drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    return model


def assert_restores(folder, saved: keras.Model, iteration: int) -> None:
    """The newest checkpoint in `folder` loads into a fresh model and holds `saved`'s weights."""
    fresh = small_model(seed=99)
    restored = load_checkpoint(folder, fresh)
    assert restored.iteration == iteration and restored.state == {"seed": 0}
    for got, expected in zip(fresh.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)


def names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_disk_full_in_the_middle_of_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    good = small_model(seed=0)
    save_checkpoint(folder, good, 100, {"seed": 0})
    newer = small_model(seed=1)
    real_savez = np.savez

    def savez_until_disk_full(file, **arrays):
        archive = io.BytesIO()
        real_savez(archive, **arrays)
        data = archive.getvalue()
        with open(file, "wb") as out:  # half the archive reaches the disk, then it is full
            out.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(checkpoint.np, "savez", savez_until_disk_full)
    with pytest.raises(OSError) as raised:
        save_checkpoint(folder, newer, 200, {"seed": 0})
    assert raised.value.errno == errno.ENOSPC
    assert names(folder) == ["ckpt_00000100.npz"]  # no half-written file, under any name
    assert latest_checkpoint(folder) == folder / "ckpt_00000100.npz"
    assert_restores(folder, good, 100)


def test_disk_full_reported_at_flush_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    # with delayed allocation a full disk may only show when the data is flushed, after every write worked
    folder = tmp_path / "checkpoints"
    good = small_model(seed=0)
    save_checkpoint(folder, good, 100, {"seed": 0})

    def fsync_disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync_disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(folder, small_model(seed=1), 200, {"seed": 0})
    monkeypatch.undo()
    assert names(folder) == ["ckpt_00000100.npz"]
    assert_restores(folder, good, 100)


def test_a_killed_save_leaves_only_an_ignored_temporary_that_the_next_save_removes(tmp_path):
    folder = tmp_path / "checkpoints"
    good = small_model(seed=0)
    first = save_checkpoint(folder, good, 100, {"seed": 0})
    # a process killed while writing ckpt 200 leaves atomic_path's temporary file, partly written
    (folder / ".ckpt_00000200.k1ll3d.tmp.npz").write_bytes(first.read_bytes()[:300])
    assert latest_checkpoint(folder) == first
    assert_restores(folder, good, 100)
    newer = small_model(seed=1)
    save_checkpoint(folder, newer, 200, {"seed": 0})
    assert names(folder) == ["ckpt_00000100.npz", "ckpt_00000200.npz"]
    assert_restores(folder, newer, 200)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_state"])
def test_a_damaged_checkpoint_raises_data_error_naming_it(tmp_path, damage):
    folder = tmp_path / "checkpoints"
    path = save_checkpoint(folder, small_model(seed=0), 100, {"seed": 0})
    if damage == "truncate":  # e.g. copied by hand onto a full disk
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        np.savez(path, weight_0=np.zeros(3))
    with pytest.raises(DataError, match="ckpt_00000100.npz cannot be read") as raised:
        load_checkpoint(path, small_model(seed=1))
    assert raised.value.path == path


def test_run_folder_records_the_software_environment(tmp_path):
    run = RunFolder.create(tmp_path, "scn_cv1", {"seed": 0}, stamp="2024-01-01_00-00-00")
    recorded = json.loads(run.environment.read_text())
    assert run.environment == run.root / "environment.json"
    assert recorded == software_environment()
    assert recorded["python"] == platform.python_version()
    assert recorded["keras"] == keras.__version__
    assert recorded["keras_backend"] == keras.backend.backend()
    assert recorded["keras_backend_version"]  # e.g. tensorflow's version
    assert recorded["numpy"] == np.__version__
    assert recorded["SimpleITK"] == sitk.__version__
    assert recorded["numba"] == numba.__version__
    assert recorded["platform"] == platform.platform()
