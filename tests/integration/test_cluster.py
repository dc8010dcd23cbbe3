"""Weight clustering end to end: real fine-tuning of tiny seeded models, real converters, shared
values counted in the artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deploykit
from deploykit.errors import DataError, UserError
from deploykit.optimize.cluster import cluster

SEED = 0
NAMES = ["rescale", "conv", "flatten", "fc", "probs"]


def _model(lib):
    lib.utils.set_random_seed(SEED)
    L = lib.layers
    layers = [L.Rescaling(1 / 16, name="rescale"), L.Conv2D(8, 3, activation="relu", name="conv"),
              L.Flatten(name="flatten"), L.Dense(32, activation="relu", name="fc"),
              L.Dense(10, activation="softmax", name="probs")]
    inp = lib.Input((8, 8, 1), name="pixels")
    x = inp
    for layer in layers:
        x = layer(x)
    model = lib.Model(inp, x, name=f"{lib.__name__}_cnn")
    model.compile(lib.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained(digits):
    import keras
    import tf_keras

    out = {}
    for name, lib in (("keras3", keras), ("tf_keras", tf_keras)):
        m = _model(lib)
        m.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
        out[name] = m
    return out


def _kernels(model):
    return {l.name: np.asarray(l.kernel.numpy()) for l in model.layers if hasattr(l, "kernel")}


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_cluster_shares_values_keeps_names_and_leaves_the_caller_model_alone(trained, digits, kind):
    model = trained[kind]
    before = _kernels(model)
    lines = []
    res = cluster(model, (digits.x_train, digits.y_train), clusters=8, epochs=2, progress=lines.append)
    assert type(res.model).__module__.split(".")[0] == type(model).__module__.split(".")[0]
    assert [l.name for l in res.model.layers] == [l.name for l in model.layers]
    for name, w in _kernels(res.model).items():
        assert np.unique(w[w != 0]).size <= 8, name
    for name, w in _kernels(model).items():  # the caller's model is not clustered
        assert np.array_equal(w, before[name])
    rep = res.report
    assert [l["name"] for l in rep["layers"]] == ["conv", "fc", "probs"]
    assert all(l["distinct_nonzero_after"] <= 8 < l["distinct_nonzero_before"] for l in rep["layers"])
    assert {s["layer"] for s in rep["skipped"]} >= {"rescale"}
    assert "not clustered" in next(s["reason"] for s in rep["skipped"] if s["layer"] == "rescale")
    assert rep["accuracy_after"] > 0.8 and rep["best_epoch"] in (0, 1, 2)
    assert any(line.startswith("cluster epoch 1/2") for line in lines)
    # the weights it trained are the ones kept: fine-tuning moved the shared values, zeros aside
    if rep["best_epoch"]:
        assert rep["history"][rep["best_epoch"] - 1]["val_accuracy"] == pytest.approx(rep["accuracy_after"])


def test_cluster_after_prune_keeps_every_zero(trained, digits):
    pruned = deploykit.prune(trained["keras3"], (digits.x_train, digits.y_train), sparsity=0.75, epochs=2).model
    zeros = {n: w == 0 for n, w in _kernels(pruned).items()}
    res = deploykit.cluster(pruned, (digits.x_train, digits.y_train), clusters=4, epochs=2)
    for name, w in _kernels(res.model).items():
        assert np.array_equal(w == 0, zeros[name]), name  # not one zero regrew, not one weight became zero
        assert np.unique(w[w != 0]).size <= 4
    assert res.report["zeros_kept"]


def test_pipeline_prune_cluster_checks_every_artifact(trained, digits, tmp_path):
    res = deploykit.convert(trained["keras3"], ["tflite-int8", "onnx-fp32", "tfjs-uint8"],
                            data=(digits.x_eval, digits.y_eval), out=tmp_path / "out", bench=False,
                            train_data=(digits.x_train, digits.y_train), prune={"sparsity": 0.5, "epochs": 2},
                            cluster={"clusters": 16, "epochs": 1})
    assert res.ok, [a["verification"] for a in res.manifest["artifacts"]]
    steps = res.manifest["steps"]
    assert steps["cluster"]["report"]["eval"]["accuracy_after"] is not None
    for a in res.manifest["artifacts"]:
        assert a["settings"]["clusters"]["lost"] == [], a["target"]
        assert a["settings"]["sparsity"]["densified"] == [], a["target"]
    md = res.report_path.read_text()
    assert "## Weight clustering" in md and "kept their shared values" in md
    # the size against the dense model once, in the Pruning section (clustering came after pruning)
    assert md.count("- Download size (gzip) against the dense model") == 1
    assert md.index("- Download size (gzip)") < md.index("## Weight clustering")


def test_cluster_alone_reports_the_size_against_the_dense_model(trained, digits, tmp_path):
    import dataclasses

    from deploykit.targets import get_target

    old_opset = dataclasses.replace(get_target("onnx-int8-qdq"), name="onnx-qdq-opset13",
                                    options={**get_target("onnx-int8-qdq").options, "opset": 13})
    res = deploykit.convert(trained["keras3"], ["tflite-int8", "tflm-int8", old_opset], data=(digits.x_eval, digits.y_eval),
                            out=tmp_path / "out", bench=False, train_data=(digits.x_train, digits.y_train),
                            cluster={"clusters": 8, "epochs": 1})
    assert res.ok, [a["error"] for a in res.manifest["artifacts"]]
    refs = res.manifest["steps"]["dense_reference"]
    assert refs["tflite"] == refs["tflm"] and refs["tflite"]["target"] == "tflite-fp32" and refs["tflite"]["gzip_bytes"] > 0
    assert refs["onnx"]["target"] == "onnx-fp32" and refs["onnx"]["options"]["opset"] == 13  # the run's own options
    md = res.report_path.read_text()
    section = md[md.index("## Weight clustering"):]
    assert "- Download size (gzip) against the dense model's float32 file of the same format (tflite-fp32 " in section
    assert "tflite-int8 " in section and "tflm-int8 " in section


def test_an_artifact_of_the_unclustered_model_fails_the_check(trained, digits, tmp_path):
    """The check is not trivially true: the dense model's file does not hold the clustered kernels."""
    from deploykit.converters import tflite
    from deploykit.data import load_data
    from deploykit.models import load_model
    from deploykit.optimize.sparsity import check_clusters_survived, clustered_kernels, count_zeros
    from deploykit.targets import get_target

    res = cluster(trained["keras3"], (digits.x_train, digits.y_train), clusters=16, epochs=0)
    loaded = load_model(trained["keras3"])
    path = tmp_path / "dense.tflite"
    try:
        tflite.convert(loaded, get_target("tflite-int8"), load_data((digits.x_eval, digits.y_eval), loaded.inputs), path)
    finally:
        loaded.release()
    counts = count_zeros(path, shared_for=[k["size"] for k in clustered_kernels(res.report)])
    lost, unproven = check_clusters_survived(res.report, counts)
    assert [m.split("/")[0] for m in lost] == ["fc"]
    # conv (8, 3, 3, 1): 9 values per output channel; probs (10, 32): 10 per input column. An axis
    # too short to show 16 shared values may be the channel axis: said so, not claimed either way.
    assert sorted(unproven) == ["conv/kernel", "probs/kernel"]


