"""Datasets: every accepted form loads; every unfit input is refused up front with a DataError."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.data import Dataset, load_data
from deploykit.errors import DataError, DeployError
from deploykit.models import TensorSpec

SPEC = [TensorSpec("pixels", (None, 8, 8, 1), "float32")]
N = 12


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, size=(N, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=N)
    return x, y


def _check(ds: Dataset, x, y):
    assert isinstance(ds, Dataset)
    assert len(ds) == len(x)
    assert len(ds.x) == 1 and ds.x[0].dtype == np.float32
    np.testing.assert_array_equal(ds.x[0], x)
    if y is None:
        assert ds.y is None
    else:
        assert ds.y.dtype == np.int64
        np.testing.assert_array_equal(ds.y, y)


# ----------------------------------------------------------------------------- accepted forms
def test_npz_with_labels(tmp_path, xy):
    x, y = xy
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    ds = load_data(path, SPEC)
    _check(ds, x, y)
    assert ds.source == str(path)
    _check(load_data(str(path), SPEC), x, y)  # str paths too


def test_npz_without_labels(tmp_path, xy):
    x, _ = xy
    np.savez(tmp_path / "d.npz", x=x)
    _check(load_data(tmp_path / "d.npz", SPEC), x, None)


def test_labels_saved_under_another_key_are_refused_not_ignored(tmp_path, xy):
    """'labels' (or 'Y' beside 'x') was read as no labels: the run went on without its accuracy check."""
    x, y = xy
    for key in ("labels", "Y"):
        np.savez(tmp_path / "d.npz", x=x, **{key: y})
        with pytest.raises(DataError, match=rf"has '{key}' but no 'y': labels \(or target values\) go under the key 'y'"):
            load_data(tmp_path / "d.npz", SPEC)
    np.savez(tmp_path / "both.npz", x=x, y=y, labels=y)  # 'y' is there: the other key is the user's business
    _check(load_data(tmp_path / "both.npz", SPEC), x, y)
    # dicts too, the {'x': ...} form included
    for key in ("labels", "Y"):
        with pytest.raises(DataError, match=rf"data dict: has '{key}' but no 'y'"):
            load_data({"x": x, key: y}, SPEC)
    # class names or other metadata under such a key are not labels: accepted, as before
    np.savez(tmp_path / "names.npz", x=x, classes=np.array(["cat", "dog"]), target=np.array([1.0, 2.0]))
    _check(load_data(tmp_path / "names.npz", SPEC), x, None)
    _check(load_data({"x": x, "classes": np.array(["cat", "dog"])}, SPEC), x, None)


def test_labels_saved_per_output_are_refused_not_ignored(tmp_path, xy):
    """y_cls / y_reg (or y0, y1) for a multi-output model were read as no labels: no accuracy check."""
    x, y = xy
    for keys in (("y_cls", "y_reg"), ("y0", "y1")):
        np.savez(tmp_path / "d.npz", x=x, **{k: y for k in keys})
        with pytest.raises(DataError, match=rf"has '{keys[0]}', '{keys[1]}' but no 'y': a run scores one output, "
                                             r"on labels under the key 'y' \(name the output .* --label-output\)"):
            load_data(tmp_path / "d.npz", SPEC)
        with pytest.raises(DataError, match=rf"data dict: has '{keys[0]}', '{keys[1]}' but no 'y'"):
            load_data({"x": x, **{k: y for k in keys}}, SPEC)
    np.savez(tmp_path / "both.npz", x=x, y=y, y_pred=y)  # 'y' is there: the other key is the user's business
    _check(load_data(tmp_path / "both.npz", SPEC), x, y)
    np.savez(tmp_path / "meta.npz", x=x, y_names=np.array(["cat", "dog"]))  # not one number per sample
    _check(load_data(tmp_path / "meta.npz", SPEC), x, None)
    np.savez(tmp_path / "pred.npz", x=x, y_pred=y)  # a benchmark reads inputs only: not refused there
    _check(load_data(tmp_path / "pred.npz", SPEC, role="bench data", labels=False), x, None)
    np.savez(tmp_path / "pickled.npz", x=x, y=np.array([{"a": 1}], dtype=object))  # an unused 'y' is not read
    _check(load_data(tmp_path / "pickled.npz", SPEC, role="bench data", labels=False), x, None)
    np.savez(tmp_path / "split.npz", x_test=x, y_test=y)  # the missing 'x' is what is said first
    with pytest.raises(DataError, match=r"has keys 'x_test', 'y_test' but needs 'x'"):
        load_data(tmp_path / "split.npz", SPEC)


def test_npz_keyed_by_input_name(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "d.npz", pixels=x, y=y)
    _check(load_data(tmp_path / "d.npz", SPEC), x, y)


def test_the_real_digits_npz(data_npz, digits):
    ds = load_data(data_npz, SPEC)
    _check(ds, digits.x_eval, digits.y_eval)


def test_plain_array(xy):
    x, _ = xy
    ds = load_data(x, SPEC)
    _check(ds, x, None)
    assert ds.source == "<in-memory data>"


def test_tuple_x_y(xy):
    x, y = xy
    _check(load_data((x, y), SPEC), x, y)


def test_dict_x_y_and_dict_by_input_name(xy):
    x, y = xy
    _check(load_data({"x": x, "y": y}, SPEC), x, y)
    _check(load_data({"pixels": x, "y": y}, SPEC), x, y)
    _check(load_data({"x": x}, SPEC), x, None)


def test_callable(xy):
    x, y = xy
    calls = []

    def make():
        calls.append(1)
        return x, y

    _check(load_data(make, SPEC), x, y)
    assert calls == [1]


def test_nested_python_lists(xy):
    x, y = xy
    _check(load_data(x.tolist(), SPEC), x, None)
    # inside (x, y) or {"x": ...} too: each row was taken for one of the model's inputs ("has 20 input arrays")
    _check(load_data((x.tolist(), y.tolist()), SPEC), x, y)
    _check(load_data({"x": x.tolist(), "y": y}, SPEC), x, y)
    _check(load_data((x[:1].tolist(), y[:1]), SPEC), x[:1], y[:1])  # one row too


def test_uint8_is_cast_to_float32_values_preserved(tmp_path):
    x = np.arange(N * 64, dtype=np.int64).reshape(N, 8, 8, 1) % 256
    np.savez(tmp_path / "u8.npz", x=x.astype(np.uint8))
    ds = load_data(tmp_path / "u8.npz", SPEC)
    assert ds.x[0].dtype == np.float32
    np.testing.assert_array_equal(ds.x[0], x.astype(np.float32))


def test_integer_model_input_keeps_integers():
    spec = [TensorSpec("ids", (None, 4), "int32")]
    ds = load_data(np.arange(8, dtype=np.int64).reshape(2, 4), spec)
    assert ds.x[0].dtype == np.int32
    with pytest.raises(DataError, match="is float .* but the model input is int32"):
        load_data(np.zeros((2, 4), np.float32), spec)
    # a cast would wrap: 2**32 + 3 -> id 3, 300 -> 44 in uint8, -1 -> 255
    with pytest.raises(DataError, match=r"input 'ids' holds 4294967299, outside int32's"):
        load_data(np.full((2, 4), 2**32 + 3, np.int64), spec)
    pixels = [TensorSpec("pix", (None, 4), "uint8")]
    for bad in (300, -1):
        with pytest.raises(DataError, match=rf"holds {bad}, outside uint8's 0..255"):
            load_data(np.full((2, 4), bad, np.int64), pixels)
    with pytest.raises(DataError, match="labels 'y' hold 18446744073709551615, not a class index"):
        load_data((np.arange(8, dtype=np.int64).reshape(2, 4), np.array([1, 2**64 - 1], np.uint64)), spec)


def test_labels_one_hot_column_and_whole_floats(xy):
    x, y = xy
    _check(load_data((x, np.eye(10)[y]), SPEC), x, y)
    _check(load_data((x, y[:, None]), SPEC), x, y)
    _check(load_data((x, y.astype(np.float64)), SPEC), x, y)
    # (N, C, 1) one-hot rows: read per position by load_data, as classes once no output has those positions
    from deploykit.data import as_one_hot

    rows = load_data((x, np.eye(10)[y][..., None]), SPEC)
    assert rows.y.shape == (len(y), 10) and as_one_hot(rows).y.tolist() == y.tolist()
    assert as_one_hot(rows).one_hot_classes == 10
    assert as_one_hot(load_data((x, np.stack([y, y], axis=1)), SPEC)) is None  # class ids per step stay so


def test_dynamic_dims_accept_any_size():
    spec = [TensorSpec("img", (None, None, None, 3), "float32")]
    ds = load_data(np.zeros((2, 5, 7, 3)), spec)
    assert ds.x[0].shape == (2, 5, 7, 3)


def test_multi_input_forms():
    specs = [TensorSpec("a", (None, 3), "float32"), TensorSpec("b", (None, 2), "float32")]
    a, b = np.ones((4, 3)), np.zeros((4, 2))
    for form in ([a, b], {"a": a, "b": b}, ([a, b], np.arange(4)), {"x": [a, b], "y": np.arange(4)}):
        ds = load_data(form, specs)
        assert [v.shape for v in ds.x] == [(4, 3), (4, 2)]
    with pytest.raises(DataError, match="has 1 input array"):
        load_data(a, specs)
    with pytest.raises(DataError, match=r"the inputs have different numbers of samples \('a' 4, 'b' 3\); each sample"):
        load_data([a, b[:3]], specs)


def test_multi_input_npz_numbered_keys(tmp_path):
    specs = [TensorSpec("a", (None, 3), "float32"), TensorSpec("b", (None, 2), "float32")]
    np.savez(tmp_path / "m.npz", x0=np.ones((4, 3)), x1=np.zeros((4, 2)))
    assert [v.shape for v in load_data(tmp_path / "m.npz", specs).x] == [(4, 3), (4, 2)]
    np.savez(tmp_path / "bad.npz", x=np.ones((4, 3)))
    with pytest.raises(DataError, match=r"one key per input \('a', 'b'\) or x0, x1"):
        load_data(tmp_path / "bad.npz", specs)


def test_a_dict_takes_the_keys_an_npz_takes_and_a_2_tuple_of_inputs_is_told_apart_from_x_y(tmp_path):
    """{"x0": ..., "x1": ..., "y": ...} was refused ("needs 'x'") although the same keys in an .npz load; and
    (img, meta) for a two-input model was read as (x, y) and refused as "has 1 input array(s)"."""
    specs = [TensorSpec("img", (None, 3), "float32"), TensorSpec("meta", (None, 2), "float32")]
    img, meta, y = np.ones((4, 3)), np.zeros((4, 2)), np.arange(4)
    keys = {"x0": img, "x1": meta, "y": y}
    np.savez(tmp_path / "m.npz", **keys)
    for form in (keys, tmp_path / "m.npz"):
        ds = load_data(form, specs)
        assert [v.shape for v in ds.x] == [(4, 3), (4, 2)]
        np.testing.assert_array_equal(ds.y, y)
    with pytest.raises(DataError, match=r"has keys x0..x2 or more but the model takes 2"):
        load_data({**keys, "x2": meta}, specs)
    with pytest.raises(DataError, match=r"^data dict: has keys 'images', 'y' but needs one key per input \('img', 'meta'\) "
                                        r"or x0, x1 \(or 'x': a list or dict of them\) \(and optionally 'y' for labels\)$"):
        load_data({"images": img, "y": y}, specs)
    with pytest.raises(DataError, match=r"^data is a 2-tuple, which is read as \(x, y\), and its x is one array but the "
                                        r"model takes 2 inputs \(img, meta\); pass the inputs as a list \[img, meta\] "
                                        r"or a dict, and labels as \(\[img, meta\], y\)$"):
        load_data((img, meta), specs)


def test_take_and_batches(xy):
    x, y = xy
    ds = load_data((x, y), SPEC)
    head = ds.take(5)
    assert len(head) == 5 and len(head.y) == 5
    assert len(ds.take(10_000)) == N
    sizes = [len(b[0]) for b in ds.batches(5)]
    assert sizes == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in ds.batches(5)]), x)


# ----------------------------------------------------------------------------- refused inputs
def test_empty(xy):
    with pytest.raises(DataError, match="is empty; pass at least one sample"):
        load_data(np.zeros((0, 8, 8, 1), np.float32), SPEC)



def test_a_single_number_and_a_file_with_only_labels_are_named_for_what_they_are(tmp_path):
    with pytest.raises(DataError, match=r"is a single number, not an array of samples; pass one array of shape"):
        load_data(np.float32(1), SPEC)
    np.savez(tmp_path / "yonly.npz", y=np.arange(3))
    with pytest.raises(DataError, match=r"has keys 'y' but needs 'x'"):
        load_data(str(tmp_path / "yonly.npz"), SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(xy, bad):
    x, _ = xy
    x = x.copy()
    x[3, 1, 2, 0] = bad
    x[7, 0, 0, 0] = bad
    with pytest.raises(DataError, match="contains 2 NaN/inf value"):
        load_data(x, SPEC)


def test_wrong_sample_shape_names_both_shapes():
    with pytest.raises(DataError) as exc:
        load_data(np.zeros((4, 8, 8, 3), np.float32), SPEC)
    msg = str(exc.value)
    assert "(4, 8, 8, 3)" in msg and "(None, 8, 8, 1)" in msg and "'pixels'" in msg


def test_wrong_rank():
    with pytest.raises(DataError, match=r"has shape \(4, 64\) but the model expects \(None, 8, 8, 1\)"):
        load_data(np.zeros((4, 64), np.float32), SPEC)
    with pytest.raises(DataError, match="has shape"):
        load_data(np.zeros((8, 8, 1), np.float32), SPEC)  # one sample without the batch dim


@pytest.mark.parametrize(
    "arr",
    [np.array([["a"] * 64] * 2).reshape(2, 8, 8, 1), np.zeros((2, 8, 8, 1), complex), np.empty((2, 8, 8, 1), object)],
    ids=["str", "complex", "object"],
)
def test_non_numeric(arr):
    with pytest.raises(DataError, match="not numeric"):
        load_data(arr, SPEC)


def test_label_count_mismatch(xy):
    x, y = xy
    with pytest.raises(DataError, match=f"has {N} samples but {N - 1} labels"):
        load_data((x, y[:-1]), SPEC)


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (lambda y: y + 0.5, "not whole numbers"),
        (lambda y: np.where(y == y[0], np.nan, y), "finite class indices"),
        (lambda y: y.astype(str), r"are text \(e.g. .*\), not class indices; map them to the indices"),
    ],
    ids=["fractional", "nan", "strings"],
)
def test_bad_labels(xy, labels, fragment):
    x, y = xy
    with pytest.raises(DataError, match=fragment):
        load_data((x, labels(y)), SPEC)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope.npz", SPEC)


def test_npz_without_x_lists_its_keys(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "d.npz", images=x, y=y)
    with pytest.raises(DataError) as exc:
        load_data(tmp_path / "d.npz", SPEC)
    assert "'images', 'y'" in str(exc.value) and "'x'" in str(exc.value)


def test_dict_without_x(xy):
    with pytest.raises(DataError, match=r"data dict: has keys 'images' but needs 'x' \(or the input's name, 'pixels'\)"):
        load_data({"images": xy[0]}, SPEC)


def test_truncated_npz(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "full.npz", x=x, y=y)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(tmp_path / "half.npz", SPEC)


def test_a_keras_file_passed_as_data_is_named_as_a_model(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.keras", "w") as zf:
        for name in ("config.json", "metadata.json", "model.weights.h5"):
            zf.writestr(name, b"{}")
    with pytest.raises(DataError, match=r"model\.keras is a Keras model file, not data"):
        load_data(tmp_path / "model.keras", SPEC)


def test_zip_member_that_is_not_npy_is_named(tmp_path):
    # numpy hands such a member back as raw bytes; the message blamed its dtype ("|S19, not numeric")
    import zipfile

    with zipfile.ZipFile(tmp_path / "zipped.npz", "w") as zf:
        zf.writestr("x.npy", b"a CSV saved under .npy")
    with pytest.raises(DataError, match=r"member 'x' is not a NumPy array \(.npy\)"):
        load_data(tmp_path / "zipped.npz", SPEC)


def test_not_an_npz_is_not_called_pickled(tmp_path):
    path = tmp_path / "table.npz"
    path.write_text("x,y\n1,2\n3,4\n")
    with pytest.raises(DataError) as exc:
        load_data(path, SPEC)
    assert "pickled" not in str(exc.value)
    assert str(path) in str(exc.value)


def test_pickled_npz_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match=r"obj.npz: 'x' holds Python objects \(pickled\); save plain numeric arrays"):
        load_data(path, SPEC)
    x = np.zeros((2, 8, 8, 1), np.float32)
    np.savez(path, x=x, y=np.array(["cat", 3], dtype=object))
    with pytest.raises(DataError, match=r"'y' holds Python objects \(pickled\) \(labels as text\? map them to class"):
        load_data(path, SPEC)
    # metadata under a key a one-input model does not use (x1 beside x) was read, and refused the file
    np.savez(path, x=x, y=np.array([0, 1]), x1=np.array([{"source": "camera"}], dtype=object))
    _check(load_data(path, SPEC), x, np.array([0, 1]))


def test_role_is_named_in_messages():
    with pytest.raises(DataError, match=r"^eval data <in-memory eval data>"):
        load_data(np.zeros((0, 8, 8, 1)), SPEC, role="eval data")


def test_data_errors_are_user_errors():
    assert issubclass(DataError, ValueError) and issubclass(DataError, DeployError)


# ----------------------------------------------------------------------------- known bugs
def test_scalar_labels_are_a_data_error(tmp_path, xy):
    x, _ = xy
    np.savez(tmp_path / "d.npz", x=x, y=np.int64(3))
    with pytest.raises(DataError):
        load_data(tmp_path / "d.npz", SPEC)


def test_values_that_overflow_the_model_dtype_are_refused():
    import warnings

    x = np.full((2, 8, 8, 1), 1e300, dtype=np.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy: "overflow encountered in cast"
            ds = load_data(x, SPEC)
    except DataError:
        return
    assert np.isfinite(ds.x[0]).all(), "validated data must be finite in the model's dtype"


def test_spread_picks_evenly_spaced_samples_first_and_last_included():
    from deploykit.data import Dataset

    ds = Dataset([np.arange(10)[:, None].astype("float32")], np.arange(10), "t")
    sub = ds.spread(4)
    assert list(sub.y) == [0, 3, 6, 9] and list(sub.x[0][:, 0]) == [0, 3, 6, 9]
    assert ds.spread(10) is ds and ds.spread(50) is ds


def test_without_data_integer_inputs_are_verified_on_varied_integers():
    """Uniform 0..1 cast to uint8 / token ids was 8 identical all-zero samples: a verification that proves little."""
    import keras

    from deploykit.pipeline import _random_inputs

    specs = [TensorSpec("image", (None, 4, 4, 3), "uint8"), TensorSpec("ids", (None, 6), "int32"),
             TensorSpec("mask", (None, 6), "bool"), TensorSpec("x", (None, 2), "float32")]
    plain = _random_inputs(specs)
    image, ids, mask, x = plain.x
    assert image.dtype == np.uint8 and image.max() > 200 and len(np.unique(image)) > 100
    assert ids.dtype == np.int32 and 0 <= ids.min() and ids.max() <= 255 and len(np.unique(ids)) > 10
    assert mask.dtype == bool and mask.any() and not mask.all()
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() < 1
    assert "image integers 0..255" in plain.source and "ids integers 0..255" in plain.source
    tokens = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(7, 2)])
    bounded = _random_inputs(specs[1:2], tokens)  # inside the Embedding's table
    assert bounded.x[0].max() == 6 and "ids integers 0..6" in bounded.source


def test_multi_hot_labels_are_refused_not_argmaxed():
    """Tags (several 1s per row) read as one-hot gave the argmax of the first tag: a meaningless accuracy."""
    x = np.zeros((3, 4), np.float32)
    spec = [TensorSpec("x", (None, 4), "float32")]
    one_hot = load_data({"x": x, "y": np.eye(3, dtype=np.int64)}, spec)
    assert one_hot.y.tolist() == [0, 1, 2]
    soft = load_data({"x": x, "y": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])}, spec)
    assert soft.y.tolist() == [0, 1, 0]
    tags = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    with pytest.raises(DataError, match="rows with 2 ones \\(e.g. row 0\\), not one-hot: multi-label"):
        load_data({"x": x, "y": tags}, spec)


def test_python_data_forms_keras_accepts_and_a_clear_error_for_others():
    x = np.zeros((3, 4), np.float32)
    spec = [TensorSpec("x", (None, 4), "float32")]
    assert load_data([x], spec).x[0].shape == (3, 4)  # Keras' list-of-inputs form, one input
    assert load_data((x,), spec).y is None
    with pytest.raises(DataError, match="data tuple has 3 items; pass \\(x, y\\) or \\(x,\\)"):
        load_data((x, np.zeros(3), np.zeros(3)), spec)


def test_labels_per_position_are_kept_one_hot_per_pixel_becomes_ids():
    """Segmentation and tagging labels: a class per pixel or step, not the first pixel's class."""
    spec = [TensorSpec("x", (None, 4), "float32")]
    x = np.zeros((3, 4), np.float32)
    masks = np.random.default_rng(0).integers(0, 5, size=(3, 8, 8))
    assert load_data({"x": x, "y": masks}, spec).y.tolist() == masks.tolist()
    assert load_data({"x": x, "y": masks[..., None]}, spec).y.shape == (3, 8, 8)  # trailing 1 dropped
    one_hot = np.eye(5, dtype=np.float32)[masks]  # (3, 8, 8, 5), as categorical_crossentropy takes them
    assert load_data({"x": x, "y": one_hot}, spec).y.tolist() == masks.tolist()
    tags = np.array([[0, 3, 2, 2], [1, 1, 0, 4], [2, 0, 0, 0]])  # (N, T) tags per step, not one-hot rows
    assert load_data({"x": x, "y": tags}, spec).y.tolist() == tags.tolist()
    soft = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1], [0.0, 0.0, 1.0]], np.float32)  # soft labels: the largest entry
    assert load_data({"x": x, "y": soft}, spec).y.tolist() == [1, 0, 2]
    with pytest.raises(DataError, match="negative class index"):
        load_data({"x": x, "y": -masks}, spec)


