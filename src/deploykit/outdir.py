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
from pathlib import Path
from typing import Any, Iterator, Sequence

from deploykit.artifacts import MANIFEST_NAME, Manifest
from deploykit.errors import OutputExistsError, UserError

REPORT_FILES = ("report.md", "report.html", "size_vs_latency.svg")
# What a target directory holds after a deploykit run: a directory that holds anything else is not
# one of ours, and --force must not delete it.
_ARTIFACT_FILE = re.compile(r"(model\.(tflite|onnx|onnx\.data|json)|model_data\.(h|cc)|model_io\.h|group\d+-shard\d+of\d+\.bin"
                            r"|.*\.partial)")


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
    # Found now, not when the first artifact is written after minutes of work.
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create output directory {out}: {existing} is a file; pass a directory path")
    try:  # os.access says yes to root on read-only mounts and /proc: try it
        tempfile.TemporaryDirectory(dir=existing, prefix=".deploykit-probe-").cleanup()
    except OSError as exc:
        raise UserError(f"cannot write to {existing} ({exc.strerror or exc}); choose another --out") from None
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"output directory {out} exists and is not empty; choose another --out or pass --force (force=True in Python) to overwrite")
    for name in target_names:
        place = out / name
        if place.is_symlink() or (place.exists() and not place.is_dir()):
            raise OutputExistsError(f"{place} is a {'symlink' if place.is_symlink() else 'file'} where deploykit writes "
                                    f"target {name!r}; move it away or choose another --out")
    if force and out.is_dir():
        previous = previous_run_files(out)  # refuses files deploykit would overwrite but did not write
        previous += [out / n for n in target_names if (out / n).is_dir() and out / n not in previous]
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

    def release(self) -> None:
        """Remove the lock file and drop the claim (once; later calls do nothing)."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:  # ours, not a later run's
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def _held_lock(path: Path) -> int | None:
    """An fd holding ``path``'s flock when nobody else holds it (a killed run's lock), else None.

    Raises:
        FileNotFoundError: there is no such lock file.
        _Live: a live run holds it (its pid, when written, in ``args[0]``).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        try:
            pid = int(path.read_text().split()[0])
        except (ValueError, OSError, IndexError):
            pid = None
        raise _Live(pid) from None
    return fd


class _Live(Exception):
    """A live run holds the lock."""


def lock_out_dir(out: Path, target_names: Sequence[str] = ()) -> OutDirLock:
    """Claim ``out`` for this run: two runs started together into one directory passed the
    emptiness check together, then each wrote its manifest over the other's. The lock also names
    the run's targets, so that what a killed run wrote can be told from what it set aside.

    The lock file is written and locked under a temporary name, then linked into place: no other
    run ever sees it unlocked (and takes it for a killed run's).

    Raises:
        OutputExistsError: another live deploykit process holds the directory.
    """
    lock = out / LOCK_NAME
    for _ in range(3):
        fd, tmp = tempfile.mkstemp(prefix=LOCK_NAME + "-", dir=out)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: never waits
        os.write(fd, (f"{os.getpid()}\n" + "\n".join(target_names)).encode())
        try:
            os.link(tmp, lock)
        except FileExistsError:
            os.unlink(tmp)
            os.close(fd)
            try:
                stale = _held_lock(lock)
            except FileNotFoundError:
                continue
            except _Live as live:
                who = f"pid {live.args[0]}" if live.args[0] else "a live process"
                raise OutputExistsError(f"another deploykit run ({who}) is writing to {out}; wait for it to finish "
                                        "or choose another --out") from None
            os.close(stale)
            recover_killed_run(out)  # a killed run's claim: put back what it set aside, then claim again
            continue
        except OSError:  # a file system without hard links: created in place (a start-together race remains)
            os.unlink(tmp)
            os.close(fd)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (f"{os.getpid()}\n" + "\n".join(target_names)).encode())
            return OutDirLock(lock, fd)
        os.unlink(tmp)
        return OutDirLock(lock, fd)
    raise OutputExistsError(f"could not claim {out} ({lock} keeps reappearing); choose another --out")


def recover_killed_run(out: Path) -> None:
    """Put back a previous run that a killed --force run (SIGKILL, power loss) had set aside.

    A live run holds the lock and is left alone. Otherwise, by the set-aside directory's journal:
    set aside only in part (killed while moving it), it is moved back and nothing else is touched;
    set aside whole, what the killed run wrote is removed and the previous run moved back; being
    restored (killed while putting it back), the rest is moved back. A finished run's discarded
    previous run is deleted. Nothing complete is ever lost.
    """
    if not out.is_dir():
        return
    lock = out / LOCK_NAME
    asides = sorted(out.glob(".deploykit-previous-*"))
    leftovers = sorted(out.glob(".deploykit-discard-*")) + sorted(out.glob(LOCK_NAME + "-*"))
    if not asides and not leftovers and not lock.exists():
        return
    try:
        held = _held_lock(lock)
    except FileNotFoundError:
        held = None
    except _Live:
        return  # its run is alive: everything here is its business
    try:
        for path in leftovers:  # a finished run's old files on their way out, a claim never linked into place
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    fd = _held_lock(path)
                except (FileNotFoundError, _Live):
                    continue  # gone, or a run claiming the directory right now
                path.unlink(missing_ok=True)
                os.close(fd)
        try:  # the killed run's targets: their directories hold its unlisted, unreported artifacts
            written = [n for n in lock.read_text().split()[1:] if n and "/" not in n and not n.startswith(".")]
        except OSError:
            written = []
        if not asides and not (out / MANIFEST_NAME).exists():  # killed before its manifest, nothing set aside
            _remove_written(out, written, kept=set())
        for aside in asides:
            _put_back(out, aside, written)
        lock.unlink(missing_ok=True)
    finally:
        if held is not None:
            os.close(held)


def _put_back(out: Path, aside: Path, written: Sequence[str]) -> None:
    """Move a killed run's set-aside previous run back into ``out`` (see :func:`recover_killed_run`)."""
    complete, restoring = (aside / _COMPLETE).exists(), (aside / _RESTORING).exists()
    entries = [p for p in aside.iterdir() if p.name not in _JOURNAL]
    if complete and not restoring:  # the killed run worked after the set-aside: what it wrote goes
        _remove_written(out, written, kept={p.name for p in entries})
    unplaced = False
    for path in entries:
        dest = out / path.name
        if dest.exists() or dest.is_symlink():
            if not complete or restoring:  # cannot be the killed run's: keep both, lose nothing
                unplaced = True
                continue
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        os.replace(path, dest)
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


def discard_previous_run(out: Path, aside: Path | None) -> None:
    """Delete the set-aside previous run once the new run has finished: renamed first (one atomic
    step), so that a run killed while deleting it leaves a discard, never half a run to put back."""
    if aside is None:
        return
    gone = out / (".deploykit-discard-" + aside.name.removeprefix(".deploykit-previous-"))
    os.replace(aside, gone)
    shutil.rmtree(gone, ignore_errors=True)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM wait until the block ends (the signals that came are listed), so that a
    Ctrl-C cannot cut short moving a run aside or back, or the end of a finished run. Only in the main
    thread, where Python handles signals, and only over handlers Python set."""
    caught: list[int] = []
    signums = (signal.SIGINT, signal.SIGTERM)
    saved = {s: signal.getsignal(s) for s in signums} if threading.current_thread() is threading.main_thread() else {}
    if any(h is None for h in saved.values()):
        saved = {}
    for s in saved:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
