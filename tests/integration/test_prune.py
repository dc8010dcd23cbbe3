"""Pruning end to end: real fine-tuning of tiny seeded models, real converters, zeros counted in the artifacts.

Models: a small CNN with Rescaling inside, as Keras 3 and tf_keras, Sequential
and functional. The first conv has 1 input channel (2:4 cannot apply, it must
be reported, not crash); the second has 8 (2:4 applies).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import deploykit

from deploykit.errors import DataError, UserError
from deploykit.optimize.prune import prune
from deploykit.optimize.structure import keep_count

EPOCHS = 2
SEED = 0
CONV_NAMES = ["rescale", "conv1", "conv2", "flatten", "fc", "probs"]


def _keras3(functional: bool = False, compiled: bool = True):
    import keras

    keras.utils.set_random_seed(SEED)
    L = keras.layers
    layers = [L.Rescaling(1 / 16, name="rescale"), L.Conv2D(8, 3, activation="relu", name="conv1"),
              L.Conv2D(8, 3, activation="relu", name="conv2"), L.Flatten(name="flatten"),
              L.Dense(16, activation="relu", name="fc"), L.Dense(10, activation="softmax", name="probs")]
    if functional:
        inp = keras.Input((8, 8, 1), name="pixels")
        x = inp
        for layer in layers:
            x = layer(x)
        model = keras.Model(inp, x, name="k3_functional")
    else:
        model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), *layers], name="k3_sequential")
    if compiled:
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _tf_keras(functional: bool = False):
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    L = tf_keras.layers
    layers = [L.Rescaling(1 / 16, name="rescale"), L.Conv2D(8, 3, activation="relu", name="conv1"),
              L.Conv2D(8, 3, activation="relu", name="conv2"), L.Flatten(name="flatten"),
              L.Dense(16, activation="relu", name="fc"), L.Dense(10, activation="softmax", name="probs")]
    if functional:
        inp = tf_keras.Input((8, 8, 1), name="pixels")
        x = inp
        for layer in layers:
            x = layer(x)
        model = tf_keras.Model(inp, x, name="tk_functional")
    else:
        model = tf_keras.Sequential([L.InputLayer(input_shape=(8, 8, 1), name="pixels"), *layers], name="tk_sequential")
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained(digits):
    """Dense, trained models (3 epochs): Keras 3 Sequential and tf_keras functional."""
    k3 = _keras3()
    k3.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    tk = _tf_keras(functional=True)
    tk.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    return {"keras3": k3, "tf_keras": tk}


def _train(digits):
    return (digits.x_train, digits.y_train)


def _val(digits):
    return (digits.x_eval, digits.y_eval)


def _kernel_sparsities(model) -> dict[str, float]:
    out = {}
    for layer in model.layers:
        for attr in ("kernel",):
            var = getattr(layer, attr, None)
            if var is not None and hasattr(var, "numpy"):
                w = np.asarray(var.numpy())
                out[layer.name] = float(np.mean(w == 0))
    return out


def _assert_exact_counts(report, sparsity):
    for layer in report["layers"]:
        for k in layer["kernels"]:
            assert k["zeros"] == k["size"] - keep_count(k["size"], sparsity), (layer["name"], k)


@pytest.fixture(scope="module")
def k3_unstructured(trained, digits):
    lines: list[str] = []
    before = [w.copy() for w in trained["keras3"].get_weights()]
    result = prune(trained["keras3"], _train(digits), sparsity=0.8, epochs=EPOCHS, batch_size=64,
                   validation_data=_val(digits), progress=lines.append, seed=SEED)
    return result, lines, before


def test_keras3_unstructured_reaches_the_exact_target(k3_unstructured, trained):
    import keras

    result, lines, before = k3_unstructured
    report, model = result.report, result.model
    assert isinstance(model, keras.Model) and model is not trained["keras3"]
    assert report["path"] == "keras3-native-masks" and report["framework"] == "keras3"
    assert [l.name for l in model.layers] == CONV_NAMES
    assert type(model.get_layer("rescale")).__name__ == "Rescaling"
    assert [l["name"] for l in report["layers"]] == ["conv1", "conv2", "fc", "probs"]
    _assert_exact_counts(report, 0.8)
    assert {s["layer"]: s["reason"] for s in report["skipped"]}["rescale"].startswith("preprocessing layer")
    # the caller's model is untouched
    for a, b in zip(before, trained["keras3"].get_weights()):
        np.testing.assert_array_equal(a, b)
    # progress: one line per epoch; history; early-stopping bookkeeping
    assert len(lines) == report["epochs_run"] == len(report["history"]) == EPOCHS
    assert lines[-1].startswith(f"prune epoch {EPOCHS}/{EPOCHS}: loss ") and "sparsity 80.00%" in lines[-1]
    assert report["history"][-1]["at_target"] and report["best_epoch"] == EPOCHS
    assert report["final_masks_forced"] is False
    t = report["totals"]
    assert t["zeros_before"] == 0 and t["zeros_after"] >= t["pruned_parameters"] * 0.79
    assert t["gzip_bytes_after"] < 0.5 * t["gzip_bytes_before"] and t["raw_bytes_after"] == t["raw_bytes_before"]
    assert report["accuracy_before"] > 0.85 and report["accuracy_after"] > 0.5
    assert report["settings"]["training_settings_from"] == "model compile config"
    assert report["settings"]["optimizer"] == "Adam" and report["settings"]["learning_rate"] == pytest.approx(1e-2)
    json.dumps(report)  # JSON-able as is
    # the weights the model computes with are the ones reported
    assert _kernel_sparsities(model)["fc"] == pytest.approx(report["layers"][2]["achieved_sparsity"])


def test_keras3_functional_2_4_pattern_and_skipped_first_conv(digits):
    model = _keras3(functional=True, compiled=False)
    with pytest.raises(UserError, match=r"saved without compile\(\)\); pass loss="):
        prune(model, _train(digits), structure="2:4", epochs=1)
    result = prune(model, _train(digits), structure="2:4", epochs=1, batch_size=64,
                   loss="sparse_categorical_crossentropy", learning_rate=1e-2, seed=SEED)
    report = result.report
    assert [l.name for l in result.model.layers][1:] == CONV_NAMES
    skipped = {s["layer"]: s["reason"] for s in report["skipped"]}
    assert skipped["conv1"] == "2:4 needs the input-channel count divisible by 4, this kernel has 1"
    assert [l["name"] for l in report["layers"]] == ["conv2", "fc", "probs"]
    for layer in report["layers"]:
        assert abs(layer["achieved_sparsity"] - 0.5) <= 0.01
    conv2 = np.asarray(result.model.get_layer("conv2").kernel.numpy())  # [h, w, in, out]
    groups = np.transpose(conv2, (3, 0, 1, 2)).reshape(-1, 4)  # 4 consecutive input channels
    assert ((groups == 0).sum(axis=1) >= 2).all()
    fc = np.asarray(result.model.get_layer("fc").kernel.numpy())  # [in, out]
    assert ((fc.T.reshape(-1, 4) == 0).sum(axis=1) >= 2).all()
    assert report["settings"]["training_settings_from"] == "arguments"


def test_keras3_layers_inside_wrappers_are_pruned_and_their_zeros_survive(tmp_path):
    """TimeDistributed(Dense) and Bidirectional(GRU) kernels stayed dense ("no prunable kernel"): they are
    pruned now, under wrapper/inner names, and the survival check finds their zeros in the file."""
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(256, 6, 4)).astype("float32")
    y = (x[:, :, 0].sum(1) > 0).astype("int64")
    inp = keras.Input((6, 4), name="seq")
    h = keras.layers.TimeDistributed(keras.layers.Dense(8, name="d"), name="td")(inp)
    h = keras.layers.Bidirectional(keras.layers.GRU(8, name="g"), name="bi")(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    result = deploykit.convert(model, ["onnx-fp32"], data=(x, y), out=tmp_path / "o", bench=False,
                               prune={"sparsity": 0.6, "epochs": 2}, train_data=(x, y))
    pruning = result["steps"]["prune"]["report"]
    names = [layer["name"] for layer in pruning["layers"]]
    assert names == ["td/d", "bi/forward_g", "bi/backward_g", "out"], names
    assert all(abs(layer["achieved_sparsity"] - 0.6) < 0.02 for layer in pruning["layers"]), pruning["layers"]
    art = result.artifact("onnx-fp32")
    assert art["status"] == "ok", art["error"]


@pytest.fixture(scope="module")
def tk_unstructured(trained, digits):
    return prune(trained["tf_keras"], _train(digits), sparsity=0.8, epochs=EPOCHS, batch_size=64,
                 validation_data=_val(digits), seed=SEED)


def test_tf_keras_goes_through_tfmot_and_comes_back_stripped(tk_unstructured, trained, digits):
    import tf_keras

    result = tk_unstructured
    model, report = result.model, result.report
    assert isinstance(model, tf_keras.Model) and report["path"] == "tfmot"
    names = [l.name for l in model.layers]
    assert names == ["pixels", *CONV_NAMES]  # functional: the input layer is a layer
    assert not any("prune" in type(l).__name__.lower() or l.name.startswith("prune_low_magnitude") for l in model.layers)
    assert type(model.get_layer("rescale")).__name__ == "Rescaling"
    assert not [w.name for w in model.weights if "prune_low_magnitude" in w.name]  # checkpoints find c1/kernel
    _assert_exact_counts(report, 0.8)
    assert report["accuracy_after"] > 0.5
    # compiled, as the Keras 3 path's model is: cluster(prune(m).model) and evaluate() need its loss
    x, y = _val(digits)
    loss_value, accuracy = model.evaluate(x, y, verbose=0)
    # with metrics of its own: the fine-tune's carried their running totals into this first evaluate()
    assert loss_value > 0 and accuracy == pytest.approx(np.mean(model.predict(x, verbose=0).argmax(1) == y), abs=1e-6)
    # the caller's model was not pruned
    assert _kernel_sparsities(trained["tf_keras"])["fc"] < 0.05
    json.dumps(report)


def test_a_pruned_tf_keras_model_evaluates_with_fresh_metrics(digits):
    """The returned model was compiled with the fine-tune's own metric objects, whose running totals
    carried into its first evaluate() (0.6702 for an accuracy of 0.68)."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.layers.Flatten(input_shape=(8, 8, 1)), tf_keras.layers.Dense(32, activation="relu"),
                                 tf_keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="acc")])
    model.fit(digits.x_train, digits.y_train, epochs=1, verbose=0)
    pruned = prune(model, _train(digits), sparsity=0.5, epochs=1, seed=SEED).model
    x, y = _val(digits)
    accuracy = pruned.evaluate(x, y, verbose=0)[1]
    assert accuracy == pytest.approx(np.mean(pruned.predict(x, verbose=0).argmax(1) == y), abs=1e-6)


