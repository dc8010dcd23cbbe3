"""End to end through the Python API: real converters, real runtimes, real reports.

The per-target test is parametrized over ``deploykit.targets.list_targets()``, so
every built-in target (present and future) is converted, verified against the
reference model on the same raw inputs, benchmarked and reported. All targets are
built in one run, as `deploy convert -t ... -t ...` would, so the SavedModel export
and any -auto candidates are shared.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import re

import numpy as np
import pytest

import deploykit
from deploykit.artifacts import MANIFEST_NAME, Manifest, sha256_file
from deploykit.errors import DataError, DeployError, OutputExistsError, UserError
from deploykit.targets import Tolerance, get_target, list_targets

pytestmark = pytest.mark.slow

ALL_TARGETS = list_targets()
ITERATIONS, WARMUP = 5, 1
REPORTS = ("report.md", "report.html", "size_vs_latency.svg")


def _assert_verified_within_one_point(a: dict) -> None:
    v = a["verification"]
    assert v["passed"] and v["failures"] == [], v.get("failures")
    assert v["reference_accuracy"] > 0.85, "the reference model should classify digits well"
    assert abs(v["accuracy"] - v["reference_accuracy"]) * 100 <= 1.0 + 1e-9


def _assert_artifact_file(out, a: dict) -> None:
    path = out / a["path"]
    assert a["path"] and path.is_file()
    assert sha256_file(path) == a["sha256"]
    # the size is what a user ships: the model file plus its weight files (ONNX external data, TF.js shards)
    weights = [path.parent / f for f in a["settings"].get("converter", {}).get("external_data_files", [])]
    assert path.stat().st_size + sum(f.stat().st_size for f in weights) == a["size_bytes"] > 0
    assert 0 < a["gzip_bytes"]
    for extra in a.get("extra_files", []):
        assert (out / extra).is_file()


def _assert_reports(out, names) -> None:
    for name in (MANIFEST_NAME, *REPORTS):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html  # the plot is inlined
    for n in names:
        assert n in md and n in html


@pytest.fixture(scope="module")
def all_targets_run(tmp_path_factory, keras3_path, data_npz):
    out = tmp_path_factory.mktemp("convert") / "all"
    progress: list[str] = []
    result = deploykit.convert(
        keras3_path, [t.name for t in ALL_TARGETS], data=data_npz, out=out,
        iterations=ITERATIONS, warmup=WARMUP, progress=progress.append,
    )
    return result, progress


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: t.name)
def test_builtin_target_end_to_end(all_targets_run, target, keras3_model, digits):
    from deploykit.converters import get_converter
    from deploykit.runtime_bench import get_runner
    from deploykit.verify import verify

    result, progress = all_targets_run
    a = result.artifact(target.name)
    assert a["status"] == "ok", a["error"]
    assert a["error"] == "" and not a.get("candidate_of")
    assert a["format"] == target.format
    assert a["settings"]["target"] == target.with_bench(iterations=ITERATIONS, warmup=WARMUP).to_dict()

    _assert_artifact_file(result.out, a)
    path = result.out / a["path"]
    assert path.suffix == get_converter(target.format).SUFFIX
    _assert_verified_within_one_point(a)

    b = a["benchmark"]
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "init_ms"):
        assert isinstance(b[key], float) and b[key] > 0, key
    assert b["p50_ms"] <= b["p90_ms"] <= b["p99_ms"] <= b["max_ms"]
    assert b["n"] == ITERATIONS == len(b["samples_ms"])
    assert b["warmup"] == WARMUP
    assert b["runtime"] == target.runtime
    # one load's time swung 10x on a shared machine: the median of three (TF.js: one, a Node process each)
    assert b["init_loads"] == (1 if target.runtime == "tfjs" else 3)

    # the file on disk is what was verified: check it again, independently, on its runtime
    runner = get_runner(target.runtime, path, 1)
    runner.load()
    x = digits.x_eval[:16]
    ref = np.asarray(keras3_model(x, training=False))
    names = [o["name"] for o in result.manifest["model"]["outputs"]]
    # an -auto artifact is its winning candidate, held to that candidate's tolerance
    shipped = get_target(a["selection"]["winner"]) if getattr(target, "candidates", ()) else target
    again = verify(runner, {"pixels": x}, [ref], names, shipped.tolerance)
    runner.close()
    assert again["passed"], again["failures"]

    if getattr(target, "candidates", ()):  # -auto: ships a copy of the winning candidate
        sel = a["selection"]
        assert sel["winner"] in target.candidates
        winner = result.artifact(sel["winner"])
        assert winner["status"] == "ok" and winner["sha256"] == a["sha256"]
        assert {c["target"] for c in sel["candidates"]} == set(target.candidates)
    assert any(target.name in msg for msg in progress)
    _assert_reports(result.out, [target.name])


def test_all_targets_run_manifest_and_reports(all_targets_run):
    result, _ = all_targets_run
    assert result.ok
    requested = [a["target"] for a in result.artifacts if not a.get("candidate_of")]
    assert requested == [t.name for t in ALL_TARGETS]
    on_disk = json.loads((result.out / MANIFEST_NAME).read_text())
    assert on_disk == result.manifest
    manifest = Manifest.read(result.manifest_path)
    assert manifest.ok and manifest.schema_version == 1
    assert result.report_path == result.out / "report.md" and result.html_report_path == result.out / "report.html"
    m = result.manifest
    assert m["model"]["kind"] == "keras3" and m["model"]["sha256"] and m["model"]["params"] > 0
    assert [p["class"] for p in m["model"]["preprocessing_layers"]] == ["Rescaling"]
    assert m["data"] == {"source": m["data"]["source"], "samples": 200, "eval_source": m["data"]["eval_source"],
                         "eval_samples": 200, "labels": True, "targets": False}
    for step in ("load", "reference"):
        assert m["steps"][step]["peak_rss_bytes"] > 0
    md = result.report_path.read_text()
    assert "Embedded preprocessing: Rescaling" in md and "## Failures" not in md
    _assert_reports(result.out, [t.name for t in ALL_TARGETS])
    assert not [p for p in result.out.rglob("*") if p.name.endswith(".partial")]


def test_artifacts_sharing_a_runtime_are_timed_side_by_side_and_the_report_compares_those_timings(all_targets_run):
    from deploykit.report.rows import latency_ms, table
    from deploykit.selection import ROUNDS

    result, progress = all_targets_run
    timed = [a for a in result.artifacts if a["path"] and not a.get("selection") and a["benchmark"]]
    by_runtime: dict[str, list[str]] = {}
    for a in timed:
        by_runtime.setdefault(a["benchmark"]["runtime"], []).append(a["target"])
    assert {rt for rt, names in by_runtime.items() if len(names) > 1} >= {"litert", "onnxruntime", "tfjs"}
    chosen: dict[str, set[str]] = {}  # an -auto's candidate -> the others its selection timed it with
    for a in result.artifacts:
        together = {c["target"] for c in (a.get("selection") or {}).get("candidates", []) if c.get("round_p50_ms")}
        chosen.update({n: together - {n} for n in together})
    for a in timed:
        group = by_runtime[a["benchmark"]["runtime"]]
        sbs = a["benchmark"].get("side_by_side")
        if a["benchmark"]["runtime"] == "tflm":
            continue
        if a["target"] in chosen:  # the candidates keep their selection's figures
            assert set(sbs["with"]) == chosen[a["target"]]
        else:  # the others: timed together, beside one candidate (the float32 one) when the group has any
            others = [n for n in group if n != a["target"] and n not in chosen]
            assert sorted(sbs["with"]) == sorted(others + ([sbs["anchor"]["target"]] if "anchor" in sbs else []))
            assert ("anchor" in sbs) == any(n in chosen for n in group)
        # every file in every round (no candidate dropped here), each round long enough to be more than wake-up
        assert sbs["rounds"] == ROUNDS == len(sbs["round_p50_ms"]) and sbs["threads"] == a["benchmark"]["threads"]
        assert sbs["n"] % ROUNDS == 0 and sbs["n"] >= ROUNDS * 5 and 0 < sbs["p50_ms"] <= sbs["p90_ms"]
        assert a["target"] in chosen or any(a["target"] in msg and "side by side" in msg for msg in progress)
    # tflm-int8 and its budgeted profile write the same bytes: one file, nothing to compare it with
    tflm, m4 = result.artifact("tflm-int8"), result.artifact("tflm-int8-cortex-m4")
    assert tflm["sha256"] == m4["sha256"] and "side_by_side" not in tflm["benchmark"] | m4["benchmark"]
    for a in result.artifacts:  # an -auto file is its winner: one record, not timed twice
        if a.get("selection") and a["status"] == "ok":
            assert a["benchmark"] == result.artifact(a["selection"]["winner"])["benchmark"]
    assert result.manifest["steps"]["side_by_side"]["peak_rss_bytes"] > 0

    manifest = Manifest.read(result.manifest_path)
    rows = {r["target"].split(" ")[0]: r for r in table(manifest)}
    for name in by_runtime["litert"]:
        sbs = result.artifact(name)["benchmark"]["side_by_side"]
        assert rows[name]["p50"] == latency_ms(sbs["p50_ms"])  # the compared figure, not the solo one
        fp32 = (sbs.get("anchor") or result.artifact("tflite-fp32")["benchmark"]["side_by_side"])["round_p50_ms"]
        paired = float(np.median([a / b for a, b in zip(sbs["round_p50_ms"], fp32)]))  # round by round, not pooled
        ratios = sorted(a / b for a, b in zip(sbs["round_p50_ms"], fp32))
        ratios = ratios[1:-1] if len(ratios) >= 5 else ratios  # the extreme round at each end aside
        spread = max(ratios) / min(ratios)  # how far the rounds disagreed: past 1.5x the ratio is marked unsteady
        assert sbs["vs_float32"] == {"target": "tflite-fp32", "ratio": paired, "spread": spread,
                                     "rounds": min(len(sbs["round_p50_ms"]), len(fp32)),
                                     **({"unsteady": True} if spread > 1.5 else {})}
        assert rows[name]["p50_ratio"] == f"{paired:.2f}" + (" (unsteady)" if spread > 1.5 else "")
    assert rows["tflm-int8"]["p50_ratio"] == "–"  # timed beside the other microcontroller file, no float32 one
    md = result.report_path.read_text()
    assert "× fp32 p50" in md and "timed again side by side" in md


def test_files_timed_with_other_threads_are_not_compared_and_a_failed_comparison_is_reported(tmp_path, keras3_model,
                                                                                             digits, monkeypatch):
    import deploykit.selection as selection

    data = (digits.x_eval, digits.y_eval)
    copy = dataclasses.replace(get_target("tflite-fp32"), name="tflite-fp32-copy")  # the same bytes as tflite-fp32
    targets = ["tflite-fp32", copy, "tflite-dynamic", get_target("tflite-fp16").with_bench(threads=1), "onnx-fp32",
               "onnx-fp16"]
    calls = []
    real = selection.interleaved_p50

    def onnx_fails(targets, paths, inputs, **kw):  # ONNX Runtime failing on its second load, say
        calls.append(sorted(t.name for t in targets))
        if targets[0].runtime == "onnxruntime":
            raise RuntimeError("session could not be created")
        return real(targets, paths, inputs, **kw)

    monkeypatch.setattr(selection, "interleaved_p50", onnx_fails)
    result = deploykit.convert(keras3_model, targets, data=data, out=tmp_path / "out", iterations=5, warmup=1)
    # the 1-thread tflite-fp16 is compared with nothing; the copy of tflite-fp32 is timed once, as that file
    assert result.ok and calls == [["tflite-dynamic", "tflite-fp32"], ["onnx-fp16", "onnx-fp32"]]
    fp32, same = (result.artifact(n)["benchmark"]["side_by_side"] for n in ("tflite-fp32", "tflite-fp32-copy"))
    assert same["same_file_as"] == "tflite-fp32" and same["p50_ms"] == fp32["p50_ms"]
    assert sorted(fp32["with"]) == ["tflite-dynamic", "tflite-fp32-copy"]
    assert all("side_by_side" not in result.artifact(n)["benchmark"] for n in ("tflite-fp16", "onnx-fp32", "onnx-fp16"))
    (note,) = result.manifest["steps"]["side_by_side"]["notes"]
    assert note.startswith("timing onnx-fp32, onnx-fp16 side by side failed (session could not be created)")
    md = result.report_path.read_text()
    assert note in md and "timed again side by side" in md  # the litert files were


def test_an_auto_targets_candidates_keep_the_figures_their_selection_was_made_on(tmp_path, keras3_model, digits):
    progress: list[str] = []
    # tflite-int8-io is no candidate: it was timed with all of them again, and the table then showed other
    # figures than the choice's (a candidate 1.25x the winner in the choice read 0.99x fp32 in the table)
    result = deploykit.convert(keras3_model, ["tflite-auto", "tflite-int8-io"], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", iterations=5, warmup=1, progress=progress.append)
    auto = result.artifact("tflite-auto")
    rows = {r["target"]: r for r in auto["selection"]["candidates"] if r.get("interleaved_p50_ms")}
    assert len(rows) > 1 and "tflite-fp32" in rows
    for name, row in rows.items():  # the table's figures are the choice's figures: timed once, not again
        sbs = result.artifact(name)["benchmark"]["side_by_side"]
        assert sbs["p50_ms"] == row["interleaved_p50_ms"] and sbs["round_p50_ms"] == row["round_p50_ms"]
        assert sorted(sbs["with"]) == sorted(n for n in rows if n != name)
    # the other file: timed beside the float32 candidate, its ratio paired with that file's rounds there
    io = result.artifact("tflite-int8-io")["benchmark"]["side_by_side"]
    assert io["with"] == ["tflite-fp32"] and io["anchor"]["target"] == "tflite-fp32"
    assert io["vs_float32"]["rounds"] == len(io["anchor"]["round_p50_ms"])
    assert [m for m in progress if m.startswith("timing ")] == ["timing 2 litert artifacts side by side (tflite-int8-io, tflite-fp32)"]
    fp32 = result.artifact("tflite-fp32")["benchmark"]["side_by_side"]
    assert fp32["vs_float32"] == {"target": "tflite-fp32", "ratio": 1.0, "spread": 1.0, "rounds": len(fp32["round_p50_ms"])}
    assert auto["benchmark"]["side_by_side"] == result.artifact(auto["selection"]["winner"])["benchmark"]["side_by_side"]
    assert "an -auto target's candidates as its selection timed them" in result.report_path.read_text()


def test_two_auto_targets_sharing_candidates_pair_rounds_of_one_session(tmp_path, keras3_model, digits):
    """The second -auto's selection replaced the shared candidates' figures: fp16's "x fp32" paired its rounds
    from tflite-auto's session with fp32's from mini-auto's. The group is timed again as a whole then."""
    (tmp_path / "mini-auto.toml").write_text('name = "mini-auto"\nformat = "tflite"\nprecision = "auto"\n'
                                            'candidates = ["tflite-fp32", "tflite-int8"]\n')
    result = deploykit.convert(keras3_model, ["tflite-auto", tmp_path / "mini-auto.toml"], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", iterations=5, warmup=1)
    timed = [a for a in result.artifacts if not a.get("selection") and "side_by_side" in a["benchmark"]]
    sessions = {frozenset([a["target"], *a["benchmark"]["side_by_side"]["with"]]) for a in timed}
    assert len(timed) == 4 and len(sessions) == 1, sessions


def test_without_benchmarks_nothing_is_timed_side_by_side(tmp_path, keras3_model, digits):
    result = deploykit.convert(keras3_model, ["tflite-fp32", "tflite-fp16"], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", bench=False)
    assert result.ok and all(a["benchmark"] == {} for a in result.artifacts)
    assert "side_by_side" not in result.manifest["steps"]
    assert "timed again side by side" not in result.report_path.read_text()


# ----------------------------------------------------------------------------- in-memory model
MULTI = ["tflite-fp32", "tflite-dynamic", "tflite-int8"]


@pytest.fixture(scope="module")
def in_memory_run(tmp_path_factory, keras3_model, digits):
    out = tmp_path_factory.mktemp("convert") / "in_memory"
    return deploykit.convert(keras3_model, MULTI, data=(digits.x_eval, digits.y_eval), out=out,
                             iterations=ITERATIONS, warmup=WARMUP)


def test_in_memory_multi_target_run(in_memory_run):
    result = in_memory_run
    assert result.ok
    assert [a["target"] for a in result.artifacts] == MULTI
    assert result["model"]["path"] is None and result["model"]["source"].startswith("<in-memory")
    assert result["data"]["source"] == "<in-memory data>" and result["data"]["labels"] is True
    for a in result.artifacts:
        assert a["status"] == "ok"
        _assert_artifact_file(result.out, a)
        _assert_verified_within_one_point(a)
        assert a["benchmark"]["n"] == ITERATIONS
    fp32 = result.artifact("tflite-fp32")["size_bytes"]
    assert result.artifact("tflite-dynamic")["size_bytes"] < fp32
    assert result.artifact("tflite-int8")["size_bytes"] < fp32
    assert result.artifact("tflite-int8")["settings"]["converter"]["calibration_samples"] == 200
    _assert_reports(result.out, MULTI)


def test_existing_output_needs_force_and_force_replaces_only_the_previous_run(in_memory_run, keras3_model, digits):
    out = in_memory_run.out
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="--force"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=(digits.x_eval, digits.y_eval), out=out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched

    (out / "notes.txt").write_text("mine")
    result = deploykit.convert(keras3_model, ["tflite-fp16"], data=(digits.x_eval, digits.y_eval), out=out,
                               force=True, bench=False)
    assert result.ok and [a["target"] for a in result.artifacts] == ["tflite-fp16"]
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept
    for name in MULTI:  # the previous run's artifacts are gone
        assert not (out / name).exists()
    assert not (out / "size_vs_latency.svg").exists()  # nothing benchmarked, no stale plot
    assert result.artifact("tflite-fp16")["benchmark"] == {}
    _assert_artifact_file(out, result.artifact("tflite-fp16"))


def test_force_keeps_the_previous_run_until_the_new_one_finishes(tmp_path, keras3_model, digits):
    data = (digits.x_eval[:64], digits.y_eval[:64])
    out = tmp_path / "out"
    deploykit.convert(keras3_model, ["tflite-fp32", "onnx-fp32"], data=data, out=out, bench=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupt(msg: str) -> None:  # Ctrl-C while the new run converts its second target
        if msg.startswith("tflite-fp16: verifying"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deploykit.convert(keras3_model, ["tflite-fp32", "tflite-fp16"], data=data, out=out, bench=False, force=True,
                          progress=interrupt)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # all of it, unchanged
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_an_api_run(tmp_path, keras3_model, digits):
    """A SIGINT whose KeyboardInterrupt is raised inside a TensorFlow finalizer (``UniquePtr.__del__``) is lost
    there: ``convert(force=True)`` went on and replaced the previous run. The handler counts it too."""
    import signal

    data = (digits.x_eval[:64], digits.y_eval[:64])
    out = tmp_path / "out"
    deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=out, bench=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def swallowed(msg: str) -> None:  # what a finalizer does with the handler's KeyboardInterrupt
        if msg == "computing reference outputs":
            try:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            except KeyboardInterrupt:
                pass

    with pytest.raises(KeyboardInterrupt):
        deploykit.convert(keras3_model, ["tflite-fp32", "tflite-fp16"], data=data, out=out, bench=False, force=True,
                          progress=swallowed)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back


def test_a_run_killed_after_setting_the_previous_run_aside_gets_it_back_on_the_next_run(tmp_path, keras3_model, digits):
    import subprocess
    import sys

    from deploykit.outdir import set_aside_previous_run

    data = (digits.x_eval[:32], digits.y_eval[:32])
    out = tmp_path / "out"
    deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=out, bench=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # what kill -9 leaves of a --force run: the old run set aside, a half-written target, a finished but
    # unlisted one, and its claim naming its targets
    set_aside_previous_run(out, ["tflite-fp32"])
    (out / "tflite-fp32").mkdir()
    (out / "tflite-fp32" / ".model.tflite.x.partial").write_bytes(b"half")
    (out / "onnx-fp16").mkdir()
    (out / "onnx-fp16" / "model.onnx").write_bytes(b"unlisted")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".deploykit.lock").write_text(f"{dead.pid}\ntflite-fp32\nonnx-fp16")
    # the next run puts the previous one back first (it used to refuse on the debris, and the --force run
    # after that threw the previous run away); without --force it is then refused as not empty
    with pytest.raises(OutputExistsError, match="not empty"):
        deploykit.convert(keras3_model, ["onnx-fp32"], data=data, out=out, bench=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    result = deploykit.convert(keras3_model, ["onnx-fp32"], data=data, out=out, bench=False, force=True)
    assert result.ok and not list(out.glob(".deploykit-*"))


def test_a_directory_another_run_filled_meanwhile_is_refused(tmp_path, keras3_model, digits):
    out = tmp_path / "race"

    def other_run_finishes(msg: str) -> None:  # another run fills --out while this one computes its reference
        if msg == "computing reference outputs":
            out.mkdir()
            (out / "manifest.json").write_text("{}")

    with pytest.raises(OutputExistsError, match="was filled by another run while this one worked"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=(digits.x_eval[:16], digits.y_eval[:16]), out=out,
                          bench=False, progress=other_run_finishes)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_a_directory_another_live_run_writes_to_is_refused_a_stale_claim_is_not(tmp_path, keras3_model, digits):
    import subprocess
    import sys

    data = (digits.x_eval[:32], digits.y_eval[:32])
    out = tmp_path / "shared"
    out.mkdir()
    (out / ".deploykit.lock").write_text("")
    # a run that started first and is still writing: it holds the lock file's flock
    other = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                              f"fd = os.open({str(out / '.deploykit.lock')!r}, os.O_RDWR)\n"
                              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                              "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(OutputExistsError, match=rf"another deploykit run \(pid {other.pid}\) is writing to"):
            deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=out, force=True, bench=False)
    finally:
        other.kill()
        other.wait()
    # its process is gone (killed mid-run): the claim is stale, the next run takes over and leaves no lock behind
    result = deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=out, force=True, bench=False)
    assert result.ok and not (out / ".deploykit.lock").exists()
    (out / ".deploykit.lock").write_text("")  # killed before writing its pid
    assert deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=out, force=True, bench=False).ok
    # a lock naming a live process that does not hold it (a killed container's pid 1, a reused pid) is stale:
    # the next run in a new container, pid 1 itself, took it for a live run, every time
    (out / ".deploykit.lock").write_text(f"{os.getpid()}\ntflite-fp32")
    assert deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=out, force=True, bench=False).ok
    assert not list(out.glob(".deploykit*"))


