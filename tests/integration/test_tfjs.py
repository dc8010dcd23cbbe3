"""TF.js graph models written by deploykit, run in the real TF.js 4.22 runtime (Node).

A small conv net with the patterns that break the official converter on Keras 3
models (BatchNorm after bias-free convs, depthwise convs, residual adds, a
constant add that is *not* a per-channel bias) converts for every TF.js
precision, keeps parity on the wasm and cpu backends, ships only rank-1 biases
in its fused ops, and a model with an op TF.js lacks fails alone, with the op
named, while the run's other targets finish.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import deploykit
from deploykit.targets import get_target

TFJS = ["tfjs-fp32", "tfjs-fp16", "tfjs-uint8", "tfjs-uint16"]


def _bn_net(keras, with_spatial_add: bool = False):
    """Conv/BN/depthwise/residual net with non-trivial BatchNorm statistics (seeded)."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 16.0)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(8, 1, use_bias=False)(y)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.Add()([x, y])
    if with_spatial_add:  # a constant that varies over H and W: must not become a "bias"
        field = np.linspace(-1, 1, 64, dtype="float32").reshape(1, 8, 8, 1)
        x = keras.layers.Lambda(lambda t: t + field)(x)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(x)  # as MobileNet/ResNet before a strided conv
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inp, out, name="bn_net")
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2, c)])
        elif isinstance(layer, keras.layers.Dense):  # a zero bias would be folded away as "+ 0"
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.3, bias.shape).astype("float32")])
    return model


@pytest.fixture(scope="module")
def tfjs_run(tmp_path_factory, data_npz):
    import keras

    out = tmp_path_factory.mktemp("tfjs") / "run"
    model = _bn_net(keras)
    result = deploykit.convert(model, TFJS, data=data_npz, out=out, iterations=3, warmup=1)
    return result, model


def _weights_by_name(model_json: dict) -> dict:
    return {w["name"]: w for g in model_json["weightsManifest"] for w in g["weights"]}


@pytest.mark.parametrize("name", TFJS)
def test_every_tfjs_precision_converts_and_verifies_in_node(tfjs_run, name):
    result, _ = tfjs_run
    a = result.artifact(name)
    assert a["status"] == "ok", a["error"]
    v = a["verification"]
    assert v["passed"] and v["samples"] > 0
    assert a["benchmark"]["runtime"] == "tfjs" and a["benchmark"]["backend"] == "wasm"
    assert a["benchmark"]["runtime_version"] == "4.22.0"
    if name == "tfjs-fp32":
        assert v["max_abs_error"] <= 1e-4


def test_model_json_is_a_graph_model_with_signature_and_shards(tfjs_run):
    result, _ = tfjs_run
    a = result.artifact("tfjs-fp32")
    path = result.out / a["path"]
    mj = json.loads(path.read_text())
    assert mj["format"] == "graph-model" and "versions" in mj["modelTopology"]
    assert list(mj["signature"]["inputs"]) == ["pixels"] and list(mj["signature"]["outputs"]) == ["output_0"]
    assert mj["signature"]["inputs"]["pixels"]["tensorShape"]["dim"][0]["size"] == "-1"  # dynamic batch kept
    shards = mj["weightsManifest"][0]["paths"]
    assert shards and all("/" not in s for s in shards)
    assert sorted(a["extra_files"]) == sorted(f"tfjs-fp32/{s}" for s in shards)
    total = sum((path.parent / s).stat().st_size for s in shards)
    assert total == a["settings"]["converter"]["weight_bytes"]
    # Const values live in the shards, not in the JSON
    for node in mj["modelTopology"]["node"]:
        if node["op"] == "Const":
            assert set(node["attr"]["value"]["tensor"]) <= {"dtype", "tensorShape"}


def test_fused_ops_carry_rank1_biases_and_batchnorm_is_folded(tfjs_run):
    result, model = tfjs_run
    mj = json.loads((result.out / result.artifact("tfjs-fp32")["path"]).read_text())
    nodes = mj["modelTopology"]["node"]
    weights = _weights_by_name(mj)
    fused = [n for n in nodes if n["op"] in ("_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul")]
    assert {n["op"] for n in fused} == {"_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul"}
    for n in fused:
        bias = weights[n["input"][2]]
        assert len(bias["shape"]) == 1, (n["name"], bias["shape"])
        assert n["attr"]["num_args"]["i"] == "1"
    ops = [n["op"] for n in nodes]
    assert "Conv2D" not in ops and "DepthwiseConv2dNative" not in ops and "Rsqrt" not in ops
    # the zero padding moved into the strided conv's explicit padding (no activation copy)
    assert "Pad" not in ops
    explicit = [n for n in fused if n["attr"].get("padding", {}).get("s") == "RVhQTElDSVQ="]  # base64 "EXPLICIT"
    assert len(explicit) == 1 and explicit[0]["attr"]["explicit_paddings"]["list"]["i"] == ["0", "0", "0", "1", "0", "1", "0", "0"]
    # weight bytes: about 4 x parameters (BatchNorm's moving statistics fold away)
    wb = result.artifact("tfjs-fp32")["settings"]["converter"]["weight_bytes"]
    assert 0.8 * 4 * model.count_params() < wb < 1.1 * 4 * model.count_params()


