"""QAT end to end: real tfmot fine-tuning of tiny seeded tf_keras models, real converters and runtimes.

The session's tf_keras CNN (Rescaling inside, trained 3 epochs on digits) is
fine-tuned with fake quantization for 2 epochs, converted to tflite-int8 and
verified; preprocessing and custom layers stay float and are reported; Keras 3
models are refused in one line; after pruning, sparsity-preserving QAT keeps the
zeros in the int8 file (and plain QAT would not).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import DataError, UserError
from deploykit.optimize.qat import quantize_aware

SEED = 0
QAT = {"epochs": 2, "batch_size": 64}


def _train(digits):
    return (digits.x_train, digits.y_train)


# ----------------------------------------------------------------------------- API
def test_quantize_aware_wraps_supported_layers_and_leaves_the_input_model_alone(tf_keras_model, digits):
    import tf_keras

    before = [w.copy() for w in tf_keras_model.get_weights()]
    lines: list[str] = []
    result = quantize_aware(tf_keras_model, _train(digits), validation_data=(digits.x_eval, digits.y_eval),
                            progress=lines.append, seed=SEED, **QAT)
    model, report = result.model, result.report
    assert isinstance(model, tf_keras.Model) and model is not tf_keras_model
    assert report["path"] == "tfmot-qat" and report["scheme"] == "Default8BitQuantizeScheme"
    assert [q["layer"] for q in report["quantized"]] == ["conv", "flatten", "probs"]
    assert report["skipped"] == [{"layer": "rescale", "class": "Rescaling", "reason": (
        "preprocessing layer: tfmot's 8-bit scheme has no quantize config for Rescaling; "
        "kept float (the int8 converter calibrates it)")}]
    kinds = {l.name: type(l).__name__ for l in model.layers}
    assert kinds["rescale"] == "Rescaling" and kinds["quant_conv"] == kinds["quant_probs"] == "QuantizeWrapperV2"
    assert report["settings"]["training_settings_from"] == "model compile config"
    assert len(lines) == report["epochs_run"] == len(report["history"]) == 2
    assert lines[0].startswith("qat epoch 1/2: loss ")
    assert report["accuracy_after"] >= report["accuracy_before"] - 0.01
    json.dumps(report)
    for a, b in zip(before, tf_keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not any("Quantize" in type(l).__name__ for l in tf_keras_model.layers)


def test_convert_with_qat_verifies_tflite_int8_within_a_point(tf_keras_keras_path, data_npz, digits, tmp_path):
    import deploykit
    from deploykit.optimize.sparsity import count_zeros

    progress: list[str] = []
    # onnx-int8-qdq too: its float graph holds the fake quantization, so it has no float-exact source
    # to hold to onnx-fp32's bounds (that check failed every ONNX int8 file of a QAT model)
    result = deploykit.convert(tf_keras_keras_path, ["tflite-int8", "onnx-int8-qdq"], data=data_npz, out=tmp_path / "out",
                               bench=False, qat=QAT, train_data=_train(digits), progress=progress.append)
    assert result.ok, [a["error"] for a in result.artifacts]
    report = result["steps"]["qat"]["report"]
    assert report["path"] == "tfmot-qat" and [s["layer"] for s in report["skipped"]] == ["rescale"]
    assert result["model"]["source"].endswith("(QAT)")
    # the output keeps the user's Keras name, not the quant_ one tfmot's wrapper gave it
    assert [o.get("keras_name") for o in result["model"]["outputs"]] == ["probs"]
    v = result.artifact("tflite-int8")["verification"]
    assert v["passed"] and v["accuracy_drop_points"] <= 1.0
    # against the dense model on the same evaluation data, too
    assert report["eval"]["samples"] == len(digits.y_eval)
    assert v["accuracy"] >= report["eval"]["accuracy_before"] - 0.01
    assert any(p.startswith("QAT: qat epoch 2/2") for p in progress)
    # the artifact really computes in int8: the conv and dense kernels are stored as int8
    counts = count_zeros(tmp_path / "out" / result.artifact("tflite-int8")["path"])
    assert {(t["size"], t["dtype"]) for t in counts["tensors"]} >= {(36, "int8"), (1440, "int8")}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Quantization-aware training" in md and "Left in float: `rescale`" in md


@pytest.fixture(scope="module")
def preprocessing_model(digits):
    """tf_keras functional CNN with Rescaling, Normalization, Resizing, a custom layer, conv+BN and Dense+BN."""
    import tf_keras

    L = tf_keras.layers

    class Doubler(L.Layer):
        def call(self, x):
            return x * 2.0

    tf_keras.utils.set_random_seed(SEED)
    inp = tf_keras.Input((8, 8, 1), name="pixels")
    h = L.Rescaling(1 / 16, name="rescale")(inp)
    h = L.Normalization(mean=0.3, variance=0.1, name="norm")(h)
    h = L.Resizing(10, 10, name="resize")(h)
    h = Doubler(name="custom")(h)
    h = L.Conv2D(8, 3, name="conv")(h)
    h = L.BatchNormalization(name="bn_conv")(h)
    h = L.ReLU(name="relu")(h)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Flatten(name="flat")(h)
    h = L.Dense(16, name="fc")(h)
    h = L.BatchNormalization(name="bn_dense")(h)
    h = L.Activation("relu", name="act")(h)
    h = L.Dense(10, activation="softmax", name="probs")(h)
    model = tf_keras.Model(inp, h, name="preprocessing_cnn")
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    return model


def test_layers_tfmot_cannot_wrap_stay_float_and_the_model_still_converts(preprocessing_model, digits, tmp_path):
    import deploykit

    result = deploykit.convert(preprocessing_model, ["tflite-int8"], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", bench=False, qat={"epochs": 1, "batch_size": 64, "learning_rate": 1e-3},
                               train_data=_train(digits))
    assert result.ok, [a["error"] for a in result.artifacts]
    report = result["steps"]["qat"]["report"]
    assert [q["layer"] for q in report["quantized"]] == ["conv", "bn_conv", "relu", "pool", "flat", "fc", "act", "probs"]
    skipped = {s["layer"]: (s["class"], s["reason"]) for s in report["skipped"]}
    assert list(skipped) == ["rescale", "norm", "resize", "custom", "bn_dense"]
    assert skipped["norm"][0] == "Normalization" and skipped["norm"][1].startswith("preprocessing layer")
    assert skipped["resize"][0] == "Resizing" and skipped["custom"][0] == "Doubler"
    assert skipped["bn_dense"][1].startswith("BatchNormalization after Dense")
    assert result.artifact("tflite-int8")["verification"]["accuracy_drop_points"] <= 1.0


def test_a_float_batchnorm_folded_after_qat_layers_gives_a_right_int8_file(digits, tmp_path):
    """A BatchNormalization QAT keeps float (not after a conv) is folded by the converter into the next
    Dense, whose bias it stored at another scale than input x weight: the int8 file answered 10 % where the
    QAT model had 98 %. Its bias is re-encoded at the scale TFLite's kernel uses, and noted."""
    import tf_keras

    import deploykit
    from ai_edge_litert.interpreter import Interpreter

    tf_keras.utils.set_random_seed(SEED)
    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="pixels"), tf_keras.layers.Rescaling(1 / 16.0),
        tf_keras.layers.Conv2D(8, 3, activation="relu"), tf_keras.layers.Flatten(),
        tf_keras.layers.BatchNormalization(name="bn"), tf_keras.layers.Dense(10, activation="softmax", name="probs")])
    model.compile(tf_keras.optimizers.Adam(0.002), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
    result = deploykit.convert(model, ["tflite-int8"], data=(digits.x_eval, digits.y_eval), out=tmp_path / "out",
                               bench=False, qat={"epochs": 1, "batch_size": 64}, train_data=_train(digits))
    art = result.artifact("tflite-int8")
    assert art["status"] == "ok", art["error"]
    (written,) = art["settings"]["converter"]["biases_requantized"]  # named by the layer's output tensor
    assert "/bn/" in written and "/quant_probs/" in written, written
    assert "re-encoded them at that scale" in art["settings"]["converter"]["note"]
    # the file itself, in LiteRT: the QAT model's accuracy within a point
    interp = Interpreter(str(result.path("tflite-int8")))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], digits.x_eval.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], digits.x_eval.astype(np.float32))
    interp.invoke()
    accuracy = float((interp.get_tensor(out["index"]).argmax(1) == digits.y_eval).mean())
    assert accuracy >= art["verification"]["reference_accuracy"] - 0.01, accuracy


