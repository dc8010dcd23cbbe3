"""Pruning-aware fine-tuning for Keras 3 and tf_keras models.

Magnitude pruning: during a short fine-tuning run, the lowest-magnitude weights
of every prunable kernel are zeroed following a schedule, then kept at zero,
so the model learns to live without them. Zeros compress (gzip, and TFLite's
sparse formats), and survive int8 quantization (a zero weight quantizes to the
zero point, which is 0 for symmetric weights).

Two paths, one semantics:

* **tf_keras models** go through tensorflow-model-optimization: every prunable
  layer is wrapped with ``prune_low_magnitude`` through
  ``tf_keras.models.clone_model(clone_function=...)`` (wrapping the whole model
  fails on preprocessing layers such as Rescaling), trained with
  ``UpdatePruningStep``, and the wrappers removed with ``strip_pruning``.
  Layers are re-created from their configs and their weights copied, so the
  caller's model is never touched.
* **Keras 3 models** cannot go through tfmot (it only wraps tf_keras layers).
  Rebuilding a Keras 3 model in tf_keras would lose whatever tf_keras cannot
  represent (Keras 3-only layers, custom layers, some preprocessing), so we
  prune the Keras 3 model itself, natively: a clone of it (same layers, names,
  preprocessing and outputs; the caller's object is left alone) gets one binary
  mask per prunable kernel. A callback updates the masks at the schedule's
  steps with tfmot's rules (:mod:`deploykit.optimize.schedule`,
  :mod:`deploykit.optimize.structure`), and the mask is set as the kernel
  variable's ``constraint``, which Keras 3 optimizers apply right after every
  update inside the compiled train step: pruned weights are exactly 0 after
  every step, at no per-batch Python cost. (tfmot masks in the forward pass
  instead, so a pruned weight may regrow between mask updates; here it cannot.)

Fine-tuning uses the model's compiled loss and metrics (a saved, compiled
model) or the ``loss``/``metrics`` arguments, and a *fresh* optimizer: the
compiled class and learning rate, or Adam at 1e-3, or ``learning_rate``. The
old optimizer's moments belong to the dense weights; pruning fine-tuning
usually wants a learning rate at or below the original one, so pass
``learning_rate`` when the model was trained with a large one.

Early stopping watches validation accuracy (for a model trained with a
regression loss, which has no accuracy: its validation loss) only in epochs that ended at the
final sparsity (before that, accuracy falls as the sparsity rises and the
weights are not at the target); the best such epoch is restored, masks
included, so the achieved sparsity is always the requested one.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from deploykit._quiet import logs_muted
from deploykit.errors import DataError, UserError
from deploykit.models import _flat_layers, check_finite_weights, copy_state, model_call_arg, with_inputs
from deploykit.optimize import schedule as _schedule
from deploykit.optimize import structure as _structure
from deploykit.random_state import keeps_global_rng

KERAS3_PATH = "keras3-native-masks"
TFMOT_PATH = "tfmot"
# Digits example, 80 %: 12 epochs -> 0.7 point below dense, 20 (early-stopped at 17) -> no drop.
DEFAULT_EPOCHS = 12
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_BLOCK = (1, 4)  # block_size of structure="block" when none is given

ProgressFn = Callable[[str], None]


@dataclass
class PruneResult:
    """The pruned model (same kind as the input, no wrappers) and a JSON-able report."""

    model: Any
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Kernel:
    layer: str
    layer_class: str
    weight: str
    variable: Any
    shape: tuple[int, ...]
    mask: np.ndarray | None = None
    mask_var: Any = None
    saved_constraint: Any = None


# ----------------------------------------------------------------------------- helpers
def _framework(model: Any, fn: str = "prune") -> str:
    from deploykit.models import _is_keras_model

    kind = _is_keras_model(model)
    if kind is None:
        raise UserError(
            f"{fn}() takes an in-memory Keras 3 or tf_keras model, got a {type(model).__name__}; "
            "load it first (deploykit.models.load_model(path).keras_model)"
        )
    return kind


def _is_builtin(layer: Any, kind: str) -> bool:
    mod = type(layer).__module__
    return mod.startswith("keras.") if kind == "keras3" else mod.startswith("tf_keras.")


def _is_preprocessing(layer: Any) -> bool:
    return ".preprocessing." in type(layer).__module__


def skipped_reasons(skipped: Sequence[dict[str, str]], shown: int = 6) -> str:
    """Why no layer could be worked on, one entry per reason ("a, b, c: frozen ..."): a model of fifty
    frozen layers said the same sentence fifty times."""
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s["reason"], []).append(s["layer"])
    return "; ".join(", ".join(layers[:shown]) + (f" and {len(layers) - shown} more" if len(layers) > shown else "")
                     + f": {reason}" for reason, layers in by_reason.items()) or "the model has no layers"


# Layers that hold another layer (the attributes naming it): its kernels are the inner layer's.
_WRAPPERS = {"TimeDistributed": ("layer",), "Bidirectional": ("forward_layer", "backward_layer")}


def _named_layers(model: Any, kind: str) -> list[tuple[str, Any]]:
    """The model's layers by name, nested models flattened; in a Keras 3 model a TimeDistributed or
    Bidirectional wrapper gives the layers inside it instead, named ``wrapper/inner`` (their kernels stayed
    dense, said to have none). tfmot wraps whole layers, so a tf_keras wrapper stays one layer."""
    out = []
    for layer in _flat_layers(model):
        inner = _WRAPPERS.get(type(layer).__name__) if kind == "keras3" and _is_builtin(layer, kind) else None
        if inner is None:
            out.append((layer.name, layer))
            continue
        out += [(f"{layer.name}/{getattr(layer, a).name}", getattr(layer, a)) for a in inner
                if getattr(layer, a, None) is not None]
    return out


def _plan(model: Any, kind: str, structure: str, block_size: tuple[int, int]) -> tuple[list[_Kernel], list[dict[str, str]]]:
    """Prunable kernels and the layers that stay dense, with reasons."""
    kernels: list[_Kernel] = []
    skipped: list[dict[str, str]] = []
    for name, layer in _named_layers(model, kind):
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue

        def skip(reason: str) -> None:
            skipped.append({"layer": name, "class": cls, "reason": reason})

        if cls in _WRAPPERS and _is_builtin(layer, kind):  # tf_keras: Keras 3 gives the layers inside instead
            skip(f"a wrapper: tfmot prunes the layers it wraps itself, not one inside {cls}; kept dense")
            continue

        if _is_preprocessing(layer):
            skip("preprocessing layer: kept exact, not pruned")
            continue
        if hasattr(layer, "get_prunable_weights"):
            pairs = [(getattr(v, "path", None) or v.name, v) for v in layer.get_prunable_weights()]
        elif _is_builtin(layer, kind) and cls in _structure.PRUNABLE_WEIGHTS:
            owner = getattr(layer, "cell", None) if cls in _structure.RECURRENT else layer
            pairs = [(w, getattr(owner, w, None)) for w in _structure.PRUNABLE_WEIGHTS[cls]]
        elif _is_builtin(layer, kind) and cls in _structure.DENSE_ON_PURPOSE:
            skip(_structure.DENSE_ON_PURPOSE[cls])
            continue
        elif not _is_builtin(layer, kind):
            skip("custom layer: not a built-in Keras layer and has no get_prunable_weights()")
            continue
        else:
            skip("no prunable kernel" if layer.weights else "no weights")
            continue
        if not pairs or any(v is None or not hasattr(v, "assign") for _, v in pairs):
            skip("kernel is not a plain variable (quantized or LoRA layer?)")
            continue
        if not layer.trainable or not all(getattr(v, "trainable", True) for _, v in pairs):
            # A frozen layer (a pretrained backbone held fixed) was zeroed like any other: fine-tuning cannot
            # move its other weights to make up for the zeros, and the user asked for it to stay as it is.
            skip("frozen (trainable=False): fine-tuning cannot adapt it, so it is not pruned; set trainable = True "
                 "before saving to prune it")
            continue
        transposed = cls in _structure.TRANSPOSED_KERNELS
        if transposed and structure == "2:4" and kind == "tf_keras":
            skip("2:4 on a transposed convolution: tfmot groups its [h, w, out, in] kernel along the output channels, "
                 "not the inputs TFLite reduces over; kept dense (the Keras 3 path groups the inputs)")
            continue
        problems = [_structure.structure_problem(tuple(int(d) for d in v.shape), structure, block_size, transposed)
                    for _, v in pairs]
        problem = next((p for p in problems if p), None)
        if problem:
            skip(problem)
            continue
        for weight, var in pairs:
            kernels.append(_Kernel(name, cls, str(weight).split("/")[-1].split(":")[0], var, tuple(int(d) for d in var.shape)))
        if cls.startswith("SeparableConv"):  # its other kernel: listed, so no dense weight goes unmentioned
            skip("its depthwise_kernel stays dense (as DepthwiseConv2D's: one channel per filter); the pointwise_kernel is pruned")
    return kernels, skipped


def _to_dataset(data: Any, model: Any, role: str, targets: bool = False):
    from deploykit.data import Dataset, class_positions, load_data
    from deploykit.models import load_model

    if isinstance(data, Dataset):
        if targets and data.y is not None:  # a Dataset loaded with class labels: its values are the targets
            return Dataset(data.x, np.asarray(data.y, dtype=np.float32), data.source)
        return data
    loaded = load_model(model)
    outputs = [tuple(o.shape) for o in (getattr(loaded.keras_model, "outputs", None) or [])]
    return load_data(data, loaded.inputs, role=role, targets=targets, positions=class_positions(outputs))


def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict):  # a serialized loss: a class ({"class_name": "Huber", ...}) or a function
        config = loss.get("config")  # ({"class_name": "function", "config": "mean_squared_error"})
        if loss.get("class_name") in (None, "function") and isinstance(config, str):
            return config
        return str(loss.get("class_name") or (config.get("name", "") if isinstance(config, dict) else ""))
    return str(getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__)


def check_loss_fits(loss: Any, model: Any, train: Any) -> None:
    """Refuse a classification loss the labelled output cannot take, before fit() raises it as a
    traceback (a class loss on one sigmoid unit: "label value 1 outside [0, 1)" or an IndexError;
    binary_crossentropy on a softmax's class ids: "target and output must have the same rank")."""
    name = re.sub(r"[^a-z]", "", _loss_name(loss).lower())
    shape = tuple(model.outputs[0].shape[1:])
    width = int(shape[-1]) if shape and shape[-1] else None
    if name in ("sparsecategoricalcrossentropy", "categoricalcrossentropy") and width == 1 and len(shape) == 1:
        raise UserError(f"loss {_loss_name(loss)} needs a class per output column (a softmax over 2 or more), and this "
                        "model's output has one column (one sigmoid unit): use binary_crossentropy (--loss)")
    y = getattr(train, "y", None)
    if name == "binarycrossentropy" and width and width > 1 and y is not None and np.ndim(y) == 1:
        raise UserError(f"loss {_loss_name(loss)} takes a 0/1 tag per output column, and 'y' are class ids for the "
                        f"model's {width} output columns: use sparse_categorical_crossentropy (--loss)")


OFF_TARGET_POINTS = 2  # a kernel further from the target sparsity than this is named in the report

# Losses of models that predict values rather than classes: such a model has no accuracy, so its
# fine-tune keeps the epoch with the lowest validation loss instead (see _Score).
REGRESSION_LOSSES = {"mse", "mae", "mape", "msle", "meansquarederror", "meanabsoluteerror",
                     "meanabsolutepercentageerror", "meansquaredlogarithmicerror", "huber", "huberloss", "logcosh",
                     "cosinesimilarity", "poisson"}


def is_regression_loss(loss: Any, compile_config: dict[str, Any] | None) -> bool:
    """Whether ``loss`` (or, when None, the compile config's loss) is a regression loss.

    A one-entry dict (``{"price": "huber"}``, a single named output's loss) counts as that loss.
    """
    if loss is None:
        loss = (compile_config or {}).get("loss")
    from deploykit.optimize.heads import is_per_output, lone_loss

    loss = lone_loss(loss)
    name = _loss_name(loss) if loss is not None and not is_per_output(loss) else ""
    return name.lower().replace("_", "") in REGRESSION_LOSSES


class _Score:
    """What a fine-tune keeps its best epoch by, and reports before and after.

    Classifiers: validation accuracy (higher is better), read as verification reads it. A model
    trained with a regression loss has no accuracy: its own loss on the validation split
    (lower is better), computed with the loss function it is fine-tuned with.
    """

    def __init__(self, regression_loss: Any = None, kind: str = "keras3", from_logits: bool = False, output: int = 0):
        self.loss = None
        self.output = output  # the output scored (a multi-output model's labelled one)
        self.from_logits = bool(from_logits)  # what the tie-break reads the output as (the loss says)
        if regression_loss is not None:
            self.loss = (_resolved("loss", _keras_module(kind).losses.get, regression_loss)
                         if isinstance(regression_loss, str) else regression_loss)
            self.loss_name = _loss_name(regression_loss)

    @property
    def regression(self) -> bool:
        return self.loss is not None

    @property
    def key(self) -> str:
        """History and report key: ``val_accuracy`` or ``val_loss``."""
        return "val_loss" if self.regression else "val_accuracy"

    def line(self, value: float) -> str:
        """Progress-line text for one epoch."""
        return f"val loss {value:.4g}" if self.regression else f"val acc {value:.4f}"

    def __call__(self, model: Any, data: Any) -> float:
        return self.measure(model, data)[0]

    def measure(self, model: Any, data: Any) -> tuple[float, float | None]:
        """(score, tie-break): a classifier's accuracy and the mean negative log-likelihood of its
        true classes (None where the output does not give one); a regression model's loss and None.

        On a small validation split many epochs score the same accuracy (126 digits: one sample is
        0.8 %), and the first of them was kept: the rest of the fine-tune counted for nothing.
        """
        pred = _predict(model, data.x, self.output)
        if self.regression:
            return float(np.mean(np.asarray(self.loss(data.y.reshape(pred.shape), pred)))), None
        return _accuracy_of(pred, data.y), _true_class_nll(pred, data.y, self.from_logits)

    def better(self, a: Any, b: Any) -> bool:
        """``a`` beats ``b`` (scores, or :meth:`measure` pairs: equal scores go to the lower tie-break)."""
        if not isinstance(a, tuple):
            return a < b if self.regression else a > b
        if a[0] != b[0]:
            return a[0] < b[0] if self.regression else a[0] > b[0]
        return a[1] is not None and b[1] is not None and a[1] < b[1]


def from_logits(loss: Any) -> bool:
    """Whether a (classification) loss takes logits: its ``from_logits`` setting, as Keras reads it
    (a name such as ``sparse_categorical_crossentropy`` takes probabilities)."""
    if isinstance(loss, dict):
        return bool((loss.get("config") or {}).get("from_logits", False))
    if isinstance(loss, str):
        return False
    cfg = getattr(loss, "get_config", None)
    try:
        return bool(getattr(loss, "from_logits", None) or (cfg() if cfg else {}).get("from_logits", False))
    except Exception:  # noqa: BLE001 - a plain function has neither
        return False


def _true_class_nll(pred: np.ndarray, y: np.ndarray, logits: bool = False) -> float | None:
    """Mean -log p(true class) of a (N, C) output, or of a one-column output with 0/1 labels; None
    for other shapes (per-pixel labels...). ``logits``: the output is logits (the loss says so),
    taken through softmax / sigmoid; otherwise it is read as the probabilities it was trained as."""
    pred = np.asarray(pred, np.float64)
    y = np.asarray(y).reshape(-1)
    if pred.ndim != 2 or len(pred) != len(y) or not np.all(np.isfinite(pred)):
        return None
    if pred.shape[1] == 1:
        p = 1 / (1 + np.exp(-pred[:, 0])) if logits else pred[:, 0]
        p_true = np.where(y > 0.5, p, 1 - p)
    else:
        if y.min() < 0 or y.max() >= pred.shape[1]:
            return None
        if logits:
            pred = np.exp(pred - pred.max(axis=1, keepdims=True))
            pred /= pred.sum(axis=1, keepdims=True)
        p_true = pred[np.arange(len(y)), y.astype(np.int64)]
    return float(np.mean(-np.log(np.clip(p_true, 1e-12, 1.0))))


def fine_tune_data(train_data: Any, validation_data: Any, model: Any, regression: bool, what: str):
    """(train, validation or None, scored by loss), checked: labelled (class labels, or target values
    for a regression model, shaped like its output) and in the output's class range.

    A model compiled with a regression loss whose ``y`` are class indices of its multi-column
    output is a classifier trained with that loss on one-hot rows (``mse`` on softmax): it is
    fine-tuned that way and scored by accuracy, as verification scores it.
    """
    train = _to_dataset(train_data, model, "train data", regression)
    val = _to_dataset(validation_data, model, "validation data", regression) if validation_data is not None else None
    if regression and labels_are_class_indices(train, model):
        regression = False
        train, val = (None if d is None else as_class_labels(d) for d in (train, val))
    return (*_checked_fine_tune_data(train, val, model, regression, what), regression)


def labels_are_class_indices(data: Any, model: Any) -> bool:
    """``data``'s y (a loaded Dataset's) are whole numbers, one per sample, below the model's
    (multi-column) output width."""
    classes = (model.outputs[0].shape or [None])[-1]
    if not classes or classes < 2 or len(model.outputs[0].shape) != 2 or data.y is None:
        return False
    y = np.asarray(data.y)
    return ((y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) and y.size > 0
            and bool(np.all(y == np.round(y))) and y.min() >= 0 and y.max() < classes)


def as_class_labels(data: Any) -> Any:
    """A Dataset read with ``targets=True`` whose values are class indices, with them as labels."""
    from deploykit.data import Dataset

    y = None if data.y is None else np.asarray(data.y).reshape(len(data.y)).astype(np.int64)
    return Dataset(data.x, y, data.source)


def _checked_fine_tune_data(train: Any, val: Any, model: Any, regression: bool, what: str):
    if train.y is None:
        need = "target values 'y'" if regression else "labels 'y'"
        raise DataError(f"train data {train.source} has no {need}; {what} fine-tunes the model and needs them")
    if val is not None and val.y is None:
        raise DataError(f"validation data {val.source} has no {'target values' if regression else 'labels'} 'y'; "
                        f"{'the validation loss' if regression else 'accuracy'} needs them")
    out_shape = tuple(model.outputs[0].shape[1:])
    if regression:
        for d in (train, val):
            if d is None:
                continue
            per_sample = d.y.size // max(len(d.y), 1)
            if None not in out_shape and per_sample != int(np.prod(out_shape, dtype=np.int64)):
                raise DataError(
                    f"{d.source}: targets 'y' of shape {d.y.shape} do not fit the model's output (None, "
                    f"{', '.join(map(str, out_shape))}); pass one target row of the output's shape per sample")
            d.y = d.y.reshape((len(d.y),) + out_shape) if None not in out_shape else d.y
        return train, val
    classes = int((model.outputs[0].shape or [0])[-1] or 0)
    from deploykit.data import as_one_hot, check_label_range

    if len(out_shape) == 1:  # one class per sample: (N, C, 1) one-hot rows are classes, not positions
        train, val = (None if d is None else as_one_hot(d) or d for d in (train, val))

    check_label_range(train, classes if classes > 1 else None)
    if classes == 1 and len(out_shape) == 1:  # one unit: a binary classifier, its labels 0 or 1
        for d in (train, val):
            if d is not None and d.y.ndim == 1 and d.y.size and not np.isin(d.y, (0, 1)).all():
                bad = [int(v) if float(v).is_integer() else float(v) for v in np.unique(d.y[~np.isin(d.y, (0, 1))])[:3]]
                raise DataError(f"{d.source}: label {', '.join(map(str, bad))} is out of range for the model's one-unit "
                                "output (a binary classifier, read at 0.5); labels must be 0 or 1")
    return train, val


def _needs_one_hot(loss: Any) -> bool:
    name = _loss_name(loss).lower().replace("_", "")
    return "categorical" in name and "sparse" not in name


def read_compile_config(path: str | Path) -> dict[str, Any] | None:
    """The compile settings saved in a ``.keras``/``.h5`` file (None when saved without ``compile()``).

    deploykit loads models with ``compile=False`` (no custom objects needed for
    inference); this reads what ``compile()`` had set without deserializing it.
    Returns ``{"optimizer": serialized, "loss": ..., "metrics": [...]}``.
    """
    import json
    import zipfile

    path = Path(path)
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as zf:
                config = json.loads(zf.read("config.json"))
            cfg = config.get("compile_config")
            return cfg or None
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as fh:
                raw = fh.attrs.get("training_config")
            if raw is None:
                return None
            tc = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            opt = tc.get("optimizer_config")
            if isinstance(opt, dict) and isinstance(opt.get("class_name"), str):
                opt = {**opt, "class_name": opt["class_name"].split(">")[-1]}
            return {"optimizer": opt, "loss": tc.get("loss"), "metrics": tc.get("metrics")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def _model_compile_config(model: Any, kind: str) -> dict[str, Any] | None:
    compiled = getattr(model, "compiled", None) if kind == "keras3" else getattr(model, "_is_compiled", False)
    if not compiled or getattr(model, "optimizer", None) is None:
        return None
    try:
        return model.get_compile_config()
    except Exception:  # noqa: BLE001 - an odd compile state: treat as not compiled
        return None


def _training_setup(kind: str, compile_config: dict | None, loss: Any, metrics: Any, optimizer: Any,
                    learning_rate: float | None) -> tuple[Any, Any, list, str]:
    """(loss, optimizer, metrics, where the settings came from)."""
    km = _keras_module(kind)
    source = "arguments"
    cfg_loss = (compile_config or {}).get("loss")
    from deploykit.optimize.heads import is_per_output, lone_loss

    cfg_loss = lone_loss(cfg_loss)
    if loss is None and cfg_loss is not None:
        if is_per_output(cfg_loss):
            raise UserError("the model was compiled with several losses and none is this output's; pass loss=... "
                            "(--loss) for it")
        loss = cfg_loss
        source = "model compile config"
    if loss is None:
        raise UserError("the model has no loss to fine-tune with (it was never compiled, or saved without compile()); "
                        "pass loss=... (--loss): sparse_categorical_crossentropy for class ids of a softmax, "
                        "binary_crossentropy for one sigmoid unit, mse for values")
    if isinstance(loss, dict):
        loss = _resolved("loss", km.losses.deserialize, loss)
    elif isinstance(loss, str):
        _resolved("loss", km.losses.get, loss)  # checked here: compile() would fail only inside fit()
    if metrics is None:
        cfg_metrics = (compile_config or {}).get("metrics") or []
        metrics = [m if isinstance(m, str) else _rebuilt_metric(km, m) for m in cfg_metrics
                   if isinstance(m, (str, dict))] if isinstance(cfg_metrics, list) else []
        metrics = [m for m in metrics if m is not None]
    metrics = list(metrics or [])
    for m in metrics:
        if isinstance(m, str) and m not in ("accuracy", "acc", "crossentropy", "ce"):  # names compile() maps itself
            _resolved("metric", km.metrics.get, m)
    if optimizer is None and compile_config and isinstance(compile_config.get("optimizer"), dict):
        opt_cfg = {**compile_config["optimizer"], "config": dict(compile_config["optimizer"].get("config", {}))}
        if learning_rate is not None:
            opt_cfg["config"]["learning_rate"] = float(learning_rate)
        try:
            optimizer = km.optimizers.deserialize(opt_cfg)
        except Exception:  # noqa: BLE001 - unknown optimizer class: fall back to Adam
            optimizer = None
    elif isinstance(optimizer, str):
        optimizer = _resolved("optimizer", km.optimizers.get, optimizer)
        if learning_rate is not None:
            optimizer.learning_rate = float(learning_rate)
    elif optimizer is not None:  # an optimizer object: use a fresh copy of it
        optimizer = optimizer.__class__.from_config(optimizer.get_config())
        if learning_rate is not None:
            optimizer.learning_rate = float(learning_rate)
    if optimizer is None:
        optimizer = km.optimizers.Adam(learning_rate=float(learning_rate) if learning_rate is not None else DEFAULT_LEARNING_RATE)
    return loss, optimizer, metrics, source


def _rebuilt_metric(km: Any, config: dict[str, Any]) -> Any:
    """A compiled metric saved as an object (SparseCategoricalAccuracy(name="sca"), a registered custom
    one), rebuilt; None when its class is not known here (the fine-tune's own accuracy is tracked anyway)."""
    if config.get("class_name") == "function" and isinstance(config.get("config"), str):
        try:  # keras.metrics.mean_absolute_percentage_error: compile() takes its name, if Keras knows it
            km.metrics.get(config["config"])
        except Exception:  # noqa: BLE001 - a custom function not registered here: fine-tuned without it
            return None
        return config["config"]
    try:
        return km.metrics.deserialize(config)
    except Exception:  # noqa: BLE001 - an unregistered custom metric: fine-tuned without it
        return None


def metric_name(metric: Any) -> str:
    """A metric's name as the report shows it: the string given, or the object's name."""
    return metric if isinstance(metric, str) else str(getattr(metric, "name", None) or type(metric).__name__)


_EXAMPLES = {"loss": "sparse_categorical_crossentropy", "metric": "accuracy", "optimizer": "adam"}


def _resolved(what: str, get: Any, value: Any) -> Any:
    """``get(value)`` from Keras, or a UserError naming the unknown ``what``."""
    try:
        got = get(value)
    except Exception:  # noqa: BLE001 - Keras raises ValueError/TypeError/KeyError by version
        got = None
    if got is None or isinstance(got, str):  # some getters hand an unknown name back instead of raising
        shown = value.get("class_name", value) if isinstance(value, dict) else value
        raise UserError(f"unknown {what} {shown!r}; pass a Keras {what} name, e.g. {_EXAMPLES[what]}")
    return got


@contextlib.contextmanager
def configs_with_names(model: Any) -> Iterator[None]:
    """While open, custom layer classes whose config lacks ``name`` report name, trainable and dtype too.

    tf_keras' automatic config of a custom layer whose ``__init__`` takes only ``**kw`` (any name
    but ``kwargs``) is ``{}``. tfmot clones the model from configs and its layout transform reads every layer
    config's ``name``: QAT failed with KeyError 'name', and a copy by config lost the layer's name
    (and with it the weights copied back by name: pruning silently restarted such a layer from
    its initializer). Patched on the class because tfmot clones again inside quantize_apply;
    restored on exit.
    """
    patched: dict[type, Any] = {}
    for layer in _flat_layers(model):
        cls = type(layer)
        if cls in patched or "name" in layer.get_config():
            continue
        original = cls.__dict__.get("get_config")

        def get_config(self, _base=cls.get_config):
            return {**_base(self), "name": self.name, "trainable": self.trainable, "dtype": self.dtype}

        patched[cls] = original
        cls.get_config = get_config
    try:
        yield
    finally:
        for cls, original in patched.items():
            if original is None:
                del cls.get_config
            else:
                cls.get_config = original


def _keras_module(kind: str) -> Any:
    if kind == "keras3":
        import keras

        return keras
    import tf_keras

    return tf_keras


def _lr_value(optimizer: Any) -> Any:
    lr = getattr(optimizer, "learning_rate", None)
    try:
        return float(np.asarray(lr))
    except (TypeError, ValueError):
        return str(type(lr).__name__)


def _predict(model: Any, xs: list[np.ndarray], output: int = 0) -> np.ndarray:
    """Output ``output`` (in ``model.outputs`` order) of ``model`` on ``xs``."""
    from deploykit.optimize.heads import predict_all

    return predict_all(model, xs)[output]


def _accuracy_of(pred: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the model's first output on labels (per sample or per position), read as verification reads it."""
    from deploykit.verify import label_accuracy

    acc = label_accuracy([pred], y)
    if acc is None:
        raise DataError(
            f"labels 'y' of shape {np.shape(y)} do not score the model's first output (shape {pred.shape}) "
            "(a class per sample, or per pixel/step); fine-tuning tracks accuracy on them, so pass class labels for it"
        )
    return acc


def _weights_summary(model: Any) -> dict[str, int]:
    arrays = [np.asarray(w, dtype=np.float32).reshape(-1) for w in model.get_weights()]
    blob = b"".join(a.tobytes() for a in arrays)
    return {
        "parameters": int(sum(a.size for a in arrays)),
        "zeros": int(sum(int(np.count_nonzero(a == 0)) for a in arrays)),
        "raw_bytes": len(blob),
        "gzip_bytes": len(gzip.compress(blob, compresslevel=6, mtime=0)),
    }


def _split(train, validation_data, validation_split: float, seed: int):
    from deploykit.data import Dataset

    if validation_data is not None:
        return train, validation_data
    n = len(train)
    if not 0.0 < validation_split < 1.0:
        raise UserError(f"validation_split must be in (0, 1), got {validation_split}; or pass validation_data")
    n_val = max(1, int(round(n * validation_split)))
    if n - n_val < 1:
        raise DataError(f"train data has {n} sample(s): too few to hold out validation data; pass more training samples (or, in Python, validation_data=...)")
    order = np.random.default_rng(seed).permutation(n)
    val_i, tr_i = order[:n_val], order[n_val:]
    return (Dataset([a[tr_i] for a in train.x], train.y[tr_i], train.source),
            Dataset([a[val_i] for a in train.x], train.y[val_i], f"{train.source} (held out {validation_split:.0%})"))


def _make_tracker(base: type, state: "_TrainState") -> Any:
    """A Keras callback (of the model's own Keras) that counts steps, logs epochs, stops early."""

    class _Tracker(base):  # type: ignore[misc, valid-type]
        def on_train_batch_end(self, batch, logs=None):
            state.step += 1

        def on_epoch_end(self, epoch, logs=None):
            state.end_epoch(epoch, logs or {})
            if state.stop:
                self.model.stop_training = True

    return _Tracker()


class _TrainState:
    """Per-epoch bookkeeping shared by both paths."""

    def __init__(self, model, sched, structure, epochs, val, patience, progress, snapshot, restore, current, score):
        self.model, self.sched, self.structure, self.epochs, self.score = model, sched, structure, epochs, score
        self.val, self.patience, self.progress = val, patience, progress
        self.snapshot, self.restore, self.current = snapshot, restore, current
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: tuple[tuple[float, float | None], int, Any] | None = None  # (measure, epoch, snapshot)
        self.wait = 0
        self.stop = False

    def at_target(self) -> bool:
        if self.structure == "2:4":
            return self.step >= 1
        return self.step >= self.sched.target_reached_step

    def end_epoch(self, epoch: int, logs: dict) -> None:
        measured = self.score.measure(self.model, self.val)
        acc = measured[0]
        at_target = self.at_target()
        entry = {"epoch": epoch + 1, "step": self.step, "loss": float(logs.get("loss", float("nan"))),
                 self.score.key: acc, "sparsity": self.current(), "at_target": at_target}
        entry.update({k: float(v) for k, v in logs.items() if k not in entry and np.ndim(v) == 0})
        self.history.append(entry)
        self.progress(f"prune epoch {epoch + 1}/{self.epochs}: loss {entry['loss']:.4f}, {self.score.line(acc)}, "
                      f"sparsity {entry['sparsity']:.2%}{'' if at_target else ' (ramping up)'}")
        if not at_target:
            return
        _keep_best(self, measured, epoch, self.snapshot)


# An epoch that ties the best validation accuracy counts as progress for patience only when it
# lowers the true class's mean -log p by this share or more: at 100 % validation accuracy (a small
# split saturates early) the fine-tune still learns and keeps its latest epoch, and must not stop
# there; a loss creeping down by a percent an epoch would never let it stop early at all.
TIE_BREAK_PROGRESS = 0.10
# ... and by at least this much: a model sure of every validation sample (-log p of 0, or shrinking
# geometrically towards it) is not learning anything that matters, and must stop like any other.
TIE_BREAK_MIN_GAIN = 1e-3


def _keep_best(state: Any, measured: tuple[float, float | None], epoch: int, snapshot: Callable[[], Any]) -> None:
    """Keep the epoch if it beats the best so far (ties in score: the lower tie-break); patience
    restarts on a better score, or on a tied one with a clearly lower tie-break (TIE_BREAK_PROGRESS)."""
    best = state.best
    if best is None or state.score.better(measured, best[0]):
        state.best = (measured, epoch + 1, snapshot())
    if state.history and measured[1] is not None:
        state.history[-1]["val_nll"] = measured[1]
    clearly_lower = (best is not None and measured[0] == best[0][0] and measured[1] is not None
                     and best[0][1] is not None and measured[1] <= (1.0 - TIE_BREAK_PROGRESS) * best[0][1]
                     and best[0][1] - measured[1] >= TIE_BREAK_MIN_GAIN)
    if best is None or state.score.better(measured[0], best[0][0]) or clearly_lower:
        state.wait = 0
    else:
        state.wait += 1
        if state.patience is not None and state.wait >= state.patience:
            state.stop = True


class _EpochState:
    """Per-epoch bookkeeping of a fine-tune at a fixed model shape (QAT, clustering): history,
    progress line, best epoch (weights), early stop."""

    def __init__(self, model, epochs, val, patience, progress, label, score):
        self.model, self.epochs, self.val, self.patience, self.score = model, epochs, val, patience, score
        self.progress, self.label = progress, label
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: tuple[tuple[float, float | None], int, Any] | None = None  # (measure, epoch, weights)
        self.wait = 0
        self.stop = False

    def end_epoch(self, epoch: int, logs: dict) -> None:
        measured = self.score.measure(self.model, self.val)
        acc = measured[0]
        entry = {"epoch": epoch + 1, "step": self.step, "loss": float(logs.get("loss", float("nan"))), self.score.key: acc}
        entry.update({k: float(v) for k, v in logs.items() if k not in entry and np.ndim(v) == 0})
        self.history.append(entry)
        self.progress(f"{self.label} epoch {epoch + 1}/{self.epochs}: loss {entry['loss']:.4f}, {self.score.line(acc)}")
        _keep_best(self, measured, epoch, self.model.get_weights)



# ----------------------------------------------------------------------------- Keras 3 path
class _Keras3Masks:
    """Masks of a Keras 3 model's kernels, applied by the optimizer through variable constraints."""

    def __init__(self, kernels: list[_Kernel], structure: str, block_size: tuple[int, int]):
        import keras

        self.kernels, self.structure, self.block_size = kernels, structure, block_size
        self.sparsity = 0.0
        for k in kernels:
            k.mask = np.ones(k.shape, dtype=np.float32)
            k.mask_var = keras.Variable(np.ones(k.shape, dtype=k.variable.dtype), trainable=False,
                                        dtype=k.variable.dtype, name=f"{k.layer.replace('/', '_')}_{k.weight}_prune_mask")
            k.saved_constraint = k.variable.constraint
            k.variable.constraint = _MaskConstraint(k.mask_var, k.saved_constraint)

    def update(self, sparsity: float) -> None:
        for k in self.kernels:
            w = np.asarray(k.variable.numpy())
            k.mask = _structure.make_mask(w, sparsity, self.structure, self.block_size,
                                          k.layer_class in _structure.TRANSPOSED_KERNELS).astype(np.float32)
            k.mask_var.assign(k.mask.astype(w.dtype))
            k.variable.assign(w * k.mask.astype(w.dtype))
        self.sparsity = 0.5 if self.structure == "2:4" else float(sparsity)

    def release(self) -> None:
        for k in self.kernels:
            k.variable.constraint = k.saved_constraint
            w = np.asarray(k.variable.numpy())
            k.variable.assign(w * k.mask.astype(w.dtype))


class _MaskConstraint:
    """``w -> inner(w) * mask``: runs inside the optimizer's update, so pruned weights stay exactly 0."""

    def __init__(self, mask_var: Any, inner: Any):
        self.mask_var, self.inner = mask_var, inner

    def __call__(self, w: Any) -> Any:
        from keras import ops

        if self.inner is not None:
            w = self.inner(w)
        return ops.multiply(w, self.mask_var)


def clone_keras3(model: Any) -> Any:
    """A copy of a Keras 3 model (same layers, names and weights): raises when it cannot be cloned.

    A functional model's inputs are rebuilt with their input layers' names: Keras' own clone names
    them after the input tensors, so an auto-named ``input_layer`` came back as ``keras_tensor``.
    """
    import keras

    input_tensors = None
    struct = getattr(model, "_inputs_struct", None)
    if not isinstance(model, keras.Sequential) and getattr(model, "inputs", None) and struct is not None:
        layers = [getattr(t, "_keras_history", [None])[0] for t in model.inputs]
        if all(isinstance(l, keras.layers.InputLayer) for l in layers):
            fresh = {id(t): keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=getattr(t, "sparse", False),
                                        name=l.name) for t, l in zip(model.inputs, layers)}
            # the model's own structure (one tensor, a list, a dict keyed by input name)
            input_tensors = keras.tree.map_structure(lambda t: fresh[id(t)], struct)
    # configs_with_names: a custom layer taking **kw has no 'name' in Keras 3's automatic config either;
    # the clone renamed it ('digit' came back as 'temp', and with it the model's output name)
    with configs_with_names(model):
        try:
            clone = keras.models.clone_model(model, input_tensors=input_tensors)
        except Exception:  # noqa: BLE001 - a structure the named inputs do not fit: Keras' own naming then
            if input_tensors is None:
                raise
            clone = keras.models.clone_model(model)
    copy_state(model, clone)
    return clone


def _clone_keras3(model: Any) -> tuple[Any, bool]:
    try:
        return clone_keras3(model), False
    except Exception:  # noqa: BLE001 - e.g. a subclassed model without get_config: prune it in place
        return model, True


def _fit_keras3(model, kernels, sched, structure, block_size, data, loss, optimizer, metrics, epochs, batch_size,
                patience, progress, seed, score, head=None):
    import keras

    masks = _Keras3Masks(kernels, structure, block_size)
    final = sched.final_sparsity

    class _MaskUpdates(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_batch_begin(self, batch, logs=None):
            self.step += 1
            if structure == "2:4":
                if self.step == 1:
                    masks.update(0.5)
                return
            should, sparsity = sched(self.step)
            if should:
                masks.update(sparsity)

    def snapshot():
        return [np.array(v.numpy()) for v in model.weights], [k.mask.copy() for k in kernels]

    def restore(snap):
        for v, value in zip(model.weights, snap[0]):
            v.assign(value)
        for k, m in zip(kernels, snap[1]):
            k.mask = m
            k.mask_var.assign(m.astype(k.variable.dtype))

    train, val = data
    state = _TrainState(model, sched, structure, epochs, val, patience, progress, snapshot, restore, lambda: masks.sparsity,
                        score)
    settings, y = _fit_targets(head, loss, train.y, model, metrics)
    model.compile(optimizer=optimizer, **settings)
    try:
        model.fit(model_call_arg(model, train.x), y, batch_size=batch_size, epochs=epochs, shuffle=True,
                  verbose=0, callbacks=[_MaskUpdates(), _make_tracker(keras.callbacks.Callback, state)])
        forced = False
        if state.best is not None:
            restore(state.best[2])
        else:  # the schedule never reached the target (cannot happen with make_schedule): apply it now
            masks.update(0.5 if structure == "2:4" else final)
            forced = True
    finally:
        masks.release()
    return state, forced


def _fit_targets(head: Any, loss: Any, y: np.ndarray, model: Any, metrics: list) -> tuple[dict[str, Any], Any]:
    """(``compile`` arguments, targets) for ``fit``: a multi-output model's (``head``: its
    :class:`~deploykit.optimize.heads.Heads` and the labelled output's view) trains the labelled
    output on ``y`` and the others on the dense model's outputs; its metrics are left out (the
    fine-tune's own score tracks the labelled output)."""
    if head is None:
        return {"loss": loss, "metrics": metrics}, _labels_for(loss, y, model)
    heads, view = head
    return ({"loss": heads.losses(loss), "loss_weights": heads.loss_weights(), "metrics": None},
            heads.targets(_labels_for(loss, y, view), heads.teacher))


def _labels_for(loss: Any, y: np.ndarray, model: Any) -> np.ndarray:
    """``y`` as the loss takes it: one-hot rows for categorical losses, and for a regression loss
    (mse on softmax) given class indices of a multi-column output."""
    one_hot = _needs_one_hot(loss) or (is_regression_loss(loss, None) and np.asarray(y).ndim == 1
                                        and np.issubdtype(np.asarray(y).dtype, np.integer)
                                        and int(model.outputs[0].shape[-1] or 1) > 1)
    if not one_hot:
        return y
    classes = int(model.outputs[0].shape[-1])
    return np.eye(classes, dtype=np.float32)[y]


# ----------------------------------------------------------------------------- tf_keras path
def _fit_tf_keras(model, kernels, sched, structure, block_size, data, loss, optimizer, metrics, epochs, batch_size,
                  patience, progress, seed, score, head=None):
    """Wrap, train and strip with tfmot; return (stripped model, state, forced)."""
    import tf_keras

    from deploykit.optimize._tfmot import import_tfmot

    tfmot = import_tfmot()
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    prune_layers = {k.layer for k in kernels}
    params: dict[str, Any] = {"pruning_schedule": sched.to_tfmot(tfmot)}
    if structure == "2:4":
        params["sparsity_m_by_n"] = _structure.M_BY_N
    elif structure == "block":
        params["block_size"] = tuple(block_size)
        params["block_pooling_type"] = "AVG"

    def clone_fn(layer):
        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer, clone_function=clone_fn)
        fresh = layer.__class__.from_config(layer.get_config())
        if layer.name in prune_layers:
            return tfmot.sparsity.keras.prune_low_magnitude(fresh, **params)
        return fresh

    with configs_with_names(model):
        wrapped = tf_keras.models.clone_model(model, clone_function=clone_fn)
    by_name = {}
    for layer in _flat_layers(wrapped):
        inner = getattr(layer, "layer", layer) if isinstance(layer, PruneLowMagnitude) else layer
        by_name[inner.name] = inner
    for layer in _flat_layers(model):
        if layer.weights and layer.name in by_name:
            by_name[layer.name].set_weights(layer.get_weights())
    wrappers = [l for l in _flat_layers(wrapped) if isinstance(l, PruneLowMagnitude)]

    def current() -> float:
        if structure == "2:4":
            return 0.5 if state.step >= 1 else 0.0
        last = 0.0
        # the sparsity of the last mask update so far (replaying the schedule is cheap: ints)
        s = state.sched
        first = max(1, s.begin_step)
        for step in range(first, state.step + 1):
            should, value = s(step)
            if should:
                last = value
        return last

    def snapshot():
        return wrapped.get_weights()

    def restore(snap):
        wrapped.set_weights(snap)

    train, val = data
    state = _TrainState(wrapped, sched, structure, epochs, val, patience, progress, snapshot, restore, current, score)
    settings, y = _fit_targets(head, loss, train.y, model, metrics)
    wrapped.compile(optimizer=optimizer, **settings)
    wrapped.fit(model_call_arg(wrapped, train.x), y, batch_size=batch_size, epochs=epochs, shuffle=True,
                verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), _make_tracker(tf_keras.callbacks.Callback, state)])
    forced = False
    if state.best is not None:
        restore(state.best[2])
    for w in wrappers:
        w.pruning_obj.weight_mask_op()  # weights = weights * mask, eagerly
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    if state.best is None:  # never reached the target: apply the final masks ourselves
        final_kernels, _ = _plan(stripped, "tf_keras", structure, block_size)
        for k in final_kernels:
            if k.layer in prune_layers:
                w = np.asarray(k.variable.numpy())
                k.variable.assign(w * _structure.make_mask(w, sched.final_sparsity, structure, block_size))
        forced = True
    pruned = _fresh_variables(stripped)
    # compiled as the Keras 3 path's model is: deploykit.cluster(prune(m, ...).model, ...) and evaluate()
    # refused a tf_keras model that came back without a loss
    fresh = {k: _fresh_metrics(v) if "metrics" in k else v for k, v in settings.items()}
    pruned.compile(optimizer=type(optimizer).from_config(optimizer.get_config()), **fresh)
    return pruned, state, forced


