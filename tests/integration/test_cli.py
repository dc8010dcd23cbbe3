"""The `deploy` command line.

Error paths run the real console script in a subprocess (that is where DeployError
becomes one stderr line and exit code 2): they are started together, two at a time,
when this module begins, and each test collects its own result. Happy paths that
do not need a fresh process go through typer's CliRunner on ``deploykit.cli.app``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import deploykit
from deploykit.errors import UserError
from deploykit.artifacts import MANIFEST_NAME, Manifest, sha256_file
from deploykit.cli import app
from deploykit.targets import FIELD_DOCS, get_target, list_targets

pytestmark = pytest.mark.slow

DEPLOY = Path(sys.executable).with_name("deploy")
TIMEOUT_S = 300


def deploy_cmd() -> list[str]:
    """The installed console script (what users run), or the module as a fallback."""
    return [str(DEPLOY)] if DEPLOY.exists() else [sys.executable, "-m", "deploykit.cli"]


def _clean_env() -> dict[str, str]:
    # The CLI must quiet TensorFlow by itself: do not hand it the test session's settings.
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "DEPLOYKIT_VERBOSE")}


def run_deploy(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*deploy_cmd(), *map(str, args)], capture_output=True, text=True, env=_clean_env(),
                          cwd=cwd, timeout=TIMEOUT_S)


def invoke(args: list, **kwargs):
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args], **kwargs)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str, out: Path | None = None) -> str:
    """Exit 2, exactly one stderr line 'deploy: error: ...', no traceback, nothing written."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("deploy: error: ")
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert proc.stdout.strip() == ""
    if out is not None:
        assert not out.exists(), f"{out} was created by a failing command"
    return line


# ----------------------------------------------------------------------------- subprocess runs
@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, keras3_path, data_npz, digits, broken_models, lambda_keras3_path,
               custom_layer_keras_path, saved_model_dir):
    base = tmp_path_factory.mktemp("cli")
    x = digits.x_eval[:20]
    np.savez(base / "wrong_shape.npz", x=np.zeros((20, 8, 8, 3), np.float32))
    np.savez(base / "empty.npz", x=np.zeros((0, 8, 8, 1), np.float32))
    nan = x.copy()
    nan[4, 2, 2, 0] = np.nan
    np.savez(base / "nan.npz", x=nan)
    np.savez(base / "scalar_y.npz", x=x, y=np.int64(3))
    (base / "not_a_model.tflite").write_bytes(b"\x00" * 64)
    (base / "some.onnx").write_bytes(b"\x00" * 64)
    nonempty = base / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("precious")
    tight = base / "tflite-int8-tight.toml"
    tight.write_text(
        "\n".join(
            [
                'format = "tflite"', 'precision = "int8"', 'weights = "int8"', 'activations = "int8"',
                'description = "Full int8 held to an impossible tolerance."',
                "[tolerance]", "atol = 1e-9", "rtol = 0.0", "range_atol = 0.0",
            ]
        )
        + "\n"
    )
    import keras

    tokens = keras.Sequential([keras.Input((12,), dtype="int32", name="ids"), keras.layers.Embedding(50, 8),
                               keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3, activation="softmax")])
    tokens.save(base / "tokens.keras")
    ids = np.random.default_rng(0).integers(0, 50, (16, 12)).astype(np.int32)
    ids[9, 3] = 81  # outside the vocabulary: the model itself cannot run on it
    np.savez(base / "oov.npz", ids=ids)
    masked = keras.Sequential([keras.Input((12,), dtype="int32", name="ids"), keras.layers.Embedding(50, 8, mask_zero=True),
                               keras.layers.GRU(4), keras.layers.Dense(3, activation="softmax")])
    masked.save(base / "masked_gru.keras")
    ids = np.random.default_rng(1).integers(1, 50, (16, 12)).astype(np.int32)
    ids[:, 8:] = 0  # padding: the mask is a boolean tensor
    np.savez(base / "padded.npz", ids=ids)
    anysize = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
                                keras.layers.GlobalAveragePooling2D()])
    anysize.save(base / "anysize.keras")
    np.savez(base / "tiny_images.npz", x=np.zeros((4, 1, 1, 3), np.float32))
    text = keras.Input((1,), dtype="string", name="text")
    words = keras.layers.StringLookup(vocabulary=["yes", "no"])(text)
    keras.Model(text, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(
        keras.layers.Embedding(4, 2)(words)))).save(base / "strings.keras")
    import tensorflow as tf

    class Positive(tf.Module):  # its quantized graph keeps an initializer no node uses: ORT's sessions log it natively
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def f(self, x):
            return {"b": x > 0}

    sm = Positive()
    tf.saved_model.save(sm, str(base / "positive_sm"), signatures={"serving_default": sm.f})
    np.savez(base / "vec.npz", x=np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))

    class AsText(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def f(self, x):
            return {"s": tf.strings.as_string(x)}

    as_text = AsText()
    tf.saved_model.save(as_text, str(base / "sm_string_out"), signatures={"serving_default": as_text.f})
    # a dimension of 2**40: its 8 random verification samples, or one random bench input, would need 32/16 TiB
    # (2**31, the reviewer's, is 64 GiB: a machine with that much free would really draw them)
    huge = keras.Input((2**40,), name="x")
    keras.Model(huge, keras.layers.Activation("relu")(huge)).save(base / "huge_dim.keras")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**40, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**40, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), base / "huge_dim.onnx")
    return {
        "base": base, "model": keras3_path, "data": data_npz, "broken": broken_models,
        "lambda": lambda_keras3_path, "custom": custom_layer_keras_path, "nonempty": nonempty, "tight": tight,
        "saved_model": saved_model_dir,
    }


