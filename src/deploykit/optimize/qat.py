"""Quantization-aware training (QAT) for tf_keras models, and sparsity-preserving QAT after pruning.

QAT fine-tunes a model while its forward pass simulates int8: weights and
activations go through fake-quantization ops whose ranges are learned, so the
model learns to live with int8 rounding and the converter later takes those
ranges instead of guessing them from calibration data.

**tf_keras only.** tensorflow-model-optimization (tfmot) is the only QAT
implementation for Keras here, and it wraps tf_keras layers only; there is no
Keras 3 QAT in tfmot, and rebuilding a Keras 3 model in tf_keras would lose
whatever tf_keras cannot represent (the reason pruning prunes Keras 3 models
natively). Writing our own fake-quant framework for Keras 3 is out of scope, so
:func:`quantize_aware` refuses a Keras 3 model with a one-line
:class:`~deploykit.errors.UserError`: drop QAT and use the ``tflite-int8``
target (post-training int8, calibrated on the run's data), or rebuild and save
the model with tf_keras.

**How layers are wrapped** (the same way pruning wraps them): every layer is
re-created from its config through ``tf_keras.models.clone_model(clone_function=...)``
and the ones tfmot can quantize are annotated with ``quantize_annotate_layer``;
``quantize_apply`` then inserts the fake-quant wrappers with
``Default8BitQuantizeScheme``, or, after pruning (``preserve_sparsity=True``),
``tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme`` (PQAT:
the weight quantizer multiplies each kernel by the mask of its non-zero
weights, so pruned zeros stay zero through training and into the int8 file;
where tfmot's Conv2D+ReLU pattern swaps in its default config, the zeros are
put back after every training step).
The caller's model is never touched.

Measured with tfmot 0.8.1, tf_keras 2.21:

* quantized: what tfmot's 8-bit registry supports (Conv2D, DepthwiseConv2D,
  Dense, ReLU, Activation, pooling, Flatten, Reshape, Dropout, Add, Concatenate...),
  and BatchNormalization right after an annotated Conv2D/DepthwiseConv2D
  (tfmot folds it into the conv);
* kept float and listed in the report's ``skipped`` with the reason:
  preprocessing layers (Rescaling, Normalization, Resizing...) and custom
  layers — ``quantize_apply`` raises "Layer ... is not supported" on them;
  a BatchNormalization that does not follow a conv (tfmot has no standalone
  config); a BatchNormalization after Dense: tfmot annotates it, but its
  Dense+BatchNorm fold converts to a wrong full-int8 model (digits: 96.5 % in
  Keras, 32 % in the .tflite), while left float it converts to int8 MUL/ADD at
  96.5 %; nested models (tfmot quantizes top-level layers only). A layer
  ``quantize_apply`` still refuses is dropped from the annotation and reported.

**Conversion** (the pipeline's SavedModel -> TFLiteConverter path, unchanged):
a QAT model carries FakeQuant ops, and ``tflite-int8`` / ``tflite-int8-io`` /
``tflm-int8`` (DEFAULT optimizations + representative dataset + int8 builtins)
take the trained ranges for the wrapped layers and calibrate only the float
ones (Rescaling...). ``Optimize.DEFAULT`` without a representative dataset
also yields int8 kernels, but an op whose input has no trained range (the conv
after a float Rescaling) then stays float, so calibration data is still
wanted. Measured on the digits CNN: tflite-int8/int8-io, tflm-int8 and
onnx-int8-dynamic/qdq verify against the QAT model. onnx-int8-qop does not
convert a QAT model with stacked convolutions ('NoneType' object has no
attribute 'data_type': ONNX Runtime's QOperator rewrite looks for a conv's
weights as an initializer, and after QAT they come through Quantize/
DequantizeLinear), so onnx-int8-qdq is the ONNX target to choose.
tflite-fp16 and tflite-dynamic come out int8 as well (the FakeQuant ranges win); float targets
(tflite-fp32, onnx-fp32, tfjs-*) approximate the fake quantization and miss
the fp32 tolerance; tflite-int16x8 fails to convert (Softmax). QAT is for
int8 targets.

Fine-tuning follows pruning's conventions (:mod:`deploykit.optimize.prune`):
the model's compiled loss and metrics or ``loss``/``metrics``, a fresh
optimizer (the compiled class and learning rate, or Adam 1e-3, or
``learning_rate``), a held-out validation split, one progress line per epoch,
and early stopping on validation accuracy (validation loss, for a model
trained with a regression loss) with the best epoch restored.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploykit._quiet import logs_muted
from deploykit.models import model_call_arg
from deploykit.optimize import heads as _heads
from deploykit.errors import DataError, UserError
from deploykit.optimize import prune as _ft  # fine-tuning helpers shared with pruning
from deploykit.optimize import structure as _structure
from deploykit.random_state import keeps_global_rng

QAT_PATH = "tfmot-qat"
PQAT_PATH = "tfmot-pqat"
PCQAT_PATH = "tfmot-qat+shared-value-projection"
# QAT starts from a trained model and only adapts it to int8 rounding: a few epochs.
DEFAULT_EPOCHS = 4

KERAS3_REFUSAL = (
    "QAT needs a tf_keras model: tensorflow-model-optimization's quantize_model wraps only tf_keras layers and "
    "has no Keras 3 version; this is a Keras 3 model. Drop --qat (qat=...) and use the tflite-int8 target "
    "(post-training int8, calibrated on --data), or rebuild and save the model with tf_keras"
)

# BatchNormalization is quantized only folded into these (tfmot's Conv2D+BN transforms).
_BN_FOLD_INTO = ("Conv2D", "DepthwiseConv2D")

ProgressFn = Callable[[str], None]


@dataclass
class QATResult:
    """The QAT model (tf_keras, fake-quant wrappers in place: convert it as is) and a JSON-able report."""

    model: Any
    report: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- checks
def check_settings(
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 32,
    patience: int | None = 2,
    learning_rate: float | None = None,
    validation_split: float = 0.1,
    loss: Any = None,
    seed: int = 0,
) -> None:
    """Validate QAT settings without a model (the CLI and Pipeline call it before any work).

    Raises:
        UserError: the first bad setting.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0):
        raise UserError(f"patience must be a non-negative integer or None, got {patience!r}")
    _ft.check_fit_settings(learning_rate=learning_rate, loss=loss, seed=seed, validation_split=validation_split)


