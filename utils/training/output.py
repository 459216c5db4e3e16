"""The output folder of an experiment: one run folder per network and fold, and a summary over all folds.

Layout (GUIDE section 3)::

    <output>/
        summary.json                       statistics of every fold, their mean ± std and the pooled figures
        <network>_<fold>/<timestamp>/      one run
            config.json                    the resolved parameters of the run
            environment.json               versions of Python, Keras and its backend, NumPy, ... (see
                                           `software_environment`)
            environment_resumed_<time>.json  the same, for each --resume (it may run elsewhere)
            main.py dataset.py network.py  copies of the scripts that ran
            checkpoints/                   see utils.training.checkpoint
            logs/                          TensorBoard event files
            history.json history.csv       losses and errors per iteration (always written)
            training_curves.png
            iter_<n>/                      one test: prediction.csv, stats.json, stats.txt, plots

Every file is written atomically, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import platform
import shutil
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from utils.io.atomic import atomic_path, write_json_atomic

__all__ = [
    "RunFolder", "config_from_dict", "config_to_dict", "read_config", "software_environment", "timestamp",
]

T = TypeVar("T")


def timestamp(now: datetime.datetime | None = None) -> str:
    """A sortable folder name for the start time of a run, e.g. "2024-05-01_13-45-07" (local time)."""
    return (now or datetime.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")


def _version(module: str) -> str | None:
    """The `__version__` of an importable module, or None when it is not installed."""
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
        return None


def software_environment() -> dict[str, str | None]:
    """The software a run depends on, to reproduce it or explain a difference between two runs.

    Returns:
        Versions of Python, Keras, the Keras backend (its name and version), NumPy, SimpleITK and numba
        (None for one not installed), the platform, the machine and the Python executable, e.g.
        {"python": "3.11.9",
        "keras": "3.15.1", "keras_backend": "tensorflow", "keras_backend_version": "2.21.0", ...}.
    """
    import keras  # here, not at the top: reading configs must not start a backend

    backend = keras.backend.backend()
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "keras": keras.__version__,
        "keras_backend": backend,
        "keras_backend_version": _version(backend),
        "numpy": _version("numpy"),
        "SimpleITK": _version("SimpleITK"),
        "numba": _version("numba"),
        "executable": sys.executable,
    }


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run (one network on one fold) and the names of the files inside it.

    Attributes:
        root: ``<output>/<network>_<fold>/<timestamp>``.
    """

    root: Path

    @classmethod
    def create(
        cls,
        output: str | Path,
        name: str,
        config: Mapping[str, Any],
        scripts: Iterable[str | Path] = (),
        stamp: str | None = None,
    ) -> RunFolder:
        """Creates a new run folder, writes ``config.json`` and ``environment.json``, and copies the scripts.

        Args:
            output: the experiment output folder.
            name: ``<network>_<fold>``, e.g. "scn_cv1".
            config: the resolved parameters, JSON-serialisable (see `config_to_dict`).
            scripts: files copied next to the config (main.py, dataset.py, network.py); a missing file
                raises FileNotFoundError.
            stamp: the run folder name; default: `timestamp()` of now. An existing folder gets a suffix
                ("_2", "_3", ...) so that two runs never share a folder.

        Returns:
            The new run folder, with its ``checkpoints/`` and ``logs/`` subfolders created.
        """
        parent = Path(output) / name
        stamp = stamp or timestamp()
        root = parent / stamp
        suffix = 2
        while root.exists():
            root = parent / f"{stamp}_{suffix}"
            suffix += 1
        run = cls(root)
        run.checkpoints.mkdir(parents=True)
        run.logs.mkdir()
        write_json_atomic(run.config, dict(config))
        write_json_atomic(run.environment, software_environment())
        for script in scripts:
            script = Path(script)
            if not script.is_file():
                raise FileNotFoundError(f"script to copy into the run folder not found: {script}")
            with atomic_path(root / script.name) as temporary:
                shutil.copyfile(script, temporary)
        return run

    @classmethod
    def open(cls, root: str | Path) -> RunFolder:
        """An existing run folder (for ``--resume``); raises FileNotFoundError when it has no config.json."""
        run = cls(Path(root))
        if not run.config.is_file():
            raise FileNotFoundError(f"not a run folder (no config.json): {run.root}")
        run.checkpoints.mkdir(exist_ok=True)
        run.logs.mkdir(exist_ok=True)
        return run

    def record_resume(self) -> None:
        """Writes this session's software versions to ``environment_resumed_<timestamp>.json``: a resumed
        run may continue on another machine or after an upgrade."""
        write_json_atomic(self.root / f"environment_resumed_{timestamp()}.json", software_environment())

    @property
    def config(self) -> Path:
        """``config.json``: the resolved parameters."""
        return self.root / "config.json"

    @property
    def environment(self) -> Path:
        """``environment.json``: the software versions of the run (see `software_environment`)."""
        return self.root / "environment.json"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: the saved training states."""
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        """``logs/``: TensorBoard event files."""
        return self.root / "logs"

    @property
    def history(self) -> Path:
        """``history.json``: losses and test errors per iteration (``history.csv`` is written beside it)."""
        return self.root / "history.json"

    def iteration(self, iteration: int) -> Path:
        """``iter_<n>/``: the folder of the test at `iteration` (not created here)."""
        return self.root / f"iter_{iteration}"


def config_to_dict(config: Any) -> dict[str, Any]:
    """A (possibly nested) dataclass as a JSON-ready dict; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """`value` from JSON converted to the type `annotation` (dataclass, tuple, optional or plain)."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object for {annotation.__name__}, got {value!r}")
        return config_from_dict(annotation, value, where)
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _convert(value, next(a for a in arguments if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = arguments[0] if arguments else Any
        return tuple(_convert(item, inner, where) for item in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Builds the dataclass `cls` from a dict (e.g. parsed config.json), rejecting unknown keys.

    Missing keys take the dataclass defaults; lists become tuples where the field is a tuple; nested
    dataclasses are built recursively. A class with a ``from_older(data)`` static method gets to rewrite the
    keys of configs written by earlier versions first (renamed parameters).

    Args:
        cls: the dataclass type.
        data: field name -> value.
        where: a name for the source, used in error messages (e.g. the file path).

    Raises:
        ValueError: if `data` has a key that is not a field of `cls` (a mistyped parameter), naming it.
    """
    data = cls.from_older(dict(data)) if hasattr(cls, "from_older") else data
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    return cls(**values)


def read_config(path: str | Path, cls: type[T]) -> T:
    """Reads a ``config.json`` (from `RunFolder.create`) into the dataclass `cls`, refusing unknown keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return config_from_dict(cls, json.loads(path.read_text(encoding="utf-8")), str(path))
