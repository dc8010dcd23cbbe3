"""Fine-tuning a model with several outputs on labels for one of them.

A deploykit data file carries one ``y``: the labels (or target values) of one output. A
multi-output model fine-tuned on it (pruning, clustering, QAT) trains that output on ``y`` and
every other output on the model's own outputs before the fine-tune, for the same inputs
(self-distillation), each with a loss that fits it: soft targets for a head compiled with a
crossentropy (its softmax or sigmoid taken when the loss reads logits), the head's own loss for a
regression head, mean squared error when the model carries no loss for it (those two weighted by
the spread of the head's values, see :meth:`Heads.loss_weights`). A class-id output (an argmax in
the model) has no gradient and is left to follow the output it comes from. Without that, the
unlabelled heads would drift with the shared layers they sit on, and nothing would say so; the
report gives how far each one moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from deploykit.errors import UserError

# The weight of a regression output's distillation loss per unit of its spread (1/variance for mse). At 1
# the brightness head of the digits two-head model (benchmarks/digits_two_heads.py, 80 %) kept to 0.44 of its
# spread but the classifier lost 4.3 points (99.29 -> 95.00 %); at 0.1: 0.51 of its spread, 97.14 %.
SPREAD_WEIGHT = 0.1
DISTILL_CHECK_SAMPLES = 256  # samples the labels are matched to an output on (a prediction of the dense model)


def output_keys(model: Any) -> list[str]:
    """Names of the model's outputs in ``model.outputs`` order: the dict keys of a model built with a
    dict of outputs (what ``compile``/``fit`` key on), else the output names."""
    struct = getattr(model, "_outputs_struct", None)
    if struct is None:
        struct = getattr(model, "_nested_outputs", None)
    if isinstance(struct, dict):
        return sorted(struct)  # flattened outputs follow the sorted keys
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == len(model.outputs) else [f"output_{i + 1}" for i in range(len(model.outputs))]


def is_dict_model(model: Any) -> bool:
    struct = getattr(model, "_outputs_struct", None)
    if struct is None:
        struct = getattr(model, "_nested_outputs", None)
    return isinstance(struct, dict)


def predict_all(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Every output of ``model`` on ``xs``, in ``model.outputs`` order."""
    from deploykit.models import model_call_arg

    out = model.predict(model_call_arg(model, xs), batch_size=256, verbose=0)
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def output_aliases(model: Any) -> list[set[str]]:
    """The names each output answers to, in ``model.outputs`` order: its dict key, its layer's name and
    the name the artifacts give it (``output_0``, ``output_1``... as Keras 3 exports them)."""
    keys = output_keys(model)
    names = list(getattr(model, "output_names", None) or [])
    return [{keys[i], f"output_{i}", *([names[i]] if i < len(names) else []), *_producer_name(t)}
            for i, t in enumerate(model.outputs)]


