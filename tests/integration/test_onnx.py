"""ONNX target end to end: tf2onnx conversion, ORT quantization, verification, -auto selection.

Real converters and the real ONNX Runtime; tiny seeded models from conftest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.errors import UserError
from deploykit.selection import NOISE_RATIO, ROUND_WINS, ROUNDS, TIE_RATIO

FAST = dict(iterations=5, warmup=1)


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory, keras3_path, data_npz):
    out = tmp_path_factory.mktemp("onnx") / "run"
    return deploykit.convert(
        keras3_path,
        ["onnx-fp32", "onnx-fp16", "onnx-int8-dynamic", "onnx-int8-qdq", "onnx-int8-qop"],
        data=data_npz, out=out, **FAST,
    )


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


@pytest.mark.slow
def test_every_onnx_precision_converts_checks_and_verifies(onnx_run):
    import onnx

    by_target = {a["target"]: a for a in onnx_run.artifacts}
    assert set(by_target) == {"onnx-fp32", "onnx-fp16", "onnx-int8-dynamic", "onnx-int8-qdq", "onnx-int8-qop"}
    for name, a in by_target.items():
        assert a["status"] == "ok", (name, a["error"])
        path = onnx_run.out / a["path"]
        onnx.checker.check_model(str(path), full_check=True)
        v = a["verification"]
        assert v["passed"] and abs(v["accuracy_drop_points"]) <= 1.0
        assert a["benchmark"]["runtime"] == "onnxruntime" and a["benchmark"]["threads"] == 2
        assert a["benchmark"]["graph_optimization_level"] == "all"
        top = a["benchmark"]["op_profile"]["top_op_types"]
        assert 0 < len(top) <= 10 and all(t["share"] > 0 for t in top)
    assert by_target["onnx-fp32"]["verification"]["max_abs_error"] <= 1e-4


def test_every_onnx_file_lists_its_initializers_in_name_order(onnx_run, tmp_path):
    """tf2onnx's optimizer orders initializers differently from run to run: the same model gave six different
    files (sha256s) in 13 conversions. Written in name order, in every precision; a shuffled proto saves to
    the same bytes."""
    import random

    import onnx

    from deploykit.converters.onnx import _save

    for a in onnx_run.artifacts:
        names = [t.name for t in _load(onnx_run.out / a["path"]).graph.initializer]
        assert names == sorted(names), a["target"]
    proto = _load(onnx_run.out / onnx_run.artifact("onnx-fp32")["path"])
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(proto)
    inits = list(shuffled.graph.initializer)
    random.Random(0).shuffle(inits)
    del shuffled.graph.initializer[:]
    shuffled.graph.initializer.extend(inits)
    _save(proto, tmp_path / "a.onnx", False)
    _save(shuffled, tmp_path / "b.onnx", False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.slow
def test_onnx_io_names_and_dynamic_batch(onnx_run):
    proto = _load(onnx_run.out / onnx_run.artifact("onnx-fp32")["path"])
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["output_0"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert onnx_run.artifact("onnx-fp32")["verification"]["batch_sizes"] == [1, 8]


def test_static_int8_and_int16_keep_the_batch_name_and_declare_only_used_domains(tmp_path, digits):
    """Behind a Resizing layer, ONNX Runtime's shape inference renamed the output's batch dimension
    ``floor(1.0*batch)`` in the static int8 files, and they declared seven opset domains no node used.
    int16 activations are 16-bit QDQ (opset 21), not the static int8 they used to be labelled."""
    import keras
    from onnx import TensorProto

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Resizing(12, 12),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    result = deploykit.convert(model, ["onnx-fp32", "onnx-int8-qdq", "onnx-int8-qop", "onnx-int16x8"],
                               data=digits.x_eval[:64], out=tmp_path / "o", bench=False)
    for art in result.artifacts:
        assert art["status"] == "ok", art["error"]
        proto = _load(result.out / art["path"])
        for value in list(proto.graph.input) + list(proto.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch", (art["target"], value)
        if art["target"] != "onnx-fp32":  # tf2onnx's own file declares ai.onnx.ml as it always does
            used = {n.domain for n in proto.graph.node} | {""}
            assert {o.domain for o in proto.opset_import} <= used, art["target"]
    a16 = result.artifact("onnx-int16x8")
    proto = _load(result.out / a16["path"])
    zero_points = {t.name: t.data_type for t in proto.graph.initializer}
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert q and {zero_points[n.input[2]] for n in q} == {TensorProto.INT16}
    assert a16["settings"]["converter"]["opset_written"] == a16["settings"]["converter"]["opset"] == 21  # was 17
    fp32 = result.artifact("onnx-fp32")["settings"]["converter"]  # no quantization options on a float file
    assert "quant_format" not in fp32 and "reduce_range" not in fp32 and fp32["opset"] == 17
    assert proto.ir_version >= 10  # what ONNX's version table asks of opset 21
    assert a16["settings"]["converter"]["activation_type"] == "int16"
    assert "batch_dependent" not in a16["settings"]["converter"]  # static: not quantize_dynamic's per-call scale
    # 8-bit weights: reduce_range guards the uint8 kernels int16 activations never run on (7-bit cost accuracy)
    from onnx import numpy_helper

    kernels = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1]
    assert kernels and max(int(np.abs(k).max()) for k in kernels) > 64 and a16["settings"]["converter"]["reduce_range"] is False


@pytest.mark.slow
def test_an_embedding_table_quantized_per_tensor_is_said(tmp_path):
    """The target list says int8 per channel; ONNX Runtime's quantizer stores a Gather's table (most of an
    Embedding model's parameters) as an activation: uint8, one scale for the whole table. Said, by layer."""
    import keras
    import onnx

    from deploykit.converters.onnx import quantized_tables

    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), dtype="int32", name="tokens")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(100, 16, name="emb")(inp))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="out")(h))
    x = np.random.default_rng(0).integers(0, 100, (64, 12)).astype("int32")
    result = deploykit.convert(model, ["onnx-int8-qdq"], data=x, out=tmp_path / "o", bench=False)
    art = result.artifact("onnx-int8-qdq")
    assert "stores an Embedding's table (Gather) as an activation: 'emb' (uint8), one scale for the whole table" \
           in art["settings"]["converter"]["note"], art["settings"]["converter"]
    (table,) = quantized_tables(onnx.load(str(tmp_path / "o" / art["path"])))  # a random model: kept, passed or not
    assert table[1] == "uint8"