def test_force_refuses_files_it_did_not_write_and_symlinked_target_dirs(tmp_path, keras3_model, digits):
    data = (digits.x_eval[:32], digits.y_eval[:32])
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "My PWA"}')
    with pytest.raises(OutputExistsError, match="not a deploykit manifest"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=web, force=True, bench=False)
    (web / "manifest.json").unlink()
    (web / "report.html").write_text("<html>mine</html>")
    with pytest.raises(OutputExistsError, match="report.html but no deploykit manifest"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=web, force=True, bench=False)
    assert (web / "report.html").read_text() == "<html>mine</html>"

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.tflite").write_text("precious")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "tflite-fp32").symlink_to(victim)
    with pytest.raises(OutputExistsError, match="is a symlink where deploykit writes target 'tflite-fp32'"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=linked, force=True, bench=False)
    assert (victim / "model.tflite").read_text() == "precious"

    # a directory named like a target that deploykit did not write: --force set it aside and deleted
    # it, the user's model inside included
    mine = tmp_path / "mine"
    (mine / "tflite-fp32").mkdir(parents=True)
    keras3_model.save(mine / "tflite-fp32" / "model.keras")
    with pytest.raises(OutputExistsError, match=r"tflite-fp32 holds model.keras, which no deploykit manifest"):
        deploykit.convert(str(mine / "tflite-fp32" / "model.keras"), ["tflite-fp32"], data=data, out=mine, force=True,
                          bench=False)
    assert (mine / "tflite-fp32" / "model.keras").is_file()
    # ... even when its file has an artifact's name: no manifest lists it, so no run wrote it
    (mine / "tflite-fp32" / "model.keras").unlink()
    (mine / "tflite-fp32" / "model.tflite").write_text("my own model")
    with pytest.raises(OutputExistsError, match=r"tflite-fp32 holds model.tflite, which no deploykit manifest"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=mine, force=True, bench=False)
    assert (mine / "tflite-fp32" / "model.tflite").read_text() == "my own model"
    # a file the user put into a previous run's target directory: deleted without a word
    run = tmp_path / "run"
    deploykit.convert(keras3_model, ["tflite-fp32"], data=data, out=run, bench=False)
    (run / "tflite-fp32" / "NOTES.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"tflite-fp32 holds NOTES.txt, which deploykit did not write"):
        deploykit.convert(keras3_model, ["onnx-fp32"], data=data, out=run, force=True, bench=False)
    (run / "tflite-fp32" / "NOTES.txt").unlink()
    # data kept in a previous run's target directory would be replaced with it
    np.savez(run / "tflite-fp32" / "data.npz", x=data[0])
    with pytest.raises((UserError, OutputExistsError), match=r"data.npz"):
        deploykit.convert(keras3_model, ["tflite-fp32"], data=str(run / "tflite-fp32" / "data.npz"), out=run, force=True,
                          bench=False)
    assert (run / "tflite-fp32" / "data.npz").is_file()


# ----------------------------------------------------------------------------- other input kinds
@pytest.mark.parametrize("source", ["tf_keras_keras_path", "tf_keras_h5_path", "saved_model_dir", "tf_keras_model"])
def test_each_input_kind_converts_and_verifies(request, tmp_path, source, data_npz):
    model = request.getfixturevalue(source)
    result = deploykit.convert(model, ["tflite-fp32", "tflite-int8", "onnx-fp32", "tfjs-fp32"], data=data_npz,
                               out=tmp_path / "out", iterations=ITERATIONS, warmup=WARMUP)
    assert result.ok, [a["error"] for a in result.artifacts]
    expected_kind = "saved_model" if source == "saved_model_dir" else "tf_keras"
    assert result["model"]["kind"] == expected_kind
    for a in result.artifacts:
        _assert_artifact_file(result.out, a)
        _assert_verified_within_one_point(a)
    _assert_reports(result.out, ["tflite-fp32", "tflite-int8"])


# ----------------------------------------------------------------------------- failures
def _tight_int8():
    base = get_target("tflite-int8")
    return dataclasses.replace(base, name="tflite-int8-tight",
                               tolerance=Tolerance(atol=1e-9, rtol=0.0, range_atol=0.0))


def test_a_failing_target_does_not_stop_the_others(tmp_path, keras3_path, data_npz):
    out = tmp_path / "out"
    result = deploykit.convert(keras3_path, ["tflite-fp32", _tight_int8()], data=data_npz, out=out,
                               iterations=ITERATIONS, warmup=WARMUP)
    assert not result.ok
    ok, bad = result.artifact("tflite-fp32"), result.artifact("tflite-int8-tight")
    assert ok["status"] == "ok"
    assert bad["status"] == "failed"
    assert bad["error"].startswith("verification failed:") and "exceeds the allowed" in bad["error"]
    assert not bad["verification"]["passed"] and bad["verification"]["failures"]
    # the failing artifact is still written and described, for inspection
    _assert_artifact_file(out, bad)
    assert bad["benchmark"]["n"] == ITERATIONS

    on_disk = Manifest.read(out / MANIFEST_NAME)
    assert {a.target: a.status for a in on_disk.artifacts} == {"tflite-fp32": "ok", "tflite-int8-tight": "failed"}
    assert not on_disk.ok
    md = (out / "report.md").read_text()
    assert "## Failures" in md and "**tflite-int8-tight**: verification failed" in md
    assert "Failed: **tflite-int8-tight**" in md
    html = (out / "report.html").read_text()
    assert "<tr class='failed'>" in html and "<b>tflite-int8-tight</b>: verification failed" in html
    assert html.count("<tr class='failed'>") == 1


def test_an_int8_file_that_changes_only_unsure_answers_says_so_and_names_more_precise_targets(tmp_path):
    """A model whose ten probabilities sit close together (logits spread 0.3x of a trained head): int8
    rounding changes the top class of many samples, each one a near-tie of the model's own. The
    failure says so and names the targets that keep more precision; int16x8 passes."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,), name="x"), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10), keras.layers.Softmax()])
    w, b = model.layers[1].get_weights()
    model.layers[1].set_weights([w * 0.3, b])
    x = np.random.default_rng(0).uniform(0, 1, (300, 16)).astype("float32")
    result = deploykit.convert(model, ["tflite-int8", "tflite-int16x8", "onnx-int8-qdq", "onnx-int16x8"], data=x,
                               out=tmp_path / "o", bench=False)
    int8, int16, onnx, onnx16 = (result.artifact(t) for t in ("tflite-int8", "tflite-int16x8", "onnx-int8-qdq", "onnx-int16x8"))
    assert int16["status"] == "ok", int16["error"]
    assert onnx16["status"] == "ok", onnx16["error"]
    for a, way_out in ((int8, "try tflite-int16x8"), (onnx, "try onnx-int16x8")):
        assert a["status"] == "failed"
        flips = a["verification"]["outputs"]["output_0"]["flips"]
        assert flips["count"] > 10 and flips["confident"] == 0 and flips["max_lead"] < 0.05, flips
        assert f"on the {flips['count']} changed answers the model's own top two probabilities were at most" in a["error"]
        assert way_out in a["error"], a["error"]


def test_the_more_precision_hint_never_names_the_target_that_failed():
    from types import SimpleNamespace

    from deploykit.pipeline import _failure_hints

    unsure = {"outputs": {"p": {"flips": {"count": 9, "confident": 0, "max_lead": 0.1, "median_lead": 0.02}}}}
    sure = {"outputs": {"p": {"flips": {"count": 9, "confident": 2, "max_lead": 0.9, "median_lead": 0.02}}}}
    model = SimpleNamespace(keras_model=None)
    x = {"x": np.zeros((4, 3), np.float32)}
    (int8,) = _failure_hints(get_target("tflite-int8"), model, x, unsure)
    (int16,) = _failure_hints(get_target("tflite-int16x8"), model, x, unsure)
    assert "try tflite-int16x8" in int8 and "tflite-int16x8" not in int16 and "tflite-dynamic" in int16
    assert "hard_swish" not in int8  # a model without it is not told about it
    import keras

    swish = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="hard_swish"), keras.layers.Dense(2)])
    (mnv3,) = _failure_hints(get_target("tflite-int8"), SimpleNamespace(keras_model=swish), x, unsure)
    assert "tflite-int16x8's quantizer has no kernel for this model's hard_swish" in mnv3  # it refused MobileNetV3 back
    assert "try tflite-int16x8" not in mnv3 and "try a target with float activations (tflite-dynamic" in mnv3
    # a one-hot exported as comparisons has no ONE_HOT in the file: the one-hot hint is not given (review)
    import keras as k3

    cat = k3.Input((1,), dtype="int32")
    hot = k3.Model(cat, k3.layers.Dense(2)(k3.layers.CategoryEncoding(4, "one_hot", name="c")(cat)))
    failed = {"outputs": {"p": {"collapsed_column": {"share_of_range": 1e-8}}}, "failures": ["x"]}
    with_op = _failure_hints(get_target("tflite-int8"), SimpleNamespace(keras_model=hot), x, failed, ops={"ONE_HOT"})
    without = _failure_hints(get_target("tflite-int8"), SimpleNamespace(keras_model=hot), x, failed, ops={"NOT_EQUAL"})
    assert any("integer conversion of a one-hot ('c')" in h for h in with_op)
    assert not any("one-hot" in h for h in without), without
    # after --qat the model was trained for int8: not advised again (TFLite Micro's hint said nothing else)
    from deploykit.pipeline import _after_qat, _more_precision

    assert _after_qat([_more_precision("tflite", None), _more_precision("tflm", None), "other"]) == [
        "for more precision try tflite-int16x8 (16-bit activations, int8 weights: about the same size) or "
        "tflite-dynamic (tflite-int16x8: in a run without --qat, which trains for int8 files only)", "other"]
    # a target --qat refuses is named as one for a run without it; tflite-int8 and tflite-dynamic are not
    (onnx,) = _after_qat([_more_precision("onnx", None)])
    assert onnx.endswith("(onnx-int16x8, onnx-fp16: in a run without --qat, which trains for int8 files only)"), onnx
    # tf_keras MobileNetV3 writes x * relu6(x + 3) / 6: no activation says it, the file's fused op does
    (fused,) = _failure_hints(get_target("tflite-int8"), model, x, unsure, ops={"CONV_2D", "HARD_SWISH"})
    assert "no kernel for this model's hard_swish" in fused and "try tflite-int16x8" not in fused
    (onnx8,) = _failure_hints(get_target("onnx-int8-qdq"), model, x, unsure)
    (onnx16,) = _failure_hints(get_target("onnx-int16x8"), model, x, unsure)
    assert "try onnx-int16x8" in onnx8 and "onnx-int16x8" not in onnx16 and "onnx-int8-dynamic" in onnx16
    assert _failure_hints(get_target("tflite-int8"), model, x, sure) == []  # a changed sure answer: not precision
    assert _failure_hints(get_target("tflite-fp16"), model, x, unsure) == []
    lost = {"outputs": {"p": {**unsure["outputs"]["p"], "vanished_class": {"class": 1, "samples": 5}}}}
    assert _failure_hints(get_target("tflite-int8"), model, x, lost) == []  # a range problem: its own hint says so


def test_evaluation_inputs_past_the_calibration_range_are_named_instead_of_more_precision():
    """Calibrated on images at 0.85 of the evaluation's brightness, int8 and int16x8 failed by the same
    amount and were told to try more precision (int16x8: float activations); the ranges were the cause."""
    from types import SimpleNamespace

    from deploykit.data import Dataset
    from deploykit.pipeline import _failure_hints

    unsure = {"outputs": {"p": {"flips": {"count": 9, "confident": 0, "max_lead": 0.1, "median_lead": 0.02}}}}
    model = SimpleNamespace(keras_model=None)
    x = np.random.default_rng(0).uniform(0, 16, (300, 8, 8, 1)).astype("float32")
    dim = Dataset([x * 0.85], None, "dim.npz")
    for name, level in (("tflite-int8", "int8"), ("tflite-int16x8", "int16"), ("onnx-int8-qdq", "int8")):
        (hint,) = _failure_hints(get_target(name), model, {"pixels": x[:200]}, unsure, dim)
        assert hint.startswith("input 'pixels' reaches 0.") and "..13.6 of the 200 calibration samples in 1" in hint
        assert f"{level} activations clip beyond their calibrated range" in hint
        assert hint.endswith("or raise the target's calibration_samples (200 of 300 used)")
    same = Dataset([x], None, "same.npz")  # calibrated on the evaluation's own range: precision, as before
    (hint,) = _failure_hints(get_target("tflite-int8"), model, {"pixels": x[:200]}, unsure, same)
    assert hint.startswith("for more precision try tflite-int16x8")
    assert _failure_hints(get_target("tflite-dynamic"), model, {"pixels": x[:200]}, {}, dim) == []  # no calibration
    # a column of 8-bit steps: the way out said per target, not "scale inside the model" (that layer stays as it is)
    lost = {"outputs": {"y": {"collapsed_column": {"share_of_range": 1e-8}}}}
    (int8,) = _failure_hints(get_target("tflite-int8"), model, {"x": x[:4, 0, 0]}, lost)
    assert int8.startswith("end the model at columns of similar ranges") and int8.endswith("(tflite-dynamic, tflite-fp16)")
    assert _failure_hints(get_target("tflite-dynamic"), model, {"x": x[:4, 0, 0]}, lost)[:1] != [int8]


def test_tflite_int8_of_a_one_hot_names_it_and_the_float_targets_that_pass(tmp_path):
    """TFLite's int8 file quantizes a one-hot's ids and zeros: it failed, told of a lost column only. A
    Keras 3 CategoryEncoding (or Discretization, below) is now exported as comparisons and passes (TFLite
    Micro too); the one-hot hint is tested in test_the_more_precision_hint_never_names_the_target_that_failed."""
    import keras

    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(0).integers(0, 8, (300, 1)).astype("int32")
    inp = keras.Input((1,), name="cat", dtype="int32")
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.CategoryEncoding(8, "one_hot", name="cat_1hot")(inp)))
    result = deploykit.convert(model, ["tflite-int8", "tflm-int8"], data=ids, out=tmp_path / "o", bench=False)
    for art in result.artifacts:
        assert art["status"] == "ok" and art["verification"]["max_abs_error"] < 0.02, (art["target"], art["error"])


def test_a_tf_keras_tabular_model_exports_its_lookup_and_encodings_as_comparisons(tmp_path):
    """tf_keras computes every CategoryEncoding and Discretization encoding with DenseBincount (no TFLite
    kernel) and IntegerLookup with a hash table (no target takes one): such a model failed every TFLite
    target. Its exported copy now carries the same comparisons as a Keras 3 model's. A bincount the model
    computes itself is still refused, with where DenseBincount comes from."""
    import tensorflow as tf
    import tf_keras

    rng = np.random.default_rng(0)
    num, cat = rng.normal(size=(300, 1)).astype("float32"), rng.integers(0, 5, (300, 1)).astype("int32")
    code = rng.choice([3, 7, 11, 20], (300, 1)).astype("int64")
    tf_keras.utils.set_random_seed(0)
    ni, ci = tf_keras.Input((1,), name="num"), tf_keras.Input((1,), name="cat", dtype="int32")
    ki = tf_keras.Input((1,), name="code", dtype="int64")
    h = tf_keras.layers.Concatenate()([
        tf_keras.layers.Discretization(bin_boundaries=[-1.0, 0.0, 1.0], output_mode="one_hot", name="bins")(ni),
        tf_keras.layers.CategoryEncoding(5, "multi_hot", name="cat_hot")(ci),
        tf_keras.layers.IntegerLookup(vocabulary=[3, 7, 11, 20], output_mode="one_hot", name="codes")(ki)])
    model = tf_keras.Model([ni, ci, ki], tf_keras.layers.Dense(3)(h))
    result = deploykit.convert(model, ["tflite-fp32", "tflite-int8", "onnx-fp32"], data={"num": num, "cat": cat, "code": code},
                               out=tmp_path / "o", bench=False)
    for art in result.artifacts:
        assert art["status"] == "ok" and art["verification"]["max_abs_error"] < 0.05, (art["target"], art["error"])
    replaced = {r["name"]: r["as"] for r in result["model"]["replaced_for_export"]}
    assert set(replaced) == {"bins", "cat_hot", "codes"} and "(no DenseBincount)" in replaced["cat_hot"], replaced

    class Counts(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rng.normal(size=(6, 3)).astype("float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32, name="ids")])
        def __call__(self, ids):
            return {"y": tf.matmul(tf.math.bincount(ids, minlength=6, maxlength=6, axis=-1, dtype=tf.float32), self.w)}

    counts = Counts()
    tf.saved_model.save(counts, str(tmp_path / "sm"), signatures={"serving_default": counts.__call__})
    ids = rng.integers(0, 6, (40, 4)).astype("int32")
    result = deploykit.convert(str(tmp_path / "sm"), ["tflite-fp32"], data=ids, out=tmp_path / "t", bench=False)
    assert "(DenseBincount: a bincount, e.g. a multi-hot or count encoding; Keras's CategoryEncoding and Discretization " \
           "layers are exported as comparisons" in result.artifact("tflite-fp32")["error"]


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
def test_a_keras3_discretization_encoding_converts_to_tflite_int8(tmp_path, mode):
    """Discretization's one-hot failed TFLite's int8 file (ONE_HOT quantized), and its multi_hot/count
    every TFLite target (DenseBincount has no kernel). The encoding is now written as comparisons of the
    bucket id, which stays Bucketize on the float value: buckets are exact in the int8 file too."""
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(0, 8, (300, 2)).astype("float32")
    x[:4, 0] = [1.0, 2.5, 4.0, 6.0]  # on the boundaries
    num = keras.Input((2,) if mode != "one_hot" else (1,), name="num")
    bins = keras.layers.Discretization(bin_boundaries=[1.0, 2.5, 4.0, 6.0], output_mode=mode, name="bins")(num)
    model = keras.Model(num, keras.layers.Dense(3)(keras.layers.Flatten()(bins)))
    data = x if mode != "one_hot" else x[:, :1]
    result = deploykit.convert(model, ["tflite-fp32", "tflite-int8", "tflm-int8"], data=data, out=tmp_path / "o",
                               bench=False)
    for target in ("tflite-fp32", "tflite-int8"):
        art = result.artifact(target)
        assert art["status"] == "ok" and art["verification"]["max_abs_error"] < 0.05, (target, art["error"])
    assert result.artifact("tflm-int8")["error"].startswith("tflm-int8: TFLite Micro has no kernel for op(s) BUCKETIZE")
    replaced = result["model"]["replaced_for_export"]
    assert [(r["name"], r["class"]) for r in replaced] == [("bins", "Discretization")], replaced
    assert replaced[0]["as"].startswith("its bucket id compared with each of its 5 buckets"), replaced


def test_a_badly_conditioned_model_is_judged_within_its_own_float32_noise(tmp_path):
    """Deep tanh stack with gain 4: the last bit of an input moves its outputs by ~1e-2.

    A correct fp32 conversion rounds differently from TensorFlow and lands that far
    off too. Without the noise allowance it fails; with it, it passes and says why.
    """
    import keras

    keras.utils.set_random_seed(0)
    init = keras.initializers.RandomNormal(stddev=4 / np.sqrt(64))
    model = keras.Sequential([keras.Input((16,), name="x")]
                             + [keras.layers.Dense(64, activation="tanh", kernel_initializer=init) for _ in range(25)]
                             + [keras.layers.Dense(8, name="y")])
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    base = get_target("tflite-fp32")
    strict = dataclasses.replace(base, name="tflite-fp32-no-noise",
                                 tolerance=dataclasses.replace(base.tolerance, noise_multiple=0.0))
    result = deploykit.convert(model, ["tflite-fp32", strict], data=x, out=tmp_path / "out",
                               iterations=ITERATIONS, warmup=WARMUP)
    noise = result["steps"]["reference"]["float32_noise"]
    assert len(noise) == 1 and list(noise.values())[0] > 1e-3  # vs ~1e-7 for a well-conditioned model
    ok, strict_art = result.artifact("tflite-fp32"), result.artifact("tflite-fp32-no-noise")
    assert strict_art["status"] == "failed" and re.search("exceeds the allowed|is allowed", strict_art["error"])
    assert ok["status"] == "ok", ok["error"]
    assert ok["verification"]["max_abs_error"] == strict_art["verification"]["max_abs_error"]  # same file, same errors
    assert any("own float32 noise" in n for n in ok["verification"]["notes"])
    assert "own float32 noise" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_keras3_recurrent_models_convert_to_tflite_with_a_fixed_batch(tmp_path, rnn):
    """Keras 3 LSTM/GRU carry TensorList ops that TFLite lowers only with a static batch.

    The float targets are re-exported at batch 1 and verified there; calibrated int8
    (whose calibrator segfaults on the loop in TF 2.21) fails alone, with the way out named.
    """
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20, 4), name="seq"), getattr(keras.layers, rnn)(8),
                              keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(32, 20, 4)).astype("float32")
    result = deploykit.convert(model, ["tflite-fp32", "tflite-dynamic", "tflite-int8"], data=x, out=tmp_path / "out",
                               iterations=ITERATIONS, warmup=WARMUP)
    for name in ("tflite-fp32", "tflite-dynamic"):
        a = result.artifact(name)
        assert a["status"] == "ok", a["error"]
        assert a["settings"]["converter"]["fixed_batch"] == 1 and a["verification"]["batch_sizes"] == [1]
        assert a["verification"]["samples"] == 32
    assert result.artifact("tflite-fp32")["verification"]["max_abs_error"] < 1e-5
    int8 = result.artifact("tflite-int8")
    assert int8["status"] == "failed" and "recurrent loop" in int8["error"] and "tflite-dynamic" in int8["error"]
    report = (result.out / "report.md").read_text()  # the batch-1 contract is in the report, not only the manifest
    assert "- tflite-fp32: takes batches of exactly 1 (recurrent loops" in report


def test_a_series_of_any_length_into_a_valid_conv_and_a_gru_verifies_on_tflite(tmp_path):
    """Batch fixed at 1 (the loop), length free: XNNPACK cannot prepare the valid Conv1D at the stored length
    1, so LiteRT builds on the first inputs, and it wrote verification's batch of 8 into the batch of 1: one
    answer for eight samples, every TFLite target failed with "cannot reshape array of size 75"."""
    import keras

    rng = np.random.default_rng(0)
    x = (100 + 30 * np.sin(np.outer(rng.uniform(0.05, 0.4, 64), np.arange(40)))).astype("float32")[..., None]
    norm = keras.layers.Normalization()
    norm.adapt(x)
    inp = keras.Input((None, 1), name="signal")
    out = keras.layers.Dense(1)(keras.layers.GRU(4)(keras.layers.Conv1D(4, 5)(norm(inp))))
    result = deploykit.convert(keras.Model(inp, out), ["tflite-fp32"], data={"x": x}, out=tmp_path / "o", bench=False)
    assert result.ok, result.artifact("tflite-fp32")["error"]
    assert "batch size 8 not accepted" in result.artifact("tflite-fp32")["verification"]["batch_note"]


def test_a_recurrent_savedmodel_that_tflite_needs_at_a_fixed_batch_is_refused_with_the_way_out(tmp_path):
    """A tf_keras GRU saved as a SavedModel: its traced loop cannot be given a fixed batch, and the
    failure said "replace those layers" where the .h5 of the same model converts."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((12, 3), name="seq")
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2)(tf_keras.layers.GRU(6)(inp)))
    model.save(tmp_path / "gru_sm", save_format="tf")
    x = np.random.default_rng(0).normal(size=(8, 12, 3)).astype("float32")
    result = deploykit.convert(str(tmp_path / "gru_sm"), ["tflite-fp32", "onnx-fp32"], data=x, out=tmp_path / "out",
                               bench=False)
    tfl = result.artifact("tflite-fp32")
    assert tfl["status"] == "failed" and ".keras/.h5 file" in tfl["error"] and "ONNX" in tfl["error"], tfl["error"]
    assert "replace those layers" not in tfl["error"]
    assert result.artifact("onnx-fp32")["status"] == "ok"


