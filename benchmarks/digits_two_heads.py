"""Measurement: pruning a two-output digits model keeps its unlabelled output close to the dense one.

A digits CNN with a classifier head (softmax, the labels train it) and a regression head (each
image's mean brightness, no labels in the data file) is pruned to 80 % twice, with the same seed
and data, side by side in one process:

* as deploykit does it: the regression head trained towards the dense model's own values
  (self-distillation, weighted by 1/variance);
* the same fine-tune with that head's loss weight set to 0 (what training on the labels alone does
  to an output nobody gives targets for).

Printed: the classifier's validation accuracy and the regression head's mean |change| from the dense
model, as a share of its spread, for both. No threshold: issue 5 names no figure for this; the
ratio shows what the distillation buys.

Usage: .venv/bin/python benchmarks/digits_two_heads.py [--sparsity 0.8] [--epochs 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_line, table  # noqa: E402


def _model(x: np.ndarray, y: np.ndarray, bright: np.ndarray):
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 1), name="pixels")
    h = L.Rescaling(1 / 16)(inp)
    h = L.Conv2D(16, 3, activation="relu", name="conv")(h)
    h = L.Flatten()(h)
    h = L.Dense(64, activation="relu", name="fc")(h)
    model = keras.Model(inp, [L.Dense(10, activation="softmax", name="digit")(h), L.Dense(1, name="bright")(h)])
    model.compile("adam", loss=["sparse_categorical_crossentropy", "mse"])
    model.fit(x, [y, bright], epochs=20, batch_size=64, verbose=0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    from deploykit.optimize import heads
    from deploykit.optimize.prune import prune

    d = load_digits()
    x = d.images.astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    bright = x.mean(axis=(1, 2, 3))[:, None] / 4.0
    model = _model(x[:1400], y[:1400], bright[:1400])
    print(machine_line())

    def run(label: str) -> list[object]:
        rep = prune(model, (x[:1400], y[:1400]), sparsity=args.sparsity, epochs=args.epochs, seed=0).report
        reg = rep["outputs"]["distilled"][0]
        return [label, f"{rep['accuracy_before']:.2%}", f"{rep['accuracy_after']:.2%}",
                f"{reg['mean_abs_change']:.4f}", f"{reg['mean_abs_change'] / reg['dense_std']:.0%}"]

    distilled = run("distilled (deploykit)")
    original = heads.Heads.loss_weights

    def labels_only(self):  # the regression head left without a loss
        w = original(self)
        return [0.0 if j != self.index else v for j, v in enumerate(w)] if isinstance(w, list) else w

    with mock.patch.object(heads.Heads, "loss_weights", labels_only):
        alone = run("labels only (head weight 0)")
    print(table(["fine-tune", "val acc dense", "val acc pruned", "bright mean |change|", "of its spread"],
                [distilled, alone]))


if __name__ == "__main__":
    main()
