"""How TensorFlow runs here: the environment it must find when it loads, and whether steps use XLA.

`configure_tensorflow` must run before anything imports TensorFlow (or Keras on its TensorFlow backend): the
entry points (main.py, predict.py, the benchmarks) import Keras inside `quiet_tensorflow_start`, which calls
it, and the tests call it first. A variable the user has set
is never changed, so ``TF_ENABLE_ONEDNN_OPTS=0 python main.py`` still runs TensorFlow's Eigen kernels.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

TENSORFLOW_ENVIRONMENT = {
    # no start-up banner of C++ information logs (warnings and errors still show)
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # oneDNN kernels on every CPU: on x86, TensorFlow enables them by default only with AVX-512 VNNI, BF16
    # or AMX; on our AVX2 machine the steps of the cpu presets ran 1.4-3.8x slower without them (without XLA;
    # benchmarks/README.md, issue 10)
    "TF_ENABLE_ONEDNN_OPTS": "1",
}


def configure_tensorflow() -> None:
    """Sets each variable of `TENSORFLOW_ENVIRONMENT` that the environment does not already set."""
    for name, value in TENSORFLOW_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


# What TensorFlow 2.21 writes to stderr as it loads, before its logging honours TF_CPP_MIN_LOG_LEVEL: absl's
# notice that early messages go to stderr, and the notice that oneDNN is on (which configure_tensorflow asks)
_START_UP_NOISE = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                   "oneDNN custom operations are on")


@contextlib.contextmanager
def quiet_tensorflow_start() -> Iterator[None]:
    """Import TensorFlow (or Keras) inside this block: it sets the environment first (`configure_tensorflow`)
    and drops TensorFlow's start-up notices (`_START_UP_NOISE`).

    Everything else written to file descriptor 2 meanwhile is forwarded line by line as it comes, so a
    crash while importing still shows its message. Nothing is filtered when the user asked for TensorFlow's
    information logs (TF_CPP_MIN_LOG_LEVEL below 2) or when there is no file descriptor 2. Meant for
    imports: a process started inside the block would inherit the pipe as its stderr, and the block would
    wait for it to end.
    """
    configure_tensorflow()
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") < "2" or sys.stderr is None:  # None: fd 2 was closed
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # file descriptor 2 closed since: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    forwarder = threading.Thread(target=_forward_lines, args=(read_end, saved), daemon=True)
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer is gone: the forwarder reads to its end and stops
        forwarder.join()
        os.close(saved)


def _forward_lines(read_end: int, destination: int) -> None:
    """Copies complete lines from `read_end` to `destination`, leaving out `_START_UP_NOISE`, until EOF."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not any(noise.encode() in line for noise in _START_UP_NOISE):
                    os.write(destination, line + b"\n")
    if pending:
        os.write(destination, pending)


def configure_graph_optimizer() -> None:
    """Turns off TensorFlow's grappler remapper (its operator fusions), process-wide; call after it loads.

    With oneDNN on, the remapper fails on scn_mia's training step (it fuses a convolution with its leaky
    ReLU, whose gradient still needs the unfused sum), writes an "E... remapper failed" line for every step
    function, and keeps none of its fusions. With it off, the steps of scn, unet and scn_mia in 2D and 3D
    changed by under 5 % (benchmarks/README.md, issue 10). Nothing to do on other backends.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"remapping": False})


def jit_compile(setting: str = "auto") -> bool | str:
    """The ``jit_compile`` for ``Model.compile`` of a training step, from main.py's ``--xla``.

    "on" and "off" force XLA; "auto" is False for TensorFlow on a CPU and Keras' own "auto" elsewhere (on a
    GPU, and on JAX, which needs XLA). On our CPU, at the cpu presets' sizes, TensorFlow's oneDNN kernels
    without XLA ran scn 1.9x, scn_mia 7.2x and the 3D networks 7x faster than with it (unet 11 % slower),
    but XLA ran the paper-size 2D steps (128 filters) 1.4-2x faster (benchmarks/README.md, issue 10).
    """
    if setting in ("on", "off"):
        return setting == "on"
    if setting != "auto":
        raise ValueError(f"xla must be 'auto', 'on' or 'off', got {setting!r}")
    import keras

    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf

    return "auto" if tf.config.list_physical_devices("GPU") else False
