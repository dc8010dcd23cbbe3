"""Write a Keras 3 application (weights=None) and seeded image-like data for the benchmarks.

Not a benchmark: mobilenetv2_tflite.py and vgg16_memory.py run it once as a
subprocess, so the measuring process never imports TensorFlow itself.

Images: each is a random 8x8x3 field of uint8-range values, bilinearly upsampled
to the model's input size, plus Gaussian noise (std 12), rounded and clipped to
0..255 -- smooth, photo-like structure rather than white noise, so calibration
sees realistic activation ranges. Neither MobileNetV2 nor VGG16 (Keras 3
applications) embeds its preprocessing, so the stored arrays are already
preprocessed the way each family expects:

* ``--preprocess mobilenet``: x / 127.5 - 1, floats in [-1, 1]
  (keras.applications.mobilenet_v2.preprocess_input).
* ``--preprocess caffe``: RGB->BGR and ImageNet mean subtraction
  (keras.applications.vgg16.preprocess_input), roughly [-124, 152].

Weights: ``weights=None`` (nothing is downloaded). Keras' default initialisation
with identity BatchNorm statistics makes MobileNetV2's activations shrink about
10x per block: the output is a constant 1/1000 softmax, which would make
verification and int8 calibration degenerate. So, for models with
BatchNormalization layers, the moving mean/variance are set once from a batch
of the generated data (momentum 0, one forward pass in training mode, then the
original momentum restored) -- a data-dependent init that leaves the
architecture, the weights and therefore size and speed untouched. VGG16 has
no BatchNormalization. Then the final softmax Dense layer's kernel is scaled
so its logits have standard deviation --logit-std (default 4) on that batch:
with random weights the softmax is otherwise nearly flat (max probability
~0.004 of 1000 classes), below one int8 output step (1/256), so an int8 model's
top-1 would be arbitrary and its verification meaningless. Scaling one
kernel changes no shape, so size and speed are untouched.

Usage: python benchmarks/_prepare.py --arch MobileNetV2 --samples 100 --out DIR
Writes DIR/<arch>.keras and DIR/calib.npz (key ``x``, float32, NHWC).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def _interp_matrix(src: int, dst: int):
    import numpy as np

    pos = np.linspace(0, src - 1, dst)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src), np.float32)
    m[np.arange(dst), lo] += 1 - frac
    m[np.arange(dst), hi] += frac
    return m


def images(n: int, size: int, seed: int = 0):
    """Seeded uint8-range float32 images (n, size, size, 3), values 0..255."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
    w = _interp_matrix(8, size)
    x = np.einsum("ij,njkc,lk->nilc", w, low, w)
    x += rng.normal(0, 12, x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.float32)


def preprocess(x, mode: str):
    import numpy as np

    if mode == "mobilenet":
        return (x / 127.5 - 1.0).astype(np.float32)
    if mode == "caffe":
        return (x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)).astype(np.float32)
    raise ValueError(mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="keras.applications class name, e.g. MobileNetV2, VGG16")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--preprocess", choices=["mobilenet", "caffe"], default="mobilenet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bn-batch", type=int, default=32, help="samples that set BatchNorm statistics")
    parser.add_argument("--no-bn-init", action="store_true", help="keep identity BatchNorm statistics")
    parser.add_argument("--classes", type=int, default=1000, help="output classes (default: ImageNet's 1000)")
    parser.add_argument("--logit-std", type=float, default=4.0, help="scale the softmax layer to this logit std (0: leave)")
    args = parser.parse_args()

    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model = getattr(keras.applications, args.arch)(weights=None, input_shape=(args.size, args.size, 3),
                                                   classes=args.classes)
    x = preprocess(images(args.samples, args.size, args.seed), args.preprocess)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if bns and not args.no_bn_init:
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 0.0
        model(x[: args.bn_batch], training=True)
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        print(f"set the moving statistics of {len(bns)} BatchNormalization layers from {min(args.bn_batch, len(x))} samples")
    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and args.logit_std > 0:
        feats = np.asarray(keras.Model(model.input, last.input)(x[: args.bn_batch], training=False))
        kernel, bias = last.get_weights()
        std = float((feats @ kernel + bias).std())
        if std > 0:
            last.set_weights([kernel * (args.logit_std / std), bias])
            print(f"scaled {last.name} kernel by {args.logit_std / std:.3g} (logit std {std:.3g} -> {args.logit_std:g})")
    probe = np.asarray(model(x[:4], training=False))
    print(f"output on 4 samples: std {probe.std():.3g}, max {probe.max():.3g}, "
          f"top-1 classes {probe.argmax(-1).tolist()}")
    model_path = args.out / f"{args.arch}.keras"
    model.save(model_path)
    np.savez(args.out / "calib.npz", x=x)
    print(f"{args.arch}: {model.count_params():,} params -> {model_path}; calib {x.shape} "
          f"range [{x.min():.2f}, {x.max():.2f}] -> {args.out / 'calib.npz'}")


if __name__ == "__main__":
    main()
