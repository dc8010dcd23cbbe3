"""Pruning rules in NumPy against tensorflow-model-optimization itself, on the same weights.

The Keras 3 path re-implements tfmot's schedules and masks; these tests feed
identical inputs to both and compare, so "same sparsity semantics" is checked,
not assumed. Plus the pure-Python proof helpers (TF.js counting, survival check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deploykit.errors import UserError
from deploykit.optimize import schedule as sch
from deploykit.optimize import structure as st
from deploykit.optimize.sparsity import check_sparsity_survived, count_zeros


@pytest.fixture(scope="module")
def tfmot():
    from deploykit.optimize._tfmot import import_tfmot

    return import_tfmot()


def _tfmot_mask(tfmot, weights, sparsity, *, block_size=(1, 1), m_by_n=None):
    """tfmot's own mask for `weights` (pruning_impl.Pruning, the code the wrapper runs)."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl

    w = tf.Variable(weights)
    mask = tf.Variable(tf.ones_like(w))
    thr = tf.Variable(0.0)
    pruning = pruning_impl.Pruning(
        training_step_fn=lambda: tf.constant(1, tf.int64),
        pruning_vars=[(w, mask, thr)],
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(sparsity, 0, frequency=1),
        block_size=block_size, block_pooling_type="AVG", sparsity_m_by_n=m_by_n,
    )
    return np.asarray(pruning._maybe_update_block_mask(w)[1])


@pytest.mark.parametrize("shape", [(64, 10), (3, 3, 8, 16), (5, 7)])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.93])
def test_unstructured_mask_matches_tfmot(tfmot, shape, sparsity):
    w = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    ours = st.unstructured_mask(w, sparsity)
    theirs = _tfmot_mask(tfmot, w, sparsity)
    np.testing.assert_array_equal(ours, theirs)
    assert int(ours.sum()) == st.keep_count(w.size, sparsity)


@pytest.mark.parametrize("shape", [(16, 10), (3, 3, 8, 4), (1, 1, 12, 6)])
def test_2_4_mask_matches_tfmot(tfmot, shape):
    w = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    ours = st.m_by_n_mask(w)
    np.testing.assert_array_equal(ours, _tfmot_mask(tfmot, w, 0.5, m_by_n=(2, 4)))
    rows = st._to_rows(ours).reshape(-1, 4)  # groups of 4 input-channel weights
    assert (rows.sum(axis=1) == 2).all()


@pytest.mark.parametrize("shape,block", [((64, 12), (1, 4)), ((30, 10), (1, 4)), ((16, 16), (2, 2))])
def test_block_mask_matches_tfmot(tfmot, shape, block):
    w = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    ours = st.block_mask(w, 0.75, block)
    np.testing.assert_array_equal(ours, _tfmot_mask(tfmot, w, 0.75, block_size=block))


def test_schedules_match_tfmot(tfmot):
    import tensorflow as tf

    ours = [sch.PolynomialDecay(0.0, 0.8, 0, 60, frequency=6), sch.ConstantSparsity(0.7, 0, frequency=5),
            sch.PolynomialDecay(0.1, 0.9, 10, 50, frequency=10)]
    for s in ours:
        theirs = s.to_tfmot(tfmot)
        for step in range(0, 80):
            should, value = theirs(tf.constant(step, tf.int64))
            assert s(step)[0] == bool(should), (s, step)
            assert s(step)[1] == pytest.approx(float(value), abs=1e-6), (s, step)


@pytest.mark.parametrize("epochs,steps", [(1, 7), (2, 50), (3, 30), (6, 200), (4, 1)])
def test_make_schedule_reaches_target_on_an_update_step(epochs, steps):
    s = sch.make_schedule("polynomial", 0.8, steps, epochs)
    total = epochs * steps
    assert s.end_step <= total
    assert s(s.end_step) == (True, pytest.approx(0.8))
    if epochs >= 2:  # at least the last epoch fine-tunes at the target
        assert s.end_step <= (epochs - 1) * steps
    c = sch.make_schedule("constant", 0.6, steps, epochs)
    # the target from the first step: epoch 1 is not trained dense and then reported at the target
    assert c(1) == (True, pytest.approx(0.6)) and c.target_reached_step == 1


def test_keep_count_rounds_like_tfmot():
    assert st.keep_count(72, 0.8) == 14  # 14.4 -> 14
    assert st.keep_count(10, 0.75) == 2  # 2.5 -> 2 (half to even, as tf.math.round)
    assert st.keep_count(3, 0.99) == 1  # never all pruned