def test_a_trusted_lambda_stays_float_under_qat(digits):
    """quantize_apply rebuilds the model from its configs with Keras safe mode on: a Lambda the user had
    loaded with --trust-model (safe_mode=False) was refused after the fine-tunes had run, asking for the
    safe_mode=False already given."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8, 8, 1))
    h = tf_keras.layers.Lambda(lambda t: t / 16.0, name="scale")(inp)
    h = tf_keras.layers.Conv2D(4, 3, activation="relu", name="conv")(h)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(10, activation="softmax", name="probs")(tf_keras.layers.Flatten()(h)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    result = quantize_aware(model, _train(digits), epochs=1, batch_size=64)
    assert "scale" not in {q["layer"] for q in result.report["quantized"]}
    assert {"conv", "probs"} <= {q["layer"] for q in result.report["quantized"]}


# ----------------------------------------------------------------------------- refusals
def test_keras3_models_are_refused_before_any_work(keras3_model, keras3_path, saved_model_dir, data_npz, digits, tmp_path):
    import deploykit

    with pytest.raises(UserError, match="QAT needs a tf_keras model") as info:
        quantize_aware(keras3_model, _train(digits))
    assert "\n" not in str(info.value) and "tflite-int8" in str(info.value)
    out = tmp_path / "never"
    with pytest.raises(UserError, match="QAT needs a tf_keras model"):
        deploykit.convert(keras3_path, ["tflite-int8"], data=data_npz, out=out, qat=True, prune=0.5,
                          train_data=_train(digits))
    with pytest.raises(UserError, match="not a SavedModel"):
        deploykit.convert(saved_model_dir, ["tflite-int8"], data=data_npz, out=out, qat=True, train_data=_train(digits))
    with pytest.raises(DataError, match="needs labelled training data"):
        deploykit.convert(keras3_path, ["tflite-int8"], data=data_npz, out=out, qat=True)
    assert not out.exists()


def test_quantize_aware_errors(tf_keras_model, digits):
    import tf_keras

    with pytest.raises(DataError, match="has no labels 'y'"):
        quantize_aware(tf_keras_model, digits.x_train)
    with pytest.raises(UserError, match="takes an in-memory tf_keras model"):
        quantize_aware("model.keras", _train(digits))
    only_pre = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(8, 8, 1)),
                                    tf_keras.layers.Rescaling(1 / 16, name="rescale")])
    with pytest.raises(UserError, match="no layer of this model can be quantized by tfmot: rescale: preprocessing"):
        quantize_aware(only_pre, _train(digits), loss="sparse_categorical_crossentropy")


@pytest.mark.slow
def test_cli_qat_errors_exit_2_with_one_line(keras3_path, data_npz, digits, tmp_path):
    deploy = Path(sys.executable).with_name("deploy")
    cmd = [str(deploy)] if deploy.exists() else [sys.executable, "-m", "deploykit.cli"]
    train = tmp_path / "train.npz"
    np.savez(train, x=digits.x_train, y=digits.y_train)
    base = [*cmd, "convert", str(keras3_path), "-t", "tflite-int8", "--data", str(data_npz), "-o", str(tmp_path / "out")]
    for extra, fragment in (([], "QAT fine-tunes the model and needs labelled training data"),
                            (["--train-data", str(train)], "QAT needs a tf_keras model")):
        proc = subprocess.run([*base, "--qat", *extra], capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith("deploy: error: ") and fragment in lines[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- PQAT
@pytest.mark.slow
def test_prune_then_qat_keeps_the_zeros_in_the_int8_artifact(tf_keras_keras_path, data_npz, digits, tmp_path):
    import deploykit

    result = deploykit.convert(tf_keras_keras_path, ["tflite-int8", "onnx-int8-qdq"], data=data_npz, out=tmp_path / "out",
                               bench=False, prune={"sparsity": 0.8, "epochs": 2, "batch_size": 64}, qat=QAT,
                               train_data=_train(digits))
    assert result.ok, [a["error"] for a in result.artifacts]
    # ONNX: every int8 kernel symmetric (zero point 0), so its zeros are stored as 0. ONNX Runtime's
    # pre-processing had quantized the QAT graph's Dense kernel with one asymmetric scale (zeros stored as 18).
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(tmp_path / "out" / result.artifact("onnx-int8-qdq")["path"]).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kernels = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].size >= 32]
    assert len(kernels) >= 2 and all(len(n.input) < 3 or not inits[n.input[2]].any() for n in kernels), \
        [(n.input[0], inits[n.input[2]]) for n in kernels if len(n.input) > 2 and inits[n.input[2]].any()]
    prune_report, qat_report = result["steps"]["prune"]["report"], result["steps"]["qat"]["report"]
    assert prune_report["path"] == "tfmot" and qat_report["path"] == "tfmot-pqat"
    assert qat_report["preserve_sparsity"] and qat_report["scheme"] == "Default8BitPrunePreserveQuantizeScheme"
    assert result["model"]["source"].endswith("(pruned) (PQAT)")
    for k in qat_report["kernel_zeros"]:  # the float kernels under the wrappers kept every zero
        assert k["zeros_after"] >= k["zeros_before"] > 0.79 * k["size"], k
    artifact = result.artifact("tflite-int8")
    assert artifact["settings"]["sparsity"]["densified"] == []
    assert artifact["settings"]["sparsity"]["total_zeros"] >= prune_report["totals"]["zeros_after"] * 0.99
    assert artifact["verification"]["accuracy_drop_points"] <= 1.0
    # the pruned model's accuracy is recorded before QAT, the QAT model's after
    assert prune_report["eval"]["accuracy_after"] == qat_report["eval"]["accuracy_before"]


@pytest.mark.slow
def test_plain_qat_after_pruning_densifies_and_the_check_says_so(tf_keras_model, digits, tmp_path):
    """Why PQAT: the default scheme lets the pruned weights move again, the survival check catches it."""
    from deploykit.converters import tflite
    from deploykit.data import load_data
    from deploykit.models import load_model
    from deploykit.optimize.prune import prune
    from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros
    from deploykit.targets import get_target

    pruned = prune(tf_keras_model, _train(digits), sparsity=0.8, epochs=2, batch_size=64, seed=SEED)
    plain = quantize_aware(pruned.model, _train(digits), compile_config=tf_keras_model.get_compile_config(), **QAT)
    loaded = load_model(plain.model)
    try:
        path = tmp_path / "plain_qat.tflite"
        tflite.convert(loaded, get_target("tflite-int8"), load_data((digits.x_eval, digits.y_eval), loaded.inputs), path)
    finally:
        loaded.release()
    lost = check_sparsity_survived(pruned.report, count_zeros(path))
    assert len(lost) == 2 and all("was densified in the tflite artifact" in m for m in lost)


def test_a_custom_layer_whose_config_drops_its_name_stays_float_with_its_weights(digits):
    """tf_keras' automatic config of a layer whose __init__ takes ``**kw`` is {}: tfmot failed with KeyError 'name'."""
    import tf_keras

    L = tf_keras.layers

    class Scale(L.Layer):
        def __init__(self, **kw):  # not "**kwargs": tf_keras then gives up on the automatic config
            super().__init__(**kw)

        def build(self, shape):
            self.w = self.add_weight(name="w", shape=(shape[-1],), initializer="random_normal")

        def call(self, x):
            return x * self.w

    assert "name" not in Scale(name="probe").get_config()
    tf_keras.utils.set_random_seed(SEED)
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1), name="pixels"), L.Rescaling(1 / 16, name="rescale"),
                                 L.Conv2D(8, 3, activation="relu", name="conv"), L.Flatten(name="flat"),
                                 Scale(name="scale"), L.Dense(10, activation="softmax", name="probs")])
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=2, batch_size=64, verbose=0)
    result = quantize_aware(model, _train(digits), validation_data=(digits.x_eval, digits.y_eval), seed=SEED, epochs=1)
    report = result.report
    assert {"layer": "scale", "class": "Scale"} == {k: v for k, v in report["skipped"][-1].items() if k != "reason"}
    assert report["accuracy_wrapped"] == pytest.approx(report["accuracy_before"], abs=0.02)  # weights came along
    assert "get_config" not in Scale.__dict__  # the class is left as it was


