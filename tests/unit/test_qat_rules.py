"""QAT rules without training: settings, which layers tfmot can wrap, error parsing, pipeline checks."""

from __future__ import annotations

import pytest

from deploykit.errors import DataError, UserError
from deploykit.optimize import qat


def test_check_settings_refuses_bad_values():
    qat.check_settings()  # the defaults are valid
    with pytest.raises(UserError, match="epochs must be a positive integer, got 0"):
        qat.check_settings(epochs=0)
    with pytest.raises(UserError, match="batch_size must be a positive integer, got 2.5"):
        qat.check_settings(batch_size=2.5)
    with pytest.raises(UserError, match="patience must be a non-negative integer or None"):
        qat.check_settings(patience=-1)
    with pytest.raises(UserError, match="learning_rate must be a finite number > 0"):
        qat.check_settings(learning_rate=0)
    with pytest.raises(UserError, match=r"validation_split must be in \(0, 1\)"):
        qat.check_settings(validation_split=1.0)
    # reached numpy or Keras unchecked, or diverged to NaN and blamed the data
    with pytest.raises(UserError, match="learning_rate must be a finite number > 0, got inf"):
        qat.check_settings(learning_rate=float("inf"))
    with pytest.raises(UserError, match="seed must be an integer"):
        qat.check_settings(seed="abc")
    with pytest.raises(UserError, match="loss must be a Keras loss name"):
        qat.check_settings(loss=5)


def test_keras3_refusal_is_one_line_that_says_what_to_do():
    msg = qat.KERAS3_REFUSAL
    assert "\n" not in msg
    assert "tf_keras" in msg and "Keras 3" in msg and "tflite-int8" in msg and "--qat" in msg


def test_refused_layer_is_read_from_tfmot_errors():
    names = {"conv", "conv_1", "probs"}
    err = RuntimeError("Layer conv_1:<class 'tf_keras.src.layers.Conv2D'> is not supported. You can quantize ...")
    assert qat._refused_layer(err, names) == "conv_1"
    assert qat._refused_layer(ValueError("Layer probs is not supported."), names) == "probs"
    assert qat._refused_layer(ValueError("Unable to clone model."), names) is None
    assert qat._refused_layer(RuntimeError("Layer other:<class 'X'> is not supported"), names) is None


# ----------------------------------------------------------------------------- pipeline checks (no TensorFlow)
def test_pipeline_checks_qat_settings_before_any_work():
    from deploykit.pipeline import Pipeline

    train = ([[0.0]], [0])
    with pytest.raises(DataError, match="QAT fine-tunes the model and needs labelled training data; pass --train-data"):
        Pipeline(["tflite-int8"], qat=True)
    with pytest.raises(UserError, match="unknown QAT setting"):
        Pipeline(["tflite-int8"], qat={"epoch": 2}, train_data=train)
    with pytest.raises(UserError, match="qat must be True or a dict"):
        Pipeline(["tflite-int8"], qat="yes", train_data=train)
    with pytest.raises(UserError, match="epochs must be a positive integer"):
        Pipeline(["tflite-int8"], qat={"epochs": 0}, train_data=train)
    with pytest.raises(UserError, match="only used to fine-tune while pruning, clustering or for QAT"):
        Pipeline(["tflite-int8"], train_data=train)
    with pytest.raises(UserError, match=r"target\(s\) tflite-fp32, tfjs-fp32, tflite-auto are not int8") as exc:
        Pipeline(["tflite-int8", "tflite-fp32", "tfjs-fp32", "tflite-auto"], qat=True, train_data=train)
    # the ONNX target it advises is one that converts a QAT conv model (QOperator's rewrite fails on its Q/DQ)
    assert "onnx-int8-qdq" in str(exc.value) and "onnx-int8-qop" not in str(exc.value)
    p = Pipeline(["tflite-int8"], qat=True, train_data=train)  # train data without --prune: fine with QAT
    assert p.qat_options == {} and p.prune_options is None
    assert Pipeline(["tflite-int8"], qat=False).qat_options is None