def _error_cases(c: dict) -> dict[str, list]:
    m, b = c["model"], c["base"]
    return {
        "missing": ["convert", b / "nope.keras", "-t", "tflite-fp32"],
        "truncated": ["convert", c["broken"]["truncated_keras"], "-t", "tflite-fp32"],
        "corrupt": ["convert", c["broken"]["corrupt_keras"], "-t", "tflite-fp32"],
        "lambda": ["convert", c["lambda"], "-t", "tflite-fp32"],
        "wrong_shape": ["convert", m, "-t", "tflite-fp32", "--data", b / "wrong_shape.npz"],
        "empty": ["convert", m, "-t", "tflite-fp32", "--data", b / "empty.npz"],
        "nan": ["convert", m, "-t", "tflite-fp32", "--data", b / "nan.npz"],
        "scalar_y": ["convert", m, "-t", "tflite-fp32", "--data", b / "scalar_y.npz"],
        "unknown_target": ["convert", m, "-t", "tflite-fp32", "-t", "tflite-int4", "--data", c["data"]],
        "int8_no_data": ["convert", m, "-t", "tflite-fp32", "-t", "tflite-int8"],
        "zero_iterations": ["convert", m, "-t", "tflite-fp32", "--iterations", "0"],
        "zero_verify_samples": ["convert", m, "-t", "tflite-fp32", "--verify-samples", "0"],
        "bench_missing": ["bench", b / "nope.tflite"],
        "bench_tflm_not_tflite": ["bench", b / "not_a_model.tflite", "--runtime", "tflm"],
        "bench_not_tflite": ["bench", b / "not_a_model.tflite"],
        "bench_runtime_mismatch": ["bench", b / "some.onnx", "--runtime", "tfjs"],
        "oov_tokens": ["convert", b / "tokens.keras", "-t", "tflite-fp32", "--data", b / "oov.npz"],
        "too_small": ["convert", b / "anysize.keras", "-t", "tflite-fp32", "--data", b / "tiny_images.npz"],
        "string_input": ["convert", b / "strings.keras", "-t", "tflite-fp32"],
        "string_output": ["convert", b / "sm_string_out", "-t", "onnx-fp32", "--no-bench"],
        "huge_dim_random_inputs": ["convert", b / "huge_dim.keras", "-t", "tflite-fp32", "--no-bench"],
        "bench_huge_dim_random_inputs": ["bench", b / "huge_dim.onnx", "--warmup", "1", "--iterations", "2"],
        "negative_patience": ["convert", m, "-t", "tflite-fp32", "--prune", "0.5", "--train-data", c["data"], "--patience", "-1"],
        "patience_alone": ["convert", m, "-t", "tflite-fp32", "--patience", "3"],
        # a SavedModel input: TensorFlow's device probe ("failed call to cuInit") must not add a line
        "saved_model_prune": ["convert", c["saved_model"], "-t", "tflite-fp32", "--prune", "0.5", "--train-data", c["data"]],
        # click's usage errors were four lines (usage, hint, blank, error)
        "usage_bad_number": ["convert", m, "-t", "tflite-fp32", "--prune", "abc"],
        "usage_unknown_command": ["convrt", m],
        "unknown_label_output": ["convert", m, "-t", "tflite-fp32", "--data", c["data"], "--label-output", "head"],
        # a name over 255 bytes: pathlib's exists() raised ENAMETOOLONG, a 60-line traceback with exit 1
        "long_data_name": ["convert", m, "-t", "tflite-fp32", "--data", b / f"{'d' * 300}.npz"],
        "long_model_name": ["inspect", b / f"{'m' * 300}.keras"],
        "long_bench_name": ["bench", b / f"{'b' * 300}.tflite"],
        # a name in another encoding (Latin-1 bytes): a UnicodeEncodeError traceback writing the reports
        "non_utf8_model": ["convert", b / os.fsdecode(b"m\xff.keras"), "-t", "tflite-fp32"],
        "non_utf8_out": ["convert", m, "-t", "tflite-fp32", "--no-bench", "--out", b / os.fsdecode(b"o\xff")],
    }


@pytest.fixture(scope="module", autouse=True)
def subprocess_runs(cli_inputs):
    """Start every subprocess case at once (two at a time); tests collect their own."""
    c = cli_inputs
    runs: dict[str, tuple[Path | None, Future]] = {}
    pool = ThreadPoolExecutor(max_workers=2)
    e2e_out = c["base"] / "e2e"
    runs["e2e"] = (e2e_out, pool.submit(run_deploy, [
        "convert", c["model"], "-t", "tflite-fp32", "-t", "tflite-int8", "--data", c["data"], "--out", e2e_out,
        "--iterations", "5", "--warmup", "1"]))
    # ONNX Runtime's quantizer and tf2onnx warn through the root logger: the terminal stays clean
    runs["onnx_quiet"] = (None, pool.submit(run_deploy, [
        "convert", c["model"], "-t", "onnx-int8-qop", "-t", "onnx-int8-dynamic", "--data", c["data"],
        "--out", c["base"] / "onnx_quiet", "--no-bench"]))
    runs["ort_native_quiet"] = (None, pool.submit(run_deploy, [  # ... and ORT's own native log lines too
        "convert", c["base"] / "positive_sm", "-t", "onnx-int8-qdq", "--data", c["base"] / "vec.npz",
        "--out", c["base"] / "ort_native_quiet", "--no-bench"]))
    # ... and TensorFlow's runtime, logging at ERROR level about a masked GRU's boolean kernels
    runs["recurrent_quiet"] = (None, pool.submit(run_deploy, [
        "convert", c["base"] / "masked_gru.keras", "-t", "tflite-fp32", "--data", c["base"] / "padded.npz",
        "--out", c["base"] / "recurrent_quiet", "--no-bench"]))
    runs["nonempty"] = (None, pool.submit(run_deploy, [
        "convert", c["model"], "-t", "tflite-fp32", "--data", c["data"], "--out", c["nonempty"]]))
    runs["custom"] = (None, pool.submit(run_deploy, ["inspect", c["custom"]]))
    out_file = c["base"] / "out_is_a_file"
    out_file.write_text("not a directory")
    runs["out_is_file"] = (None, pool.submit(run_deploy, [
        "convert", c["model"], "-t", "tflite-fp32", "--out", out_file]))
    for name, args in _error_cases(c).items():
        out = c["base"] / f"out_{name}" if args[0] == "convert" else None
        runs[name] = (out, pool.submit(run_deploy, [*args, "--out", out] if out else args))
    runs["help"] = (None, pool.submit(run_deploy, ["--help"]))
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def _result(runs, name) -> tuple[Path | None, subprocess.CompletedProcess]:
    out, future = runs[name]
    return out, future.result(timeout=TIMEOUT_S)


# ----------------------------------------------------------------------------- happy paths (in-process)
def test_targets_lists_every_builtin():
    result = invoke(["targets"])
    assert result.exit_code == 0, result.output
    for t in list_targets():
        assert t.name in result.stdout
        assert t.description in result.stdout
    assert "--show" in result.stdout
    # an -auto target's own tolerance judges nothing (its candidates are judged by theirs): it showed the default
    assert "tflite-auto      candidates tflite-fp32, tflite-fp16, tflite-dynamic, tflite-int8, runtime litert\n" \
           "                 tolerance: each candidate by its own tolerance" in result.stdout


