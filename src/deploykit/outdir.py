"""The output directory of a run: refusing one the run cannot use, claiming it, and keeping the
previous run whole until the new one has finished.

With --force the previous run is set aside (moved under a hidden name in the same directory),
put back when the new run fails or is interrupted, and deleted when it finishes. A run killed
with SIGKILL leaves its claim (the lock naming its targets) and the set-aside run behind: the
next run puts that back before anything else. Files deploykit did not write are never replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

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


def _lock_holder(lock: Path) -> int | None:
    """The pid of the live process that holds ``lock``, or None (no lock, unreadable, or its process is gone)."""
    try:
        pid = int(lock.read_text().split()[0])  # first line; the run's target names follow
    except (ValueError, OSError, IndexError):
        return None
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return pid


def lock_out_dir(out: Path, target_names: Sequence[str] = ()) -> Path:
    """Claim ``out`` for this run: two runs started together into one directory passed the
    emptiness check together, then each wrote its manifest over the other's. The lock also names
    the run's targets, so that what a killed run wrote can be told from what it set aside.

    Raises:
        OutputExistsError: another live deploykit process holds the directory.
    """
    lock = out / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_holder(lock)
            if pid is None:
                lock.unlink(missing_ok=True)  # left by a killed run
                continue
            raise OutputExistsError(f"another deploykit run (pid {pid}) is writing to {out}; wait for it to finish "
                                    "or choose another --out") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n" + "\n".join(target_names))
        return lock
    raise OutputExistsError(f"could not claim {out} ({lock} keeps reappearing); choose another --out")


def recover_killed_run(out: Path) -> None:
    """Put back a previous run that a killed --force run (SIGKILL, power loss) had set aside.

    A live run holds the lock and is left alone. Otherwise, what the killed run half-wrote under the
    set-aside names is removed and the set-aside run moved back, so nothing complete is ever lost.
    """
    asides = sorted(out.glob(".deploykit-previous-*")) if out.is_dir() else []
    lock = out / LOCK_NAME
    if (not asides and not lock.exists()) or _lock_holder(lock) is not None:  # nothing left behind, or its run is alive
        return
    if not asides and (out / MANIFEST_NAME).exists():  # killed after writing everything: only the lock is left
        lock.unlink(missing_ok=True)
        return
    try:  # the killed run's targets: their directories hold its unlisted, unreported artifacts
        written = [n for n in lock.read_text().split()[1:] if n and "/" not in n and not n.startswith(".")]
    except OSError:
        written = []
    restored = {path.name for aside in asides for path in aside.iterdir()}
    for name in written:
        place = out / name
        if name not in restored and place.is_dir() and not place.is_symlink() and all(
                _ARTIFACT_FILE.fullmatch(f.name) for f in place.iterdir()):
            shutil.rmtree(place)
    for aside in asides:
        for path in list(aside.iterdir()):
            dest = out / path.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(path, dest)
        aside.rmdir()
    lock.unlink(missing_ok=True)


def set_aside_previous_run(out: Path, target_names: Sequence[str]) -> Path | None:
    """With --force: move the previous run (and this run's target directories) into a hidden
    directory under ``out``; the run restores it if it does not finish, and deletes it if it does."""
    moving = previous_run_files(out)
    moving += [out / n for n in target_names if (out / n).is_dir() and not (out / n).is_symlink() and out / n not in moving]
    if not moving:
        return None
    aside = Path(tempfile.mkdtemp(prefix=".deploykit-previous-", dir=out))
    for path in moving:
        os.replace(path, aside / path.name)
    return aside


def restore_previous_run(out: Path, aside: Path | None) -> None:
    """Move a run set aside by :func:`set_aside_previous_run` back in place (the new run did not finish)."""
    if aside is None:
        return
    for path in aside.iterdir():
        os.replace(path, out / path.name)
    aside.rmdir()
