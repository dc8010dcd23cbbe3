"""Helpers shared by the benchmark scripts (not a benchmark itself).

Child processes are measured one at a time with ``os.wait4``: it returns the
resource usage of exactly the child it reaped, so ``ru_maxrss`` is that
child's own peak resident set size. (``getrusage(RUSAGE_CHILDREN)`` is the
maximum over *all* children reaped so far, so deltas of it are meaningless
once a second child is run.) ``deploy`` is a console script whose shebang
points at the venv's Python, so the process we reap is the Python process
doing the work, not a shell.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
DEPLOY = str(VENV_BIN / "deploy")

# Keep children quiet and CPU-only, as deploykit itself does; the user's own settings win.
CHILD_ENV = {**os.environ}
for _k, _v in {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", "ABSL_MIN_LOG_LEVEL": "2"}.items():
    CHILD_ENV.setdefault(_k, _v)


@dataclass
class ChildRun:
    """One measured child process."""

    cmd: list[str]
    returncode: int
    wall_s: float
    maxrss_bytes: int
    user_s: float
    sys_s: float
    stdout: str
    stderr: str


def run_child(cmd: list[str], *, cwd: str | Path | None = None, timeout: float | None = None,
              env: dict[str, str] | None = None) -> ChildRun:
    """Run ``cmd``; return wall time and the child's own peak RSS (from wait4).

    stdout/stderr go to temporary files (not pipes) so a chatty child can never
    block on a full pipe while we sit in wait4.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=env or CHILD_ENV)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
            if pid == proc.pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not try to reap again
        out.seek(0)
        err.seek(0)
        return ChildRun(cmd, proc.returncode, wall, usage.ru_maxrss * 1024, usage.ru_utime, usage.ru_stime,
                        out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def check_ok(run: ChildRun, what: str, allowed: tuple[int, ...] = (0,)) -> None:
    """Exit with the child's output when it failed in a way the benchmark cannot use."""
    if run.returncode not in allowed:
        print(f"\n{what} failed (exit {run.returncode}): {shlex.join(run.cmd)}", file=sys.stderr)
        print(run.stdout[-3000:], file=sys.stderr)
        print(run.stderr[-3000:], file=sys.stderr)
        sys.exit(3)


def export_saved_model(model: Path, work: Path) -> Path:
    """``work/saved_model``: the .keras model exported once (in a child, so the caller never imports TF)."""
    sm = Path(work) / "saved_model"
    if not sm.exists():
        code = ("import os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','2'); import keras, sys; "
                "keras.models.load_model(sys.argv[1], compile=False).export(sys.argv[2], verbose=False)")
        check_ok(run_child([PYTHON, "-c", code, str(model), str(sm)]), "exporting the SavedModel")
    return sm


def median(xs) -> float:
    return float(statistics.median(xs))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain fixed-width table (no dependencies, readable in CI logs)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    return "\n".join(lines)


class Verdicts:
    """Collects PASS/FAIL lines; ``exit()`` returns non-zero when any failed."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        if not ok:
            self.failed.append(name)
        return ok

    def exit(self) -> None:
        if self.failed:
            print(f"\n{len(self.failed)} figure(s) failed: {', '.join(self.failed)}")
            sys.exit(1)
        print("\nall figures passed")
        sys.exit(0)


def machine_line() -> str:
    """One line of context: CPUs and load, since absolute numbers here are noisy."""
    try:
        load = os.getloadavg()
        load_s = f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_s = "load avg n/a"
    return f"{os.cpu_count()} CPUs, {load_s}, python {sys.version.split()[0]}, deploykit from {deploykit_source()}"


def deploykit_source() -> str:
    """Where the measured deploykit is imported from (PYTHONPATH can point at a snapshot)."""
    import importlib.util

    spec = importlib.util.find_spec("deploykit")
    return str(Path(spec.origin).parent) if spec and spec.origin else "?"


@contextlib.contextmanager
def workdir(path: Path | None, prefix: str):
    """The benchmark's work directory: ``path`` (kept, reused next run) or a temp dir removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