def test_targets_show_prints_every_field_with_its_doc():
    from deploykit.cli import _toml_value

    t = get_target("tflite-int8")
    result = invoke(["targets", "--show", "tflite-int8"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for key, value in t.to_dict().items():
        if key in ("candidates", "select_by"):  # an -auto target's only
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]  # tables print per entry
        for sub, v in items:
            name = key if sub is None else f"{key}.{sub}"
            line = next((ln for ln in lines if ln.startswith(f"{name} = ")), None)
            assert line is not None, name
            assert line.startswith(f"{name} = {_toml_value(v)}")
            if name in FIELD_DOCS:
                assert FIELD_DOCS[name] in line


def test_version_short_help_and_an_empty_show():
    """`deploy convert -h` was "No such option: -h", there was no --version, and `--show ""` listed every target."""
    from deploykit import __version__

    assert invoke(["--version"]).stdout.strip() == f"deploykit {__version__}"
    assert invoke(["convert", "-h"]).stdout.startswith("Usage: deploy convert")
    assert _refusal(["targets", "--show", ""]) == "--show takes a target's name or a .toml path, e.g. --show tflite-int8"


def test_targets_show_a_toml_file(cli_inputs):
    result = invoke(["targets", "--show", cli_inputs["tight"]])
    assert result.exit_code == 0, result.output
    assert 'name = "tflite-int8-tight"' in result.stdout and "tolerance.atol = 1e-09" in result.stdout


def test_what_targets_show_prints_is_a_target_file(tmp_path):
    """Saved and renamed, it was refused: Python's False is no TOML, and an empty candidates list is refused."""
    import re

    from deploykit.targets import load_target_file

    for t in list_targets():
        result = invoke(["targets", "--show", t.name])
        assert result.exit_code == 0, result.output
        path = tmp_path / f"my-{t.name}.toml"
        path.write_text(re.sub(r'^name = "[^"]*"', f'name = "my-{t.name}"', result.stdout, flags=re.M))
        mine = load_target_file(path).to_dict()
        theirs = t.to_dict()
        if t.is_auto:  # its own types and tolerance are not shown: its candidates carry them
            mine.pop("tolerance"), theirs.pop("tolerance")
        assert mine == {**theirs, "name": f"my-{t.name}"}, t.name
        # saved as it is, under the built-in's own name: the same target (an -auto one was refused as "other settings")
        same = tmp_path / f"{t.name}.toml"
        same.write_text(result.stdout)
        assert load_target_file(same) == t, t.name


def test_what_targets_show_prints_of_a_user_auto_file_is_a_target_file_and_text_stays_text(tmp_path):
    """An -auto file's overrides were printed as Python dicts ({'max_accuracy_drop': 0.4}: no TOML), and its
    .toml candidate as the path joined to its folder, joined again on load; a description's "[/x]" went
    through rich markup (a MarkupError traceback) and "[ram]" vanished."""
    from deploykit.targets import load_target_file

    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "myq.toml").write_text('format = "onnx"\nprecision = "int8-qop"\noptions = { per_channel = false }\n')
    (boards / "careful.toml").write_text('format = "onnx"\nprecision = "auto"\ncandidates = ["onnx-fp32", "myq.toml"]\n'
                                         'tolerance = { max_accuracy_drop = 0.4 }\nbench = { iterations = 20 }\n'
                                         'description = "rev A [/x] board [ram]"\n')
    result = invoke(["targets", "--show", boards / "careful.toml"])
    assert result.exit_code == 0, result.output
    assert 'description = "rev A [/x] board [ram]"' in result.stdout
    saved = tmp_path / "elsewhere" / "careful.toml"
    saved.parent.mkdir()
    saved.write_text(result.stdout)
    again, original = load_target_file(saved), load_target_file(boards / "careful.toml")
    assert again.overrides == original.overrides == {"tolerance": {"max_accuracy_drop": 0.4}, "bench": {"iterations": 20}}
    assert again.candidate_targets() == original.candidate_targets()


def test_inspect_prints_inputs_and_preprocessing(keras3_path, keras3_model):
    result = invoke(["inspect", keras3_path])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{keras3_model.name} (keras3), {keras3_model.count_params()} parameters" in out
    assert "input  pixels: shape (None, 8, 8, 1) float32" in out
    assert "preprocessing: Rescaling (rescale)" in out
    for layer in keras3_model.layers:
        assert f"{layer.name}: {type(layer).__name__}" in out


def test_inspect_saved_model(saved_model_dir, keras3_model):
    result = invoke(["inspect", saved_model_dir])
    assert result.exit_code == 0, result.output
    assert f"(saved_model), {keras3_model.count_params()} parameters" in result.stdout  # it said "? parameters"
    assert "input  pixels: shape (None, 8, 8, 1) float32" in result.stdout


def test_inspect_saved_model_does_not_claim_no_preprocessing(saved_model_dir):
    result = invoke(["inspect", saved_model_dir])
    assert result.exit_code == 0, result.output
    assert "none embedded" not in result.stdout