def _producer_name(tensor: Any) -> list[str]:
    """The name of the layer that gives ``tensor``: a Keras 3 Sequential has no output_names, and
    output='probs' (its last layer) was refused though the CLI's --label-output took it."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    name = getattr(layer, "name", None)
    return [name] if isinstance(name, str) and name else []


# What each fine-tune does to a model, and the option that asks for it (for the way out of a refusal).
FINE_TUNES = {"prune": ("prune", "--prune (prune=...)"), "cluster": ("cluster", "--cluster (cluster=...)"),
              "qat": ("quantization-aware train", "--qat (qat=...)")}


def id_outputs(model: Any) -> list[int]:
    """Indices of the outputs that give class ids (integers: an argmax inside the model)."""
    return [j for j, o in enumerate(getattr(model, "outputs", None) or []) if "int" in str(getattr(o, "dtype", ""))]


def check_fine_tunable(model: Any, index: int | None, step: str) -> None:
    """Refuse a fine-tune (``step``: prune, cluster, qat) whose labelled output gives class ids.

    An argmax has no gradient: with every output class ids, Keras's fit failed on the losses the
    refusal of an uncompiled model suggested (sparse_categorical_crossentropy: "Argument `output`
    must have rank (ndim) `target.ndim - 1`", a traceback). ``index``: the labelled output, None
    while the train data has not said which (only a model of class-id outputs alone is refused then).

    Raises:
        UserError: naming the way out (the model before its argmax, or no fine-tune), no loss.
    """
    ids = id_outputs(model)
    verb, option = FINE_TUNES[step]
    if ids and len(ids) == len(model.outputs):
        raise UserError(f"the model outputs class ids (an argmax inside it): nothing to fine-tune through; {verb} the "
                        f"model before its argmax (its probabilities/logits output) and add the argmax back after, "
                        f"or drop {option}")
    if index is not None and index in ids:
        keys = output_keys(model)
        raise UserError(f"output {keys[index]!r} holds class ids (an argmax inside the model), which training cannot "
                        "move; fine-tune on an output with probabilities or logits (--label-output / output=), "
                        f"or drop {option}")


# Target values an output predicts worse than their own mean (R^2 below this) are not its targets.
MIN_TARGET_FIT = 0.0


def named_output(model: Any, output: int | str | None) -> int | None:
    """Index of the output ``output`` names (index, Keras name or alias); None for None.

    Raises:
        UserError: ``output`` is no output of the model.
    """
    if output is None:
        return None
    keys = output_keys(model)
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool) and 0 <= int(output) < len(keys):
        return int(output)
    aliases = output_aliases(model)
    if isinstance(output, str) and any(output in a for a in aliases):
        return next(i for i, a in enumerate(aliases) if output in a)
    raise UserError(f"output {output!r} is not an output of this model; its outputs: {', '.join(keys)}")


def labelled_output(model: Any, output: int | str | None, xs: list[np.ndarray], y: np.ndarray | None) -> int:
    """Index of the output ``y`` trains: ``output`` (index or name) when given, else the one the labels
    score as verification scores them (of several, the one the model agrees with most), else the one
    float output with ``y``'s values per sample. Refused when ``y`` does not belong to it: class labels
    for independent sigmoid tags, or target values the model's output predicts worse than their mean
    (digit labels given for a brightness head)."""
    keys = output_keys(model)
    index = named_output(model, output)
    if y is None:
        return 0 if index is None else index  # no labels at all: the fine-tune's own check says so
    from deploykit.verify import scored_output

    n = min(len(y), DISTILL_CHECK_SAMPLES)
    preds = predict_all(model, [a[:n] for a in xs])
    y = np.asarray(y)[:n]
    if index is None:
        index = scored_output(preds, y)
    if index is None:
        per_sample = int(y.size // max(len(y), 1))
        fits = [j for j, p in enumerate(preds) if np.issubdtype(p.dtype, np.floating) and p[0].size == per_sample]
        if len(fits) != 1:
            why = "fit several of" if fits else "fit none of"
            raise UserError(f"the train data's 'y' (shape {np.shape(y)}) {why} the model's outputs ({', '.join(keys)}); "
                            "name the output they train with --label-output (Python: output=...)")
        index = fits[0]
    _check_belongs(keys[index], preds[index], y)
    return index


def _check_belongs(name: str, pred: np.ndarray, y: np.ndarray) -> None:
    """Refuse ``y`` for an output it cannot train (see :func:`labelled_output`)."""
    from deploykit.verify import is_multi_label, label_accuracy, scored_output

    if scored_output([pred], y) == 0:  # class labels this output gives classes for: does the model agree?
        classes = max(int(np.shape(pred)[-1]) if np.ndim(pred) > 1 else 1, 2)
        acc = label_accuracy([pred], y)
        if acc is not None and acc < min(0.5, 2.0 / classes):
            raise UserError(f"output {name!r} of the model gives the train data's labels for only {acc:.0%} of the samples "
                            f"(chance: {1 / classes:.0%}): they do not look like its labels; name the output they "
                            "belong to with --label-output (Python: output=...)")
        return
    pred = np.asarray(pred, np.float64)
    if is_multi_label(pred) and np.ndim(y) == 1:
        raise UserError(f"output {name!r} gives independent sigmoid tags ({pred.shape[1]}); one class label per sample "
                        "does not train it (its labels are a 0/1 row per sample); name another output with "
                        "--label-output (Python: output=...)")
    target = np.asarray(y, np.float64).reshape(len(y), -1)
    if target.shape[1] != pred.reshape(len(pred), -1).shape[1]:
        raise UserError(f"the train data's 'y' (shape {np.shape(y)}) do not fit output {name!r} (shape "
                        f"{tuple(pred.shape)}); pass {'class labels' if pred.ndim == 2 and pred.shape[1] > 1 else 'target values'} "
                        "for it, or name the output they belong to with --label-output (Python: output=...)")
    spread = float(np.var(target))
    fit = 1.0 - float(np.mean((pred.reshape(target.shape) - target) ** 2)) / spread if spread > 0 else 1.0
    if fit < MIN_TARGET_FIT:
        raise UserError(f"output {name!r} of the model predicts the train data's 'y' worse than their mean (R^2 {fit:.2f}): "
                        "they are not its targets; name the output they belong to with --label-output (Python: output=...)")


def is_per_output(loss: Any) -> bool:
    """A compiled loss given per output: a list, or a dict keyed by output (not a serialized loss)."""
    return isinstance(loss, (list, tuple)) or (isinstance(loss, dict) and "class_name" not in loss)


def lone_loss(loss: Any) -> Any:
    """The entry of a per-output loss with one entry (``{"price": "huber"}``, ``["mse"]``): a single
    output's loss; any other loss as it is."""
    if is_per_output(loss) and len(loss) == 1:
        return next(iter(loss.values())) if isinstance(loss, dict) else loss[0]
    return loss


def compiled_loss_of(loss: Any, index: int, keys: Sequence[str]) -> Any:
    """The entry of a per-output compiled loss (list or dict) for output ``index``; a single loss
    (a name or a serialized loss) applies to every output."""
    if not is_per_output(loss):
        return loss
    return (loss[index] if index < len(loss) else None) if isinstance(loss, (list, tuple)) else loss.get(keys[index])


@dataclass
class Heads:
    """How a multi-output model is fitted: ``index`` trains on ``y``, the rest on ``teacher`` targets."""

    index: int
    keys: list[str]
    dict_outputs: bool
    distill: list[Any] = field(default_factory=list)  # per output: (loss, target transform, loss name, error kind); None at index
    teacher: list[np.ndarray] | None = None

    @classmethod
    def plan(cls, model: Any, kind: str, index: int, compiled_loss: Any) -> "Heads":
        keys = output_keys(model)
        ids = id_outputs(model)
        if index in ids:  # prepare() refused it already; kept for callers that plan on their own
            raise UserError(f"output {keys[index]!r} holds class ids (an argmax inside the model), which training cannot "
                            "move; fine-tune on an output with probabilities or logits (--label-output / output=)")
        heads = cls(index, keys, is_dict_model(model))
        heads.distill = [None if j == index else _ID_OUTPUT if j in ids else
                         _distill_loss(kind, compiled_loss_of(compiled_loss, j, keys)) for j in range(len(keys))]
        return heads

    def structured(self, per_output: list[Any]) -> Any:
        """A per-output list in the structure ``compile``/``fit`` take for this model."""
        return {k: v for k, v in zip(self.keys, per_output)} if self.dict_outputs else list(per_output)

    def losses(self, labelled_loss: Any) -> Any:
        return self.structured([labelled_loss if j == self.index else d[0] if d is not _ID_OUTPUT else "mse"
                                for j, d in enumerate(self.distill)])

    def loss_weights(self) -> Any:
        """1 for the labelled output and those held by a crossentropy; an output held by a squared or
        absolute error is weighted by ``SPREAD_WEIGHT`` over the spread of the dense model's values of
        it (variance, std): the loss is then a share of that spread, whatever the output's units.
        Unweighted, an output with values near 0.8 +- 0.1 costs ~0.01 when it has lost everything
        it knew, and the labelled output's loss swamps it (measured: a brightness head of a pruned
        digits model moved by twice its spread)."""
        weights = []
        for j, d in enumerate(self.distill):
            w = 0.0 if d is _ID_OUTPUT else 1.0  # class ids have no gradient: nothing to train
            if d is not None and d is not _ID_OUTPUT and self.teacher is not None and d[3] is not None:
                t = np.asarray(self.teacher[j], np.float64)
                spread = float(np.var(t)) if d[3] == "squared" else float(np.std(t))
                w = SPREAD_WEIGHT / spread if spread > 1e-12 else 1.0
            weights.append(w)
        return self.structured(weights)

    def targets(self, y: np.ndarray, teacher: list[np.ndarray]) -> Any:
        """Fit targets: ``y`` for the labelled output, the (transformed) dense outputs for the others."""
        return self.structured([y if j == self.index else d[1](teacher[j]) for j, d in enumerate(self.distill)])

    def drift(self, dense: list[np.ndarray], tuned: list[np.ndarray]) -> list[dict[str, Any]]:
        """Per unlabelled output: how far the fine-tuned model moved from the dense one (validation data)."""
        rows = []
        for j, d in enumerate(self.distill):
            if d is None:
                continue
            a, b = np.asarray(dense[j], np.float64), np.asarray(tuned[j], np.float64)
            if d is _ID_OUTPUT:  # follows the output it is the argmax of: the share of ids kept says how well
                rows.append({"output": self.keys[j], "loss": d[2], "ids_kept": float(np.mean(a == b)) if a.size else 1.0})
                continue
            row: dict[str, Any] = {"output": self.keys[j], "loss": d[2],
                                   "mean_abs_change": float(np.mean(np.abs(a - b))) if a.size else 0.0,
                                   "dense_std": float(np.std(a)) if a.size else 0.0}
            if a.ndim == 2 and a.shape[1] > 1 and d[2].startswith("binary_crossentropy"):  # independent tags
                cut = 0.5 if a.min() >= 0 and a.max() <= 1 else 0.0  # probabilities, or logits
                row["tag_agreement"] = float(np.mean((a > cut) == (b > cut)))
            elif a.ndim == 2 and a.shape[1] > 1:
                row["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
            rows.append(row)
        return rows


# An integer output (class ids from an argmax inside the model): no loss trains it (weight 0; Keras needs
# an entry per output), and its drift is the share of ids that stayed the same.
_ID_OUTPUT = (None, lambda t: t, "none (class ids: follow the output they come from)", None)


def _distill_loss(kind: str, compiled: Any) -> tuple[Any, Any, str, str | None]:
    """(loss, target transform, name, error kind for :meth:`Heads.loss_weights`) that trains an output towards the dense model's outputs."""
    from deploykit.optimize.prune import _keras_module, _loss_name, from_logits, is_regression_loss

    km = _keras_module(kind)
    name = _loss_name(compiled).lower().replace("_", "") if compiled is not None else ""
    logits = from_logits(compiled) if compiled is not None else False
    ident = lambda t: t  # noqa: E731
    if "crossentropy" in name and "binary" in name:
        return (km.losses.BinaryCrossentropy(from_logits=logits), _sigmoid if logits else ident,
                "binary_crossentropy (soft targets)", None)
    if "crossentropy" in name:
        return (km.losses.CategoricalCrossentropy(from_logits=logits), _softmax if logits else ident,
                "categorical_crossentropy (soft targets)", None)
    if compiled is not None and is_regression_loss(compiled, None):
        loss = km.losses.get(compiled) if isinstance(compiled, str) else km.losses.deserialize(compiled) \
            if isinstance(compiled, dict) else compiled
        return loss, ident, _loss_name(compiled), _error_kind(name)
    return km.losses.MeanSquaredError(), ident, "mean_squared_error", "squared"


def _error_kind(name: str) -> str | None:
    """How a regression loss grows with the error: ``squared`` (mse), ``absolute`` (mae, huber,
    logcosh: linear in large errors), None (relative or other losses: left unweighted)."""
    if name in ("mse", "meansquarederror"):
        return "squared"
    if name in ("mae", "meanabsoluteerror", "huber", "huberloss", "logcosh"):
        return "absolute"
    return None


def _softmax(t: np.ndarray) -> np.ndarray:
    e = np.exp(t - t.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(t, np.float64)))).astype(np.float32)


