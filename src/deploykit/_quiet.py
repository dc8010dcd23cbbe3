"""Keep TensorFlow's native log chatter out of the user's terminal.

TensorFlow, the TFLite converter and LiteRT print from C++ straight to file
descriptor 2 (CUDA probing, MLIR passes, XNNPACK notices). Python-level
redirection cannot catch that, so we point fd 2 at a temporary file while a
noisy native call runs and give the captured text back, so a failing step can
still quote it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

_ENV_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GRPC_VERBOSITY": "ERROR",
    "ABSL_MIN_LOG_LEVEL": "2",
}
# Only the `deploy` process hides GPUs (it converts on the CPU, and CUDA probing is slow and noisy):
# used as a library, hiding them would take the GPU from the user's own training in the same process.
CLI_ENV_DEFAULTS = {"CUDA_VISIBLE_DEVICES": "-1"}


@contextlib.contextmanager
def quiet_tensorflow_env() -> Iterator[None]:
    """Environment defaults that keep TensorFlow quiet while it loads; the user's own settings win,
    and the environment is as it was afterwards (the native libraries read it when they load)."""
    added = [key for key in _ENV_DEFAULTS if key not in os.environ]
    for key in added:
        os.environ[key] = _ENV_DEFAULTS[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Undo what a library changes in ``os.environ`` on import (tf2onnx sets TF_CPP_MIN_LOG_LEVEL=3,
    which muted TensorFlow's errors for the rest of the caller's process and its children)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


class Captured:
    """Text a native library wrote to stderr while captured."""

    def __init__(self) -> None:
        self.text = ""

    def tail(self, lines: int = 5) -> str:
        """The last meaningful lines, for error messages."""
        keep = [ln for ln in self.text.splitlines() if ln.strip() and not ln.startswith(("W0000", "I0000"))]
        return "\n".join(keep[-lines:])


@contextlib.contextmanager
def native_stderr_captured(enabled: bool = True) -> Iterator[Captured]:
    """Redirect fd 2 to a temp file for the duration; yields the captured text afterwards."""
    captured = Captured()
    if not enabled or os.environ.get("DEPLOYKIT_VERBOSE"):
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode("utf-8", "replace")


def import_tensorflow():
    """Import TensorFlow quietly and return the module."""
    with quiet_tensorflow_env(), native_stderr_captured():
        import tensorflow as tf  # noqa: PLC0415

        tf.get_logger().setLevel("ERROR")
        import absl.logging  # noqa: PLC0415

        absl.logging.set_verbosity(absl.logging.ERROR)
        # Device discovery probes CUDA once and logs "failed call to cuInit" at ERROR level on a
        # machine without a GPU. Done here, under capture: otherwise the first op that needs a
        # device prints it in the middle of a one-line error.
        tf.config.list_physical_devices()
    return tf