def test_structure_problems():
    assert st.structure_problem((3, 3, 1, 8), "2:4", (1, 4)) == "2:4 needs the input-channel count divisible by 4, this kernel has 1"
    assert st.structure_problem((3, 3, 8, 8), "2:4", (1, 4)) is None
    assert "rank-2" in st.structure_problem((3, 8, 8), "2:4", (1, 4))
    assert "rank-2 (Dense)" in st.structure_problem((3, 3, 8, 8), "block", (1, 4))
    assert st.structure_problem((3, 3, 1, 8), "unstructured", (1, 4)) is None
    with pytest.raises(UserError, match="unstructured, 2:4, block"):
        st.check_structure("4:8", (1, 4))
    with pytest.raises(UserError, match="block_size"):
        st.check_structure("block", (0, 4))
    with pytest.raises(UserError, match="polynomial, constant"):
        sch.make_schedule("cosine", 0.5, 10, 2)


def test_block_size_is_refused_with_a_structure_that_ignores_it():
    from deploykit.optimize.prune import check_settings
    from deploykit.optimize.settings import check_prune

    # only sparsity, or block with its default: the block size is the default 1x4
    assert check_settings(sparsity=0.5) == (0.5, (1, 4))
    assert check_settings(sparsity=0.5, structure="block") == (0.5, (1, 4))
    assert check_settings(sparsity=0.5, structure="block", block_size=(2, 2)) == (0.5, (2, 2))
    for structure in ("unstructured", "2:4"):
        with pytest.raises(UserError, match=f"block_size only applies to structure='block'.*not '{structure}'"):
            check_settings(sparsity=0.5, structure=structure, block_size=(2, 2))
    with pytest.raises(UserError, match="block_size only applies"):  # the Python API's dict goes the same way
        check_prune({"sparsity": 0.5, "block_size": (2, 2)}, train_data="train.npz")


def test_tfmot_import_leaves_keras_choice_alone():
    """tfmot sets TF_USE_LEGACY_KERAS=1 on import; ours must leave the process on Keras 3."""
    code = (
        "import os\n"
        "from deploykit.optimize._tfmot import import_tfmot\n"
        "import_tfmot()\n"
        "import tensorflow as tf\n"
        "from tensorflow_model_optimization.python.core.keras import compat\n"
        "print(os.environ.get('TF_USE_LEGACY_KERAS'), tf.keras.version(), compat.keras.__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    env_value, tf_keras_version, tfmot_keras = out.stdout.split()[-3:]
    assert env_value == "None" and tf_keras_version.startswith("3.") and tfmot_keras == "tf_keras"


# ------------------------------------------------------------------------ proof helpers
def _report(*kernels):
    return {"layers": [{"name": n, "kernels": [{"weight": "kernel", "size": size, "zeros": int(size * s),
                                                  "achieved_sparsity": s}]} for n, size, s in kernels]}


def _counts(*tensors, fmt="tflite"):
    return {"format": fmt, "tensors": [{"name": f"t{i}", "size": size, "zeros": int(size * s)}
                                       for i, (size, s) in enumerate(tensors)]}


def test_survival_check_matches_by_size_and_zeros():
    report = _report(("conv", 576, 0.8), ("fc", 640, 0.8), ("probs", 640, 0.5))
    assert check_sparsity_survived(report, _counts((640, 0.5), (576, 0.81), (640, 0.8), (10, 0.0))) == []
    failures = check_sparsity_survived(report, _counts((576, 0.81), (640, 0.8), (640, 0.2)), tolerance=0.01)
    assert len(failures) == 1 and failures[0].startswith("probs/kernel (640 weights, 50.0% zeros) was densified")
    # two kernels of one size cannot both claim the same sparse tensor
    failures = check_sparsity_survived(_report(("a", 100, 0.8), ("b", 100, 0.8)), _counts((100, 0.8), (100, 0.0)))
    assert len(failures) == 1 and "20.0%" not in failures[0] and "0.0% zeros" in failures[0]
    assert "no tensor of that size" in check_sparsity_survived(_report(("a", 7, 0.5)), _counts((8, 0.5)))[0]


def test_count_zeros_tfjs_dequantizes_like_the_runtime(tmp_path):
    kernel = np.array([0.0, 0.5, -0.25, 0.0, 1.0, 0.0], dtype=np.float32)
    scale, vmin = 0.25 / 4, -0.25
    q = np.round((kernel - vmin) / scale).astype(np.uint8)  # zero-preserving: -min is a multiple of scale
    bias = np.array([0.0, 2.0], dtype=np.float32)
    (tmp_path / "group1-shard1of1.bin").write_bytes(q.tobytes() + bias.tobytes())
    manifest = {"weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": [
        {"name": "dense/kernel", "shape": [3, 2], "dtype": "float32",
         "quantization": {"dtype": "uint8", "min": vmin, "scale": scale}},
        {"name": "dense/bias", "shape": [2], "dtype": "float32"}]}]}
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    counts = count_zeros(tmp_path)
    assert counts["format"] == "tfjs"
    by_name = {t["name"]: t for t in counts["tensors"]}
    assert by_name["dense/kernel"]["zeros"] == 3 and by_name["dense/kernel"]["shape"] == [3, 2]
    assert by_name["dense/bias"]["zeros"] == 1
    assert counts["total_zeros"] == 4 and counts["total_size"] == 8