def test_quantized_onnx_is_smaller_and_fp16_keeps_float_io(onnx_run):
    from onnx import numpy_helper

    def weight_bytes(target):  # the tiny model's graph overhead would hide ratios in file sizes
        proto = _load(onnx_run.out / onnx_run.artifact(target)["path"])
        return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)

    fp32 = weight_bytes("onnx-fp32")
    assert weight_bytes("onnx-fp16") < 0.55 * fp32
    assert weight_bytes("onnx-int8-qop") < 0.4 * fp32
    proto = _load(onnx_run.out / onnx_run.artifact("onnx-fp16")["path"])
    assert proto.graph.input[0].type.tensor_type.elem_type == 1  # FLOAT
    ops = {n.op_type for n in _load(onnx_run.out / onnx_run.artifact("onnx-int8-qop")["path"]).graph.node}
    assert "QLinearConv" in ops
    ops = {n.op_type for n in _load(onnx_run.out / onnx_run.artifact("onnx-int8-qdq")["path"]).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


@pytest.mark.slow
@pytest.mark.parametrize("family", ["onnx-auto", "tflite-auto"])
def test_auto_ships_a_verified_candidate_and_explains_why(tmp_path, keras3_path, data_npz, family):
    result = deploykit.convert(keras3_path, [family], data=data_npz, out=tmp_path / "out", **FAST)
    auto = result.artifact(family)
    target = deploykit.get_target(family)
    assert auto["status"] == "ok", auto["error"]
    sel = auto["selection"]
    assert sel["winner"] in target.candidates
    assert {c["target"] for c in sel["candidates"]} == set(target.candidates)
    winner = result.artifact(sel["winner"])
    assert winner["candidate_of"] == family and winner["status"] == "ok"
    assert auto["sha256"] == winner["sha256"]
    assert (result.out / auto["path"]).read_bytes() == (result.out / winner["path"]).read_bytes()
    timed = [c for c in sel["candidates"] if c["status"] == "ok" and not c.get("dropped_after_rounds")]

    def paired(a, b):  # round by round: the rounds ran at the same moments, whatever the machine did
        return float(np.median([x / y for x, y in zip(a["round_p50_ms"], b["round_p50_ms"])]))

    # the fastest: the one no other candidate beats head to head (ratios to one common file do not chain)
    from deploykit.selection import fastest
    best_name, unbeaten = fastest({c["target"]: {"p50_ms": c["interleaved_p50_ms"], **c} for c in timed})
    best = next(c for c in timed if c["target"] == best_name)
    if unbeaten:
        assert all(paired(c, best) >= 1 for c in timed)
    chosen = next(c for c in timed if c["target"] == sel["winner"])
    ratio = paired(chosen, best)
    assert ratio <= NOISE_RATIO + 1e-9
    if ratio > TIE_RATIO:  # only a candidate that beat the fastest in paired rounds may be this much slower
        assert sum(a <= b for a, b in zip(chosen["round_p50_ms"], best["round_p50_ms"])) >= ROUND_WINS
    assert len(chosen["round_p50_ms"]) == ROUNDS
    # nothing smaller was within the tie ratio
    assert all(c["size_bytes"] >= chosen["size_bytes"] for c in timed if paired(c, best) <= TIE_RATIO)
    assert sel["winner"] in sel["reason"]
    report = (result.out / "report.md").read_text()
    assert "Auto selection" in report and sel["reason"] in report
    assert result.ok


def _conv_bias_types(path: Path) -> set[int]:
    proto = _load(path)
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    types = set()
    for node in proto.graph.node:
        if node.op_type == "Conv" and len(node.input) > 2:
            bias = node.input[2]
            if bias in producers and producers[bias].op_type == "DequantizeLinear":
                bias = producers[bias].input[0]  # int32 bias behind its DequantizeLinear
            types.add(inits[bias])
    return types


@pytest.mark.slow
def test_qdq_keeps_float_biases_unless_asked(tmp_path, onnx_run, keras3_path, data_npz):
    """onnx-int8-qdq stores conv biases as float32 (quantize_bias = false: a smaller file, the same ORT
    kernels); a target with quantize_bias = true gets ORT's int32 biases and a bigger file."""
    from onnx import TensorProto

    qdq = onnx_run.artifact("onnx-int8-qdq")
    assert _conv_bias_types(onnx_run.out / qdq["path"]) == {TensorProto.FLOAT}
    int_bias = tmp_path / "qdq-int-bias.toml"
    int_bias.write_text('format = "onnx"\nprecision = "int8-qdq"\nweights = "int8"\nactivations = "uint8"\n'
                        'options = { quant_format = "qdq", quantize_bias = true }\n'
                        'tolerance = { atol = 0.0, range_atol = 0.05, max_violation_fraction = 0.001, probabilities = "metric" }\n')
    result = deploykit.convert(keras3_path, [str(int_bias)], data=data_npz, out=tmp_path / "out", bench=False)
    art = result.artifact("qdq-int-bias")
    assert art["status"] == "ok", art["error"]
    assert _conv_bias_types(result.out / art["path"]) == {TensorProto.INT32}
    assert art["size_bytes"] > qdq["size_bytes"]
    assert qdq["verification"]["passed"] and art["verification"]["passed"]


def test_an_auto_variants_settings_reach_its_candidates_files(tmp_path, keras3_path, data_npz, capfd):
    """onnx-auto with percentile calibration, 8-bit per-tensor weights: the int8 file holds that (the
    settings used to be checked, then dropped), and the calibrator's prints stay off stdout."""
    from onnx import numpy_helper

    auto = tmp_path / "pct-auto.toml"
    auto.write_text('format = "onnx"\nprecision = "auto"\ncandidates = ["onnx-int8-qdq"]\n'
                    'options = { calibrate_method = "percentile", reduce_range = false, per_channel = false }\n'
                    'calibration_samples = 50\n')
    result = deploykit.convert(keras3_path, [str(auto)], data=data_npz, out=tmp_path / "out", bench=False)
    cand = result.artifact("pct-auto.onnx-int8-qdq")
    assert cand["status"] == "ok", cand["error"]
    conv = cand["settings"]["converter"]
    assert (conv["calibrate_method"], conv["reduce_range"], conv["per_channel"], conv["calibration_samples"]) == \
        ("percentile", False, False, 50)
    proto = _load(result.out / cand["path"])
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    kernels = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim > 1]
    weights, scales = [inits[n.input[0]] for n in kernels], [inits[n.input[1]] for n in kernels]
    assert weights and max(int(np.abs(w).max()) for w in weights) > 64  # 8-bit, not reduce_range's 7
    assert all(s.size == 1 for s in scales)  # per tensor
    assert "histogram" not in capfd.readouterr().out
    shipped = result.artifact("pct-auto")
    assert shipped["selection"]["winner"] == "pct-auto.onnx-int8-qdq"
    assert shipped["settings"]["shipped_target"] == cand["settings"]["target"]  # what it was judged and timed as