def test_random_inputs_refuse_dimensions_of_any_size():
    """Without data, None dimensions were filled with 1: 1x1 'images', or a model that cannot run on them."""
    from deploykit.pipeline import _random_inputs

    with pytest.raises(DataError, match=r"input 'img' has dimensions of any size \(None, None, None, 3\).*pass --data"):
        _random_inputs([TensorSpec("img", (None, None, None, 3), "float32")])
    assert _random_inputs([TensorSpec("img", (None, 4, 4, 3), "float32")]).x[0].shape == (8, 4, 4, 3)


def test_streams_are_refused_naming_the_way_to_arrays():
    """A tf.data Dataset or a generator became a 0-d object array: 'dtype object, not numeric'."""
    import tensorflow as tf

    spec = [TensorSpec("x", (None, 3), "float32")]
    import keras
    import tf_keras

    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 3), np.float32), np.zeros(4))).batch(2)

    class Batches(keras.utils.PyDataset):  # batches by index: numpy read it as a ragged array
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((2, 3), np.float32), np.zeros(2)

    class OldBatches(tf_keras.utils.Sequence):
        __len__, __getitem__ = Batches.__len__, Batches.__getitem__

    for stream in (ds, (i for i in range(3)), iter([np.zeros(3)]), Batches(), OldBatches()):
        with pytest.raises(DataError, match="is a stream; pass arrays"):
            load_data(stream, spec)


