"""deploykit's temporary directories, and the removal of those a killed run left behind.

A run exports the model to a SavedModel in ``$TMPDIR`` (hundreds of MB for real models) and
makes smaller directories for ONNX quantization, profiling and the like. They are removed when
the run ends, even on Ctrl-C; a SIGKILL (OOM killer, CI cancel, ``timeout -s KILL``) left them
behind for good.

Every directory is made here, and its process holds an ``fcntl.flock`` on the directory itself
for as long as it lives. The kernel drops that lock when the process dies, however it dies, so
a directory whose lock can be taken has no live owner: :func:`remove_stale` (called as a run
starts) removes those. The lock is taken before the directory gets the name the sweep looks for
(it is made under a hidden staging name, locked, then renamed), so a live run's directory is never
taken for a dead one's; directories of deploykit versions without the lock are named otherwise and
left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; directories are still removed at the end of a run
    fcntl = None  # type: ignore[assignment]

PREFIX = "deploykit-"
SUFFIX = "-flock"  # marks a directory made here: older deploykits' live directories carry no lock
STAGING = "." + PREFIX  # the name before the lock is held: never taken for a dead run's
STAGING_GRACE_S = 3600  # a staging directory older than this whose lock is free was left by a kill


class TempDir:
    """A temporary directory ``$TMPDIR/deploykit-<kind>-XXXX-flock``, locked while this process holds it.

    Used like ``tempfile.TemporaryDirectory``: ``.name``, ``.cleanup()``, and as a context manager
    that gives the path as a string. Removed on cleanup, garbage collection or interpreter exit.
    """

    def __init__(self, kind: str):
        staged = Path(tempfile.mkdtemp(prefix=f"{STAGING}{kind}-{os.getpid()}-", suffix=SUFFIX))
        fd = _lock(staged)
        final = staged.with_name(staged.name[1:])
        try:
            os.rename(staged, final)  # the lock is on the directory itself: it moves with it
        except OSError:
            _remove(str(staged), fd)
            raise
        self.name = str(final)
        self._finalizer = weakref.finalize(self, _remove, self.name, fd)

    def cleanup(self) -> None:
        """Remove the directory (and let go of its lock); a second call does nothing."""
        self._finalizer()

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<TempDir {self.name!r}>"


def try_flock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting: False when another open file holds it (its
    process is alive) or the file system has no flock. The one test of "is its owner alive" that
    temporary directories and output-directory claims (:mod:`deploykit.outdir`) share."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding an exclusive flock, or None where flock is not available."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    if not try_flock(fd):  # a file system without flock: the directory is made, just not protected
        os.close(fd)
        return None
    return fd


def _remove(name: str, fd: int | None) -> None:
    # Removed before the lock goes: a sweep that takes the lock finds nothing left to remove.
    shutil.rmtree(name, ignore_errors=True)
    if fd is not None:
        os.close(fd)


def remove_stale(directory: str | Path | None = None) -> list[str]:
    """Remove the temporary directories of deploykit runs that were killed (their lock is free).

    Directories of live runs (this process's, and any other process's) hold their lock and are left
    alone, as is anything not made by :class:`TempDir`. Errors (another user's directory, a
    directory removed meanwhile) are ignored: this is housekeeping and never fails a run.

    Returns:
        The paths removed.
    """
    if fcntl is None:
        return []
    root = Path(directory or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    now = time.time()
    for entry in entries:
        staged = entry.name.startswith(STAGING)
        if not (entry.name.startswith(PREFIX) or staged) or not entry.name.endswith(SUFFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if staged and now - entry.stat(follow_symlinks=False).st_mtime < STAGING_GRACE_S:
                continue  # may be being made right now, before its lock is taken
            if _remove_if_unlocked(entry.path):
                removed.append(entry.path)
        except OSError:
            continue
    return removed


def _remove_if_unlocked(path: str) -> bool:
    """Remove ``path`` if no process holds its lock; the lock is held while removing it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if not try_flock(fd):  # held: its run is alive
            return False
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.exists(path)
    finally:
        os.close(fd)
