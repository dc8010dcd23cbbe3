"""Build the bundled example: a small CNN trained on scikit-learn's digits.

The model carries its own preprocessing (raw 8x8 pixel values 0..16 in,
class probabilities out): Resizing to 16x16 and Rescaling to 0..1 are layers
inside the model, as deploykit expects from a model that is ready to ship.

Writes ``digits.keras`` (Keras 3) and ``digits.npz`` (held-out ``x``/``y``
used for calibration and evaluation). Seeded and offline: load_digits ships
inside scikit-learn.

Usage: python examples/digits/build_model.py --out build/example
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(out: Path, epochs: int = 30, seed: int = 0) -> tuple[Path, Path]:
    from deploykit._quiet import import_tensorflow

    import_tensorflow()  # TensorFlow's CUDA probe line ("failed call to cuInit") stays out of `make demo`'s output
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = digits.images.astype("float32")[..., None]  # (n, 8, 8, 1), values 0..16
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)

    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="pixels"),
            keras.layers.Resizing(16, 16, name="resize"),
            keras.layers.Rescaling(1.0 / 16.0, name="rescale"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits_cnn",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0, validation_split=0.1)
    _, acc = model.evaluate(x_test, y_test, verbose=0)

    out.mkdir(parents=True, exist_ok=True)
    model_path, data_path = out / "digits.keras", out / "digits.npz"
    model.save(model_path)
    np.savez(data_path, x=x_test, y=y_test)
    # Training split too, for the pruning/fine-tuning features that need it.
    np.savez(out / "digits_train.npz", x=x_train, y=y_train)
    print(f"digits model: test accuracy {acc:.4f} -> {model_path}, data -> {data_path}")
    return model_path, data_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/example"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.epochs, args.seed)


if __name__ == "__main__":
    main()