def _fresh_metrics(metrics: Any) -> Any:
    """Copies of metric objects: the fine-tune's own carried their running totals into the returned model's
    first evaluate() (0.6702 for an accuracy of 0.68)."""
    if isinstance(metrics, dict):
        return {k: _fresh_metrics(v) for k, v in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return [_fresh_metrics(m) for m in metrics]
    if hasattr(metrics, "get_config") and hasattr(type(metrics), "from_config"):
        try:
            return type(metrics).from_config(metrics.get_config())
        except Exception:  # noqa: BLE001 - a metric that cannot be rebuilt from its config: reset instead
            if hasattr(metrics, "reset_state"):
                metrics.reset_state()
    return metrics


def _refuse_subclassed_tf_keras(model: Any) -> None:
    """tfmot wraps a tf_keras model's layers by rebuilding it with clone_model, which a subclassed model (its
    layers built in Python code, not a graph of layers) cannot go through: Keras's own ValueError about
    clone_function surfaced instead of a message."""
    for layer in getattr(model, "layers", []):
        if not hasattr(layer, "_is_graph_network"):  # a layer, not a model
            continue
        if not layer._is_graph_network and type(layer).__name__ != "Sequential":
            raise UserError(f"tf_keras model {layer.name!r} ({type(layer).__name__}) is subclassed: tfmot prunes a model by "
                            "rebuilding it layer by layer, which a subclassed model cannot be; build it with the functional "
                            "API or Sequential, or prune it as a Keras 3 model")
        _refuse_subclassed_tf_keras(layer)


def _fresh_variables(model: Any) -> Any:
    """The stripped model rebuilt with variables named after its layers.

    strip_pruning hands back the wrappers' variables, named ``prune_low_magnitude_c1/kernel:0``:
    name-based weight loading and checkpoints would not find ``c1/kernel``. A clone of the same
    layers (configs) with the weights copied over has the model's own names; a model that cannot
    be cloned keeps the wrapper names.
    """
    import tf_keras

    try:
        clone = tf_keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001 - custom layers without a usable config: the names stay tfmot's
        return model
    # A custom layer whose config drops its name comes back renamed: keep the model as it is then.
    return clone if [l.name for l in clone.layers] == [l.name for l in model.layers] else model
def _layer_report(model: Any, kind: str, kernels: list[_Kernel], target: float, structure: str,
                  names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    layers = dict(_named_layers(model, kind))
    out: dict[str, dict[str, Any]] = {}
    for k, shown in zip(kernels, names or [k.layer for k in kernels]):
        layer = layers[k.layer]
        var = getattr(layer, k.weight, None)
        if var is None:  # get_prunable_weights() kernels: find by name
            var = next(v for v in layer.weights if (getattr(v, "path", None) or v.name).split("/")[-1].split(":")[0] == k.weight)
        w = np.asarray(var.numpy())
        zeros = int(np.count_nonzero(w == 0))
        entry = out.setdefault(shown, {"name": shown, "class": k.layer_class, "structure": structure,
                                        "target_sparsity": target, "kernels": []})
        entry["kernels"].append({"weight": k.weight, "shape": list(w.shape), "size": int(w.size), "zeros": zeros,
                                 "achieved_sparsity": zeros / w.size if w.size else 0.0})
    for entry in out.values():
        size = sum(k["size"] for k in entry["kernels"])
        entry["achieved_sparsity"] = sum(k["zeros"] for k in entry["kernels"]) / size if size else 0.0
    return list(out.values())


# ----------------------------------------------------------------------------- API
def check_settings(
    *,
    sparsity: float | None = None,
    schedule: str = "polynomial",
    structure: str = "unstructured",
    block_size: Sequence[int] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 32,
    patience: int | None = 2,
    learning_rate: float | None = None,
    loss: Any = None,
    seed: int = 0,
    validation_split: float = 0.1,
) -> tuple[float, tuple[int, int]]:
    """Validate pruning settings without a model (the CLI and Pipeline call it before any work).

    ``block_size`` (default ``(1, 4)``) belongs to ``structure="block"``: given with another
    structure it would be ignored without a word, so it is refused.

    Returns:
        ``(sparsity, block_size)``: the sparsity to reach (0.5 for 2:4) and the parsed block size.

    Raises:
        UserError: the first bad setting, naming the valid choices.
    """
    if block_size is not None and structure != "block" and structure in _structure.STRUCTURES:
        raise UserError(f"block_size only applies to structure='block' (blocks of a Dense kernel), not {structure!r}; "
                        "pass structure='block' or leave block_size out")
    bs = _structure.check_structure(structure, DEFAULT_BLOCK if block_size is None else block_size)
    if schedule not in _schedule.SCHEDULES:
        raise UserError(f"unknown pruning schedule {schedule!r}; choose one of: {', '.join(_schedule.SCHEDULES)}")
    real = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool)
    if structure == "2:4":
        if sparsity is not None and not (real and math.isclose(float(sparsity), 0.5)):
            raise UserError(f"2:4 structure prunes exactly 50% of each kernel; sparsity {sparsity} conflicts, leave it unset or 0.5")
        sparsity, real = 0.5, True
    if sparsity is None:
        raise UserError("pass sparsity=... (--prune), the fraction of weights to zero, e.g. 0.8")
    if not real or not 0.0 < float(sparsity) < 1.0:
        raise UserError(f"sparsity must be a fraction in (0, 1), got {sparsity!r}; e.g. 0.8 zeroes 80% of the weights")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0):
        raise UserError(f"patience must be a non-negative integer or None, got {patience!r}")
    check_fit_settings(learning_rate=learning_rate, loss=loss, seed=seed, validation_split=validation_split)
    return float(sparsity), bs