def test_keras3_and_tf_keras_prune_the_same_counts(k3_unstructured, tk_unstructured):
    k3 = {l["name"]: [(k["size"], k["zeros"]) for k in l["kernels"]] for l in k3_unstructured[0].report["layers"]}
    tk = {l["name"]: [(k["size"], k["zeros"]) for k in l["kernels"]] for l in tk_unstructured.report["layers"]}
    assert k3 == tk


def test_tf_keras_sequential_2_4(digits):
    import tf_keras

    model = _tf_keras(functional=False)
    result = prune(model, _train(digits), structure="2:4", epochs=1, batch_size=64, seed=SEED)
    assert isinstance(result.model, tf_keras.Sequential)
    assert [l.name for l in result.model.layers] == CONV_NAMES
    assert {s["layer"] for s in result.report["skipped"]} >= {"rescale", "conv1"}
    for layer in result.report["layers"]:
        assert abs(layer["achieved_sparsity"] - 0.5) <= 0.01, layer


def test_errors_come_before_any_training(trained, digits):
    k3 = trained["keras3"]
    with pytest.raises(UserError, match=r"sparsity must be a fraction in \(0, 1\)"):
        prune(k3, _train(digits), sparsity=1.0)
    with pytest.raises(UserError, match=r"sparsity must be a fraction in \(0, 1\)"):
        prune(k3, _train(digits), sparsity=0)
    with pytest.raises(UserError, match="pass sparsity="):
        prune(k3, _train(digits))
    with pytest.raises(UserError, match="2:4 structure prunes exactly 50%"):
        prune(k3, _train(digits), sparsity=0.8, structure="2:4")
    with pytest.raises(UserError, match="choose one of: polynomial, constant"):
        prune(k3, _train(digits), sparsity=0.5, schedule="cubic")
    with pytest.raises(UserError, match="choose one of: unstructured, 2:4, block"):
        prune(k3, _train(digits), sparsity=0.5, structure="channel")
    with pytest.raises(DataError, match="has no labels 'y'"):
        prune(k3, digits.x_train, sparsity=0.5)
    with pytest.raises(UserError, match="Keras 3 or tf_keras model"):
        prune("model.keras", _train(digits), sparsity=0.5)
    import tf_keras

    class Net(tf_keras.Model):  # Keras's own ValueError about clone_function surfaced before
        def __init__(self):
            super().__init__()
            self.dense = tf_keras.layers.Dense(10, activation="softmax")

        def call(self, t):
            return self.dense(tf_keras.layers.Flatten()(t))

    net = Net()
    net(digits.x_train[:2])
    with pytest.raises(UserError, match="is subclassed: tfmot prunes a model by rebuilding it layer by layer"):
        prune(net, _train(digits), sparsity=0.5, loss="sparse_categorical_crossentropy")

    import keras

    only_pre = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 16, name="rescale"),
                                 keras.layers.Flatten(name="flat")])
    with pytest.raises(UserError, match=r"no layer of this model can be pruned \(unstructured\): rescale: preprocessing"):
        prune(only_pre, _train(digits), sparsity=0.5, loss="sparse_categorical_crossentropy")
    one_channel = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(10, 3, name="c"),
                                    keras.layers.GlobalAveragePooling2D(name="gap")])
    with pytest.raises(UserError, match="c: 2:4 needs the input-channel count divisible by 4"):
        prune(one_channel, _train(digits), structure="2:4", loss="sparse_categorical_crossentropy")
    import tf_keras

    for lib in (keras, tf_keras):  # one block covering a whole kernel would keep it whole: nothing pruned
        small = lib.Sequential([lib.Input((12,)), lib.layers.Dense(6, name="d"), lib.layers.Dense(3, name="out")])
        with pytest.raises(UserError, match=r"no layer of this model can be pruned \(block\): d: block 16x4 is larger than this kernel \(12, 6\)"):
            prune(small, (np.zeros((8, 12), "float32"), np.zeros(8, "int64")), sparsity=0.5, structure="block",
                  block_size=(16, 4), loss="sparse_categorical_crossentropy")
    regression = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(64, name="d")])
    regression.compile(optimizer="adam", loss="mse")
    with pytest.raises(DataError, match=r"targets 'y' of shape \(\d+, 8\) do not fit the model's output \(None, 64\)"):
        prune(regression, (digits.x_train, digits.x_train.reshape(len(digits.x_train), -1)[:, :8]), sparsity=0.5)
    bad = digits.x_train.reshape(len(digits.x_train), -1).copy()
    bad[3, 5] = np.nan
    with pytest.raises(DataError, match=r"targets 'y' hold NaN or inf"):
        prune(regression, (digits.x_train, bad), sparsity=0.5)
    nan = keras.models.clone_model(k3)
    weights = k3.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = np.nan
    nan.set_weights(weights)
    with pytest.raises(UserError, match=r"holds 1 NaN value\(s\)"):
        prune(nan, _train(digits), sparsity=0.5)


