"""Pruning a model with two outputs: the labelled one trains on 'y', the other on the dense model's outputs.

Model: a small digits CNN with a classifier head (softmax) and a regression head (the image's mean
brightness), as Keras 3 (list and dict outputs) and tf_keras. Real fine-tuning, real converters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.errors import UserError
from deploykit.optimize import heads as H
from deploykit.optimize.prune import prune

SEED = 0


def _two_heads(keras, dict_outputs: bool = False):
    keras.utils.set_random_seed(SEED)
    L = keras.layers
    inp = keras.Input((8, 8, 1), name="pixels")
    h = L.Rescaling(1 / 16, name="rescale")(inp)
    h = L.Conv2D(8, 3, activation="relu", name="conv")(h)
    h = L.Flatten(name="flatten")(h)
    h = L.Dense(32, activation="relu", name="fc")(h)
    cls = L.Dense(10, activation="softmax", name="cls")(h)
    reg = L.Dense(1, name="reg")(h)
    if dict_outputs:
        model = keras.Model(inp, {"digit": cls, "bright": reg})
        model.compile(keras.optimizers.Adam(1e-2), loss={"digit": "sparse_categorical_crossentropy", "bright": "mse"})
    else:
        model = keras.Model(inp, [cls, reg])
        model.compile(keras.optimizers.Adam(1e-2), loss=["sparse_categorical_crossentropy", "mse"])
    return model


def _brightness(x):
    return (x.mean(axis=(1, 2, 3)) / 4.0).astype(np.float32)[:, None]


def _fit(model, digits, dict_outputs=False):
    x, y = digits.x_train, digits.y_train
    targets = {"digit": y, "bright": _brightness(x)} if dict_outputs else [y, _brightness(x)]
    model.fit(x, targets, epochs=6, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def k3(digits):
    import keras

    return _fit(_two_heads(keras), digits)


def test_class_labels_train_the_classifier_and_the_other_output_keeps_to_the_dense_one(k3, digits):
    before = [w.copy() for w in k3.get_weights()]
    result = prune(k3, (digits.x_train, digits.y_train), sparsity=0.5, epochs=4, batch_size=64, seed=SEED)
    rep = result.report
    assert len(result.model.outputs) == 2 and [l.name for l in result.model.layers] == [l.name for l in k3.layers]
    assert rep["outputs"]["labelled"] == "cls" and rep["score"] == "val_accuracy"
    (reg,) = rep["outputs"]["distilled"]
    assert reg["output"] == "reg" and reg["loss"] == "mse" and "top1_agreement" not in reg
    assert rep["accuracy_after"] > 0.8
    # the regression head was held: it moved by less than its spread over the validation data (0.6 of it;
    # left without its loss it moved by 1.5)
    assert reg["mean_abs_change"] < reg["dense_std"], reg
    assert all(k["achieved_sparsity"] == pytest.approx(0.5, abs=0.01) for l in rep["layers"] for k in l["kernels"])
    for a, b in zip(before, k3.get_weights()):  # the caller's model is untouched
        np.testing.assert_array_equal(a, b)
    json.dumps(rep)


def test_regression_targets_named_train_that_output_and_the_classifier_keeps_its_answers(k3, digits):
    x = digits.x_train
    result = prune(k3, (x, _brightness(x)), sparsity=0.5, epochs=4, batch_size=64, seed=SEED, output="reg")
    rep = result.report
    assert rep["outputs"]["labelled"] == "reg" and rep["score"] == "val_loss" and rep["settings"]["loss"] == "mse"
    (cls,) = rep["outputs"]["distilled"]
    assert cls["output"] == "cls" and cls["loss"] == "categorical_crossentropy (soft targets)"
    # without its soft targets the classifier has no loss at all: its answers would wander off
    assert cls["top1_agreement"] >= 0.9, cls


def test_regression_targets_find_their_output_by_size(k3, digits):
    """'y' of one value per sample fit only the one-unit output: no need to name it."""
    x = digits.x_train[:200]
    assert H.labelled_output(k3, None, [x], _brightness(x)) == 1
    assert H.labelled_output(k3, None, [x], digits.y_train[:200]) == 0


def test_labels_that_fit_no_output_and_unknown_output_names_are_refused(k3, digits):
    x = digits.x_train[:200]
    with pytest.raises(UserError, match=r"fit none of the model's outputs \(cls, reg\).*--label-output"):
        prune(k3, (x, np.zeros((200, 3), np.float32)), sparsity=0.5, epochs=1)
    with pytest.raises(UserError, match=r"'nope' is not an output of this model; its outputs: cls, reg"):
        prune(k3, (x, digits.y_train[:200]), sparsity=0.5, epochs=1, output="nope")
    # one output: the name was not looked at, and 'nope' or 7 fine-tuned the model without a word
    import keras

    inp = keras.Input((64,))
    one = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="probs")(keras.layers.Dense(16)(inp)))
    one.compile(loss="sparse_categorical_crossentropy")
    for bad in ("nope", 7):
        with pytest.raises(UserError, match=rf"{bad!r} is not an output of this model; its outputs: probs"):
            prune(one, (x, digits.y_train[:200]), sparsity=0.5, epochs=1, output=bad)
    # a Keras 3 Sequential has no output_names: its last layer's name still names its output
    seq = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(10, activation="softmax", name="probs")])
    seq.compile(loss="sparse_categorical_crossentropy")
    assert prune(seq, (x, digits.y_train[:200]), sparsity=0.5, epochs=1, output="probs").model is not None


def test_distillation_targets_and_weights():
    """Soft targets from logits, the dense outputs as they are otherwise; squared errors weighted by 1/variance."""
    import keras

    heads = H.Heads(index=0, keys=["a", "b", "c"], dict_outputs=False)
    heads.distill = [None, H._distill_loss("keras3", {"class_name": "SparseCategoricalCrossentropy",
                                                       "config": {"from_logits": True}}),
                     H._distill_loss("keras3", "mse")]
    heads.teacher = [None, np.array([[0.0, np.log(3.0)]], np.float32), np.array([[1.0], [3.0]], np.float32)]
    targets = heads.targets(np.array([1]), heads.teacher)
    np.testing.assert_allclose(targets[1], [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_array_equal(targets[2], heads.teacher[2])
    assert isinstance(heads.losses("x")[1], keras.losses.CategoricalCrossentropy)
    assert heads.loss_weights() == [1.0, 1.0, pytest.approx(H.SPREAD_WEIGHT)]  # variance of [1, 3] is 1
    heads.teacher[2] = np.array([[1.0], [1.2]], np.float32)
    assert heads.loss_weights()[2] == pytest.approx(100.0 * H.SPREAD_WEIGHT, rel=1e-4)
    assert all(type(w) is float for w in heads.loss_weights())  # Keras refuses float64 loss weights


@pytest.mark.slow
def test_dict_outputs_end_to_end_through_the_cli(tmp_path, digits):
    """A dict-output Keras 3 model saved with its losses: `deploy convert --prune` with regression targets
    named by --label-output; both outputs verified in the artifacts; the report says what held the other."""
    import keras
    from typer.testing import CliRunner

    from deploykit.cli import app

    model = _fit(_two_heads(keras, dict_outputs=True), digits, dict_outputs=True)
    path = tmp_path / "two.keras"
    model.save(path)
    x = digits.x_train
    np.savez(tmp_path / "train.npz", x=x, y=_brightness(x))
    np.savez(tmp_path / "calib.npz", x=digits.x_eval, y=_brightness(digits.x_eval))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["convert", str(path), "--prune", "0.5", "--epochs", "3", "--train-data",
                                   str(tmp_path / "train.npz"), "--data", str(tmp_path / "calib.npz"),
                                   "--label-output", "bright", "-t", "tflite-fp32", "-t", "onnx-fp32", "-t", "tflite-auto",
                                   "--no-bench", "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    rep = manifest["steps"]["prune"]["report"]
    assert rep["outputs"]["labelled"] == "bright" and rep["outputs"]["distilled"][0]["output"] == "digit"
    by_name = {a["target"]: a for a in manifest["artifacts"]}
    for a in manifest["artifacts"]:
        assert a["status"] == "ok" and len(a["verification"]["outputs"]) == 2
    auto = by_name["tflite-auto"]  # the shipped copy carries the zeros found in its bytes, as its winner does
    assert auto["settings"]["sparsity"] == by_name[auto["selection"]["winner"]]["settings"]["sparsity"]
    text = (out / "report.md").read_text()
    assert "The labels trained output `bright`" in text and "`digit` (categorical_crossentropy (soft targets))" in text


@pytest.mark.slow
def test_tf_keras_two_outputs_go_through_tfmot(digits):
    import tf_keras

    model = _fit(_two_heads(tf_keras), digits)
    result = prune(model, (digits.x_train, digits.y_train), sparsity=0.5, epochs=3, batch_size=64, seed=SEED)
    rep = result.report
    assert rep["path"] == "tfmot" and len(result.model.outputs) == 2
    assert rep["outputs"]["labelled"] == "cls" and rep["outputs"]["distilled"][0]["output"] == "reg"
    assert all(k["achieved_sparsity"] == pytest.approx(0.5, abs=0.01) for l in rep["layers"] for k in l["kernels"])


@pytest.mark.slow
def test_two_outputs_through_pruning_clustering_and_pqat(tmp_path, digits):
    """Clustering and QAT take several outputs the same way: y trains one, the other keeps to the model."""
    import tf_keras

    import deploykit

    model = _fit(_two_heads(tf_keras), digits)
    path = tmp_path / "two.h5"
    model.save(path)
    np.savez(tmp_path / "train.npz", x=digits.x_train, y=digits.y_train)
    np.savez(tmp_path / "calib.npz", x=digits.x_eval, y=digits.y_eval)
    res = deploykit.convert(str(path), targets=["tflite-int8"], data=str(tmp_path / "calib.npz"),
                            train_data=str(tmp_path / "train.npz"), prune={"sparsity": 0.5, "epochs": 2},
                            cluster={"clusters": 16, "epochs": 1}, qat={"epochs": 1}, out=tmp_path / "out", bench=False)
    # (the int8 file is judged as usual: its small regression output may miss its bound; the steps are what this checks)
    assert res.artifact("tflite-int8")["path"]
    for step in ("prune", "cluster", "qat"):
        outs = res["steps"][step]["report"]["outputs"]
        assert outs["labelled"] == "cls" and outs["distilled"][0]["output"] == "reg", (step, outs)
    assert res.artifact("tflite-int8")["settings"]["sparsity"]["densified"] == []
    text = (res.out / "report.md").read_text()
    assert text.count("The labels trained output `cls`") == 3


def test_a_class_id_output_is_not_trained_and_is_reported_by_the_ids_it_kept(digits):
    """An argmax inside the model has no gradient: it got a loss anyway and a meaningless mean |change| of ids."""
    import keras

    keras.utils.set_random_seed(SEED)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 16)(inp)))
    probs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inp, [probs, keras.ops.argmax(probs, axis=-1)])
    model.compile("adam", loss=["sparse_categorical_crossentropy", None])
    model.fit(digits.x_train, [digits.y_train, digits.y_train], epochs=4, batch_size=64, verbose=0)
    rep = prune(model, (digits.x_train, digits.y_train), sparsity=0.5, epochs=2, batch_size=64, seed=SEED).report
    (ids,) = rep["outputs"]["distilled"]
    assert rep["outputs"]["labelled"] == "probs" and "mean_abs_change" not in ids and ids["ids_kept"] > 0.8
    with pytest.raises(UserError, match="holds class ids .* which training cannot move"):
        prune(model, (digits.x_train, digits.y_train), sparsity=0.5, epochs=1, output=1)


@pytest.fixture(scope="module")
def tagged(digits):
    """Independent sigmoid tags (4) first, then a 10-class digit head and a 2-class parity head."""
    import keras

    keras.utils.set_random_seed(SEED)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Dense(32, activation="relu")(L.Flatten()(L.Rescaling(1 / 16)(inp)))
    tags = L.Dense(4, activation="sigmoid", name="tags")(h)
    digit = L.Dense(10, activation="softmax", name="digit")(h)
    parity = L.Dense(2, activation="softmax", name="parity")(h)
    model = keras.Model(inp, [tags, digit, parity])
    model.compile("adam", loss=["binary_crossentropy", "sparse_categorical_crossentropy", "sparse_categorical_crossentropy"])
    y = digits.y_train
    model.fit(digits.x_train, [np.eye(4)[y % 4], y, y % 2], epochs=8, batch_size=64, verbose=0)
    return model


def test_labels_train_the_head_the_model_agrees_with(tagged, digits):
    """Parity labels fit the 10-class digit head first: they trained it (18 % -> 86 %, the digits lost). Now
    the parity head, which the model already agrees with, is trained; sigmoid tags are never picked."""
    from deploykit.optimize.heads import labelled_output

    x, y = [digits.x_train], digits.y_train
    assert labelled_output(tagged, None, x, y % 2) == 2
    assert labelled_output(tagged, None, x, y) == 1  # digit labels: the only head wide enough
    assert labelled_output(tagged, "output_1", x, y) == 1  # the artifacts' name for it, as --label-output takes
    with pytest.raises(UserError, match="gives independent sigmoid tags"):
        labelled_output(tagged, "tags", x, y % 4)
    with pytest.raises(UserError, match=r"gives the train data's labels for only \d+% of the samples"):
        labelled_output(tagged, "digit", x, (y + 1) % 10)  # shifted labels: not this head's


def test_target_values_a_head_does_not_predict_are_refused(k3, digits):
    """Digit labels given for the brightness head trained it towards 0..9, reported as a 35 % better MAE."""
    from deploykit.optimize.heads import labelled_output

    with pytest.raises(UserError, match=r"output 'reg' of the model predicts the train data's 'y' worse than their mean"):
        labelled_output(k3, "reg", [digits.x_train], digits.y_train.astype(np.float32))


def test_a_model_of_class_ids_alone_is_refused_for_every_fine_tune(tmp_path, digits):
    """Its one output is an argmax: the uncompiled model was refused suggesting --loss
    sparse_categorical_crossentropy, and that loss then failed inside model.fit with a Keras traceback
    (rank of output vs target). Now each fine-tune refuses it up front, naming no loss."""
    import keras
    import tensorflow as tf
    import tf_keras

    import deploykit

    x, y = digits.x_train[:64], digits.y_train[:64]
    inp = keras.Input((8, 8, 1))
    ids = keras.Model(inp, keras.ops.argmax(keras.layers.Dense(10)(keras.layers.Flatten()(inp)), axis=-1))
    ids.save(tmp_path / "ids.keras")
    tk_inp = tf_keras.Input((8, 8, 1))
    tk_logits = tf_keras.layers.Dense(10)(tf_keras.layers.Flatten()(tk_inp))
    tk_ids = tf_keras.Model(tk_inp, tf_keras.layers.Lambda(lambda t: tf.argmax(t, axis=-1))(tk_logits))
    for model, options, verb, flag in ((tmp_path / "ids.keras", {"prune": {"sparsity": 0.5, "loss": "sparse_categorical_crossentropy"}}, "prune", "--prune"),
                                       (tmp_path / "ids.keras", {"prune": 0.5}, "prune", "--prune"),
                                       (tmp_path / "ids.keras", {"cluster": 8}, "cluster", "--cluster"),
                                       (tk_ids, {"qat": True}, "quantization-aware train", "--qat")):
        out = tmp_path / f"out_{flag[2:]}"
        with pytest.raises(UserError, match=f"outputs class ids \\(an argmax inside it\\): nothing to fine-tune through; "
                                            f"{verb} the model before its argmax .* or drop {flag}") as err:
            deploykit.convert(model, "tflite-int8", data=x, train_data=(x, y), out=out, trust_model=True, **options)
        assert "loss" not in str(err.value) and not out.exists()
    with pytest.raises(UserError, match="outputs class ids"):  # the library's own fine-tunes say the same
        prune(ids, (x, y), sparsity=0.5, epochs=1, loss="sparse_categorical_crossentropy")