def test_inspect_json(tf_keras_h5_path, tf_keras_model):
    from deploykit.models import inspect_model

    result = invoke(["inspect", tf_keras_h5_path, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(inspect_model(tf_keras_h5_path).to_dict()))
    assert data["kind"] == "tf_keras" and data["params"] == tf_keras_model.count_params()


def test_bench_json(tflite_files):
    path = tflite_files["tflite-int8-io"]
    result = invoke(["bench", path, "--iterations", "5", "--warmup", "2", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["p50_ms"] > 0 and data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"]
    assert data["n"] == 5 == len(data["samples_ms"])
    assert (data["warmup"], data["threads"], data["runtime"], data["inputs"]) == (2, 1, "litert", "random")
    assert data["sha256"] == sha256_file(path) and data["size_bytes"] == path.stat().st_size


def test_bench_human_with_data(tflite_files, data_npz):
    result = invoke(["bench", tflite_files["tflite-fp32"], "--iterations", "5", "--data", data_npz])
    assert result.exit_code == 0, result.output
    assert "p50" in result.stdout and "n=5" in result.stdout and "data inputs" in result.stdout


def test_bench_with_more_threads_than_cores_says_they_take_turns(tflite_files):
    """--threads above the core count was timed and printed like any other run."""
    over = (os.cpu_count() or 1) + 2
    result = invoke(["bench", tflite_files["tflite-fp32"], "--iterations", "3", "--warmup", "1", "--threads", str(over)])
    assert result.exit_code == 0, result.output
    assert f"note: {over} threads on this machine's {os.cpu_count()} cores take turns" in result.stdout
    assert "take turns" not in invoke(["bench", tflite_files["tflite-fp32"], "--iterations", "3", "--warmup", "1",
                                       "--threads", "1"]).stdout


def test_bench_data_already_quantized_is_fed_as_it_is(tmp_path, tflite_files, data_npz):
    """int8 data for an int8-io file was read as real values and quantized again: the fed tensor held
    only -128 and 127. Real values are still quantized by the input's scale and zero point."""
    from deploykit.runtime_bench import _bench_inputs
    from deploykit.runtime_bench.litert import LiteRTRunner
    from deploykit.runtime_bench.inputs import quantize_input

    runner = LiteRTRunner(tflite_files["tflite-int8-io"], threads=1)
    runner.load()
    (name, detail), = runner.input_details().items()
    real = np.load(data_npz)["x"][:4].astype("float32")
    quantized = quantize_input(real, detail)
    np.savez(tmp_path / "q.npz", x=quantized)
    fed = _bench_inputs(runner, str(tmp_path / "q.npz"))[name]
    assert fed.dtype == np.int8 and np.array_equal(fed, quantized[:1])
    assert len(np.unique(fed)) > 2
    assert np.array_equal(quantize_input(_bench_inputs(runner, data_npz)[name], detail), quantized[:1])


def test_bench_of_several_files_times_them_side_by_side(tmp_path, tflite_files):
    fp32, int8 = tflite_files["tflite-fp32"], tflite_files["tflite-int8-io"]
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(fp32.read_bytes())
    result = invoke(["bench", fp32, int8, copy, "--iterations", "10", "--warmup", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["threads"], data["rounds"], data["inputs"]) == (2, 5, "random")
    first, second, third = data["files"]
    assert [f["path"] for f in data["files"]] == [str(fp32), str(int8), str(copy)]
    assert [f["sha256"] for f in data["files"]] == [sha256_file(p) for p in (fp32, int8, copy)]
    assert second["size_bytes"] == int8.stat().st_size and second["gzip_bytes"] < second["size_bytes"]
    for f in (first, second):
        assert len(f["round_p50_ms"]) == 5 and f["n"] == len(f["samples_ms"]) and f["p50_ms"] > 0
    assert first["vs_first"] == 1.0
    ratios = [a / b for a, b in zip(second["round_p50_ms"], first["round_p50_ms"])]
    assert second["vs_first"] == pytest.approx(float(np.median(ratios)))
    # how far the rounds' ratios range: a ratio swinging 2.2-3.8x printed as one three-decimal figure
    kept = sorted(ratios)[1:-1]  # the extreme round at each end aside (5 rounds)
    assert second["vs_first_spread"] == pytest.approx(max(kept) / min(kept))
    assert second["unsteady"] == (second["vs_first_spread"] > 1.5) and "vs_first_spread" not in first
    # the copy has the first file's bytes: timed once, its figures are the first file's
    assert third["same_file_as"] == str(fp32) and third["round_p50_ms"] == first["round_p50_ms"]
    # no "warmup": every round warms each file (it said 2, after hundreds of untimed runs)
    assert first["threads"] == 2 and first["init_ms"] > 0 and "warmup" not in first
    # each file says the threads its runtime used: TFLite Micro runs one
    micro = deploykit.bench([fp32, int8], runtime="tflm", iterations=5, warmup=1)
    assert micro["threads"] == 2 and [f["threads"] for f in micro["files"]] == [1, 1]
    assert [f["runtime"] for f in micro["files"]] == ["tflm", "tflm"]

    shown = invoke(["bench", fp32, int8, "--iterations", "10", "--warmup", "2"])
    assert shown.exit_code == 0, shown.output
    assert "2 files side by side (2 threads asked, 5 alternating rounds, random inputs)" in shown.stdout
    assert fp32.name in shown.stdout and int8.name in shown.stdout and "× first" in shown.stdout


def test_bench_refuses_files_to_compare_that_cannot_be(tmp_path, tflite_files):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name="v")])
    def other(v):
        return {"y": v * 2.0}

    other_file = tmp_path / "other.tflite"
    other_file.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([other.get_concrete_function()], other).convert())
    fp32 = tflite_files["tflite-fp32"]
    with pytest.raises(UserError, match=r"take different inputs \(\S+ \(1, 8, 8, 1\) float32 vs v \(1, 3\) float32\)"):
        deploykit.bench([fp32, other_file], iterations=5)  # dtypes said too: an int8-io file differs in them alone
    assert_user_error(run_deploy(["bench", fp32, fp32]), f"{fp32} is given 2 times; pass different files")
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(fp32.read_bytes())
    with pytest.raises(UserError, match=f"{fp32} and {copy} hold the same bytes; pass different files to compare"):
        deploykit.bench([fp32, copy])
    assert_user_error(run_deploy(["bench", fp32, tflite_files["tflite-int8-io"], "--browser"]), "--browser times one")
    assert_user_error(run_deploy(["bench", fp32, tmp_path / "missing.onnx"]), "missing.onnx is not a file")