def test_a_tf_keras_lstm_converts_to_a_stateless_tflite_loop_and_int8_is_refused_with_the_way_out(tmp_path):
    """TFLite fuses a tf_keras LSTM into UNIDIRECTIONAL_SEQUENCE_LSTM, whose state persists between
    invocations: the second sample started from the first one's state (off by up to 0.51). Exported as
    a plain loop it becomes a stateless WHILE: every sample run on its own, in any order, matches the
    model. int8 (calibration crashes on the loop) is refused with the way out. A stateful=True model
    is refused before anything is written: its outputs depend on every call before (its reference
    predict crashed with a traceback)."""
    import tf_keras
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.errors import UserError

    x = np.random.default_rng(0).normal(size=(16, 10, 6)).astype("float32")
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((10, 6), name="seq")
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax")(tf_keras.layers.LSTM(8, name="rnn")(inp)))
    model.save(tmp_path / "lstm.h5")
    result = deploykit.convert(str(tmp_path / "lstm.h5"), ["tflite-fp32", "tflite-int8", "onnx-fp32"], data=x,
                               out=tmp_path / "out", bench=False)
    tfl = result.artifact("tflite-fp32")
    assert tfl["status"] == "ok", tfl["error"]
    assert "stateless WHILE" in tfl["settings"]["converter"]["fixed_batch_reason"]
    interp = Interpreter(model_path=str(result.out / tfl["path"]))
    interp.allocate_tensors()
    (inp_d,), (out_d,) = interp.get_input_details(), interp.get_output_details()
    ref = model.predict(x, verbose=0)
    for i in (3, 0, 3, 7):  # runs repeated and out of order: nothing carried from one to the next
        interp.set_tensor(inp_d["index"], x[i:i + 1])
        interp.invoke()
        np.testing.assert_allclose(interp.get_tensor(out_d["index"])[0], ref[i], atol=1e-5)
    int8 = result.artifact("tflite-int8")
    assert int8["status"] == "failed" and "calibration" in int8["error"] and "tflite-dynamic" in int8["error"]
    assert result.artifact("onnx-fp32")["status"] == "ok"

    inp = tf_keras.Input((10, 6), batch_size=1, name="seq")
    stateful = tf_keras.Model(inp, tf_keras.layers.Dense(3)(tf_keras.layers.LSTM(8, stateful=True, name="rnn")(inp)))
    stateful.save(tmp_path / "stateful.h5")
    with pytest.raises(UserError, match=r"layer\(s\) 'rnn' are stateful \(stateful=True"):
        deploykit.convert(str(tmp_path / "stateful.h5"), ["onnx-fp32"], data=x, out=tmp_path / "out2", bench=False)
    assert not (tmp_path / "out2").exists()


def test_a_binary_sigmoid_classifier_is_scored_and_other_labels_are_said_unused(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.Adam(0.03), "binary_crossentropy")
    model.fit(x, y, epochs=40, batch_size=64, verbose=0)
    result = deploykit.convert(model, ["tflite-fp32"], data={"x": x, "y": y}, out=tmp_path / "bin",
                               iterations=ITERATIONS, warmup=WARMUP)
    v = result.artifact("tflite-fp32")["verification"]
    expected = float(np.mean((np.asarray(model.predict(x, verbose=0))[:, 0] > 0.5) == y))
    assert v["reference_accuracy"] == pytest.approx(expected) and expected > 0.8
    assert v["accuracy"] == pytest.approx(expected, abs=0.01) and v["top1_agreement"] >= 0.99
    assert "float32_noise" not in result["steps"]["reference"]  # within the plain bound: never measured
    other = deploykit.convert(model, ["tflite-fp32"], data={"x": x, "y": y * 7}, out=tmp_path / "seven",
                              iterations=ITERATIONS, warmup=WARMUP)
    v = other.artifact("tflite-fp32")["verification"]
    assert "accuracy" not in v and any("were not used: no output gives a class" in n for n in v["notes"])
    # a float argmax (N, 1) was taken for "an argmax": the message says it must be integers
    assert any("an integer argmax (N,) (a float one: cast it to int32 inside the model)" in n for n in v["notes"])
    # said once for the run, in the report's warnings (the console prints the same), not "with labels."
    assert other["data"]["labels_unused"].startswith("labels of shape (256,) were not used")
    report = (other.out / "report.md").read_text()
    assert "with labels that no output scores" in report and "with labels." not in report
    assert "**Warning:** labels of shape (256,) were not used" in report