def test_count_zeros_refuses_unknown_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        count_zeros(tmp_path / "missing.tflite")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(UserError, match=r"\.tflite, \.onnx or TF.js"):
        count_zeros(tmp_path / "model.pt")


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_unknown_training_names_are_user_errors_before_training(kind):
    from deploykit.optimize.prune import _training_setup

    loss, _, metrics, _ = _training_setup(kind, None, "sparse_categorical_crossentropy", ["accuracy", "mae"], "sgd", None)
    assert loss == "sparse_categorical_crossentropy" and metrics == ["accuracy", "mae"]
    bad = [("nonsense_loss", None, None, "unknown loss 'nonsense_loss'"),
           ("mse", ["bogus_metric"], None, "unknown metric 'bogus_metric'"),
           ("mse", None, "bogus_opt", "unknown optimizer 'bogus_opt'"),
           ({"class_name": "MyLoss", "config": {}}, None, None, "unknown loss 'MyLoss'")]
    for loss, metrics, optimizer, message in bad:
        with pytest.raises(UserError, match=message):
            _training_setup(kind, None, loss, metrics, optimizer, None)


def test_2_4_on_a_transposed_convolution_groups_its_input_channels():
    """Keras stores Conv2DTranspose kernels [h, w, out, in]: 2:4 runs along 'in' (TFLite's TRANSPOSE_CONV
    reduces over it), not along 'out' as a [h, w, in, out] reading would."""
    from deploykit.optimize.structure import m_by_n_mask, structure_problem

    w = np.random.default_rng(0).normal(size=(3, 3, 6, 8)).astype(np.float32)  # out=6 (not /4), in=8
    mask = m_by_n_mask(w, transposed=True)
    groups = mask.reshape(3, 3, 6, 2, 4)  # four consecutive input channels
    assert (groups.sum(axis=-1) == 2).all()
    assert structure_problem(w.shape, "2:4", (1, 4), transposed=True) is None
    assert "divisible by 4" in structure_problem(w.shape, "2:4", (1, 4), transposed=False)  # read as in=6
    assert "this kernel has 3" in structure_problem((3, 3, 8, 3), "2:4", (1, 4), transposed=True)  # RGB-input upsampler


def test_layers_inside_wrappers_are_pruned_in_keras3_and_named_as_kept_dense_in_tf_keras():
    """TimeDistributed(Dense) and Bidirectional(GRU) kernels stayed dense, said to have "no prunable kernel"
    (the wrapper holds them): Keras 3 prunes the layers inside, named wrapper/inner; tfmot wraps whole layers,
    so a tf_keras wrapper stays dense, said as such."""
    import keras
    import tf_keras

    from deploykit.optimize.prune import _plan

    def build(lib):
        inp = lib.Input((5, 4))
        h = lib.layers.TimeDistributed(lib.layers.Dense(8, name="d"), name="td")(inp)
        h = lib.layers.Bidirectional(lib.layers.GRU(4, name="g"), name="bi")(h)
        return lib.Model(inp, lib.layers.Dense(2, name="out")(h))

    kernels, skipped = _plan(build(keras), "keras3", "unstructured", (1, 4))
    assert [(k.layer, k.weight) for k in kernels] == [
        ("td/d", "kernel"), ("bi/forward_g", "kernel"), ("bi/forward_g", "recurrent_kernel"),
        ("bi/backward_g", "kernel"), ("bi/backward_g", "recurrent_kernel"), ("out", "kernel")], kernels
    kernels, skipped = _plan(build(tf_keras), "tf_keras", "unstructured", (1, 4))
    assert [k.layer for k in kernels] == ["out"]
    assert {s["layer"]: s["reason"] for s in skipped} == {
        w: f"a wrapper: tfmot prunes the layers it wraps itself, not one inside {c}; kept dense"
        for w, c in (("td", "TimeDistributed"), ("bi", "Bidirectional"))}