def test_constant_schedule_and_early_stopping_among_target_epochs(digits):
    model = _keras3()
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, verbose=0)
    result = prune(model, _train(digits), sparsity=0.6, schedule="constant", epochs=3, batch_size=128,
                   patience=0, seed=SEED)
    r = result.report
    assert r["settings"]["schedule"]["kind"] == "constant"
    assert all(h["at_target"] for h in r["history"])  # the first update comes at the first step
    assert r["settings"]["schedule"]["begin_step"] == 1
    # patience 0: stops at the first at-target epoch that does not beat the best
    assert 2 <= r["epochs_run"] <= 3 and r["best_epoch"] is not None
    _assert_exact_counts(r, 0.6)


# ----------------------------------------------------------------------------- artifacts
def test_sparsity_survives_tflite_and_onnx_including_int8(k3_unstructured, digits, tmp_path):
    """Pruning then int8 keeps zeros zero: every pruned kernel is found, as sparse, in every artifact."""
    from deploykit.converters import onnx as onnx_conv
    from deploykit.converters import tflite
    from deploykit.data import load_data
    from deploykit.models import load_model
    from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros
    from deploykit.targets import get_target

    result = k3_unstructured[0]
    loaded = load_model(result.model)
    calib = load_data((digits.x_eval, digits.y_eval), loaded.inputs)
    failures = {}
    try:
        for name, conv, suffix in [("tflite-fp32", tflite, ".tflite"), ("tflite-int8", tflite, ".tflite"),
                                   ("onnx-fp32", onnx_conv, ".onnx"), ("onnx-int8-qdq", onnx_conv, ".onnx"),
                                   ("onnx-int8-qop", onnx_conv, ".onnx"), ("onnx-int8-dynamic", onnx_conv, ".onnx")]:
            path = tmp_path / f"{name}{suffix}"
            conv.convert(loaded, get_target(name), calib, path)
            counts = count_zeros(path)
            assert counts["total_zeros"] >= result.report["totals"]["zeros_after"] * 0.99, name
            # weights and biases only: per-channel zero points and shape constants are not counted as pruned zeros
            assert counts["total_zeros"] <= result.report["totals"]["zeros_after"] + 16, (name, counts["total_zeros"])
            sizes_seen = failures.setdefault("_sizes", {})  # every ONNX file holds the same weights and biases
            sizes_seen[name] = counts["total_size"]
            failures[name] = check_sparsity_survived(result.report, counts)
            if "int8" in name:  # the kernels really are stored as 8-bit integers
                sizes = {k["size"] for l in result.report["layers"] for k in l["kernels"]}
                assert any(t["size"] in sizes and t["dtype"] in ("int8", "uint8") for t in counts["tensors"]), name
    finally:
        loaded.release()
    sizes = failures.pop("_sizes")
    onnx_sizes = [n for k, n in sizes.items() if k.startswith("onnx")]  # give or take a scalar constant
    assert max(onnx_sizes) - min(onnx_sizes) <= 2, sizes
    assert failures == {name: [] for name in failures}


