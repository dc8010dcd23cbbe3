"""Session fixtures: tiny seeded models and data, built in code once per test run.

Everything lives in one ``tmp_path_factory`` directory. Models are trained for a
few epochs on scikit-learn's ``load_digits`` (shipped inside the package, no
download) so accuracy numbers mean something: the quantized targets' metric gate
is exercised on a real classifier, not on random weights.

Fixtures that need TensorFlow import it lazily, so the pure-Python unit tests
(targets, data, stats, artifacts) never pay for it.
"""

from __future__ import annotations

import os

# Before anything can import TensorFlow: keep its C++ log chatter out of test output.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SEED = 0
N_EVAL = 200
INPUT_SHAPE = (8, 8, 1)
INPUT_NAME = "pixels"
EPOCHS = 3
LEARNING_RATE = 1e-2

TESTS_DIR = Path(__file__).resolve().parent


def pytest_configure(config):
    # TFLiteConverter's own calibration step (full-integer targets) instantiates the
    # deprecated tf.lite.Interpreter internally; deploykit runs artifacts on ai-edge-litert.
    config.addinivalue_line("filterwarnings", "ignore:.*tf.lite.Interpreter is deprecated:UserWarning")


@dataclass(frozen=True)
class Digits:
    """load_digits split once: raw pixel values 0..16, shape (n, 8, 8, 1)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


@pytest.fixture(scope="session")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype("float32")[..., None]
    y = d.target.astype("int64")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    return Digits(x[N_EVAL:], y[N_EVAL:], x[:N_EVAL], y[:N_EVAL])


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """The session's directory for models, data and artifacts built once."""
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def data_npz(assets, digits) -> Path:
    """Held-out samples as deploykit reads them: ``x`` (200, 8, 8, 1) float32, ``y`` int64."""
    path = assets / "digits_eval.npz"
    np.savez(path, x=digits.x_eval, y=digits.y_eval)
    return path


# --------------------------------------------------------------------------- Keras 3
def _keras3_cnn(name: str = "tiny_cnn"):
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name=INPUT_NAME),
            keras.layers.Rescaling(1.0 / 16.0, name="rescale"),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name=name,
    )