def test_equal_validation_accuracy_goes_to_the_lower_true_class_loss():
    """126 validation digits: many epochs tie on accuracy, and the first of them was kept."""
    from deploykit.optimize.prune import _Score, _true_class_nll

    score = _Score()
    assert score.better((0.99, 0.10), (0.99, 0.20)) and not score.better((0.99, 0.20), (0.99, 0.10))
    assert score.better((1.0, 0.9), (0.99, 0.01))  # accuracy first
    assert not score.better((0.99, None), (0.99, 0.2))  # no tie-break known: the earlier epoch stays
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert _true_class_nll(probs, np.array([0, 1])) == pytest.approx(-np.mean(np.log([0.9, 0.8])))
    logits = np.log(probs) + 3.0  # a loss with from_logits=True: softmax first
    assert _true_class_nll(logits, np.array([0, 1]), logits=True) == pytest.approx(-np.mean(np.log([0.9, 0.8])))
    assert _true_class_nll(np.array([[0.7], [0.2]]), np.array([1, 0])) == pytest.approx(-np.mean(np.log([0.7, 0.8])))
    # a one-unit logit output whose values happen to lie in 0..1 is still read as logits
    z = np.array([[0.9], [0.1]])
    sig = 1 / (1 + np.exp(-z[:, 0]))
    assert _true_class_nll(z, np.array([1, 0]), logits=True) == pytest.approx(-np.mean(np.log([sig[0], 1 - sig[1]])))

    assert _true_class_nll(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4))) is None  # per-pixel labels: no tie-break
    regression = _Score(regression_loss="mse")
    assert regression.better((0.1, None), (0.2, None))


def test_from_logits_is_read_from_the_loss():
    import keras

    from deploykit.optimize.prune import from_logits

    assert from_logits(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not from_logits("sparse_categorical_crossentropy")
    assert from_logits({"class_name": "BinaryCrossentropy", "config": {"from_logits": True}})
    assert not from_logits(lambda y, p: p)


@pytest.mark.parametrize("drop, epochs_run, start", [(0.01, 3, 1.0), (0.5, 8, 1.0), (0.5, 3, 0.0), (0.5, 5, 0.01)])
def test_patience_counts_the_score_and_only_a_clear_tie_break_gain(drop, epochs_run, start):
    """A loss creeping down while accuracy stays flat kept resetting patience: fine-tunes never stopped.
    At a saturated validation accuracy, a fine-tune whose -log p halves each epoch keeps its latest
    epoch as the best, and stopping it there (the report then called the kept epoch no better) cut
    the user's --epochs short."""
    from deploykit.optimize.prune import _EpochState, _Score

    class Flat(_Score):
        def __init__(self):
            super().__init__()
            self.nll = start  # 0: a model sure of every sample; 0.01 halving: gains fall under 1e-3 at epoch 4

        def measure(self, model, data):
            self.nll *= 1.0 - drop
            return 0.95, self.nll

    class Model:
        def get_weights(self):
            return []

    state = _EpochState(Model(), 8, None, 2, lambda msg: None, "cluster", Flat())
    for epoch in range(8):
        state.end_epoch(epoch, {"loss": 0.1})
        if state.stop:
            break
    assert state.stop == (epochs_run < 8) and len(state.history) == epochs_run  # creeping: two flat epochs, stop
    assert state.best[1] == (1 if start == 0 else epochs_run)  # the kept epoch: the lowest tie-break (the first of equals)
    assert [h["val_nll"] for h in state.history] == pytest.approx([start * (1.0 - drop) ** (i + 1) for i in range(epochs_run)])


def test_convert_names_a_fine_tune_setting_passed_as_a_keyword_and_where_it_goes():
    import deploykit
    from deploykit.errors import UserError

    with pytest.raises(UserError, match=r"unknown option\(s\) epochs for convert; choose from: eval_data, .*"
                                        r"epochs is a fine-tune setting: pass it in the dict of the step, "
                                        r"e\.g\. prune=\{'sparsity': 0\.8, 'epochs': \.\.\.\}"):
        deploykit.convert("missing.keras", ["tflite-fp32"], prune=0.8, epochs=2)
    with pytest.raises(UserError, match=r"unknown option\(s\) colour for convert; choose from: .*cluster$"):
        deploykit.convert("missing.keras", ["tflite-fp32"], colour="red")


def test_a_loss_saved_as_a_function_and_metric_objects_are_read_from_the_compile_config():
    """keras.losses.sparse_categorical_crossentropy (a function) is saved as {"class_name": "function",
    "config": "<name>"}: reading it crashed every run with labels (AttributeError, exit 1). Metric objects
    (SparseCategoricalAccuracy(name="sca")) were dropped from the fine-tune without a word."""
    import keras

    from deploykit.optimize.prune import _loss_name, _training_setup, is_regression_loss, metric_name

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", keras.losses.sparse_categorical_crossentropy,
                  metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy(name="sca"),
                           keras.metrics.sparse_top_k_categorical_accuracy])
    cfg = model.get_compile_config()  # as config.json carries it
    assert cfg["loss"]["class_name"] == "function"
    assert _loss_name(cfg["loss"]) == "sparse_categorical_crossentropy"
    loss, _, metrics, source = _training_setup("keras3", cfg, None, None, None, None)
    assert source == "model compile config" and [metric_name(m) for m in metrics] == [
        "accuracy", "sca", "sparse_top_k_categorical_accuracy"]
    reg = {"loss": {"module": "builtins", "class_name": "function", "config": "mean_squared_error",
                    "registered_name": "function"}}
    assert is_regression_loss(None, reg)
    assert _loss_name({"class_name": "Huber", "config": {"name": "huber_loss"}}) == "Huber"