@pytest.mark.parametrize("command, signame", [("bench", "SIGINT"), ("convert", "SIGINT"), ("convert", "SIGTERM")])
def test_ctrl_c_says_so_in_one_line_and_exits_130(tmp_path, tflite_files, cli_inputs, command, signame):
    """typer turns Ctrl-C inside a command into a silent exit 130; convert says what it removed, once.
    SIGTERM (CI cancel, docker stop) stops convert the same way, with the exit code a shell gives it: 143."""
    import signal
    import time

    signum = getattr(signal, signame)

    out = tmp_path / "out"
    # on the TFLite Micro kernels (~0.1 ms a run): LiteRT ran a million digits runs side by side in under 12 s
    args = (["bench", tflite_files["tflite-int8-io"], "--runtime", "tflm", "--iterations", "1000000"]
            if command == "bench" else
            ["convert", cli_inputs["model"], "-t", "tflite-fp32", "-t", "tflite-int8", "-t", "onnx-fp32",
             "--data", cli_inputs["data"], "--out", out, "--iterations", "1000000"])
    proc = subprocess.Popen([*deploy_cmd(), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_clean_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(12)  # past start-up: inside the command
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.startswith("deploy:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    stopped = "terminated" if signame == "SIGTERM" else "interrupted"
    assert lines[0] == ("deploy: interrupted" if command == "bench"
                        else f"deploy: {stopped}; removed what this run had written to {out}")
    assert not out.exists()


def test_convert_with_a_failing_target_exits_1(tmp_path, cli_inputs):
    out = tmp_path / "out"
    result = invoke(["convert", cli_inputs["model"], "-t", "tflite-fp32", "-t", cli_inputs["tight"],
                     "--data", cli_inputs["data"], "--out", out, "--iterations", "5", "--warmup", "1"])
    assert result.exit_code == 1, result.output
    assert "tflite-int8-tight failed:" in result.stdout and "verification failed" in result.stdout
    manifest = Manifest.read(out / MANIFEST_NAME)
    assert {a.target: a.status for a in manifest.artifacts} == {"tflite-fp32": "ok", "tflite-int8-tight": "failed"}
    assert "## Failures" in (out / "report.md").read_text()


def test_lambda_model_converts_with_trust_model(tmp_path, cli_inputs):
    out = tmp_path / "out"
    result = invoke(["convert", cli_inputs["lambda"], "-t", "tflite-fp32", "--trust-model", "--out", out,
                     "--no-bench"])
    assert result.exit_code == 0, result.output
    (a,) = Manifest.read(out / MANIFEST_NAME).artifacts
    assert a.status == "ok" and a.verification["passed"] and a.benchmark == {}
    assert (out / a.path).is_file()


def test_help_and_targets_import_no_heavy_module():
    code = (
        "import sys\n"
        "import deploykit, deploykit.cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(deploykit.cli.app, ['--help']); assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(deploykit.cli.app, ['targets']); assert r.exit_code == 0, r.output\n"
        # pydantic: typer 0.29 imports it on every command, +0.2 s of start-up (pinned below it)
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'ai_edge_litert', 'onnxruntime', 'tf2onnx', 'pydantic')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- real subprocesses
def test_help_runs(subprocess_runs):
    _, proc = _result(subprocess_runs, "help")
    assert proc.returncode == 0
    for command in ("convert", "targets", "bench", "inspect"):
        assert command in proc.stdout


def test_convert_end_to_end_then_force_rerun(subprocess_runs, cli_inputs):
    out, proc = _result(subprocess_runs, "e2e")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == ""  # TensorFlow/LiteRT native chatter stays out of the terminal
    _, onnx_run = _result(subprocess_runs, "onnx_quiet")
    assert onnx_run.returncode == 0 and onnx_run.stderr.strip() == "", onnx_run.stderr[-2000:]
    _, ort_run = _result(subprocess_runs, "ort_native_quiet")
    assert ort_run.returncode in (0, 1) and "onnxruntime" not in ort_run.stderr, ort_run.stderr[-2000:]
    _, gru_run = _result(subprocess_runs, "recurrent_quiet")
    assert gru_run.returncode == 0 and gru_run.stderr.strip() == "", gru_run.stderr[-2000:]
    assert f"manifest: {out / MANIFEST_NAME}" in proc.stdout
    first = Manifest.read(out / MANIFEST_NAME)
    assert [(a.target, a.status) for a in first.artifacts] == [("tflite-fp32", "ok"), ("tflite-int8", "ok")]
    for a in first.artifacts:
        assert sha256_file(out / a.path) == a.sha256
        assert a.benchmark["n"] == 5 and len(a.benchmark["samples_ms"]) == 5
        assert abs(a.verification["accuracy"] - a.verification["reference_accuracy"]) * 100 <= 1.0 + 1e-9
    for name in ("report.md", "report.html", "size_vs_latency.svg"):
        assert (out / name).is_file()

    # same directory again: refused without --force (covered below), replaced with it
    rerun = invoke(["convert", cli_inputs["model"], "-t", "tflite-fp32", "--data", cli_inputs["data"],
                    "--out", out, "--force", "--iterations", "3", "--warmup", "0"])
    assert rerun.exit_code == 0, rerun.output
    second = Manifest.read(out / MANIFEST_NAME)
    assert [(a.target, a.status) for a in second.artifacts] == [("tflite-fp32", "ok")]
    assert second.artifacts[0].benchmark["n"] == 3
    assert not (out / "tflite-int8").exists()  # the previous run's other target was cleared


def test_nonempty_out_without_force_is_refused_and_untouched(subprocess_runs, cli_inputs):
    _, proc = _result(subprocess_runs, "nonempty")
    assert_user_error(proc, "is not empty", "--force")
    d = cli_inputs["nonempty"]
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]
    assert (d / "keep.txt").read_text() == "precious"


def test_out_that_is_a_file_is_refused(subprocess_runs, cli_inputs):
    _, proc = _result(subprocess_runs, "out_is_file")
    assert_user_error(proc, "exists and is a file")
    assert (cli_inputs["base"] / "out_is_a_file").read_text() == "not a directory"


def test_unregistered_custom_layer(subprocess_runs):
    _, proc = _result(subprocess_runs, "custom")
    assert_user_error(proc, "unknown custom object", "TimesTwo")


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["nope.keras", "does not exist"]),
        ("truncated", ["truncated.keras", "truncated or corrupt"]),
        ("corrupt", ["corrupt.keras", "truncated or corrupt"]),
        ("lambda", ["Lambda", "--trust-model"]),
        ("wrong_shape", ["(20, 8, 8, 3)", "(None, 8, 8, 1)"]),
        ("empty", ["empty.npz", "is empty"]),
        ("nan", ["nan.npz", "1 NaN/inf value"]),
        ("unknown_target", ["unknown target 'tflite-int4'", *[t.name for t in list_targets()]]),
        ("int8_no_data", ["tflite-int8", "need calibration data", "--data"]),
        # the flag the user typed, not the setting it fills (bench.iterations, verify_samples)
        ("zero_iterations", ["error: --iterations must be an integer in 1..1,000,000, got 0"]),
        ("zero_verify_samples", ["error: --verify-samples must be a whole number >= 1, got 0"]),
        ("bench_missing", ["nope.tflite is not a file"]),
        ("bench_tflm_not_tflite", ["not_a_model.tflite is not a TFLite file (its header lacks the TFL3 identifier"]),
        ("bench_not_tflite", ["not_a_model.tflite is not a TFLite file (its header lacks the TFL3 identifier"]),
        ("bench_runtime_mismatch", ["--runtime tfjs runs .json files (model.json); some.onnx is not one"]),
        ("oov_tokens", ["samples 8..15", "indices[1,3] = 81 is not in [0, 50)", "Embedding"]),
        ("too_small", ["samples 0..3", "too small for the model's convolutions or pooling", "(1, 1, 3)"]),
        ("string_input", ["input 'text' takes strings", "TextVectorization", "integer ids"]),
        # onnx-fp32 'passed' it with a max abs error of 5e-07 (strings compared as numbers)
        ("string_output", ["output 's' gives strings", "end the model at the numbers the strings are made from"]),
        # numpy's MemoryError traceback (exit 1) before: the size is checked before anything is drawn
        ("huge_dim_random_inputs", ["random verification samples (8 of 'x' (None, 1099511627776)) would need 32768.0 GiB",
                                    "pass --data with real samples"]),
        ("bench_huge_dim_random_inputs", ["random benchmark input ('x' (1099511627776, 4)) would need 16384.0 GiB",
                                          "convert the model again with a smaller input size"]),
        ("negative_patience", ["patience must be a non-negative integer", "-1"]),
        ("patience_alone", ["--patience applies only to the pruning, clustering and QAT fine-tunes", "--prune 0.8"]),
        ("saved_model_prune", ["pruning fine-tunes a Keras model", "not a SavedModel"]),
        ("usage_bad_number", ["Invalid value for '--prune'", "(see 'deploy convert --help')"]),
        ("usage_unknown_command", ["No such command 'convrt'", "(see 'deploy --help')"]),
        ("unknown_label_output", ["--label-output 'head' is not an output of this model; its outputs: output_0"]),
        *[(f"long_{what}_name", ["File name too long", "at most 255 bytes", "choose a shorter name"])
          for what in ("data", "model", "bench")],
        *[(f"non_utf8_{what}", ["\\xff", "is not UTF-8 text", "rename the file or directory to a UTF-8 name"])
          for what in ("model", "out")],
    ],
)
def test_user_errors(subprocess_runs, case, fragments):
    out, proc = _result(subprocess_runs, case)
    assert_user_error(proc, *fragments, out=out)


