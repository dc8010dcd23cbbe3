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

Trained instead (``--train-digits EPOCHS``): random weights make a deep network
chaotic -- MobileNetV2's float16 copy already moves its probabilities by 0.05 and
every int8 variant keeps only ~60-70 % top-1 agreement -- so a figure that needs
int8 to pass verification (the ONNX auto selection) is measured on the same
architecture trained on scikit-learn's digits: each 8x8 image upsampled
bilinearly to the input size, grey to RGB, scaled to 0..255 and preprocessed as
above; ``--classes`` is then 10. Adam 1e-3 with cosine decay, batch 32, seeded; BatchNorm
statistics are recomputed on 256 training images afterwards (a few epochs are
too few for the moving averages to converge). calib.npz then holds ``--samples``
held-out images with their labels ``y``. One epoch at 224 px takes ~4 min on 2
cores and reaches ~94 % accuracy.

Usage: python benchmarks/_prepare.py --arch MobileNetV2 --samples 100 --out DIR [--train-digits 3]
Writes DIR/<arch>.keras and DIR/calib.npz (key ``x``, float32, NHWC; ``y`` when trained).
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


def digits(size: int, seed: int = 0):
    """scikit-learn's digits as (n, size, size, 3) float32 images in 0..255 and their labels, shuffled."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    w = _interp_matrix(8, size)
    x = np.einsum("ij,njk,lk->nil", w, d.images[order].astype(np.float32) * (255 / 16), w)
    return np.repeat(x[..., None], 3, axis=-1).astype(np.float32), d.target[order].astype(np.int64)


def set_bn_statistics(model, x, chunk: int = 32) -> int:
    """Set every BatchNormalization layer's moving mean/variance to the average batch statistics of ``x``.

    Training-mode passes over chunks of ``chunk`` samples with momentum (k-1)/k for the
    k-th chunk, so the moving statistics end as the plain mean over chunks (chunked:
    a functional model keeps every activation of a call alive, ~60 MB per 224 px
    MobileNetV2 image). The original momenta are restored.
    """
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for k, start in enumerate(range(0, len(x), chunk), start=1):
        for bn in bns:
            bn.momentum = (k - 1) / k
        model(x[start : start + chunk], training=True)
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    return len(bns)


def train_on_digits(model, args):
    """Fit ``model`` on the digits (all but the last --samples images); returns the held-out (x, y)."""
    import keras
    import numpy as np

    x, y = digits(args.size, args.seed)
    x = preprocess(x, args.preprocess)
    x_train, y_train, x_test, y_test = x[: -args.samples], y[: -args.samples], x[-args.samples:], y[-args.samples:]
    steps = args.train_digits * -(-len(x_train) // 32)
    lr = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps)  # ends near 0: a settled model in few epochs
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=args.train_digits, verbose=2)
    n = set_bn_statistics(model, x_train[:256])
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"trained {args.train_digits} epoch(s) on {len(x_train)} digits; BatchNorm statistics of {n} layers "
          f"recomputed; held-out accuracy {acc:.4f} on {len(x_test)}")
    return x_test, y_test


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
    parser.add_argument("--train-digits", type=int, default=0, metavar="EPOCHS",
                        help="train on scikit-learn's digits for EPOCHS instead of keeping random weights (10 classes)")
    args = parser.parse_args()
    if args.train_digits:
        args.classes = 10

    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model = getattr(keras.applications, args.arch)(weights=None, input_shape=(args.size, args.size, 3),
                                                   classes=args.classes)
    if args.train_digits:
        x, y = train_on_digits(model, args)
    else:
        x, y = preprocess(images(args.samples, args.size, args.seed), args.preprocess), None
        if not args.no_bn_init and (n := set_bn_statistics(model, x[: args.bn_batch])):
            print(f"set the moving statistics of {n} BatchNormalization layers from {min(args.bn_batch, len(x))} samples")
    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and args.logit_std > 0 and not args.train_digits:
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
    np.savez(args.out / "calib.npz", **({"x": x} if y is None else {"x": x, "y": y}))
    print(f"{args.arch}: {model.count_params():,} params -> {model_path}; calib {x.shape} "
          f"range [{x.min():.2f}, {x.max():.2f}] -> {args.out / 'calib.npz'}")


if __name__ == "__main__":
    main()
