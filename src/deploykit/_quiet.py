"""Keep TensorFlow's native log chatter out of the user's terminal.

TensorFlow, the TFLite converter and LiteRT print from C++ straight to file
descriptor 2 (CUDA probing, MLIR passes, XNNPACK notices). Python-level
redirection cannot catch that, so we point fd 2 at a temporary file while a
noisy native call runs and give the captured text back, so a failing step can
still quote it. Their Python loggers (tensorflow, absl, tf2onnx, ONNX Runtime's
quantizer) are quieted by a filter on the handlers while deploykit works.

Both act on the whole process, so both are written for a caller's process that
has other threads: fds are swapped only by the main thread (a worker thread's
convert leaves them alone: swapping them there lost the caller's own output and,
with two threads, left fd 2 on a deleted file), and the log filter is a
reference-counted filter rather than logger levels saved and put back (which
raced between threads and left the caller's root logger at ERROR).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
from typing import Any, Callable, Iterator, TypeVar

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
    if not enabled or os.environ.get("DEPLOYKIT_VERBOSE") or threading.current_thread() is not threading.main_thread():
        # fd 2 belongs to the whole process: from a worker thread the caller's own threads would
        # write into our file meanwhile. Only the main thread swaps it, so swaps nest and never race.
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


@contextlib.contextmanager
def python_stdout_quiet() -> Iterator[None]:
    """``sys.stdout`` to nowhere while a library prints progress (tf_keras's export), in the main
    thread only: ``sys.stdout`` belongs to the whole process, and from a worker thread the caller's
    own prints would vanish meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        yield


def import_tensorflow():
    """Import TensorFlow quietly and return the module."""
    with quiet_tensorflow_env(), native_stderr_captured():
        import tensorflow as tf  # noqa: PLC0415

        # Device discovery probes CUDA once and logs "failed call to cuInit" at ERROR level on a
        # machine without a GPU. Done here, under capture: otherwise the first op that needs a
        # device prints it in the middle of a one-line error.
        tf.config.list_physical_devices()
    return tf


# Loggers (by first name component) and package directories whose records below ERROR are dropped
# while deploykit works: their INFO/WARNING lines are about the conversion's internals.
_LIBRARY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnxruntime", "onnx")
_LIBRARY_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in
                      ("tensorflow", "absl", "tf2onnx", "onnxruntime", "onnx", "keras", "tf_keras",
                       "tensorflow_model_optimization"))


class _LibraryRecords(logging.Filter):
    """Drops the libraries' records below ERROR; the caller's records always pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.name.split(".", 1)[0] in _LIBRARY_LOGGERS:
            return False
        # ONNX Runtime's quantizer and tf2onnx also call logging.info()/warning() on the root logger:
        # told apart by their installed file (a caller's own project may sit in a folder named keras).
        path = record.pathname or ""
        installed = "site-packages" in path or "dist-packages" in path
        return not (record.name == "root" and installed and any(d in path for d in _LIBRARY_DIRS))


_FILTER = _LibraryRecords()
_MUTE_LOCK = threading.Lock()
_mute: dict[str, Any] = {"depth": 0, "handlers": [], "levels": {}}


def _filterers() -> list[logging.Filterer]:
    """The library loggers themselves (their direct records, whatever handler TensorFlow gives its
    logger when it loads), and the handlers their children's and root-logged records reach."""
    found: list[logging.Filterer] = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    found += logging.root.handlers
    if logging.lastResort is not None:  # what prints WARNING+ when nothing is configured
        found.append(logging.lastResort)
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def library_logs_muted() -> Iterator[None]:
    """While deploykit works: TensorFlow's, absl's, tf2onnx's and ONNX Runtime's log records below
    ERROR are dropped (a filter on their loggers and on the handlers that exist); nested and
    concurrent uses share one filter (reference-counted), and nothing else is changed."""
    with _MUTE_LOCK:
        if _mute["depth"] == 0:
            _mute["handlers"] = _filterers()
            # TensorFlow sets absl's verbosity while exporting and restores it as WARNING where the
            # caller had NOTSET: their absl.logging.info lines vanished after a run. Levels put back.
            _mute["levels"] = {name: logging.getLogger(name).level for name in _LIBRARY_LOGGERS}
            for handler in _mute["handlers"]:
                handler.addFilter(_FILTER)
        else:  # root handlers that appeared since are covered too
            for handler in _filterers():
                if handler not in _mute["handlers"]:
                    handler.addFilter(_FILTER)
                    _mute["handlers"].append(handler)
        _mute["depth"] += 1
    try:
        yield
    finally:
        with _MUTE_LOCK:
            _mute["depth"] -= 1
            if _mute["depth"] == 0:
                for handler in _mute["handlers"] + _filterers():
                    handler.removeFilter(_FILTER)
                _mute["handlers"] = []
                for name, level in _mute["levels"].items():
                    logging.getLogger(name).setLevel(level)


F = TypeVar("F", bound=Callable[..., Any])


def logs_muted(fn: F) -> F:
    """Decorator form of :func:`library_logs_muted` for the public entry points."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with library_logs_muted():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# Each ignore filter deploykit adds is tagged by its message pattern (a regex comment matches like
# an empty pattern), so one whose removal another thread's catch_warnings undid can be found again.
_TAG = "(?#deploykit)"
_WARN_LOCK = threading.Lock()
_active_filters: list[tuple] = []


def _filters_changed() -> None:
    import warnings

    mutated = getattr(warnings, "_filters_mutated", None)  # the C module caches filters by a version number
    if mutated is not None:
        mutated()


@contextlib.contextmanager
def warnings_ignored(message: str = "", category: type[Warning] = Warning) -> Iterator[None]:
    """Ignore warnings of ``category`` whose text matches ``message`` (a regex; all by default) while open.

    Unlike ``warnings.catch_warnings``, which saves the process's whole filter list and puts that
    copy back, this adds one filter and removes that one: two threads converting at once put back
    each other's copies, and an "ignore everything" filter stayed in the caller's process for good
    (every later warning of theirs silenced). Filters the caller adds meanwhile stay; a tagged filter
    left behind by someone else's catch_warnings is removed when the last of ours closes.
    """
    import re
    import warnings

    entry = ("ignore", re.compile(_TAG + message, re.I), category, None, 0)
    with _WARN_LOCK:
        warnings.filters.insert(0, entry)
        _active_filters.append(entry)
        _filters_changed()
    try:
        yield
    finally:
        with _WARN_LOCK:
            _active_filters.remove(entry)
            warnings.filters[:] = [f for f in warnings.filters if not (
                f is entry or not _active_filters and getattr(f[1], "pattern", "").startswith(_TAG))]
            _filters_changed()


def foreign_warnings_ignored(fn: F) -> F:
    """Run ``fn`` (a call into TensorFlow, tf2onnx or ONNX Runtime) with the warnings it raises ignored.

    Those warnings are about the libraries' own internals: TensorFlow's int8 calibration builds a
    ``tf.lite.Interpreter`` and warns that it is deprecated. Under a caller's
    ``warnings.simplefilter("error")`` (pytest's ``filterwarnings = error``) that warning became an
    exception, and the tflite-int8 target failed with it. deploykit's own warnings are raised outside
    such calls (``deploykit.convert`` raises its warnings at the end), so they still reach the caller;
    a warning the caller's other threads raise meanwhile is ignored too (filters are per process).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings_ignored():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