def test_one_hot_labels_over_another_class_count_are_refused():
    """(N, 3) one-hot labels on a 4-class model were argmaxed and scored: 2.5 % accuracy, exit 0."""
    from deploykit.data import check_label_range

    spec = [TensorSpec("x", (None, 4), "float32")]
    x = np.zeros((3, 4), np.float32)
    data = load_data({"x": x, "y": np.eye(3)}, spec)
    assert data.one_hot_classes == 3 and data.spread(2).one_hot_classes == 3
    check_label_range(data, 3)
    with pytest.raises(DataError, match="one-hot over 3 classes but the model outputs 4"):
        check_label_range(data, 4)
    assert load_data({"x": x, "y": np.array([0, 1, 2])}, spec).one_hot_classes is None


def test_an_extra_numbered_array_is_refused(tmp_path):
    spec = [TensorSpec("a", (None, 2), "float32"), TensorSpec("b", (None, 3), "float32")]
    path = tmp_path / "d.npz"
    np.savez(path, x0=np.zeros((4, 2), np.float32), x1=np.zeros((4, 3), np.float32), x2=np.zeros((4, 3), np.float32))
    with pytest.raises(DataError, match="x0..x2 or more but the model takes 2 input"):
        load_data(path, spec)


def test_an_npz_that_expands_beyond_free_memory_is_refused_before_decompressing(tmp_path, xy, monkeypatch):
    """A 3 MB .npz of zeros expanded to 3.2 GB: the process was OOM-killed (or hit a numpy traceback)."""
    import deploykit.data as data_module

    x, y = xy
    np.savez_compressed(tmp_path / "d.npz", x=np.zeros((4000, 8, 8, 1), "float32"), y=np.zeros(4000, "int64"),
                        unused=np.zeros((10**6,), "float64"))
    monkeypatch.setattr(data_module, "_available_memory", lambda: 600_000)  # bytes: x alone is 1 MB
    with pytest.raises(DataError, match=r"d.npz: its arrays expand to 0.0 GiB, more than this machine's free memory"):
        load_data(tmp_path / "d.npz", SPEC)
    monkeypatch.setattr(data_module, "_available_memory", lambda: 2_000_000)  # the unused 8 MB key is never read
    assert len(load_data(tmp_path / "d.npz", SPEC)) == 4000