@pytest.mark.slow
def test_failed_candidate_does_not_fail_the_auto_target(tmp_path, keras3_path, data_npz):
    # A candidate with an impossible tolerance fails verification; auto still ships another one.
    strict = tmp_path / "strict.toml"
    strict.write_text('format = "onnx"\nprecision = "int8-qop"\nweights = "int8"\nactivations = "uint8"\n'
                      'options = { quant_format = "qoperator" }\n'
                      # every field it leaves out would come from onnx-int8-qop: make each one impossible
                      'tolerance = { atol = 1e-9, range_atol = 0.0, max_violation_fraction = 0.0, probabilities = "elementwise" }\n')
    auto = tmp_path / "auto.toml"
    auto.write_text(f'format = "onnx"\nprecision = "auto"\ncandidates = ["onnx-fp32", "{strict}"]\n')
    result = deploykit.convert(keras3_path, [str(auto)], data=data_npz, out=tmp_path / "out", **FAST)
    art = {a["target"]: a for a in result.artifacts}
    assert art["strict"]["status"] == "failed" and art["strict"]["candidate_of"] == "auto"
    assert art["auto"]["status"] == "ok" and art["auto"]["selection"]["winner"] == "onnx-fp32"
    assert result.ok


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tf_keras_h5_path", "saved_model_dir"])
def test_other_input_kinds_convert_to_onnx(request, tmp_path, data_npz, kind):
    model = request.getfixturevalue(kind)
    result = deploykit.convert(model, ["onnx-fp32", "onnx-int8-qdq"], data=data_npz, out=tmp_path / "out", **FAST)
    for a in result.artifacts:
        assert a["status"] == "ok", (a["target"], a["error"])


def test_external_data_is_relative_and_escapes_are_refused(tmp_path, keras3_path, data_npz):
    import onnx

    target = tmp_path / "ext.toml"
    target.write_text('format = "onnx"\nprecision = "fp32"\noptions = { external_data = "always" }\n')
    result = deploykit.convert(keras3_path, [str(target)], data=data_npz, out=tmp_path / "out", **FAST)
    a = result.artifact("ext")
    assert a["status"] == "ok", a["error"]
    assert a["extra_files"] == ["ext/model.onnx.data"]
    data_file = result.out / a["extra_files"][0]
    assert a["size_bytes"] == (result.out / a["path"]).stat().st_size + data_file.stat().st_size
    proto = onnx.load(str(result.out / a["path"]), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}

    # A crafted model pointing outside its directory is refused before ONNX Runtime reads anything.
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../model.onnx.data"
    evil = tmp_path / "evil" / "sub"
    evil.mkdir(parents=True)
    (evil.parent / "model.onnx.data").write_bytes(data_file.read_bytes())
    onnx.save(proto, str(evil / "model.onnx"))
    with pytest.raises(UserError, match="leaves the model's directory"):
        deploykit.bench(evil / "model.onnx", iterations=1, warmup=0)
    # Inside the directory but not a file ORT can open as written: '.' (the directory), 'w/../x' (no 'w').
    for location in (".", "w/../model.onnx.data", "gone.data"):
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save(proto, str(evil.parent / "model.onnx"))
        with pytest.raises(UserError, match=f"external data file '{re.escape(location)}' .* does not exist beside the model"):
            deploykit.bench(evil.parent / "model.onnx", iterations=1, warmup=0)


def test_unconvertible_op_is_named_and_other_targets_finish(tmp_path):
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"output_0": tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 0.5) + x}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    x = np.random.default_rng(0).random((16, 4)).astype("float32")
    result = deploykit.convert(tmp_path / "sm", ["onnx-fp32", "tflite-fp32"], data=x, out=tmp_path / "out", **FAST)
    onnx_art = result.artifact("onnx-fp32")
    assert onnx_art["status"] == "failed"
    assert "Igamma (x1, e.g. " in onnx_art["error"] and "opset 17" in onnx_art["error"]
    assert result.artifact("tflite-fp32")["status"] in ("ok", "failed")  # it ran to its own verdict
    assert not (tmp_path / "out" / "onnx-fp32" / "model.onnx").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0]["status"] == "failed"