def test_scalar_labels_are_a_user_error(subprocess_runs):
    out, proc = _result(subprocess_runs, "scalar_y")
    assert_user_error(proc, "scalar_y.npz", out=out)


def _refusal(args: list) -> str:
    """The UserError an in-process `deploy` command raised (main() prints it as one line, exit 2)."""
    result = invoke(args)
    assert isinstance(result.exception, UserError), (result.exception, result.output)
    return str(result.exception)


@pytest.mark.parametrize("flags, said", [
    # accepted and ignored before: no pruning at all, or a block size without block structure
    (["--prune", "0.5", "--prune-block", "2x2"], "--prune-block only applies to --prune-structure block"),
    (["--cluster", "8", "--prune-block", "2x2"], "--prune-block only applies to --prune-structure block"),
    (["--cluster", "8", "--prune-schedule", "constant"], "--prune-schedule only applies to pruning; add --prune 0.8"),
    (["--prune", "0.5", "--prune-structure", "block", "--prune-block", "1x1"], "--prune-block 1x1 is unstructured pruning"),
    (["--prune", "0.5", "--prune-structure", "block", "--prune-block", "2by2"], "--prune-block must look like 1x4"),
])
def test_prune_flags_that_would_do_nothing_are_refused(tmp_path, cli_inputs, flags, said):
    out = tmp_path / "o"
    message = _refusal(["convert", cli_inputs["model"], "-t", "tflite-fp32", "--train-data", cli_inputs["data"],
                        "--out", out, *flags])
    assert said in message, message
    assert not out.exists()


@pytest.mark.parametrize("flags, said", [
    (["--threads", "0"], "--threads must be an integer in 1.."),
    (["--warmup", "-1"], "--warmup must be an integer in 0..100,000, got -1"),
    (["--prune", "0.5", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--prune", "0.5", "--learning-rate", "-1"], "--learning-rate must be a finite number > 0, got -1.0"),
    (["--qat", "--patience", "-1"], "--patience must be a non-negative integer"),
    (["--prune", "1.5"], "--prune must be a fraction in (0, 1), got 1.5"),
    (["--cluster", "1"], "--cluster must be a whole number from 2 to"),
])
def test_convert_refusals_name_the_flag_not_the_setting(tmp_path, cli_inputs, flags, said):
    tuned = any(f in flags for f in ("--prune", "--qat", "--cluster"))
    message = _refusal(["convert", cli_inputs["model"], "-t", "tflite-int8", "--out", tmp_path / "o", *flags,
                        *(["--train-data", cli_inputs["data"]] if tuned else [])])
    assert message.startswith(said), message


def test_bench_refusals_name_the_flag_and_the_benchmark(tmp_path, tflite_files, cli_inputs):
    model = tflite_files["tflite-fp32"]
    assert _refusal(["bench", model, "--iterations", "0"]).startswith("--iterations must be an integer in 1..")
    assert _refusal(["bench", model, "--threads", "0"]).startswith("--threads must be an integer in 1..")
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((2, 8, 8, 1), np.nan, np.float32))
    message = _refusal(["bench", model, "--data", nan])
    assert "a benchmark input needs finite numbers" in message and "calibration" not in message, message
    # a run's manifest.json taken for a TF.js model.json: "no modelTopology ... convert the model again"
    run = tmp_path / "run"
    (run / "tflite-fp32").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"artifacts": [
        {"target": "tflite-fp32", "status": "ok", "path": "tflite-fp32/model.tflite"}], "schema_version": 1}))
    message = _refusal(["bench", run / "manifest.json"])
    assert message == (f"{run / 'manifest.json'} is a deploykit run's manifest, not an artifact; pass one of the files "
                       f"it lists (e.g. {run / 'tflite-fp32' / 'model.tflite'})"), message


def test_paths_that_are_no_regular_files_are_refused_in_one_line(tmp_path, tflite_files, cli_inputs):
    """A pipe as --data (<(cat d.npz)) was read twice and called "not a zip archive"; one with no writer
    hung the run. An empty --out ran in the working directory; a symlink loop "did not exist"; a
    corrupt .npy header showed a Python object's repr; side by side, a cut file lost its way out."""
    import os

    model, data = tflite_files["tflite-fp32"], cli_inputs["data"]
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer, so a regression fails here rather than hangs
    try:
        assert _refusal(["bench", model, "--data", fifo]) == (f"data {fifo} is not a regular file (a pipe or a device); "
                                                              "save the data to an .npz file and pass that")
    finally:
        os.close(held)
    assert _refusal(["convert", cli_inputs["model"], "-t", "tflite-fp32", "--data", data, "--out", ""]).startswith(
        "--out is empty (''); name an output directory")
    loop = tmp_path / "loop.keras"
    loop.symlink_to(loop)
    assert _refusal(["inspect", loop]) == f"model {loop} is a symbolic link to nothing (missing, or a loop); check the path"
    import zipfile

    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00\x10\x00{garbage}      \n")
    assert "(a corrupt .npy header)" in _refusal(["bench", model, "--data", tmp_path / "bad.npz"])
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(model.read_bytes()[:1000])
    assert_user_error(run_deploy(["bench", model, cut]), "cut.tflite", "convert the model again")
    folder = tmp_path / "tflite-fp32"  # a run's target folder
    folder.mkdir()
    (folder / "model.tflite").write_bytes(model.read_bytes())
    assert _refusal(["bench", folder]) == f"{folder} is not a file; pass the artifact file in it: {folder / 'model.tflite'}"


