"""Weight clustering (weight sharing) for Keras 3 and tf_keras models, keeping pruned zeros zero.

Every clusterable kernel (the kernels pruning prunes: Dense, Conv*, the pointwise
kernel of SeparableConv*, Embedding tables) gets ``clusters`` shared values: a
1-D k-means over the kernel's non-zero weights picks the centroids, each weight
is replaced by its nearest centroid, and a short fine-tune trains the centroids
while every weight stays assigned to its cluster. Exact zeros, a pruned model's
in particular, are a cluster of their own pinned at 0 (what tfmot calls
sparsity-preserving clustering), so clustering after pruning keeps every zero.

Why it matters: a converter stores each weight at full width whatever its value,
but a kernel with 16 distinct values is far more compressible. After int8
quantization (per-channel scales) each channel holds at most ``clusters`` + 1
byte values, and gzip, which costs at least one bit per byte and about eight
per random int8 value, codes each in about four. On the digits example
pruned to 80 %, 16 clusters take the gzipped tflite-int8 file from 0.120 to
0.096 of the dense fp32 file (benchmarks/digits_pruning.py). Accuracy is
measured, not assumed: the report has it before and after, and the pipeline
verifies every artifact against the clustered model.

**One implementation for both Keras.** tfmot's ``cluster_weights`` wraps tf_keras
layers only (no Keras 3), and wrapping trips over preprocessing layers the way
``prune_low_magnitude`` does. Here the centroids are trained through the
kernel variable's ``constraint``, which both Keras' optimizers apply right
after every update inside the compiled train step: the constraint replaces each
weight by the mean of its cluster's freshly updated weights. With plain SGD
that is the centroid moved by the mean of its members' gradients (tfmot sums
them: a larger step on the same direction); zeros are written back as 0. The
caller's model is never touched (a clone is clustered), layer names,
preprocessing and outputs stay as they are, and there are no wrappers to strip.

Fine-tuning follows pruning's conventions (:mod:`deploykit.optimize.prune`):
compiled loss and metrics or ``loss``/``metrics``, a fresh optimizer, a
held-out validation split, one progress line per epoch, early stopping with the
best epoch restored, where the clustered model before any fine-tuning is epoch 0
(a fine-tune that only hurts is not kept).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from deploykit._quiet import logs_muted
from deploykit.errors import UserError
from deploykit.models import check_finite_weights, model_call_arg, with_inputs
from deploykit.optimize import heads as _heads
from deploykit.optimize import prune as _ft  # fine-tuning helpers shared with pruning and QAT
from deploykit.random_state import keeps_global_rng

KERAS3_PATH = "keras3-shared-centroids"
TF_KERAS_PATH = "tf_keras-shared-centroids"
# The centroids start where k-means puts them; a few epochs adapt the rest of the model to them.
DEFAULT_EPOCHS = 3
DEFAULT_CLUSTERS = 16
MAX_CLUSTERS = 256  # an int8 file holds at most 256 values per channel: more clusters change nothing there
_KMEANS_ITERATIONS = 50
_KMEANS_SAMPLE = 1_000_000

ProgressFn = Callable[[str], None]


@dataclass
class ClusterResult:
    """The clustered model (same kind as the input, no wrappers) and a JSON-able report."""

    model: Any
    report: dict[str, Any] = field(default_factory=dict)


def check_settings(*, clusters: Any = DEFAULT_CLUSTERS, epochs: Any = DEFAULT_EPOCHS, batch_size: Any = 32,
                   patience: Any = 2, learning_rate: Any = None, loss: Any = None, seed: Any = 0,
                   validation_split: Any = 0.1) -> int:
    """Validate clustering settings without a model (the CLI and Pipeline call it before any work).

    Returns:
        The number of clusters.

    Raises:
        UserError: the first bad setting.
    """
    if isinstance(clusters, bool) or not isinstance(clusters, numbers.Integral) or not 2 <= clusters <= MAX_CLUSTERS:
        raise UserError(f"clusters must be a whole number from 2 to {MAX_CLUSTERS} (shared values per kernel), "
                        f"got {clusters!r}; e.g. 16")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0 + (name == "batch_size"):
            raise UserError(f"{name} must be a {'positive' if name == 'batch_size' else 'non-negative'} integer, "
                            f"got {value!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0):
        raise UserError(f"patience must be a non-negative integer or None, got {patience!r}")
    _ft.check_fit_settings(learning_rate=learning_rate, loss=loss, seed=seed, validation_split=validation_split)
    return int(clusters)


# ----------------------------------------------------------------------------- k-means
def centroids_1d(values: np.ndarray, clusters: int) -> np.ndarray:
    """Sorted centroids of a 1-D k-means (Lloyd) over ``values``, started at their quantiles.

    Quantile starts put more centroids where the weights are dense, as tfmot's density-based
    initialization does, and make the result deterministic (no random restarts). Never more
    centroids than distinct values.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    distinct = np.unique(v)
    if distinct.size <= clusters:
        return distinct
    if v.size > _KMEANS_SAMPLE:  # evenly spaced order statistics keep the distribution; 50 passes stay cheap
        v = v[np.linspace(0, v.size - 1, _KMEANS_SAMPLE).astype(np.int64)]
    c = np.unique(np.quantile(v, (np.arange(clusters) + 0.5) / clusters))
    for _ in range(_KMEANS_ITERATIONS):
        edges = (c[1:] + c[:-1]) / 2
        idx = np.searchsorted(edges, v)
        sums = np.bincount(idx, weights=v, minlength=c.size)
        counts = np.bincount(idx, minlength=c.size)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c, rtol=0, atol=1e-12):
            break
        c = np.unique(new)
    return c