def test_int8_calibration_spans_data_sorted_by_scale(tmp_path):
    """Data saved in order (by class, by size): calibration must see all of it, not its first 200 samples.

    Here the samples grow 30-fold in scale from first to last. Calibrated on the first half only, int8
    clipped the second half's outputs by up to 40 % of their range (measured: 3.6 of 9).
    """
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(400, 8)).astype("float32") * np.linspace(0.1, 3.0, 400, dtype="float32")[:, None]
    model = keras.Sequential([keras.Input((8,), name="f"), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    result = deploykit.convert(model, ["tflite-int8", "onnx-int8-qop"], data=x, out=tmp_path / "out",
                               iterations=ITERATIONS, warmup=WARMUP)
    for a in result.artifacts:
        assert a["settings"]["converter"]["calibration_samples"] == 200
        out = next(iter(a["verification"]["outputs"].values()))
        assert out["max_abs_error"] < 0.15 * out["reference_range"], (a["target"], out["max_abs_error"], out["reference_range"])


@pytest.fixture(scope="module")
def erf_run(tmp_path_factory):
    """A model whose op (Erf) has no TFLite builtin kernel: the converter itself fails."""
    import keras

    inp = keras.Input((4,), name="v")
    model = keras.Model(inp, keras.layers.Dense(3)(keras.ops.erf(inp)), name="erf_model")
    data = np.random.default_rng(0).uniform(-1, 1, (16, 4)).astype("float32")
    out = tmp_path_factory.mktemp("convert") / "erf"
    return deploykit.convert(model, ["tflite-fp32", "tflite-int8"], data=data, out=out, bench=False)


def test_converter_failure_is_recorded_and_leaves_no_partial_file(erf_run):
    result = erf_run
    assert not result.ok
    for a in result.artifacts:
        assert a["status"] == "failed"
        assert a["path"] == "" and a["sha256"] == ""
        assert "Erf" in a["error"] and a["target"] in a["error"]
    files = [p for p in result.out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted([MANIFEST_NAME, "report.md", "report.html"])
    assert "Erf" in (result.out / "report.md").read_text()


def test_converter_failure_names_only_real_ops(erf_run):
    """The MLIR text also mentions attributes such as `tf.entry_function`; only ops are named."""
    for a in erf_run.artifacts:
        assert re.search(r"cannot convert op\(s\) Erf \(e\.g\. erf_model_1/\S*Erf\S*\) with builtin kernels", a["error"]), a["error"]
        assert "entry_function" not in a["error"]  # the node named is where the Keras layer sits


def test_user_errors_raise_before_anything_is_written(tmp_path, keras3_path, data_npz):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="need calibration data"):
        deploykit.convert(keras3_path, ["tflite-int8"], out=out)
    with pytest.raises(DataError, match="has shape"):
        deploykit.convert(keras3_path, ["tflite-fp32"], data=np.zeros((3, 8, 8, 3)), out=out)
    assert not out.exists()


def test_target_name_cannot_write_outside_the_output_dir(tmp_path, keras3_model, digits):
    base = tmp_path / "base"
    out = base / "out"
    try:
        evil = dataclasses.replace(get_target("tflite-fp32"), name="../escaped")
        deploykit.convert(keras3_model, [evil], data=(digits.x_eval, digits.y_eval), out=out, bench=False)
    except DeployError:
        pass
    outside = [p for p in base.rglob("*") if p != out and out not in p.parents]
    assert outside == []


def test_inputs_of_any_height_and_width_verify_in_every_runtime(tmp_path):
    """keras.Input((None, None, 3)): stored as 1x1, where a 3x3 VALID conv cannot be prepared;
    the runtimes must build for the real input size (LiteRT's XNNPACK, TF.js's warm-up run)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), name="img")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    data = np.random.default_rng(0).normal(size=(16, 12, 12, 3)).astype("float32")
    result = deploykit.convert(keras.Model(inp, out), ["tflite-fp32", "tflite-int8", "onnx-fp32", "tfjs-fp32"],
                               data=data, out=tmp_path / "dyn", iterations=2, warmup=1)
    assert result.ok, [(a["target"], a["error"]) for a in result.artifacts]
    assert result.artifact("tfjs-fp32")["benchmark"]["n"] == 2
    # `deploy bench` of such a file needs a real sample: random inputs have no size to take
    tfl = result.out / result.artifact("tflite-fp32")["path"]
    with pytest.raises(UserError, match="pass --data"):
        deploykit.bench(tfl, iterations=1)
    assert deploykit.bench(tfl, iterations=2, warmup=0, data=data[:1])["n"] == 2


def test_a_keras3_model_built_with_a_dict_of_inputs_converts_with_each_input_in_its_place(tmp_path):
    """Keras 3 refuses a list for a dict-input model; two same-shaped inputs would swap silently if mis-mapped."""
    import keras

    keras.utils.set_random_seed(0)
    zeta, alpha = keras.Input((4,), name="zeta"), keras.Input((4,), name="alpha")
    h = keras.layers.Concatenate()([zeta, keras.layers.Rescaling(3.0)(alpha)])
    model = keras.Model({"zeta": zeta, "alpha": alpha}, keras.layers.Dense(3, activation="softmax")(h))
    rng = np.random.default_rng(0)
    z, a = rng.normal(size=(64, 4)).astype("float32"), rng.normal(size=(64, 4)).astype("float32") * 5
    expected = model.predict({"zeta": z, "alpha": a}, verbose=0)
    path = tmp_path / "dict.keras"
    model.save(path)
    np.savez(tmp_path / "d.npz", zeta=z, alpha=a)
    result = deploykit.convert(path, ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=tmp_path / "d.npz",
                               out=tmp_path / "out", bench=False)
    for artifact in result.artifacts:
        assert artifact["status"] == "ok", (artifact["target"], artifact["error"])
    from deploykit.models import load_model

    loaded = load_model(path)
    names = [s.name for s in loaded.inputs]
    got = loaded.predict([{"zeta": z, "alpha": a}[n] for n in names])[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_random_augmentation_layers_are_left_out_of_the_export_and_reported(tmp_path):
    """Keras 3 keeps their random ops and seed updates in the traced graph: every target used to fail."""
    import keras

    keras.utils.set_random_seed(0)
    augment = keras.Sequential([keras.layers.RandomFlip(), keras.layers.RandomRotation(0.1)], name="augment")
    inp = keras.Input((12, 12, 3), name="img")
    h = keras.layers.RandomContrast(0.2)(augment(inp))
    h = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(h))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(0).uniform(0, 255, (48, 12, 12, 3)).astype("float32")
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=x, out=tmp_path / "out", bench=False)
    for artifact in result.artifacts:
        assert artifact["status"] == "ok", (artifact["target"], artifact["error"])
        assert artifact["verification"]["max_abs_error"] < 1e-5
    removed = result["model"]["replaced_for_export"]
    assert [r["class"] for r in removed] == ["RandomFlip", "RandomRotation", "RandomContrast"]
    assert {r["as"] for r in removed} == {"Identity"}
    assert "Replaced by Identity" in result.report_path.read_text()
    assert [type(layer).__name__ for layer in model.layers[1].layers] == ["RandomFlip", "RandomRotation"]  # untouched


def test_a_mixed_float16_model_is_rebuilt_in_float32_and_converts_everywhere(tmp_path):
    """float16 compute ops failed TFLite (builtin kernels), TF.js (weights) and ORT's quantizer."""
    import keras

    keras.utils.set_random_seed(0)
    mixed = "mixed_float16"  # per layer: a global policy would leak into the other tests
    inp = keras.Input((10, 10, 3), name="img")
    h = keras.layers.Conv2D(8, 3, activation="relu", dtype=mixed)(inp)
    h = keras.layers.BatchNormalization(dtype=mixed)(h)
    h = keras.layers.Dense(8, activation="relu", dtype=mixed)(keras.layers.GlobalAveragePooling2D(dtype=mixed)(h))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", dtype="float32")(h))
    x = np.random.default_rng(0).normal(size=(64, 10, 10, 3)).astype("float32")
    targets = ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8-qdq", "tfjs-fp32"]
    import random

    random.seed(5)
    before = random.getstate()
    result = deploykit.convert(model, targets, data=x, out=tmp_path / "out", bench=False)
    assert random.getstate() == before  # the rebuild's initializers drew from the caller's stream
    for artifact in result.artifacts:
        assert artifact["status"] == "ok", (artifact["target"], artifact["error"])
    assert result["model"]["float32_from_policy"] == "mixed_float16"
    assert "rebuilt in float32" in result.report_path.read_text()
    from deploykit.models import load_model

    twin = load_model(model).keras_model
    assert twin is not model and all(layer.compute_dtype == "float32" for layer in twin.layers)
    np.testing.assert_allclose(np.asarray(twin(x)), np.asarray(model(x)), atol=5e-3)


def test_a_float64_model_is_rebuilt_in_float32_and_converts_everywhere(tmp_path):
    """A model built under keras.config.set_floatx("float64") failed every target with messages naming
    ops (BiasAdd, Conv2D...) and never float64. It is rebuilt in float32, float64 input included."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2), name="img", dtype="float64")
    h = keras.layers.Conv2D(4, 3, activation="relu", dtype="float64")(inp)
    h = keras.layers.Dense(8, activation="relu", dtype="float64")(keras.layers.Flatten(dtype="float64")(h))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", dtype="float64")(h))
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 2))  # float64, as NumPy makes it
    targets = ["tflite-fp32", "tflite-int8", "onnx-fp32", "tfjs-fp32"]
    result = deploykit.convert(model, targets, data=x, out=tmp_path / "out", bench=False)
    for artifact in result.artifacts:
        assert artifact["status"] == "ok", (artifact["target"], artifact["error"])
    assert result["model"]["float32_from_policy"] == "float64"
    assert [i["dtype"] for i in result["model"]["inputs"]] == ["float32"]
    assert "float64 dtype policy, not float32: it was rebuilt in float32" in result.report_path.read_text()
    seq = keras.Sequential([keras.Input((5,), dtype="float64"), keras.layers.Dense(4, dtype="float64")])
    result = deploykit.convert(seq, ["tflite-fp32"], data=x[:, 0, 0, :1].repeat(5, 1), out=tmp_path / "seq", bench=False)
    assert result.ok and result["model"]["float32_from_policy"] == "float64", result.artifacts


def test_tf_keras_mixed_and_float64_models_are_rebuilt_in_float32_and_subclassed_ones_refused(tmp_path):
    """Only Keras 3 models were rebuilt: a tf_keras mixed_float16 model failed TFLite naming ops (BiasAdd,
    MatMul...) and its "onnx-fp32" computed in float16; a subclassed Keras 3 one failed every target so."""
    import keras
    import tf_keras

    from deploykit.errors import ModelLoadError

    x = np.random.default_rng(0).random((64, 6)).astype("float32")
    for policy in ("mixed_float16", "float64"):
        L = tf_keras.layers
        tf_keras.utils.set_random_seed(0)
        inp = tf_keras.Input((6,), name="f", dtype="float32" if policy == "mixed_float16" else "float64")
        h = L.Dense(8, activation="relu", dtype=policy, name="hidden")(inp)
        model = tf_keras.Model(inp, L.Dense(3, activation="softmax", dtype="float32", name="probs")(h))
        result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=x, out=tmp_path / policy,
                                   bench=False)
        assert result.ok, [(a["target"], a["error"]) for a in result.artifacts]
        assert result["model"]["float32_from_policy"] == policy
        import onnx

        graph = onnx.load(str(result.out / "onnx-fp32" / "model.onnx")).graph
        assert {t.data_type for t in graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = keras.layers.Dense(8, activation="relu", dtype="mixed_float16")
            self.d2 = keras.layers.Dense(3, activation="softmax", dtype="float32")

        def call(self, inputs):
            return self.d2(self.d1(inputs))

    # a custom layer whose config has no dtype took the caller's global mixed_float16 when cloned: the "float32"
    # rebuild failed TFLite naming Mul, and its ONNX file kept float16 Casts
    @keras.saving.register_keras_serializable("deploykit_tests")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kw):
            super().__init__(**kw)
            self.factor = factor

        def call(self, inputs):
            return inputs * self.factor

        def get_config(self):
            return {"factor": self.factor}

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        i = keras.Input((6,), name="f")
        scaled = keras.Model(i, keras.layers.Dense(3, activation="softmax", dtype="float32")(Scale(3.0)(keras.layers.Dense(8)(i))))
        result = deploykit.convert(scaled, ["tflite-fp32", "onnx-fp32"], data=x, out=tmp_path / "scaled", bench=False)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"  # the caller's, put back
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.ok, [(a["target"], a["error"]) for a in result.artifacts]
    graph = onnx.load(str(result.out / "onnx-fp32" / "model.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "Cast"]

    sub = Sub()
    sub(x[:1])
    with pytest.raises(ModelLoadError, match=r"the model computes in mixed_float16, not float32, and cannot be rebuilt "
                                             r"in float32 here \(it cannot be cloned from its config: subclassed"):
        deploykit.convert(sub, ["tflite-fp32"], data=x, out=tmp_path / "sub", bench=False)
    assert not (tmp_path / "sub").exists()


def test_a_model_ending_in_argmax_converts_and_its_class_ids_are_judged_by_agreement(tmp_path):
    """keras.ops.argmax lowers to Bitcast/BitwiseAnd (a -0.0 guard) that no converter took; a flipped id
    was then judged elementwise ("max abs error 3"), not as the top-1 agreement it is."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = np.argmax(x[:, :4], axis=1)
    inp = keras.Input((8,), name="f")
    probs = keras.layers.Dense(4, activation="softmax")(keras.layers.Dense(16, activation="relu")(inp))
    model = keras.Model(inp, probs)
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=30, batch_size=50, verbose=0)
    ids_only = keras.Model(inp, keras.ops.argmax(probs, axis=-1))
    both = keras.Model(inp, [probs, keras.ops.argmax(probs, axis=-1)])
    targets = ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8-qop", "tfjs-fp32"]
    for name, m in (("ids", ids_only), ("both", both)):
        result = deploykit.convert(m, targets, data={"x": x, "y": y}, out=tmp_path / name, bench=False)
        for artifact in result.artifacts:
            v = artifact["verification"]
            assert artifact["status"] == "ok", (name, artifact["target"], artifact["error"])
            assert v["accuracy"] > 0.8 and abs(v["accuracy_drop_points"]) <= 1.0
            ids = v["outputs"]["output_0" if name == "ids" else "output_1"]
            assert ids["judged_by"] == "agreement" and ids["top1_agreement"] >= 0.97


def test_a_per_pixel_class_map_is_judged_by_the_share_of_pixels_reproduced(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1), name="img")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    logits = keras.layers.Conv2D(3, 1)(h)
    model = keras.Model(inp, [logits, keras.ops.argmax(logits, axis=-1)])
    x = np.random.default_rng(0).normal(size=(48, 12, 12, 1)).astype("float32")
    result = deploykit.convert(model, ["tflite-int8", "onnx-fp32"], data=x, out=tmp_path / "out", bench=False)
    for artifact in result.artifacts:
        v = artifact["verification"]
        assert artifact["status"] == "ok", (artifact["target"], artifact["error"])
        ids = v["outputs"]["output_1"]
        assert ids["judged_by"] == "agreement" and ids["id_agreement"] >= 0.97
        assert v["max_abs_error"] == v["outputs"]["output_0"]["max_abs_error"]  # the logits', not an id's
        assert not any("float32 noise" in n for n in v.get("notes", []))


def test_labels_beside_a_top_k_output_are_not_refused_as_out_of_range(tmp_path):
    """top_k's (N, 3) values were taken for a 3-class classifier: labels 0..9 were refused (exit 2) as out of range."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="f")
    probs = keras.layers.Dense(10, activation="softmax")(inp)
    scores, ids = keras.ops.top_k(probs, 3)
    model = keras.Model(inp, {"scores": scores, "ids": ids})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 10, 64)
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32"], data={"x": x, "y": y}, out=tmp_path / "out", bench=False)
    for artifact in result.artifacts:
        v = artifact["verification"]
        assert artifact["status"] == "ok", (artifact["target"], artifact["error"])
        assert v["outputs"]["ids"]["judged_by"] == "agreement" and v["outputs"]["ids"]["id_agreement"] == 1.0
        assert "accuracy" not in v and any("were not used: no output gives a class" in n for n in v["notes"])


def test_dynamic_range_on_a_model_too_small_to_quantize_says_so(tmp_path, all_targets_run):
    """TFLite leaves weight tensors under 1024 values float32: tflite-dynamic of a small MLP is the float file."""
    import keras

    result, _ = all_targets_run
    digits = result.artifact("tflite-dynamic")["settings"]["converter"]
    assert digits["weight_values"]["int8"] >= 1024 and "note" not in digits  # its large kernels are int8
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    small = deploykit.convert(model, ["tflite-dynamic"], data=x, out=tmp_path / "small", bench=False)
    a = small.artifact("tflite-dynamic")
    assert a["status"] == "ok" and set(a["settings"]["converter"]["weight_values"]) == {"float32"}
    assert any("no weight is stored as int8" in n and "largest has 96" in n for n in a["verification"]["notes"])
    assert "no weight is stored as int8" in (small.out / "report.md").read_text()
    # a float file with large weights (an LSTM loop after --qat kept them float): not blamed on the threshold
    from deploykit.converters.tflite import _record_weight_storage
    from deploykit.targets import get_target

    said: dict = {}
    _record_weight_storage(result.out / result.artifact("tflite-fp32")["path"], get_target("tflite-dynamic"), said)
    assert re.match(r"no weight is stored as int8: the converter kept every weight float32, though the largest has "
                    r"\d+ values \(past the 1024 TFLite quantizes from", said["note"]), said


def test_runtime_memory_is_the_artifacts_not_the_converting_process(all_targets_run):
    """The column showed this process's peak (TensorFlow and the reference: 700+ MB for a 40 KB model),
    then what this process gained per file, which depended on the order of the targets."""
    result, _ = all_targets_run
    import psutil

    process = psutil.Process().memory_info().rss
    for a in result.artifacts:
        if a["status"] != "ok" or not a["benchmark"] or a.get("selection"):
            continue
        b = a["benchmark"]
        if b["runtime"] == "tflm":
            assert b["runtime_memory_bytes"] == b["arena_bytes"] > 0 and "arena" in b["runtime_memory_of"]
            continue
        assert "new process" in b["runtime_memory_of"], (a["target"], b["runtime_memory_of"])
        assert 0 < b["runtime_memory_bytes"] < b["runtime_process_peak_bytes"] < process / 2, (a["target"], b, process)
        assert ("Node.js" in b["runtime_memory_of"]) == (b["runtime"] == "tfjs")
    assert "Runtime mem" in (result.out / "report.md").read_text()


def _tabular_classifier(x, y, *, classes: int, hidden: int, lr: float, epochs: int):
    """A Keras 3 MLP with its Normalization adapted on ``x`` (raw features in), trained on (x, y)."""
    import keras

    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input((x.shape[1],)), norm, keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(classes, activation="softmax")])
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def test_int8_failure_on_mixed_feature_scales_names_the_cause(tmp_path):
    """Tabular features from 0.01 to 1000 with Normalization inside: the int8 input step erases the small ones."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, 0.01, 400), rng.normal(0, 1000, 400), rng.normal(0, 1, 400)], axis=1).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 2] > 0)  # the 0.01-scale feature decides
    model = _tabular_classifier(x, y, classes=3, hidden=16, lr=0.02, epochs=30)
    result = deploykit.convert(model, ["tflite-int8", "tflite-dynamic"], data=(x, y), out=tmp_path / "tab", bench=False)
    int8 = result.artifact("tflite-int8")
    assert int8["status"] == "failed" and "mixes feature ranges" in int8["error"] and "tflite-dynamic" in int8["error"]
    assert result.artifact("tflite-dynamic")["status"] == "ok"

    # tflite-auto: the failing int8 candidate cannot ship, so it is not timed; one asked for by name still is
    result = deploykit.convert(model, ["tflite-auto", "tflite-dynamic"], data=(x, y), out=tmp_path / "auto",
                               iterations=3, warmup=1)
    arts = {a["target"]: a for a in result.manifest["artifacts"]}
    assert arts["tflite-int8"]["status"] == "failed" and arts["tflite-int8"]["candidate_of"] == "tflite-auto"
    assert not arts["tflite-int8"]["benchmark"]
    assert arts["tflite-fp32"]["benchmark"]["p50_ms"] > 0
    assert arts["tflite-dynamic"]["benchmark"]["p50_ms"] > 0
    assert arts["tflite-auto"]["status"] == "ok"


