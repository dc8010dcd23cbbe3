"""The output directory's claim and the previous run's safety, at every point a run can be killed.

Each test builds what a run killed at one moment leaves on disk (or takes the real steps and stops
between them) and checks that the next run's recovery gives back the previous run whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit import outdir
from deploykit.artifacts import Artifact, Manifest
from deploykit.errors import OutputExistsError, UserError
from deploykit.outdir import (LOCK_NAME, discard_previous_run, lock_out_dir, recover_killed_run,
                              restore_previous_run, set_aside_previous_run)

TARGETS = ["tflite-fp32", "tflite-int8", "onnx-fp32"]


def _previous_run(out: Path) -> dict[Path, bytes]:
    """A finished run's files: three targets, the manifest and a report; returns their contents."""
    out.mkdir(parents=True, exist_ok=True)
    arts = []
    for name in TARGETS:
        (out / name).mkdir()
        suffix = ".onnx" if name.startswith("onnx") else ".tflite"
        (out / name / f"model{suffix}").write_bytes(f"old {name}".encode())
        arts.append(Artifact(target=name, format=name.split("-")[0], path=f"{name}/model{suffix}"))
    Manifest(model={}, tools={}, machine={}, artifacts=arts).write(out)
    (out / "report.md").write_text("old report")
    return _contents(out)


def _contents(out: Path) -> dict[Path, bytes]:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _stale_lock(out: Path, targets=TARGETS) -> None:
    """What a killed run leaves as its claim: the file, which no process holds any more."""
    (out / LOCK_NAME).write_text("1\n" + "\n".join(targets))  # pid 1: alive, but not a deploykit run holding it


def _killed_after(monkeypatch, moves: int, only: str = "") -> None:
    """os.replace in outdir dies (SIGKILL, as SystemExit) after ``moves`` moves of paths containing ``only``."""
    done = []
    real = os.replace

    def replace(src, dst):
        if only in str(src):
            if len(done) == moves:
                raise SystemExit("killed")
            done.append(src)
        real(src, dst)

    monkeypatch.setattr(outdir.os, "replace", replace)


def test_killed_while_setting_the_previous_run_aside_gets_all_of_it_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _previous_run(out)
    _killed_after(monkeypatch, 2)  # two of the five moves
    with pytest.raises(SystemExit):
        set_aside_previous_run(out, TARGETS)
    monkeypatch.undo()
    _stale_lock(out)
    # the previous run's directories still in place were taken for the killed run's output and deleted
    recover_killed_run(out)
    assert _contents(out) == before and not list(out.glob(".deploykit*"))


def test_killed_while_putting_the_previous_run_back_gets_the_rest_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _previous_run(out)
    aside = set_aside_previous_run(out, TARGETS)
    _killed_after(monkeypatch, 2)
    with pytest.raises(SystemExit):
        restore_previous_run(out, aside)
    monkeypatch.undo()
    _stale_lock(out)
    recover_killed_run(out)  # the two moved back were deleted as the killed run's
    assert _contents(out) == before and not list(out.glob(".deploykit*"))


def test_a_killed_run_s_own_output_goes_and_the_previous_run_comes_back(tmp_path):
    out = tmp_path / "out"
    before = _previous_run(out)
    set_aside_previous_run(out, TARGETS)
    (out / "tflite-fp32").mkdir()
    (out / "tflite-fp32" / "model.tflite").write_bytes(b"new, half")
    (out / "tflite-fp16").mkdir()  # a target the previous run did not have
    (out / "tflite-fp16" / "model.tflite").write_bytes(b"new")
    _stale_lock(out, TARGETS + ["tflite-fp16"])
    recover_killed_run(out)
    assert _contents(out) == before and not list(out.glob(".deploykit*"))


def test_killed_while_deleting_the_previous_run_keeps_the_new_one(tmp_path):
    out = tmp_path / "out"
    _previous_run(out)
    aside = set_aside_previous_run(out, TARGETS)
    for name in TARGETS:  # the new run, finished
        (out / name).mkdir()
        (out / name / "model.tflite").write_bytes(f"new {name}".encode())
    Manifest(model={"name": "new"}, tools={}, machine={}, artifacts=[]).write(out)
    after = {k: v for k, v in _contents(out).items() if not str(k).startswith(".deploykit")}
    gone = discard_previous_run(out, aside)
    next(gone.rglob("*.tflite")).unlink()  # SIGKILL half-way through deleting the old run
    _stale_lock(out)
    recover_killed_run(out)  # the half-deleted old run was moved over the new one
    assert _contents(out) == after and not list(out.glob(".deploykit*"))


def test_a_recovery_cut_short_resumes_without_deleting_what_it_put_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _previous_run(out)
    set_aside_previous_run(out, TARGETS)
    (out / "tflite-fp32").mkdir()
    (out / "tflite-fp32" / "model.tflite").write_bytes(b"killed run's")
    _stale_lock(out)
    _killed_after(monkeypatch, 2, only=".deploykit-previous-")  # two moves back
    with pytest.raises(SystemExit):
        recover_killed_run(out)
    monkeypatch.undo()
    _stale_lock(out)
    recover_killed_run(out)  # took the two directories already back for the killed run's, and deleted them
    assert _contents(out) == before and not list(out.glob(".deploykit*"))