def test_count_zeros_reads_tflite_sparse_format(k3_unstructured, tmp_path):
    """EXPERIMENTAL_SPARSITY stores only non-zero blocks: the zeros are the dense size minus what is stored."""
    import tensorflow as tf

    from deploykit.models import load_model
    from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros

    result = k3_unstructured[0]
    loaded = load_model(result.model)
    try:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(loaded.saved_model_dir()))
        conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        path = tmp_path / "sparse.tflite"
        path.write_bytes(conv.convert())
    finally:
        loaded.release()
    counts = count_zeros(path)
    assert any(t.get("sparse_format") for t in counts["tensors"])
    assert check_sparsity_survived(result.report, counts) == []


def test_survival_check_flags_a_dense_artifact(k3_unstructured, trained, digits, tmp_path):
    from deploykit.converters import tflite
    from deploykit.data import load_data
    from deploykit.models import load_model
    from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros
    from deploykit.targets import get_target

    loaded = load_model(trained["keras3"])  # the dense model: as if conversion had densified the kernels
    try:
        path = tmp_path / "dense.tflite"
        tflite.convert(loaded, get_target("tflite-fp32"), load_data((digits.x_eval, digits.y_eval), loaded.inputs), path)
    finally:
        loaded.release()
    failures = check_sparsity_survived(k3_unstructured[0].report, count_zeros(path))
    assert len(failures) == 4 and all("was densified in the tflite artifact" in f for f in failures)


# ----------------------------------------------------------------------------- pipeline and CLI
def test_convert_with_pruning_checks_every_artifact(keras3_path, data_npz, digits, tmp_path):
    import deploykit

    progress: list[str] = []
    result = deploykit.convert(
        keras3_path, ["tflite-int8", "onnx-int8-qdq", "tfjs-uint8"], data=data_npz, out=tmp_path / "out", bench=False,
        prune={"sparsity": 0.8, "epochs": 2, "batch_size": 64}, train_data=(digits.x_train, digits.y_train),
        progress=progress.append,
    )
    assert result.ok, [a["error"] for a in result.artifacts]
    report = result["steps"]["prune"]["report"]
    assert report["path"] == "keras3-native-masks" and report["settings"]["training_settings_from"] == "model compile config"
    assert result["model"]["source"].endswith("(pruned)") and result["model"]["path"] == str(keras3_path)
    for a in result.artifacts:
        s = a["settings"]["sparsity"]
        assert s["densified"] == [] and s["total_zeros"] >= report["totals"]["zeros_after"] * 0.99, a["target"]
    assert any(p.startswith("pruning: prune epoch 2/2") for p in progress)
    # accuracy before and after pruning on the artifacts' own evaluation data; after conversion per artifact
    ev = report["eval"]
    assert ev["samples"] == len(digits.x_eval) and 0 < ev["accuracy_before"] <= 1 and 0 < ev["accuracy_after"] <= 1
    for a in result.artifacts:
        assert a["verification"]["reference_accuracy"] == pytest.approx(ev["accuracy_after"])
    md = (result.out / "report.md").read_text()
    html = (result.out / "report.html").read_text()
    for text in ("## Pruning", "| Layer | Class | Weight | Target | Achieved | Zeros |", "all pruned kernels kept their zeros",
                 "Kept dense", "Rescaling", "Fine-tuning: 2 epoch(s); kept the weights of epoch",
                 "| Epoch | Loss | Val accuracy | Val −log p | Sparsity |", "| 2"):
        assert text in md, text
    assert "<h2>Pruning</h2>" in html and "kept their zeros" in html
    # The dense model's float32 file per format, converted before pruning: what "N x smaller" is measured against.
    refs = result["steps"]["dense_reference"]
    assert {f: r["target"] for f, r in refs.items()} == {"tflite": "tflite-fp32", "onnx": "onnx-fp32", "tfjs": "tfjs-fp32"}
    from deploykit.artifacts import gzip_size
    from deploykit.converters import tflite
    from deploykit.models import load_model
    from deploykit.targets import get_target

    dense = load_model(keras3_path)
    try:  # the same conversion of the file the user gave (the pruned model's fp32 gzips to about a third)
        tflite.convert(dense, get_target("tflite-fp32"), None, tmp_path / "dense.tflite")
    finally:
        dense.release()
    assert refs["tflite"]["gzip_bytes"] == pytest.approx(gzip_size(tmp_path / "dense.tflite"), rel=0.01)
    line = next(l for l in md.splitlines() if l.startswith("- Download size (gzip) against the dense model"))
    for a in result.artifacts:
        ratio = a["gzip_bytes"] / refs[a["format"]]["gzip_bytes"]
        assert ratio < 0.6 and f"{a['target']} " in line and f"**{ratio:.3f}×**" in line, (a["target"], line)


def test_pruning_settings_are_refused_before_any_work(keras3_path, data_npz, digits, tmp_path):
    import deploykit

    out = tmp_path / "never"
    train = (digits.x_train, digits.y_train)
    with pytest.raises(UserError, match="needs labelled training data; pass --train-data"):
        deploykit.convert(keras3_path, ["tflite-fp32"], data=data_npz, out=out, prune=0.8)
    with pytest.raises(UserError, match="only used to fine-tune while pruning"):
        deploykit.convert(keras3_path, ["tflite-fp32"], data=data_npz, out=out, train_data=train)
    with pytest.raises(UserError, match=r"sparsity must be a fraction in \(0, 1\)"):
        deploykit.convert(keras3_path, ["tflite-fp32"], data=data_npz, out=out, prune=1.5, train_data=train)
    with pytest.raises(UserError, match="unknown pruning setting"):
        deploykit.convert(keras3_path, ["tflite-fp32"], data=data_npz, out=out, prune={"sparsity": 0.5, "epoch": 3},
                          train_data=train)
    with pytest.raises(DataError, match="has no labels 'y'"):
        deploykit.convert(keras3_path, ["tflite-fp32"], data=data_npz, out=out, prune=0.5, train_data=digits.x_train)
    progress: list[str] = []
    with pytest.raises(DataError, match="label 14 is out of range"):  # found before any conversion (dense reference too)
        deploykit.convert(keras3_path, ["tflite-fp32", "onnx-fp32"], data=data_npz, out=out, prune=0.5,
                          train_data=(digits.x_train, digits.y_train + 5), progress=progress.append)
    assert not any("convert" in p for p in progress), progress
    assert not out.exists()