def test_weights_beyond_float16_stay_float32_or_are_named(tmp_path):
    """Raw-scale features (prices): the adapted Normalization's mean 3e5 is inf in float16."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(3e5, 8e4, 600), rng.normal(120, 40, 600)], axis=1).astype("float32")
    y = (x[:, 0] > 3e5).astype("int64")
    model = _tabular_classifier(x, y, classes=2, hidden=8, lr=0.05, epochs=20)
    result = deploykit.convert(model, ["tflite-fp16", "tfjs-fp16", "onnx-fp16"], data=(x, y), out=tmp_path / "price", bench=False)
    assert result.artifact("tfjs-fp16")["status"] == "ok", result.artifact("tfjs-fp16")["error"]
    assert result.artifact("onnx-fp16")["status"] == "ok", result.artifact("onnx-fp16")["error"]
    tfl = result.artifact("tflite-fp16")
    assert tfl["status"] == "failed" and "beyond float16's ±65504" in tfl["error"] and "tflite-fp32" in tfl["error"]
    json.loads((result.out / "manifest.json").read_text())


def test_a_handful_of_calibration_samples_is_said(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    result = deploykit.convert(model, ["tflite-int8", "tflite-fp32"], data=x, out=tmp_path / "few", bench=False)
    assert any("calibrated on 4 sample(s)" in n for n in result.artifact("tflite-int8")["verification"].get("notes", []))
    assert not any("calibrated on" in n for n in result.artifact("tflite-fp32")["verification"].get("notes", []))


def test_a_model_with_nan_weights_or_non_finite_outputs_is_refused_before_anything_is_written(tmp_path):
    import keras

    from deploykit.errors import ModelLoadError

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    out = tmp_path / "out"
    weights = model.get_weights()
    broken = [w.copy() for w in weights]
    broken[0][1, 2] = np.nan
    model.set_weights(broken)
    with pytest.raises(ModelLoadError, match=r"weight '(sequential\w*/)?hidden/kernel' holds 1 NaN value"):
        deploykit.convert(model, ["tflite-fp32"], data=x, out=out, bench=False)
    assert not out.exists()

    # finite weights, but outputs that overflow float32 on some samples: the model's, not an artifact's, fault
    overflow = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="relu", name="big")])
    overflow.set_weights([np.full((4, 2), 1e38, "float32"), np.zeros(2, "float32")])
    x[:5] = -np.abs(x[:5])  # negative sums stay finite (ReLU: 0)...
    x[5:] = np.abs(x[5:]) + 1  # ...positive ones overflow to inf
    with pytest.raises(DataError, match=r"the model's own output .* holds inf values on 11 of 16 samples .*first: sample 5"):
        deploykit.convert(overflow, ["tflite-fp32", "onnx-fp32"], data=x, out=out, bench=False)
    assert not out.exists()
    # an inf in the weights: the model is named, not the data
    overflow.set_weights([np.ones((4, 2), "float32"), np.array([np.inf, 0.0], "float32")])
    with pytest.raises(ModelLoadError, match=r"holds inf values on 16 of 16 samples, and weight '(sequential\w*/)?big/bias' holds inf"):
        deploykit.convert(overflow, ["tflite-fp32"], data=x, out=out, bench=False)
    assert not out.exists()


def test_every_format_keeps_the_models_input_and_output_order(tmp_path):
    """The TFLite converter listed a [classes, value] model's outputs as [value, classes], and tf2onnx and
    the TF.js signature listed (feat, aux) inputs alphabetically: reordered to the model's."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    inp, aux = keras.Input((6,), name="feat"), keras.Input((2,), name="aux")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([inp, aux]))
    model = keras.Model([inp, aux], [keras.layers.Dense(10, activation="softmax", name="b_cls")(h),
                                     keras.layers.Dense(1, name="a_reg")(h)])
    cls = model.get_layer("b_cls")  # sharper logits: an untrained model's near-ties fail int8 (and a failed
    cls.set_weights([w * 20 for w in cls.get_weights()])  # TFLite Micro target keeps no C sources)
    rng = np.random.default_rng(0)
    data = {"feat": rng.normal(size=(64, 6)).astype("float32"), "aux": rng.normal(size=(64, 2)).astype("float32")}
    result = deploykit.convert(model, ["tflite-fp32", "tflm-int8", "onnx-fp32", "onnx-int8-qdq", "tfjs-fp32"],
                               data=data, out=tmp_path / "o", bench=False)
    for target in ("tflite-fp32", "onnx-fp32", "tfjs-fp32"):  # (an untrained int8 twin may flip a sample or two)
        assert result.artifact(target)["status"] == "ok", result.artifact(target)["error"]
    import onnxruntime as ort

    for target in ("onnx-fp32", "onnx-int8-qdq"):
        session = ort.InferenceSession(str(result.out / result.artifact(target)["path"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["feat", "aux"], target
        assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"], target
        assert result.artifact(target)["settings"]["converter"]["input_names"] == ["feat", "aux"]
    signature = json.loads((result.out / "tfjs-fp32" / "model.json").read_text())["signature"]
    assert list(signature["inputs"]) == ["feat", "aux"] and list(signature["outputs"]) == ["output_0", "output_1"]
    for target in ("tflite-fp32", "tflm-int8"):
        interp = Interpreter(model_path=str(result.out / result.artifact(target)["path"]))
        assert [tuple(d["shape"][1:]) for d in interp.get_output_details()] == [(10,), (1,)], target
        assert [tuple(d["shape"][1:]) for d in interp.get_input_details()] == [(6,), (2,)], target
        assert result.artifact(target)["settings"]["converter"]["output_names"] == ["output_0", "output_1"]
    header = (result.out / "tflm-int8" / "model_io.h").read_text()
    assert re.search(r"// output 0: 'output_0' \(Keras 'b_cls'\) shape \(1, 10\)", header)
    line = next(ln for ln in (result.out / "report.md").read_text().splitlines() if ln.startswith("- **tflm-int8**: input"))
    assert line.index("input `feat`") < line.index("input `aux`")  # index order, as model_io.h numbers them


def test_int8_failure_on_a_normalization_with_constant_features_names_them(tmp_path, digits):
    """Flattened digits: border pixels never vary, so the adapted Normalization divides them by ~1e-7 and
    one int8 scale for its factors rounds every other feature's to zero."""
    import keras

    keras.utils.set_random_seed(0)
    x = digits.x_train.reshape(len(digits.x_train), -1)
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    model = keras.Sequential([keras.Input((64,)), norm, keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, digits.y_train, epochs=5, verbose=0)
    x_eval = digits.x_eval.reshape(len(digits.x_eval), -1)
    result = deploykit.convert(model, ["tflite-int8"], data=(x_eval, digits.y_eval), out=tmp_path / "o", bench=False)
    int8 = result.artifact("tflite-int8")
    assert int8["status"] == "failed"
    assert "Normalization 'norm' multiplies its features by factors from" in int8["error"]
    assert "never varied in the data it was adapted on" in int8["error"]


def test_normalization_hint_says_only_what_fits_the_model():
    """Wide-ranged features, none constant, and a variance beyond float16: the hint told the user to drop
    constant features (there were none) and to try tflite-fp16 (which saturates that variance)."""
    import keras

    from deploykit.models import load_model
    from deploykit.pipeline import _failure_hints
    from deploykit.targets import get_target

    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, 300, 256), rng.normal(0, 1, 256), rng.normal(0, 0.5, 256)], axis=1).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    model = keras.Sequential([keras.Input((3,), name="features"), norm, keras.layers.Dense(1)])
    hints = " ".join(_failure_hints(get_target("tflite-int8"), load_model(model), {"features": x}))
    assert "Normalization 'norm' multiplies its features by factors from" in hints
    assert "constant features" not in hints and "never varied" not in hints
    assert "tflite-dynamic" in hints and "tflite-fp16" not in hints  # 300**2 is beyond float16
    # 2 features in 0..1 beside 2 in 0..1e4, none constant: the two informative ones were called "never varied"
    x = np.concatenate([rng.random((256, 2)), rng.random((256, 2)) * 1e4], axis=1).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    model = keras.Sequential([keras.Input((4,), name="features"), norm, keras.layers.Dense(1)])
    hints = " ".join(_failure_hints(get_target("tflite-int8"), load_model(model), {"features": x}))
    assert "factors from" in hints and "never varied" not in hints and "constant features" not in hints, hints


def test_regression_targets_are_scored_by_error_in_every_artifact(tmp_path):
    """A regression model's --data 'y' were dropped (outputs compared with the reference only): the
    report had no figure of how good each file is at its job. Now every artifact's MAE/RMSE against
    the targets sits beside the reference's, from the artifact's own outputs."""
    import keras

    from deploykit.errors import DataError

    rng = np.random.default_rng(7)
    x = rng.uniform(0, 255, (200, 10)).astype("float32")  # all of them calibrate int8 (200 by default)
    y = ((x / 255 - 0.5) @ rng.normal(size=(10, 1))).astype("float32") + rng.normal(0, 0.05, (200, 1)).astype("float32")
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Rescaling(1 / 255, offset=-0.5),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mae")
    model.fit(x, y, epochs=30, verbose=0)
    model.save(tmp_path / "reg.keras")
    np.savez(tmp_path / "reg.npz", x=x, y=y[:, 0])  # (N,) targets for an (N, 1) output
    res = deploykit.convert(str(tmp_path / "reg.keras"), ["tflite-fp32", "tflite-int8", "onnx-int8-qop"],
                            data=str(tmp_path / "reg.npz"), out=tmp_path / "out", bench=False)
    assert res.ok
    ref = np.asarray(model.predict(x, verbose=0), np.float64)[:, 0]
    for name in ("tflite-fp32", "tflite-int8", "onnx-int8-qop"):
        v = res.artifact(name)["verification"]
        assert v["reference_mae"] == pytest.approx(float(np.mean(np.abs(ref - y[:, 0]))), rel=1e-4)
        assert v["reference_rmse"] >= v["reference_mae"] > 0 and v["rmse"] >= v["mae"] > 0
        assert "accuracy" not in v
    assert res.artifact("tflite-fp32")["verification"]["mae_increase"] == pytest.approx(0, abs=1e-4)
    int8 = res.artifact("tflite-int8")["verification"]
    assert int8["mae"] != int8["reference_mae"]  # the int8 file's own outputs, not the reference's
    text = (tmp_path / "out" / "report.md").read_text()
    assert "with target values" in text and "Lowest error against the targets" in text
    assert f"MAE {int8['mae']:.4g}" in text
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["data"]["targets"] is True
    # failed on parity (a bound the user tightened), it says how its error against the targets moved
    # and the way out either way: a report gave "failed" with nothing to judge it by
    strict = tmp_path / "strict.toml"
    strict.write_text('format = "tflite"\nprecision = "int8"\ntolerance = { range_atol = 0.0001, atol = 0.0 }\n')
    failed = deploykit.convert(str(tmp_path / "reg.keras"), [str(strict)], data=str(tmp_path / "reg.npz"),
                               out=tmp_path / "strict", bench=False).artifact("strict")
    assert failed["status"] == "failed"
    assert "against the targets its MAE changed by " in failed["error"] and "wider tolerance.range_atol (here 0.0001" in failed["error"]
    assert "tflite-int16x8" in failed["error"]

    np.savez(tmp_path / "counts.npz", x=x, y=np.round(np.abs(y[:, 0]) * 10))  # whole numbers: read as labels before
    counts = deploykit.convert(str(tmp_path / "reg.keras"), ["tflite-fp32"], data=str(tmp_path / "counts.npz"),
                               out=tmp_path / "counts", bench=False).artifact("tflite-fp32")["verification"]
    assert counts["reference_mae"] > 0 and "accuracy" not in counts

    # A one-unit sigmoid trained with mse and 0/1 labels is a binary classifier: scored by accuracy
    clf = keras.Sequential([keras.Input((10,)), keras.layers.Rescaling(1 / 255), keras.layers.Dense(1, activation="sigmoid")])
    clf.compile(optimizer="adam", loss="mse")
    clf.save(tmp_path / "clf.keras")
    np.savez(tmp_path / "bin.npz", x=x, y=(y[:, 0] > 0).astype("int64"))
    v = deploykit.convert(str(tmp_path / "clf.keras"), ["tflite-fp32"], data=str(tmp_path / "bin.npz"),
                          out=tmp_path / "bin", bench=False).artifact("tflite-fp32")["verification"]
    assert "accuracy" in v and "mae" not in v

    bare = keras.Sequential.from_config(model.get_config())  # never compiled: no loss to say what 'y' are
    bare.set_weights(model.get_weights())
    bare.save(tmp_path / "bare.keras")
    res = deploykit.convert(str(tmp_path / "bare.keras"), ["tflite-fp32"], data=str(tmp_path / "reg.npz"),
                            out=tmp_path / "bare", bench=False)
    assert res.artifact("tflite-fp32")["verification"]["reference_mae"] == pytest.approx(
        int8["reference_mae"], rel=1e-5)  # its 'y' fit its one float output: targets, scored
    np.savez(tmp_path / "wide.npz", x=x, y=np.repeat(y, 3, axis=1) + 0.5)  # fits no output: refused as labels
    with pytest.raises(DataError, match="not whole numbers"):
        deploykit.convert(str(tmp_path / "bare.keras"), ["tflite-fp32"], data=str(tmp_path / "wide.npz"),
                          out=tmp_path / "wide", bench=False)


def test_multi_hot_labels_are_refused_for_an_uncompiled_model_too(tmp_path):
    """Refused for a compiled classifier, multi-hot 'y' were read as an uncompiled softmax model's target
    values: ok, no accuracy, an MAE between probabilities and tags."""
    import keras

    rng = np.random.default_rng(0)
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    x, tags = rng.uniform(size=(64, 4)).astype("float32"), (rng.uniform(size=(64, 3)) > 0.5).astype("int64")
    with pytest.raises(DataError, match=r"labels 'y' have rows with \d ones .*not one-hot: multi-label"):
        deploykit.convert(model, ["tflite-fp32"], data=(x, tags), out=tmp_path / "out", bench=False)
    assert not (tmp_path / "out").exists()
    # an uncompiled sigmoid autoencoder's 0/1 targets are what it outputs: scored as target values, as before
    inp = keras.Input((3,), name="x")
    autoencoder = keras.Model(inp, keras.layers.Dense(3, activation="sigmoid")(keras.layers.Dense(4)(inp)))
    clean = (rng.uniform(size=(64, 3)) > 0.5).astype("float32")
    v = deploykit.convert(autoencoder, ["tflite-fp32"], data=(clean + rng.normal(0, 0.1, clean.shape).astype("float32"), clean),
                          out=tmp_path / "ae", bench=False).artifact("tflite-fp32")["verification"]
    assert v["reference_mae"] > 0 and "accuracy" not in v


@pytest.mark.parametrize("front", ["Resizing", "CenterCrop"])
def test_batchnorm_after_resizing_runs_in_inference_mode_in_every_artifact(tmp_path, front):
    """Keras 3 records training=True on Resizing/CenterCrop nodes, and its export traced the model without
    a training flag: every later BatchNormalization used batch statistics in the SavedModel, so the
    artifacts (and deploykit's reference) depended on the rest of the batch, and TF.js failed to freeze
    the moving-average updates."""
    import keras

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (64, 12, 12, 3)).astype("float32")
    inp = keras.Input((12, 12, 3), name="image")
    h = getattr(keras.layers, front)(8, 8)(inp)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h)))
    bn = model.get_layer("bn")  # moving statistics far from any batch's own
    bn.moving_mean.assign(np.full(4, 0.7, "float32"))
    bn.moving_variance.assign(np.full(4, 0.05, "float32"))
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x)
    res = deploykit.convert(str(tmp_path / "m.keras"), ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=str(tmp_path / "d.npz"),
                            out=tmp_path / "out", bench=False)
    assert res.ok, [a["error"] for a in res.artifacts]
    from ai_edge_litert.interpreter import Interpreter

    expected = model.predict(x[:1], verbose=0)
    run = Interpreter(str(res.out / "tflite-fp32" / "model.tflite")).get_signature_runner()
    np.testing.assert_allclose(run(image=x[:1])["output_0"], expected, atol=1e-5)


def test_tfjs_keeps_input_names_the_savedmodel_sanitized(tmp_path):
    """'zeta-in' became the signature key 'zeta_in': the model.json listed the inputs alphabetically
    (alpha, zeta_in), verification fed them by position and failed a correct file, and the name the
    report gave did not work in model.execute()."""
    import keras

    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="zeta-in"), keras.Input((4,), name="alpha")
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, keras.layers.Dense(4)(b)])))
    rng = np.random.default_rng(0)
    data = {"zeta-in": rng.normal(size=(32, 4)).astype("float32"), "alpha": rng.normal(size=(32, 4)).astype("float32")}
    result = deploykit.convert(model, ["tfjs-fp32"], data=data, out=tmp_path / "o", bench=False)
    assert result.ok, result.artifact("tfjs-fp32")["error"]
    signature = json.loads((result.out / "tfjs-fp32" / "model.json").read_text())["signature"]
    assert list(signature["inputs"]) == ["zeta-in", "alpha"]
    assert result.artifact("tfjs-fp32")["settings"]["converter"]["input_names"] == ["zeta-in", "alpha"]


def test_an_exception_from_the_progress_callback_reaches_the_caller(tmp_path):
    """Raised while a target converted, it was recorded as that target's failure and the run went on."""

    class Cancelled(Exception):
        pass

    def progress(msg):
        if msg.endswith("verifying"):
            raise Cancelled("user pressed cancel")

    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(Cancelled, match="user pressed cancel"):
        deploykit.convert(model, ["tflite-fp32"], data=x, out=tmp_path / "new" / "dirs" / "o", bench=False,
                          progress=progress)
    assert not (tmp_path / "new").exists()  # nor the parent directories the run had created


def test_each_output_says_which_keras_output_it_is(tmp_path):
    """Keras 3's export names a list of outputs output_0, output_1: the manifest, the report and
    `deploy inspect` now say which Keras output ('cls', 'value') each one is."""
    import keras

    inp = keras.Input((4,), name="x")
    h = keras.layers.Dense(8)(inp)
    model = keras.Model(inp, [keras.layers.Dense(3, activation="softmax", name="cls")(h), keras.layers.Dense(1, name="value")(h)])
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    result = deploykit.convert(model, ["tflite-fp32"], data=x, out=tmp_path / "o", bench=False)
    outs = result["model"]["outputs"]
    assert [(o["name"], o.get("keras_name")) for o in outs] == [("output_0", "cls"), ("output_1", "value")]
    text = (result.out / "report.md").read_text()
    assert "`output_0` (Keras `cls`) (None, 3) float32, `output_1` (Keras `value`) (None, 1) float32" in text
    assert "inputs `x` (None, 4) float32;" in text


