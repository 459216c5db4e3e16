"""How TensorFlow runs here: the environment it must find when it loads, and whether steps use XLA.

`configure_tensorflow` must run before anything imports TensorFlow (or Keras on its TensorFlow backend); the
entry points (main.py, predict.py, the benchmarks, the tests) call it first. A variable the user has set
is never changed, so ``TF_ENABLE_ONEDNN_OPTS=0 python main.py`` still runs TensorFlow's Eigen kernels.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

TENSORFLOW_ENVIRONMENT = {
    # no start-up banner of C++ information logs (warnings and errors still show)
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # oneDNN kernels on every x86 CPU: TensorFlow enables them by default only on CPUs with AVX-512 VNNI, BF16
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
    """Import TensorFlow (or Keras) inside this block to drop its start-up notices (`_START_UP_NOISE`).

    Everything else written to stderr meanwhile, a Python traceback included, is written out at the end of
    the block, in order.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in _START_UP_NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()


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
    without XLA ran scn and scn_mia 1.9-6.6x and the 3D networks 7x faster than with it (unet 11 % slower),
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
