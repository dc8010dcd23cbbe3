"""The output directory of a run: refusing one the run cannot use, claiming it, and keeping the
previous run whole until the new one has finished.

With --force the previous run is set aside (moved under a hidden name in the same directory),
put back when the new run fails or is interrupted, and deleted when it finishes. A run killed
with SIGKILL leaves its claim (the lock naming its targets, which no process holds any more) and
the set-aside run, with its journal, behind: the next run puts that back before anything else.
Files deploykit did not write are never replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from deploykit.artifacts import FAILED_PREFIX, MANIFEST_NAME, Manifest
from deploykit.errors import OutputExistsError, UserError
from deploykit.tmpdirs import try_flock

REPORT_FILES = ("report.md", "report.html", "size_vs_latency.svg")
# What a target directory holds after a deploykit run: a directory that holds anything else is not
# one of ours, and --force must not delete it.
_ARTIFACT_FILE = re.compile(rf"(({re.escape(FAILED_PREFIX)})?model\.(tflite|onnx|onnx\.data|json)|model_data\.(h|cc)"
                            r"|model_io\.h|group\d+-shard\d+of\d+\.bin|.*\.partial)")


def check_out_dir(out: Path, force: bool, target_names: Sequence[str] = (), model: Any = None,
                   inputs: Sequence[Any] = ()) -> None:
    """Refuse an output directory this run cannot use, before any work (writing nothing, except
    putting back a previous run that a killed run had set aside).

    ``inputs`` are the run's other input files (data, eval and train data): with --force, none may lie
    in what the run replaces.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is a file; pass a directory path")
    # A run killed with SIGKILL left the previous run set aside and its own targets unlisted: put the
    # previous run back first (the one write before any work), so this run sees what the user had.
    recover_killed_run(out)
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        model_dir = Path(model).resolve()
        if out.resolve() == model_dir or model_dir in out.resolve().parents:
            raise UserError(f"output {out} is inside the model's SavedModel directory {model}; choose an --out outside it")
    _refuse_inside_a_run(out)
    if out.is_symlink() and not out.exists():  # mkdir said "File exists" of a path that does not exist
        raise UserError(f"output {out} is a symlink to {os.readlink(out)}, which does not exist; create that "
                        "directory or choose another --out")
    # Found now, not when the first artifact is written after minutes of work.
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create output directory {out}: {existing} is a file; pass a directory path")
    try:  # os.access says yes to root on read-only mounts and /proc: try it
        tempfile.TemporaryDirectory(dir=existing, prefix=".deploykit-probe-").cleanup()
    except OSError as exc:
        where = f"cannot write to {existing}" if existing == out else f"cannot create {out} in {existing}"
        raise UserError(f"{where} ({exc.strerror or exc}); choose another --out") from None
    if out.exists() and any(not p.name.startswith(LOCK_NAME) for p in out.iterdir()) and not force:
        raise OutputExistsError(f"output directory {out} exists and is not empty; choose another --out or pass --force to overwrite")
    for name in target_names:
        place = out / name
        if place.is_symlink() or (place.exists() and not place.is_dir()):
            raise OutputExistsError(f"{place} is a {'symlink' if place.is_symlink() else 'file'} where deploykit writes "
                                    f"target {name!r}; move it away or choose another --out")
    if force and out.is_dir():
        previous = previous_run_files(out)  # refuses files deploykit would overwrite but did not write
        for place in (out / n for n in target_names if (out / n).is_dir() and out / n not in previous):
            # Named like this run's target but listed by no deploykit manifest: a file named model.tflite
            # in it is someone's own (copied there, or left after its manifest was deleted), not a run's.
            held = sorted(f.name for f in place.iterdir() if not f.name.endswith(".partial"))
            if held:
                raise OutputExistsError(
                    f"{place} holds {', '.join(held[:3])}{' …' if len(held) > 3 else ''}, which no deploykit manifest in "
                    f"{out} lists, and --force would replace it with target {place.name!r}; move it away or choose "
                    "another --out")
            previous.append(place)
        for place in (p for p in previous if p.is_dir()):  # a previous run's, or named like this run's targets
            foreign = sorted(f.name for f in place.iterdir() if not _ARTIFACT_FILE.fullmatch(f.name))
            if foreign:
                raise OutputExistsError(
                    f"{place} holds {', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''}, which deploykit did not "
                    f"write, and --force would delete it with the rest of target {place.name!r}; move it away or choose "
                    "another --out")
        replaced = [p.resolve() for p in previous]
        for given in [model, *inputs]:
            if not isinstance(given, (str, os.PathLike)):
                continue
            path = Path(given).resolve()
            hit = next((r for r in replaced if path == r or r in path.parents), None)
            if hit is not None:
                raise UserError(f"{given} lies in {hit}, which --force replaces with this run's output; move it out of "
                                f"{out} or choose another --out")