def test_pqat_keeps_the_zeros_of_convolutions_followed_by_a_relu_layer(digits, tmp_path):
    """tfmot's Conv2D+ReLU pattern swaps the prune-preserving config for its default one: the zeros moved
    in training (50 % -> 8 % in the int8 file) and every such model failed the survival check."""
    import tf_keras

    import deploykit

    tf_keras.utils.set_random_seed(SEED)
    inp = tf_keras.Input((8, 8, 1))
    h = tf_keras.layers.Rescaling(1 / 16.0)(inp)
    for _ in range(2):
        h = tf_keras.layers.ReLU()(tf_keras.layers.Conv2D(16, 3, padding="same")(h))
    out = tf_keras.layers.Dense(10, activation="softmax")(tf_keras.layers.Flatten()(h))
    model = tf_keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
    result = deploykit.convert(model, ["tflite-int8", "onnx-int8-qop"], data=(digits.x_eval, digits.y_eval),
                               out=tmp_path / "out", bench=False, prune={"sparsity": 0.5, "epochs": 2, "batch_size": 64},
                               qat=QAT, train_data=_train(digits))
    # ORT's QOperator rewrite took the QAT graph's stacked convs once its pre-processing no longer quantized
    # their kernels itself (their weights came through Q/DQ, and its bias lookup found None): verified, zeros kept
    qop = result.artifact("onnx-int8-qop")
    assert qop["status"] == "ok", qop["error"]
    assert qop["settings"]["sparsity"]["densified"] == []
    artifact = result.artifact("tflite-int8")
    assert artifact["status"] == "ok", artifact["error"]
    assert artifact["settings"]["sparsity"]["densified"] == []
    for k in result["steps"]["qat"]["report"]["kernel_zeros"]:
        assert k["zeros_after"] >= k["zeros_before"], k