def test_grouped_conv_and_exact_gelu_convert_without_nested_calls(tmp_path):
    """Keras 3 compiles grouped convolutions as XLA functions (ConvNeXt's depthwise blocks) and
    exact GELU emits Erfc: both must be inlined/expanded so ONNX Runtime accepts the file."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 4), name="img"),
        keras.layers.Conv2D(8, 3, groups=4, padding="same"),
        keras.layers.Activation("gelu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 4)).astype("float32")
    result = deploykit.convert(model, ["onnx-fp32"], data=x, out=tmp_path / "out", **FAST)
    a = result.artifact("onnx-fp32")
    assert a["status"] == "ok", a["error"]
    ops = {n.op_type for n in _load(result.out / a["path"]).graph.node}
    assert "StatefulPartitionedCall" not in ops and "Erfc" not in ops


def test_graph_rewrite_inlines_calls_exactly(tmp_path):
    import keras
    import tensorflow as tf
    from tf2onnx import tf_loader

    from deploykit.converters.graph_rewrite import has_function_calls, prepare_for_export

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, groups=2), keras.layers.Activation("gelu")])
    model.export(str(tmp_path / "sm"), verbose=False)
    gd, inputs, outputs, _ = tf_loader.from_saved_model(str(tmp_path / "sm"), None, None, "serve", ["serving_default"],
                                                        return_tensors_to_rename=True)
    assert has_function_calls(gd)
    flat = prepare_for_export(gd)
    assert not has_function_calls(flat) and not any(n.op == "Erfc" for n in flat.node)
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 4)).astype("float32")

    def run(graph_def):
        with tf.Graph().as_default() as g:
            tf.compat.v1.import_graph_def(graph_def, name="")
            with tf.compat.v1.Session(graph=g) as sess:
                return sess.run(outputs[0], {inputs[0]: x})

    np.testing.assert_allclose(run(flat), run(gd), atol=1e-6)


def test_static_int8_writes_nothing_outside_the_output_dir(tmp_path, monkeypatch):
    """ORT's symbolic shape inference gives up on attention graphs and saves its partial model to the cwd.
    Nor does the conversion move the process's cwd: from a worker thread, the caller's relative writes
    went into a temp folder that was then removed."""
    import os
    import threading

    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 16), name="seq")
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(inp, inp)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([inp, h]))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(64, 8, 16)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    results, seen = [], set()
    worker = threading.Thread(target=lambda: results.append(deploykit.convert(
        model, ["onnx-int8-qdq"], data=tmp_path / "d.npz", out=tmp_path / "out", bench=False, verify_samples=16)))
    worker.start()
    while worker.is_alive():
        seen.add(os.getcwd())
    worker.join()
    assert seen == {str(cwd)}
    (result,) = results
    assert result.artifact("onnx-int8-qdq")["settings"]["converter"]["quantization"].startswith("static")
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_qoperator_on_a_recurrent_loop_fails_naming_qdq_which_converts(tmp_path):
    """ORT's QOperator rewrite breaks the GRU loop's outer-scope input; the failure names the way out."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20, 4)), keras.layers.Conv1D(8, 5, activation="relu"), keras.layers.GRU(8),
                              keras.layers.Dense(3, activation="softmax")])  # the QDQ-able Conv1D feeds the loop
    x = np.random.default_rng(0).normal(size=(48, 20, 4)).astype("float32")
    result = deploykit.convert(model, ["onnx-int8-qop", "onnx-int8-qdq"], data=x, out=tmp_path / "gru", bench=False)
    qop, qdq = result.artifact("onnx-int8-qop"), result.artifact("onnx-int8-qdq")
    assert qop["status"] == "failed" and "try onnx-int8-qdq" in qop["error"], qop["error"]  # ONNX Runtime 1.32 (pinned)
    assert qdq["status"] == "ok", qdq["error"]
    assert not (tmp_path / "gru" / "onnx-int8-qop").exists()


def test_bench_numbers_x0_x1_as_convert_does(tmp_path):
    """x0/x1 are the Keras model's inputs in order; bench refused the npz that convert took (or would swap
    same-shaped inputs). A lone file, whose model order is unknown (it may not be deploykit's), is
    still refused and told its own order."""
    import shutil

    import keras

    from deploykit.runtime_bench import bench_file

    z = keras.Input((5,), name="z_tokens")
    b = keras.Input((3,), name="b_feats")
    model = keras.Model([z, b], keras.layers.Dense(2)(keras.layers.Concatenate()([z, b])))
    rng = np.random.default_rng(0)
    data = tmp_path / "xy.npz"
    np.savez(data, x0=rng.normal(size=(8, 5)).astype("float32"), x1=rng.normal(size=(8, 3)).astype("float32"))
    result = deploykit.convert(model, ["onnx-fp32"], data=data, out=tmp_path / "out", bench=False)
    artifact = result.out / result.artifact("onnx-fp32")["path"]
    assert bench_file(artifact, data=data, iterations=3, warmup=1)["n"] == 3
    lone = tmp_path / "lone.onnx"
    shutil.copy(artifact, lone)
    with pytest.raises(UserError, match="x0, x1 ... follow the Keras model's input order.*z_tokens, b_feats"):
        bench_file(lone, data=data, iterations=3, warmup=1)


def test_tiny_model_with_external_data_always_and_bench_of_an_id_input_without_data(tmp_path):
    """external_data = "always" crashed in chmod when no tensor reached the threshold (no .data file), and
    `deploy bench` without --data drew ids over the whole int32 range (gather out of bounds, a traceback)."""
    import keras

    from deploykit.runtime_bench import bench_file

    tokens = keras.Input((6,), dtype="int32", name="tokens")
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(5, 2)(tokens))))
    target = tmp_path / "tiny.toml"
    target.write_text('name = "onnx-tiny"\nformat = "onnx"\nprecision = "fp32"\noptions = { external_data = "always" }\n')
    ids = np.random.default_rng(0).integers(0, 5, (16, 6)).astype("int32")
    result = deploykit.convert(model, [str(target), "tflite-fp32"], data=ids, out=tmp_path / "out", bench=False)
    assert result.ok, [a["error"] for a in result.artifacts]
    assert result.artifact("onnx-tiny")["settings"]["converter"]["external_data_files"] == []
    for name in ("onnx-tiny", "tflite-fp32"):
        assert bench_file(result.out / result.artifact(name)["path"], iterations=3, warmup=1)["n"] == 3