# ----------------------------------------------------------------------------- which layers get wrapped
def test_plan_wraps_what_tfmot_supports_and_says_why_the_rest_stays_float(tmp_path):
    import tf_keras

    from deploykit.optimize._tfmot import import_tfmot

    tfmot = import_tfmot()
    L = tf_keras.layers

    class Doubler(L.Layer):
        def call(self, x):
            return x * 2.0

    inp = tf_keras.Input((8, 8, 1), name="pixels")
    h = L.Rescaling(1 / 16, name="rescale")(inp)
    h = L.Normalization(mean=0.3, variance=0.1, name="norm")(h)
    h = L.Resizing(10, 10, name="resize")(h)
    h = L.BatchNormalization(name="bn_first")(h)
    h = Doubler(name="custom")(h)
    h = L.Conv2D(4, 3, name="conv")(h)
    h = L.BatchNormalization(name="bn_conv")(h)
    h = L.ReLU(name="relu")(h)
    h = tf_keras.Sequential([L.Conv2D(4, 3, name="inner_conv")], name="nested")(h)
    h = L.Flatten(name="flat")(h)
    h = L.Dense(8, name="fc")(h)
    h = L.BatchNormalization(name="bn_dense")(h)
    h = L.Dense(10, activation="softmax", name="probs")(h)
    model = tf_keras.Model(inp, h)

    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    quantize, skipped = qat._plan(model, registry)
    assert [q["layer"] for q in quantize] == ["conv", "bn_conv", "relu", "flat", "fc", "probs"]
    assert quantize[1]["note"] == "folded into conv (Conv2D)"
    reasons = {s["layer"]: s["reason"] for s in skipped}
    assert list(reasons) == ["rescale", "norm", "resize", "bn_first", "custom", "nested", "bn_dense"]
    for name in ("rescale", "norm", "resize"):
        assert reasons[name].startswith("preprocessing layer: tfmot's 8-bit scheme has no quantize config")
    assert reasons["custom"].startswith("custom layer")
    assert reasons["bn_first"].startswith("BatchNormalization not after a Conv2D/DepthwiseConv2D")
    assert reasons["bn_dense"].startswith("BatchNormalization after Dense")
    assert reasons["nested"].startswith("nested model")
    # Sequential models: the inbound layer of a BatchNormalization is found the same way
    seq = tf_keras.Sequential([L.InputLayer(input_shape=(8, 8, 1)), L.Conv2D(4, 3, name="c"),
                               L.BatchNormalization(name="bn"), L.Flatten(name="f"), L.Dense(10, name="d")])
    quantize, skipped = qat._plan(seq, registry)
    assert [q["layer"] for q in quantize] == ["c", "bn", "f", "d"] and skipped == []


def test_wrap_copies_every_weight_including_wrapped_and_unwrapped_layers():
    """Layers are re-created from their configs: the weights must be the caller's (TimeDistributed has a .layer too)."""
    import numpy as np
    import tf_keras

    from deploykit.optimize._tfmot import import_tfmot

    tfmot = import_tfmot()
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([L.InputLayer(input_shape=(8, 8)), L.Rescaling(1 / 16, name="rescale"),
                                 L.TimeDistributed(L.Dense(4), name="td"), L.Flatten(name="flat"),
                                 L.Dense(10, name="probs")])
    scheme = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    quantize, skipped = qat._plan(model, scheme.get_quantize_registry())
    assert [q["layer"] for q in quantize] == ["flat", "probs"]
    assert [s["layer"] for s in skipped] == ["rescale", "td"]
    wrapped = qat._wrap(model, tfmot, quantize, skipped, scheme)
    np.testing.assert_array_equal(wrapped.get_layer("td").get_weights()[0], model.get_layer("td").get_weights()[0])
    probs = wrapped.get_layer("quant_probs")
    kernel = next(v for v in probs.weights if v.name.startswith("probs/kernel"))
    np.testing.assert_array_equal(kernel.numpy(), model.get_layer("probs").kernel.numpy())
    x = np.random.default_rng(0).uniform(0, 16, (4, 8, 8)).astype("float32")
    np.testing.assert_allclose(wrapped(x), model(x), atol=0.5)  # fake quant only, same weights