def test_fine_tune_reads_one_hot_rows_with_a_trailing_axis_of_one_as_classes():
    """(N, C, 1) one-hot train labels were read per position: 'do not score the model's first output'."""
    import keras

    from deploykit.optimize.prune import fine_tune_data

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    x, y = np.zeros((6, 4), np.float32), np.array([0, 1, 2, 2, 1, 0])
    train, val, regression = fine_tune_data((x, np.eye(3)[y][..., None]), (x, np.eye(3)[y][..., None]), model, False,
                                            "pruning")
    assert train.y.tolist() == val.y.tolist() == y.tolist() and not regression


def test_a_class_loss_the_output_cannot_take_is_refused_before_training():
    """--loss sparse_categorical_crossentropy on one sigmoid unit, binary_crossentropy on a softmax's class
    ids: a TensorFlow traceback from inside fit(), exit 1."""
    import keras

    from deploykit.optimize.cluster import cluster
    from deploykit.optimize.prune import prune

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 2, 64)
    inp = keras.Input((8,))
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    sigmoid = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(hidden))
    softmax = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(hidden))
    for loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        with pytest.raises(UserError, match=rf"loss {loss} needs a class per output column .*use binary_crossentropy"):
            prune(sigmoid, (x, y), sparsity=0.5, epochs=1, loss=loss)
    with pytest.raises(UserError, match=r"loss binary_crossentropy takes a 0/1 tag per output column, and 'y' are class "
                                        r"ids for the model's 2 output columns: use sparse_categorical_crossentropy"):
        cluster(softmax, (x, y), clusters=4, epochs=1, loss="binary_crossentropy")
    with pytest.raises(UserError, match=r"binary_crossentropy for one sigmoid unit"):  # no loss: which one to pass
        prune(sigmoid, (x, y), sparsity=0.5, epochs=1)


def test_why_no_layer_could_be_pruned_says_each_reason_once():
    """A model of fifty frozen layers said the same sentence fifty times in its one-line error."""
    from deploykit.optimize.prune import skipped_reasons

    frozen = [{"layer": f"conv{i}", "reason": "frozen (trainable=False)"} for i in range(9)]
    said = skipped_reasons([{"layer": "rescale", "reason": "preprocessing layer"}, *frozen])
    assert said == ("rescale: preprocessing layer; conv0, conv1, conv2, conv3, conv4, conv5 and 3 more: "
                    "frozen (trainable=False)")
    assert skipped_reasons([]) == "the model has no layers"