def test_regression_targets_are_kept_as_float_values(xy):
    x, _ = xy
    values = np.linspace(-1, 1, 2 * N).reshape(N, 2)
    ds = load_data((x, values), SPEC, targets=True)
    assert ds.y.dtype == np.float32 and ds.y.shape == (N, 2)
    with pytest.raises(DataError, match="targets 'y' hold NaN"):
        load_data((x, np.full(N, np.nan)), SPEC, targets=True)
    with pytest.raises(DataError, match=f"has {N} samples but 3 targets"):
        load_data((x, values[:3]), SPEC, targets=True)


def test_an_input_named_y_keyed_by_name_is_that_input(tmp_path, xy):
    x, labels = xy
    spec = [TensorSpec("x_img", (None, 8, 8, 1), "float32"), TensorSpec("y", (None, 3), "float32")]
    other = np.ones((N, 3), "float32")
    np.savez(tmp_path / "named.npz", x_img=x, y=other)
    ds = load_data(tmp_path / "named.npz", spec)
    assert ds.y is None and np.array_equal(ds.x[1], other)
    np.savez(tmp_path / "numbered.npz", x0=x, x1=other, y=labels)  # numbered keys: 'y' are the labels
    ds = load_data(tmp_path / "numbered.npz", spec)
    assert np.array_equal(ds.y, labels)


