"""Model loading: every supported input kind, safe-mode refusals, and unreadable files."""

from __future__ import annotations

import os
import json
import zipfile

import numpy as np
import pytest

from deploykit.errors import DeployError, ModelLoadError, UntrustedModelError
from deploykit.models import ModelInfo, inspect_model, load_model

KINDS = {
    # fixture name -> (expected kind, fixture holding the model the file came from)
    "keras3_path": ("keras3", "keras3_model"),
    "tf_keras_keras_path": ("tf_keras", "tf_keras_model"),
    "tf_keras_h5_path": ("tf_keras", "tf_keras_model"),
    "saved_model_dir": ("saved_model", "keras3_model"),
    "keras3_model": ("keras3", "keras3_model"),
    "tf_keras_model": ("tf_keras", "tf_keras_model"),
}


@pytest.fixture(params=list(KINDS))
def any_model(request):
    kind, origin = KINDS[request.param]
    return request.param, request.getfixturevalue(request.param), kind, request.getfixturevalue(origin)


def test_load_each_kind(any_model, digits):
    fixture, source, kind, origin = any_model
    loaded = load_model(source)
    try:
        assert loaded.kind == kind
        (spec,) = loaded.inputs
        assert spec.name == "pixels" and spec.shape == (None, 8, 8, 1) and spec.dtype == "float32"
        sig = loaded.signature()
        assert [s.name for s in sig["inputs"]] == ["pixels"]
        assert len(sig["outputs"]) == 1 and sig["outputs"][0].shape == (None, 10)
        assert loaded.output_names == [sig["outputs"][0].name]
        # reference outputs equal the in-memory model's, whatever the input kind (batching included)
        x = digits.x_eval[:70]
        (got,) = loaded.predict([x], batch_size=32)
        want = np.asarray(origin(x, training=False))
        np.testing.assert_allclose(got, want, atol=1e-5)
        # the SavedModel export is made once and shared by every target
        assert loaded.saved_model_dir() == loaded.saved_model_dir()
    finally:
        loaded.release()


def test_release_removes_the_temporary_export(keras3_path):
    loaded = load_model(keras3_path)
    sm = loaded.saved_model_dir()
    assert (sm / "saved_model.pb").exists()
    loaded.release()
    assert not sm.exists()


def test_info_lists_preprocessing_layers_and_params(any_model):
    fixture, source, kind, origin = any_model
    info = load_model(source).info()
    assert isinstance(info, ModelInfo)
    assert info.kind == kind
    assert [s.name for s in info.inputs] == ["pixels"]
    assert info.params == origin.count_params()
    if kind == "saved_model":  # a SavedModel has no Keras layers to describe
        assert info.layers == []
        return
    assert [layer["class"] for layer in info.layers] == [type(layer).__name__ for layer in origin.layers]
    assert info.preprocessing_layers == [{"name": "rescale", "class": "Rescaling"}]
    assert info.name == origin.name
    json.dumps(info.to_dict())  # what the manifest records


def test_info_counts_the_same_layers_for_a_functional_model_as_for_its_sequential_twin():
    """A functional model lists its inputs among its layers, a Sequential not: `deploy inspect` said
    "layers (7)" for one and 6 for the other of the same network."""
    import keras

    body = [keras.layers.Rescaling(1 / 16), keras.layers.Flatten(), keras.layers.Dense(4)]
    seq = keras.Sequential([keras.Input((8, 8, 1)), *body])
    inp = keras.Input((8, 8, 1))
    out = inp
    for layer in [keras.layers.Rescaling(1 / 16), keras.layers.Flatten(), keras.layers.Dense(4)]:
        out = layer(out)
    classes = [[l["class"] for l in load_model(m).info().layers] for m in (seq, keras.Model(inp, out))]
    assert classes[0] == classes[1] == ["Rescaling", "Flatten", "Dense"]


def test_info_sees_preprocessing_inside_nested_models():
    import keras

    pre = keras.Sequential([keras.layers.Resizing(4, 4, name="resize"), keras.layers.Rescaling(0.5, name="scale")],
                           name="preprocess")
    inp = keras.Input((8, 8, 1), name="img")
    out = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(pre(inp)))
    info = inspect_model(keras.Model(inp, out, name="nested"))
    assert [p["class"] for p in info.preprocessing_layers] == ["Resizing", "Rescaling"]
    assert info.params == 4 * 4 * 2 + 2


def test_info_marks_augmentation_layers_as_identity_at_inference():
    """inspect listed RandomFlip beside Resizing as preprocessing, though it passes its input through at
    inference and is replaced by Identity at export."""
    import keras

    inp = keras.Input((8, 8, 1), name="img")
    h = keras.layers.RandomFlip(name="flip")(keras.layers.Rescaling(0.5, name="scale")(inp))
    info = inspect_model(keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h))))
    assert info.preprocessing_layers == [{"name": "scale", "class": "Rescaling"},
                                         {"name": "flip", "class": "RandomFlip", "at_inference": "identity"}]