def test_quantized_weights_shrink_in_order(tfjs_run):
    result, _ = tfjs_run
    wb = {n: result.artifact(n)["settings"]["converter"]["weight_bytes"] for n in TFJS}
    assert wb["tfjs-uint8"] < wb["tfjs-fp16"] < wb["tfjs-fp32"], wb
    assert wb["tfjs-uint16"] == wb["tfjs-fp16"], wb  # 2-byte kernels; vectors (biases, BN) stay float32 in both
    assert wb["tfjs-uint8"] <= 0.45 * wb["tfjs-fp32"], wb  # a 1 KB net: the float32 vectors weigh in
    mj = json.loads((result.out / result.artifact("tfjs-uint8")["path"]).read_text())
    quantized = [w for w in _weights_by_name(mj).values() if "quantization" in w]
    assert quantized and all(w["dtype"] == "float32" and w["quantization"]["dtype"] == "uint8" for w in quantized)


def test_cpu_backend_target_from_toml_fields(tmp_path, data_npz):
    import keras

    cpu = dataclasses.replace(get_target("tfjs-fp32"), name="tfjs-fp32-cpu", options={"backend": "cpu"})
    result = deploykit.convert(_bn_net(keras), [cpu], data=data_npz, out=tmp_path / "cpu", iterations=2, warmup=0)
    a = result.artifact("tfjs-fp32-cpu")
    assert a["status"] == "ok", a["error"]
    assert a["benchmark"]["backend"] == "cpu"


def test_a_tfjs_file_that_fails_verification_says_why(tmp_path, data_npz):
    """The failure hints read the converter's ``ops`` as op names; TF.js recorded a node count there, and
    every TF.js file that failed verification said "TypeError: 'int' object is not iterable" instead."""
    import keras

    uint8 = get_target("tfjs-uint8")
    strict = dataclasses.replace(uint8, name="tfjs-strict", tolerance=dataclasses.replace(  # every element within 1e-12
        uint8.tolerance, probabilities="elementwise", atol=1e-12, range_atol=0.0, max_violation_fraction=0.0,
        column_ranges=False))
    result = deploykit.convert(_bn_net(keras), [strict], data=data_npz, out=tmp_path / "o", bench=False)
    a = result.artifact("tfjs-strict")
    assert a["status"] == "failed" and a["error"].startswith("verification failed: output"), a["error"]
    assert "Conv2D" in "".join(a["settings"]["converter"]["ops"]) and a["settings"]["converter"]["nodes"] > 0


def test_non_channel_constant_add_is_not_fused_as_a_bias(tmp_path, data_npz):
    import keras

    result = deploykit.convert(_bn_net(keras, with_spatial_add=True), ["tfjs-fp32"], data=data_npz,
                               out=tmp_path / "spatial", iterations=2, warmup=0)
    a = result.artifact("tfjs-fp32")
    assert a["status"] == "ok", a["error"]
    mj = json.loads((result.out / a["path"]).read_text())
    weights = _weights_by_name(mj)
    # Grappler folds the BatchNorm offset and the field into one (1, 8, 8, 8) constant after a conv:
    # the very add the official converter fuses as a "bias" and TF.js then refuses.
    adds = [n for n in mj["modelTopology"]["node"] if n["op"] in ("AddV2", "Add")
            and any(len(weights.get(i, {}).get("shape", [])) == 4 for i in n["input"])]
    assert adds, "a constant that varies over H and W stays an ordinary add"
    for n in mj["modelTopology"]["node"]:
        if n["op"].startswith(("_Fused", "Fused")):
            assert len(weights[n["input"][2]]["shape"]) == 1


def test_op_tfjs_lacks_fails_only_that_target_and_names_the_op(tmp_path, data_npz):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Reshape((8, 8))(inp)
    x = keras.layers.Lambda(lambda t: tf.linalg.set_diag(t, t[:, 0, :]))(x)  # MatrixSetDiagV3
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    result = deploykit.convert(model, ["tfjs-fp32", "tflite-fp32"], data=data_npz, out=tmp_path / "op",
                               iterations=2, warmup=0)
    a = result.artifact("tfjs-fp32")
    assert a["status"] == "failed" and "MatrixSetDiag" in a["error"] and "TF.js" in a["error"]
    assert a["path"] == "" and not (tmp_path / "op" / "tfjs-fp32").exists()  # nothing half-written
    assert result.artifact("tflite-fp32")["status"] == "ok"
    assert not result.ok


def test_deploy_bench_times_a_model_json(tfjs_run):
    from deploykit import bench

    result, _ = tfjs_run
    r = bench(result.out / result.artifact("tfjs-uint8")["path"], threads=1, warmup=1, iterations=3)
    assert r["runtime"] == "tfjs" and r["n"] == 3 and r["p50_ms"] > 0
    assert r["size_bytes"] > r["gzip_bytes"] > 0
    # The model ran in Node: its memory is that process's peak, not the Python driver's.
    assert r["peak_rss_of"] == "the Node.js process running TF.js"
    assert r["peak_rss_bytes"] == r["node_peak_rss_bytes"] >= r["node_rss_bytes"] > 0