@pytest.fixture(scope="session")
def keras3_model(digits):
    """Trained Keras 3 CNN with embedded preprocessing (Rescaling). Do not mutate."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = _keras3_cnn()
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def keras3_path(assets, keras3_model) -> Path:
    path = assets / "keras3_cnn.keras"
    keras3_model.save(path)
    return path


@pytest.fixture(scope="session")
def saved_model_dir(assets, keras3_model) -> Path:
    """SavedModel directory exported from the Keras 3 model (``model.export``)."""
    path = assets / "keras3_saved_model"
    keras3_model.export(str(path), format="tf_saved_model", verbose=False)
    return path


@pytest.fixture(scope="session")
def lambda_keras3_path(assets) -> Path:
    """Keras 3 model with a Lambda layer (marshalled bytecode), saved as .keras."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name=INPUT_NAME),
            keras.layers.Lambda(lambda t: t / 16.0, name="scale_lambda"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="lambda_k3",
    )
    path = assets / "lambda_keras3.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def custom_layer_keras_path(assets) -> Path:
    """Keras 3 model holding a layer registered in a test helper module.

    The helper (tests/dk_custom_layers.py) is importable here but not in a
    ``deploy`` subprocess, where loading must fail with "unknown custom object".
    """
    import keras

    sys.path.insert(0, str(TESTS_DIR))
    try:
        import dk_custom_layers
    finally:
        sys.path.remove(str(TESTS_DIR))
    model = keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name=INPUT_NAME),
            dk_custom_layers.TimesTwo(name="times_two"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    path = assets / "custom_layer.keras"
    model.save(path)
    return path


# --------------------------------------------------------------------------- tf_keras
def _tf_keras_cnn(name: str = "tiny_cnn_tk"):
    import tf_keras

    L = tf_keras.layers
    return tf_keras.Sequential(
        [
            L.InputLayer(input_shape=INPUT_SHAPE, name=INPUT_NAME),
            L.Rescaling(1.0 / 16.0, name="rescale"),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.Flatten(name="flatten"),
            L.Dense(10, activation="softmax", name="probs"),
        ],
        name=name,
    )


@pytest.fixture(scope="session")
def tf_keras_model(digits):
    """The same architecture in tf_keras (Keras 2), trained the same way. Do not mutate."""
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    model = _tf_keras_cnn()
    model.compile(tf_keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def tf_keras_keras_path(assets, tf_keras_model) -> Path:
    path = assets / "tf_keras_cnn.keras"
    tf_keras_model.save(path)
    return path


@pytest.fixture(scope="session")
def tf_keras_h5_path(assets, tf_keras_model) -> Path:
    import warnings

    path = assets / "tf_keras_cnn.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is legacy": exactly the input we want to test
        tf_keras_model.save(path)
    return path


@pytest.fixture(scope="session")
def lambda_tf_keras_h5_path(assets) -> Path:
    """tf_keras model with a Lambda layer, saved as legacy .h5."""
    import warnings

    import tf_keras

    L = tf_keras.layers
    tf_keras.utils.set_random_seed(SEED)
    model = tf_keras.Sequential(
        [
            L.InputLayer(input_shape=INPUT_SHAPE, name=INPUT_NAME),
            L.Lambda(lambda t: t / 16.0, name="scale_lambda"),
            L.Flatten(),
            L.Dense(10, activation="softmax"),
        ],
        name="lambda_tk",
    )
    path = assets / "lambda_tf_keras.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    return path


# --------------------------------------------------------------------------- broken files
@pytest.fixture(scope="session")
def broken_models(assets, keras3_path, tf_keras_h5_path) -> dict[str, Path]:
    """Unreadable model files: truncated halves, random bytes, empty, wrong suffix."""
    out = assets / "broken"
    out.mkdir()
    keras_bytes = keras3_path.read_bytes()
    h5_bytes = tf_keras_h5_path.read_bytes()
    files = {
        "truncated_keras": ("truncated.keras", keras_bytes[: len(keras_bytes) // 2]),
        "truncated_h5": ("truncated.h5", h5_bytes[: len(h5_bytes) // 2]),
        "corrupt_keras": ("corrupt.keras", np.random.default_rng(SEED).bytes(4096)),
        "empty_keras": ("empty.keras", b""),
        "wrong_suffix": ("model.onnx", keras_bytes),
    }
    paths = {}
    for key, (name, payload) in files.items():
        (out / name).write_bytes(payload)
        paths[key] = out / name
    paths["keras_as_h5"] = out / "keras_zip_named.h5"
    shutil.copy(keras3_path, paths["keras_as_h5"])
    paths["h5_as_keras"] = out / "h5_named.keras"
    shutil.copy(tf_keras_h5_path, paths["h5_as_keras"])
    return paths


# --------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="session")
def tflite_files(assets, keras3_path, data_npz) -> dict[str, Path]:
    """Real .tflite files from the real converter: tflite-fp32 and tflite-int8-io."""
    from deploykit.converters import tflite
    from deploykit.data import load_data
    from deploykit.models import load_model
    from deploykit.targets import get_target

    loaded = load_model(keras3_path)
    calib = load_data(data_npz, loaded.inputs)
    out = {}
    try:
        for name in ("tflite-fp32", "tflite-int8-io"):
            path = assets / f"{name}.tflite"
            tflite.convert(loaded, get_target(name), calib, path)
            out[name] = path
    finally:
        loaded.release()
    return out


@pytest.fixture(scope="session")
def reference_outputs(keras3_model, digits) -> np.ndarray:
    """The Keras 3 model's own outputs on the eval samples (the verification reference)."""
    return np.asarray(keras3_model(digits.x_eval, training=False))
