"""Coverage: keras.applications architectures (Keras 3, weights=None) through every format.

For each architecture: build it (weights=None, nothing downloaded), save it as .keras, and
run one `deploykit.convert` with tflite-fp32 and onnx-fp32 on
a few seeded inputs; a format passes when its artifact converts, loads in its real runtime
(LiteRT / ONNX Runtime / TF.js in Node) and matches the Keras model within the target's tolerance.

The ONNX issue's figure: every architecture the TFLite path converts also converts to ONNX,
passes onnx.checker (full_check), loads in ONNX Runtime and matches the reference.

Each architecture runs in its own subprocess (memory is returned between models).
Usage: .venv/bin/python benchmarks/applications_coverage.py [--models MobileNetV2,ConvNeXtTiny] [--size 96]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import PYTHON, Verdicts, machine_line, run_child, table  # noqa: E402

DEFAULT = [
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0",
    "ResNet50", "ResNet50V2", "DenseNet121", "InceptionV3", "InceptionResNetV2", "Xception", "NASNetMobile",
    "ConvNeXtTiny", "VGG16",
]
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "NASNetMobile": 224}
TARGETS = ["tflite-fp32", "onnx-fp32", "tfjs-fp32"]

CHILD = r'''
import os, sys, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras, deploykit
arch, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
# include_top=False + average pooling: features, not a near-flat random softmax, are compared.
model = getattr(keras.applications, arch)(weights=None, input_shape=(size, size, 3), include_top=False, pooling="avg")
x = np.random.default_rng(0).uniform(-1, 1, (8, size, size, 3)).astype("float32")
# Random weights with identity BatchNorm statistics give a constant output, and parity on a
# constant proves nothing: set BN statistics from the data (as _prepare.py).
bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
for bn in bns: bn.momentum = 0.0
if bns: model(x, training=True)
res = deploykit.convert(model, sys.argv[4].split(","), data=x, out=out, iterations=3, warmup=1)
print(json.dumps({a["target"]: [a["status"], a["error"][:160], a["verification"].get("max_abs_error")]
                  for a in res.artifacts} | {"_output_std": float(np.asarray(model(x[:4])).std())}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT))
    parser.add_argument("--size", type=int, default=96, help="input height/width (raised to each model's minimum)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    print(f"keras.applications coverage; {machine_line()}")
    verdicts = Verdicts()
    rows = []
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="deploykit-cov-") as tmp:
        for arch in args.models.split(","):
            size = max(args.size, MIN_SIZE.get(arch, 32))
            r = run_child([PYTHON, "-c", CHILD, arch, str(size), os.path.join(tmp, arch), ",".join(targets)])
            try:
                result = json.loads(r.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                result = {t: ["crashed", r.stderr.strip().splitlines()[-1][:160] if r.stderr.strip() else "", None]
                          for t in targets}
            out_std = result.pop("_output_std", float("nan"))
            rows.append([arch, size, f"{out_std:.2g}"] + [f"{result[t][0]} ({result[t][2]:.1e})" if result[t][2] is not None
                                        else f"{result[t][0]}: {result[t][1][:60]}" for t in targets]
                        + [f"{r.wall_s:.0f} s"])
            print(table(["architecture", "size", "output std"] + targets + ["time"], [rows[-1]]).splitlines()[-1], flush=True)
            if "tflite-fp32" in result and result["tflite-fp32"][0] == "ok":
                for t in targets:
                    if t != "tflite-fp32":
                        verdicts.check(f"{arch}: {t} converts and matches where TFLite does", result[t][0] == "ok",
                                       result[t][1] or f"max abs error {result[t][2]:.2e}")
    print()
    print(table(["architecture", "size", "output std"] + targets + ["time"], rows))
    verdicts.exit()


if __name__ == "__main__":
    main()