def _refuse_inside_a_run(out: Path) -> None:
    """Refuse an ``out`` inside a target folder of a deploykit run further up: its manifest and reports
    landed beside that run's artifact, and the outer run could then never be replaced (--force refused
    the files it had not written)."""
    here = out.resolve()
    for run in here.parents:
        if not (run / MANIFEST_NAME).is_file():
            continue
        try:
            artifacts = Manifest.read(run / MANIFEST_NAME).artifacts
        except Exception:  # noqa: BLE001 - not a deploykit manifest: not a run
            continue
        for a in artifacts:
            folder = (run / a.path).parent if a.path else None
            if folder is not None and folder.resolve() != run and (folder.resolve() == here or folder.resolve() in here.parents):
                raise UserError(f"output {out} is inside {folder}, target {a.target!r} of the deploykit run in {run}; "
                                "choose an --out outside that run's target folders")


def previous_run_files(out: Path) -> list[Path]:
    """What a previous deploykit run wrote here (its target directories, manifest and reports).

    Raises:
        OutputExistsError: a manifest.json that is not deploykit's, or reports beside no manifest:
            files of someone else's (a web app's manifest.json) that --force must not replace.
    """
    manifest = out / MANIFEST_NAME
    files = [out / name for name in (MANIFEST_NAME, *REPORT_FILES) if (out / name).exists()]
    dirs: list[Path] = []
    if manifest.exists():
        try:
            old = Manifest.read(manifest)
        except Exception:  # noqa: BLE001 - not ours: refused below
            raise OutputExistsError(f"{manifest} is not a deploykit manifest, and --force would replace it; choose "
                                    "another --out") from None
        for a in old.artifacts:
            target_dir = (out / a.path).parent
            if a.path and target_dir.resolve().parent == out.resolve() and target_dir.is_dir() and not target_dir.is_symlink():
                dirs.append(target_dir)
    elif files:
        raise OutputExistsError(f"{out} holds {', '.join(f.name for f in files)} but no deploykit manifest: they are not "
                                "a deploykit run's, and --force would replace them; choose another --out")
    return sorted(set(dirs)) + files


LOCK_NAME = ".deploykit.lock"
# Journal files inside a set-aside directory: what a killed run left can be told apart by them.
_COMPLETE = ".complete"    # every previous file is in the set-aside directory (the new run may then write)
_RESTORING = ".restoring"  # the new run's own files are gone, and the previous ones are on their way back
_JOURNAL = (_COMPLETE, _RESTORING)


class OutDirLock:
    """A run's claim on its output directory: the lock file, held with ``flock`` for the life of the run.

    The kernel drops an flock when its process dies, however it dies: a lock file nobody holds is a
    killed run's. (A pid in the file said the same only while pids were not reused: a run killed as a
    container's pid 1 left "1", which the next container's run, pid 1 itself, took for a live run.)
    The file also names the run's pid (for the message) and its targets (for recovery).
    """

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def same_file(self, path: Path) -> bool:
        """Whether ``path`` is this lock's file (the temporary name it was linked from)."""
        try:
            return self._fd is not None and os.path.samestat(os.fstat(self._fd), os.stat(path))
        except OSError:
            return False

    def release(self) -> None:
        """Remove the lock file and drop the claim (once; later calls do nothing)."""
        if self._fd is None:
            return
        if self.same_file(self.path):  # ours, not a later run's
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


class _Live(Exception):
    """A live run holds the lock (its pid, when the file says, in ``args[0]``)."""


def _new_lock_file(out: Path, content: bytes) -> tuple[int, str]:
    """A lock file under a temporary name, already flock'd and written: linked or renamed into place,
    no other run ever sees it unlocked (and takes it for a killed run's)."""
    fd, tmp = tempfile.mkstemp(prefix=LOCK_NAME + "-", dir=out)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: never waits
    os.write(fd, content)
    return fd, tmp


def _take_stale(lock: Path) -> tuple[int, str] | None:
    """Hold a killed run's lock file: an fd with its flock and what the file says; None when it is gone
    (or was replaced between opening and locking it: the flock would be on a file no longer there).

    Raises:
        _Live: a live run holds it.
    """
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except PermissionError:  # another user's run (live or not): not this run's to take over
        raise OutputExistsError(f"{lock} is another user's deploykit claim on {lock.parent}; choose another --out") from None
    if not try_flock(fd):
        try:
            pid = int(os.pread(fd, 64, 0).split()[0])
        except (ValueError, OSError, IndexError):
            pid = None
        os.close(fd)
        raise _Live(pid) from None
    try:
        current = os.path.samestat(os.fstat(fd), os.stat(lock))
    except FileNotFoundError:
        current = False
    if not current:
        os.close(fd)
        return None
    return fd, os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")