def test_bench_side_by_side_tells_tfjs_models_apart_by_their_shards(tfjs_run, tmp_path):
    """Two model.json of one architecture are the same bytes; their weights are not. Only a file whose
    shards match too is 'the same file'."""
    import shutil

    from deploykit import bench

    result, _ = tfjs_run
    src = (result.out / result.artifact("tfjs-fp32")["path"]).parent
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(src, same)
    shutil.copytree(src, other)
    shard = next(p for p in other.iterdir() if p.suffix == ".bin")
    raw = bytearray(shard.read_bytes())
    raw[:4] = np.float32(0.125).tobytes()  # another first weight: another model
    shard.write_bytes(bytes(raw))
    r = bench([src / "model.json", same / "model.json", other / "model.json"], threads=1, warmup=1, iterations=5)
    first, copy, changed = r["files"]
    assert copy["same_file_as"] == str(src / "model.json") and "same_file_as" not in changed
    assert first["sha256"] == changed["sha256"]  # model.json alike ...
    assert len(changed["round_p50_ms"]) == 5 and changed["round_p50_ms"] != first["round_p50_ms"]  # ... timed apart
    assert first["runtime"] == changed["runtime"] == "tfjs"


def _deploy(*args: str):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("deploy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deploykit.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=600)


def test_cli_bench_on_node_counts_the_shards(tfjs_run):
    result, _ = tfjs_run
    a = result.artifact("tfjs-fp32")
    r = _deploy("bench", str(result.out / a["path"]), "--iterations", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["runtime"] == "tfjs" and out["backend"] == "wasm" and out["threads"] == 1
    assert out["size_bytes"] == a["size_bytes"]  # model.json plus its shards, as in the manifest


def test_cli_browser_flag_on_a_non_tfjs_file_is_a_one_line_error(tflite_files):
    path = next(iter(tflite_files.values()))
    r = _deploy("bench", str(path), "--browser")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("deploy: error:") and len(r.stderr.strip().splitlines()) == 1
    assert "TF.js" in r.stderr


@pytest.mark.slow
def test_cli_bench_in_headless_chromium(tfjs_run):
    from deploykit.runtime_bench.tfjs.browser import CHROMIUM
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make install installs Debian's chromium when run as root)")
    result, _ = tfjs_run
    a = result.artifact("tfjs-uint8")
    r = _deploy("bench", str(result.out / a["path"]), "--browser", "--iterations", "5", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["environment"] == "chromium-headless" and out["backend"] == "wasm"
    assert out["n"] == 5 and out["p50_ms"] > 0 and out["browser_version"]


def test_browser_bench_checks_the_model_json_as_node_does(tmp_path):
    """--browser skipped the Node runner's checks without --data: a layers model was "Cannot read properties
    of undefined (reading 'producer')" from the page, where Node says only graph models are supported."""
    (tmp_path / "model.json").write_text(json.dumps({"format": "layers-model", "modelTopology": {"class_name": "Sequential"},
                                                     "weightsManifest": []}))
    r = _deploy("bench", str(tmp_path / "model.json"), "--browser", "--iterations", "2")
    assert r.returncode == 2 and r.stderr.strip() == ('deploy: error: TF.js load: model.json has format "layers-model"; '
                                                      "only graph-model is supported"), r.stderr


def test_browser_bench_refuses_random_inputs_of_no_size_as_node_does(tmp_path):
    """Without --data the page made each dimension of any size 1: --browser timed a 1x1 image (70x faster than
    the 224x224 it takes) and exited 0, or failed "memory access out of bounds" on a 3x3 convolution."""
    import keras

    model = keras.Sequential([keras.Input((None, None, 3), name="img"), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    deploykit.convert(model, ["tfjs-fp32"], data=x, out=tmp_path / "out", bench=False)
    for browser in ([], ["--browser"]):
        r = _deploy("bench", str(tmp_path / "out" / "tfjs-fp32" / "model.json"), *browser, "--iterations", "2")
        assert r.returncode == 2 and r.stderr.strip() == (
            "deploy: error: input 'img' has dimensions of any size (None, None, None, 3); random inputs need a size: "
            "pass --data with a real sample"), (browser, r.stderr)


def test_lookup_tables_are_refused_naming_the_layer(tmp_path):
    """An IntegerLookup's table is filled by an initializer the frozen graph leaves out: TF.js said "Cannot
    compute the outputs ... Consider providing the following inputs: [unknown]". (Hashed out-of-vocabulary
    buckets keep the table; other lookups are exported without one.)"""
    import keras

    inp = keras.Input((1,), dtype="int64", name="code")
    hot = keras.layers.IntegerLookup(vocabulary=[3, 7, 11, 20], num_oov_indices=2, output_mode="one_hot", name="codes")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(hot))
    x = np.array([[3], [7], [11], [20], [5], [7], [3], [11]], np.int64)
    result = deploykit.convert(model, ["tfjs-fp32"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("tfjs-fp32")["error"]
    assert error.startswith("tfjs-fp32: the model has lookup tables (codes; IntegerLookup/StringLookup layers)"), error


def test_grouped_convolutions_run_in_tfjs(tmp_path, data_npz):
    """Keras 3 builds ConvNeXt's depthwise layers as Conv2D(groups=C); TF.js's conv2d has no groups."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=8, activation="relu")(x)  # depthwise in disguise
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2)(x)  # 2 groups of 4 channels
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    result = deploykit.convert(keras.Model(inp, out), ["tfjs-fp32"], data=data_npz, out=tmp_path / "grouped",
                               iterations=2, warmup=0)
    a = result.artifact("tfjs-fp32")
    assert a["status"] == "ok", a["error"]
    assert a["settings"]["converter"]["fused_ops"]["grouped Conv2D rewritten"] == 2
    ops = [n["op"] for n in json.loads((result.out / a["path"]).read_text())["modelTopology"]["node"]]
    assert "FusedDepthwiseConv2dNative" in ops and "Split" in ops and "ConcatV2" in ops


def test_recurrent_layers_run_on_both_backends(tmp_path):
    """Keras 3 LSTM is a functional While loop whose body writes each step into a TensorList. TF.js 4.22
    freed the written tensors when the body returned, so the list's stack read freed memory ("Cannot read
    properties of undefined (reading 'backend')") on wasm always and on cpu whenever every step was read
    (return_sequences=True, stacked layers): the writer points the writes at the body's kept outputs.
    LSTM(unroll=True) is plain ops."""
    import keras

    x = np.random.default_rng(0).normal(size=(16, 5, 3)).astype("float32")
    cpu = dataclasses.replace(get_target("tfjs-fp32"), name="tfjs-fp32-cpu", options={"backend": "cpu"})
    for unroll in (False, True):
        keras.utils.set_random_seed(0)
        inp = keras.Input((5, 3), name="seq")
        model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(keras.layers.LSTM(8, unroll=unroll)(inp)))
        result = deploykit.convert(model, ["tfjs-fp32", cpu, "onnx-fp32"], data=x, out=tmp_path / f"lstm{unroll}",
                                   iterations=2, warmup=0)
        for name in ("onnx-fp32", "tfjs-fp32-cpu", "tfjs-fp32"):
            assert result.artifact(name)["status"] == "ok", result.artifact(name)["error"]
        if not unroll:
            assert result.artifact("tfjs-fp32")["benchmark"]["execution"] == "executeAsync"
            # said where a web developer reads it, not only in the benchmark record (absent with --no-bench)
            assert "While" in result.artifact("tfjs-fp32-cpu")["settings"]["converter"]["execute_async_ops"]
            assert "tfjs-fp32-cpu: the graph has ops TF.js runs only asynchronously" in result.report_path.read_text()

    # every step read, by a second loop, over sequences of any length: failed on both backends
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 3), name="seq")
    h = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True))(inp)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(keras.layers.LSTM(8)(h)))
    result = deploykit.convert(model, ["tfjs-fp32", cpu], data=x, out=tmp_path / "stacked", bench=False)
    for name in ("tfjs-fp32", "tfjs-fp32-cpu"):
        a = result.artifact(name)
        assert a["status"] == "ok", a["error"]
        assert a["verification"]["max_abs_error"] < 1e-5
        assert a["settings"]["converter"]["fused_ops"]["TensorListSetItem given the loop output"] == 3

    # text padded with 0: Bidirectional reverses its mask, and wasm reversed booleans wrongly (0.18 off, or a fault)
    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(0).integers(1, 20, (32, 9)).astype("int32")
    ids[::2, 6:] = 0
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h = keras.layers.Bidirectional(keras.layers.LSTM(8))(keras.layers.Embedding(20, 8, mask_zero=True)(tokens))
    result = deploykit.convert(keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(h)), ["tfjs-fp32"],
                               data=ids, out=tmp_path / "masked", bench=False)
    a = result.artifact("tfjs-fp32")
    assert a["status"] == "ok", a["error"]
    assert a["settings"]["converter"]["fused_ops"]["boolean ReverseV2 done as int32"] >= 1

    class Doubled(keras.layers.Layer):  # a cell whose output is not its state: no kept tensor to point at
        state_size = output_size = 5

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 5))

        def call(self, x, states):
            h = keras.ops.tanh(x @ self.w + states[0])
            return h * 2.0, [h]

    seq = keras.Input((None, 3), name="seq")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.RNN(Doubled(), return_sequences=True)(seq))
    result = deploykit.convert(keras.Model(seq, keras.layers.Dense(2)(pooled)), ["tfjs-fp32"], data=x,
                               out=tmp_path / "cell", bench=False)
    assert result.artifact("tfjs-fp32")["status"] == "failed"
    assert "outputs per step a value that is not its state (a custom RNN cell" in result.artifact("tfjs-fp32")["error"]


def test_a_shared_layer_s_weights_are_stored_once(tmp_path):
    """Freezing gives each call of a layer its own copy of the weights: a Dense applied twice was
    written into the shards twice (39 KiB against ONNX's 21 KiB for 4,810 parameters)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((64,), name="x")
    shared = keras.layers.Dense(64, activation="relu", name="shared")
    out = keras.layers.Dense(10, activation="softmax")(shared(shared(inp)))
    x = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    result = deploykit.convert(keras.Model(inp, out), ["tfjs-fp32", "onnx-fp32"], data=x, out=tmp_path / "s", bench=False)
    a = result.artifact("tfjs-fp32")
    assert a["status"] == "ok", a["error"]
    assert a["settings"]["converter"]["fused_ops"]["equal constants stored once"] == 2  # kernel and bias
    weights = [w for g in json.loads(result.path("tfjs-fp32").read_text())["weightsManifest"] for w in g["weights"]]
    assert sum(w["shape"] == [64, 64] for w in weights) == 1
    assert a["size_bytes"] < 1.2 * result.artifact("onnx-fp32")["size_bytes"]


@pytest.mark.parametrize("equation,shapes", [
    ("btnh,bsnh->bnts", [(6, 2, 4), (6, 2, 4)]),   # attention scores (Keras MultiHeadAttention)
    ("bnts,bsnh->btnh", [(2, 6, 6), (6, 2, 4)]),   # attention-weighted values
    ("bij,bjk->bik", [(3, 4), (4, 5)]),            # plain batched matmul
    ("bi,bi->b", [(6,), (6,)]),                    # everything contracted
    ("bij,bkj->bkij", [(3, 4), (2, 4)]),          # free labels on both sides, output reordered
])
def test_einsum_runs_on_the_wasm_backend(tmp_path, equation, shapes):
    """TF.js's wasm backend has no Einsum kernel: the writer lowers it to BatchMatMul."""
    import keras

    keras.utils.set_random_seed(0)
    a = keras.Input(shapes[0], name="a")
    b = keras.Input(shapes[1], name="b")
    out = keras.layers.Lambda(lambda t: keras.ops.einsum(equation, t[0], t[1]))([a, b])
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(8, *shapes[0])).astype("float32"), "b": rng.normal(size=(8, *shapes[1])).astype("float32")}
    result = deploykit.convert(keras.Model([a, b], out), ["tfjs-fp32"], data=data, out=tmp_path / "e", iterations=1, warmup=0)
    art = result.artifact("tfjs-fp32")
    assert art["status"] == "ok", art["error"]
    ops = {n["op"] for n in json.loads((result.out / art["path"]).read_text())["modelTopology"]["node"]}
    assert "Einsum" not in ops  # lowered by the writer (or never emitted by Keras for this equation)
    assert art["benchmark"]["backend"] == "wasm"


def test_multi_head_attention_runs_on_the_wasm_backend(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8), name="tokens")
    h = keras.layers.LayerNormalization()(keras.layers.MultiHeadAttention(2, 4)(inp, inp) + inp)
    h = keras.layers.Dense(16, activation="gelu")(h)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    data = np.random.default_rng(0).normal(size=(16, 6, 8)).astype("float32")
    result = deploykit.convert(keras.Model(inp, out), ["tfjs-fp32"], data=data, out=tmp_path / "mha", iterations=1, warmup=0)
    art = result.artifact("tfjs-fp32")
    assert art["status"] == "ok", art["error"]
    assert art["settings"]["converter"]["fused_ops"]["Einsum lowered to BatchMatMul"] == 2


def test_causal_masks_are_rewritten_because_tfjs_computes_band_part_wrongly(tmp_path):
    """TF.js 4.22 reads MatrixBandPart's num_upper from the wrong input: tril came out unmasked (cpu), Aborted() (wasm)."""
    import keras
    from keras import ops

    keras.utils.set_random_seed(0)

    class Tril(keras.layers.Layer):
        def call(self, t):  # the float form and the boolean-mask form (MultiHeadAttention's causal mask)
            return ops.tril(t) + ops.where(ops.tril(ops.ones_like(t, dtype="bool"), -1), t, ops.zeros_like(t))

    inp = keras.Input((5, 5), name="m")
    tril = keras.Model(inp, keras.layers.Flatten()(Tril()(inp)))
    seq = keras.Input((6, 8), name="tokens")
    h = keras.layers.MultiHeadAttention(2, 4)(seq, seq, use_causal_mask=True)
    causal = keras.Model(seq, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(0)
    for name, model, x in (("tril", tril, rng.normal(size=(16, 5, 5))), ("causal", causal, rng.normal(size=(16, 6, 8)))):
        result = deploykit.convert(model, ["tfjs-fp32"], data=x.astype("float32"), out=tmp_path / name, bench=False)
        art = result.artifact("tfjs-fp32")
        assert art["status"] == "ok", (name, art["error"])
        assert art["verification"]["max_abs_error"] < 1e-5
        rewrites = art["settings"]["converter"]["fused_ops"]
        assert rewrites["MatrixBandPart rewritten with a constant band mask"] >= 1
        if name == "tril":  # tril(k=-1) of a bool mask is a boolean SelectV2, which faults on wasm
            assert rewrites["boolean Select rewritten as logical ops"] >= 1
    dynamic = keras.Input((None, 5), name="m")
    result = deploykit.convert(keras.Model(dynamic, Tril()(dynamic)), ["tfjs-fp32"], data=rng.normal(size=(4, 5, 5)).astype("float32"),
                               out=tmp_path / "dynamic", bench=False)
    assert "MatrixBandPart" in result.artifact("tfjs-fp32")["error"] and "fixed sequence length" in result.artifact("tfjs-fp32")["error"]


def test_bench_with_data_keeps_integer_inputs_integer_in_node_and_chromium(tmp_path):
    """The data was read as float32 whatever the input: Chromium's TF.js refused it for an int32 input."""
    import keras

    from deploykit import bench
    from deploykit.runtime_bench.tfjs.browser import CHROMIUM
    from pathlib import Path

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,), dtype="int32", name="ids"), keras.layers.Embedding(20, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, activation="softmax")])
    ids = np.random.default_rng(0).integers(0, 20, (8, 6)).astype(np.int32)
    result = deploykit.convert(model, ["tfjs-fp32", "onnx-fp32"], data=ids, out=tmp_path / "out", bench=False)
    np.savez(tmp_path / "ids.npz", ids=ids)
    for a in result.artifacts:
        assert bench(result.out / a["path"], data=tmp_path / "ids.npz", warmup=0, iterations=2)["n"] == 2
    if Path(CHROMIUM).exists():
        r = bench(result.out / result.artifact("tfjs-fp32")["path"], data=tmp_path / "ids.npz", browser=True,
                  warmup=0, iterations=2)
        assert r["n"] == 2 and r["peak_rss_bytes"] is None and r["peak_rss_of"].startswith("not measured")


def test_tfjs_auto_ships_the_smallest_download_verified_in_node(tmp_path, data_npz):
    import keras

    result = deploykit.convert(_bn_net(keras), ["tfjs-auto"], data=data_npz, out=tmp_path / "auto", bench=False)
    auto = result.artifact("tfjs-auto")
    assert auto["status"] == "ok", auto["error"]
    passed = [r for r in auto["selection"]["candidates"] if r["status"] == "ok"]
    assert len(passed) >= 2 and auto["selection"]["winner"] == min(passed, key=lambda r: r["gzip_bytes"])["target"]
    winner = result.artifact(auto["selection"]["winner"])
    assert auto["sha256"] == winner["sha256"] and auto["verification"]["passed"]
    assert (result.out / auto["path"]).parent.name == "tfjs-auto"
    shards = [w["paths"] for w in json.loads((result.out / auto["path"]).read_text())["weightsManifest"]]
    assert all((result.out / "tfjs-auto" / p).is_file() for group in shards for p in group)  # shards ship beside it
    # the shipped shards carry their hashes like every candidate's do
    from deploykit.artifacts import sha256_file

    hashes = auto["settings"]["extra_file_sha256"]
    assert sorted(hashes) == sorted(auto["extra_files"]) and hashes
    assert all(sha256_file(result.out / f) == h for f, h in hashes.items())


def test_dict_outputs_keep_their_names_in_every_format(tmp_path):
    """The TF.js signature said output_0/output_1 where TFLite and ONNX say probs/cls: a web user could not find 'probs'."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="features")
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.Dense(8, activation="relu")(inp))
    model = keras.Model(inp, {"probs": probs, "score": keras.layers.Dense(1, name="score")(probs)})
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    result = deploykit.convert(model, ["tfjs-fp32", "tflite-fp32", "onnx-fp32"], data=x, out=tmp_path / "named", bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    signature = json.loads((result.out / "tfjs-fp32" / "model.json").read_text())["signature"]["outputs"]
    assert set(signature) == {"probs", "score"}
    for a in result.artifacts:
        assert sorted(a["settings"]["converter"]["output_names"]) == ["probs", "score"], a["target"]
        assert set(a["verification"]["outputs"]) == {"probs", "score"}


def _node_children() -> set[int]:
    import glob
    import os

    pids = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        pids |= {int(p) for p in open(path).read().split()}
    alive = set()
    for pid in pids:
        try:
            if b"runner.mjs" in open(f"/proc/{pid}/cmdline", "rb").read():
                alive.add(pid)
        except OSError:
            pass
    return alive


def test_an_interrupted_tfjs_target_stops_its_node_process(tmp_path):
    """Ctrl-C while a TF.js artifact was being timed left its `node runner.mjs` child (about 70 MB) and
    two reader threads alive until the interpreter exited: one more per Ctrl-C in a notebook."""
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="softmax")])
    x = np.random.default_rng(0).random((16, 6)).astype("float32")
    before = _node_children()

    def interrupt(msg: str) -> None:
        if msg.startswith("tfjs-fp32: benchmarking"):  # the runner is loaded and verified by now
            assert _node_children() - before
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deploykit.convert(model, ["tfjs-fp32"], data=x, out=tmp_path / "o", iterations=3, warmup=1, progress=interrupt)
    assert _node_children() == before


def test_a_dropped_node_runner_is_stopped_when_collected():
    """The reader threads held the runner object, so its finalizer never ran before interpreter exit."""
    import gc
    import time

    from deploykit.runtime_bench.tfjs.runner import NodeProcess

    node = NodeProcess()
    proc = node.proc
    del node
    gc.collect()
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is not None


def test_node_stopped_by_sigint_is_an_interruption_not_a_runtime_error():
    """kill -INT to a background job's process group reached Node only (a script's background Python
    ignores SIGINT): the run said "TF.js runner (Node) exited with code -2" and exit 2, not interrupted."""
    import signal

    from deploykit.runtime_bench.tfjs.runner import NodeProcess

    node = NodeProcess()
    try:
        node.proc.send_signal(signal.SIGINT)
        node.proc.wait(timeout=30)
        with pytest.raises(KeyboardInterrupt):
            node.request("ping")
    finally:
        node.close()


def test_asserts_inside_a_cond_branch_are_stripped_not_stored_as_text_weights(tmp_path):
    """tf.debugging.Assert's message is a string constant: inside a cond branch (tf_keras CenterCrop's size
    check) it became a weight, refused as "dtype object, which TF.js weights cannot hold"."""
    import tensorflow as tf

    class Guarded(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def f(self, x):
            def checked():
                tf.debugging.Assert(tf.reduce_all(x > -100.0), ["x too small", x])
                return x * 2.0

            return {"y": tf.cond(tf.reduce_max(tf.abs(x)) < 1e9, checked, lambda: x - 1.0)}

    module = Guarded()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.f})
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    result = deploykit.convert(tmp_path / "sm", ["tfjs-fp32"], data=x, out=tmp_path / "o", bench=False)
    assert result.ok, result.artifact("tfjs-fp32")["error"]


def test_node_that_died_of_an_uncaught_error_is_said_with_that_error():
    """Node died of an error in a wasm callback: the run said "TF.js runner (Node) is not running (exit code
    7)", or the last frames of a stack trace, not the error its handler had reported."""
    from deploykit.errors import RuntimeLoadError
    from deploykit.runtime_bench.tfjs.runner import NodeProcess

    node = NodeProcess()
    try:
        node._stderr.extend(["node: uncaught: Cannot read properties of undefined (reading 'backend')",
                             "    at Engine.runKernel (tf-core.node.js:4636:21)", "Node.js v20.20.2"])
        node.proc.kill()
        node.proc.wait(timeout=30)
        with pytest.raises(RuntimeLoadError, match=r"\(exit code -9\): uncaught: Cannot read properties of undefined"):
            node.request("ping")
    finally:
        node.close()