def test_area_resize_is_refused_for_onnx_naming_the_layer(tmp_path):
    """tf2onnx turns ResizeArea into a nearest-neighbour Resize: the file ran 0.19 off the model, and an
    int8 file made from it passed on agreement. Refused before conversion, naming the layer."""
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Resizing(6, 6, interpolation="area", name="shrink")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x)))
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    result = deploykit.convert(model, ["onnx-fp32", "onnx-int8-qop"], data=x, out=tmp_path / "o", bench=False)
    for name in ("onnx-fp32", "onnx-int8-qop"):
        error = result.artifact(name)["error"]
        assert "ONNX has no area resize" in error and "shrink" in error and "bilinear" in error, error


def test_a_resize_says_its_output_size_not_a_scale_that_rounds_down(tmp_path):
    """tf2onnx wrote Resizing(36, 36) of 40x40 as scales 0.9: floor(40 * 0.9) is 36 in float32 (ONNX
    Runtime) and 35 in float64 (onnx's shape inference), so the checker refused the int8-qdq file the
    quantizer had annotated with 36. The Resize now reads sizes: 36 on every runtime."""
    import keras
    import onnx

    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 40, 3), name="image")
    x = keras.layers.Resizing(36, 36, name="shrink")(inp)
    x = keras.layers.CenterCrop(32, 32)(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    x = np.random.default_rng(0).random((64, 40, 40, 3)).astype("float32")
    result = deploykit.convert(keras.Model(inp, out), ["onnx-fp32", "onnx-int8-qdq"], data=x, out=tmp_path / "o",
                               bench=False)
    for name in ("onnx-fp32", "onnx-int8-qdq"):
        a = result.artifact(name)
        assert a["status"] == "ok", a["error"]
        proto = onnx.shape_inference.infer_shapes(onnx.load(result.path(name)), strict_mode=True, data_prop=True)
        resize = next(n for n in proto.graph.node if n.op_type == "Resize")
        assert resize.input[2] == "" and resize.input[3], list(resize.input)
        shape = next(v for v in proto.graph.value_info if v.name == resize.output[0]).type.tensor_type.shape
        assert [d.dim_value for d in shape.dim][1:] == [3, 36, 36]


def test_a_nearest_resize_takes_tensorflows_pixels_in_the_declared_opsets_terms(tmp_path):
    """tf2onnx wrote nearest resizes with coordinate_transformation_mode 'tf_half_pixel_for_nn', gone from
    the spec since Resize-13: onnx's reference runtime refused the opset-17 file and ONNX Runtime warned at
    every load, as it did about the scales initializer left unread once the Resize said its sizes. And
    where TF's source index is a whole number float32 rounds it either way: 30x30 -> 7x9 took column 24
    for 25 in every runtime. A resize of known sizes is now a Gather of TF's own indices."""
    import keras
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from deploykit.converters.onnx import tf_nearest_indices

    for size_in, size_out in ((30, 9), (40, 12), (2, 41), (8, 55), (60, 2)):  # ONNX's Resize missed these
        want = keras.layers.Resizing(1, size_out, interpolation="nearest")(
            np.arange(size_in, dtype="float32").reshape(1, 1, size_in, 1))
        assert np.asarray(want).ravel().astype(int).tolist() == tf_nearest_indices(size_in, size_out).tolist()
    inp = keras.Input((30, 30, 2), name="pixels")
    shrink = keras.Model(inp, keras.layers.Resizing(7, 9, interpolation="nearest")(inp))
    x = np.random.default_rng(0).random((4, 30, 30, 2)).astype("float32")
    result = deploykit.convert(shrink, ["onnx-fp32"], data=x, out=tmp_path / "shrink", bench=False)
    session = ort.InferenceSession(str(result.path("onnx-fp32")), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"pixels": x})[0], shrink.predict(x, verbose=0))

    keras.utils.set_random_seed(0)
    inp = keras.Input((30, 50, 3), name="image")
    x = keras.layers.Resizing(21, 37, interpolation="nearest")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(keras.layers.UpSampling2D(2)(x)))
    x = np.random.default_rng(0).random((8, 30, 50, 3)).astype("float32")
    result = deploykit.convert(model, ["onnx-fp32"], data=x, out=tmp_path / "o", bench=False)
    assert result.artifact("onnx-fp32")["status"] == "ok"
    proto = onnx.load(result.path("onnx-fp32"))
    modes = {a.s for n in proto.graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "coordinate_transformation_mode"}
    assert b"tf_half_pixel_for_nn" not in modes, modes
    read = {i for n in proto.graph.node for i in n.input}
    assert all(i.name in read for i in proto.graph.initializer), [i.name for i in proto.graph.initializer]
    got = ReferenceEvaluator(proto).run(None, {"image": x[:2]})[0]
    np.testing.assert_allclose(got, model.predict(x[:2], verbose=0), atol=1e-5)