def lock_out_dir(out: Path, target_names: Sequence[str] = ()) -> OutDirLock:
    """Claim ``out`` for this run, then put back what a killed run left (see :func:`recover_killed_run`).

    Two runs started together into one directory passed the emptiness check together, then each
    wrote its manifest over the other's: the lock keeps the second out. A killed run's lock is taken
    over in one step (its flock, then this run's own file renamed over it), so recovery always runs
    under a claim: two runs never recover, or claim, at once. The lock names the run's targets, so
    that what a killed run wrote can be told from what it set aside.

    Raises:
        OutputExistsError: another live deploykit process holds the directory.
    """
    lock = out / LOCK_NAME
    content = (f"{os.getpid()}\n" + "\n".join(target_names)).encode()
    for _ in range(5):
        fd, tmp = _new_lock_file(out, content)
        try:
            os.link(tmp, lock)
        except FileExistsError:
            try:
                stale = _take_stale(lock)
            except OutputExistsError:
                os.close(fd)
                os.unlink(tmp)
                raise
            except _Live as live:
                os.close(fd)
                os.unlink(tmp)
                who = f"pid {live.args[0]}" if live.args[0] else "a live process"
                raise OutputExistsError(f"another deploykit run ({who}) is writing to {out}; wait for it to finish "
                                        "or choose another --out") from None
            if stale is None:
                os.close(fd)
                os.unlink(tmp)
                continue
            old_fd, killed = stale
            old_file = os.fstat(old_fd)
            os.replace(tmp, lock)  # this run's locked file in place of the killed run's
            os.close(old_fd)
        except FileNotFoundError:  # our temporary name was removed meanwhile (a recovery took it for debris)
            os.close(fd)
            continue
        except OSError:  # a file system without hard links: renamed into place (a start-together race remains)
            if lock.exists():
                os.close(fd)
                os.unlink(tmp)
                continue
            os.replace(tmp, lock)
            killed, old_file = None, None
        else:
            killed, old_file = None, None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        claim = OutDirLock(lock, fd)
        try:
            with signals_held():
                _recover(out, claim, killed, old_file)
        except BaseException:
            claim.release()
            raise
        return claim
    raise OutputExistsError(f"could not claim {out} ({lock} keeps changing); choose another --out")


def recover_killed_run(out: Path) -> None:
    """Put back a previous run that a killed --force run (SIGKILL, power loss) had set aside, before
    any work: the directory is claimed (unless a live run holds it: then nothing is touched),
    recovered and let go.

    By the set-aside directory's journal: set aside only in part (killed while moving it), it is moved
    back and nothing else is touched; set aside whole, what the killed run wrote is removed and the
    previous run moved back; being put back (killed while doing so), the rest is moved back. A
    finished run's discarded previous run is deleted. Nothing complete is ever lost.
    """
    if not out.is_dir():
        return
    if not any(p.name.startswith(".deploykit") and not p.name.startswith(".deploykit-probe-") for p in out.iterdir()):
        return  # nothing a run leaves behind
    try:
        lock_out_dir(out).release()
    except OutputExistsError:
        return  # a live run: everything here is its business


# A temporary lock file younger than this may be a starting run's, about to be locked.
_FRESH_LOCK_S = 60.0


def _recover(out: Path, claim: OutDirLock, killed: str | None, killed_file: os.stat_result | None) -> None:
    """What a killed run left, put right under this run's claim. ``killed``: its lock file's text;
    ``killed_file``: that file's stat (a temporary name it still has is its own)."""
    written = [n for n in (killed or "").split()[1:] if n and "/" not in n and not n.startswith(".")]
    for path in sorted(out.glob(".deploykit-discard-*")):  # a finished run's old files on their way out
        shutil.rmtree(path, ignore_errors=True)
    for path in sorted(out.glob(LOCK_NAME + "-*")):  # temporary names of claims never linked into place
        _remove_unlocked(path, claim, killed_file)
    asides = sorted(out.glob(".deploykit-previous-*"))
    if killed is not None and not asides and not (out / MANIFEST_NAME).exists():
        _remove_written(out, written, kept=set())  # killed before its manifest, nothing set aside
    for aside in asides:
        _put_back(out, aside, written)