def test_x_as_a_dict_by_input_name_inside_a_tuple_or_dict(xy):
    """(x_dict, y) is how model.fit takes a dict-input model's data; it was read as one array."""
    x, y = xy
    _check(load_data(({"pixels": x}, y), SPEC), x, y)
    _check(load_data({"x": {"pixels": x}, "y": y}, SPEC), x, y)
    with pytest.raises(DataError, match="keyed pixels"):
        load_data(({"image": x}, y), SPEC)


def test_a_list_of_x_and_y_for_a_one_input_model_says_pass_a_tuple(xy):
    x, y = xy
    with pytest.raises(DataError, match=r"pass \(x, y\) as a tuple"):
        load_data([x, y], SPEC)


def test_random_inputs_are_drawn_in_the_input_dtype():
    """Drawn as float64 and cast, the samples needed three times their own memory at the peak."""
    from deploykit.pipeline import _random_inputs

    ds = _random_inputs([TensorSpec("a", (None, 5), "float32"), TensorSpec("b", (None, 3), "uint8"),
                         TensorSpec("c", (None, 2), "float64")])
    assert [x.dtype for x in ds.x] == [np.float32, np.uint8, np.float64]
    assert 0 <= ds.x[0].min() and ds.x[0].max() < 1 and len(np.unique(ds.x[1])) > 1