def test_unusable_out_and_target_arguments_are_user_errors_before_any_work(tmp_path, keras3_path, saved_model_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    with pytest.raises(UserError, match="is inside the model's SavedModel directory"):
        deploykit.convert(saved_model_dir, "tflite-fp32", out=saved_model_dir / "variables" / "out")
    assert not (saved_model_dir / "variables" / "out").exists()
    with pytest.raises(UserError, match="a_file is a file"):
        deploykit.convert(keras3_path, "tflite-fp32", out=blocker / "sub")
    with pytest.raises(UserError, match="no target given"):
        deploykit.convert(keras3_path, None, out=tmp_path / "o1")
    with pytest.raises(UserError, match="a target is a name, a .toml path or a Target, got int 5"):
        deploykit.convert(keras3_path, [5], out=tmp_path / "o2")
    # bench settings with the benchmark off: recorded in the manifest beside timings that never ran
    assert _refusal(["convert", keras3_path, "-t", "tflite-fp32", "--no-bench", "--threads", "4", "--warmup", "3",
                     "-o", tmp_path / "o3"]).startswith("--threads, --warmup set the benchmark, which --no-bench turns off")
    assert blocker.read_text() == "keep" and not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    too_long = tmp_path / ("x" * 300)  # a name no filesystem here takes: a bare OSError from Python before
    for call in (lambda: deploykit.convert(keras3_path, "tflite-fp32", out=too_long),
                 lambda: deploykit.inspect(str(too_long) + ".keras"), lambda: deploykit.bench(str(too_long) + ".tflite")):
        with pytest.raises(UserError, match="File name too long .*choose a shorter name"):
            call()


def test_ctrl_c_mid_run_removes_what_the_run_wrote(tmp_path, keras3_path, data_npz):
    """A TF.js directory holds its shards before its model.json is verified: an interrupt must not leave it."""
    from deploykit.pipeline import Pipeline

    def progress(message):
        if message == "tfjs-fp32: verifying":  # shards and model.json are on disk, not yet verified
            raise KeyboardInterrupt

    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    for out in (tmp_path / "fresh", keep):
        pipeline = Pipeline(["tfjs-fp32", "tflite-fp32"], data=data_npz, out=out, bench=False, force=True,
                            progress=progress)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(keras3_path)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]


def test_a_ctrl_c_inside_a_finalizer_prints_no_traceback(monkeypatch):
    """A Ctrl-C landing in a TensorFlow finalizer printed "Exception ignored in: ... KeyboardInterrupt"
    with a traceback before the run's one line; other errors in finalizers still reach the hook."""
    import gc
    import sys

    from deploykit.interrupts import quiet_unraisable_interrupts

    shown = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: shown.append(type(u.exc_value).__name__))

    class Finalizer:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    quiet_unraisable_interrupts()
    Finalizer(KeyboardInterrupt())
    gc.collect()
    Finalizer(ValueError("a real problem"))
    gc.collect()
    assert shown == ["ValueError"]


def test_a_ctrl_c_after_the_run_is_written_changes_nothing(tmp_path, cli_inputs):
    """A Ctrl-C landing after the last line (TensorFlow's teardown at exit, where Python has put the
    default handler back) killed the process silently with code 130, though every output was written."""
    import signal

    out = tmp_path / "out"
    proc = subprocess.Popen([*deploy_cmd(), "convert", str(cli_inputs["model"]), "-t", "tflite-fp32", "--data",
                             str(cli_inputs["data"]), "--out", str(out), "--no-bench"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_clean_env(), "PYTHONUNBUFFERED": "1"},  # each line as it is printed
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("html:"):  # the last line: the run is complete
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, (proc.returncode, err)
    assert "interrupted" not in err and (out / "manifest.json").is_file()


def test_an_in_process_convert_gives_the_caller_its_ctrl_c_back(tmp_path, cli_inputs):
    """After one CliRunner convert, SIGINT stayed ignored (and the unraisable hook wrapped again on every
    call): Ctrl-C no longer stopped the calling process."""
    import signal
    import sys

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    result = invoke(["convert", cli_inputs["model"], "-t", "tflite-fp32", "--data", cli_inputs["data"],
                     "--out", tmp_path / "out", "--no-bench"])
    assert result.exit_code == 0, result.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook) == before


def test_a_warning_is_printed_once_and_not_raised_as_a_python_warning_too(tmp_path, cli_inputs, digits):
    """convert's Python API raises each warning as a UserWarning; the CLI, which prints them, must not say them twice."""
    import warnings

    np.savez(tmp_path / "few.npz", x=digits.x_eval[:10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(["convert", cli_inputs["model"], "-t", "tflite-fp32", "--data", tmp_path / "few.npz",
                         "--out", tmp_path / "out", "--no-bench"])
    assert result.exit_code == 0, result.output
    assert result.output.count("too few to trust") == 1, result.output
    assert not [w for w in caught if "too few to trust" in str(w.message)]


def test_bench_data_the_model_cannot_run_on_is_one_line(tmp_path):
    """Token ids past an Embedding's table: LiteRT and ONNX Runtime raised their own errors (a 52-line
    traceback, exit 1), solo and side by side; TF.js said it in one line without the hint."""
    import keras

    inp = keras.Input((6,), dtype="int32", name="ids")
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(inp))))
    ids = np.random.default_rng(0).integers(0, 20, (8, 6)).astype("int32")
    result = deploykit.convert(model, ["tflite-fp32", "onnx-fp32", "tfjs-fp32"], data=ids, out=tmp_path / "out", bench=False)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((2, 6), 1000, np.int32))
    for files in ([result.path("tflite-fp32")], [result.path("onnx-fp32")], [result.path("tfjs-fp32")],
                  [result.path("tflite-fp32"), result.path("onnx-fp32")]):
        message = _refusal(["bench", *files, "--data", bad, "--iterations", "2"])
        assert "cannot run on the data's first sample: " in message and "Embedding vocabulary" in message, message
    np.savez(tmp_path / "good.npz", x=ids)
    assert invoke(["bench", result.path("onnx-fp32"), "--data", tmp_path / "good.npz", "--iterations", "2"]).exit_code == 0