def test_pqat_keeps_the_zeros_of_layers_it_leaves_in_float(digits):
    """tfmot does not quantize SeparableConv2D: the layer trains unwrapped, and its pruned pointwise
    kernel regrew (80 % -> 5 % zeros) while the report said every zero was kept."""
    import tf_keras

    from deploykit.optimize.prune import prune

    tf_keras.utils.set_random_seed(SEED)
    inp = tf_keras.Input((8, 8, 1))
    h = tf_keras.layers.Rescaling(1 / 16.0)(inp)
    h = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(h)
    h = tf_keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep")(h)
    out = tf_keras.layers.Dense(10, activation="softmax", name="out")(tf_keras.layers.Flatten()(h))
    model = tf_keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    pruned = prune(model, _train(digits), sparsity=0.8, epochs=2, batch_size=64, seed=SEED)
    sep_zeros = next(k["zeros"] for l in pruned.report["layers"] if l["name"] == "sep" for k in l["kernels"])
    assert sep_zeros > 0.75 * 8 * 16
    result = quantize_aware(pruned.model, _train(digits), preserve_sparsity=True, seed=SEED,
                            loss="sparse_categorical_crossentropy", **QAT)
    assert "sep" in [s["layer"] for s in result.report["skipped"]]
    kept = {k["kernel"]: (k["zeros_before"], k["zeros_after"]) for k in result.report["kernel_zeros"]}
    assert kept["sep/pointwise_kernel"] == (sep_zeros, sep_zeros)
    sep = result.model.get_layer("sep").pointwise_kernel.numpy()
    assert np.count_nonzero(sep == 0) == kept["sep/pointwise_kernel"][0]