def test_a_dict_keyed_by_input_names_one_of_them_x_is_read_as_an_npz_is():
    """Inputs 'x' and 'meta': {"x": a, "meta": b, "y": y} was read as {"x": inputs, "y": labels}:
    "has 1 input array(s) but the model takes 2", where the same keys in an .npz were accepted."""
    specs = [TensorSpec("x", (None, 3), "float32"), TensorSpec("meta", (None, 2), "float32")]
    a, b, y = np.zeros((4, 3), np.float32), np.ones((4, 2), np.float32), np.array([0, 1, 0, 1])
    ds = load_data({"x": a, "meta": b, "y": y}, specs)
    assert [v.shape for v in ds.x] == [(4, 3), (4, 2)] and ds.y.tolist() == y.tolist()
    assert load_data({"x": a, "meta": b}, specs).y is None
    ds = load_data({"x": {"x": a, "meta": b}, "y": y}, specs)  # model.fit's form still reads so
    assert [v.shape for v in ds.x] == [(4, 3), (4, 2)] and ds.y.tolist() == y.tolist()


def test_labels_per_output_as_a_dict_are_named_as_such():
    """({...}, {"cls": y, "reg": r}) read as "labels 'y' is a single value": a 0-d object array of the dict."""
    spec = [TensorSpec("x", (None, 3), "float32")]
    x = np.zeros((4, 3), np.float32)
    for targets in (False, True):
        with pytest.raises(DataError, match=r"labels 'y' are a dict \(keys 'cls', 'reg'\), one array per output.*--label-output"):
            load_data((x, {"reg": np.zeros(4), "cls": np.zeros(4)}), spec, targets=targets)


