"""The plain script a user would write instead of `deploy convert` (the baseline).

Load the .keras file with Keras 3, ``model.export`` to a SavedModel, then
``TFLiteConverter.from_saved_model`` for float32 and/or full int8
(Optimize.DEFAULT + representative_dataset over the first N calibration
samples, one sample per step + TFLITE_BUILTINS_INT8, float32 I/O) -- the same
converter settings deploykit's tflite-fp32 / tflite-int8 targets use. No
verification, no benchmark, no manifest.

Usage: python benchmarks/_plain_convert.py MODEL.keras CALIB.npz OUTDIR [--fp32] [--int8] [--calib-samples N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--calib-samples", type=int, default=200)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    model = keras.models.load_model(args.model, compile=False)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sm = os.path.join(tmp, "saved_model")
        model.export(sm, format="tf_saved_model", verbose=False)
        if args.fp32:
            conv = tf.lite.TFLiteConverter.from_saved_model(sm)
            (args.out / "fp32.tflite").write_bytes(conv.convert())
        if args.int8:
            x = np.load(args.calib)["x"][: args.calib_samples]

            def representative():
                for i in range(len(x)):
                    yield [x[i : i + 1]]

            conv = tf.lite.TFLiteConverter.from_saved_model(sm)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            (args.out / "int8.tflite").write_bytes(conv.convert())


if __name__ == "__main__":
    main()