def test_pqat_keeps_the_zeros_of_a_recurrent_layer_it_leaves_in_float():
    """tfmot's 8-bit scheme leaves a GRU in float: its pruned cell kernels (``gru_cell/kernel``) train
    unwrapped and must keep their zeros, which the kernel lookup found only under the layer's own name."""
    import tf_keras

    from deploykit.optimize.prune import prune

    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(300, 10, 6)).astype("float32")
    y = (x[:, :, 0].mean(1) > 0).astype("int64") + (x[:, :, 1].mean(1) > 0)
    tf_keras.utils.set_random_seed(SEED)
    inp = tf_keras.Input((10, 6))
    out = tf_keras.layers.Dense(3, activation="softmax", name="p")(tf_keras.layers.GRU(16, name="rnn")(inp))
    model = tf_keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    pruned = prune(model, (x, y), sparsity=0.8, epochs=2, batch_size=64, seed=SEED)
    zeros = {k["weight"]: k["zeros"] for l in pruned.report["layers"] if l["name"] == "rnn" for k in l["kernels"]}
    assert zeros["kernel"] >= 0.79 * 6 * 48 and zeros["recurrent_kernel"] >= 0.79 * 16 * 48
    result = quantize_aware(pruned.model, (x, y), preserve_sparsity=True, seed=SEED,
                            loss="sparse_categorical_crossentropy", **QAT)
    assert "rnn" in [s["layer"] for s in result.report["skipped"]]
    kept = {k["kernel"]: (k["zeros_before"], k["zeros_after"]) for k in result.report["kernel_zeros"]}
    assert kept["rnn/kernel"] == (zeros["kernel"],) * 2 and kept["rnn/recurrent_kernel"] == (zeros["recurrent_kernel"],) * 2
    cell = result.model.get_layer("rnn").cell
    assert np.count_nonzero(cell.recurrent_kernel.numpy() == 0) == zeros["recurrent_kernel"]