def test_a_uint8_input_says_tfjs_takes_it_as_int32(tmp_path):
    """TF.js has no uint8 tensors: the report listed the input as uint8, and an app feeding float32
    pixels met model.execute's refusal. The note says what to feed."""
    import keras

    inp = keras.Input((4, 4, 1), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inp)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x)))
    data = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 1)).astype("uint8")
    result = deploykit.convert(model, ["tfjs-fp32"], data=data, out=tmp_path / "o", bench=False)
    art = result.artifact("tfjs-fp32")
    assert art["status"] == "ok"
    assert any("feed `pixels` as int32" in n for n in art["verification"]["notes"]), art["verification"]["notes"]
    assert "feed `pixels` as int32" in (result.out / "report.md").read_text()
    assert any("tf.browser.fromPixels gives int32" in n for n in art["verification"]["notes"])
    # token ids are no pixels: the note said fromPixels for an int64 Embedding input too
    ids = keras.Input((6,), dtype="int64", name="ids")
    text = keras.Model(ids, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(ids))))
    result = deploykit.convert(text, ["tfjs-fp32"], data=np.random.default_rng(0).integers(0, 50, (16, 6)),
                               out=tmp_path / "t", bench=False)
    notes = result.artifact("tfjs-fp32")["verification"]["notes"]
    assert any("feed `ids` as int32 (tf.tensor(ids, shape, 'int32')" in n for n in notes) and \
        not any("fromPixels" in n for n in notes), notes
    # float64 features: TF.js computes them in float32 and refuses int32 there ("must be float32")
    feat = keras.Input((3,), dtype="float64", name="feat")
    wide = keras.Model(feat, keras.layers.Dense(2)(feat))
    result = deploykit.convert(wide, ["tfjs-fp32"], data=np.random.default_rng(0).random((16, 3)), out=tmp_path / "f",
                               bench=False)
    notes = result.artifact("tfjs-fp32")["verification"]["notes"]
    assert any("feed `feat` as float32" in n for n in notes) and not any("int32" in n for n in notes), notes