def test_a_quantized_graph_whose_branches_read_earlier_nodes_stays_in_order(tmp_path):
    """Resizing(pad_to_aspect_ratio=True) branches on the image's shape (If nodes whose branches read an
    earlier If's output): ONNX Runtime's quantizer put them out of order and the checker refused the file."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((17, 23, 3), name="image")
    x = keras.layers.Resizing(20, 30, pad_to_aspect_ratio=True)(inp)
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(x))
    x = np.random.default_rng(0).random((64, 17, 23, 3)).astype("float32")
    result = deploykit.convert(model, ["onnx-int8-qdq", "onnx-int16x8"], data=x, out=tmp_path / "o", bench=False)
    for name in ("onnx-int8-qdq", "onnx-int16x8"):
        assert result.artifact(name)["status"] == "ok", result.artifact(name)["error"]


def test_a_quantized_file_fails_when_its_float_source_misses_the_float_bounds(tmp_path, keras3_model, digits, monkeypatch):
    """An int8 file is judged by agreement and accuracy, loose enough to hide a float conversion error.
    Its float source is verified with onnx-fp32's bounds. Here the (real) float source is altered the
    way a converter error would (one output bias moved), and the int8 file made before it passes on its own."""
    import onnx
    from onnx import numpy_helper

    from deploykit.converters import onnx as onnx_converter

    data = (digits.x_eval[:96], digits.y_eval[:96])
    clean = deploykit.convert(keras3_model, ["onnx-int8-qop"], data=data, out=tmp_path / "clean", bench=False)
    assert clean.artifact("onnx-int8-qop")["status"] == "ok"
    real = onnx_converter.write_float_source

    def altered(model, target, path):
        real(model, target, path)
        proto = onnx.load(str(path))
        last = [i for i in proto.graph.initializer if len(i.dims) == 1 and i.dims[0] == 10][-1]
        value = numpy_helper.to_array(last).copy()
        value[0] += 0.5  # a small shift of one logit
        last.CopyFrom(numpy_helper.from_array(value, last.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(onnx_converter, "write_float_source", altered)
    result = deploykit.convert(keras3_model, ["onnx-int8-qop"], data=data, out=tmp_path / "o", bench=False)
    art = result.artifact("onnx-int8-qop")
    assert art["status"] == "failed"
    assert "the float32 graph it was quantized from already misses onnx-fp32's bounds" in art["error"], art["error"]

    # with onnx-fp32 in the run (built first, as onnx-auto does), its own verdict is used: nothing rebuilt
    calls = []
    monkeypatch.setattr(onnx_converter, "write_float_source", lambda *a: calls.append(a))
    result = deploykit.convert(keras3_model, ["onnx-fp32", "onnx-int8-qop"], data=data, out=tmp_path / "o2", bench=False)
    assert calls == [] and result.artifact("onnx-int8-qop")["status"] == "ok"


def test_dynamic_int8_is_verified_one_sample_per_call(onnx_run):
    """quantize_dynamic's activation scale spans the whole batch: a verdict at batch 8 passed a file
    that missed the gate with all samples in one call. It is verified as batch-1 apps run it."""
    dyn = onnx_run.artifact("onnx-int8-dynamic")["verification"]
    assert dyn["batch_sizes"] == [1]
    assert any("depends on the other samples in its batch" in n for n in dyn["notes"]), dyn["notes"]
    assert onnx_run.artifact("onnx-int8-qop")["verification"]["batch_sizes"] == [1, 8]


def test_onnx_runtime_load_failures_give_the_reason_not_its_cpp_scaffolding(tmp_path):
    """ORT refuses a quantized bicubic Resize at load; its message starts with a source path, a C++
    signature and a repeated error prefix, and the 300 characters shown ended before the reason."""
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Resizing(8, 8, interpolation="bicubic")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(x))))
    x = np.random.default_rng(0).random((16, 16, 16, 3)).astype("float32")
    result = deploykit.convert(model, ["onnx-int8-qop"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("onnx-int8-qop")["error"]
    assert "'Cubic' mode only supports" in error and "onnxruntime_src" not in error, error
    assert error.endswith("use interpolation='bilinear' in the Keras Resizing layer (TFLite and TF.js have no bicubic "
                          "resize either), or resize before the model (a float ONNX file runs it where a convolution "
                          "follows the Resize)"), error
    # the float file of a model that ends in the Resize fails the same way: it was called "the quantized graph"
    # and told to try onnx-fp32
    inp = keras.Input((24, 40, 3), name="image")
    ends = keras.Model(inp, keras.layers.Resizing(15, 17, interpolation="bicubic")(inp))
    x = np.random.default_rng(0).integers(0, 256, (16, 24, 40, 3)).astype("float32")
    error = deploykit.convert(ends, ["onnx-fp32"], data=x, out=tmp_path / "e", bench=False).artifact("onnx-fp32")["error"]
    assert "cannot run the bicubic Resize" in error and "quantized" not in error and "or onnx-fp32" not in error, error


def test_auto_still_measures_with_benchmarks_off(tmp_path, keras3_model, digits):
    """With --no-bench, onnx-auto/tflite-auto shipped the smallest passing file: dynamic-range int8,
    8-17x slower than float on convolutions. The choice is the measurement: candidates are timed in
    interleaved rounds anyway, and only those rounds' figures appear under "interleaved p50"."""
    data = (digits.x_eval[:64], digits.y_eval[:64])
    result = deploykit.convert(keras3_model, ["onnx-auto"], data=data, out=tmp_path / "o", bench=False)
    sel = result.artifact("onnx-auto")["selection"]
    assert sel["rounds"] == 5 and "timed for this choice only" in sel["basis"], sel["basis"]
    timed = [r for r in sel["candidates"] if r["status"] == "ok"]
    assert len(timed) > 1 and all(r["interleaved_p50_ms"] > 0 for r in timed)
    assert result.artifact("onnx-fp32")["benchmark"] == {}  # the per-file benchmarks stay off


