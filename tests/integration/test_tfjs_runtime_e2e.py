"""TF.js runtime end to end: tiny graph models written here in code, run by the real
TF.js 4.22 in Node (cpu and wasm) and in headless Chromium, compared with TensorFlow.

The fixtures write model.json by hand (frozen GraphDef as protobuf-JSON, Const values
moved to weight shards) so these tests do not depend on deploykit's converter; they
also pin down the format facts in src/deploykit/runtime_bench/tfjs/FORMAT.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import RuntimeLoadError

pytestmark = pytest.mark.skipif(shutil.which("node") is None and not os.environ.get("DEPLOYKIT_NODE"),
                                reason="Node.js not on PATH (TF.js runtime needs node >= 18; then make install)")

rng = np.random.default_rng(0)
W = rng.standard_normal((4, 3)).astype(np.float32)
B = rng.standard_normal(3).astype(np.float32)
X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)


def _tf():
    import tensorflow as tf

    return tf


def _dense_fn():
    tf = _tf()

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def f(x):
        return {"y": tf.nn.relu(tf.matmul(x, tf.constant(W)) + tf.constant(B)),
                "s": tf.reduce_sum(x, axis=1, keepdims=True)}

    return f


def _where_fn():
    tf = _tf()

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def f(x):
        return {"n": tf.reduce_sum(tf.cast(tf.where(x > 0.0)[:, :1], tf.float32), axis=0) + 0.0 * tf.reduce_sum(x)}

    return f


def _quantize(arr: np.ndarray, dtype: str) -> tuple[bytes, dict]:
    """TF.js weight quantization as tfjs-core decodes it: value = q * scale + min."""
    if dtype == "float16":
        return arr.astype("<f2").tobytes(), {"dtype": "float16"}
    qmax = {"uint8": 255, "uint16": 65535}[dtype]
    lo, hi = float(arr.min()), float(arr.max())
    scale = (hi - lo) / qmax if hi > lo else 1.0
    q = np.round((arr - lo) / scale).astype({"uint8": "u1", "uint16": "<u2"}[dtype])
    return q.tobytes(), {"dtype": dtype, "min": lo, "scale": scale}


def _dequantize(arr: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None:
        return arr
    raw, q = _quantize(arr, dtype)
    if dtype == "float16":
        return np.frombuffer(raw, "<f2").astype(np.float32).reshape(arr.shape)
    vals = np.frombuffer(raw, {"uint8": "u1", "uint16": "<u2"}[dtype]).astype(np.float32)
    return (vals * np.float32(q["scale"]) + np.float32(q["min"])).reshape(arr.shape)


def write_graph_model(out_dir: Path, fn, *, signature: bool = True, quantize: str | None = None, shards: int = 1,
                      mutate=None) -> Path:
    """Freeze ``fn`` and write it as a TF.js graph model; returns the model.json path."""
    from google.protobuf import json_format
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    tf = _tf()
    out_dir.mkdir(parents=True, exist_ok=True)
    cf = fn.get_concrete_function()
    frozen = convert_variables_to_constants_v2(cf)
    graph_def = frozen.graph.as_graph_def()
    weights, blobs = [], []
    for node in graph_def.node:
        if node.op != "Const":
            continue
        arr = tf.make_ndarray(node.attr["value"].tensor)
        del node.attr["value"]  # TF.js takes Const values from the weights, by node name
        dtype = {np.float32: "float32", np.int32: "int32", np.int64: "int32", np.bool_: "bool"}[arr.dtype.type]
        spec = {"name": node.name, "shape": [int(d) for d in arr.shape], "dtype": dtype}
        if quantize and dtype == "float32" and arr.size > 1:
            raw, spec["quantization"] = _quantize(arr, quantize)
        else:
            raw = arr.astype({"float32": "<f4", "int32": "<i4", "bool": "u1"}[dtype]).tobytes()
        weights.append(spec)
        blobs.append(raw)
    data = b"".join(blobs)
    cuts = [len(data) * i // shards for i in range(shards + 1)]
    paths = []
    for i in range(shards):
        name = f"group1-shard{i + 1}of{shards}.bin"
        (out_dir / name).write_bytes(data[cuts[i]:cuts[i + 1]])  # shard borders may split a weight
        paths.append(name)
    model = {"format": "graph-model", "generatedBy": tf.__version__, "convertedBy": "deploykit tests",
             "modelTopology": json_format.MessageToDict(graph_def),
             "weightsManifest": [{"paths": paths, "weights": weights}]}
    if signature:
        def info(t):
            return {"name": t.name, "dtype": "DT_FLOAT",
                    "tensorShape": {"dim": [{"size": str(-1 if d is None else d)} for d in t.shape]}}

        keys = sorted(cf.structured_outputs)  # frozen outputs follow the flattened (sorted) dict keys
        model["signature"] = {"inputs": {"x": info(frozen.inputs[0])},
                              "outputs": {k: info(t) for k, t in zip(keys, frozen.outputs)}}
    if mutate:
        mutate(model)
    path = out_dir / "model.json"
    path.write_text(json.dumps(model))
    return path


def reference(x: np.ndarray, quantize: str | None = None) -> dict[str, np.ndarray]:
    w, b = _dequantize(W, quantize), _dequantize(B, quantize)
    return {"y": np.maximum(x @ w + b, 0), "s": x.sum(axis=1, keepdims=True)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfjs")
    fn = _dense_fn()
    tf_out = {k: v.numpy() for k, v in fn(X).items()}
    return {
        "fp32": write_graph_model(base / "fp32", fn, shards=2),
        "nosig": write_graph_model(base / "nosig", fn, signature=False),
        "float16": write_graph_model(base / "fp16", fn, quantize="float16"),
        "uint8": write_graph_model(base / "uint8", fn, quantize="uint8"),
        "where": write_graph_model(base / "where", _where_fn()),
        "where_ref": {k: v.numpy() for k, v in _where_fn()(X).items()},
        "tf": tf_out,
        "base": base,
    }


def _runner(path, backend="wasm", threads=1):
    from deploykit.runtime_bench.tfjs import TFJSRunner

    r = TFJSRunner(path, threads=threads, backend=backend)
    r.load()
    return r


@pytest.mark.parametrize("backend", ["cpu", "wasm"])
def test_outputs_match_tensorflow(models, backend):
    r = _runner(models["fp32"], backend)
    try:
        assert r.input_names == ["x"] and r.output_names == ["s", "y"]
        d = r.input_details()["x"]
        assert d["shape"] == [-1, 4] and d["dtype"] == np.float32 and d["quantization"] == (0.0, 0)
        out = r.run({"x": X})
        for k in ("s", "y"):
            assert out[k].dtype == np.float32 and out[k].shape == models["tf"][k].shape
            assert np.max(np.abs(out[k] - models["tf"][k])) <= 1e-5, k
        # invoke/get_outputs on inputs set once; batch size changes are fine
        r.set_inputs({"x": X[:1]})
        r.invoke()
        np.testing.assert_allclose(r.get_outputs()["y"], models["tf"]["y"][:1], atol=1e-5)
        desc = r.describe()
        assert desc["runtime"] == "tfjs" and desc["runtime_version"] == "4.22.0" and desc["backend"] == backend
        assert desc["execution"] == "execute" and desc["node_version"]
        assert desc["threads"] == 1  # Node: wasm has no threads (see FORMAT.md); cpu is single-threaded JS
        if backend == "wasm":
            assert desc["wasm_multithread"] is False and desc["wasm_binary"].endswith(".wasm")
    finally:
        r.close()


def test_timed_samples_come_from_node_and_feed_benchmark(models):
    from deploykit.runtime_bench import benchmark

    r = _runner(models["fp32"], "wasm", threads=2)
    try:
        assert r.threads == 1 and r.describe()["threads_requested"] == 2
        stats = benchmark(r, {"x": X[:1]}, warmup=3, iterations=20)
        assert stats.n == 20 and stats.warmup == 3 and stats.threads == 1
        assert all(0 < s < 1000 for s in stats.samples_ms)
        assert "tfjs_leaked_tensors" not in r.describe()
        mem = r.memory()
        assert mem["rss"] > 0 and mem["tf_num_tensors"] >= 3 and mem["wasm_memory_bytes"] > 0
    finally:
        r.close()


def test_a_fresh_node_process_settles_before_it_is_timed_once_per_load(models):
    """V8 and wasm tier up over the first few hundred runs (2-4x slower before): the first benchmark of
    a loaded runner runs it untimed for at least settle_s and records that; a reload settles again."""
    from deploykit.runtime_bench import SETTLE_CAP, benchmark

    r = _runner(models["fp32"], "wasm")
    try:
        first = benchmark(r, {"x": X[:1]}, warmup=1, iterations=5)
        assert r.settle_s <= first.extra["settled_s"] <= r.settle_s * SETTLE_CAP + 1.0
        assert "settled_s" not in benchmark(r, {"x": X[:1]}, warmup=1, iterations=5).extra
        r.close()
        r.load()  # a new Node process
        assert benchmark(r, {"x": X[:1]}, warmup=1, iterations=5).extra["settled_s"] >= r.settle_s
    finally:
        r.close()


def test_model_without_signature_uses_placeholders_and_output_nodes(models):
    r = _runner(models["nosig"], "cpu")
    try:
        assert r.input_names == ["x"]
        assert sorted(r.output_names) == ["Identity", "Identity_1"]  # node names, not keys
        out = r.run({"whatever": X})  # one input: matched by position
        np.testing.assert_allclose(out["Identity"], models["tf"]["s"], atol=1e-5)
        np.testing.assert_allclose(out["Identity_1"], models["tf"]["y"], atol=1e-5)
    finally:
        r.close()


@pytest.mark.parametrize("quant,atol", [("float16", 1e-5), ("uint8", 1e-5)])
def test_quantized_weights_decode_as_documented(models, quant, atol):
    r = _runner(models[quant], "wasm")
    try:
        out = r.run({"x": X})
        want = reference(X, quant)
        for k in ("s", "y"):
            assert np.max(np.abs(out[k] - want[k])) <= atol, k
        assert np.max(np.abs(out["y"] - models["tf"]["y"])) > 0  # really quantized
    finally:
        r.close()


def test_dynamic_op_switches_to_execute_async(models):
    r = _runner(models["where"], "cpu")
    try:
        assert r.describe()["execution"] == "executeAsync"
        np.testing.assert_allclose(r.run({"x": X})["n"], models["where_ref"]["n"], atol=1e-5)
        assert len(r.timed_samples(1, 3)) == 3
    finally:
        r.close()


def test_errors_are_one_line_and_the_protocol_survives(models):
    r = _runner(models["fp32"], "cpu")
    try:
        with pytest.raises(RuntimeLoadError, match=r"shape") as info:
            r.run({"x": np.zeros((2, 5), np.float32)})  # wrong inner dim: refused by TF.js
        assert "\n" not in str(info.value)
        np.testing.assert_allclose(r.run({"x": X})["y"], models["tf"]["y"], atol=1e-5)  # still serving
    finally:
        r.close()
    assert r._node is None


def _broken(models, name, **kw):
    return write_graph_model(models["base"] / name, _dense_fn(), **kw)


def test_corrupt_or_incomplete_models_fail_with_one_line(models):
    from deploykit.runtime_bench.tfjs import TFJSRunner

    cases = {
        "no_versions": (dict(mutate=lambda m: m["modelTopology"].pop("versions")), "not a GraphDef"),
        "bad_quant": (dict(mutate=lambda m: m["weightsManifest"][0]["weights"][1].update(quantization={"dtype": "int4"})),
                      "unknown quantization dtype"),
        "unknown_op": (dict(mutate=lambda m: [n.update(op="NoSuchOp") for n in m["modelTopology"]["node"] if n["op"] == "Relu"]),
                       "NoSuchOp"),
        "escape": (dict(mutate=lambda m: m["weightsManifest"][0]["paths"].append("../fp32/group1-shard1of2.bin")),
                   "leaves the model's directory"),
    }
    for name, (kw, message) in cases.items():
        path = _broken(models, name, **kw)
        with pytest.raises(RuntimeLoadError, match=message) as info:
            TFJSRunner(path, backend="cpu").load()
        assert "\n" not in str(info.value), name

    truncated = _broken(models, "truncated")
    shard = truncated.parent / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(RuntimeLoadError, match=r"weight shards hold \d+ bytes but .* need \d+"):
        TFJSRunner(truncated, backend="wasm").load()

    missing = _broken(models, "missing_shard")
    (missing.parent / "group1-shard1of1.bin").unlink()
    with pytest.raises(RuntimeLoadError, match="group1-shard1of1.bin is missing"):
        TFJSRunner(missing).load()

    corrupt = models["base"] / "corrupt" / "model.json"
    corrupt.parent.mkdir()
    corrupt.write_text('{"format": "graph-model", "modelTopology": ')
    with pytest.raises(RuntimeLoadError, match="not valid JSON") as info:
        TFJSRunner(corrupt).load()
    assert "\n" not in str(info.value)


def test_deploy_bench_times_a_model_json(models):
    from deploykit.runtime_bench import bench_file

    res = bench_file(models["fp32"], threads=1, warmup=2, iterations=10)
    assert res["runtime"] == "tfjs" and res["backend"] == "wasm" and res["n"] == 10
    assert res["init_ms"] > 0 and len(res["samples_ms"]) == 10 and res["inputs"] == "random"
    # init is the model's load, as every runtime's: backend start-up and the first run are their own figures
    assert res["init_ms"] == pytest.approx(res["tfjs_load_ms"], abs=1e-3)
    assert res["tfjs_backend_init_ms"] > 0 and res["tfjs_warm_ms"] > 0


def test_node_is_stopped_when_python_exits_without_close(models):
    code = ("from deploykit.runtime_bench.tfjs import TFJSRunner\n"
            f"r = TFJSRunner({str(models['fp32'])!r}, backend='cpu'); r.load(); print(r._node.proc.pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), f"node {pid} outlived its Python parent"


def test_node_exits_when_nobody_reads_its_answers():
    """A parent killed with SIGKILL leaves a broken stdout pipe: Node must exit, not spin on EPIPE."""
    from deploykit.runtime_bench.tfjs.runner import SCRIPT, node_executable

    proc = subprocess.Popen([node_executable(), str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    proc.stdout.close()
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


@pytest.mark.slow
def test_browser_bench_matches_tensorflow_and_reports_backends(models):
    from deploykit.runtime_bench.tfjs.browser import CHROMIUM, TFJSBrowserRunner, bench_in_browser

    if not os.access(os.environ.get("DEPLOYKIT_CHROMIUM", CHROMIUM), os.X_OK):
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (make install does it when root)")
    out = TFJSBrowserRunner(models["fp32"]).run({"x": X})
    for k in ("s", "y"):
        assert np.max(np.abs(out[k] - models["tf"][k])) <= 1e-5, k
    res = bench_in_browser(models["fp32"], warmup=2, iterations=10, inputs={"x": X[:1]}, also=("webgl",))
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "n", "samples_ms", "init_ms",
                "warmup", "threads"):
        assert key in res, key
    assert res["n"] == 10 and res["backend"] == "wasm" and res["runtime_version"] == "4.22.0"
    assert res["init_ms"] == pytest.approx(res["tfjs_load_ms"], abs=1e-3)  # the first run is tfjs_warm_ms
    assert "HeadlessChrome" in res["user_agent"] and res["cross_origin_isolated"] is True
    assert res["wasm_simd"] is True and res["threads"] >= 1
    # the page settles each backend before timing it, by the Node runner's rule
    from deploykit.runtime_bench import SETTLE_CAP
    from deploykit.runtime_bench.tfjs.runner import TFJSRunner

    assert TFJSRunner.settle_s <= res["settled_s"] <= TFJSRunner.settle_s * SETTLE_CAP + 1.0
    webgl = res["also"]["webgl"]
    assert "error" in webgl or (webgl["n"] == 10 and webgl["backend"] == "webgl" and webgl["settled_s"] >= TFJSRunner.settle_s)