def test_a_sequential_models_output_is_named_by_its_last_layer(tmp_path):
    """Keras 3's Sequential has no output_names: the digits example's output was never called 'probs'."""
    import keras
    import tf_keras
    from typer.testing import CliRunner

    from deploykit.cli import app

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3, name="probs")])
    model.save(tmp_path / "seq.keras")
    tk = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, name="probs")])
    tk.save(tmp_path / "seq.h5")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    result = deploykit.convert(tmp_path / "seq.keras", ["tflite-fp32"], data=x, out=tmp_path / "o", bench=False)
    assert [(o["name"], o.get("keras_name")) for o in result["model"]["outputs"]] == [("output_0", "probs")]
    assert [o.keras_name for o in deploykit.inspect(tmp_path / "seq.h5").outputs] == ["probs"]
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "seq.keras")])
    assert shown.exit_code == 0 and "(Keras 'probs')" in shown.output, shown.output


def test_convert_leaves_the_root_logger_to_the_caller(tmp_path):
    """TensorFlow's export (through absl) ran logging.basicConfig(): the caller's own basicConfig(filename=...)
    afterwards silently did nothing. Checked in a fresh process, where no handler exists before."""
    import subprocess
    import sys

    code = ("import logging, os, numpy as np, keras, deploykit\n"
            "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])\n"
            f"deploykit.convert(m, ['tflite-fp32', 'onnx-int8-qop'], data=np.ones((8, 4), 'float32'), "
            f"out={str(tmp_path / 'o')!r}, bench=False)\n"
            "print(len(logging.root.handlers), logging.root.level, os.environ.get('TF_CPP_MIN_LOG_LEVEL'), "
            "logging.getLogger('absl').level)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    # no handler added, the root level as Python sets it (tf2onnx/ORT quieted only while they ran),
    # no TF_CPP_MIN_LOG_LEVEL=3 left behind by importing tf2onnx, and absl's logger at NOTSET as before
    # (TensorFlow's export restored absl's verbosity as WARNING: the caller's absl.logging.info vanished)
    assert out.stdout.strip().splitlines()[-1:] == ["0 30 None 0"], (out.stdout, out.stderr[-800:])


def test_converts_in_threads_leave_the_callers_output_and_logging_alone(tmp_path):
    """Two converts in two threads left fd 2 on a deleted temp file (every later traceback lost), the
    root logger at ERROR, and TensorFlow's and absl's loggers at ERROR for good; what the main thread
    wrote while a worker converted went into deploykit's capture file. Checked in a fresh process."""
    import subprocess
    import sys

    code = f"""
import logging, os, sys, threading, numpy as np, keras, deploykit, absl.logging
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
fd2 = os.fstat(2)
import tensorflow as tf
tf_level, absl_level = logging.getLogger("tensorflow").level, absl.logging.get_verbosity()
m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
x = np.random.default_rng(0).random((16, 4)).astype("float32")
def run(i, targets):
    deploykit.convert(m, targets, data=x, out={str(tmp_path)!r} + f"/o{{i}}", bench=False)
threads = [threading.Thread(target=run, args=(0, ["tflite-fp32", "onnx-fp32"])),
           threading.Thread(target=run, args=(1, ["onnx-int8-qop", "tflite-fp16"]))]
for t in threads:
    t.start()
n = 0
while any(t.is_alive() for t in threads):
    os.write(2, f"caller-line-{{n}}\\n".encode())
    logging.getLogger("app").info("caller-log-%d", n)
    n += 1
    threads[0].join(0.02)
for t in threads:
    t.join()
same_fd2 = (os.fstat(2).st_ino, os.fstat(2).st_dev) == (fd2.st_ino, fd2.st_dev)
print("RESULT", n, same_fd2, logging.root.level, logging.getLogger("tensorflow").level == tf_level,
      absl.logging.get_verbosity() == absl_level)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    result = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    assert result, out.stderr[-1500:]
    _, n, same_fd2, root_level, tf_kept, absl_kept = result[0].split()
    assert (same_fd2, root_level, tf_kept, absl_kept) == ("True", "20", "True", "True"), out.stderr[-800:]
    n = int(n)
    assert n > 10
    written = {ln for ln in out.stderr.splitlines() if ln.startswith("caller-line-")}
    logged = {ln for ln in out.stdout.splitlines() if ln.startswith("app caller-log-")}
    assert len(written) == n and len(logged) == n  # nothing the caller wrote or logged went missing


def test_label_output_chooses_the_head_the_labels_score(tmp_path):
    """Labels always scored the first classifier output: parity labels were scored against a 10-class
    digit head (18 % "accuracy", no warning). label_output names the head, by artifact or Keras name."""
    import keras

    from deploykit.errors import UserError

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    model = keras.Model(inp, [keras.layers.Dense(10, activation="softmax", name="digit")(h),
                              keras.layers.Dense(2, activation="softmax", name="parity")(h)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 2, 64)
    expected = float(np.mean(model.predict(x, verbose=0)[1].argmax(axis=1) == y))
    for name in ("parity", "output_1"):
        v = deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / name, bench=False,
                              label_output=name).artifact("tflite-fp32")["verification"]
        assert v["scored_output"] == "output_1" and v["reference_accuracy"] == pytest.approx(expected)
    # unnamed, the labels go to the head the model agrees with (it fits both; the digit head's 10 classes
    # score 0/1 labels near chance), not to the first that fits
    default = deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / "d", bench=False)
    assert default.artifact("tflite-fp32")["verification"]["scored_output"] == "output_1"
    with pytest.raises(UserError, match="'head' is not an output of this model; its outputs: output_0 \\(digit\\)"):
        deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / "e", bench=False, label_output="head")
    assert not (tmp_path / "e").exists()


def test_label_output_refuses_target_values_that_fit_another_head(tmp_path):
    """--label-output reg with (N, 3) target values: they fit the 3-class head, not the named one, and were
    accepted, unused (a note, exit 0). Now refused, naming the output they fit; (N,) values score reg."""
    import keras

    from deploykit.errors import DataError

    inp = keras.Input((4,), name="feat")
    h = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, {"cls": keras.layers.Dense(3, activation="softmax", name="cls")(h),
                              "reg": keras.layers.Dense(1, name="reg")(h)})
    model.compile(loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    with pytest.raises(DataError, match=r"do not fit output 'reg' of shape \(None, 1\) \(the label output asked "
                                        r"for\); pass one row of its shape per sample, or --label-output 'cls'"):
        deploykit.convert(model, ["tflite-fp32"], data=(x, rng.normal(size=(32, 3)).astype("float32")),
                          out=tmp_path / "e", bench=False, label_output="reg")
    assert not (tmp_path / "e").exists()
    t = rng.normal(size=32).astype("float32")
    v = deploykit.convert(model, ["tflite-fp32"], data=(x, t), out=tmp_path / "o", bench=False,
                          label_output="reg").artifact("tflite-fp32")["verification"]
    expected = np.mean(np.abs(model.predict(x, verbose=0)["reg"][:, 0] - t))
    assert v["mae"] == pytest.approx(expected, rel=1e-4)


def test_onnx_keeps_input_names_the_savedmodel_lowercased(tmp_path):
    """'Feats' became the ONNX input 'feats': with the names differing, the file kept tf2onnx's alphabetical
    order (feats, token_ids) and verification fed the id input the features."""
    import keras
    import onnxruntime as ort

    ids, feats = keras.Input((6,), dtype="int32", name="token_ids"), keras.Input((5,), name="Feats")
    e = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(ids))
    model = keras.Model([ids, feats], keras.layers.Dense(3)(keras.layers.Concatenate()([e, keras.layers.Dense(4)(feats)])))
    rng = np.random.default_rng(0)
    data = {"token_ids": rng.integers(0, 50, (32, 6)).astype("int32"), "Feats": rng.normal(size=(32, 5)).astype("float32")}
    result = deploykit.convert(model, ["onnx-fp32"], data=data, out=tmp_path / "o", bench=False)
    assert result.ok, result.artifact("onnx-fp32")["error"]
    session = ort.InferenceSession(str(result.out / "onnx-fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["token_ids", "Feats"]


@pytest.mark.parametrize("names, message", [
    (["a b", "c"], "input name 'a b' is not a name a SavedModel signature can take"),
    (["x+y", "c"], "input name 'x+y' is not a name"),
    (["a.b", "a-b"], "inputs 'a.b' and 'a-b' both become 'a_b'"),
    (["B", "b"], "inputs 'B' and 'b' both become 'b'"),
    (["x:0", "c"], "input name 'x:0' is not a name"),  # was read as 'x': the export failed with TensorFlow's text
    (["in", "c"], "input name 'in' is a Python keyword"),  # TensorFlow's "'in' is not a valid parameter name"
    (["None", "c"], "input name 'None' is a Python keyword"),
])
def test_input_names_a_savedmodel_cannot_hold_are_refused_in_one_line(tmp_path, names, message):
    """They failed at export with TensorFlow's message ("more than one argument ... was named 'a b'")."""
    import keras

    from deploykit.errors import UserError

    a, b = keras.Input((3,), name=names[0]), keras.Input((3,), name=names[1])
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    data = {names[0]: np.ones((8, 3), "float32"), names[1]: np.ones((8, 3), "float32")}
    with pytest.raises(UserError, match=re.escape(message)):
        deploykit.convert(model, ["tflite-fp32"], data=data, out=tmp_path / "o", bench=False)
    assert not (tmp_path / "o").exists()


def test_python_paths_expand_home_and_the_result_is_absolute(tmp_path, monkeypatch):
    """From Python no shell expands '~': out='~/x' made a directory named '~' in the working directory,
    and '~/m.keras' was "does not exist". The result's paths were relative to the cwd at call time."""
    import keras

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "home" / "m.keras")
    np.savez(tmp_path / "home" / "d.npz", x=np.ones((8, 4), "float32"))
    result = deploykit.convert("~/m.keras", ["tflite-fp32"], data="~/d.npz", out="~/build", bench=False)
    assert not (tmp_path / "work" / "~").exists()
    assert result.out == tmp_path / "home" / "build" and result.report_path.is_absolute()
    monkeypatch.chdir(tmp_path)
    assert result.report_path.exists() and result.manifest_path.exists()
    # a target file and bench's artifacts too: "target file ~/strict.toml does not exist", "is not a file"
    (tmp_path / "home" / "strict.toml").write_text('name = "strict"\nformat = "tflite"\nprecision = "fp16"\n')
    result = deploykit.convert("~/m.keras", ["~/strict.toml"], data="~/d.npz", out="~/b2", bench=False)
    assert result.artifact("strict")["status"] == "ok"
    assert deploykit.bench("~/b2/strict/model.tflite", iterations=2, warmup=0)["n"] == 2
    assert deploykit.bench(["~/b2/strict/model.tflite", "~/build/tflite-fp32/model.tflite"], iterations=2, warmup=0)


def test_result_path_is_the_artifacts_absolute_path_and_bench_of_the_relative_one_says_so(tmp_path, monkeypatch,
                                                                                         keras3_model, digits):
    """artifact(t)["path"] is relative to out (the manifest's form): bench() of it from the notebook's cwd
    said only "is not a file". result.path(t) is the absolute one; a failed target raises, saying why."""
    monkeypatch.chdir(tmp_path)
    result = deploykit.convert(keras3_model, ["tflite-fp32", _tight_int8()], data=(digits.x_eval, digits.y_eval),
                               out="out", bench=False)
    path = result.path("tflite-fp32")
    assert path == tmp_path / "out" / "tflite-fp32" / "model.tflite" and path.is_absolute() and path.is_file()
    assert result.artifact("tflite-fp32")["path"] == "tflite-fp32/model.tflite"  # the manifest stays relative
    with pytest.raises(UserError, match=r"target 'tflite-int8-tight' failed \(verification failed: .*\), so it has no "
                                        r"artifact; the file it built is kept for inspection at .*tflite-int8-tight/failed-model.tflite"
                                        r" \(in Python: --qat is qat=True\)$"):
        result.path("tflite-int8-tight")
    # under its target's name it was taken for a shippable file (build/*/model.*): kept as failed-model.*
    assert sorted(p.name for p in (tmp_path / "out" / "tflite-int8-tight").iterdir()) == ["failed-model.tflite"]
    with pytest.raises(UserError, match=r"is not a file; the file in it failed verification and is kept for inspection "
                                        r"as .*tflite-int8-tight/failed-model.tflite"):
        deploykit.bench(tmp_path / "out" / "tflite-int8-tight", iterations=1, warmup=0)
    monkeypatch.chdir(tmp_path / "out" / "tflite-fp32")
    with pytest.raises(UserError, match=r"relative to its out directory: pass OUT/tflite-fp32/model.tflite \(in Python: "
                                        r"result.path\('tflite-fp32'\)\)"):
        deploykit.bench(result.artifact("tflite-fp32")["path"], iterations=1, warmup=0)
    with pytest.raises(UserError, match=r"is not a file; pass the artifact file in it: .*tflite-fp32/model.tflite"):
        deploykit.bench(tmp_path / "out" / "tflite-fp32", iterations=1, warmup=0)  # the target's folder
    assert deploykit.bench(path, iterations=1, warmup=0)["p50_ms"] > 0
    # a later run into the same out: this result's path() handed out the other run's file without a word
    monkeypatch.chdir(tmp_path)
    deploykit.convert(keras3_model, ["tflite-fp32"], data=digits.x_eval[:40] * 0.5, out="out", bench=False, force=True)
    with pytest.raises(UserError, match=r"out no longer holds this run \(written .*\): a run written .* replaced it; "
                                        r"use that run's result, or convert again"):
        result.path("tflite-fp32")