def check_model(model: Any) -> None:
    """Refuse what QAT cannot take: Keras 3 models, non-Keras objects, subclassed models.

    Raises:
        UserError: one line saying why and what to do instead.
    """
    from deploykit.models import _is_keras_model

    kind = _is_keras_model(model)
    if kind is None:
        raise UserError(
            f"quantize_aware() takes an in-memory tf_keras model, got a {type(model).__name__}; "
            "load it first (deploykit.models.load_model(path).keras_model)"
        )
    if kind == "keras3":
        raise UserError(KERAS3_REFUSAL)
    import tf_keras

    if not isinstance(model, tf_keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise UserError(
            f"QAT wraps the layers of Sequential or functional tf_keras models; {model.name!r} is a subclassed "
            f"{type(model).__name__}; rebuild it as a functional model, or drop --qat and use the tflite-int8 target"
        )


def compile_config_of(model: Any) -> dict[str, Any] | None:
    """Compile settings of a saved model file or an in-memory tf_keras/Keras 3 model (None: not compiled)."""
    if isinstance(model, (str, Path)):
        return _ft.read_compile_config(model)
    from deploykit.models import _is_keras_model

    kind = _is_keras_model(model)
    return _ft._model_compile_config(model, kind) if kind else None


# ----------------------------------------------------------------------------- annotation plan
def _inbound_layers(layer: Any, model: Any) -> list[Any]:
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if nodes:
        import tensorflow as tf

        return list(tf.nest.flatten(nodes[0].inbound_layers))
    layers = list(model.layers)
    i = layers.index(layer)
    return layers[i - 1 : i] if i > 0 else []


def _plan(model: Any, registry: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(layers to annotate, layers kept float with reasons), in model order; top-level layers only."""
    import tf_keras

    quantize: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    annotated: set[str] = set()
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue

        def skip(reason: str) -> None:
            skipped.append({"layer": layer.name, "class": cls, "reason": reason})

        if isinstance(layer, tf_keras.Model):
            skip("nested model: tfmot quantizes only the top-level layers of a Sequential/functional model; "
                 "its layers stay float (the int8 converter calibrates them)")
        elif _ft._is_preprocessing(layer):
            skip(f"preprocessing layer: tfmot's 8-bit scheme has no quantize config for {cls}; "
                 "kept float (the int8 converter calibrates it)")
        elif not _ft._is_builtin(layer, "tf_keras"):
            skip("custom layer: tfmot has no quantize config for it; kept float (the int8 converter calibrates it)")
        elif cls == "BatchNormalization":
            inbound = _inbound_layers(layer, model)
            prev = inbound[0] if len(inbound) == 1 else None
            prev_cls = type(prev).__name__ if prev is not None else ""
            if prev_cls in _BN_FOLD_INTO and prev.name in annotated:
                quantize.append({"layer": layer.name, "class": cls, "note": f"folded into {prev.name} ({prev_cls})"})
                annotated.add(layer.name)
            elif prev_cls == "Dense":
                skip("BatchNormalization after Dense: tfmot's Dense+BatchNorm fold converts to a wrong full-int8 "
                     "model (measured); kept float, the int8 converter quantizes it (as MUL/ADD, or folded into the next layer)")
            else:
                skip("BatchNormalization not after a Conv2D/DepthwiseConv2D: tfmot quantizes it only folded "
                     "into a conv; kept float (the int8 converter calibrates it)")
        elif registry.supports(layer):
            quantize.append({"layer": layer.name, "class": cls})
            annotated.add(layer.name)
        else:
            skip(f"tfmot's 8-bit scheme does not support {cls}; kept float (the int8 converter calibrates it)")
    return quantize, skipped


def _refused_layer(exc: Exception, names: set[str]) -> str | None:
    """The annotated layer a tfmot error names ("Layer conv:<class ...> is not supported"), if any."""
    import re

    text = str(exc)
    match = re.search(r"Layer (\S+?):<class", text) or re.search(r"Layer (\S+) is not supported", text)
    if match and match.group(1) in names:
        return match.group(1)
    return next((n for n in sorted(names, key=len, reverse=True) if f"Layer {n}:" in text), None)


def _wrap(model: Any, tfmot: Any, quantize: list[dict[str, str]], skipped: list[dict[str, str]], scheme: Any) -> Any:
    """Annotate per layer through clone_model, copy the weights, quantize_apply; drop layers tfmot refuses."""
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate

    custom = {type(l).__name__: type(l) for l in model.layers if not _ft._is_builtin(l, "tf_keras")}
    by_name = {l.name: l for l in model.layers}
    while True:
        names = {q["layer"] for q in quantize}
        if not names:
            return None

        def clone_fn(layer):
            fresh = layer.__class__.from_config(layer.get_config())
            if layer.name in names:
                return tfmot.quantization.keras.quantize_annotate_layer(fresh)
            return fresh

        # Rebuilt from configs with Keras safe mode off: a Lambda in memory was loaded by a caller who
        # trusted it (safe mode refuses it at load), and its rebuild runs that same code. With safe mode on,
        # quantize_apply refused it and asked for safe_mode=False, which --trust-model had given.
        from tf_keras.src.saving.serialization_lib import SafeModeScope

        try:
            with tfmot.quantization.keras.quantize_scope(custom), _ft.configs_with_names(model), SafeModeScope(False):
                annotated = tf_keras.models.clone_model(model, clone_function=clone_fn)
                for layer in annotated.layers:
                    inner = layer.layer if isinstance(layer, QuantizeAnnotate) else layer
                    source = by_name.get(inner.name)
                    if source is not None and source.weights:
                        inner.set_weights(source.get_weights())
                qmodel = tfmot.quantization.keras.quantize_apply(annotated, scheme)
            # quantize_apply copies variables without finalize_state(): an adapted Normalization then
            # computes with mean 0, variance 1 (its adapt_mean holds the real ones) through the whole
            # fine-tune, and set_weights at the end switched it back on in a model never trained so
            # (held-out accuracy 93 % -> 24 % after QAT).
            for layer in qmodel.layers:
                for inner in (layer, getattr(layer, "layer", None)):
                    if inner is not None and hasattr(inner, "finalize_state"):
                        inner.finalize_state()
            return qmodel
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            refused = _refused_layer(exc, names)
            if refused is None:
                raise UserError(f"tfmot could not prepare this model for QAT: {' '.join(str(exc).split())[:300]}") from None
            entry = next(q for q in quantize if q["layer"] == refused)
            quantize.remove(entry)
            reason = " ".join(str(exc).split()).replace("`", "'")  # a backtick cut in half made the report's rest code
            reason = reason if len(reason) <= 200 else reason[:200].rsplit(" ", 1)[0] + " …"  # whole words
            skipped.append({"layer": refused, "class": entry["class"], "reason": f"tfmot refused it: {reason}; kept float"})


def _pqat_scheme(tfmot: Any) -> Any:
    """tfmot's prune-preserving 8-bit scheme, with a registry that answers ``supports()`` like the 8-bit one.

    tfmot's PQAT registry calls every weightless layer supported (Rescaling too). quantize_apply asks the
    registry whether a float layer feeding an annotated one (Rescaling before the first conv) can get an
    output quantizer, then asks the 8-bit registry for its config, which raises "get_quantize_config() called
    on an unsupported layer". Answering ``supports()`` with both registries leaves such a layer float, as the
    8-bit scheme does.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry as ppr,
    )

    base = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme
    eight_bit = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()

    class _Registry(ppr.Default8bitPrunePreserveQuantizeRegistry):
        def supports(self, layer):  # noqa: D401 - tfmot's interface
            return eight_bit.supports(layer) and super().supports(layer)

    class Default8BitPrunePreserveQuantizeScheme(base):  # same name in the report as tfmot's
        def get_quantize_registry(self):
            return _Registry()

    return Default8BitPrunePreserveQuantizeScheme()


# ----------------------------------------------------------------------------- training
# Every weight pruning may have zeroed (SeparableConv's pointwise kernel and Embedding tables too:
# a layer QAT leaves in float trains unwrapped, and its zeros would regrow unless kept).
_KERNEL_NAMES = {"depthwise_kernel", *(w for names in _structure.PRUNABLE_WEIGHTS.values() for w in names)}


def _kernel_vars(model: Any) -> dict[str, Any]:
    """Every prunable kernel variable (Dense/Conv kernels, pointwise kernels, embedding tables),
    by the original layer name (wrappers looked through), a nested model's layers included: they
    stay float but train with the rest, and their zeros and shared values were lost unseen."""
    out = {}
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

    from deploykit.models import _flat_layers

    for layer in _flat_layers(model):
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        # a quantize wrapper replaces inner.kernel by its fake-quantized tensor and owns the variable
        for var in layer.weights:
            scope, _, short = var.name.split(":")[0].rpartition("/")
            # a recurrent layer's kernels are its cell's ("lstm_cell/kernel" in tf_keras)
            owners = (inner.name, getattr(getattr(inner, "cell", None), "name", None))
            if short in _KERNEL_NAMES and scope.split("/")[-1] in owners:
                out[f"{inner.name}/{short}"] = var
    return out


def _kernel_zeros(model: Any) -> dict[str, dict[str, int]]:
    """Zeros of every Dense/Conv kernel, by the original layer name (wrappers looked through)."""
    out = {}
    for name, var in _kernel_vars(model).items():
        w = np.asarray(var.numpy())
        out[name] = {"size": int(w.size), "zeros": int(np.count_nonzero(w == 0))}
    return out


def _keep_zeros_callback(base: type, qmodel: Any) -> Any:
    """A callback that puts every pruned zero back after each training step.

    The prune-preserving scheme masks the kernels it quantizes itself; tfmot's Conv2D+ReLU pattern
    (a conv followed by a separate ReLU layer) swaps that config for the default 8-bit one, and
    its zeros then moved in training (measured: 50 % -> 8 % zeros in the int8 file).
    """
    masks = [(var, (np.asarray(var.numpy()) != 0).astype(var.dtype.as_numpy_dtype))
             for var in _kernel_vars(qmodel).values()]
    masks = [(var, mask) for var, mask in masks if not mask.all()]

    class _KeepZeros(base):  # type: ignore[misc, valid-type]
        def on_train_batch_end(self, batch, logs=None):
            for var, mask in masks:
                var.assign(var * mask)

    return _KeepZeros()


def _keep_clusters_callback(base: type, qmodel: Any) -> tuple[Any, dict[str, int]]:
    """A callback that puts every clustered kernel back onto its shared values after each training
    step, each value the mean of its cluster's trained weights (zeros pinned at 0): cluster-preserving
    QAT. The same projection as the clustering fine-tune's (:mod:`deploykit.optimize.cluster`), so
    every kernel tfmot wraps, and the ones its Conv+ReLU pattern swaps to the default config or it
    leaves in float, keep at most their clusters. Returns the callback and each kernel's value count.
    """
    groups = []
    counts = {}
    for name, var in _kernel_vars(qmodel).items():
        if name.endswith("/depthwise_kernel"):  # never clustered (one channel per filter), as never pruned
            continue
        w = np.asarray(var.numpy())
        values, index = np.unique(w, return_inverse=True)
        if values.size > 257:  # not a clustered kernel (clustering leaves at most 256 values and zero)
            continue
        counts[name] = int(values.size)
        zero = np.flatnonzero(values == 0)
        groups.append((var, index.reshape(w.shape), values.size, int(zero[0]) if zero.size else -1))

    class _KeepClusters(base):  # type: ignore[misc, valid-type]
        def on_train_batch_end(self, batch, logs=None):
            for var, index, n, zero in groups:
                w = np.asarray(var.numpy())
                sums = np.bincount(index.ravel(), weights=w.ravel(), minlength=n)
                means = sums / np.maximum(np.bincount(index.ravel(), minlength=n), 1)
                if zero >= 0:
                    means[zero] = 0.0
                var.assign(means[index].astype(w.dtype))

    return _KeepClusters(), counts


def _distinct_values(model: Any) -> dict[str, int]:
    """Distinct values of every Dense/Conv kernel, by the original layer name (wrappers looked through)."""
    return {name: int(np.unique(np.asarray(var.numpy())).size) for name, var in _kernel_vars(model).items()}


# ----------------------------------------------------------------------------- API
@logs_muted
@keeps_global_rng
def quantize_aware(
    model: Any,
    train_data: Any,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 32,
    validation_data: Any = None,
    validation_split: float = 0.1,
    patience: int | None = 2,
    loss: Any = None,
    metrics: Sequence[Any] | None = None,
    optimizer: Any = None,
    learning_rate: float | None = None,
    compile_config: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    seed: int = 0,
    preserve_sparsity: bool = False,
    preserve_clusters: bool = False,
    output: int | str | None = None,
) -> QATResult:
    """Fine-tune a tf_keras classifier with int8 fake quantization (tfmot QAT).

    Args:
        model: In-memory tf_keras Sequential or functional model (not modified).
            Keras 3 models are refused (see the module docstring).
        train_data: :class:`deploykit.data.Dataset` with labels, or anything
            :func:`deploykit.data.load_data` accepts (``.npz`` path, ``(x, y)``...).
        epochs: Fine-tuning epochs.
        batch_size: Training batch size.
        validation_data: Labelled data for accuracy and early stopping; default:
            ``validation_split`` of ``train_data`` held out.
        validation_split: Fraction held out when ``validation_data`` is None.
        patience: Epochs without a better validation accuracy before stopping;
            None never stops early. The best epoch's weights are restored.
        loss, metrics: Used when the model carries no compile settings.
        optimizer: Optimizer (name or object; a fresh copy is used). Default: the
            compiled optimizer's class and learning rate, else Adam.
        learning_rate: Overrides the optimizer's learning rate (default 1e-3 for Adam).
        compile_config: Compile settings of the saved model (:func:`compile_config_of`);
            default: the in-memory model's own, when it is compiled.
        progress: Called with one line per epoch.
        seed: Seeds the split, the shuffling and Keras.
        preserve_sparsity: Use tfmot's prune-preserving scheme (PQAT) so the zeros of
            a pruned model survive QAT; the report then counts kernel zeros before/after.
        preserve_clusters: Cluster-preserving QAT for a clustered model
            (:func:`deploykit.cluster`): after every step each kernel is put back onto its
            shared values (each the mean of its cluster, zeros kept at 0); the report counts
            every kernel's distinct values before/after.
        output: A multi-output model's output ``y`` trains, as for :func:`deploykit.optimize.prune.prune`
            (the others keep to the model's own values; the report's ``outputs`` says how far they moved).

    Returns:
        :class:`QATResult`: ``.model`` is a tf_keras model with tfmot's quantize
        wrappers (layers named ``quant_<name>``), ready for the TFLite converter,
        and ``.report`` lists quantized and skipped layers, accuracies and history.

    Raises:
        UserError: Keras 3 or subclassed model, bad settings, no layer tfmot can
            quantize, no loss known. Raised before any training.
        DataError: train or validation data without labels, or too few samples.

    Example:
        >>> from deploykit.optimize.qat import quantize_aware
        >>> result = quantize_aware(model, (x_train, y_train), epochs=3)
        >>> [s["layer"] for s in result.report["skipped"]]
        ['rescale']
    """
    progress = progress or (lambda msg: None)
    check_model(model)
    check_settings(epochs=epochs, batch_size=batch_size, patience=patience, learning_rate=learning_rate,
                   validation_split=validation_split, loss=loss, seed=seed)
    cfg = compile_config if compile_config is not None else _ft._model_compile_config(model, "tf_keras")
    head, view, cfg = _heads.prepare(model, "tf_keras", train_data, output, cfg, "qat")  # several outputs: see prune()
    train, val, regression = _ft.fine_tune_data(train_data, validation_data, view, _ft.is_regression_loss(loss, cfg), "QAT")
    train, val = _ft._split(train, val, validation_split, seed)
    dense_val = _heads.teach(head, model, train, val)

    loss_fn, opt, metric_list, settings_source = _ft._training_setup("tf_keras", cfg, loss, metrics, optimizer,
                                                                     learning_rate)
    if not regression:
        _ft.check_loss_fits(loss_fn, view, train)
    score = _ft._Score(loss_fn if regression else None, "tf_keras", _ft.from_logits(loss_fn), head[0].index if head else 0)

    from deploykit.optimize._tfmot import import_tfmot

    tfmot = import_tfmot()
    import tf_keras

    default_scheme = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    scheme = _pqat_scheme(tfmot) if preserve_sparsity else default_scheme
    quantize, skipped = _plan(model, default_scheme.get_quantize_registry())
    if not quantize:
        raise UserError(f"no layer of this model can be quantized by tfmot: {_ft.skipped_reasons(skipped)}")

    tf_keras.utils.set_random_seed(seed)
    acc_before = score(model, val)
    zeros_before = _kernel_zeros(model)
    qmodel = _wrap(model, tfmot, quantize, skipped, scheme)
    if qmodel is None:
        why = "; ".join(f"{s['layer']}: {s['reason']}" for s in skipped)
        raise UserError(f"no layer of this model can be quantized by tfmot: {why}")
    acc_wrapped = score(qmodel, val)

    label = "pcqat" if preserve_clusters else "pqat" if preserve_sparsity else "qat"
    state = _ft._EpochState(qmodel, epochs, val, patience, progress, label, score)
    fit_settings, y = _ft._fit_targets(head, loss_fn, train.y, model, metric_list)
    qmodel.compile(optimizer=opt, **fit_settings)
    callbacks = [_ft._make_tracker(tf_keras.callbacks.Callback, state)]
    # before the tracker: its snapshots (the best epoch's weights) hold the zeros and shared values
    if preserve_clusters:
        keep, values_before = _keep_clusters_callback(tf_keras.callbacks.Callback, qmodel)
        callbacks.insert(0, keep)
    elif preserve_sparsity:
        callbacks.insert(0, _keep_zeros_callback(tf_keras.callbacks.Callback, qmodel))
    qmodel.fit(model_call_arg(qmodel, train.x), y, batch_size=batch_size, epochs=epochs, shuffle=True,
               verbose=0, callbacks=callbacks)
    if state.best is not None:
        qmodel.set_weights(state.best[2])
    acc_after = score(qmodel, val)

    report: dict[str, Any] = {
        "path": PCQAT_PATH if preserve_clusters else PQAT_PATH if preserve_sparsity else QAT_PATH,
        "framework": "tf_keras",
        "scheme": type(scheme).__name__,
        "preserve_sparsity": bool(preserve_sparsity),
        "preserve_clusters": bool(preserve_clusters),
        "settings": {
            "epochs": epochs, "batch_size": batch_size, "patience": patience,
            "learning_rate": _ft._lr_value(opt), "optimizer": type(opt).__name__,
            "loss": _ft._loss_name(loss_fn), "metrics": [_ft.metric_name(m) for m in metric_list],
            "training_settings_from": settings_source, "seed": seed,
            "steps_per_epoch": math.ceil(len(train) / batch_size), "train_samples": len(train),
            "validation_samples": len(val), "validation_source": val.source,
        },
        "quantized": quantize,
        "skipped": skipped,
        "score": score.key,
        "accuracy_before": None if regression else acc_before,
        "accuracy_wrapped": None if regression else acc_wrapped,
        "accuracy_after": None if regression else acc_after,
        **({"val_loss_before": acc_before, "val_loss_wrapped": acc_wrapped, "val_loss_after": acc_after}
           if regression else {}),
        "epochs_run": len(state.history),
        "best_epoch": state.best[1] if state.best else None,
        "history": state.history,
    }
    if head is not None:
        report["outputs"] = _heads.outputs_report(head, dense_val, qmodel, val)
    if preserve_clusters:
        after_values = _distinct_values(qmodel)
        report["kernel_values"] = [{"kernel": name, "values_before": n, "values_after": after_values.get(name)}
                                   for name, n in values_before.items()]
    if preserve_sparsity:
        after = _kernel_zeros(qmodel)
        report["kernel_zeros"] = [
            {"kernel": name, "size": b["size"], "zeros_before": b["zeros"], "zeros_after": after[name]["zeros"]}
            for name, b in zeros_before.items() if name in after
        ]
    return QATResult(qmodel, report)