def test_a_recovery_never_takes_a_live_run_s_claim(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / (LOCK_NAME + "-starting")).write_text("")  # another run's claim on its way into place
    lock = lock_out_dir(out, TARGETS)  # ... which got there first
    recover_killed_run(out)  # a third run, starting: the lock was unlinked and two runs held the directory
    assert (out / LOCK_NAME).exists() and lock.same_file(out / LOCK_NAME)
    with pytest.raises(OutputExistsError, match="another deploykit run"):
        lock_out_dir(out, TARGETS)
    assert (out / (LOCK_NAME + "-starting")).exists()  # a fresh temporary name may be a run about to lock it
    lock.release()


def test_a_killed_claim_under_both_its_names_is_cleared(tmp_path):
    """Killed between linking its lock into place and removing the temporary name: the next run was
    refused as 'not empty' by that leftover name."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("1\ntflite-fp32")
    os.link(out / LOCK_NAME, out / (LOCK_NAME + "-abc123"))
    recover_killed_run(out)
    assert list(out.iterdir()) == []


def test_signals_held_arrive_after_the_block(tmp_path):
    import signal

    from deploykit.outdir import signals_held

    got = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        with signals_held() as caught:
            signal.raise_signal(signal.SIGTERM)
            assert got == [] and caught == [signal.SIGTERM]  # held
        assert got == [signal.SIGTERM]  # then delivered to the handler it was meant for
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_file_that_cannot_be_moved_aside_is_one_line_and_the_rest_moves_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _previous_run(out)
    real = os.replace

    def refuses_report(src, dst):
        if Path(src).name == "report.md":
            raise PermissionError(13, "Permission denied", str(src))
        real(src, dst)

    monkeypatch.setattr(outdir.os, "replace", refuses_report)
    with pytest.raises(UserError, match=r"cannot move .*report\.md aside to replace it \(Permission denied\)"):
        set_aside_previous_run(out, TARGETS)
    monkeypatch.undo()
    assert _contents(out) == before and not list(out.glob(".deploykit*"))


def test_the_claim_is_the_lock_s_flock_not_the_pid_in_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = lock_out_dir(out, TARGETS)
    # held by this run: a second claim (another process, or this one again) is refused, naming the pid
    with pytest.raises(OutputExistsError, match=rf"another deploykit run \(pid {os.getpid()}\)"):
        lock_out_dir(out, TARGETS)
    code = ("import sys; from pathlib import Path; from deploykit.outdir import lock_out_dir\n"
            "try:\n    lock_out_dir(Path(sys.argv[1]))\nexcept Exception as e:\n    print(type(e).__name__)\n")
    child = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "OutputExistsError"
    lock.release()
    assert not (out / LOCK_NAME).exists()
    # a lock file nobody holds, whatever pid it names (here one that is alive), is a killed run's
    (out / LOCK_NAME).write_text(f"{os.getpid()}\n")
    lock = lock_out_dir(out, TARGETS)
    assert (out / LOCK_NAME).read_text().split() == [str(os.getpid()), *TARGETS]
    lock.release()
    assert sorted(p.name for p in out.iterdir()) == []


def test_an_out_that_cannot_be_created_names_itself_not_only_its_parent(tmp_path):
    """--out /proc/foo said "cannot write to /proc (No such file or directory)": /proc exists."""
    with pytest.raises(UserError, match=r"cannot create /proc/deploykit-out in /proc \(.*\); choose another --out"):
        outdir.check_out_dir(Path("/proc/deploykit-out"), force=False)


def test_a_dangling_symlink_as_out_is_said_as_one(tmp_path):
    """mkdir said 'File exists' of a path that does not exist: "cannot create output directory out (File exists)"."""
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"out is a symlink to .*gone, which does not exist; create that directory"):
        outdir.check_out_dir(tmp_path / "out", force=False)
    assert not (tmp_path / "gone").exists()


def test_an_out_inside_another_runs_target_folder_is_refused(tmp_path):
    """--out run/onnx-fp32 --force wrote a manifest and reports beside that run's model.onnx, and the run in
    run/ could then never be replaced (--force refused those files as not its own)."""
    before = _previous_run(tmp_path / "run")
    for inside in (tmp_path / "run" / "onnx-fp32", tmp_path / "run" / "onnx-fp32" / "deeper"):
        with pytest.raises(UserError, match=r"is inside .*run/onnx-fp32, target 'onnx-fp32' of the deploykit run in "
                                            r".*run; choose an --out outside that run's target folders"):
            outdir.check_out_dir(inside, force=True, target_names=["tflite-fp32"])
    outdir.check_out_dir(tmp_path / "run" / "next", force=False)  # beside the targets: its own folder
    outdir.check_out_dir(tmp_path / "run", force=True, target_names=TARGETS)  # the run itself, replaced
    assert _contents(tmp_path / "run") == before