def test_saved_model_params_leave_out_the_optimizer_and_count_a_plain_module(tmp_path):
    """`deploy inspect` printed "? parameters" for every SavedModel. The object graph also holds the
    optimizer's slots (tf_keras saves them) and Keras 3's seed-generator state, which Keras does not count."""
    import keras
    import tf_keras

    x, y = np.random.default_rng(0).random((16, 8)), np.random.default_rng(1).random((16, 2))
    legacy = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(4),
                                  tf_keras.layers.BatchNormalization(), tf_keras.layers.Dense(2)])
    legacy.compile("adam", "mse")
    legacy.fit(x, y, verbose=0)  # Adam's m and v now exist and are saved
    legacy.save(tmp_path / "legacy", save_format="tf")
    assert load_model(tmp_path / "legacy").info().params == legacy.count_params() == 62

    current = keras.Sequential([keras.Input((8,)), keras.layers.Normalization(), keras.layers.Dense(4),
                                keras.layers.Dropout(0.2), keras.layers.Dense(2)])
    current.export(str(tmp_path / "current"), format="tf_saved_model", verbose=False)
    assert load_model(tmp_path / "current").info().params == current.count_params() == 17 + 36 + 10

    module = _module_saved_model(tmp_path / "module", lambda m, x: x @ m.w)
    assert load_model(module).info().params == 12


def test_inspect_equals_load_info(keras3_path):
    assert inspect_model(keras3_path).to_dict() == load_model(keras3_path).info().to_dict()


# ----------------------------------------------------------------------------- safe mode
@pytest.mark.parametrize("fixture", ["lambda_keras3_path", "lambda_tf_keras_h5_path"])
def test_lambda_refused_then_accepted_with_trust(request, fixture, digits):
    path = request.getfixturevalue(fixture)
    with pytest.raises(UntrustedModelError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert "Lambda" in msg and "scale_lambda" in msg and "--trust-model" in msg
    assert isinstance(exc.value, ModelLoadError) and isinstance(exc.value, ValueError)

    loaded = load_model(path, trust_model=True)
    (out,) = loaded.predict([digits.x_eval[:4]])
    assert out.shape == (4, 10) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # the softmax after the Lambda ran


def _module_saved_model(path, body):
    """A plain tf.Module SavedModel whose serving function runs ``body(module, x)``."""
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones((4, 3)))

        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="feat")])
        def serve(self, x):
            return {"output_0": body(self, x)}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_saved_model_graph_that_touches_files_is_refused_until_trusted(tmp_path, saved_model_dir):
    import tensorflow as tf

    marker = tmp_path / "written_by_the_model.txt"

    def writes(module, x):
        tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
        return tf.nn.softmax(x @ module.w)

    def prints_to_a_file_in_a_branch(module, x):  # reached only through a cond's branch function
        def side():
            tf.print("x", output_stream=f"file://{marker}")
            return x @ module.w
        return tf.cond(tf.reduce_sum(x) > 0, side, lambda: x @ module.w)

    def records(module, x):  # no listed I/O op: refused as a stateful op nobody vouched for
        tf.data.experimental.TFRecordWriter(str(marker)).write(tf.data.Dataset.from_tensors(tf.strings.as_string(x[0, 0])))
        return x @ module.w

    def checkpoints(module, x):  # the saver's own op, outside the saver's functions
        tf.raw_ops.SaveV2(prefix=str(marker), tensor_names=["x"], shape_and_slices=[""], tensors=[x])
        return x @ module.w

    for body, op, name in ((writes, "WriteFile", "WriteFile"), (prints_to_a_file_in_a_branch, "PrintV2", "PrintV2"),
                           (records, r"\w*Dataset", "records"), (checkpoints, "SaveV2", "checkpoints")):
        path = _module_saved_model(tmp_path / name, body)
        with pytest.raises(UntrustedModelError, match=rf"runs {op}, which .* --trust-model"):
            load_model(path)
        assert not marker.exists()
    loaded = load_model(tmp_path / "WriteFile", trust_model=True)
    loaded.predict([np.ones((2, 4), np.float32)])
    assert float(marker.read_text()) == 8  # trusted: it runs, side effect and all

    # plain compute graphs load: a tf.Module, a Keras export (saver functions hold SaveV2/RestoreV2)
    assert load_model(_module_saved_model(tmp_path / "plain", lambda m, x: tf.nn.relu(x @ m.w))).kind == "saved_model"
    checked = _module_saved_model(tmp_path / "checked", lambda m, x: tf.debugging.assert_all_finite(x @ m.w, "finite"))
    assert load_model(checked).kind == "saved_model"  # CheckNumerics: stateful, harmless
    assert load_model(saved_model_dir).kind == "saved_model"


def test_an_output_that_does_not_grow_with_the_batch_is_refused_in_one_line(tmp_path):
    import tensorflow as tf

    import deploykit
    from deploykit.errors import UserError

    path = _module_saved_model(tmp_path / "unbatched", lambda m, x: tf.reduce_mean(x @ m.w, axis=0))
    with pytest.raises(UserError, match=r"output 'output_0' has shape \(3,\) whatever the batch size"):
        deploykit.convert(path, ["tflite-fp32"], data=np.ones((16, 4), np.float32), out=tmp_path / "o", bench=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["model", "layer", "weight", "backslash"])  # input names: test_convert's own test