def test_interleaved_timing_stops_timing_a_clearly_slower_candidate(tmp_path, tflite_files):
    """A file 2x slower or more in each of the first two rounds cannot tie: it is not timed for the
    other three (a 17x slower dynamic-int8 candidate cost tens of seconds)."""
    import keras
    import tensorflow as tf

    from deploykit.selection import DROP_AFTER, ROUNDS, interleaved_p50
    from deploykit.targets import get_target

    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Flatten()(inp)
    for _ in range(3):
        x = keras.layers.Dense(1536, activation="relu")(x)
    slow_model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x))
    slow = tmp_path / "slow.tflite"
    slow.write_bytes(tf.lite.TFLiteConverter.from_keras_model(slow_model).convert())
    target = get_target("tflite-fp32").with_bench(iterations=50, warmup=2)
    sample = {"pixels": np.zeros((1, 8, 8, 1), np.float32)}
    fast_s, slow_s = interleaved_p50([target, target], [tflite_files["tflite-fp32"], slow], sample)
    assert len(fast_s["round_p50_ms"]) == ROUNDS and "dropped_after_rounds" not in fast_s
    assert slow_s["dropped_after_rounds"] == DROP_AFTER == len(slow_s["round_p50_ms"])
    assert slow_s["p50_ms"] > 2 * fast_s["p50_ms"]
    # The report's side-by-side timing keeps every file in every round (drop=False)
    kept = interleaved_p50([target, target], [tflite_files["tflite-fp32"], slow], sample, drop=False)
    assert [len(s["round_p50_ms"]) for s in kept] == [ROUNDS, ROUNDS] and not any("dropped_after_rounds" in s for s in kept)


def test_a_round_of_a_microsecond_model_lasts_long_enough_to_time_more_than_wake_up(tflite_files):
    """With iterations / ROUNDS runs a round, a ~5 us model's block was 0.1 ms, and its round p50s swung 6x
    with the state the pause before it left; blocks now last about MIN_BLOCK_S."""
    from deploykit.selection import MIN_BLOCK_S, ROUNDS, interleaved_p50
    from deploykit.targets import get_target

    target = get_target("tflite-fp32").with_bench(iterations=25, warmup=1)  # 5 a round without the floor
    (s,) = interleaved_p50([target], [tflite_files["tflite-fp32"]], {"pixels": np.zeros((1, 8, 8, 1), np.float32)})
    per_round = s["n"] // ROUNDS
    # 5 runs without the floor; with it, a MIN_BLOCK_S of runs (each also pays the timing loop's own ~30 us,
    # so the model's share of the block depends on the machine: 2 us a run left it at 6 % on a fast one)
    assert per_round >= 20 * 5 and per_round * s["p50_ms"] / 1000 <= 2 * MIN_BLOCK_S, (per_round, s["p50_ms"])


def test_interleaved_rounds_start_with_a_different_candidate_each_round(tmp_path, tflite_files, monkeypatch):
    """Timed in the same order every round, onnx-fp16 always ran right after onnx-fp32 and a small MLP's
    two identical graphs came out 13-24 % apart, shipping the larger file; the order now rotates."""
    import shutil

    import deploykit.runtime_bench as runtime_bench
    from deploykit.selection import ROUNDS, interleaved_p50
    from deploykit.targets import get_target

    timed, real = [], runtime_bench.benchmark

    def recorded(runner, inputs, *, warmup, iterations):  # the real benchmark, its order written down
        timed.append(runner.path.name)
        return real(runner, inputs, warmup=warmup, iterations=iterations)

    monkeypatch.setattr(runtime_bench, "benchmark", recorded)
    paths = [tmp_path / f"{k}.tflite" for k in "abc"]
    for p in paths:
        shutil.copy(tflite_files["tflite-fp32"], p)
    target = get_target("tflite-fp32").with_bench(iterations=15, warmup=1)
    interleaved_p50([target] * 3, paths, {"pixels": np.zeros((1, 8, 8, 1), np.float32)})
    assert timed[:3] == ["a.tflite", "b.tflite", "c.tflite"]  # a few untimed runs each: how long a block must be
    timed = timed[3:]
    rounds = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert len(rounds) == ROUNDS and all(sorted(r) == ["a.tflite", "b.tflite", "c.tflite"] for r in rounds)
    assert len({r[0] for r in rounds}) == 3  # each one starts a round


