"""The TensorFlow environment and XLA choice of `utils.runtime`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from utils.runtime import TENSORFLOW_ENVIRONMENT, configure_tensorflow, jit_compile

ROOT = Path(__file__).resolve().parents[1]


def test_configure_sets_defaults_and_keeps_the_users_values(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    configure_tensorflow()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == TENSORFLOW_ENVIRONMENT["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's own value wins


def test_main_sets_the_environment_before_tensorflow_loads():
    """Importing main.py (as `python main.py` does) leaves oneDNN on and TensorFlow loaded after it."""
    environment = {"PATH": "/usr/bin:/bin", "KERAS_BACKEND": "tensorflow"}
    code = ("import os, sys; assert 'tensorflow' not in sys.modules; import main; "
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True"]
    assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr, result.stderr


NOISY_START = textwrap.dedent("""
    import os, sys
    from utils.runtime import quiet_tensorflow_start
    try:
        with quiet_tensorflow_start():
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to "
                        b"STDERR\\nI0000 port.cc:153] oneDNN custom operations are on. You may see ...\\n"
                        b"E0000 something that went wrong\\n")
            print("a Python warning", file=sys.stderr, flush=True)
            raise ImportError("a failed import")
    except ImportError as error:
        print(error, file=sys.stderr)
    os.write(2, b"after the block\\n")
    """)


@pytest.mark.parametrize("level", ["2", "0"])
def test_quiet_start_drops_only_the_start_up_notices(level):
    """At the default level the two notices go and everything else stays, in order, stderr restored after
    an exception; with TensorFlow's information logs asked for (level 0) nothing is dropped."""
    result = subprocess.run([sys.executable, "-c", NOISY_START], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": level})
    kept = "E0000 something that went wrong\na Python warning\na failed import\nafter the block\n"
    if level == "2":
        assert result.stderr == kept
    else:
        assert "oneDNN custom operations are on" in result.stderr and result.stderr.endswith(kept)


def test_quiet_start_runs_with_stderr_closed():
    code = ("from utils.runtime import quiet_tensorflow_start\n"
            "with quiet_tensorflow_start():\n    print('ran')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            timeout=60, preexec_fn=lambda: os.close(2))
    assert result.returncode == 0 and result.stdout == "ran\n"


def test_jit_compile_is_off_only_for_tensorflow_on_a_cpu():
    if keras.backend.backend() != "tensorflow":
        assert jit_compile() == "auto"
        return
    import tensorflow as tf

    expected = "auto" if tf.config.list_physical_devices("GPU") else False
    assert jit_compile() is expected


def test_jit_compile_follows_an_explicit_setting_and_rejects_a_mistyped_one():
    assert jit_compile("on") is True and jit_compile("off") is False
    with pytest.raises(ValueError, match="xla must be 'auto', 'on' or 'off', got 'yes'"):
        jit_compile("yes")