def assign(weights: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster index of each weight (int32, same shape): 0 for exact zeros, 1 + nearest centroid otherwise."""
    w = np.asarray(weights)
    edges = (centroids[1:] + centroids[:-1]) / 2
    idx = np.searchsorted(edges, w.astype(np.float64)).astype(np.int32) + 1
    idx[w == 0] = 0
    return idx


class _SharedValues:
    """Constraint ``w -> inner(w)``, then every weight set to the mean of its cluster (zeros: 0).

    Runs inside the optimizer's update: between steps the kernel always holds exactly its
    ``n`` shared values. ``unsorted_segment_mean`` keeps an emptied cluster at 0, and cluster 0
    (the zeros) is overwritten with 0 whatever the gradients did.
    """

    def __init__(self, assignment: np.ndarray, n: int, inner: Any):
        import tensorflow as tf

        self.index = tf.constant(assignment.reshape(-1), dtype=tf.int32)
        self.n, self.inner = n + 1, inner
        self.keep = tf.constant(np.r_[0.0, np.ones(n)], dtype=tf.float32)

    def __call__(self, w: Any) -> Any:
        import tensorflow as tf

        if self.inner is not None:
            w = self.inner(w)
        flat = tf.reshape(w, [-1])
        means = tf.math.unsorted_segment_mean(flat, self.index, self.n) * tf.cast(self.keep, flat.dtype)
        return tf.reshape(tf.gather(means, self.index), tf.shape(w))


def _trained_variable(variable: Any) -> Any:
    """The variable the optimizer updates: under tf_keras mixed precision a kernel is an
    AutoCastVariable, and the optimizer reads the constraint of the float32 variable inside it."""
    return getattr(variable, "_variable", variable) if type(variable).__name__ == "AutoCastVariable" else variable


def _set_constraint(variable: Any, constraint: Any) -> None:
    # Keras 3 variables take a constraint; a tf.Variable (tf_keras) only has the read-only
    # property, backed by _constraint, which tf_keras' optimizers read after every update.
    variable = _trained_variable(variable)
    try:
        variable.constraint = constraint
    except AttributeError:
        variable._constraint = constraint  # noqa: SLF001


def _get_constraint(variable: Any) -> Any:
    return getattr(_trained_variable(variable), "constraint", None)


def _snap(variable: Any, index: np.ndarray, n: int) -> None:
    """Every weight set to its cluster's mean (zeros: 0), in NumPy: what the constraint does after
    each step, applied once more so the kept weights hold at most ``n`` values whatever the
    optimizer did with the constraint."""
    w = np.asarray(variable.numpy())
    flat = w.reshape(-1).astype(np.float64)
    idx = index.reshape(-1)
    sums = np.bincount(idx, weights=flat, minlength=n + 1)
    counts = np.bincount(idx, minlength=n + 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    means[0] = 0.0
    variable.assign(means[idx].reshape(w.shape).astype(w.dtype))


def _plan(model: Any, kind: str) -> tuple[list[Any], list[dict[str, str]]]:
    kernels, skipped = _ft._plan(model, kind, "unstructured", (1, 1))
    for s in skipped:  # pruning's reasons, said of clustering
        s["reason"] = (s["reason"].replace("not pruned", "not clustered").replace("are not pruned", "are not clustered")
                       .replace("stay dense", "keep their own values").replace("is pruned", "is clustered")
                       .replace("to prune it", "to cluster it"))
    return kernels, skipped


def _kernel_stats(kernels: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for k in kernels:
        w = np.asarray(k.variable.numpy())
        out.append({"size": int(w.size), "zeros": int(np.count_nonzero(w == 0)),
                    "distinct_nonzero": int(np.unique(w[w != 0]).size)})
    return out


# ----------------------------------------------------------------------------- API
@logs_muted
@keeps_global_rng
def cluster(
    model: Any,
    train_data: Any,
    *,
    clusters: int = DEFAULT_CLUSTERS,
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
) -> ClusterResult:
    """Share ``clusters`` values per kernel (zeros kept) and fine-tune the shared values.

    Args:
        model: In-memory Keras 3 or tf_keras model (not modified: a clustered copy is returned).
        train_data: :class:`deploykit.data.Dataset` with labels (target values for a regression
            model), or anything :func:`deploykit.data.load_data` accepts (``.npz`` path, ``(x, y)``...).
        clusters: Shared non-zero values per kernel, 2..256 (16 is a common choice; 8 is smaller
            and less accurate). A kernel with fewer distinct values keeps them.
        epochs: Fine-tuning epochs (0: cluster only). The best epoch by validation score is kept,
            the clustered model before fine-tuning included.
        batch_size, validation_data, validation_split, patience, loss, metrics, optimizer,
            learning_rate, compile_config, seed, output: As for :func:`deploykit.optimize.prune.prune`
            (a model with several outputs: ``y`` trains one, the others keep to the model's own values).
        progress: Called with one line per epoch.

    Returns:
        :class:`ClusterResult` with ``.model`` (same Keras, same layer names, preprocessing and
        outputs) and ``.report``: per kernel the distinct non-zero values and zeros before and
        after, layers left as they were (with the reason), accuracy before and after.

    Raises:
        UserError: bad settings, no clusterable layer, no loss known, a model that cannot be
            cloned. Raised before any training.
        DataError: train or validation data without labels, or too few samples.

    Example:
        >>> from deploykit.optimize.cluster import cluster
        >>> pruned = prune(model, (x, y), sparsity=0.8).model
        >>> small = cluster(pruned, (x, y), clusters=16).model   # zeros stay zero
    """
    progress = progress or (lambda msg: None)
    kind = _ft._framework(model, "cluster")
    compiled = model
    model = with_inputs(model, kind, f"<in-memory {type(model).__name__}>")
    check_finite_weights(model, f"<in-memory {type(model).__name__}>")
    clusters = check_settings(clusters=clusters, epochs=epochs, batch_size=batch_size, patience=patience,
                              learning_rate=learning_rate, loss=loss, seed=seed, validation_split=validation_split)
    cfg = compile_config if compile_config is not None else _ft._model_compile_config(compiled, kind)
    head, view, cfg = _heads.prepare(model, kind, train_data, output, cfg, "cluster")  # several outputs: see prune()
    train, val, regression = _ft.fine_tune_data(train_data, validation_data, view,
                                                _ft.is_regression_loss(loss, cfg), "clustering")
    train, val = _ft._split(train, val, validation_split, seed)
    dense_val = _heads.teach(head, model, train, val)
    kernels, skipped = _plan(model, kind)
    if not kernels:
        raise UserError(f"no layer of this model can be clustered: {_ft.skipped_reasons(skipped)}")
    loss_fn, opt, metric_list, settings_source = _ft._training_setup(kind, cfg, loss, metrics, optimizer, learning_rate)
    if not regression:
        _ft.check_loss_fits(loss_fn, view, train)
    score = _ft._Score(loss_fn if regression else None, kind, _ft.from_logits(loss_fn), head[0].index if head else 0)
    km = _ft._keras_module(kind)
    km.utils.set_random_seed(seed)

    work = _clone(model, kind)
    work_kernels, _ = _plan(work, kind)
    if [k.shape for k in work_kernels] != [k.shape for k in kernels]:
        raise UserError("the model's clone does not have the model's kernels (a subclassed layer rebuilt from its "
                        "config differs); cluster a functional model")
    score_before = score(model, val)
    before = _kernel_stats(work_kernels)

    saved, assignments = [], []
    for k in work_kernels:
        w = np.asarray(k.variable.numpy())
        nonzero = w[w != 0]
        c = centroids_1d(nonzero, clusters) if nonzero.size else np.zeros(0)
        idx = assign(w, c) if c.size else np.zeros(w.shape, np.int32)
        values = np.r_[0.0, c].astype(w.dtype)
        k.variable.assign(values[idx])
        saved.append(_get_constraint(k.variable))
        assignments.append((idx, max(int(c.size), 1)))
        _set_constraint(k.variable, _SharedValues(idx, max(int(c.size), 1), saved[-1]))
    measured_clustered = score.measure(work, val)
    score_clustered = measured_clustered[0]

    state = _ft._EpochState(work, epochs, val, patience, progress, "cluster", score)
    state.best = (measured_clustered, 0, work.get_weights())
    try:
        if epochs:
            fit_settings, y = _ft._fit_targets(head, loss_fn, train.y, model, metric_list)
            work.compile(optimizer=opt, **fit_settings)
            work.fit(model_call_arg(work, train.x), y, batch_size=batch_size, epochs=epochs, shuffle=True,
                     verbose=0, callbacks=[_ft._make_tracker(km.callbacks.Callback, state)])
        work.set_weights(state.best[2])
    finally:
        for k, c in zip(work_kernels, saved):
            _set_constraint(k.variable, c)
    for k, (idx, n) in zip(work_kernels, assignments):
        _snap(k.variable, idx, n)
    if kind == "tf_keras":
        work.optimizer = None  # the fine-tune's optimizer state is not part of the model
    after = _kernel_stats(work_kernels)
    over = [f"{k.layer}/{k.weight} holds {a['distinct_nonzero']}" for k, a in zip(kernels, after)
            if a["distinct_nonzero"] > clusters]
    if over:  # cannot happen after _snap; said loudly rather than reported as clustered
        raise RuntimeError(f"clustering left more than {clusters} values in {', '.join(over)}")
    score_after = score(work, val)

    layers = [{"name": k.layer, "class": k.layer_class, "weight": k.weight, "shape": list(k.shape),
               "size": b["size"], "zeros_before": b["zeros"], "zeros_after": a["zeros"],
               "distinct_nonzero_before": b["distinct_nonzero"], "distinct_nonzero_after": a["distinct_nonzero"]}
              for k, b, a in zip(kernels, before, after)]
    report = {
        "path": KERAS3_PATH if kind == "keras3" else TF_KERAS_PATH,
        "framework": kind,
        "clusters": clusters,
        "settings": {
            "clusters": clusters, "epochs": epochs, "batch_size": batch_size, "patience": patience,
            "learning_rate": _ft._lr_value(opt), "optimizer": type(opt).__name__, "loss": _ft._loss_name(loss_fn),
            "metrics": [_ft.metric_name(m) for m in metric_list], "training_settings_from": settings_source, "seed": seed,
            "steps_per_epoch": math.ceil(len(train) / batch_size), "train_samples": len(train),
            "validation_samples": len(val), "validation_source": val.source,
        },
        "layers": layers,
        "skipped": skipped,
        "zeros_kept": all(l["zeros_after"] >= l["zeros_before"] for l in layers),
        "score": score.key,
        "accuracy_before": None if regression else score_before,
        "accuracy_clustered": None if regression else score_clustered,
        "accuracy_after": None if regression else score_after,
        **({"val_loss_before": score_before, "val_loss_clustered": score_clustered, "val_loss_after": score_after}
           if regression else {}),
        "epochs_run": len(state.history),
        "best_epoch": state.best[1],
        "history": state.history,
    }
    if head is not None:
        report["outputs"] = _heads.outputs_report(head, dense_val, work, val)
    return ClusterResult(work, report)


def _clone(model: Any, kind: str) -> Any:
    """A copy with the same layers and weights (the caller's model is not clustered)."""
    km = _ft._keras_module(kind)
    try:
        if kind == "keras3":
            return _ft.clone_keras3(model)
        with _ft.configs_with_names(model):
            clone = km.models.clone_model(model)
    except Exception as exc:  # noqa: BLE001 - a subclassed model without a usable config
        raise UserError(f"this model cannot be copied for clustering ({type(exc).__name__}: {str(exc)[:160]}); "
                        "cluster a functional or Sequential model") from None
    clone.set_weights(model.get_weights())
    return clone