def test_pqat_and_pcqat_keep_what_a_nested_models_kernels_hold(digits):
    """A Sequential inside the model stays float through QAT and trains with the rest: its pruned kernel
    went from 60 % zeros to 6 % (its clustered one to 45 values a channel) while the report said every
    zero was kept, counting the top-level kernels only; the int8 file then failed as "densified"."""
    import tf_keras

    from deploykit.optimize.cluster import cluster
    from deploykit.optimize.prune import prune

    tf_keras.utils.set_random_seed(SEED)
    inp = tf_keras.Input((8, 8, 1))
    flat = tf_keras.layers.Flatten()(tf_keras.layers.Rescaling(1 / 16.0)(inp))
    sub = tf_keras.Sequential([tf_keras.layers.Dense(32, activation="relu", name="inner")], name="sub")
    model = tf_keras.Model(inp, tf_keras.layers.Dense(10, activation="softmax", name="cls")(sub(flat)))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    pruned = prune(model, _train(digits), sparsity=0.6, epochs=1, batch_size=64, seed=SEED)
    zeros = np.count_nonzero(pruned.model.get_layer("sub").get_layer("inner").kernel.numpy() == 0)
    assert zeros >= 0.59 * 64 * 32
    result = quantize_aware(pruned.model, _train(digits), preserve_sparsity=True, seed=SEED,
                            loss="sparse_categorical_crossentropy", **QAT)
    kept = {k["kernel"]: (k["zeros_before"], k["zeros_after"]) for k in result.report["kernel_zeros"]}
    assert kept["inner/kernel"] == (zeros, zeros), kept
    inner = result.model.get_layer("sub").get_layer("inner").kernel.numpy()
    assert np.count_nonzero(inner == 0) == zeros
    clustered = cluster(model, _train(digits), clusters=8, epochs=1, batch_size=64, seed=SEED)
    result = quantize_aware(clustered.model, _train(digits), preserve_clusters=True, seed=SEED,
                            loss="sparse_categorical_crossentropy", **QAT)
    inner = result.model.get_layer("sub").get_layer("inner").kernel.numpy()
    assert np.unique(inner).size <= 8 + 1, np.unique(inner).size  # its shared values (and zero)


def test_an_adapted_normalization_keeps_its_statistics_through_qat(digits):
    """tfmot's quantize_apply copies variables without finalize_state(): the adapted Normalization ran
    with mean 0, variance 1 through the whole fine-tune, and int8 accuracy fell from 93 % to 24 %."""
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    x = digits.x_train.reshape(len(digits.x_train), -1)
    x_eval = digits.x_eval.reshape(len(digits.x_eval), -1)
    norm = tf_keras.layers.Normalization(name="norm")
    norm.adapt(x + 50.0)  # far from mean 0 / variance 1: unnormalized inputs would saturate the model
    inp = tf_keras.Input((64,), name="pixels")
    h = tf_keras.layers.Dense(32, activation="relu", name="hidden")(norm(inp))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(10, activation="softmax", name="probs")(h))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x + 50.0, digits.y_train, epochs=5, batch_size=64, verbose=0)
    result = quantize_aware(model, (x + 50.0, digits.y_train), validation_data=(x_eval + 50.0, digits.y_eval),
                            seed=SEED, epochs=1, batch_size=64)
    report = result.report
    # wrapped for QAT, before any step, the model computes what it did: within fake quantization's rounding
    assert report["accuracy_wrapped"] >= report["accuracy_before"] - 0.03, report
    qnorm = next(l for l in result.model.layers if l.name == "norm")
    np.testing.assert_allclose(np.ravel(qnorm.mean), np.ravel(norm.mean), rtol=1e-6)