@pytest.mark.slow
def test_cli_prune_flags(keras3_path, data_npz, digits, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    deploy = Path(sys.executable).with_name("deploy")
    cmd = [str(deploy)] if deploy.exists() else [sys.executable, "-m", "deploykit.cli"]
    train = tmp_path / "train.npz"
    np.savez(train, x=digits.x_train, y=digits.y_train)
    out = tmp_path / "cli"
    proc = subprocess.run([*cmd, "convert", str(keras3_path), "-t", "tflite-fp32", "--data", str(data_npz), "--no-bench",
                           "--train-data", str(train), "--prune-structure", "2:4", "--epochs", "1", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pruning: prune epoch 1/1: loss" in proc.stderr  # a log keeps every epoch, not just the spinner's last
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["steps"]["prune"]["report"]
    assert report["settings"]["structure"] == "2:4" and report["settings"]["epochs"] == 1
    assert manifest["artifacts"][0]["settings"]["sparsity"]["densified"] == []
    bad = subprocess.run([*cmd, "convert", str(keras3_path), "-t", "tflite-fp32", "--epochs", "3", "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--epochs applies only to the pruning, clustering and QAT fine-tunes" in bad.stderr


def test_tf_keras_custom_layer_whose_config_drops_its_name_keeps_its_weights(digits):
    """Its copy by config got a fresh name, so its trained weights were not copied back: it restarted from init."""
    import tf_keras

    L = tf_keras.layers

    class Scale(L.Layer):
        def __init__(self, **kw):  # tf_keras' automatic config of this layer is {}
            super().__init__(**kw)

        def build(self, shape):
            self.w = self.add_weight(name="w", shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1), name="pixels"), L.Flatten(name="flat"), Scale(name="gain"),
                                 L.Dense(10, activation="softmax", name="probs")])
    model.get_layer("gain").set_weights([np.linspace(0.5, 2.0, 64).astype("float32")])
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    result = prune(model, (digits.x_train, digits.y_train), sparsity=0.5, epochs=1, learning_rate=1e-9, seed=0)
    scale = next(l for l in result.model.layers if l.name == "gain")
    np.testing.assert_allclose(scale.get_weights()[0], np.linspace(0.5, 2.0, 64), atol=1e-4)
    assert "get_config" not in Scale.__dict__


def test_keras3_custom_layer_taking_kw_keeps_its_name_through_pruning_and_clustering(digits):
    """Keras 3's automatic config of a layer whose __init__ takes **kw has no name either: the clone
    renamed it, and the pruned model's output 'digit' came back as 'temp'."""
    import keras

    @keras.saving.register_keras_serializable(package="deploykit_tests")
    class Temp(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)

        def call(self, x):
            return keras.ops.softmax(x / 2.0)

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="pixels")
    h = keras.layers.Dense(32, activation="relu", name="trunk")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 16)(inp)))
    model = keras.Model(inp, [Temp(name="digit")(keras.layers.Dense(10, name="logits")(h)),
                              keras.layers.Dense(1, name="ink")(h)])
    model.compile("adam", ["sparse_categorical_crossentropy", "mse"])
    data = (digits.x_train[:256], digits.y_train[:256])
    model.fit(data[0], [data[1], data[0].mean(axis=(1, 2, 3))[:, None]], epochs=30, verbose=0)  # trained: labels fit it
    pruned = prune(model, data, sparsity=0.5, epochs=1, seed=0, output="digit").model
    clustered = deploykit.cluster(model, data, clusters=8, epochs=1, seed=0, output="digit").model
    for got in (pruned, clustered):
        assert got.output_names == ["digit", "ink"]
        assert [l.name for l in got.layers] == [l.name for l in model.layers]


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_a_frozen_layer_is_kept_dense_and_said_why(digits, kind):
    """A trainable=False layer (a pretrained backbone held fixed) was zeroed to the target like any other,
    with its other weights never adapted, and listed as pruned; clustering did the same."""
    if kind == "keras3":
        import keras
    else:
        import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 16),
                              keras.layers.Conv2D(8, 3, activation="relu", name="backbone"),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax", name="head")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
    model.get_layer("backbone").trainable = False
    model.compile("adam", "sparse_categorical_crossentropy")
    before = model.get_layer("backbone").get_weights()
    data = (digits.x_train[:256], digits.y_train[:256])
    for step, result in (("pruned", prune(model, data, sparsity=0.5, epochs=1, seed=0)),
                         ("clustered", deploykit.cluster(model, data, clusters=4, epochs=1, seed=0))):
        for got, want in zip(result.model.get_layer("backbone").get_weights(), before):
            np.testing.assert_array_equal(got, want)
        (frozen,) = [s for s in result.report["skipped"] if s["layer"] == "backbone"]
        verb = {"pruned": "prune", "clustered": "cluster"}[step]
        assert frozen["reason"].startswith(f"frozen (trainable=False): fine-tuning cannot adapt it, so it is not {step}")
        assert frozen["reason"].endswith(f"set trainable = True before saving to {verb} it")
        assert np.mean(result.model.get_layer("head").get_weights()[0] == 0) >= (0.49 if step == "pruned" else 0)


def test_segmentation_labels_are_scored_per_pixel_in_pruning_and_verification(tmp_path):
    """Per-pixel labels crashed pruning (they were cut to the first pixel: sparse CE saw (N,) against (N, H, W, C)).
    Now fine-tuning trains and tracks accuracy on every pixel, and each artifact is scored per pixel."""
    import keras

    import deploykit

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (96, 8, 8, 1)).astype("float32")
    y = (x[..., 0] > 100).astype(np.int64) + (x[..., 0] > 200)  # 3 classes per pixel
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1 / 255)(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    model = keras.Model(inp, keras.layers.Conv2D(3, 1, activation="softmax", name="seg")(h))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5, verbose=0)
    keras_acc = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))

    plain = deploykit.convert(model, ["tflite-fp32"], data=(x, np.eye(3)[y]), out=tmp_path / "plain", bench=False)
    v = plain.artifact("tflite-fp32")["verification"]
    assert v["scored_output"] and v["reference_accuracy"] == pytest.approx(keras_acc)
    assert "64 labelled positions" in v["accuracy_per"]

    pruned = deploykit.convert(model, ["tflite-int8"], data=(x, y), out=tmp_path / "pruned", bench=False,
                               prune={"sparsity": 0.5, "epochs": 1}, train_data=(x, y))
    art = pruned.artifact("tflite-int8")
    assert art["status"] == "ok", art.get("error")
    assert "labelled positions" in art["verification"]["accuracy_per"]
    assert art["verification"]["accuracy"] == pytest.approx(art["verification"]["reference_accuracy"], abs=0.01)
    assert pruned.manifest["steps"]["prune"]["report"]["eval"]["accuracy_before"] == pytest.approx(keras_acc, abs=1e-6)