def test_an_empty_npz_is_an_npz_without_the_keys_needed(tmp_path):
    """np.savez(path) with no arrays is a valid (empty) zip: it was refused as "not a zip archive"."""
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match=r"empty.npz: has keys none but needs 'x'"):
        load_data(tmp_path / "empty.npz", [TensorSpec("x", (None, 3), "float32")])


def test_zero_one_tags_per_step_are_a_class_per_step_where_an_output_gives_one():
    """A tagger's (N, 20) 0/1 tags for its (N, 20, 2) output were read as rows: refused as multi-hot, or,
    with one tag per row, turned into one class per sample and dropped as unused."""
    from deploykit.data import class_positions

    ids = [TensorSpec("ids", (None, 20), "int32")]
    x = np.arange(60, dtype=np.int32).reshape(3, 20) % 7
    tags = (x > 3).astype(np.int32)
    positions = class_positions([(None, 20, 2)])
    assert positions == {(20,): False} and class_positions([(None, 10), (None, 20, 1)]) == {}
    np.testing.assert_array_equal(load_data((x, tags), ids, positions=positions).y, tags)
    one = np.zeros_like(tags)
    one[:, 5] = 1
    np.testing.assert_array_equal(load_data((x, one), ids, positions=positions).y, one)
    # without such an output: rows, as before (one-hot -> the class, multi-hot refused)
    np.testing.assert_array_equal(load_data((x, one), ids).y, [5, 5, 5])
    with pytest.raises(DataError, match="not one-hot: multi-label"):
        load_data((x, tags), ids)


