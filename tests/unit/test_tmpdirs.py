"""deploykit's temporary directories: a killed run's are removed by the next run, a live run's never."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from deploykit import tmpdirs
from deploykit.tmpdirs import TempDir, remove_stale

SRC = str(Path(tmpdirs.__file__).resolve().parents[1])


def _child(tmp: Path, hold: bool) -> subprocess.Popen:
    """A process that makes a TempDir in ``tmp``, prints its path, then waits (``hold``) or kills itself."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from deploykit.tmpdirs import TempDir
        d = TempDir("sm")
        open(os.path.join(d.name, "saved_model.pb"), "wb").write(b"x" * 1000)
        print(d.name, flush=True)
        if {hold}:
            sys.stdin.read()
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def test_a_killed_runs_directory_goes_and_a_live_runs_stays(tmp_path):
    killed = _child(tmp_path, hold=False)
    dead_dir = Path(killed.stdout.readline().strip())
    assert killed.wait(timeout=60) == -signal.SIGKILL
    live = _child(tmp_path, hold=True)
    try:
        live_dir = Path(live.stdout.readline().strip())
        assert dead_dir.is_dir() and live_dir.is_dir()  # SIGKILL: nothing ran to remove it
        assert dead_dir.name.startswith("deploykit-sm-") and dead_dir.name.endswith("-flock")
        with TempDir("onnx") as mine:  # this process's own, in use
            assert remove_stale(tmp_path) == [str(dead_dir)]
            assert Path(mine).is_dir()
        assert not dead_dir.exists() and live_dir.is_dir()
        assert not Path(mine).exists()  # removed when done with, as before
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    assert not live_dir.exists()  # its own finalizer removed it at exit


def test_directories_of_other_makers_and_fresh_staging_ones_are_left_alone(tmp_path):
    # an older deploykit's live SavedModel export (no lock, no suffix), a user's own directory,
    # and a directory being made right now (staging name: its lock may not be held yet)
    others = [tmp_path / "deploykit-sm-abc123", tmp_path / "deploykit-notes", tmp_path / ".deploykit-sm-1-x-flock"]
    for d in others:
        d.mkdir()
    assert remove_stale(tmp_path) == []
    assert all(d.is_dir() for d in others)
    old = tmp_path / ".deploykit-sm-2-y-flock"  # left by a kill between mkdtemp and the rename, long ago
    old.mkdir()
    os.utime(old, (0, 0))
    assert remove_stale(tmp_path) == [str(old)]


def test_temp_dir_works_like_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    d = TempDir("dense")
    assert Path(d.name).parent == tmp_path and Path(d.name).is_dir()
    d.cleanup()
    d.cleanup()  # twice: nothing
    assert not Path(d.name).exists()
    assert not [p for p in tmp_path.iterdir()]  # no staging directory left either