def test_result_artifact_takes_a_target_as_passed_and_an_unknown_name_lists_the_held_ones(tmp_path, monkeypatch,
                                                                                          keras3_model, digits):
    """A target passed as "fp32_copy.toml" is stored as its profile's name: artifact("fp32_copy.toml") was a
    bare KeyError, as was any typo."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fp32_copy.toml").write_text('format = "tflite"\nprecision = "fp32"\n')
    result = deploykit.convert(keras3_model, ["tflite-fp32", "fp32_copy.toml"], data=digits.x_eval[:40],
                               out="out", bench=False)
    assert [a["target"] for a in result.artifacts] == ["tflite-fp32", "fp32_copy"]
    entry = result.artifact("fp32_copy")
    assert result.artifact("fp32_copy.toml") is entry and result.artifact(tmp_path / "fp32_copy.toml") is entry
    assert result.artifact("./fp32_copy.toml") is entry and result.path("fp32_copy.toml").is_file()
    with pytest.raises(KeyError, match=r"no target 'nope' in this result; it holds: tflite-fp32, fp32_copy"):
        result.artifact("nope")
    with pytest.raises(KeyError, match=r"^\"no target 'onnx-fp32' in this result; it holds"):  # not the Target's repr
        result.artifact(deploykit.get_target("onnx-fp32"))
    # `in` and iteration went through __getitem__ with 0: KeyError: 0
    assert "fp32_copy.toml" in result and "tflite-fp32" in result and "nope" not in result
    with pytest.raises(TypeError, match=r"not iterable"):
        list(result)
    assert not isinstance(result, collections.abc.Iterable)


def test_result_repr_is_short(tmp_path, keras3_model, digits):
    """The dataclass repr printed the whole manifest (11k characters for two targets, timing samples included)."""
    result = deploykit.convert(keras3_model, ["tflite-fp32", _tight_int8()], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", iterations=2, warmup=0)
    assert repr(result) == (f"ConvertResult(out='{tmp_path / 'out'}', ok=False, targets=[tflite-fp32: ok, "
                            f"tflite-int8-tight: failed], report='{tmp_path / 'out' / 'report.md'}')")


def test_without_data_verify_samples_says_how_many_random_inputs(tmp_path):
    """Without data, verification drew 8 random inputs whatever verify_samples asked (200 went unread)."""
    import keras

    model = keras.Sequential([keras.Input((6,), name="feats"), keras.layers.Dense(3, activation="softmax")])
    few = deploykit.convert(model, ["tflite-fp32"], out=tmp_path / "few", bench=False)
    many = deploykit.convert(model, ["tflite-fp32"], out=tmp_path / "many", bench=False, verify_samples=200)
    assert few.manifest["data"]["eval_samples"] == 8 and few.artifact("tflite-fp32")["verification"]["samples"] == 8
    assert many.manifest["data"]["eval_samples"] == 200 and many.artifact("tflite-fp32")["verification"]["samples"] == 200
    assert many.warnings == []  # 200 samples are not "too few to trust"


def test_a_model_whose_outputs_never_change_is_warned_about(tmp_path):
    """MobileNetV3Small(weights=None) answered exactly 0.1 per class on every image: every target passed at
    100 % agreement without a word, though it had been compared with a constant."""
    import keras

    inp = keras.Input((8,), name="feats")
    dead = keras.layers.Dense(4, activation="relu", kernel_initializer="zeros", bias_initializer="zeros")(inp)
    # a confident classifier: its first column is 1.0 on every sample, its others still vary (~1e-9): not named
    sure = keras.layers.Dense(3, activation="softmax", name="sure", kernel_initializer="random_normal")
    # an untrained EfficientNetB0 answered 0.1 +- 1.25e-6 (about 100 float32 steps): named
    faint = keras.layers.Dense(2, name="faint", bias_initializer=keras.initializers.Constant(0.1))
    model = keras.Model(inp, [keras.layers.Dense(3, activation="softmax", name="probs")(dead),
                              keras.layers.Dense(2, name="live")(inp), sure(inp), faint(inp)])
    w, b = sure.get_weights()
    sure.set_weights([w * 0.1, np.array([25.0, 0.0, 0.0], np.float32)])
    faint.set_weights([faint.get_weights()[0] * 1e-6, faint.get_weights()[1]])
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    with pytest.warns(UserWarning, match="the model gave the same outputs"):
        result = deploykit.convert(model, ["tflite-fp32"], data=x, out=tmp_path / "out", bench=False)
    reference = model.predict(x, verbose=0)
    assert (reference[2][:, 0] == 1.0).all() and np.ptp(reference[2][:, 1]) > 0  # the classifier is as described
    assert result.ok and result.manifest["data"]["constant_outputs"] == ["output_0", "output_3"]
    (warning,) = result.warnings
    assert "('output_0', 'output_3') for every sample" in warning and "weights=None" in warning
    assert "the model gave the same outputs" in (tmp_path / "out" / "report.md").read_text()


def test_python_callers_get_the_warnings_the_cli_prints(tmp_path, keras3_model, digits):
    """"Verdicts rest on too few samples" was printed by the CLI only: a notebook saw ok=True and nothing else."""
    with pytest.warns(UserWarning) as caught:
        result = deploykit.convert(keras3_model, ["tflite-int8"], data=digits.x_eval[:10], out=tmp_path / "out",
                                   bench=False)
    assert len(result.warnings) == 1 and "verified on 10 samples" in result.warnings[0]
    # what calibration used, not the 200 the target asks for
    assert result.artifact("tflite-int8")["settings"]["converter"]["calibration_samples"] == 10
    assert "too few to trust" in result.warnings[0]
    # raised in the caller's terms: the CLI's text, then the Python names of the flags it gives
    ours = [w for w in caught if any(str(w.message).startswith(t) for t in result.warnings)]
    assert len(ours) == 1 and ours[0].filename == __file__  # stacklevel: the caller's line
    assert str(ours[0].message).endswith("(in Python: --data is data=, --eval-data is eval_data=)")
    assert deploykit.convert(keras3_model, ["tflite-fp32"], data=digits.x_eval, out=tmp_path / "many",
                             bench=False).warnings == []
    # 50 copies of 2 samples are 2 samples: they verified at 100 % without a word
    copies = np.repeat(digits.x_eval[:2], 25, axis=0)
    result = deploykit.convert(keras3_model, ["tflite-int8"], data=copies, out=tmp_path / "copies", bench=False)
    assert result.manifest["data"]["eval_distinct_samples"] == result.manifest["data"]["distinct_samples"] == 2
    assert len(result.warnings) == 1 and result.warnings[0].startswith(
        "every artifact was verified on 2 different samples of") and "calibrated on 2 different samples" in result.warnings[0]


def test_a_called_tf_keras_subclassed_model_converts(tmp_path, digits):
    """It was refused as "never built or called" after model(x[:1])."""
    import tf_keras

    class TSub(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.flat, self.dense = tf_keras.layers.Flatten(), tf_keras.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.dense(self.flat(x))

    model = TSub()
    model(digits.x_eval[:1])
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32"], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    assert result["model"]["kind"] == "tf_keras"
    # its input is named by deploykit's wrap, not by the session's counter (input_3), and not warned about
    assert [i["name"] for i in result["model"]["inputs"]] == ["input"] and result.warnings == []


def test_an_op_the_16x8_quantizer_lacks_is_named_once_with_a_way_out(tmp_path):
    """MobileNetV3's hard_swish has no 16x8 kernel: the reason was the converter's sentence once per
    op instance, cut mid-word at 400 characters, with no alternative named."""
    import keras

    inp = keras.Input((8, 8, 3))
    x = inp
    for _ in range(6):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="hard_swish")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    x = np.random.default_rng(0).random((16, 8, 8, 3)).astype("float32")
    result = deploykit.convert(model, ["tflite-int16x8", "tflite-int8"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("tflite-int16x8")["error"]
    assert error.count("HARD_SWISH") == 1 and "hard_swish activation" in error, error
    assert "tflite-int8" in error and len(error) < 300, error
    assert "choose a target with float activations (tflite-dynamic" in error  # first: int8 may already have failed
    assert result.artifact("tflite-int8")["verification"]  # the int8 quantizer has the kernel: converted and checked


def test_a_float64_model_with_dict_inputs_is_rebuilt_too(tmp_path):
    """The float32 rebuild passed its new inputs as a list; Keras refused that for a dict-input model
    and the model stayed float64 (TFLite failed naming ops, ONNX shipped float64 inputs)."""
    import keras

    a = keras.Input((3,), name="a", dtype="float64")
    b = keras.Input((2,), name="b", dtype="float64")
    h = keras.layers.Concatenate(dtype="float64")([a, b])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2, dtype="float64")(h))
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(16, 3)), "b": rng.normal(size=(16, 2))}
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32"], data=data, out=tmp_path / "o", bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    assert result["model"]["float32_from_policy"] == "float64"
    assert [i["dtype"] for i in result["model"]["inputs"]] == ["float32", "float32"]


def test_a_tf_keras_bidirectional_lstm_reaches_tflite_as_a_stateless_loop(tmp_path):
    """The plain-loop export must reach the LSTMs a Bidirectional wraps (they were missed: refused as fused)."""
    import tf_keras
    from ai_edge_litert.interpreter import Interpreter

    x = np.random.default_rng(1).normal(size=(12, 6, 4)).astype("float32")
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((6, 4), name="seq")
    h = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(8, name="lstm"), name="bi")(inp)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, name="out")(h))
    result = deploykit.convert(model, ["tflite-fp32"], data=x, out=tmp_path / "out", bench=False)
    a = result.artifact("tflite-fp32")
    assert a["status"] == "ok", a["error"]
    interp = Interpreter(model_path=str(result.out / a["path"]))
    interp.allocate_tensors()
    ref = model.predict(x, verbose=0)
    for i in (5, 2, 5):
        interp.set_tensor(interp.get_input_details()[0]["index"], x[i:i + 1])
        interp.invoke()
        np.testing.assert_allclose(interp.get_tensor(interp.get_output_details()[0]["index"])[0], ref[i], atol=1e-5)


def test_a_boolean_output_is_judged_by_the_share_of_answers_reproduced(tmp_path):
    """A comparison's answers (x > 0) were judged as floats: one flip near the threshold in 160 was 'max abs
    error 1 exceeds the allowed 0.05' and failed int8. Now a boolean output is judged like class ids, by
    the share reproduced, and when too many flip the failure names the targets that keep more precision."""
    import tensorflow as tf

    class Sign(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def f(self, x):
            return {"b": x > 0}

    sign = Sign()
    tf.saved_model.save(sign, str(tmp_path / "sm_bool"), signatures={"serving_default": sign.f})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    result = deploykit.convert(tmp_path / "sm_bool", "tflite-int8", data=x, out=tmp_path / "ok", iterations=1, warmup=0)
    b = result.artifact("tflite-int8")["verification"]["outputs"]["b"]
    assert result.ok and b["judged_by"] == "agreement" and 0.97 <= b["id_agreement"] < 1, b  # some answers flipped
    # values near 0 beside two outliers: int8's step (~0.8) rounds most of them to 0, and 'x > 0' flips on half
    x = rng.uniform(-0.05, 0.05, (200, 4)).astype(np.float32)
    x[0], x[1] = 100, -100
    result = deploykit.convert(tmp_path / "sm_bool", "tflite-int8", data=x, out=tmp_path / "bad", iterations=1, warmup=0)
    error = result.artifact("tflite-int8")["error"]
    assert not result.ok and "output 'b': booleans reproduced (800 values)" in error, error
    assert "a boolean output flips wherever the quantized activations move a compared value" in error
    assert "tflite-int16x8" in error and "max abs error" not in error


def test_a_callers_warnings_as_errors_do_not_fail_targets_and_its_own_warnings_still_arrive(tmp_path, keras3_path, digits):
    """TensorFlow's int8 calibration warns that tf.lite.Interpreter is deprecated: under the caller's
    simplefilter("error") (pytest's filterwarnings = error) that warning failed tflite-int8, and the
    TF.js runner's unclosed pipes raised ResourceWarnings in the caller's process."""
    import warnings

    data = (digits.x_eval, digits.y_eval)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = deploykit.convert(keras3_path, ["tflite-int8", "onnx-int8-qdq", "tfjs-fp32"], data=data,
                                   out=tmp_path / "errors", bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        few = deploykit.convert(keras3_path, ["tflite-int8", "tfjs-fp32"], data=(digits.x_eval[:8], digits.y_eval[:8]),
                                out=tmp_path / "few", bench=False)
    said = [str(w.message) for w in seen]
    # deploykit's own warning (verdicts on 8 samples) reaches the caller; the libraries' do not
    assert few.warnings and all(any(text in s for s in said) for text in few.warnings), said
    assert not [s for s in said if "deprecated" in s or "unclosed" in s], said


def test_a_run_removes_what_a_killed_run_left_in_tmpdir(tmp_path, keras3_path, data_npz, monkeypatch):
    """A SIGKILLed run's SavedModel export stayed in $TMPDIR for good; the next run removes it."""
    import signal
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import os, signal; from deploykit.tmpdirs import TempDir; d = TempDir('sm'); print(d.name, flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert killed.returncode == -signal.SIGKILL
    left = killed.stdout.strip()
    assert os.path.isdir(left)
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    result = deploykit.convert(keras3_path, "tflite-fp32", data=data_npz, out=tmp_path / "out", bench=False)
    assert result.ok
    assert not os.path.exists(left)
    # and this run's own are gone too (TensorFlow's __autograph_generated_file*.py are its own)
    assert [p for p in os.listdir(tmp) if "deploykit" in p] == []


def test_a_batch_size_declared_in_the_model_leaves_the_files_batch_free(tmp_path):
    """tf_keras's export kept keras.Input(batch_size=8) in the signature: the ONNX (and TF.js) files refused
    verification's batch of 1 with a raw runtime error, where Keras 3's export leaves the batch free."""
    import onnxruntime as ort
    import tf_keras

    inp = tf_keras.Input((4,), batch_size=8, name="x")
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="d")(inp))
    x = np.random.default_rng(0).uniform(size=(20, 4)).astype("float32")
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32"], data=x, out=tmp_path / "out", bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    assert result["model"]["inputs"][0]["shape"] == [8, 4]  # the model as declared
    assert ort.InferenceSession(str(result.path("onnx-fp32"))).get_inputs()[0].shape[0] != 8
    assert all(a["verification"]["batch_sizes"] == [1, 8] for a in result.artifacts)
    assert "The model's inputs declare batch size 8; its files take any batch size, as Keras's model.export() leaves " \
           "it." in result.report_path.read_text()


def test_a_savedmodel_with_several_signatures_gives_tflite_files_of_serving_default_only(tmp_path):
    """The converter took every signature: the file held 'other' first, verification ran it and failed the
    file for its numbers, and int8 failed on "model has 2 Signatures"."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    class Two(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(4, 3)).astype("float32"))
            self.b = tf.Variable(np.arange(3, dtype="float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def other(self, x):
            return {"neg": -tf.matmul(x, self.w)}

    module = Two()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.__call__, "other": module.other})
    x = np.random.default_rng(1).uniform(-1, 1, (32, 4)).astype("float32")
    result = deploykit.convert(str(tmp_path / "sm"), ["tflite-fp32", "tflite-int8"], data=x, out=tmp_path / "out",
                               bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    assert list(Interpreter(model_path=str(result.path("tflite-fp32"))).get_signature_list()) == ["serving_default"]


def test_a_tf_keras_models_dict_outputs_are_named_by_their_keys_as_the_files_name_them(tmp_path):
    """manifest, report and inspect called a tf_keras model's {"zz_reg", "aa_cls"} outputs output_0/output_1,
    names no file has (ONNX Runtime and TF.js lookups by them failed)."""
    import onnxruntime as ort
    import tf_keras

    inp = tf_keras.Input((6,), name="feat")
    h = tf_keras.layers.Dense(8, activation="relu")(inp)
    model = tf_keras.Model(inp, {"zz_reg": tf_keras.layers.Dense(2)(h),
                                 "aa_cls": tf_keras.layers.Dense(3, activation="softmax")(h)})
    model.save(tmp_path / "m.h5")
    x = np.random.default_rng(0).uniform(size=(16, 6)).astype("float32")
    result = deploykit.convert(str(tmp_path / "m.h5"), ["onnx-fp32"], data=x, out=tmp_path / "out", bench=False)
    names = [o["name"] for o in result["model"]["outputs"]]
    assert names == ["aa_cls", "zz_reg"] == [o.name for o in ort.InferenceSession(str(result.path("onnx-fp32"))).get_outputs()]
    assert set(result.artifact("onnx-fp32")["verification"]["outputs"]) == set(names)


def test_one_hot_labels_with_a_trailing_axis_of_one_score_per_sample(tmp_path):
    """(N, C, 1) one-hot labels were read as a class per position of a (N, C) output: refused, exit 2."""
    import keras

    rng = np.random.default_rng(1)
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    x, y = rng.uniform(size=(48, 4)).astype("float32"), rng.integers(0, 3, 48)
    by_index = deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / "ids", bench=False)
    by_rows = deploykit.convert(model, ["tflite-fp32"], data=(x, np.eye(3)[y][..., None]), out=tmp_path / "rows",
                                bench=False)
    want = by_index.artifact("tflite-fp32")["verification"]["accuracy"]
    assert by_rows.artifact("tflite-fp32")["verification"]["accuracy"] == want
    with pytest.raises(DataError, match="labels 'y' of shape \\(48, 2\\) give a class per position"):  # not one-hot
        deploykit.convert(model, ["tflite-fp32"], data=(x, rng.integers(0, 3, (48, 2, 1))), out=tmp_path / "bad",
                          bench=False)


def test_float16_keeps_a_normalization_mean_float32_where_it_can_and_names_it_where_not(tmp_path):
    """A year-like feature's mean (2000.4, std 1) lands on float16's step of 1: onnx-fp16 stored it so and
    failed as "rounding where the model is unsure"; it now keeps vectors float32 as tfjs-fp16 does.
    TFLite's converter stores every constant float16: its failure names the mean and the way out."""
    import keras
    import onnx

    rng = np.random.default_rng(0)
    x = (2000.4 + rng.normal(0, 1, (256, 6))).astype("float32")
    inp = keras.Input((6,), name="tab")
    norm = keras.layers.Normalization(name="years")
    norm.adapt(x)
    model = keras.Model(inp, keras.layers.Dense(1, kernel_initializer="ones")(norm(inp)))
    result = deploykit.convert(model, ["onnx-fp16", "tflite-fp16"], data=x, out=tmp_path / "o", bench=False)
    assert result.artifact("onnx-fp16")["status"] == "ok", result.artifact("onnx-fp16")["error"]
    halves = [i for i in onnx.load(result.path("onnx-fp16")).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert all(sum(d > 1 for d in i.dims) > 1 for i in halves), [(i.name, list(i.dims)) for i in halves]
    error = result.artifact("tflite-fp16")["error"]
    assert "float16 stores the mean of layer 'years', 2000." in error and "tflite-fp32" in error, error


def test_a_dynamic_target_that_erased_a_narrow_feature_is_told_so_and_a_constant_output_is_not_clipping(tmp_path):
    """No Normalization, a 1e4 feature beside a 1e-3 one: onnx-int8-dynamic quantizes the raw input per call
    and outputs 0.0 for every sample. Its failure said "calibrate on data that reaches further" (it takes
    no calibration) and nothing about the input; the static file's hint offered it as the way out."""
    import keras

    rng = np.random.default_rng(0)
    u, v = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300)
    x = np.stack([u * 1e4, v * 1e-3], 1).astype("float32")
    inp = keras.Input((2,), name="x")
    dense = keras.layers.Dense(1)
    model = keras.Model(inp, dense(inp))
    dense.set_weights([np.array([[1e-4], [1e3]], "float32"), np.zeros(1, "float32")])
    result = deploykit.convert(model, ["onnx-int8-dynamic"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("onnx-int8-dynamic")["error"]
    assert "calibrat" not in error and "input 'x' mixes feature ranges" in error, error
    assert "use a float target (onnx-fp16, onnx-fp32)" in error, error
    from deploykit.verify import clipping_hint

    ref = rng.uniform(-2, 2, (50, 1))
    assert clipping_hint(ref, np.zeros_like(ref), 0.2).startswith("the artifact gives 0 for every sample")


def test_a_name_that_is_not_utf8_is_refused_before_anything_runs(tmp_path):
    """A Latin-1 file name (os.fsdecode keeps its bytes as surrogates): a UnicodeEncodeError traceback
    writing the reports, or, as out=, a target failed as "LiteRT could not load" with reports written."""
    import os

    import keras

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    with pytest.raises(UserError, match=r"o\\xff' is not UTF-8 text .*rename the file or directory"):
        deploykit.convert(model, ["tflite-fp32"], out=tmp_path / os.fsdecode(b"o\xff"), bench=False)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match=r"d\\xe9.npz' is not UTF-8 text"):
        deploykit.convert(model, ["tflite-fp32"], data=str(tmp_path / os.fsdecode(b"d\xe9.npz")), out=tmp_path / "o",
                          bench=False)


def test_an_int8_output_scaled_by_one_outlier_sample_fails_on_the_others(tmp_path):
    """150 samples, one 300x the rest: int8's output scale spans its -787, the other 149 (-4.8..5.0) got 3
    values, and tflite-int8 and onnx-int8-qdq passed inside 5 % of that range. Float16 keeps them."""
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(0, 1, (150, 4)).astype("float32")
    x[123] *= 300
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Dense(8)(inp)))
    result = deploykit.convert(model, ["tflite-int8", "onnx-int8-qdq", "tflite-fp16"], data=x, out=tmp_path / "o",
                               bench=False)
    for name in ("tflite-int8", "onnx-int8-qdq"):
        error = result.artifact(name)["error"]
        assert "which the few beyond them set" in error and "an outlier in the data?" in error, (name, error)
    assert result.artifact("tflite-fp16")["status"] == "ok"


def test_a_file_taking_any_image_size_is_not_charged_tensorflows_memory(tmp_path):
    """LiteRT's runner rewrote such a file's input shapes with TensorFlow's flatbuffer tools: the ~570 MiB
    of importing TensorFlow were reported as the memory the 2 KiB file adds to a LiteRT process."""
    import keras

    inp = keras.Input((None, None, 3), name="image")
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)))
    x = np.random.default_rng(0).random((2, 20, 24, 3)).astype("float32")
    result = deploykit.convert(model, ["tflite-fp32"], data=x, out=tmp_path / "o", bench=False)
    np.savez(tmp_path / "x.npz", x=x)
    measured = deploykit.bench(result.path("tflite-fp32"), data=tmp_path / "x.npz", iterations=3, warmup=1)
    assert 0 < measured["runtime_memory_bytes"] < 100 * 2**20, measured["runtime_memory_bytes"]