def test_a_tabular_model_with_discretization_and_one_hot_converts_to_tfjs_and_onnx(tmp_path):
    """Discretization's Bucketize has no TF.js kernel and no tf2onnx handler (both formats refused the
    model), and TF.js's wasm OneHot wrote CategoryEncoding's 1.0 as int 1's bits (1e-45): every such
    file failed verification. Bucketize is written as a count of boundaries, OneHot computed as int32."""
    import keras

    rng = np.random.default_rng(1)
    num = rng.normal([100, 0.0], [30, 1.0], (128, 2)).astype("float32")
    num[:4, 0] = [-1e9, 1e9, 0.0, 100.0]  # far outside, and values that may sit on a boundary
    cat = rng.integers(0, 5, (128, 1)).astype("int32")
    disc = keras.layers.Discretization(num_bins=4)
    disc.adapt(num[4:, :1])
    num_in, cat_in = keras.Input((2,), name="num"), keras.Input((1,), dtype="int32", name="cat")
    bins = keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot")(disc(num_in[:, :1]))
    onehot = keras.layers.CategoryEncoding(num_tokens=5, output_mode="one_hot")(cat_in)
    h = keras.layers.Concatenate()([bins, onehot, num_in[:, 1:]])
    model = keras.Model([num_in, cat_in], keras.layers.Dense(3, activation="softmax")(h))
    num[4, 0] = float(disc.bin_boundaries[1])  # a sample exactly on a boundary
    # the cpu backend's int32 -> float32 Cast keeps an Int32Array: the runner sent its bytes as floats (1 -> 1e-45)
    cpu = dataclasses.replace(get_target("tfjs-fp32"), name="tfjs-cpu",
                              options={**get_target("tfjs-fp32").options, "backend": "cpu"})
    result = deploykit.convert(model, ["tfjs-fp32", cpu, "onnx-fp32"], data={"num": num, "cat": cat},
                               out=tmp_path / "o", bench=False)
    for target in ("tfjs-fp32", "tfjs-cpu", "onnx-fp32"):
        art = result.artifact(target)
        assert art["status"] == "ok", art["error"]
        assert art["verification"]["max_abs_error"] < 1e-5, (target, art["verification"])
    ops = {n["op"] for n in json.loads((result.out / "tfjs-fp32" / "model.json").read_text())["modelTopology"]["node"]}
    assert "Bucketize" not in ops and "OneHot" not in ops  # CategoryEncoding is exported as comparisons
    # values verification data never holds: NaN (missing: TensorFlow's last bucket; a count of x >= b said
    # the first) and id -1 (missing: an all-zero one-hot; ONNX's OneHot read it as the last category)
    import onnxruntime as ort

    from deploykit.runtime_bench.tfjs.runner import TFJSRunner

    odd = {"num": np.array([[np.nan, 0.5], [np.inf, 0.5], [-np.inf, 0.5], [100.0, 0.5]], np.float32),
           "cat": np.array([[-1], [4], [7], [-3]], np.int32)}
    want = np.asarray(model(odd, training=False))
    session = ort.InferenceSession(str(result.out / "onnx-fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, odd)[0], want, atol=1e-5)
    for backend in ("wasm", "cpu"):
        runner = TFJSRunner(result.out / "tfjs-fp32" / "model.json", backend=backend)
        try:
            runner.load()
            np.testing.assert_allclose(next(iter(runner.run(odd).values())), want, atol=1e-5, err_msg=backend)
        finally:
            runner.close()
    # a one-hot as the output itself: on cpu it comes back an Int32Array labelled float32
    onehot_out = keras.Model(cat_in, keras.layers.CategoryEncoding(num_tokens=5, output_mode="one_hot")(cat_in))
    art = deploykit.convert(onehot_out, [cpu], data=cat, out=tmp_path / "c", bench=False).artifact("tfjs-cpu")
    assert art["status"] == "ok" and art["verification"]["max_abs_error"] == 0, art["error"]


def test_a_one_hot_of_byte_ids_still_converts_to_tfjs(tmp_path):
    """The ONNX guard for negative one-hot ids ran for TF.js too and made an int8 constant, which TF.js
    weights cannot hold: a model one-hotting int8 ids was refused (TF.js gives -1 an all-off row itself)."""
    import keras
    import tensorflow as tf

    class OneHot(keras.layers.Layer):
        def call(self, ids):
            return tf.reshape(tf.one_hot(ids, 6), (-1, 18))

    keras.utils.set_random_seed(0)
    ids_in = keras.Input((3,), dtype="int8", name="ids")
    model = keras.Model(ids_in, keras.layers.Dense(4)(OneHot()(ids_in)))
    ids = np.random.default_rng(0).integers(-1, 6, (64, 3)).astype("int8")
    art = deploykit.convert(model, ["tfjs-fp32"], data={"ids": ids}, out=tmp_path / "o", bench=False).artifact("tfjs-fp32")
    assert art["status"] == "ok" and art["verification"]["max_abs_error"] < 1e-5, art["error"]


def test_a_one_hot_on_another_axis_converts_to_tfjs(tmp_path):
    """TF.js's oneHot puts the categories last whatever the axis: ``tf.one_hot(ids, 6, axis=1)`` came out in
    another layout and failed verification with no cause named. It is written on the last axis, then transposed."""
    import keras
    import tensorflow as tf

    class OneHotAcross(keras.layers.Layer):
        def call(self, ids):
            return tf.reshape(tf.one_hot(ids, 6, axis=1), (-1, 18)) + tf.reshape(tf.one_hot(ids, 6, axis=2), (-1, 18))

    keras.utils.set_random_seed(0)
    ids_in = keras.Input((3,), dtype="int32", name="ids")
    model = keras.Model(ids_in, keras.layers.Dense(4)(OneHotAcross()(ids_in)))
    ids = np.random.default_rng(0).integers(-1, 6, (64, 3)).astype("int32")
    result = deploykit.convert(model, ["tfjs-fp32"], data={"ids": ids}, out=tmp_path / "o", bench=False)
    art = result.artifact("tfjs-fp32")
    assert art["status"] == "ok" and art["verification"]["max_abs_error"] < 1e-5, art["error"]
    nodes = json.loads((result.out / "tfjs-fp32" / "model.json").read_text())["modelTopology"]["node"]
    assert all(n["attr"].get("axis", {}).get("i", "-1") == "-1" for n in nodes if n["op"] == "OneHot")


def test_an_int64_output_is_said_to_arrive_as_int32(tmp_path):
    """The report said `output_0 ... int64` and TF.js returned an int32 tensor with no note, while int64 inputs
    were told to be fed as int32: a hashed id past 2**31 would arrive wrapped."""
    import keras

    inp = keras.Input((4,), name="feat")
    probs = keras.layers.Dense(3, activation="softmax")(inp)
    model = keras.Model(inp, [keras.ops.cast(keras.ops.argmax(probs, axis=-1), "int64"), probs])
    result = deploykit.convert(model, ["tfjs-fp32"], data=np.random.default_rng(0).random((16, 4)).astype("float32"),
                               out=tmp_path / "o", bench=False)
    art = result.artifact("tfjs-fp32")
    assert art["status"] == "ok", art["error"]
    notes = " ".join(art["verification"]["notes"])
    assert "TF.js returns `output_0` (int64) as int32 tensors: values beyond int32's ±2**31 do not survive" in notes, notes
    assert "output_1" not in notes