def _as_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python whose file permissions apply (root's DAC override dropped when root)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions do not apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                  "--inh-caps=-dac_override,-dac_read_search", "--"]
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_bench_of_an_unreadable_file_says_so(tmp_path, tflite_files):
    """deploykit.bench of an unreadable model.json raised a bare PermissionError, and an unreadable .tflite
    was "cut short or changed since it was written ... convert the model again"."""
    locked = tmp_path / "locked.tflite"
    shutil.copy(tflite_files["tflite-fp32"], locked)
    locked.chmod(0)
    run = _as_unprivileged(f"import deploykit\ntry:\n    deploykit.bench({str(locked)!r}, iterations=1)\n"
                           "except deploykit.DeployError as e:\n    print('DeployError:', e)\n")
    assert run.stdout.strip() == f"DeployError: {locked} cannot be read (Permission denied); check its permissions", run


def test_bench_from_python_says_what_is_wrong_in_python_terms(tmp_path, tflite_files):
    """deploykit.bench([]) said "needs at least two files"; an empty .tflite "mmap of size 0 requested.The model
    allocation is null/empty ... convert again"; backend= was told about "--backend" only."""
    with pytest.raises(UserError, match=r"pass an artifact file to benchmark .* got list \[\]"):
        deploykit.bench([])
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.tflite is empty \(0 bytes\)"):
        deploykit.bench(empty)
    with pytest.raises(UserError, match=r"--backend apply to TF.js models .*\(in Python: --browser is browser=True, "
                                        r"--backend is backend=\)$"):
        deploykit.bench(tflite_files["tflite-fp32"], backend="cpu")
    with pytest.raises(UserError, match=r"^threads must be an integer in 1\.\.256, got 0$"):
        deploykit.bench(tflite_files["tflite-fp32"], threads=0)
    assert _refusal(["bench", tflite_files["tflite-fp32"], "--threads", "0"]).startswith("--threads must be")  # the CLI's


def test_a_one_value_option_given_twice_is_refused(tmp_path):
    """`--data calib.npz --data eval.npz`: click kept the last and dropped the first without a word."""
    from deploykit.cli import _repeated_option

    twice = "--data is given more than once; give it once"
    assert _repeated_option(["convert", "m.keras", "-d", "a.npz", "--data=b.npz"]) == twice
    assert _repeated_option(["convert", "m.keras", "-da.npz", "--data", "b.npz"]) == twice  # click's attached form
    assert _repeated_option(["convert", "m.keras", "-t", "tflite-fp32", "--target", "onnx-fp32", "--force"]) is None
    assert _repeated_option(["convert", "m.keras", "--loss", "--out", "--out", "o"]) is None  # a value, not an option
    assert _repeated_option(["convert", "--help", "-d", "a", "-d", "b"]) is None  # the help comes first
    assert _repeated_option(["bench", "a.tflite", "--threads", "1", "--threads", "2"]) == (
        "--threads is given more than once; give it once")
    run = subprocess.run([sys.executable, "-m", "deploykit.cli", "convert", "m.keras", "--out", tmp_path / "o",
                          "--data", "a.npz", "--data", "b.npz"], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stderr.strip()) == (2, "deploy: error: --data is given more than once; give it once")
    assert not (tmp_path / "o").exists()


def test_only_a_damaged_file_is_told_to_convert_again(tmp_path):
    """Every load failure ended "a file cut short or changed since it was written ...: convert the model
    again": an intact file with a custom op, and an ONNX file named .tflite, which converting again fixes not."""
    import onnx
    import tensorflow as tf
    from onnx import TensorProto, helper

    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32, name="x")])
    def bessel(x):
        return {"y": tf.math.bessel_i1e(x)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([bessel.get_concrete_function()])
    converter.allow_custom_ops = True
    (tmp_path / "custom.tflite").write_bytes(converter.convert())
    line = assert_user_error(run_deploy(["bench", tmp_path / "custom.tflite"]), "unresolved custom op: BesselI1e")
    assert "convert the model again" not in line
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "onnx.tflite")
    assert_user_error(run_deploy(["bench", tmp_path / "onnx.tflite"]), "onnx.tflite is not a TFLite file (its header "
                      "lacks the TFL3 identifier")
    (tmp_path / "cut.tflite").write_bytes(converter.convert()[:300])  # a copy cut short: said so, as before
    assert_user_error(run_deploy(["bench", tmp_path / "cut.tflite"]), "not a valid Flatbuffer", "convert the model again")


def test_bench_of_a_file_with_tensorflow_ops_names_them_not_a_damaged_file(tmp_path):
    """An intact file converted with SELECT_TF_OPS: LiteRT's message was cut mid-URL and followed by "a file
    cut short or changed since it was written ...: convert the model again"."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1,), tf.string, name="s")])
    def length(s):
        return {"y": tf.strings.length(s)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([length.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    (tmp_path / "flex.tflite").write_bytes(converter.convert())
    assert_user_error(run_deploy(["bench", tmp_path / "flex.tflite"]), "uses TensorFlow ops (SELECT_TF_OPS",
                      "builtin ops only")
    assert "cut short" not in run_deploy(["bench", tmp_path / "flex.tflite"]).stderr


def test_bench_of_a_file_with_several_signatures_says_which_it_timed(tmp_path):
    """A .tflite with signatures 'aaa_small' and 'zzz_heavy': one was timed and nothing said which."""
    import tensorflow as tf

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32, name="x")])
        def aaa_small(self, x):
            return {"y": x + 1.0}

        @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32, name="x")])
        def zzz_heavy(self, x):
            return {"y": tf.matmul(x, tf.ones((4, 4)))}

    two = Two()
    tf.saved_model.save(two, str(tmp_path / "sm"), signatures={"aaa_small": two.aaa_small, "zzz_heavy": two.zzz_heavy})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"), signature_keys=["zzz_heavy", "aaa_small"])
    (tmp_path / "two.tflite").write_bytes(converter.convert())
    from deploykit.runtime_bench.litert import _signature_subgraphs

    main = next(k for k, g in _signature_subgraphs(tmp_path / "two.tflite").items() if g == 0)
    other = "zzz_heavy" if main == "aaa_small" else "aaa_small"
    measured = deploykit.bench(tmp_path / "two.tflite", iterations=3, warmup=1)
    assert measured["note"] == (f"timed signature {main!r}, the file's main graph; its other signatures ({other!r}) "
                                "were not timed"), measured.get("note")


def test_a_full_tmpdir_during_export_is_one_line_and_leaves_nothing(tmp_path, keras3_path, data_npz):
    """A real full disk: a 1 MiB tmpfs as TMPDIR (root only: mount). The SavedModel export said
    TensorFlow's op error with a {{function_node ...}} prefix and a temp file's name."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("this machine refuses a tmpfs mount")
    try:
        env = {**os.environ, "TMPDIR": str(tiny)}
        out = tmp_path / "out"
        done = subprocess.run([str(Path(sys.executable).parent / "deploy"), "convert", str(keras3_path), "-t", "onnx-fp32",
                               "--data", str(data_npz), "--out", str(out), "--no-bench"],
                              capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"deploy: error: No space left on device writing {tiny}; free some space or choose another --out (or TMPDIR)"
        assert not out.exists() and not os.listdir(tiny)
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_a_name_starting_with_a_tilde_is_a_file_name_not_a_user(tmp_path, tflite_files, keras3_path, data_npz):
    """'~fp32.tflite' names no user: pathlib's expanduser raised RuntimeError ("Could not determine home
    directory"), a traceback with exit 1, for bench's artifact, a --data file and a target file alike."""
    shutil.copy(tflite_files["tflite-fp32"], tmp_path / "~fp32.tflite")
    shutil.copy(data_npz, tmp_path / "~d.npz")
    bench = run_deploy(["bench", "~fp32.tflite", "--iterations", "3", "--warmup", "1"], cwd=tmp_path)
    assert bench.returncode == 0 and "p50" in bench.stdout, bench.stderr
    convert = run_deploy(["convert", keras3_path, "-t", "tflite-fp32", "--data", "~d.npz", "--out", "o", "--no-bench"],
                         cwd=tmp_path)
    assert convert.returncode == 0, convert.stderr