def test_zero_one_tags_per_step_score_a_tagger_per_step(tmp_path):
    """(N, 20) 0/1 tags for a (N, 20, 2) tagger were refused as multi-hot rows ("leave 'y' out")."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.integers(1, 50, (64, 20)).astype("int32")
    inp = keras.Input((20,), dtype="int32", name="ids")
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Embedding(50, 8)(inp))
    model = keras.Model(inp, out)
    model.compile(loss="sparse_categorical_crossentropy")
    tags = (x > 25).astype("int32")
    result = deploykit.convert(model, ["tflite-fp32"], data=(x, tags), out=tmp_path / "o", bench=False)
    v = result.artifact("tflite-fp32")["verification"]
    assert result.ok and v["accuracy_per"] and v["accuracy"] == v["reference_accuracy"], v
    # as train data too (was "rows with 13 ones ... not one-hot" there)
    result = deploykit.convert(model, ["tflite-fp32"], data=(x, tags), out=tmp_path / "p", bench=False,
                               prune={"sparsity": 0.5, "epochs": 1}, train_data=(x, tags))
    assert result.ok, [a["error"] for a in result.artifacts]


def test_a_label_out_of_range_is_refused_whichever_rows_verification_samples(tmp_path):
    """Labels were checked on the --verify-samples subsample: 42 for a 10-class model in row 1 of 300 passed
    (exit 0) at 64 samples and was refused at 300; the shape message also said the subsample's shape."""
    import keras

    from deploykit.errors import DataError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype("float32")
    y = rng.integers(0, 10, 300)
    y[1] = 42
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(inp))
    with pytest.raises(DataError, match="label 42 is out of range for a model with 10 output classes"):
        deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / "o", bench=False, verify_samples=64)
    with pytest.raises(DataError, match=r"labels 'y' of shape \(300, 3, 2\) give a class per position"):
        deploykit.convert(model, ["tflite-fp32"], data=(x, rng.integers(0, 3, (300, 3, 2))), out=tmp_path / "o",
                          bench=False, verify_samples=64)
    assert not (tmp_path / "o").exists()


def test_a_file_xnnpack_cannot_prepare_runs_on_litert_s_own_kernels_and_says_so(tmp_path):
    """An unrolled int8 LSTM (the way out the int8 refusal of loops names): XNNPACK failed to build its
    runtime on the first invoke ("failed to create XNNPACK runtime"), a raw RuntimeError that failed the target."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 21, 600)
    x = rng.integers(1, 50, (600, 20)).astype("int32")
    x[np.arange(20)[None, :] >= lengths[:, None]] = 0  # padded past each sequence's length
    y = (x[:, 0] % 3).astype("int64")
    inp = keras.Input((20,), dtype="int32", name="tokens")
    h = keras.layers.LSTM(16, unroll=True)(keras.layers.Embedding(50, 16, mask_zero=True)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=8, verbose=0)
    result = deploykit.convert(model, ["tflite-int8"], data=(x, y), out=tmp_path / "o", iterations=3, warmup=1)
    a = result.artifact("tflite-int8")
    assert a["status"] == "ok", a["error"]
    assert any(n.startswith("XNNPACK, LiteRT's default CPU delegate, could not prepare this file")
               for n in a["verification"]["notes"])
    assert a["benchmark"]["delegate"].startswith("none: XNNPACK could not prepare this file")


def test_int16x8_names_what_reads_the_ids_beyond_the_embedding(tmp_path):
    """"models with token-id inputs take tflite-int8" was false: ids that only feed the Embedding's lookup
    convert; a mask (mask_zero=True) reading them is what the 16x8 quantizer wants a range for."""
    import keras

    x = np.random.default_rng(0).integers(0, 50, (64, 12)).astype("int32")
    inp = keras.Input((12,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 8, mask_zero=True)(inp)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h)))
    result = deploykit.convert(model, ["tflite-int16x8"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("tflite-int16x8")["error"]
    assert "integer ids reach an op besides an Embedding lookup (a one-hot, multi-hot or count encoding; the mask of " \
           "Embedding(mask_zero=True)" in error, error


def test_int16x8_of_a_uint8_image_input_names_the_cast(tmp_path):
    """TFLite's 16x8 quantizer has no CAST: a uint8 image input cast to float for its Rescaling was named
    as "CAST" alone, with nothing of where it comes from or that a float32 input takes 16x8."""
    import keras

    inp = keras.Input((8, 8, 1), dtype="uint8", name="pixels")
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1)).astype("uint8")
    result = deploykit.convert(model, ["tflite-int16x8"], data=x, out=tmp_path / "o", bench=False)
    assert "CAST (a cast between types, e.g. of a uint8 image input to float for its Rescaling: a float32 input " \
           "takes 16x8)" in result.artifact("tflite-int16x8")["error"]


def test_a_float_input_feeding_an_embedding_is_named_when_int8_io_fails(tmp_path):
    """Ids declared float: int8 I/O quantized them like pixels and 24 of 50 read another Embedding row; the
    failure spoke of rounding and advised int16x8 or QAT."""
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((16,), name="ids")  # float32: the dtype='int32' left out
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8, name="vocab")(ids))
    model = keras.Model(ids, keras.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).integers(0, 50, (64, 16)).astype("float32")
    result = deploykit.convert(model, ["tflite-int8-io"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("tflite-int8-io")["error"]
    assert "input 'ids' is float and feeds Embedding 'vocab': int8 I/O quantizes its ids" in error, error


def test_value_targets_are_read_by_the_model_s_outputs_not_only_its_loss(tmp_path):
    """Counts for an uncompiled (N, 1) head were kept as labels and dropped (no error reported); targets of
    no output's shape for an mse model were dropped with exit 0; text labels of an uncompiled classifier were
    said as "targets 'y' are <U6"."""
    import keras

    from deploykit.errors import DataError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    counts = rng.integers(0, 20, 64)
    inp = keras.Input((3,), name="x")
    head = keras.Model(inp, keras.layers.Dense(1)(inp))  # uncompiled
    result = deploykit.convert(head, ["tflite-fp32"], data=(x, counts), out=tmp_path / "a", bench=False)
    v = result.artifact("tflite-fp32")["verification"]
    assert v.get("mae") is not None and v.get("accuracy") is None, v
    head.compile(loss="mse")
    with pytest.raises(DataError, match=r"target values 'y' of shape \(64, 2\) fit none of the model's outputs \(\(None, 1\)\)"):
        deploykit.convert(head, ["tflite-fp32"], data=(x, rng.normal(size=(64, 2))), out=tmp_path / "b", bench=False)
    classes = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    with pytest.raises(DataError, match=r"labels 'y' are text \(e\.g\. 'digit4'\), not class indices"):
        deploykit.convert(classes, ["tflite-fp32"], data=(x, np.array(["digit4"] * 64)), out=tmp_path / "c", bench=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    # and not more: an uncompiled regressor's NaN target is said as a target's, an argmax model's ids stay labels,
    # and targets for an output of any length are not refused as fitting none
    with pytest.raises(DataError, match=r"targets 'y' hold NaN or inf"):
        deploykit.convert(keras.Model(inp, keras.layers.Dense(1)(inp)), ["tflite-fp32"],
                          data=(x, np.where(np.arange(64) == 3, np.nan, 1.5)), out=tmp_path / "d", bench=False)
    probs = keras.layers.Dense(4, activation="softmax")(inp)
    argmax = keras.Model(inp, {"cls": keras.ops.argmax(probs, axis=-1), "conf": keras.layers.Dense(1)(inp)})
    result = deploykit.convert(argmax, ["tflite-fp32"], data=(x, rng.integers(0, 4, 64)), out=tmp_path / "e", bench=False)
    assert result.artifact("tflite-fp32")["verification"].get("accuracy") is not None
    seq = keras.Input((None, 3), name="s")
    dyn = keras.Model(seq, keras.layers.Dense(1)(seq))
    dyn.compile(loss="mse")
    result = deploykit.convert(dyn, ["tflite-fp32"], data=(rng.normal(size=(16, 12, 3)).astype("float32"),
                                                          rng.normal(size=(16, 12, 1))), out=tmp_path / "f", bench=False)
    assert result.artifact("tflite-fp32")["verification"].get("mae") is not None


def test_integer_lookups_and_bincount_encodings_convert_to_every_format(tmp_path):
    """IntegerLookup's hash table has no TFLite kernel, no tf2onnx handler and no TF.js weights, and
    CategoryEncoding's multi_hot/count (DenseBincount) no TFLite kernel: every target failed on the common
    tabular recipe. The exported copy computes the same mappings with comparisons."""
    import keras
    import onnxruntime as ort

    keras.utils.set_random_seed(0)
    vocab = [3, 7, 11, 20, 1_000_000]
    code_in, tags_in = keras.Input((2,), dtype="int64", name="code"), keras.Input((3,), dtype="int32", name="tags")
    codes = keras.layers.IntegerLookup(vocabulary=vocab, mask_token=0, name="codes")(code_in)
    embedded = keras.layers.Flatten()(keras.layers.Embedding(7, 3)(codes))
    tags = keras.layers.IntegerLookup(vocabulary=vocab, output_mode="multi_hot", name="tags_hot")(tags_in)
    counts = keras.layers.CategoryEncoding(num_tokens=6, output_mode="count", name="tag_counts")(tags_in)
    h = keras.layers.Concatenate()([embedded, tags, counts])
    model = keras.Model([code_in, tags_in], keras.layers.Dense(3, activation="softmax")(h))
    rng = np.random.default_rng(0)
    data = {"code": rng.choice(vocab + [0, 5, -1], (64, 2)).astype("int64"),
            "tags": rng.integers(0, 6, (64, 3)).astype("int32")}
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=data, out=tmp_path / "o", bench=False)
    for art in result.artifacts:
        assert art["status"] == "ok", (art["target"], art["error"])
        assert art["verification"]["max_abs_error"] < 1e-5, art["target"]
    replaced = {r["name"]: r["as"] for r in result["model"]["replaced_for_export"]}
    assert replaced.keys() == {"codes", "tags_hot", "tag_counts"}
    assert "5 keys" in replaced["codes"] and "DenseBincount" in replaced["tag_counts"]
    assert "`codes`" in result.report_path.read_text()
    # ids verification never saw: far outside the vocabulary, the mask token, the largest key
    odd = {"code": np.array([[-(2**40), 0], [1_000_000, 999_999]], np.int64), "tags": np.array([[5, 5, 0], [1, 2, 3]], np.int32)}
    session = ort.InferenceSession(str(result.out / "onnx-fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, odd)[0], np.asarray(model(odd, training=False)), atol=1e-6)


def test_an_all_padding_sample_under_a_masked_mean_is_named_as_such(tmp_path):
    """An empty text (every id 0) under Embedding(mask_zero=True) + a masked mean is 0/0 in Keras: the refusal
    said the layers overflow float32, which sent users the wrong way."""
    import keras

    from deploykit.errors import DataError

    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4, mask_zero=True)(ids))
    model = keras.Model(ids, keras.layers.Dense(2, activation="softmax")(h))
    x = np.random.default_rng(0).integers(1, 20, (16, 6)).astype("int32")
    x[3] = 0
    with pytest.raises(DataError, match=r"sample 3\), whose ids are all 0: padding only.*mask_zero=True.*0/0; drop such samples"):
        deploykit.convert(model, ["tflite-fp32"], data=x, out=tmp_path / "o", bench=False)
    assert not (tmp_path / "o").exists()
    # keras.Input's default float dtype, as keras.io's text examples feed their Embedding
    floats = keras.Input((6,), name="ids")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4, mask_zero=True)(floats))
    with pytest.raises(DataError, match="whose ids are all 0: padding only"):
        deploykit.convert(keras.Model(floats, keras.layers.Dense(2)(h)), ["tflite-fp32"], data=x.astype("float32"),
                          out=tmp_path / "f", bench=False)


def test_the_pipeline_class_speaks_in_python_terms_too(tmp_path, keras3_model):
    """deploykit.Pipeline, exported beside convert(), said "pass --data calib.npz" with no Python name;
    the CLI, which runs the same class, keeps the flags."""
    from deploykit.errors import DataError, UserError, called_from_cli

    with pytest.raises(DataError, match=r"pass --data calib\.npz.*\(in Python: --data is data=\)$"):
        deploykit.Pipeline(["tflite-int8"], out=tmp_path / "o", bench=False).run(keras3_model)
    with pytest.raises(UserError, match=r"^verify_samples must be a whole number >= 1, got 0$"):  # its own terms
        deploykit.Pipeline(["tflite-fp32"], out=tmp_path / "o", verify_samples=0)
    with called_from_cli(), pytest.raises(DataError) as exc:
        deploykit.Pipeline(["tflite-int8"], out=tmp_path / "o", bench=False).run(keras3_model)
    assert "in Python" not in str(exc.value)
    with pytest.raises(DataError) as exc:  # said once, though convert() and run() are both entry points
        deploykit.convert(keras3_model, ["tflite-int8"], out=tmp_path / "o", bench=False)
    assert str(exc.value).count("(in Python: ") == 1


def test_lookup_and_encoding_rewrites_hold_on_ids_verification_never_saw(tmp_path):
    """Review of the rewrite: the mask token in an encoded lookup became int64's largest value, which broke
    ONNX Runtime's Gather (the file had passed) and every TF.js file; multi_hot cast int64 ids to int32, so
    2**32 + 2 counted as category 2; a shared lookup was listed twice."""
    import keras
    import onnxruntime as ort

    from deploykit.runtime_bench.tfjs.runner import TFJSRunner

    keras.utils.set_random_seed(0)
    vocab = [3, 7, 11, 20]
    code_in, tags_in = keras.Input((1,), dtype="int64", name="code"), keras.Input((3,), dtype="int64", name="tags")
    shared = keras.layers.IntegerLookup(vocabulary=vocab, mask_token=0, output_mode="one_hot", name="codes")
    inner = keras.Model(code_in, shared(code_in), name="inner")
    counts = keras.layers.CategoryEncoding(num_tokens=6, output_mode="multi_hot", name="tag_hot")(tags_in)
    h = keras.layers.Concatenate()([inner(code_in), shared(code_in), counts])
    model = keras.Model([code_in, tags_in], keras.layers.Dense(3)(h))
    rng = np.random.default_rng(0)
    data = {"code": rng.choice(vocab + [5], (64, 1)).astype("int64"), "tags": rng.integers(0, 6, (64, 3)).astype("int64")}
    result = deploykit.convert(model, ["onnx-fp32", "tfjs-fp32"], data=data, out=tmp_path / "o", bench=False)
    for art in result.artifacts:
        assert art["status"] == "ok", (art["target"], art["error"])
    assert [r["name"] for r in result["model"]["replaced_for_export"]] == ["codes", "tag_hot"]  # shared: once
    odd = {"code": np.array([[0], [0], [-5], [2**40]], np.int64),  # the mask token, outside the vocabulary
           "tags": np.array([[2**32 + 2] * 3, [0, 0, 5], [-0, 6, 7], [1, 2, 2**33]], np.int64)}
    want = np.asarray(model(odd))
    session = ort.InferenceSession(str(result.path("onnx-fp32")), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, odd)[0], want, atol=1e-5)
    runner = TFJSRunner(result.path("tfjs-fp32"), backend="wasm")  # TF.js takes int32: ids that fit it
    try:
        runner.load()
        fits = {"code": odd["code"][:3].astype(np.int32), "tags": np.array([[0, 0, 5], [0, 6, 7], [1, 2, 9]], np.int32)}
        np.testing.assert_allclose(next(iter(runner.run(fits).values())), np.asarray(model(fits)), atol=1e-5)
    finally:
        runner.close()


def test_a_large_vocabulary_is_probed_in_chunks():
    """A 65536-key lookup was probed in one call: a (196608, 65536) comparison took 14 GB, failed, and the
    layer silently kept its table."""
    import resource

    import keras

    from deploykit.export_layers import MAX_KEYS, for_export

    keys = np.random.default_rng(0).choice(10**9, MAX_KEYS, replace=False).astype(np.int64)
    lookup = keras.layers.IntegerLookup(vocabulary=keys)
    lookup(keras.Input((2,), dtype="int64"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    replaced = for_export(lookup)
    assert replaced is not None and replaced[0].keys.size == MAX_KEYS
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 * 1024 * 1024  # KiB: under 2 GiB more


def test_encoded_ids_of_narrow_and_float_dtypes_keep_keras_s_answers(tmp_path):
    """The rewrite compared int8/int16 ids in their own dtype (TF.js holds no int8 constant, TFLite has no int8
    Equal: both refused the model), and float ids as floats, where Keras truncates them (2.5 is category 2)."""
    import keras
    import onnxruntime as ort

    from deploykit.runtime_bench import get_runner

    keras.utils.set_random_seed(0)
    small = keras.Input((1,), dtype="int8", name="small")
    floats = keras.Input((1,), name="floats")
    h = keras.layers.Concatenate()([keras.layers.CategoryEncoding(5, "one_hot")(small),
                                    keras.layers.CategoryEncoding(5, "one_hot")(floats)])
    model = keras.Model([small, floats], keras.layers.Dense(2)(h))
    rng = np.random.default_rng(0)
    data = {"small": rng.integers(0, 5, (64, 1)).astype("int8"), "floats": rng.integers(0, 5, (64, 1)).astype("float32")}
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=data, out=tmp_path / "o", bench=False)
    for art in result.artifacts:
        assert art["status"] == "ok", (art["target"], art["error"])
    odd = {"small": np.array([[4], [-1], [7]], np.int8), "floats": np.array([[2.5], [-0.5], [4.9]], np.float32)}
    want = np.asarray(model(odd))
    session = ort.InferenceSession(str(result.path("onnx-fp32")), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, odd)[0], want, atol=1e-5)
    runner = get_runner("litert", result.path("tflite-fp32"), 1)
    try:
        runner.load()
        np.testing.assert_allclose(next(iter(runner.run(odd).values())), want, atol=1e-5)
    finally:
        runner.close()