def test_an_unreadable_profiler_trace_leaves_the_verified_file_ok(onnx_run, monkeypatch):
    """A full $TMPDIR cut ONNX Runtime's profiler trace short, silently: the JSONDecodeError failed a
    verified onnx-int8-qdq target. The op profile is an extra; without it the benchmark stands."""
    import json

    from deploykit.runtime_bench import onnxruntime as ort_bench

    runner = ort_bench.ORTRunner(onnx_run.out / onnx_run.artifact("onnx-fp32")["path"], threads=1)
    runner.load()
    inputs = {runner.input_names[0]: np.zeros((1, 8, 8, 1), np.float32)}

    def cut_short(text, *a, **k):  # what json.loads makes of a trace cut off mid-string
        return json.JSONDecoder().decode(text[: len(text) // 2])

    monkeypatch.setattr(ort_bench.json, "loads", cut_short)
    assert runner.op_profile(inputs, runs=2) == {}


def test_bench_draws_inputs_of_every_type_onnx_runtime_takes(tmp_path):
    """A bool input: np.iinfo's ValueError traceback (exit 1); int16/uint16/uint32 inputs were fed as
    float32 (ORT's InvalidArgument); a text input has no stand-in, random or data: said so, with the way out."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.errors import UserError

    def file(name, kind):
        graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g",
                                  [helper.make_tensor_value_info("x", kind, [1, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, tmp_path / name)
        return tmp_path / name

    for kind in (TensorProto.BOOL, TensorProto.INT16, TensorProto.UINT16, TensorProto.UINT32):
        measured = deploykit.bench(file(f"t{kind}.onnx", kind), iterations=3, warmup=1)
        assert measured["p50_ms"] > 0
    text = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g",
                             [helper.make_tensor_value_info("s", TensorProto.STRING, [1, 2])],
                             [helper.make_tensor_value_info("y", TensorProto.STRING, None)])
    model = helper.make_model(text, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "text.onnx")
    # with data or without: data is numbers, so "pass --data" was followed by "not numeric" for text
    np.savez(tmp_path / "text.npz", s=np.array([["a", "b"]] * 2))
    for data in (None, tmp_path / "text.npz"):
        with pytest.raises(UserError, match="input 's' takes text, which deploy bench cannot feed"):
            deploykit.bench(tmp_path / "text.onnx", data=data, iterations=3, warmup=1)


def test_an_input_without_a_shape_is_not_timed_on_a_scalar(tmp_path):
    """ONNX Runtime reports an input that records no shape as [], as it does a scalar: bench timed one
    random number for it without a word, and --data of shape (4, 3, 5) was refused as 'expects ()'."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.errors import UserError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "noshape.onnx")
    with pytest.raises(UserError, match="input 'x' records no shape, so no random input fits it; pass --data"):
        deploykit.bench(tmp_path / "noshape.onnx", iterations=3, warmup=1)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((4, 3, 5), dtype=np.float32))
    assert deploykit.bench(tmp_path / "noshape.onnx", data=tmp_path / "d.npz", iterations=3, warmup=1)["n"] == 3


def test_a_fixed_batch_file_is_timed_at_its_batch_with_data_too(tmp_path):
    """--data gave a batch-8 file one sample: ONNX Runtime refused it ("Got: 1 Expected: 8", blamed on the
    data's values), LiteRT resized it to batch 1 unannounced; the memory line always said batch 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).random((16, 4)).astype("float32"), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fixed8.onnx")
    np.savez(tmp_path / "three.npz", x=np.random.default_rng(1).random((3, 16)).astype("float32"))
    measured = deploykit.bench(tmp_path / "fixed8.onnx", data=tmp_path / "three.npz", iterations=3, warmup=1)
    assert measured["p50_ms"] > 0 and "runs at batch 8" in measured["runtime_memory_of"], measured["runtime_memory_of"]


def test_bench_data_as_a_list_needs_an_input_order_the_file_records(tmp_path):
    """[a, b] was matched to the file's own input order: two same-shaped inputs could swap without a word."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.errors import UserError

    graph = helper.make_graph([helper.make_node("Sub", ["b_second", "a_first"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in ("b_second", "a_first")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    a, b = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(UserError, match=r"data is a list of 2 arrays, in the Keras model's input order, which this "
                                        r"artifact does not record; pass a dict keyed by input name"):
        deploykit.bench(tmp_path / "two.onnx", data=[a, b], iterations=3, warmup=1)
    assert deploykit.bench(tmp_path / "two.onnx", data={"a_first": a, "b_second": b}, iterations=3, warmup=1)["p50_ms"] > 0


def test_onnx_runtime_is_set_up_before_the_first_file_s_load_is_timed(tmp_path, monkeypatch):
    """ORT sets itself up in a process's first session (17-35 ms here): the first ONNX file of a run was
    charged it as init time, 39 ms beside 5 ms for the others, and swapping --target flags swapped them."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from deploykit.runtime_bench import onnxruntime as ort_bench

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    made, real = [], ort.InferenceSession

    def recorded(model, *args, **kwargs):
        made.append("file" if isinstance(model, str) else "set-up")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recorded)
    monkeypatch.setattr(ort_bench, "_SET_UP", False)
    for _ in range(2):
        ort_bench.ORTRunner(tmp_path / "m.onnx").load()
    assert made == ["set-up", "file", "file"]


def test_a_gru_the_dynamic_quantizer_fails_on_gets_a_way_out(tmp_path):
    """onnx-int8-dynamic failed on every Keras 3 GRU with ONNX Runtime's bare "unknown initializers/tensors",
    while other refusals send recurrent models to it."""
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((12,), dtype="int32", name="ids")
    h = keras.layers.GRU(8)(keras.layers.Embedding(50, 8)(ids))
    model = keras.Model(ids, keras.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).integers(1, 50, (32, 12)).astype("int32")
    result = deploykit.convert(model, ["onnx-int8-dynamic", "onnx-int16x8"], data=x, out=tmp_path / "o", bench=False)
    art = result.artifact("onnx-int8-dynamic")
    assert art["error"].endswith("ONNX Runtime's dynamic quantizer fails on this graph (e.g. a GRU's recurrent loop): "
                                 "try onnx-int16x8 or onnx-fp16, or tflite-dynamic"), art["error"]
    assert result.artifact("onnx-int16x8")["status"] == "ok"  # the way out it names works


def test_a_negative_one_hot_id_inside_a_while_loop_stays_an_all_off_row(tmp_path):
    """The guard for ONNX's OneHot (which counts -1 from the end) reached the top-level graph only: inside a
    tf.while_loop's body -1 still read as the last category, and the file passed on data without -1."""
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    class LoopHot(keras.layers.Layer):
        def call(self, ids):
            def body(i, acc):
                return i + 1, acc + tf.one_hot(ids[:, i], 5)

            start = (tf.constant(0), tf.zeros((tf.shape(ids)[0], 5)))
            return tf.while_loop(lambda i, acc: i < tf.shape(ids)[1], body, start)[1]

        def compute_output_shape(self, shape):
            return (shape[0], 5)

    keras.utils.set_random_seed(0)
    ids_in = keras.Input((3,), dtype="int32", name="ids")
    model = keras.Model(ids_in, keras.layers.Dense(2)(LoopHot()(ids_in)))
    ids = np.random.default_rng(0).integers(0, 5, (32, 3)).astype("int32")
    result = deploykit.convert(model, ["onnx-fp32"], data={"ids": ids}, out=tmp_path / "o", bench=False)
    assert result.artifact("onnx-fp32")["status"] == "ok", result.artifact("onnx-fp32")["error"]
    session = ort.InferenceSession(str(result.path("onnx-fp32")), providers=["CPUExecutionProvider"])
    odd = np.array([[-1, -1, -1], [0, -1, 4], [-3, 2, 2]], np.int32)
    np.testing.assert_allclose(session.run(None, {"ids": odd})[0], np.asarray(model(odd)), atol=1e-6)
