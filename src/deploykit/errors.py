"""The deploykit error family.

Every error deploykit raises on purpose is a :class:`DeployError`. Mistakes in
what the user handed us (a bad model file, unfit data, an unknown target name,
an output directory that would be overwritten) subclass :class:`ValueError` as
well, so plain Python callers can catch them the usual way. The CLI maps every
``DeployError`` to one line on stderr and exit code 2.

Messages name the bad value, what would have been valid, and how to fix it.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import os
from typing import Any, Callable, Iterator


class DeployError(Exception):
    """Base of every error deploykit raises on purpose."""


class UserError(DeployError, ValueError):
    """Something the user handed us is wrong; the message says how to fix it."""


class ModelLoadError(UserError):
    """The model file is missing, corrupt, or refused (untrusted code)."""


class UntrustedModelError(ModelLoadError):
    """The model carries code (Lambda, TFSMLayer, custom objects) and was not trusted."""


class DataError(UserError):
    """Data is empty, non-finite, or does not fit the model's inputs."""


class TargetError(UserError):
    """Unknown target name or an impossible target setting."""


class OutputExistsError(UserError):
    """The output directory exists and is not empty, and ``force`` was not given."""


class ConversionError(DeployError):
    """A converter could not produce an artifact for one target.

    Not a user error: the run records the target as failed and goes on with
    the other targets.
    """


class RuntimeLoadError(DeployError):
    """A runtime could not load or run an artifact."""


# The convert() keyword (or fine-tune setting) of each CLI flag messages name: the messages are shared
# by the CLI and the Python API, and a notebook caller was told to pass "--data" or "--epochs".
PYTHON_TERMS = {
    "--data": "data=", "--eval-data": "eval_data=", "--out": "out=", "--force": "force=True",
    "--trust-model": "trust_model=True", "--label-output": "label_output=", "--train-data": "train_data=",
    "--verify-samples": "verify_samples=", "--threads": "threads=", "--iterations": "iterations=",
    "--warmup": "warmup=", "--no-bench": "bench=False", "--prune": "prune=", "--cluster": "cluster=",
    "--qat": "qat=True", "--epochs": "'epochs' in the step's settings dict",
    "--loss": "'loss' in the step's settings dict", "--patience": "'patience' in the step's settings dict",
    "--learning-rate": "'learning_rate' in the step's settings dict",
    "--prune-schedule": "prune={'schedule': ...}", "--prune-structure": "prune={'structure': ...}",
    "--prune-block": "prune={'block_size': ...}", "--cluster-epochs": "cluster={'epochs': ...}",
    "--browser": "browser=True", "--backend": "backend=", "--runtime": "runtime=",
}


# The bench settings deploykit.convert takes as keywords (threads=...), named at the start of a shared
# message ("bench.threads must be ...") as the keyword the caller passed.
PYTHON_SETTINGS = {"bench.threads": "threads", "bench.warmup": "warmup", "bench.iterations": "iterations"}


def in_python_terms(text: str) -> str:
    """``text`` (a message naming CLI flags) with the Python API's names of those flags after it,
    for a caller of :func:`deploykit.convert`; flags whose keyword the text already gives are left out.
    A message starting with a bench setting a keyword fills names the keyword (see :func:`in_cli_terms`)."""
    import re

    if " (in Python: " in text:  # said already, by an entry point this one called
        return text
    text = _lead_renamed(text, PYTHON_SETTINGS)
    flags = dict.fromkeys(f for f in re.findall(r"--[a-z][a-z-]*[a-z]", text) if f in PYTHON_TERMS)
    said = [f"{f} is {PYTHON_TERMS[f]}" for f in flags
            if not (PYTHON_TERMS[f].endswith(("=", "=True", "=False")) and PYTHON_TERMS[f].split("=")[0] + "=" in text)]
    return f"{text} (in Python: {', '.join(said)})" if said else text


# The other way round, for the CLI: the setting (Python keyword, settings-dict key or target field) that
# a flag fills, named at the start of a shared message ("bench.iterations must be ..."), as the flag the
# user typed. Fine-tune settings checked for clustering are not here: its epochs come from --cluster-epochs,
# which the CLI checks itself.
CLI_FLAGS = {
    "verify_samples": "--verify-samples", "bench.threads": "--threads", "bench.warmup": "--warmup",
    "bench.iterations": "--iterations", "sparsity": "--prune", "clusters": "--cluster", "epochs": "--epochs",
    "learning_rate": "--learning-rate", "patience": "--patience", "block_size": "--prune-block",
}


