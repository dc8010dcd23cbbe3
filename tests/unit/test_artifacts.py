"""Atomic writes, hashing, and the manifest as JSON (the run's single source of truth)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from deploykit.artifacts import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Artifact,
    Manifest,
    atomic_path,
    gzip_size,
    sha256_file,
    write_text_atomic,
)
from deploykit.errors import UserError


class Boom(RuntimeError):
    pass


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_path_success_renames_onto_final(tmp_path):
    final = tmp_path / "sub" / "model.bin"
    with atomic_path(final) as tmp:
        assert tmp != final and tmp.parent == final.parent
        assert not final.exists()  # nothing under the final name while writing
        tmp.write_bytes(b"payload")
    assert final.read_bytes() == b"payload"
    assert _leftovers(final.parent) == ["model.bin"]


def test_atomic_path_leaves_no_file_on_exception(tmp_path):
    final = tmp_path / "model.bin"
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half a mod")
            raise Boom()
    assert not final.exists()
    assert _leftovers(tmp_path) == []  # no .partial either


def test_atomic_path_keeps_previous_file_on_exception(tmp_path):
    final = tmp_path / "report.md"
    final.write_text("previous run")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("new, unfinis")
            raise KeyboardInterrupt
    assert final.read_text() == "previous run"
    assert _leftovers(tmp_path) == ["report.md"]


def test_write_text_atomic(tmp_path):
    path = tmp_path / "a" / "b.txt"
    write_text_atomic(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    write_text_atomic(path, "second")
    assert path.read_text() == "second" and _leftovers(path.parent) == ["b.txt"]


def test_atomic_writes_respect_the_umask(tmp_path):
    """mkstemp makes 0600 files; artifacts and reports must be ordinary files (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "x")
        with atomic_path(tmp_path / "model.tflite") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "report.md").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "model.tflite").stat().st_mode & 0o777) == oct(0o644)
    old = os.umask(0o077)
    try:
        write_text_atomic(tmp_path / "private.md", "x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "private.md").stat().st_mode & 0o777) == oct(0o600)


# ----------------------------------------------------------------------------- hashing / size
def test_sha256_and_gzip_size(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20) + b"\0" * (1 << 20)  # > one 1 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert gzip_size(path) == len(gzip.compress(data, compresslevel=9, mtime=0))


# ----------------------------------------------------------------------------- manifest
def _manifest() -> Manifest:
    art = Artifact(
        target="tflite-int8",
        format="tflite",
        path="tflite-int8/model.tflite",
        sha256="ab" * 32,
        size_bytes=1234,
        gzip_bytes=1000,
        parent="model.keras",
        settings={"target": {"name": "tflite-int8"}, "converter": {"optimizations": ["DEFAULT"]}},
        status="ok",
        verification={"passed": True, "max_abs_error": np.float32(0.25), "failures": []},
        benchmark={"p50_ms": np.float64(1.5), "samples_ms": np.array([1.0, 1.5, 2.0])},
    )
    bad = Artifact(target="tflite-fp16", format="tflite", path="", status="failed", error="boom")
    return Manifest(model={"name": "m", "source": Path("model.keras")}, artifacts=[art, bad], created="2025-01-01T00:00:00+00:00")


def test_manifest_json_round_trip(tmp_path):
    m = _manifest()
    assert m.schema_version == SCHEMA_VERSION
    text = m.to_json()
    data = json.loads(text)  # numpy scalars/arrays and Paths became plain JSON
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["artifacts"][0]["benchmark"]["samples_ms"] == [1.0, 1.5, 2.0]
    assert data["artifacts"][0]["verification"]["max_abs_error"] == 0.25
    assert data["model"]["source"] == "model.keras"
    assert {"tools", "machine", "created", "data", "steps"} <= set(data)
    assert data["tools"].get("numpy") == np.__version__
    assert data["machine"]["cores"] == os.cpu_count()

    back = Manifest.from_dict(data)
    assert back.to_dict() == data
    assert isinstance(back.artifacts[0], Artifact) and back.artifacts[0].target == "tflite-int8"

    path = m.write(tmp_path)
    assert path == tmp_path / MANIFEST_NAME and path.read_text().endswith("\n")
    assert Manifest.read(path).to_dict() == data


def test_manifest_ok():
    m = _manifest()
    assert not m.ok
    m.artifacts = m.artifacts[:1]
    assert m.ok


def test_manifest_refuses_other_schema_versions():
    data = json.loads(_manifest().to_json())
    for version in (SCHEMA_VERSION + 1, None):
        data["schema_version"] = version
        with pytest.raises(UserError, match="schema_version"):
            Manifest.from_dict(data)
    del data["schema_version"]
    with pytest.raises(UserError, match="schema_version"):
        Manifest.from_dict(data)


def test_artifact_round_trip():
    a = _manifest().artifacts[1]
    assert Artifact.from_dict(a.to_dict()) == a


def test_fine_tuning_that_costs_accuracy_is_warned_about_in_the_report():
    from deploykit.artifacts import Manifest
    from deploykit.report.rows import fine_tune_warnings, prune_lines

    def run(before, after):
        report = {"settings": {"sparsity": 0.999, "structure": "unstructured", "schedule": {"kind": "polynomial"}},
                  "eval": {"samples": 540, "accuracy_before": before, "accuracy_after": after}}
        return Manifest(model={}, steps={"prune": {"report": report}}, tools={}, machine={})

    assert fine_tune_warnings(run(0.9796, 0.9745)) == []  # within a point
    bad = run(0.9796, 0.10)
    (line,) = fine_tune_warnings(bad)
    assert line.startswith("pruning cost 87.96 points of accuracy (97.96% → 10.00%)") and "--prune" in line
    text = "\n".join(prune_lines(bad))
    assert "**99.9%** sparsity" in text and "**Warning:** pruning cost 87.96 points" in text


def test_without_labelled_data_the_held_out_split_warns_and_exactly_one_point_does_not():
    """Pruning to 97 % took the held-out split from 97.92 % to 54.58 % and nothing warned: the check read
    only the --data labels' figures. 90.5 -> 89.5 % (1.0000000000000009 points in floats) was warned about."""
    from deploykit.artifacts import Manifest
    from deploykit.report.rows import fine_tune_warnings

    def run(report):
        return fine_tune_warnings(Manifest(model={}, steps={"prune": {"report": report}}, tools={}, machine={}))

    (line,) = run({"eval": {"accuracy_before": None, "accuracy_after": None}, "accuracy_before": 0.9792,
                   "accuracy_after": 0.5458})
    assert line.startswith("pruning cost 43.34 points of accuracy on the held-out split of the training data")
    assert run({"eval": {"accuracy_before": 0.905, "accuracy_after": 0.895}}) == []
    assert run({"eval": {"accuracy_before": 0.98, "accuracy_after": 0.97}, "accuracy_before": 0.9, "accuracy_after": 0.1}) == []


def test_manifest_json_has_no_nan_tokens():
    """An artifact computing NaN gave "max_abs_error": NaN: invalid JSON that JSON.parse refuses."""
    import json
    import math

    from deploykit.artifacts import Artifact, Manifest

    m = Manifest(model={}, tools={}, machine={}, artifacts=[
        Artifact(target="t", format="tflite", path="", verification={"max_abs_error": math.nan, "x": [1.0, math.inf]})])
    text = m.to_json()
    assert "NaN" not in text and "Infinity" not in text
    v = json.loads(text)["artifacts"][0]["verification"]
    assert v == {"max_abs_error": None, "x": [1.0, None]}


def test_warning_points_to_patience_when_early_stopping_ended_the_fine_tune():
    from deploykit.artifacts import Manifest
    from deploykit.report.rows import fine_tune_warnings

    report = {"settings": {"epochs": 12}, "epochs_run": 10, "eval": {"accuracy_before": 0.98, "accuracy_after": 0.9699}}
    (line,) = fine_tune_warnings(Manifest(model={}, steps={"prune": {"report": report}}, tools={}, machine={}))
    assert "cost 1.01 points" in line and "stopped early at epoch 10 of 12: raise --patience" in line


def test_a_failures_reason_does_not_repeat_the_target_name():
    """The CLI printed "tflm-int8 failed: tflm-int8: TFLite Micro has no kernel ..."."""
    from deploykit.artifacts import Artifact

    a = Artifact(target="tflm-int8", format="tflm", path="", status="failed",
                 error="tflm-int8: TFLite Micro has no kernel for op(s) TOPK_V2")
    assert a.reason == "TFLite Micro has no kernel for op(s) TOPK_V2"
    assert Artifact(target="x", format="tflite", path="", error="verification failed: y").reason == "verification failed: y"