def test_keras3_pruning_keeps_an_adapted_normalization():
    """The pruning clone reset Normalization to mean 0 / variance 1: 64 % -> 32 % at 10 % sparsity."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 4)) * [1, 10, 100, 1000] + [5, -50, 500, 5000]).astype("float32")
    y = ((x[:, 1] + 50) / 10 + (x[:, 3] - 5000) / 1000 > 0).astype("int64") + ((x[:, 2] - 500) / 100 > 0.5)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input((4,)), norm, keras.layers.Dense(32, activation="relu"), keras.layers.Dense(32),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    result = prune(model, (x, y), sparsity=0.1, epochs=1, validation_data=(x, y))
    report = result.report
    assert report["accuracy_before"] > 0.8
    assert report["accuracy_after"] >= report["accuracy_before"] - 0.05, report


def _plain_subclassed_model():
    """A subclassed Keras 3 model without a config: pruning cannot clone it, so it is pruned in place."""
    import keras

    class Plain(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.out(self.hidden(x))

    return Plain()


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_convert_with_pruning_leaves_the_callers_model_as_it_was(tmp_path, kind):
    """A renamed Input in the clone sent functional models down the in-place path, and a subclassed
    model (no config to rebuild it) is pruned in place: both came back to the caller pruned."""
    import keras

    import deploykit

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 6)).astype("float32"), rng.integers(0, 3, 60)
    if kind == "subclassed":
        model = _plain_subclassed_model()
        model(x[:1])
    else:
        inp = keras.Input((6,))
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(16, activation="relu")(inp)))
    model.compile("adam", "sparse_categorical_crossentropy")
    before = [np.array(w) for w in model.get_weights()]
    result = deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / kind, bench=False,
                               prune={"sparsity": 0.5, "epochs": 1}, train_data=(x, y))
    assert result.ok
    assert result["steps"]["prune"]["report"]["in_place"] == (kind == "subclassed")
    assert all(np.array_equal(b, a) for b, a in zip(before, model.get_weights()))
    assert result["steps"]["prune"]["report"]["totals"]["zeros_after"] > 0  # and the artifact's model was pruned
    ref = result["steps"]["dense_reference"]["tflite"]  # no dense copy of a model pruned in place: said, not measured
    assert ("gzip_bytes" in ref) == (kind != "subclassed") and ("skipped" in ref) == (kind == "subclassed")


def test_block_that_does_not_tile_a_kernel_is_named_off_target(digits):
    """(24, 10) kernel, 16x4 blocks: partial edge blocks put the share of zeros off the 50 % target (67 % here)."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(24, activation="relu", name="d"),
                              keras.layers.Dense(10, activation="softmax", name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    report = prune(model, (x, y), sparsity=0.5, structure="block", block_size=(16, 4), epochs=1).report
    off = report["off_target"]
    assert any(s.startswith("`out` kernel (24, 10) reached 67% against the 50% target") and "block 16x4 does not tile it" in s
               for s in off), off
    skipped = {s["layer"]: s["reason"] for s in report["skipped"]}
    assert skipped["d"] == "block 16x4 is larger than this kernel (12, 24)"  # 12 rows < 16: kept dense, listed
    # a (9, 4) kernel is tiled by 9 blocks of 1x4: 7 of 9 is as close to 80 % as whole blocks come
    few = keras.Sequential([keras.Input((9,)), keras.layers.Dense(4, activation="softmax", name="few")])
    few.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    (line,) = prune(few, (x[:, :9], y), sparsity=0.8, structure="block", block_size=(1, 4), epochs=1).report["off_target"]
    assert line.startswith("`few` kernel (9, 4) reached 78% against the 80% target (block 1x4 tiles it in 9 blocks"), line


@pytest.mark.parametrize("lib_name", ["keras", "tf_keras"])
def test_regression_model_is_pruned_by_validation_loss(lib_name, tmp_path):
    """A model trained with a regression loss has no accuracy: the fine-tune keeps the at-target epoch
    with the lowest validation loss, float targets of any shape that fits the output are taken, and
    the report speaks of the loss."""
    import importlib

    lib = importlib.import_module(lib_name)
    rng = np.random.default_rng(SEED)
    x = rng.uniform(0, 255, (600, 12)).astype("float32")
    y = np.tanh((x / 255 - 0.5) @ rng.normal(size=(12, 2))).astype("float32")
    lib.utils.set_random_seed(SEED)
    model = lib.Sequential([lib.Input((12,)), lib.layers.Rescaling(1 / 255, offset=-0.5, name="scale"),
                            lib.layers.Dense(48, activation="relu", name="d1"), lib.layers.Dense(2, name="out")])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=15, verbose=0)
    result = prune(model, (x, y), sparsity=0.7, epochs=5, seed=SEED)
    r = result.report
    assert r["score"] == "val_loss" and r["accuracy_before"] is None and r["accuracy_after"] is None
    at_target = [h for h in r["history"] if h["at_target"]]
    assert at_target and all("val_loss" in h and "val_accuracy" not in h for h in r["history"])
    assert r["best_epoch"] == min(at_target, key=lambda h: h["val_loss"])["epoch"]
    assert r["val_loss_after"] == pytest.approx(min(h["val_loss"] for h in at_target), rel=1e-4)
    pred = result.model.predict(x[-60:], verbose=0)  # held-out split is random: the loss is recomputed on known rows
    assert np.isfinite(pred).all() and float(np.mean((pred - y[-60:]) ** 2)) < 0.2
    assert sorted(l["name"] for l in r["layers"]) == ["d1", "out"]
    assert all(abs(l["achieved_sparsity"] - 0.7) < 0.01 for l in r["layers"])

    path = tmp_path / "reg.keras"
    model.save(path)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    # the same .npz for calibration: its 'y' are the model's targets, not labels to score
    res = deploykit.convert(str(path), targets=["tflite-fp32"], data=str(tmp_path / "train.npz"), out=str(tmp_path / "out"),
                            prune={"sparsity": 0.7, "epochs": 4}, train_data=str(tmp_path / "train.npz"))
    assert res.ok, res.artifact("tflite-fp32")["verification"]["failures"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Validation loss (mse) on the held-out training split: dense" in text
    assert "| Epoch | Loss | Val loss | Sparsity |" in text and "(lowest validation loss)" in text
    # the dense model's error on the evaluation data, before pruning: what each artifact is held against
    ev = res["steps"]["prune"]["report"]["eval"]
    dense_mae = float(np.mean(np.abs(model.predict(x, verbose=0) - y)))
    assert ev["mae_before"] == pytest.approx(dense_mae, rel=1e-4) and ev["accuracy_before"] is None
    tfl = res.artifact("tflite-fp32")["verification"]
    assert ev["mae_after"] == pytest.approx(tfl["reference_mae"], rel=1e-6)
    assert f"MAE dense {dense_mae:.4g} → pruned {ev['mae_after']:.4g}" in text
    assert (f"MAE after conversion against the dense model's {dense_mae:.4g}: tflite-fp32 {tfl['mae']:.4g} "
            f"({(tfl['mae'] - ev['mae_before']) / ev['mae_before']:+.1%})") in text


def test_onnx_int8_embedding_zeros_are_counted_against_the_zero_point(tmp_path):
    """ONNX Runtime's quantizers store an embedding table as uint8 with a non-zero zero point, read
    through Gather -> DequantizeLinear: entries equal to that zero point are the pruned zeros."""
    import keras

    from deploykit.converters import onnx as onnx_converter
    from deploykit.models import load_model
    from deploykit.optimize.sparsity import count_zeros
    from deploykit.targets import get_target

    rng = np.random.default_rng(SEED)
    i = keras.Input((20,), dtype="int32")
    e = keras.layers.Embedding(50, 16, name="emb")(i)
    # a table read by a Dense head (Gather -> DequantizeLinear) and by a conv (QLinearConv's input x)
    h = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling1D()(e),
                                    keras.layers.GlobalMaxPooling1D()(keras.layers.Conv1D(4, 3, name="conv")(e))])
    model = keras.Model(i, keras.layers.Dense(3, activation="softmax", name="out")(h))
    table = rng.normal(0.3, 1.0, (50, 16)).astype("float32")  # mostly positive: the zero point is not 128
    table[rng.random((50, 16)) < 0.7] = 0.0
    model.get_layer("emb").set_weights([table])
    zeros = int(np.count_nonzero(table == 0))
    loaded = load_model(model)
    try:
        for name in ("onnx-int8-dynamic", "onnx-int8-qop"):
            path = tmp_path / f"{name}.onnx"
            data = load_data_for(loaded, rng.integers(0, 50, (64, 20)).astype("int32"))
            onnx_converter.convert(loaded, get_target(name), data, path)
            emb = [t for t in count_zeros(path, format="onnx")["tensors"] if t["size"] == table.size]
            # every zero kept (a few tiny weights may round to the zero point as well)
            assert emb and zeros <= max(t["zeros"] for t in emb) <= zeros + 8, (name, emb)
    finally:
        loaded.release()