def test_bad_cluster_input_is_one_clear_error_and_nothing_written(trained, digits, tmp_path):
    out = tmp_path / "o"
    train = (digits.x_train, digits.y_train)
    with pytest.raises(DataError, match="clustering fine-tunes the model and needs labelled training data"):
        deploykit.convert(trained["keras3"], ["tflite-fp32"], data=(digits.x_eval, digits.y_eval), out=out, cluster=16)
    with pytest.raises(UserError, match="clusters must be a whole number"):
        deploykit.convert(trained["keras3"], ["tflite-fp32"], data=(digits.x_eval, digits.y_eval), out=out,
                          cluster=1, train_data=train)
    with pytest.raises(UserError, match="unknown clustering setting"):
        deploykit.convert(trained["keras3"], ["tflite-fp32"], data=(digits.x_eval, digits.y_eval), out=out,
                          cluster={"n": 3}, train_data=train)
    with pytest.raises(DataError, match="no labels"):
        cluster(trained["keras3"], digits.x_train)
    assert not out.exists()


def test_cli_cluster_flags(trained, digits, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    deploy = Path(sys.executable).with_name("deploy")
    cmd = [str(deploy)] if deploy.exists() else [sys.executable, "-m", "deploykit.cli"]
    model = tmp_path / "m.keras"
    trained["keras3"].save(model)
    np.savez(tmp_path / "train.npz", x=digits.x_train, y=digits.y_train)
    np.savez(tmp_path / "eval.npz", x=digits.x_eval, y=digits.y_eval)
    bad = subprocess.run([*cmd, "convert", str(model), "-t", "tflite-fp32", "--data", str(tmp_path / "eval.npz"),
                          "--cluster-epochs", "2", "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--cluster-epochs only applies to clustering" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    ok = subprocess.run([*cmd, "convert", str(model), "-t", "tflite-int8", "--data", str(tmp_path / "eval.npz"),
                         "--train-data", str(tmp_path / "train.npz"), "--cluster", "8", "--cluster-epochs", "1",
                         "--no-bench", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "clustering: cluster epoch 1/1: loss" in ok.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rep = manifest["steps"]["cluster"]["report"]
    assert rep["clusters"] == 8 and rep["settings"]["epochs"] == 1
    assert manifest["artifacts"][0]["settings"]["clusters"]["lost"] == []


def test_tf_keras_mixed_precision_kernels_are_clustered_too(digits):
    """Its kernels are AutoCastVariables: the optimizer reads the constraint of the variable inside."""
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(tf_keras)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, verbose=0)
    assert type(model.get_layer("fc").kernel).__name__ == "AutoCastVariable"
    res = cluster(model, (digits.x_train, digits.y_train), clusters=16, epochs=2, patience=None)
    for name, w in _kernels(res.model).items():
        assert np.unique(w[w != 0]).size <= 16, name
    assert all(l["distinct_nonzero_after"] <= 16 for l in res.report["layers"])


def test_keras3_clone_keeps_an_auto_named_input_layer(digits):
    import keras

    inp = keras.Input((8, 8, 1))  # auto-named: input_layer*, its tensor keras_tensor*
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp)))
    model.compile("adam", "sparse_categorical_crossentropy")
    for fn in (lambda m: cluster(m, (digits.x_train, digits.y_train), clusters=4, epochs=0),
               lambda m: deploykit.prune(m, (digits.x_train, digits.y_train), sparsity=0.5, epochs=1)):
        assert [l.name for l in fn(model).model.layers] == [l.name for l in model.layers]


def test_cli_epochs_is_not_silently_ignored_with_cluster(trained, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    deploy = Path(sys.executable).with_name("deploy")
    model = tmp_path / "m.keras"
    trained["keras3"].save(model)
    proc = subprocess.run([str(deploy), "convert", str(model), "-t", "tflite-fp32", "--train-data", str(model),
                           "--cluster", "16", "--epochs", "1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "clustering's is --cluster-epochs" in proc.stderr
    proc = subprocess.run([str(deploy), "convert", str(model), "-t", "tflite-fp32", "--train-data", str(model),
                           "--cluster", "16", "--cluster-epochs", "-1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--cluster-epochs must be 0 or more" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_keras3_clone_keeps_dict_and_list_inputs_and_their_names():
    import keras

    from deploykit.optimize.prune import clone_keras3

    a, b = keras.Input((4,)), keras.Input((3,))  # auto-named
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    x = {"a": np.ones((2, 4), np.float32), "b": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for model, call in ((keras.Model({"a": a, "b": b}, out), x), (keras.Model([a, b], out), [x["a"], x["b"]])):
        clone = clone_keras3(model)
        assert [l.name for l in clone.layers] == [l.name for l in model.layers]
        np.testing.assert_allclose(np.asarray(clone(call)), np.asarray(model(call)), rtol=1e-6)


def test_cluster_then_qat_keeps_the_shared_values_in_the_int8_artifact(trained, digits, tmp_path):
    """Cluster-preserving QAT: tfmot's QAT trains every kernel again (thousands of values), so each is
    put back onto its clusters after every step; the int8 file holds at most 16 values per channel."""
    res = deploykit.convert(trained["tf_keras"], ["tflite-int8"], data=(digits.x_eval, digits.y_eval),
                            out=tmp_path / "out", bench=False, train_data=(digits.x_train, digits.y_train),
                            prune={"sparsity": 0.5, "epochs": 2}, cluster={"clusters": 16, "epochs": 1},
                            qat={"epochs": 2, "batch_size": 64})
    assert res.ok, [a["error"] for a in res.manifest["artifacts"]]
    qat = res.manifest["steps"]["qat"]["report"]
    assert qat["preserve_clusters"] and qat["path"] == "tfmot-qat+shared-value-projection"
    assert qat["kernel_values"] and all(v["values_after"] <= v["values_before"] <= 17 for v in qat["kernel_values"])
    assert res.manifest["model"]["source"].endswith("(pruned) (clustered) (PCQAT)")
    # each step's accuracy is its own model's: the clustered model's is the one QAT started from
    steps = res.manifest["steps"]
    assert steps["cluster"]["report"]["eval"]["accuracy_after"] == qat["eval"]["accuracy_before"]
    a = res.manifest["artifacts"][0]
    assert a["settings"]["clusters"]["lost"] == [] and a["settings"]["sparsity"]["densified"] == []
    md = res.report_path.read_text()
    assert "Cluster-preserving QAT (PCQAT" in md and "Shared values kept through QAT" in md