def _remove_unlocked(path: Path, claim: OutDirLock, killed_file: os.stat_result | None) -> None:
    """Remove a temporary lock file unless a live run may still be using it."""
    try:
        if claim.same_file(path) or (killed_file is not None and os.path.samestat(killed_file, path.stat())):
            path.unlink()  # the killed run's lock under its temporary name too (killed between link and unlink)
            return
        if time.time() - path.stat().st_mtime < _FRESH_LOCK_S:
            return
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if try_flock(fd):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _put_back(out: Path, aside: Path, written: Sequence[str]) -> None:
    """Move a killed run's set-aside previous run back into ``out`` (see :func:`recover_killed_run`).

    Set aside whole, the killed run's own files go first, then ``.restoring`` marks that only moves
    are left: a recovery cut short then resumes the moves and deletes nothing (it took the previous
    run's directories already moved back for the killed run's).
    """
    entries = [p for p in aside.iterdir() if p.name not in _JOURNAL]
    if (aside / _COMPLETE).exists() and not (aside / _RESTORING).exists():
        _remove_written(out, written, kept={p.name for p in entries})
        for path in entries:
            dest = out / path.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
        (aside / _RESTORING).touch()
    unplaced = False
    for path in entries:
        if (out / path.name).exists() or (out / path.name).is_symlink():
            unplaced = True  # cannot be the killed run's here: keep both, lose nothing
            continue
        os.replace(path, out / path.name)
    if not unplaced:
        shutil.rmtree(aside)


def _remove_written(out: Path, written: Sequence[str], kept: set[str]) -> None:
    """Remove a killed run's target directories (``written``, those not in ``kept``) that hold only
    artifact files: its unlisted, unreported output."""
    for name in written:
        place = out / name
        if name not in kept and place.is_dir() and not place.is_symlink() and all(
                _ARTIFACT_FILE.fullmatch(f.name) for f in place.iterdir()):
            shutil.rmtree(place)


def set_aside_previous_run(out: Path, target_names: Sequence[str]) -> Path | None:
    """With --force: move the previous run (and this run's target directories) into a hidden
    directory under ``out``; the run restores it if it does not finish, and discards it if it does.

    Raises:
        UserError: a file that cannot be moved (permissions); what was moved is put back first.
    """
    moving = previous_run_files(out)
    moving += [out / n for n in target_names if (out / n).is_dir() and not (out / n).is_symlink() and out / n not in moving]
    if not moving:
        return None
    aside = Path(tempfile.mkdtemp(prefix=".deploykit-previous-", dir=out))
    moved: list[Path] = []
    try:
        for path in moving:
            os.replace(path, aside / path.name)
            moved.append(path)
    except OSError as exc:
        for path in reversed(moved):
            os.replace(aside / path.name, path)
        shutil.rmtree(aside, ignore_errors=True)
        raise UserError(f"cannot move {exc.filename or path} aside to replace it ({exc.strerror or exc}); make it "
                        "writable or choose another --out") from None
    (aside / _COMPLETE).touch()
    return aside


def restore_previous_run(out: Path, aside: Path | None) -> None:
    """Move a run set aside by :func:`set_aside_previous_run` back in place (the new run did not
    finish, and its own files are already removed)."""
    if aside is None:
        return
    (aside / _RESTORING).touch()
    for path in aside.iterdir():
        if path.name not in _JOURNAL:
            os.replace(path, out / path.name)
    shutil.rmtree(aside)


def discard_previous_run(out: Path, aside: Path | None) -> Path | None:
    """Once the new run has finished: rename the set-aside previous run to a discard (one atomic step,
    so that a run killed while deleting it leaves a discard, never half a run to put back); returns
    the discard for the caller to delete (:func:`shutil.rmtree`; a killed run's is deleted by the next)."""
    if aside is None:
        return None
    gone = out / (".deploykit-discard-" + aside.name.removeprefix(".deploykit-previous-"))
    os.replace(aside, gone)
    return gone


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM wait until the block ends, then arrive as they would have (their handlers are
    put back and the signals raised again), so that a Ctrl-C cannot cut short moving a run aside or
    back. Yields the list of signals that came. Only in the main thread, where Python handles signals,
    only over handlers Python set, and a signal the process ignores stays ignored."""
    caught: list[int] = []
    signums = (signal.SIGINT, signal.SIGTERM)
    saved = {s: signal.getsignal(s) for s in signums} if threading.current_thread() is threading.main_thread() else {}
    saved = {s: h for s, h in saved.items() if h is not None and h != signal.SIG_IGN}
    for s in saved:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)