def in_cli_terms(text: str) -> str:
    """``text`` (a message about a value the CLI filled from a flag) naming that flag instead of the setting:
    only the name the message starts with is replaced, so a .toml file's ``bench.iterations`` stays."""
    return _lead_renamed(text, CLI_FLAGS)


def _lead_renamed(text: str, names: dict[str, str]) -> str:
    """``text`` with the setting name it starts with ("bench.threads must be ...") replaced by ``names``'s."""
    import re

    match = re.match(r"[a-z_.]+(?= )", text)
    if match is None or match.group() not in names:
        return text
    return names[match.group()] + text[match.end():]


@contextlib.contextmanager
def reworded(kind: type[Exception], rewrite: Callable[[str], str]) -> Iterator[None]:
    """Re-raise a ``kind`` error from inside with its message passed through ``rewrite`` (same class)."""
    try:
        yield
    except kind as exc:
        if len(exc.args) != 1 or not isinstance(exc.args[0], str):  # deploykit's errors carry one message
            raise
        raise type(exc)(rewrite(exc.args[0])) from None


# Set while the ``deploy`` CLI calls an API entry point: its messages then stay in the flags' terms.
_CLI_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar("deploykit_cli_caller", default=False)


@contextlib.contextmanager
def called_from_cli() -> Iterator[None]:
    """The API entry points called inside keep their messages in CLI terms (see :func:`at_api_boundary`)."""
    token = _CLI_CALLER.set(True)
    try:
        yield
    finally:
        _CLI_CALLER.reset(token)


def api_entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run inside :func:`at_api_boundary` (a public method a caller reaches without convert())."""

    @functools.wraps(fn)
    def entry(*args: Any, **kwargs: Any) -> Any:
        with at_api_boundary():
            return fn(*args, **kwargs)

    return entry


@contextlib.contextmanager
def at_api_boundary() -> Iterator[None]:
    """What the API's entry points raise: DeployErrors in a Python caller's terms (:func:`in_python_terms`:
    they share the CLI's messages, which name flags; not when the CLI is the caller, see
    :func:`called_from_cli`), and a path no file can have as the user error it is."""
    try:
        with reworded(DeployError, (lambda text: text) if _CLI_CALLER.get() else in_python_terms):
            yield
    except OSError as exc:
        refusal = path_refusal(exc)
        if refusal is None:
            raise
        raise refusal from None
    except UnicodeEncodeError as exc:
        if exc.reason != "surrogates not allowed":
            raise
        # A str path holding bytes that are not UTF-8 (os.fsdecode's surrogates): it reached the reports' text.
        raise UserError(not_utf8(exc.object)) from None


def missing(path: Any) -> str:
    """How a path that does not exist is said: a symlink to nothing (missing, or a loop to itself) as one."""
    from pathlib import Path

    return "is a symbolic link to nothing (missing, or a loop)" if Path(path).is_symlink() else "does not exist"


def not_utf8(name: str) -> str:
    """The refusal of a name (path, argument) whose bytes are not UTF-8, which Python keeps as surrogates:
    it reaches the reports, the runtimes and the manifest, which take text (a UnicodeEncodeError traceback)."""
    shown = os.fsencode(name).decode("utf-8", errors="backslashreplace")
    return (f"'{shown}' is not UTF-8 text (a name written in another encoding); rename the file or directory to a "
            "UTF-8 name and pass that")


def path_refusal(exc: OSError) -> UserError | None:
    """The user error an OSError about a path the user gave stands for, or None when it is not one.

    A name longer than the filesystem takes (255 bytes): pathlib's exists() and is_dir() raise it
    where they say False for a missing file, so it surfaced from wherever a given path was first looked at.
    """
    if exc.errno != errno.ENAMETOOLONG:
        return None
    name = str(exc.filename or "")
    shown = name if len(name) <= 80 else f"{name[:40]}…{name[-30:]}"
    return UserError(f"path {shown} cannot be used: {exc.strerror} (a file or directory name can have at most 255 "
                     "bytes, a whole path 4096); choose a shorter name")


def disk_full(exc: BaseException, where: str | None = None) -> OSError | None:
    """The OSError a full disk stands for, or None when ``exc`` is about something else.

    TensorFlow's own writers (SavedModel export, the TFLite converter's temp files) say "No space left on
    device" inside their op errors, with a ``{{function_node ...}}`` prefix and a temp file's name; as an
    ENOSPC OSError it gets the CLI's one line (free space, or another --out or TMPDIR).
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return exc
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT):
        if os.strerror(code) in text:
            if where is None:
                import tempfile

                where = tempfile.gettempdir()
            return OSError(code, os.strerror(code), where)
    return None