def output_view(model: Any, kind: str, index: int) -> Any:
    """The model as output ``index`` alone (same layers and weights): what the labels are checked against."""
    from deploykit.optimize.prune import _keras_module

    try:
        return _keras_module(kind).Model(model.inputs, model.outputs[index])
    except Exception as exc:  # noqa: BLE001 - a model whose outputs cannot be taken apart
        raise UserError(f"cannot fine-tune this model's output {index + 1} on its own ({type(exc).__name__}: {exc}); "
                        "fine-tune a functional model") from None


def head_config(compile_config: dict[str, Any] | None, index: int, keys: Sequence[str]) -> dict[str, Any] | None:
    """The compile config as the labelled output's alone: its loss and, when given per output, its metrics."""
    if not compile_config:
        return compile_config
    cfg = dict(compile_config)
    cfg["loss"] = compiled_loss_of(cfg.get("loss"), index, keys)
    metrics = cfg.get("metrics")
    if isinstance(metrics, dict):
        cfg["metrics"] = metrics.get(keys[index])
    elif isinstance(metrics, (list, tuple)) and metrics and all(isinstance(m, (list, tuple)) or m is None for m in metrics):
        cfg["metrics"] = metrics[index] if index < len(metrics) else None
    return cfg


def prepare(model: Any, kind: str, train_data: Any, output: int | str | None,
            compile_config: dict[str, Any] | None, step: str = "prune") -> tuple[Any, Any, dict[str, Any] | None]:
    """(head, view, compile config) for a fine-tune (``step``: prune, cluster, qat): ``(None, model,
    compile_config)`` for a single-output model; for several outputs the :class:`Heads` with the labelled
    output's view (what the labels and the loss are checked on) and the compile config as that output's
    alone. A labelled output of class ids is refused first (:func:`check_fine_tunable`), before any loss is asked for."""
    check_fine_tunable(model, None, step)
    if len(getattr(model, "outputs", None) or [None]) == 1:
        named_output(model, output)  # a name that is no output was taken without a word for one output
        return None, model, compile_config
    from deploykit.optimize.prune import _to_dataset

    raw = _to_dataset(train_data, model, "train data", targets=True)
    index = labelled_output(model, output, raw.x, raw.y)
    check_fine_tunable(model, index, step)
    heads = Heads.plan(model, kind, index, (compile_config or {}).get("loss"))
    view = output_view(model, kind, index)
    return (heads, view), view, head_config(compile_config, index, heads.keys)


def teach(head: Any, model: Any, train: Any, val: Any) -> list[np.ndarray] | None:
    """Set the dense model's outputs on the training split as the targets of the unlabelled outputs;
    returns its outputs on the validation split (what :func:`outputs_report` measures against)."""
    if head is None:
        return None
    head[0].teacher = predict_all(model, train.x)
    return predict_all(model, val.x)


def outputs_report(head: Any, dense_val: list[np.ndarray] | None, tuned: Any, val: Any) -> dict[str, Any]:
    """The report's ``outputs``: the labelled output and how far each other one moved (validation split)."""
    heads = head[0]
    return {"labelled": heads.keys[heads.index], "distilled": heads.drift(dense_val, predict_all(tuned, val.x))}