def test_names_tensorflow_cannot_export_are_refused_up_front(tmp_path, where):
    """Keras 3 takes "Digit classifier" as a name; every SavedModel export stops on it, so each
    target failed after the work had begun. Refused at load, in one line, saying how to name it."""
    import keras

    class Scaled(keras.layers.Layer):
        def build(self, shape):
            self.k = self.add_weight(shape=(shape[-1],), name="gain (per column)")

        def call(self, x):
            return x * self.k

    inp = keras.Input((8,), name="pixels")
    hidden = Scaled(name="scaled")(inp) if where == "weight" else inp
    # "dense\\a" passed: the pattern, copied from TensorFlow's C++ string, read its escaped '-' as a backslash
    out = keras.layers.Dense(4, name={"layer": "my dense", "backslash": "dense\\a"}.get(where, "dense"))(hidden)
    model = keras.Model(inp, out, name="Digit classifier" if where == "model" else "digits")
    model.save(tmp_path / "m.keras")
    with pytest.raises(ModelLoadError, match=r"has characters TensorFlow cannot export .* name it e\.g\. '\w+'"):
        load_model(model)
    if where == "model":  # the file says the same before any work: one line, exit 2, nothing written
        import subprocess
        import sys
        from pathlib import Path

        deploy = Path(sys.executable).with_name("deploy")
        proc = subprocess.run([str(deploy), "convert", str(tmp_path / "m.keras"), "-t", "tflite-fp32",
                               "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert proc.returncode == 2 and "'Digit classifier' has characters" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_unregistered_custom_layer_is_named(tmp_path):
    """A layer class the loading process does not know: ModelLoadError naming the class."""
    import keras

    @keras.saving.register_keras_serializable(package="dktest_inproc")
    class Tripler(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    model = keras.Sequential([keras.Input((3,)), Tripler(name="tripler"), keras.layers.Dense(2)])
    path = tmp_path / "custom.keras"
    model.save(path)
    assert load_model(path).kind == "keras3"  # registered: loads
    registry = keras.saving.get_custom_objects()  # the live global registry
    saved = registry.pop("dktest_inproc>Tripler")
    try:
        with pytest.raises(ModelLoadError) as exc:
            load_model(path)
    finally:
        registry["dktest_inproc>Tripler"] = saved
    msg = str(exc.value)
    assert "Tripler" in msg and "unknown custom object" in msg and "register_keras_serializable" in msg
    assert not isinstance(exc.value, UntrustedModelError)


def test_unregistered_tf_keras_custom_layer_in_h5_is_named(tmp_path):
    import warnings

    import tf_keras

    @tf_keras.saving.register_keras_serializable(package="dktest_inproc")
    class TkTripler(tf_keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    model = tf_keras.Sequential([tf_keras.layers.InputLayer((3,)), TkTripler(), tf_keras.layers.Dense(2)])
    path = tmp_path / "custom_tk.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    registry = tf_keras.saving.get_custom_objects()
    saved = registry.pop("dktest_inproc>TkTripler")
    try:
        with pytest.raises(ModelLoadError, match="TkTripler"):
            load_model(path)
    finally:
        registry["dktest_inproc>TkTripler"] = saved


# ----------------------------------------------------------------------------- unreadable input
def test_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.keras")


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("truncated_keras", "truncated or corrupt"),
        ("truncated_h5", "truncated or corrupt"),
        ("corrupt_keras", "truncated or corrupt"),
        ("empty_keras", "truncated or corrupt"),
        # a file saved under the other format's suffix is not called truncated or corrupt
        ("keras_as_h5", "this is a .keras (zip) model archive, not an HDF5 file; rename it to keras_zip_named.keras"),
        ("h5_as_keras", "this is an HDF5 (.h5) model file, not a .keras archive; rename it to h5_named.h5"),
        ("wrong_suffix", "unsupported model file type '.onnx'"),
    ],
)
def test_unreadable_files(broken_models, key, fragment):
    path = broken_models[key]
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert fragment in str(exc.value)
    assert str(path) in str(exc.value)  # the message names the file
    assert not isinstance(exc.value, UntrustedModelError)


def test_zip_without_model_config(tmp_path):
    path = tmp_path / "notamodel.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelLoadError, match="no config.json inside"):
        load_model(path)


def test_malformed_model_configs_are_called_malformed_not_custom_code(tmp_path, keras3_path):
    import json

    listed = tmp_path / "list.keras"
    with zipfile.ZipFile(listed, "w") as zf:
        zf.writestr("config.json", "[1, 2]")
    with pytest.raises(ModelLoadError, match="not a Keras model config"):
        load_model(listed)
    # Keras's own Functional with a broken layer list: it used to be "unknown custom object 'Functional'"
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(keras3_path) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                config["config"]["layers"] = "oops"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError) as exc:
        load_model(edited)
    assert "malformed" in str(exc.value) and "custom object" not in str(exc.value), str(exc.value)


def test_h5_without_model_config(tmp_path, tf_keras_model):
    path = tmp_path / "weights_only.h5"
    tf_keras_model.save_weights(path)
    with pytest.raises(ModelLoadError, match="holds no model_config"):
        load_model(path)


def test_directory_without_saved_model(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ModelLoadError, match="without saved_model.pb"):
        load_model(tmp_path / "dir")


def test_corrupt_saved_model(tmp_path):
    d = tmp_path / "sm"
    d.mkdir()
    (d / "saved_model.pb").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="not a readable SavedModel"):
        load_model(d)