def check_fit_settings(*, learning_rate: Any = None, loss: Any = None, seed: Any = 0, validation_split: Any = 0.1) -> None:
    """The fine-tuning settings pruning and QAT share, checked before any work.

    Raises:
        UserError: the first bad setting (``inf`` learning rates diverged to NaN and the message
            blamed the data; a seed of ``"abc"`` or a loss of ``5`` failed inside numpy or Keras).
    """
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real)
                                      or not 0 < float(learning_rate) < math.inf):
        raise UserError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if loss is not None and not (isinstance(loss, (str, dict)) or callable(loss)):
        raise UserError(f"loss must be a Keras loss name (e.g. sparse_categorical_crossentropy), config or function, got {loss!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise UserError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) or not 0 < validation_split < 1:
        raise UserError(f"validation_split must be in (0, 1), got {validation_split!r}")


@logs_muted
@keeps_global_rng
def prune(
    model: Any,
    train_data: Any,
    *,
    sparsity: float | None = None,
    schedule: str = "polynomial",
    structure: str = "unstructured",
    block_size: Sequence[int] | None = None,
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
    output: int | str | None = None,
) -> PruneResult:
    """Prune a Keras 3 or tf_keras model by magnitude while fine-tuning it.

    Classifiers are scored by validation accuracy; a model whose loss is a regression loss
    (mse, mae, huber...) by its validation loss, and its ``y`` are the target values.

    A model with several outputs trains the output ``y`` belongs to on ``y`` and every other
    output on the dense model's own outputs (:mod:`deploykit.optimize.heads`); the report's
    ``outputs`` says how far each of those moved.

    Args:
        model: In-memory Keras 3 or tf_keras model. Functional and Sequential models are not
            modified (a pruned copy is returned); a subclassed Keras 3 model that cannot be cloned
            is pruned in place (``report["in_place"]`` is True, and a warning says so): save its
            weights first (``model.get_weights()``) if you need the dense ones.
        train_data: :class:`deploykit.data.Dataset` with labels (target values for a
            regression model), or anything :func:`deploykit.data.load_data` accepts
            (``.npz`` path, ``(x, y)``...).
        sparsity: Fraction of each prunable kernel's weights to zero, in (0, 1).
            Required for ``unstructured`` and ``block``; ``2:4`` is always 0.5.
        schedule: ``polynomial`` (tfmot PolynomialDecay from 0, power 3) or ``constant``.
        structure: ``unstructured``, ``2:4`` (2 zeros in every 4 input-channel weights)
            or ``block`` (blocks of ``block_size`` in rank-2 kernels).
        block_size: Block (rows, cols) of the kernel for ``block`` (default ``(1, 4)``); refused
            with any other structure.
        epochs: Fine-tuning epochs; the sparsity ramps up over the first two thirds.
        batch_size: Training batch size.
        validation_data: Labelled data for accuracy and early stopping; default:
            ``validation_split`` of ``train_data`` held out.
        validation_split: Fraction held out when ``validation_data`` is None.
        patience: Epochs at the final sparsity without a better validation accuracy
            (lower validation loss, for regression) before stopping; None never stops early.
        loss, metrics: Used when the model carries no compile settings.
        optimizer: Optimizer (name or object; a fresh copy is used). Default: the
            compiled optimizer's class and learning rate, else Adam.
        learning_rate: Overrides the optimizer's learning rate (default 1e-3 for Adam).
        compile_config: Compile settings of the saved model (:func:`read_compile_config`);
            default: the in-memory model's own, when it is compiled.
        progress: Called with one line per epoch.
        seed: Seeds the split, the shuffling and Keras (the caller's NumPy and Python random states are
            put back afterwards; TensorFlow's global seed stays set).
        output: A multi-output model's output ``y`` trains (index or name); default: the one the
            labels score as verification scores them, else the one float output of ``y``'s size.

    Returns:
        :class:`PruneResult` with ``.model`` (same Keras as the input, no wrappers, same
        layer names, preprocessing and outputs) and ``.report`` (JSON-able dict).

    Raises:
        UserError: sparsity outside (0, 1), unknown schedule or structure, no layer
            can be pruned, no loss known. Raised before any training.
        DataError: train or validation data without labels, or too few samples.

    Example:
        >>> from deploykit.optimize.prune import prune
        >>> result = prune(model, (x_train, y_train), sparsity=0.8, epochs=4)
        >>> result.report["totals"]["gzip_bytes_after"]
    """
    progress = progress or (lambda msg: None)
    kind = _framework(model)
    compiled = model
    model = with_inputs(model, kind, f"<in-memory {type(model).__name__}>")  # a built subclassed model: wrapped
    check_finite_weights(model, f"<in-memory {type(model).__name__}>")
    if kind == "tf_keras":
        _refuse_subclassed_tf_keras(model)
    sparsity, bs = check_settings(sparsity=sparsity, schedule=schedule, structure=structure, block_size=block_size,
                                  epochs=epochs, batch_size=batch_size, patience=patience, learning_rate=learning_rate,
                                  loss=loss, seed=seed, validation_split=validation_split)
    cfg = compile_config if compile_config is not None else _model_compile_config(compiled, kind)
    from deploykit.optimize import heads as _heads

    # view: the model as its labelled output alone (its data and loss are checked on it)
    head, view, cfg = _heads.prepare(model, kind, train_data, output, cfg)
    train, val, regression = fine_tune_data(train_data, validation_data, view, is_regression_loss(loss, cfg), "pruning")
    train, val = _split(train, val, validation_split, seed)
    dense_val = _heads.teach(head, model, train, val)  # what the unlabelled outputs keep to

    kernels, skipped = _plan(model, kind, structure, bs)
    if not kernels:
        raise UserError(f"no layer of this model can be pruned ({structure}): {skipped_reasons(skipped)}")
    loss_fn, opt, metric_list, settings_source = _training_setup(kind, cfg, loss, metrics, optimizer, learning_rate)
    if not regression:
        check_loss_fits(loss_fn, view, train)
    score = _Score(loss_fn if regression else None, kind, from_logits(loss_fn), head[0].index if head else 0)

    steps_per_epoch = math.ceil(len(train) / batch_size)
    sched = _schedule.make_schedule(schedule, sparsity, steps_per_epoch, epochs)
    km = _keras_module(kind)
    km.utils.set_random_seed(seed)

    score_before = score(model, val)
    before = _weights_summary(model)
    args = (sched, structure, bs, (train, val), loss_fn, opt, metric_list, epochs, batch_size, patience, progress, seed,
            score, head)
    in_place = False
    if kind == "keras3":
        work, in_place = _clone_keras3(model)
        if in_place:
            import warnings

            warnings.warn(f"{type(compiled).__name__} cannot be cloned (a subclassed model): it is pruned in place, "
                          "and its dense weights are overwritten", UserWarning, stacklevel=2)
        work_kernels, _ = _plan(work, kind, structure, bs)
        if [k.shape for k in work_kernels] != [k.shape for k in kernels]:
            raise UserError("the model's clone does not have the model's prunable kernels (a subclassed layer rebuilt "
                            "from its config differs); prune a functional model")
        state, forced = _fit_keras3(work, work_kernels, *args)
        pruned = work
        path_taken = KERAS3_PATH
    else:
        pruned, state, forced = _fit_tf_keras(model, kernels, *args)
        path_taken = TFMOT_PATH
    after = _weights_summary(pruned)
    score_after = score(pruned, val)
    # The clone's layers, reported under the model's names (a subclassed layer rebuilt in the clone
    # names its sublayers anew: conv2d -> conv2d_1)
    layers = _layer_report(pruned, kind, work_kernels if kind == "keras3" else kernels, sparsity, structure,
                           names=[k.layer for k in kernels])

    # Block pruning keeps or zeroes whole blocks: where the block does not tile the kernel, the partial
    # edge blocks move the share of zeros away from the target (either way), and the report must say so.
    def why_off(shape: Sequence[int]) -> str:
        if structure != "block":
            return ""
        if len(shape) == 2 and shape[0] % bs[0] == 0 and shape[1] % bs[1] == 0:  # tiled, but few blocks
            blocks = (shape[0] // bs[0]) * (shape[1] // bs[1])
            return (f" (block {bs[0]}x{bs[1]} tiles it in {blocks} blocks: whole blocks cannot come closer; "
                    "smaller blocks can)")
        return f" (block {bs[0]}x{bs[1]} does not tile it; a block whose sides divide the kernel's reaches the target)"

    off_target = [
        f"`{layer['name']}` {k['weight']} {tuple(k['shape'])} reached {k['achieved_sparsity']:.0%} against the "
        f"{sparsity:.0%} target{why_off(k['shape'])}"
        for layer in layers for k in layer["kernels"] if abs(k["achieved_sparsity"] - sparsity) > OFF_TARGET_POINTS / 100
    ]
    report = {
        "path": path_taken,
        "framework": kind,
        "in_place": in_place,
        "off_target": off_target,
        "settings": {
            "sparsity": sparsity, "schedule": sched.to_dict(), "structure": structure,
            "block_size": list(bs) if structure == "block" else None, "epochs": epochs, "batch_size": batch_size,
            "patience": patience, "learning_rate": _lr_value(opt), "optimizer": type(opt).__name__,
            "loss": _loss_name(loss_fn), "metrics": [metric_name(m) for m in metric_list],
            "training_settings_from": settings_source, "seed": seed, "steps_per_epoch": steps_per_epoch,
            "train_samples": len(train), "validation_samples": len(val), "validation_source": val.source,
        },
        "layers": layers,
        "skipped": skipped,
        "totals": {
            "parameters": after["parameters"],
            "pruned_parameters": int(sum(k["size"] for l in layers for k in l["kernels"])),
            "zeros_before": before["zeros"], "zeros_after": after["zeros"],
            "raw_bytes_before": before["raw_bytes"], "raw_bytes_after": after["raw_bytes"],
            "gzip_bytes_before": before["gzip_bytes"], "gzip_bytes_after": after["gzip_bytes"],
        },
        "score": score.key,
        "accuracy_before": None if regression else score_before,
        "accuracy_after": None if regression else score_after,
        **({"val_loss_before": score_before, "val_loss_after": score_after} if regression else {}),
        "epochs_run": len(state.history),
        "best_epoch": state.best[1] if state.best else None,
        "final_masks_forced": forced,
        "history": state.history,
    }
    if head is not None:
        report["outputs"] = _heads.outputs_report(head, dense_val, pruned, val)
        report["settings"]["metrics"] = []
    return PruneResult(pruned, report)