def test_a_grouped_conv_split_for_tfjs_is_counted_as_its_one_kernel(tmp_path):
    """The TF.js writer splits a grouped Conv2D's kernel per group (TF.js's conv2d has no groups): the
    survival check found no tensor of the kernel's size and failed every pruned TF.js target."""
    import keras

    from deploykit.converters import tfjs as tfjs_converter
    from deploykit.models import load_model
    from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros
    from deploykit.targets import get_target

    rng = np.random.default_rng(SEED)
    i = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(8, 3, groups=2, name="grouped")(i)
    model = keras.Model(i, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    kernel, bias = model.get_layer("grouped").get_weights()
    kernel[rng.random(kernel.shape) < 0.75] = 0.0
    kernel[..., 4:] = kernel[..., :4]  # equal groups (an untrained layer's may be): the writer must not merge them
    model.get_layer("grouped").set_weights([kernel, bias])
    zeros = int(np.count_nonzero(kernel == 0))
    report = {"layers": [{"name": "grouped", "kernels": [{"weight": "kernel", "size": kernel.size, "zeros": zeros,
                                                           "achieved_sparsity": zeros / kernel.size}]}]}
    loaded = load_model(model)
    try:
        path = tmp_path / "tfjs" / "model.json"
        path.parent.mkdir()
        settings = tfjs_converter.convert(loaded, get_target("tfjs-fp32"), None, path)
        assert settings["fused_ops"]["grouped Conv2D rewritten"] == 1
        counts = count_zeros(path, format="tfjs")
        whole = [t for t in counts["tensors"] if t["size"] == kernel.size]
        assert len(whole) == 1 and whole[0]["zeros"] == zeros, counts["tensors"]
        assert not [t for t in counts["tensors"] if t["name"].endswith("_weights")]
        assert check_sparsity_survived(report, counts) == []
    finally:
        loaded.release()


def load_data_for(loaded, x):
    from deploykit.data import load_data

    return load_data(x, loaded.inputs)


def test_a_classifier_trained_with_mse_is_still_scored_and_an_uncompiled_regression_model_takes_loss(tmp_path, digits):
    """A softmax classifier compiled with mse lost its accuracy (its labels were read as regression
    targets); an uncompiled regression model pruned with loss='mse' had its --data refused."""
    import keras

    keras.utils.set_random_seed(SEED)
    clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    clf.compile(optimizer="adam", loss="mse")
    clf.fit(digits.x_train, np.eye(10)[digits.y_train], epochs=8, verbose=0)
    res = deploykit.convert(clf, ["tflite-fp32"], data=(digits.x_eval, digits.y_eval), out=tmp_path / "clf", bench=False,
                            prune={"sparsity": 0.5, "epochs": 1}, train_data=_train(digits))
    prune_report = res["steps"]["prune"]["report"]
    assert prune_report["score"] == "val_accuracy" and prune_report["accuracy_after"] > 0.5
    assert res.artifact("tflite-fp32")["verification"]["accuracy"] > 0.5

    reg = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(1)])  # never compiled: the loss comes from the options
    values = digits.x_train.reshape(len(digits.x_train), -1).mean(axis=1).astype("float32")
    res = deploykit.convert(reg, ["tflite-fp32"], data=(digits.x_train, values), out=tmp_path / "reg", bench=False,
                            prune={"sparsity": 0.5, "epochs": 1, "loss": "mse"}, train_data=(digits.x_train, values))
    assert res.ok and res["steps"]["prune"]["report"]["score"] == "val_loss"
    # without the loss: told to pass one (the labels message spoke of verification and said "leave 'y' out")
    with pytest.raises(DataError, match=r"saved without a loss .* pass --loss mse"):
        deploykit.convert(reg, ["tflite-fp32"], data=(digits.x_train, values), out=tmp_path / "reg2", bench=False,
                          prune={"sparsity": 0.5, "epochs": 1}, train_data=(digits.x_train, values))
    assert not (tmp_path / "reg2").exists()
    # whole-number targets (degrees, counts) too: they were told about a "negative class index"
    with pytest.raises(DataError, match=r"saved without a loss.* pass --loss mse"):
        deploykit.convert(reg, ["tflite-fp32"], out=tmp_path / "reg4", bench=False, prune={"sparsity": 0.5, "epochs": 1},
                          train_data=(digits.x_train, np.round(values * 100) - 30))
    # text labels are told they are text (not "targets are <U1, not numbers"), and not to pass --loss mse
    with pytest.raises(DataError, match=r"labels 'y' are text"):
        deploykit.convert(reg, ["tflite-fp32"], out=tmp_path / "reg3", bench=False, prune={"sparsity": 0.5, "epochs": 1},
                          train_data=(digits.x_train, np.where(values > values.mean(), "hi", "lo")))