@pytest.mark.parametrize("obj", [object(), np.zeros(3), "not/a/path/model.bin"])
def test_not_a_model(obj):
    with pytest.raises(ModelLoadError):
        load_model(obj)


def test_errors_belong_to_the_family():
    assert issubclass(UntrustedModelError, ModelLoadError)
    assert issubclass(ModelLoadError, DeployError) and issubclass(ModelLoadError, ValueError)


def test_info_names_dict_outputs_by_their_keys_as_the_artifacts_do():
    import keras

    from deploykit.models import load_model

    inp = keras.Input((4,), name="f")
    model = keras.Model(inp, {"zeta": keras.layers.Dense(2)(inp), "alpha": keras.layers.Dense(3)(inp)})
    loaded = load_model(model)
    assert [o.name for o in loaded.info().outputs] == ["alpha", "zeta"] == loaded.output_names
    assert [o.shape for o in loaded.info().outputs] == [(None, 3), (None, 2)]


def test_clones_keep_an_adapted_normalization(tmp_path):
    """clone_model + set_weights left Keras 3's Normalization at mean 0 / variance 1 (it finalizes only when
    loaded): the mixed-precision twin and the pruning clone computed another model."""
    import keras

    from deploykit.models import copy_state, float32_twin

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 4)) * [1, 10, 100, 1000] + [5, -50, 500, 5000]).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input((4,)), norm, keras.layers.Dense(3)])
    clone = keras.models.clone_model(model)
    copy_state(model, clone)
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    x = (rng.normal(size=(64, 4)) * [1, 2, 3, 4] + [5, -3, 8, 2]).astype("float32")  # float16 computes these finely
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        norm16 = keras.layers.Normalization()
        norm16.adapt(x)
        mixed = keras.Sequential([keras.Input((4,)), norm16, keras.layers.Dense(3)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    twin, policy = float32_twin(mixed)
    assert policy == "mixed_float16"
    np.testing.assert_allclose(twin.predict(x, verbose=0), mixed.predict(x, verbose=0).astype("float32"), rtol=2e-2, atol=2e-2)


def test_a_built_subclassed_model_is_wrapped_and_an_unbuilt_one_refused():
    import keras

    from deploykit.errors import ModelLoadError
    from deploykit.models import load_model

    class SubNet(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.scale = keras.layers.Rescaling(1 / 255)
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.dense(self.scale(x))

    x = np.random.default_rng(0).uniform(0, 255, (5, 6)).astype("float32")
    built = SubNet()
    expected = built(x)
    loaded = load_model(built)  # read 'inputs' of a subclassed model: AttributeError before
    assert [s.shape for s in loaded.inputs] == [(None, 6)]
    np.testing.assert_allclose(loaded.predict([x])[0], np.asarray(expected), rtol=1e-6)
    with pytest.raises(ModelLoadError, match="subclassed model whose input shape is unknown.*call it once"):
        load_model(SubNet())
    with pytest.raises(ModelLoadError, match="Sequential model was never built.*keras.Input"):
        load_model(keras.Sequential([keras.layers.Dense(2)]))


def test_subclassed_models_called_on_a_list_or_a_dict_are_wrapped():
    import keras

    from deploykit.models import load_model

    class Two(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.a, self.b, self.out = keras.layers.Dense(4), keras.layers.Dense(4), keras.layers.Dense(2)

        def call(self, inputs):
            first, second = (inputs["img"], inputs["meta"]) if isinstance(inputs, dict) else inputs
            return self.out(keras.ops.concatenate([self.a(first), self.b(second)], -1))

    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(3, 5)).astype("float32"), rng.normal(size=(3, 2)).astype("float32")
    listed = Two()
    expected = np.asarray(listed([x0, x1]))
    loaded = load_model(listed)
    assert [s.shape for s in loaded.inputs] == [(None, 5), (None, 2)]
    np.testing.assert_allclose(loaded.predict([x0, x1])[0], expected, rtol=1e-5)
    keyed = Two()
    expected = np.asarray(keyed({"img": x0, "meta": x1}))
    loaded = load_model(keyed)
    assert sorted(s.name for s in loaded.inputs) == ["img", "meta"]
    by_name = {s.name: x for s, x in zip(loaded.inputs, [x0 if s.name == "img" else x1 for s in loaded.inputs])}
    np.testing.assert_allclose(loaded.predict([by_name[s.name] for s in loaded.inputs])[0], expected, rtol=1e-5)


def test_a_called_or_built_tf_keras_subclassed_model_is_wrapped_and_the_refusal_names_tf_keras():
    """A tf_keras subclassed model called on a batch was refused as "never built or called", and the fix the
    message gave (keras.Input) crashes on a tf_keras model."""
    import tf_keras

    from deploykit.errors import ModelLoadError
    from deploykit.models import load_model

    class TSub(tf_keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.a, self.b, self.out = tf_keras.layers.Dense(4), tf_keras.layers.Dense(4), tf_keras.layers.Dense(2)

        def call(self, inputs):
            if isinstance(inputs, (list, dict)):
                first, second = (inputs["img"], inputs["meta"]) if isinstance(inputs, dict) else inputs
                return self.out(tf_keras.layers.Concatenate()([self.a(first), self.b(second)]))
            return self.out(self.a(inputs))

    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(3, 5)).astype("float32"), rng.normal(size=(3, 2)).astype("float32")
    called = TSub()
    expected = np.asarray(called(x0))
    loaded = load_model(called)
    assert loaded.kind == "tf_keras" and [tuple(s.shape) for s in loaded.inputs] == [(None, 5)]
    np.testing.assert_allclose(loaded.predict([x0])[0], expected, rtol=1e-6)
    built = TSub()
    built.build((None, 5))
    assert [tuple(s.shape) for s in load_model(built).inputs] == [(None, 5)]
    listed = TSub()
    expected = np.asarray(listed([x0, x1]))
    loaded = load_model(listed)
    assert [tuple(s.shape) for s in loaded.inputs] == [(None, 5), (None, 2)]
    np.testing.assert_allclose(loaded.predict([x0, x1])[0], expected, rtol=1e-5)
    keyed = TSub()
    keyed({"img": x0, "meta": x1})
    assert sorted(s.name for s in load_model(keyed).inputs) == ["img", "meta"]
    with pytest.raises(ModelLoadError, match=r"never built or called.*inp = tf_keras\.Input\(shape=\.\.\.\); "
                                             r"tf_keras\.Model\(inp, model\(inp\)\)"):
        load_model(TSub())
    with pytest.raises(ModelLoadError, match=r"Sequential model was never built.*tf_keras\.Input"):
        load_model(tf_keras.Sequential([tf_keras.layers.Dense(2)]))


def test_an_unbuilt_in_memory_sequential_is_not_told_to_save_it_again(tmp_path):
    """The model was never saved: "save it again" sent an in-memory model's owner looking for a file."""
    import keras

    from deploykit.errors import ModelLoadError
    from deploykit.models import load_model

    with pytest.raises(ModelLoadError, match=r"^<in-memory Sequential .*never built.*or call it once on a batch\) "
                                             r"and pass it again$"):
        load_model(keras.Sequential([keras.layers.Dense(2)]))


def test_damaged_archives_and_h5_configs_are_one_line_errors(tmp_path, keras3_path):
    """They crashed with AttributeError, UnicodeDecodeError, RecursionError, JSONDecodeError, TypeError."""
    import h5py

    with zipfile.ZipFile(keras3_path) as src:
        entries = {n: src.read(n) for n in src.namelist()}

    def archive(name: str, **replace: bytes):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in entries.items():
                zf.writestr(n, replace.get(n.replace(".", "_"), data))
        return path

    cases = [
        (archive("meta.keras", metadata_json=b"[1, 2]"), "metadata.json inside the archive is not a JSON object"),
        (archive("latin.keras", config_json=b'{"class_name": "\xff\xfe"}'), "not valid JSON"),
        (archive("deep.keras", config_json=b'{"class_name": "Sequential", "config": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
         "not valid JSON"),
    ]
    for name, value in (("text.h5", "{not json"), ("int.h5", 5)):
        with h5py.File(tmp_path / name, "w") as fh:
            fh.attrs["model_config"] = value
        cases.append((tmp_path / name, "model_config is not a Keras model config"))
    for path, fragment in cases:
        with pytest.raises(ModelLoadError, match=fragment):
            load_model(path)


def test_a_model_path_that_is_not_a_regular_file_is_refused_before_reading(tmp_path):
    link = tmp_path / "model.keras"
    link.symlink_to("/dev/zero")  # read whole, it grew to 24 GB before the OOM killer stopped it
    with pytest.raises(ModelLoadError, match="is not a regular file"):
        load_model(link)


def test_importing_tensorflow_leaves_the_callers_environment_alone():
    """Used as a library, deploykit set CUDA_VISIBLE_DEVICES=-1 (no GPU for the notebook's own training,
    nor any subprocess it starts) and three log-level variables, for good."""
    import subprocess
    import sys

    ours = ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "ABSL_MIN_LOG_LEVEL")
    code = ("import os\n"
            "from deploykit._quiet import import_tensorflow; import_tensorflow()\n"  # TF sets a few of its own
            f"print(sorted(k for k in {ours!r} if k in os.environ))")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip() == "[]", (out.stdout, out.stderr[-500:])


def test_library_logs_are_muted_only_while_deploykit_works_and_the_callers_pass():
    """Logger levels saved and put back raced between threads (the root logger stuck at ERROR); the
    filter drops only the libraries' records below ERROR, and only while a section is open."""
    import logging
    import threading

    from deploykit._quiet import library_logs_muted, native_stderr_captured

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with library_logs_muted():
            with library_logs_muted():  # nested (and concurrent) sections share the filter
                logging.getLogger("tensorflow").warning("tf-inner")
            logging.getLogger("tf2onnx.tfonnx").info("tf2onnx-info")
            logging.getLogger("tf2onnx").error("tf2onnx-error")
            logging.getLogger("app").info("app-info")
        logging.getLogger("tensorflow").warning("tf-after")
        assert seen == ["tf2onnx-error", "app-info", "tf-after"]
        assert root.level == logging.INFO and logging.getLogger("tensorflow").filters == []

        # fd 2 is swapped by the main thread only: a worker thread's capture leaves it alone
        import os

        outer = os.fstat(2).st_ino
        inside: list[int] = []

        def worker() -> None:
            with native_stderr_captured():
                inside.append(os.fstat(2).st_ino)

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert inside == [outer]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_root_records_are_dropped_only_from_the_installed_libraries():
    """ONNX Runtime's quantizer logs through the root logger; a caller's own root-logged line from a
    project folder that happens to be named keras or onnx must pass."""
    import logging

    from deploykit._quiet import _LibraryRecords

    def record(path: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("root", level, path, 1, "message", None, None)

    keep = _LibraryRecords().filter
    assert not keep(record("/venv/lib/python3.11/site-packages/onnxruntime/quantization/quantize.py"))
    assert keep(record("/venv/lib/python3.11/site-packages/onnxruntime/quantization/quantize.py", logging.ERROR))
    assert keep(record("/home/me/keras/train.py")) and keep(record("/srv/onnx/export.py"))


def test_nested_outputs_are_refused_with_the_way_to_flatten_them(tmp_path):
    """A dict holding a list of outputs crashed describing the model ('list' object has no attribute
    'shape'), in convert and inspect alike; now refused at load, Keras 3 and tf_keras, file or object."""
    import keras
    import tf_keras

    i = keras.Input((4,))
    nested = keras.Model(i, {"a": keras.layers.Dense(3)(i), "b": [keras.layers.Dense(2)(i), keras.layers.Dense(1)(i)]})
    nested.save(tmp_path / "nested.keras")
    j = tf_keras.Input((4,))
    old = tf_keras.Model(j, [tf_keras.layers.Dense(3)(j), (tf_keras.layers.Dense(2)(j), tf_keras.layers.Dense(1)(j))])
    for source, what in ((tmp_path / "nested.keras", "output 'b' is a list inside a dict"),
                         (nested, "output 'b' is a list inside a dict"),
                         (old, "output 1 is a tuple inside a list")):
        with pytest.raises(ModelLoadError, match=f"outputs are nested \\({what}\\).*flat list or a flat dict"):
            inspect_model(source)
    # the way out it names works: the same tensors as a flat list
    flat = load_model(keras.Model(nested.inputs, nested.outputs))
    assert [s.name for s in flat.info().outputs] == ["output_0", "output_1", "output_2"]


def test_saved_model_copied_without_its_variables_is_refused(tmp_path, saved_model_dir):
    """Without variables/ the signature still read: inspect said all was well ('? parameters') and
    convert died in TensorFlow's loader with a FileNotFoundError traceback."""
    import shutil

    no_folder = tmp_path / "no_variables"
    shutil.copytree(saved_model_dir, no_folder)
    shutil.rmtree(no_folder / "variables")
    no_shard = tmp_path / "no_shard"
    shutil.copytree(saved_model_dir, no_shard)
    for shard in (no_shard / "variables").glob("variables.data-*"):
        shard.unlink()
    for source, what in ((no_folder, "but variables/ is missing"), (no_shard, "but variables/ holds no variables.data")):
        for load in (load_model, inspect_model):
            with pytest.raises(ModelLoadError, match=f"holds \\d+ variable\\(s\\) {what}.*copy the whole SavedModel directory"):
                load(source)
    # a shard cut short (an interrupted copy): TensorFlow's loader crashed later with a traceback, exit 1
    cut = tmp_path / "cut_shard"
    shutil.copytree(saved_model_dir, cut)
    for shard in (cut / "variables").glob("variables.data-*"):
        with open(shard, "r+b") as f:
            f.truncate(100)
    for load in (load_model, inspect_model):
        with pytest.raises(ModelLoadError, match=r"the weights in variables/ cannot be read \(.+\): the directory is an "
                                                 "incomplete or damaged copy; copy the whole SavedModel directory again"):
            load(cut)
    assert load_model(saved_model_dir).kind == "saved_model"  # the complete copy still loads


def _rewritten(src, dst, config_edit=None, version=None):
    """A copy of the .keras file ``src`` with its config.json edited and/or its metadata's keras_version set."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json" and config_edit:
                config = json.loads(data)
                config_edit(config)
                data = json.dumps(config).encode()
            if item.filename == "metadata.json" and version:
                data = json.dumps({**json.loads(data), "keras_version": version}).encode()
            zout.writestr(item, data)
    return dst


def test_a_file_from_a_newer_or_other_keras_names_the_version_layer_and_keyword(tmp_path, keras3_path, tf_keras_keras_path):
    """A keras_version of 9.9.0 was sent to tf_keras ('parent module tf_keras... cannot be imported'), and a
    layer keyword this Keras does not know gave Keras's own dump cut at 300 characters, naming neither."""
    import keras
    import tf_keras

    def future_option(config):
        layer = next(l for l in config["config"]["layers"] if l["class_name"] == "Dense")
        layer["config"]["future_option"] = 3

    dense = next(l["config"]["name"] for l in json.loads(zipfile.ZipFile(keras3_path).read("config.json"))["config"]["layers"]
                 if l["class_name"] == "Dense")
    assert load_model(_rewritten(keras3_path, tmp_path / "v9.keras", version="9.9.0")).kind == "keras3"
    newer = _rewritten(keras3_path, tmp_path / "newer_kw.keras", future_option, version="9.9.0")
    with pytest.raises(ModelLoadError, match=f"saved by Keras 9.9.0, newer than the installed Keras {keras.__version__} "
                                             f"\\(layer '{dense}' \\(Dense\\) has keyword\\(s\\) 'future_option'\\): upgrade keras "
                                             f"\\(pip install -U keras\\), or re-save it with Keras {keras.__version__}"):
        load_model(newer)
    # a class this Keras lacks in a newer file: a layer Keras added since, or the user's own (the message
    # crashed with UnboundLocalError, then said only "upgrade keras")
    def future_layer(config):
        layer = next(l for l in config["config"]["layers"] if l["class_name"] == "Dense")
        layer["class_name"] = "FutureDense"

    unknown = _rewritten(keras3_path, tmp_path / "newer_cls.keras", future_layer, version="9.9.0")
    with pytest.raises(ModelLoadError, match="saved by Keras 9.9.0, newer than .*"
                                             "(upgrade keras|no class 'FutureDense': if that is a Keras layer, upgrade keras)"):
        load_model(unknown, trust_model=True)
    same = _rewritten(keras3_path, tmp_path / "edited_kw.keras", future_option)
    with pytest.raises(ModelLoadError, match=f"layer '{dense}' \\(Dense\\) has keyword\\(s\\) 'future_option', which the "
                                             f"installed Keras {keras.__version__} does not take.*re-save the model"):
        load_model(same)
    old = _rewritten(tf_keras_keras_path, tmp_path / "tfk_kw.keras", future_option)
    with pytest.raises(ModelLoadError, match=f"has keyword\\(s\\) 'future_option', which the installed tf_keras "
                                             f"{tf_keras.__version__} does not take"):
        load_model(old)


def test_an_upper_case_suffix_loads_as_its_lower_case_one(tmp_path):
    """M.KERAS passed deploykit's checks (suffix lower-cased) and Keras refused it: "File format not
    supported ... use" (a SavedModel hint cut mid-sentence)."""
    import shutil

    import keras

    inp = keras.Input((3,), name="x")
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(tmp_path / "m.keras")
    shutil.copy(tmp_path / "m.keras", tmp_path / "M.KERAS")
    loaded = load_model(tmp_path / "M.KERAS")
    assert loaded.kind == "keras3" and loaded.source.endswith("M.KERAS") and [s.name for s in loaded.inputs] == ["x"]


def test_an_archive_with_missing_or_damaged_weights_or_an_unknown_class_gets_its_fix(tmp_path):
    """Each ended "could not load the model: <Keras's text>" with no fix: an archive without its weights file,
    with the weights cut short, and a class Keras 3.15 calls "not a KerasSaveable subclass"."""
    import keras

    inp = keras.Input((3,), name="x")
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        files = {n: z.read(n) for n in z.namelist()}

    def archive(name, edit):
        with zipfile.ZipFile(tmp_path / name, "w") as w:
            for n, data in files.items():
                data = edit(n, data)
                if data is not None:
                    w.writestr(n, data)
        return tmp_path / name

    fix = "the model's weights inside the file are missing or damaged"
    with pytest.raises(ModelLoadError, match=f"{fix}.*save the model again"):
        load_model(archive("noweights.keras", lambda n, d: None if n.endswith(".h5") else d))
    with pytest.raises(ModelLoadError, match=f"{fix}.*save the model again"):
        load_model(archive("cut.keras", lambda n, d: d[:2000] if n.endswith(".h5") else d))
    with pytest.raises(ModelLoadError, match=r"unknown custom object 'keras.layers.MyDense'.*pass the model object"):
        load_model(archive("custom.keras", lambda n, d: d.decode().replace('"Dense"', '"MyDense"', 1).encode()
                           if n == "config.json" else d))


def test_lookups_keep_their_table_where_the_comparison_would_compute_otherwise():
    """Hashed out-of-vocabulary buckets and tf_idf are not written as comparisons; a layer is probed in the
    shape the model gives it too (a multi_hot of ids of shape (batch,) encodes the whole batch as one)."""
    import keras

    from deploykit.export_layers import compared_encoding, for_export

    vocab = [3, 7, 11]
    assert for_export(keras.layers.IntegerLookup(vocabulary=vocab, num_oov_indices=2)) is None
    assert for_export(keras.layers.IntegerLookup(vocabulary=vocab, output_mode="tf_idf", idf_weights=[1.0, 2, 3])) is None
    assert for_export(keras.layers.IntegerLookup()) is None  # not adapted: no vocabulary yet
    replaced, said = for_export(keras.layers.IntegerLookup(vocabulary=vocab, invert=True))
    assert "3 keys" in said  # indices 1..3; index 0 (out of vocabulary) is the default
    one_id = keras.layers.CategoryEncoding(num_tokens=4, output_mode="multi_hot")
    one_id(keras.Input((), dtype="int32"))  # called on ids of shape (batch,): Keras then encodes the batch
    ids = np.array([0, 3, 3], np.int32)
    np.testing.assert_array_equal(compared_encoding(one_id)(ids), one_id(ids))  # probed in that shape too
    _, said = for_export(keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot"))
    assert said == "a comparison of each id with its 4 categories (no OneHot)"  # TFLM lacks it, TFLite int8 misread it
    # Discretization: its int output keeps Bucketize whole (nothing to encode); an encoded one is probed on NaN
    # (TensorFlow's last bucket), the boundaries and the floats beside them
    assert for_export(keras.layers.Discretization(bin_boundaries=[0.0, 1.5], output_mode="int")) is None
    assert for_export(keras.layers.Discretization(num_bins=3, output_mode="one_hot")) is None  # not adapted yet
    bins = keras.layers.Discretization(bin_boundaries=[0.0, 1.5], output_mode="one_hot")
    replaced, said = for_export(bins)
    assert said == "its bucket id compared with each of its 3 buckets (no OneHot)"
    x = np.array([[np.nan], [-np.inf], [0.0], [np.nextafter(np.float32(1.5), np.float32(0))], [1.5], [np.inf]], np.float32)
    np.testing.assert_array_equal(replaced(x), bins(x))


def test_graph_scopes_map_to_the_models_own_layers_not_their_sublayers(tmp_path):
    """MultiHeadAttention's variables are owned by its query/key/value projections and an LSTM's by its cell:
    the heaviest-layers list named `query` and `lstm_cell`, which model.get_layer cannot find."""
    import keras

    from deploykit.layer_scopes import export_scopes, layer_at

    seq = keras.Input((6, 16), name="seq")
    h = keras.layers.LSTM(8, name="rnn", return_sequences=True)(keras.layers.MultiHeadAttention(2, 8, name="attn")(seq, seq))
    model = keras.Model(seq, keras.layers.Dense(3, name="dense")(h))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    names = {layer.name for layer in model.layers}
    scopes = export_scopes(tmp_path / "sm", names)
    assert set(scopes.values()) == {"attn", "rnn", "dense"}, scopes
    query = next(s for s in scopes if s.endswith("/attn_1") or s.endswith("/attn"))
    assert layer_at(f"StatefulPartitionedCall/{query}/query_1/MatMul", scopes, names) == "attn"


def test_an_export_copy_that_cannot_take_every_rewrite_keeps_the_augmentation_ones():
    """A CategoryEncoding called with count_weights cannot be cloned with its rewrite: the RandomFlip's
    Identity, which worked before the rewrites existed, was dropped with it (review)."""
    import keras

    from deploykit.models import export_copy

    ids, weights, img = keras.Input((3,), dtype="int32"), keras.Input((3,)), keras.Input((8, 8, 1))
    counts = keras.layers.CategoryEncoding(6, output_mode="count")(ids, count_weights=weights)
    h = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(keras.layers.RandomFlip(name="flip")(img)))
    model = keras.Model([ids, weights, img], keras.layers.Dense(2)(keras.layers.Concatenate()([counts, h])))
    copy, replaced = export_copy(model)
    assert copy is not model and replaced == [{"name": "flip", "class": "RandomFlip", "as": "Identity"}]


def test_a_layer_inside_a_nested_model_is_named_not_its_model_scope():
    """A TFLite Micro refusal inside a nested model said 'encoder_1', which is no layer of the model."""
    from deploykit.layer_scopes import layer_at

    names = {"cat_onehot", "join", "hidden", "head"}
    assert layer_at("functional_1/encoder_1/cat_onehot_1/OneHot", {}, names) == "cat_onehot"
    assert layer_at("functional_1/hidden_1/MatMul", {}, names) == "hidden"
    assert layer_at("functional_1/other_1/MatMul", {}, names) == "other_1"  # no such layer: the scope as written