def test_one_hot_rows_stay_a_class_per_sample_beside_a_class_head_of_as_many_classes():
    """A model with a (None, 6) class head and a (None, 6, 2) tagging head: one-hot rows for the class head
    were read as tags per step and scored against the tags (50.85 % instead of 99.61 %). Tags with several
    ones per row are still tags."""
    from deploykit.data import class_positions

    spec = [TensorSpec("x", (None, 3), "float32")]
    x = np.zeros((4, 3), np.float32)
    positions = class_positions([(None, 6), (None, 6, 2)])
    assert positions == {(6,): True}
    one_hot = np.eye(6, dtype=np.int64)[[0, 3, 5, 1]]
    np.testing.assert_array_equal(load_data((x, one_hot), spec, positions=positions).y, [0, 3, 5, 1])
    tags = np.array([[1, 1, 0, 0, 0, 1]] * 4)
    np.testing.assert_array_equal(load_data((x, tags), spec, positions=positions).y, tags)


def test_x_beside_a_key_named_after_the_input_is_refused(tmp_path):
    """{'x': x, 'img': other, 'y': y} for a model whose input is 'img' verified on 'x' and ignored 'img'."""
    spec = [TensorSpec("img", (None, 2), "float32")]
    x, other = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    with pytest.raises(DataError, match=r"data dict: has both 'x' and 'img' \(the model's input name\).*keep one of them"):
        load_data({"x": x, "img": other, "y": np.arange(4)}, spec)
    np.savez(tmp_path / "d.npz", x=x, img=other)
    with pytest.raises(DataError, match="has both 'x' and 'img'"):
        load_data(tmp_path / "d.npz", spec)
    two = [TensorSpec("a", (None, 2), "float32"), TensorSpec("b", (None, 2), "float32")]
    with pytest.raises(DataError, match="has both 'x' and 'a'"):
        load_data({"x": [x, x], "a": other}, two)
    assert len(load_data({"img": other, "y": np.arange(4)}, spec)) == 4  # either alone is fine
    assert len(load_data({"x": x}, spec)) == 4
    # x0, x1 beside input names were ignored without a word
    with pytest.raises(DataError, match="has both 'x0' and 'img'"):
        load_data({"img": other, "x0": x}, spec)
    with pytest.raises(DataError, match="has both 'x0', 'x1' and 'a', 'b'"):
        load_data({"a": other, "b": other, "x0": x, "x1": x}, two)
    assert len(load_data({"x0": x, "x1": x}, two)) == 4