def test_an_interrupted_prune_gives_the_callers_model_its_weights_back(tmp_path):
    """The restore was armed only after the fine-tune: Ctrl-C (or any error) during its epochs left the
    caller's in-memory subclassed model pruned in place."""
    import deploykit

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 6)).astype("float32"), rng.integers(0, 3, 60)
    model = _plain_subclassed_model()
    model(x[:1])
    model.compile("adam", "sparse_categorical_crossentropy")
    before = [np.array(w) for w in model.get_weights()]
    seen = []

    def progress(msg):
        seen.append(msg)
        if "epoch 2" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deploykit.convert(model, ["tflite-fp32"], data=(x, y), out=tmp_path / "o", bench=False, progress=progress,
                          prune={"sparsity": 0.8, "epochs": 4}, train_data=(x, y))
    assert any("epoch 1" in m for m in seen), seen
    assert all(np.array_equal(b, a) for b, a in zip(before, model.get_weights()))


def test_prune_leaves_the_callers_random_streams_alone():
    """prune() seeded NumPy's, Python's and TensorFlow's global generators (keras.utils.set_random_seed):
    the notebook's next draws repeated, and its tf.random draws changed."""
    import random

    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 6)).astype("float32"), rng.integers(0, 3, 60)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")

    def seed_all() -> None:
        np.random.seed(1234)
        random.seed(1234)
        tf.random.set_seed(123)

    seed_all()
    expected = (np.random.random(), random.random(), tf.random.uniform([3]).numpy().tolist())
    seed_all()
    prune(model, (x, y), sparsity=0.5, epochs=1)
    assert (np.random.random(), random.random(), tf.random.uniform([3]).numpy().tolist()) == expected


def test_a_binary_models_labels_must_be_0_or_1():
    """Labels {0, 1, 2} for a one-unit sigmoid output were blamed on their shape (that of the validation split)."""
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).normal(size=(60, 6)).astype("float32")
    with pytest.raises(DataError, match=r"label 2 is out of range for the model's one-unit output .* labels must be 0 or 1"):
        prune(model, (x, np.arange(60) % 3), sparsity=0.5, epochs=1)
    assert prune(model, (x, np.arange(60) % 2), sparsity=0.5, epochs=1).report["epochs_run"] == 1


@pytest.mark.parametrize("lib_name,kind", [("keras", "LSTM"), ("tf_keras", "GRU"), ("keras", "SimpleRNN")])
def test_recurrent_kernels_are_pruned_and_their_zeros_found_in_the_artifacts(lib_name, kind, tmp_path):
    """tfmot prunes a recurrent layer's input and recurrent kernels (not its bias); so do we, on both
    paths, and the converters keep each kernel whole (TFLite's MatMul constant, ONNX's W and R)."""
    import importlib

    lib = importlib.import_module(lib_name)
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(300, 10, 6)).astype("float32")
    y = (x[:, :, 0].mean(1) > 0).astype("int64") + (x[:, :, 1].mean(1) > 0)
    lib.utils.set_random_seed(SEED)
    inp = lib.Input((10, 6), name="seq")
    out = lib.layers.Dense(3, activation="softmax", name="p")(getattr(lib.layers, kind)(16, name="rnn")(inp))
    model = lib.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, verbose=0)
    path = tmp_path / ("m.keras" if lib_name == "keras" else "m.h5")
    model.save(path)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    targets = ["tflite-fp32", "onnx-fp32"]  # a tf_keras GRU reaches TFLite as a plain (stateless) loop
    res = deploykit.convert(str(path), targets=targets, data=str(tmp_path / "d.npz"), out=str(tmp_path / "out"),
                            prune={"sparsity": 0.8, "epochs": 2}, train_data=str(tmp_path / "d.npz"), bench=False)
    rep = res["steps"]["prune"]["report"]
    rnn = next(l for l in rep["layers"] if l["name"] == "rnn")
    assert [k["weight"] for k in rnn["kernels"]] == ["kernel", "recurrent_kernel"]
    assert all(abs(k["achieved_sparsity"] - 0.8) < 0.01 for k in rnn["kernels"]), rnn
    assert not any(s["layer"] == "rnn" for s in rep["skipped"])
    assert res.ok, {t: res.artifact(t)["error"] for t in targets}
    from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros

    for t in targets:  # the survival check found both kernels' zeros in each file ...
        a = res.artifact(t)
        assert a["settings"]["sparsity"]["densified"] == []
        counts = count_zeros(res.out / a["path"])
        for k in rnn["kernels"]:  # ... in a tensor of the kernel's own size, as sparse
            assert any(c["size"] == k["size"] and c["zeros"] == k["zeros"] for c in counts["tensors"]), (t, k)
        # and would have failed a file whose recurrent kernel had lost its zeros
        dense_rnn = {"format": counts["format"], "tensors": [c for c in counts["tensors"] if c["size"] != rnn["kernels"][1]["size"]]}
        assert any("rnn/recurrent_kernel" in m for m in check_sparsity_survived(rep, dense_rnn))
