"""Numerical parity and metric gate, shared by every format.

An artifact is run through its runner on the same raw inputs as the reference
model and compared output by output. Every failing check is collected first
and reported together, so one run tells the whole story.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_BATCH_CHECK = 8
NOISE_SAMPLES = 8  # samples the reference's float32 noise is estimated on: one reference batch per draw
NOISE_DRAWS = 2  # independent one-ulp perturbations; the larger change counts


def _is_classification(ref: np.ndarray) -> bool:
    """Scores or probabilities per class: float, rank 2, more than one column (integer columns are ids)."""
    ref = np.asarray(ref)
    return ref.ndim == 2 and ref.shape[1] > 1 and np.issubdtype(ref.dtype, np.floating)


def classifier_outputs(shapes_dtypes: Sequence[tuple[tuple, str]]) -> list[int]:
    """Indices of the outputs that can be a classifier over their columns: float (N, C>1) outputs,
    except one paired with an integer output of the same shape (``top_k``'s values beside its indices)."""
    ints = {tuple(sh) for sh, dt in shapes_dtypes if "int" in str(dt)}
    return [i for i, (sh, dt) in enumerate(shapes_dtypes)
            if len(sh) == 2 and sh[1] and sh[1] > 1 and "float" in str(dt) and tuple(sh) not in ints]


def label_classes(shapes_dtypes: Sequence[tuple[tuple, str]], labels: np.ndarray | None,
                  only: int | None = None) -> int | None:
    """How many classes the output that labels would score has, from the model's declared output
    shapes (None: unknown, or no such output): what the labels' range is checked against.
    ``only``: the output the user named."""
    if labels is None:
        return None
    if only is not None:
        return label_classes([shapes_dtypes[only]], labels)
    if np.ndim(labels) > 1:  # a class per position: a float (N, *S, C) output
        for sh, dt in shapes_dtypes:
            if "float" in str(dt) and _same_positions(sh[1:-1], labels) and sh[-1] and sh[-1] > 1:
                return int(sh[-1])
        return None
    classifiers = classifier_outputs(shapes_dtypes)
    if not classifiers:
        return None
    # the first wide enough for the labels (scored_output's candidates); else the widest, whose range is refused
    top = int(np.max(labels)) if np.size(labels) and np.isfinite(np.asarray(labels, np.float64)).all() else 0
    wide = [i for i in classifiers if int(shapes_dtypes[i][0][1]) > top]
    return int(shapes_dtypes[wide[0] if wide else max(classifiers, key=lambda i: shapes_dtypes[i][0][1])][0][1])


def labels_fit(shapes_dtypes: Sequence[tuple[tuple, str]], labels: np.ndarray | None, only: int | None = None) -> bool:
    """False when labels with a class per position (N, *S) match no output's shape: a float
    (N, *S, C) output, or an integer class map (N, *S) (declared None dimensions match any size).
    Labels with one class per sample always fit (an unscored output is said in the notes)."""
    if labels is None or np.ndim(labels) < 2:
        return True
    shapes_dtypes = shapes_dtypes if only is None else [shapes_dtypes[only]]
    return any(_same_positions(sh[1:-1] if "float" in str(dt) else sh[1:], labels) for sh, dt in shapes_dtypes)


def _same_positions(dims: Sequence[Any], labels: np.ndarray) -> bool:
    """Declared output dimensions (None: any size) that hold the positions of (N, *S) labels."""
    want = tuple(np.shape(labels)[1:])
    return len(dims) == len(want) and all(d is None or d == w for d, w in zip(dims, want))


def scored_output(outputs: Sequence[np.ndarray], labels: np.ndarray | None, only: int | None = None) -> int | None:
    """Index of the output that labels score, or None.

    ``only``: the output the user named (``label_output``): it is scored when the labels fit it.

    Labels with one class per sample, shape (N,), score a multi-class output
    (rank 2, more than one column, as many as the labels need: top-1 of its
    probabilities or logits; not independent sigmoid tags), an integer
    class-index output (an argmax inside the model), or a one-column output with
    values in 0..1 when every label is 0 or 1 (a sigmoid binary classifier,
    thresholded at 0.5). Of several that fit, the one the model's own outputs
    agree with most: parity labels belong to a 2-class head, not to the 10-class
    digit head before it (which they fit too, and which scored 18 % on them);
    ties go to the first, in that order of kinds.
    Labels with a class per position, shape (N, *S) (pixels of a segmentation,
    steps of a tagger), score the first output that gives one there: float
    (N, *S, C>1), an integer class map (N, *S), or a 0..1 (N, *S, 1) with 0/1
    labels. Regression outputs are not scored.
    """
    if labels is None:
        return None
    if only is not None:
        return only if scored_output([outputs[only]], labels) == 0 else None
    labels = np.asarray(labels)
    arrays = [np.asarray(o) for o in outputs]
    binary_labels = len(labels) > 0 and bool(np.isin(labels, (0, 1)).all())
    if labels.ndim > 1:
        for i, out in enumerate(arrays):
            if out.shape[:-1] == labels.shape and np.issubdtype(out.dtype, np.floating) and (
                    out.shape[-1] > 1 or (binary_labels and out.size and 0 <= out.min() and out.max() <= 1)):
                return i
            if out.shape == labels.shape and np.issubdtype(out.dtype, np.integer):
                return i
        return None
    top = int(labels.max()) if labels.size and np.issubdtype(labels.dtype, np.number) and np.isfinite(labels).all() else 0
    fitting = [i for i in classifier_outputs([(a.shape, a.dtype.name) for a in arrays])
               if arrays[i].shape[1] > top and not is_multi_label(arrays[i])]
    fitting += [i for i, out in enumerate(arrays) if is_class_index(out)]  # the model's own argmax
    fitting += [i for i, out in enumerate(arrays) if binary_labels and out.ndim in (1, 2) and out.size == len(out)
                and out.size and 0 <= out.min() and out.max() <= 1]
    if len(fitting) <= 1:
        return fitting[0] if fitting else None
    with np.errstate(all="ignore"):
        agree = [float(np.mean(predicted_classes(arrays[i], labels.shape) == labels)) if len(arrays[i]) == len(labels)
                 else -1.0 for i in fitting]
    return fitting[int(np.argmax(agree))]  # the first of equals


def unused_labels(shape: tuple, names: Sequence[str], label_output: int | None = None) -> str:
    """Why labels of ``shape`` score no output (:func:`scored_output` found none)."""
    if label_output is not None:
        return (f"labels of shape {shape} were not used: output {names[label_output]!r} (the label output asked for) "
                "gives no class where they do")
    return (f"labels of shape {shape} were not used: no output gives a class where they do (one class per sample: "
            "(N, classes), an integer argmax (N,) (a float one: cast it to int32 inside the model), or (N, 1) in 0..1 with 0/1 labels; per pixel or step: (N, ..., classes) "
            "or an integer class map of the labels' shape)")


def label_accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray | None, only: int | None = None) -> float | None:
    """Share of labels (per sample, or per position) that the scored output's classes match, or None
    when no output is scored (see :func:`scored_output`)."""
    i = scored_output(outputs, labels, only)
    if i is None:
        return None
    return float(np.mean(predicted_classes(outputs[i], np.shape(labels)) == labels))


def target_output(outputs: Sequence[np.ndarray], targets: np.ndarray | None, only: int | None = None) -> int | None:
    """Index of the output that regression target values score: the first float output with as many
    values per sample as the targets ((N,) targets score an (N, 1) output too), or None.
    ``only``: the output the user named."""
    if targets is None:
        return None
    if only is not None:
        return only if target_output([outputs[only]], targets) == 0 else None
    per = int(np.prod(np.shape(targets)[1:], dtype=np.int64))
    for i, out in enumerate(outputs):
        if (np.issubdtype(np.asarray(out).dtype, np.floating) and len(out) == len(targets)
                and int(np.prod(np.shape(out)[1:], dtype=np.int64)) == per):
            return i
    return None


def target_errors(out: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(mean absolute error, root mean squared error) of an output against target values, in float64."""
    d = (np.asarray(out, np.float64).reshape(len(targets), -1)
         - np.asarray(targets, np.float64).reshape(len(targets), -1))
    return float(np.mean(np.abs(d))), float(np.sqrt(np.mean(d * d)))


# An artifact whose error against the targets rises more than this over the reference's gets a note
# (parity decides pass or fail: a reference that fits its targets exactly has no error to compare to).
NOTABLE_ERROR_INCREASE = 0.2


def _score_targets(result: dict[str, Any], reference: Sequence[np.ndarray], got: dict[str, np.ndarray],
                   names: list[str], targets: np.ndarray, only: int | None = None) -> None:
    """Regression targets: the reference's and the artifact's MAE/RMSE against them, in ``result``."""
    i = target_output(reference, targets, only)
    if i is None:
        result.setdefault("notes", []).append(
            f"target values of shape {np.shape(targets)} were not used: no float output has "
            f"{int(np.prod(np.shape(targets)[1:], dtype=np.int64))} value(s) per sample")
        return
    name = names[i]
    ref_mae, ref_rmse = target_errors(reference[i], targets)
    mae, rmse = target_errors(np.asarray(got[name]).reshape(np.shape(reference[i])), targets)
    increase = (mae - ref_mae) / ref_mae if ref_mae > 0 else None
    result.update({"scored_output": name, "reference_mae": ref_mae, "mae": mae, "reference_rmse": ref_rmse,
                   "rmse": rmse, "mae_increase": increase})
    # said only when true: parity is checked before this (a failed artifact's notes said it too)
    parity = "" if result.get("failures") else "; parity with the reference passed"
    pooled = increase is not None and increase > NOTABLE_ERROR_INCREASE
    if pooled:
        result.setdefault("notes", []).append(
            f"output {name!r}: mean absolute error against the targets {mae:.4g} is {increase:.0%} above the "
            f"reference's {ref_mae:.4g} (RMSE {rmse:.4g} vs {ref_rmse:.4g}){parity}")
    # A few columns in their own units (a rate, a score, a price): the pooled error (the mean over every
    # value) is dominated by the column in the largest units, and a small column 18x worse moved it by 2 %.
    # Said beside a pooled rise too when it is far beyond it (a rating 66x worse beside a pooled +278 %).
    worst = _worst_column_errors(reference[i], np.asarray(got[name]).reshape(np.shape(reference[i])), targets)
    if worst is not None:
        result["worst_column_mae"] = worst
        if worst["increase"] > NOTABLE_ERROR_INCREASE and (not pooled or worst["increase"] > 2 * increase):
            result.setdefault("notes", []).append(
                f"output {name!r}, column {worst['column']}: mean absolute error against the targets {worst['mae']:.4g} "
                + (f"is {worst['increase']:.0%} above the reference's {worst['reference_mae']:.4g}"
                   if np.isfinite(worst["increase"]) else "where the reference's is 0") + parity)


def _worst_column_errors(ref: np.ndarray, got: np.ndarray, targets: np.ndarray) -> dict[str, Any] | None:
    """For targets of 2 to 8 columns: the column whose MAE against them rose most over the reference's."""
    t = np.asarray(targets, np.float64).reshape(len(targets), -1)
    if not 2 <= t.shape[1] <= MAX_OWN_RANGE_COLUMNS:
        return None
    ref_mae = np.mean(np.abs(np.asarray(ref, np.float64).reshape(t.shape) - t), axis=0)
    mae = np.mean(np.abs(np.asarray(got, np.float64).reshape(t.shape) - t), axis=0)
    # a column the reference fits exactly has no error to rise from: infinitely worse once the artifact has one
    rise = np.where(ref_mae > 0, (mae - ref_mae) / np.where(ref_mae > 0, ref_mae, 1.0), np.where(mae > 0, np.inf, 0.0))
    j = int(np.argmax(rise))
    return {"column": j, "reference_mae": float(ref_mae[j]), "mae": float(mae[j]), "increase": float(rise[j])}


def is_class_index(out: np.ndarray) -> bool:
    """One integer per sample, shape (N,) or (N, 1): class ids the model computed itself (argmax inside)."""
    out = np.asarray(out)
    return bool(np.issubdtype(out.dtype, np.integer) and out.ndim in (1, 2) and len(out) and out.size == len(out))


def predicted_classes(out: np.ndarray, labels_shape: tuple | None = None) -> np.ndarray:
    """Top-1 class per sample (or per position, for labels of shape (N, *S)): argmax of a
    multi-class output over its last axis, the ids of a class-index output or class map,
    ``> 0.5`` of a one-column binary one."""
    out = np.asarray(out)
    if labels_shape is not None and len(labels_shape) > 1:
        if np.issubdtype(out.dtype, np.integer):
            return out.reshape(labels_shape)
        if out.shape[-1] > 1:
            return np.argmax(out, -1)
        return (out.reshape(labels_shape) > 0.5).astype(np.int64)
    if _is_classification(out):
        return np.argmax(out, 1)
    if is_class_index(out):
        return out.reshape(len(out))
    return (out.reshape(len(out)) > 0.5).astype(np.int64)


def is_probabilities(ref: np.ndarray) -> bool:
    """Class probabilities: rank 2, more than one class, every row non-negative and summing to 1."""
    ref = np.asarray(ref)
    if not (_is_classification(ref) and ref.size and np.isfinite(ref).all()):
        return False
    return bool(ref.min() >= 0 and np.allclose(ref.sum(axis=1), 1.0, atol=1e-3))


def mean_probability_shift(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples of the total variation distance (half the L1 distance) between probability rows.

    The share of probability mass that moved, in 0..1 whatever the number of
    classes: an elementwise mean would shrink 1000-fold on a 1000-class output.
    """
    moved = probability_shifts(ref, got)
    return float(np.mean(moved)) if moved.size else 0.0


def probability_shifts(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per sample, the total variation distance between probability rows; a binary classifier's one
    column p is the row (1 - p, p), so its sample moves by |got - ref| (half of twice that)."""
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    got = np.asarray(got, np.float64).reshape(ref.shape)
    return np.abs(got - ref).sum(axis=1) * (1.0 if ref.shape[1] == 1 else 0.5)


def is_binary_probability(ref: np.ndarray, labels: np.ndarray | None) -> bool:
    """A sigmoid binary classifier's output: one float column in 0..1, scored by 0/1 labels (one per
    sample). Without labels a 0..1 column may as well be a regression value: not assumed."""
    ref = np.asarray(ref)
    if labels is None or np.ndim(labels) != 1 or not len(labels) or not np.isin(labels, (0, 1)).all():
        return False
    rows = _probability_rows(ref) if ref.ndim in (1, 2) and np.issubdtype(ref.dtype, np.floating) else None
    return rows is not None and not is_probabilities(ref)  # one 0..1 column read as (1 - p, p)


def one_ulp_apart(x: np.ndarray, seed: int) -> np.ndarray:
    """``x`` with every floating element moved one unit in the last place, up or down at random.

    Integer inputs (token ids, indices) come back unchanged: they have no rounding to perturb.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        return x
    up = np.random.default_rng(seed).random(x.shape) < 0.5
    return np.where(up, np.nextafter(x, np.inf, dtype=x.dtype), np.nextafter(x, -np.inf, dtype=x.dtype)).astype(x.dtype)


def reference_noise(predict: Any, inputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> list[float]:
    """How far each reference output moves when its float inputs move by one ulp (largest change, per output).

    A float32 model only defines its outputs up to this: a converter that fuses
    BatchNorm into a convolution or reorders a sum rounds differently, and a
    deep, badly conditioned network (InceptionV3 with random weights) amplifies
    that rounding as much as it amplifies an input's last bit. Measured there:
    one-ulp input changes moved the features by 3.8-4.5e-3, XLA vs the plain
    graph by 3.7e-3, and TFLite, ONNX Runtime and TF.js by 3.8-5.0e-3; on a
    well-conditioned model the same estimate is ~1e-7 of the output scale and
    changes nothing. ``predict`` takes a list of input arrays like ``inputs``
    and returns outputs in ``reference`` order; the first ``NOISE_SAMPLES``
    samples are used.
    """
    n = min(NOISE_SAMPLES, len(inputs[0]))
    base = [np.asarray(x[:n]) for x in inputs]
    if not any(np.issubdtype(x.dtype, np.floating) for x in base):
        return [0.0] * len(reference)
    noise = [0.0] * len(reference)
    for seed in range(NOISE_DRAWS):
        moved = predict([one_ulp_apart(x, seed) for x in base])
        for i, (ref, out) in enumerate(zip(reference, moved)):
            diff = np.abs(np.asarray(out, np.float64).reshape(ref[:n].shape) - np.asarray(ref[:n], np.float64))
            noise[i] = max(noise[i], float(np.nanmax(diff)) if diff.size else 0.0)
    return noise


CLIPPED_SHARE = 0.1  # past this share of samples beyond an output's stop, calibration did not miss them


def clipping_hint(ref: np.ndarray, got: np.ndarray, allowed: float) -> str | None:
    """When the artifact's output stops short of the reference's range, and the misses lie beyond
    that stop: a quantized output clipped at the range its calibration data reached."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64).reshape(ref.shape)
    if not ref.size or not np.isfinite(got).all():
        return None
    if got.size > 1 and got.min() == got.max() and ref.max() - ref.min() > allowed:
        # Not a range cut short: nothing of the input reaches the output (calibration advice sent users astray).
        return (f"the artifact gives {float(got.flat[0]):.4g} for every sample, where the reference spans "
                f"{ref.min():.4g}..{ref.max():.4g}: nothing of the input reaches its output")
    miss = np.abs(got - ref) > allowed
    for side, stop, beyond in (("max", got.max(), ref > got.max() + allowed), ("min", got.min(), ref < got.min() - allowed)):
        if beyond.any() and np.count_nonzero(miss & beyond) >= 0.5 * np.count_nonzero(miss):
            reach = ref.max() if side == "max" else ref.min()
            said = f"the artifact's output stops at {stop:.4g} where the reference reaches {reach:.4g}"
            share = np.count_nonzero(beyond) / beyond.size
            if share > CLIPPED_SHARE:
                # So many samples beyond the stop: calibration data unlike them (--eval-data wider than --data),
                # or a range cut short inside the model (outliers in an input stretched a scale that rounds the
                # rest away: calibration had reached 8.77 where the file stopped at 1.31). Verification sees
                # neither the calibration outputs nor the file's inner ranges, so both are said.
                return (f"{said} for {share:.0%} of the samples: either the calibration data's outputs ended there "
                        "(calibrate on data like these: more or more varied --data), or a range inside the model was "
                        "cut short (outliers in an input: see the input hints)")
            return (f"{said}: the quantized range ends where the calibration data's outputs ended; calibrate on data "
                    "that reaches further (more or more varied --data, or raise the target's calibration_samples)")
    return None


def mixed_scale_hint(inputs: dict[str, np.ndarray], levels: int, way_out: str) -> str | None:
    """When one float input holds features whose ranges differ by more than ``levels`` (256 for 8-bit
    activations): one quantization step for the whole input (1/levels of the widest range) is then
    coarser than the narrow features' whole range, and they are erased before the model's own
    Normalization can scale them. ``way_out``: the targets to suggest instead."""
    for name, x in inputs.items():
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] < 2 or not np.isfinite(x).all():
            continue  # per-feature columns: tabular (N, features) inputs
        spans = x.max(axis=0) - x.min(axis=0)
        wide, narrow = float(spans.max()), float(spans[spans > 0].min(initial=np.inf))
        if np.isfinite(narrow) and wide > levels * narrow:
            return (f"input {name!r} mixes feature ranges from {narrow:.3g} to {wide:.3g} (more than {levels}x): one "
                    f"{int(np.log2(levels))}-bit scale for the whole input erases the narrow features; {way_out}")
    return None


def _elementwise_failure(cmp: dict[str, Any], shift: float | None) -> str | None:
    """Why an output fails the elementwise part of the tolerance, or None.

    A column that lost its variation is said whatever else failed: in a price-and-rating output the
    bound the price column breaks was the only reason given, and the rating column, one value in the
    int8 file, went unnamed.

    ``shift``: for a class-probability output judged by the metric gate, its
    :func:`mean_probability_shift`; the elementwise bound then applies to that
    instead of to every element.
    """
    if not cmp["finite"]:
        return "has NaN/inf values"
    if shift is not None:
        if shift > cmp["allowed_probability_shift"]:
            return (f"mean probability shift {shift:.3g} exceeds the allowed "
                    f"{cmp['allowed_probability_shift']:.3g} (class probabilities: half the L1 distance per sample)")
        return None
    bound = _bound_failure(cmp)
    lost = _lost_column_failure(cmp.get("collapsed_column"))
    bulk = None if lost else _lost_bulk_failure(cmp.get("lost_bulk"))
    return "; ".join(t for t in (bound, lost, bulk) if t) or None


def _bound_failure(cmp: dict[str, Any]) -> str | None:
    """The first elementwise bound an output breaks, or None."""
    if cmp["violations"] > cmp["allowed_violations"] and "worst_column" in cmp:
        c = cmp["worst_column"]
        return (f"column {c['column']} (scale {c['range']:.4g}: its span, at least 1 % of its largest value; each column "
                f"is held to {c['range_atol']:g} of its own scale: {c['allowed']:.3g}"
                + (f" + {cmp['rtol']:g} x |value|" if cmp.get("rtol") else "")
                + f") is off by up to {c['max_abs_error']:.3g}, over the bound in {c['violations']} of its "
                f"{c.get('elements', cmp['elements'])} values" + (f" (at most {cmp['allowed_violations']} of the output's "
                f"{cmp['elements']} may)" if cmp["allowed_violations"] else ""))
    if cmp["violations"] > cmp["allowed_violations"]:
        bound = f"{cmp['allowed_abs_error_at_max']:.3g}" + (f" + {cmp['rtol']:g} x |value|" if cmp.get("rtol") else "")
        if "logit_atol" in cmp:
            bound += f" + 2 x {cmp['logit_atol']:g} x p(1-p) (what a logit error of {cmp['logit_atol']:g} moves a probability)"
        return (f"max abs error {cmp['max_abs_error']:.3g} exceeds the allowed {bound} in {cmp['violations']} of "
                f"{cmp['elements']} element(s)" + (f" (at most {cmp['allowed_violations']} may)" if cmp["allowed_violations"] else ""))
    if "allowed_mean_shift" in cmp and cmp["mean_probability_shift"] > cmp["allowed_mean_shift"]:
        return (f"{cmp['violations_without_logit_room']} element(s) pass only with the room a logit error of "
                f"{cmp['logit_atol']:g} makes, and the mean probability shift {cmp['mean_probability_shift']:.3g} "
                f"exceeds that room's cap, tolerance.max_mean_shift {cmp['allowed_mean_shift']:.3g} (half the L1 "
                "distance per sample)")
    return None


def few_steps(lost: dict[str, Any] | None) -> bool:
    """A lost column (``collapsed_column``) that one 8-bit scale for all the columns left a few steps:
    it spans under 16 of the 255 steps of the output's range, and the artifact gives it 16 values or fewer."""
    return bool(lost) and lost.get("share_of_range") is not None and lost["share_of_range"] < 16 / 255 \
        and lost.get("artifact_values", 0) <= 16


def _lost_column_failure(lost: dict[str, Any] | None) -> str | None:
    """The sentence for a column whose variation the artifact lost (``collapsed_column``), or None."""
    if lost:
        # in a wide output the failure is that a quarter or more of its columns lost theirs: said so
        others = lost.get("lost_columns", 1) - 1 if lost.get("columns", 0) > MAX_OWN_RANGE_COLUMNS else 0
        text = (f"column {lost['column']}" + (f" (and {others} other{'s' if others > 1 else ''} of its {lost['columns']})"
                                              if others > 0 else "")
                + f" lost its variation: the reference's values span {lost['low']:.4g}..{lost['high']:.4g} "
                f"and the artifact follows them little better than a constant: its error, a constant offset aside, "
                f"averages {lost['varying_error']:.3g}, {lost['varying_error'] / lost['constant_error']:.0%} of a constant's "
                f"at their median ({lost['constant_error']:.3g})")
        # Few levels for this column: one 8-bit scale spans all the columns (an integer output's, or the
        # last layer's weights'). The way out depends on the target: the pipeline's failure hints say it.
        if few_steps(lost):
            text += (f"; it spans {lost['share_of_range']:.2g} of the output's range, and the artifact gives it "
                     f"{lost['artifact_values']} value{'s' if lost['artifact_values'] != 1 else ''}: one 8-bit scale "
                     "for all the columns leaves it few steps")
        return text
    return None


def _headline_output(names: Sequence[str], reference: Sequence[np.ndarray], outputs: dict[str, Any],
                     valued: int | None = None) -> str:
    """The output whose top-1 agreement heads an artifact's verification when no labels name one: a class
    index (an argmax inside the model), else class probabilities, else the first output that has one.
    The first output alone could be two regression columns (a price and a rating) whose "top-1" never
    flips, reported as 100 % beside a class-id output that failed. ``valued``: the output regression
    targets score (never the headline)."""
    having = [i for i, n in enumerate(names) if "top1_agreement" in outputs[n] and i != valued]
    for kind in (is_id_output, is_probabilities):
        for i in having:
            if kind(reference[i]):
                return names[i]
    return names[having[0]] if having else names[0]


def is_id_output(out: np.ndarray) -> bool:
    """Integers or booleans of any shape: class ids (argmax inside the model), per-pixel class maps,
    top-k indices, the answers of a comparison (``x > t``). A flipped boolean is off by "1"
    elementwise, which failed an int8 file against a 0.05 bound for one answer in 160 near the threshold."""
    out = np.asarray(out)
    return bool((np.issubdtype(out.dtype, np.integer) or out.dtype == np.bool_) and out.size)


def id_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Share of the ids the artifact reproduces exactly (a runtime may hand them back as floats)."""
    ref = np.asarray(ref)
    return float(np.mean(np.rint(np.asarray(got, np.float64)).reshape(ref.shape) == ref))


def classes_like(ref: np.ndarray, got: np.ndarray, labels_shape: tuple | None = None) -> np.ndarray:
    """The artifact's top-1 classes, read the way the reference output is read (a runtime may hand
    class ids back as floats)."""
    if is_id_output(ref):
        ids = np.rint(np.asarray(got, np.float64)).astype(np.int64).reshape(np.shape(ref))
        return predicted_classes(ids, labels_shape)
    return predicted_classes(np.asarray(got).reshape(np.shape(ref)), labels_shape)


def _id_failure(ref: np.ndarray, share: float, tol: Any) -> str | None:
    """Why an integer output whose ids the artifact reproduced in ``share`` of places fails, or None."""
    ref = np.asarray(ref)
    what = ("top-1 agreement" if is_class_index(ref) else f"booleans reproduced ({ref.size} values)"
            if ref.dtype == np.bool_ else f"ids reproduced ({ref.size} values)")
    return _agreement_failure(share, tol, what)


def is_multi_label(ref: np.ndarray) -> bool:
    """Independent per-column scores in 0..1 (sigmoid tags): rank 2, several columns, rows not summing to 1."""
    ref = np.asarray(ref)
    return bool(_is_classification(ref) and ref.size and np.isfinite(ref).all() and ref.min() >= -1e-6
                and ref.max() <= 1 + 1e-6 and not is_probabilities(ref))


def _judge_classes(ref: np.ndarray, got: np.ndarray, cmp: dict[str, Any], tol: Any, labels_shape: tuple | None,
                   gated: bool) -> str | None:
    """Top-1 agreement of a float output read as classes; why it fails the target, or None.

    The output the labels score and rows of probabilities (``gated``) must agree sample by sample;
    a sample whose reference top two lie within the float tolerance (``atol + rtol * |ref|``) of
    each other is a tie, and either class agrees. Other multi-column outputs (logits without labels,
    several regression values) are held to the same ``min_agreement``, but a flip counts only when
    the reference's lead exceeds the elementwise bound of those two columns (their own ranges, not
    the whole output's): four close regression values swap places within their error, while a
    logit that loses a clear lead is a different answer. Sigmoid tags (:func:`is_multi_label`) are
    judged per tag at 0.5, a tag within its column's bound of 0.5 being a tie.
    """
    got_classes = classes_like(ref, got, labels_shape)
    ref_classes = predicted_classes(ref, labels_shape)
    agree = got_classes == ref_classes
    per_sample = labels_shape is None or len(labels_shape) < 2
    if per_sample and _is_classification(ref):
        r = np.asarray(ref, np.float64)
        tie = tol.atol + tol.rtol * np.abs(r.max(axis=1))
        if not gated:
            spans = r.max(axis=0) - r.min(axis=0)
            picked_span = spans[np.asarray(got_classes).reshape(-1)]
            tie = tie + tol.range_atol * np.maximum(spans[np.argmax(r, axis=1)], picked_span)
        picked = np.take_along_axis(r, np.asarray(got_classes).reshape(-1, 1), axis=1)[:, 0]
        agree = agree | (picked >= r.max(axis=1) - tie)
    cmp["top1_agreement"] = share = float(np.mean(agree))
    if not gated and per_sample and is_multi_label(ref):
        r = np.asarray(ref, np.float64)
        g = np.asarray(got, np.float64).reshape(r.shape)
        bound = tol.atol + tol.rtol * np.abs(r) + tol.range_atol * (r.max(axis=0) - r.min(axis=0))
        flipped = ((g > 0.5) != (r > 0.5)) & (np.abs(r - 0.5) > bound)
        cmp["tag_agreement"] = tags = float(1.0 - np.mean(flipped))
        cmp.pop("top1_agreement")  # the argmax of independent tags means nothing
        failure = _agreement_failure(tags, tol, "tags reproduced at 0.5")
        vanished = _vanished_tag(r, g)
        if vanished is None:
            return failure
        cmp["vanished_class"] = vanished
        # 15 positives of one tag among 20 tags x 1000 samples are 0.075 % of the answers: within agreement.
        st = vanished["state"]
        lost = (f"tag {vanished['class']}, which the model turns {st} for {vanished['samples']} sample(s) "
                f"(its probability {vanished['low']:.2f}-{vanished['high']:.2f}), is {st} for none of them: the "
                "artifact has lost that answer" if not vanished["kept"] else
                f"tag {vanished['class']}, which the model clearly turns {st} for {vanished['clear']} sample(s), is {st} "
                f"for only {vanished['clear_kept']} of them: the artifact has lost most of that answer")
        return f"{failure}; {lost}" if failure else lost
    failure = _agreement_failure(share, tol)
    n = int(np.size(agree))
    allowed = int(np.floor((1 - tol.min_agreement) * n + 1e-9))
    if failure and per_sample and n and int(np.count_nonzero(~np.asarray(agree))) <= 2 and allowed < 2 \
            and tol.min_agreement < 1:  # a 100 % rule allows no change at any count: "at least 3000000000"
        # 64 samples: 97 % allows one changed answer, and two near-ties failed a file whose accuracy rose
        failure += (f" ({n} samples: {tol.min_agreement:.0%} allows {allowed} changed answer{'s' if allowed != 1 else ''}; "
                    f"verify on at least {int(np.ceil(3 / max(1 - tol.min_agreement, 1e-9) - 1e-9))} (--eval-data, or a higher "
                    "--verify-samples) to tell a few near-ties from a lost answer)")
    rows = _probability_rows(ref) if per_sample and (gated or is_probabilities(ref)) else None
    if rows is None:
        return failure
    flips = flips_by_lead(rows, ~np.asarray(agree).reshape(-1))
    if flips["count"]:
        cmp["flips"] = flips
    vanished = _vanished_class(rows, np.asarray(agree).reshape(-1))
    if vanished:
        cmp["vanished_class"] = vanished
        # A minority class can vanish within 97 % agreement and 1 accuracy point: 5 positives in 600,
        # each pinned at 0.5 by an output range calibrated on negatives only.
        lost = (f"class {vanished['class']}, which the model predicts for {vanished['samples']} sample(s) (its "
                f"probability {vanished['low']:.2f}-{vanished['high']:.2f}), is predicted for none of them: the artifact "
                "has lost that answer")
        return f"{failure}; {lost}" if failure else lost
    if failure:
        if flips["count"]:
            failure += (f" (on the {flips['count']} changed answers the model's own top two probabilities were at most "
                        f"{flips['max_lead']:.2g} apart, median {flips['median_lead']:.2g}: "
                        # a 0.43 lead among 10 classes is no near-tie, though under CONFIDENT_LEAD
                        + ("rounding where the model is unsure)" if flips["max_lead"] <= NEAR_TIE_LEAD else
                           "mostly rounding where the model is unsure)")
                        if not flips["confident"] else
                        f" (on {flips['confident']} of the {flips['count']} changed answers the model's own top two "
                        f"probabilities were more than {CONFIDENT_LEAD:g} apart: more than rounding where it is unsure)")
    return failure


def _tied_flips(ref: np.ndarray, got: np.ndarray, tol: Any, labels_shape: tuple) -> np.ndarray:
    """Per sample: the answer changed, to a class the reference scores within ``atol + rtol * |top|`` of its
    top class (a tie, as :func:`_judge_classes` counts it for the scored output). All False when the
    answers are not one class per sample of a score output."""
    if len(labels_shape) != 1 or not _is_classification(ref):
        return np.zeros(labels_shape[:1], bool)
    r = np.asarray(ref, np.float64)
    got_classes = np.asarray(classes_like(ref, got, labels_shape)).reshape(-1)
    picked = np.take_along_axis(r, got_classes.reshape(-1, 1), axis=1)[:, 0]
    tie = tol.atol + tol.rtol * np.abs(r.max(axis=1))
    return (got_classes != r.argmax(axis=1)) & (picked >= r.max(axis=1) - tie)


# A class the reference predicts for at least this many samples must be predicted for one of them,
# when one of them is a clear answer (its top probability leads the next by VANISHED_MIN_LEAD or more):
# a class the model only ever picks by a hair (5 copies of one input at 0.4537 vs 0.4517) can tie
# within one int8 output step and go to the other class without anything being wrong.
MIN_VANISHED_SAMPLES = 3
VANISHED_MIN_LEAD = 0.1


def _vanished_class(rows: np.ndarray, agree: np.ndarray) -> dict[str, Any] | None:
    """The class the reference predicts most often (MIN_VANISHED_SAMPLES or more, one of them by a
    clear lead) among those the artifact reproduces on none of their samples, or None."""
    predicted = np.argmax(rows, axis=1)
    top2 = np.sort(rows, axis=1)[:, -2:]
    lead = top2[:, 1] - top2[:, 0]
    worst = None
    for c in np.unique(predicted):
        mine = predicted == c
        if (mine.sum() >= MIN_VANISHED_SAMPLES and not agree[mine].any() and lead[mine].max() >= VANISHED_MIN_LEAD
                and (worst is None or mine.sum() > worst[1])):
            worst = (int(c), int(mine.sum()), rows[mine, c])
    if worst is None:
        return None
    c, n, p = worst
    return {"class": c, "samples": n, "low": float(p.min()), "high": float(p.max())}


def _vanished_tag(ref: np.ndarray, got: np.ndarray) -> dict[str, Any] | None:
    """A sigmoid tag the reference turns on (or off) for MIN_VANISHED_SAMPLES samples or more, one of them
    clearly (as a binary classifier's class: p at least VANISHED_MIN_LEAD / 2 from 0.5), that the artifact
    turns so for none of them, or for fewer than TAG_MIN_KEPT of the clear ones; the one with the most
    such samples, or None. Each tag is a binary answer of its own, held to what :func:`_vanished_class`
    holds a class to (and, having no argmax rival, to keeping most of its clear answers)."""
    worst = None
    for j in range(ref.shape[1]):
        r, g = ref[:, j], got[:, j]
        for state, mine, kept in (("on", r > 0.5, g > 0.5), ("off", r <= 0.5, g <= 0.5)):
            n = int(mine.sum())
            clear = mine & (np.abs(r - 0.5) >= VANISHED_MIN_LEAD / 2)
            # all of them lost, or most of those the model is clear about (1 of 15 positives kept passed)
            lost = n >= MIN_VANISHED_SAMPLES and clear.any() and (
                not kept[mine].any() or (int(clear.sum()) >= MIN_VANISHED_SAMPLES and kept[clear].mean() < TAG_MIN_KEPT))
            if lost and (worst is None or n > worst["samples"]):
                worst = {"class": j, "state": state, "samples": n, "low": float(r[mine].min()), "high": float(r[mine].max()),
                         "kept": int(kept[mine].sum()), "clear": int(clear.sum()), "clear_kept": int(kept[clear].sum())}
    return worst


# Of the samples the model clearly turns a tag on (or off) for, at least this share must stay so.
TAG_MIN_KEPT = 0.5


def _probability_rows(ref: np.ndarray) -> np.ndarray | None:
    """Class-probability rows of an output: softmax rows as they are, a binary classifier's one 0..1
    column p as (1 - p, p); None for anything else."""
    r = np.asarray(ref, np.float64)
    if is_probabilities(r):
        return r
    r = r.reshape(len(r), -1) if r.ndim in (1, 2) else r
    if r.ndim == 2 and r.shape[1] == 1 and r.size and np.isfinite(r).all() and r.min() >= 0 and r.max() <= 1:
        return np.concatenate([1.0 - r, r], axis=1)
    return None


def flips_by_lead(ref: np.ndarray, flipped: np.ndarray) -> dict[str, Any]:
    """How sure the model was where an artifact changed its answer: the lead of its top probability
    over the next on those samples. Flips only at small leads are precision lost where the model is
    unsure (16-bit activations or float keep it); flips of a clear lead mean the file computes
    something else."""
    top2 = np.sort(ref[flipped], axis=1)[:, -2:]
    lead = top2[:, 1] - top2[:, 0]
    return {"count": int(flipped.sum()), "confident": int(np.count_nonzero(lead > CONFIDENT_LEAD)),
            "max_lead": float(lead.max()) if lead.size else 0.0, "median_lead": float(np.median(lead)) if lead.size else 0.0}


# A reference whose top class leads the next by more than this is sure of its answer: an artifact
# that changes it is not losing precision at a near-tie (int8 flips on a trained 1-D conv model all
# had leads under 0.46, median 0.12).
CONFIDENT_LEAD = 0.5
# Changed answers all within this lead are near-ties; up to CONFIDENT_LEAD, "mostly" (the median says how many).
NEAR_TIE_LEAD = 0.3


def _agreement_failure(share: float, tol: Any, what: str = "top-1 agreement") -> str | None:
    """Why an agreement share is below the target's ``min_agreement``, or None."""
    return f"{what} {share:.2%} is below {tol.min_agreement:.2%}" if share < tol.min_agreement else None


def compare_outputs(ref: np.ndarray, got: np.ndarray, tol: Any, noise: float = 0.0) -> dict[str, Any]:
    """Elementwise comparison of one output against the reference.

    ``noise``: the reference's own float32 noise on this output (:func:`reference_noise`);
    ``tol.noise_multiple`` times it is added to every element's bound.
    Returns max/mean abs error, the allowed error, and how many elements missed it.
    """
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64).reshape(ref.shape)
    with np.errstate(all="ignore"):  # an artifact that computes inf/NaN is reported, not warned about
        err = np.abs(got - ref)
    if not np.isfinite(err).all():
        err = np.where(np.isfinite(err), err, np.inf)  # NaN counts as the largest error
    value_range = _scale_of(ref)
    noise_allowance = getattr(tol, "noise_multiple", 0.0) * noise
    ranges = _column_ranges(ref, value_range) if getattr(tol, "column_ranges", False) else value_range
    allowed = tol.atol + noise_allowance + tol.rtol * np.abs(ref) + tol.range_atol * ranges
    logit = getattr(tol, "logit_atol", 0.0)
    softmax = None
    rows = ref.reshape(-1, ref.shape[-1]) if ref.ndim >= 2 else ref  # per sample, pixel or step
    allowed_violations = int(np.floor(getattr(tol, "max_violation_fraction", 0.0) * err.size))
    if logit and tol.probabilities == "elementwise" and is_probabilities(rows):
        without = int(np.count_nonzero(~(err <= allowed)))
        if without > allowed_violations:  # only ever rescues: what the plain bound passes, it passes
            # What a logit error of `logit` does to each probability (dp = p(1-p) dz, the class up
            # and the rest down): room where the reference is unsure, none where it is certain.
            allowed = allowed + 2 * logit * ref * (1 - ref)
            softmax = {"logit_atol": float(logit), "violations_without_logit_room": without,
                       "mean_probability_shift": mean_probability_shift(rows, got.reshape(rows.shape)),
                       "allowed_mean_shift": float(getattr(tol, "max_mean_shift", 1.0))}
    violations = int(np.count_nonzero(~(err <= allowed)))  # NaN counts as a violation
    by_column = None
    if np.ndim(ranges) == 2 and violations:  # the column with the most elements over its own bound
        over = (~(err <= allowed)).sum(axis=0)
        j = int(np.argmax(over))
        by_column = {"worst_column": {"column": j, "range": float(ranges[0, j]), "violations": int(over[j]),
                                      "elements": int(err.shape[0]),
                                      "max_abs_error": float(np.nanmax(err[:, j])),
                                      "allowed": float(tol.atol + noise_allowance + tol.range_atol * ranges[0, j]),
                                      "range_atol": float(tol.range_atol)}}
    # The whole-range bound (int8's: one output scale) can pass a small column off by a large share of its
    # own span, where a float-compute profile's per-column bound fails a smaller error: said in a note.
    # Not said of sigmoid tags (in 0..1, a rarely-on tag spans a few int8 steps: nothing to rescale) nor of
    # errors within two 8-bit steps of the whole range (what an integer output's one scale gives any column).
    own = _column_ranges(ref, value_range) if np.ndim(ranges) != 2 and not is_multi_label(ref) else None
    coarse_column = None
    if np.ndim(own) == 2 and tol.range_atol and np.isfinite(err).all():
        share = err.max(axis=0) / own[0]
        j = int(np.argmax(share))
        if share[j] > tol.range_atol and own[0, j] < value_range and err[:, j].max() > 2 * value_range / 255:
            coarse_column = {"coarse_column": {"column": j, "scale": float(own[0, j]), "max_abs_error": float(err[:, j].max()),
                                               "share_of_scale": float(share[j])}}
    # How many the noise allowance rescued: the report says when parity rests on it.
    over_static = int(np.count_nonzero(~(err <= allowed - noise_allowance))) if noise_allowance else violations
    return {
        "max_abs_error": float(np.nanmax(err)) if err.size else 0.0,
        "mean_abs_error": float(np.nanmean(err)) if err.size else 0.0,
        "reference_range": value_range,
        "allowed_abs_error_at_max": float(tol.atol + noise_allowance + tol.range_atol * value_range),
        "rtol": float(tol.rtol),
        # For class probabilities the scale is probability mass, 0..1, whatever this batch's range:
        # a near-uniform classifier's outputs span 0.02, and 5 % of that is no bound on moved mass.
        "allowed_probability_shift": float(tol.atol + noise_allowance + tol.range_atol),
        "reference_noise": float(noise),
        "noise_allowance": float(noise_allowance),
        "violations": violations,
        "violations_without_noise": over_static,
        "allowed_violations": allowed_violations,
        "elements": int(err.size),
        "finite": bool(np.isfinite(got).all()),
        **_collapsed_column(ref, got, value_range),
        **_lost_bulk(ref, got),
        **(softmax or {}),
        **(by_column or {}),
        **(coarse_column or {}),
        **({"column_ranges": True} if np.ndim(ranges) == 2 else {}),
    }


# A float output with at most this many columns holds separate quantities (a price and a rating, a box's
# x/y/w/h). Its bound is a fraction of the whole output's range, so int8's one output scale could wipe out
# a 1-5 rating beside a 1e5 price and pass: such a column is also checked for having lost its variation.
MAX_OWN_RANGE_COLUMNS = 8
# A column counts as varying when its span is at least this share of its largest value (float32 noise
# on a constant column, e.g. an untrained head's logits, does not), and as lost when the artifact follows
# it little better than a constant would: its error, with its constant part taken out (an offset, e.g.
# int8 rounding of a plateau or an fp16 shift, loses no variation), reaches this share of a constant's
# error (the reference's mean distance from its median). A constant artifact scores 1; measured against
# the span instead, one at the column's median scored 0.1-0.25 and passed. A column 4 integer steps wide
# with realistic int8 noise scores ~0.5; one spanning under a step, ~1.
VARYING_SPAN = 1e-2
LOST_SHARE = 0.75
# An output wider than MAX_OWN_RANGE_COLUMNS fails when at least 1/WIDE_LOST_SHARE_INV of its varying columns are lost.
WIDE_LOST_SHARE_INV = 4


def _scale_of(values: np.ndarray) -> float:
    """The range the range-relative bound is a fraction of; a single sample (or a constant output)
    has none, so the values' own size stands in (else any int8 rounding of one sample failed)."""
    if not values.size:
        return 0.0
    spread = float(values.max() - values.min())
    return spread if spread > 0 else float(np.abs(values).max())


def _column_ranges(ref: np.ndarray, whole: float) -> Any:
    """Per-column scales of an (N, 2..8) value output, as a row to broadcast; ``whole`` for every other
    output (probabilities, per-pixel maps, wide features).

    A column's scale is its span, but at least ``VARYING_SPAN`` of its largest value: a column that
    barely varies (12000 +- 50) is held to 1 % of its size, not to the whole output's range, which let
    a constant in its place pass; and the bound grows smoothly with the span instead of jumping 20x at
    a threshold. A column of zeros only takes the whole output's range."""
    if ref.ndim != 2 or not 2 <= ref.shape[1] <= MAX_OWN_RANGE_COLUMNS or len(ref) < 2 or is_probabilities(ref):
        return whole
    scales = np.maximum(ref.max(axis=0) - ref.min(axis=0), VARYING_SPAN * np.abs(ref).max(axis=0))
    return np.where(np.isfinite(scales) & (scales > 0), scales, whole)[None, :]


def _collapsed_column(ref: np.ndarray, got: np.ndarray, whole: float) -> dict[str, Any]:
    """The worst column of an (N, 2+) value output (N >= 8) whose variation the artifact lost, if any.

    Up to MAX_OWN_RANGE_COLUMNS columns, any such column; in a wider output (features, logits, 10 or 20
    regression values) only when a quarter or more of its varying columns lost theirs: a near-dead
    feature channel under one integer step is what an int8 output is (trained digits embeddings of
    32-128 columns lost 0 or 1 of them), but 4 ratio columns of 10 beside 6 price columns, all 0.0 in
    the int8 file, passed. Class probabilities are judged by the answers they give
    (agreement, moved mass, vanished classes).
    """
    if ref.ndim != 2 or ref.shape[1] < 2 or len(ref) < 8 or is_probabilities(ref):
        return {}
    r = np.asarray(ref, np.float64)
    with np.errstate(all="ignore"):
        e = np.nan_to_num(np.asarray(got, np.float64).reshape(r.shape) - r, nan=np.inf, posinf=np.inf, neginf=np.inf)
        varying_error = np.mean(np.abs(e - np.median(e, axis=0)), axis=0)  # its constant part aside
    spans = r.max(axis=0) - r.min(axis=0)
    sizes = np.abs(r).max(axis=0)
    constant_error = np.mean(np.abs(r - np.median(r, axis=0)), axis=0)  # the best a constant does
    varying = (spans > 0) & (spans >= VARYING_SPAN * sizes) & (constant_error > 0)
    if is_multi_label(r):
        # In 0..1 (sigmoid tags, normalized boxes), a column on one side of 0.5 gives the same answer there
        # whatever becomes of its variation: a rarely-on tag (0.001-0.02, a few int8 steps) rounds to
        # near-constant in every good int8 file. A column that crosses 0.5 is judged.
        varying &= (r.min(axis=0) < 0.5) & (r.max(axis=0) > 0.5)
    with np.errstate(all="ignore"):
        lost = np.where(varying, varying_error / np.where(varying, constant_error, 1.0), 0.0)
        lost = np.where(np.isnan(lost), np.inf, lost)
    j = int(np.argmax(lost))
    if lost[j] < LOST_SHARE:
        return {}
    lost_columns = int(np.count_nonzero(lost >= LOST_SHARE))
    if ref.shape[1] > MAX_OWN_RANGE_COLUMNS and lost_columns * WIDE_LOST_SHARE_INV < int(np.count_nonzero(varying)):
        return {}
    col = np.asarray(got, np.float64).reshape(r.shape)[:, j]
    return {"collapsed_column": {"column": j, "lost_columns": lost_columns, "columns": int(ref.shape[1]),
                                 "varying_error": float(varying_error[j]), "span": float(spans[j]),
                                 "constant_error": float(constant_error[j]),
                                 "low": float(r[:, j].min()), "high": float(r[:, j].max()),
                                 "artifact_values": int(np.unique(col[np.isfinite(col)]).size),
                                 "share_of_range": float(spans[j] / whole) if whole > 0 else None}}


# The central share of a column's samples that "the bulk" is, and how much wider than theirs the column's
# whole span must be (a few samples beyond it setting the range) for the bulk to be judged on its own.
BULK_QUANTILES = (0.02, 0.98)
BULK_NARROWER = 16


def _lost_bulk(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """A value column whose central samples (2nd-98th percentile) span 1/16 or less of its whole span,
    which a few samples beyond them set, and whose variation the artifact lost on those samples.

    One sample 300x the rest set an int8 output's scale: the other 149 got 3 values, off by 81 % of
    their span, inside a bound of 5 % of the range the one sample made; every rule passed it."""
    r = np.asarray(ref, np.float64)
    if r.ndim == 1:
        r = r[:, None]
    # Separate quantities (2-8 columns, or one), not features, maps or class scores; values within 0..1
    # (a sigmoid, a rarely-on tag at 0.001 beside its 0.99s) are judged by the answers they give.
    if (r.ndim != 2 or r.shape[1] > MAX_OWN_RANGE_COLUMNS or len(r) < 16 or is_probabilities(ref)
            or not np.isfinite(r).all() or (r.min() >= 0 and r.max() <= 1)):
        return {}
    g = np.asarray(got, np.float64).reshape(r.shape)
    if not np.isfinite(g).all():
        return {}
    worst = None
    for j in range(r.shape[1]):
        col, out = r[:, j], g[:, j]
        lo, hi = np.quantile(col, BULK_QUANTILES)
        bulk = (col >= lo) & (col <= hi)
        span, whole = hi - lo, col.max() - col.min()
        if bulk.sum() < 16 or span <= 0 or span * BULK_NARROWER > whole:
            continue
        e = out[bulk] - col[bulk]
        varying_error = float(np.mean(np.abs(e - np.median(e))))
        constant_error = float(np.mean(np.abs(col[bulk] - np.median(col[bulk]))))
        lost = varying_error / constant_error if constant_error > 0 else 0.0
        if lost >= LOST_SHARE and (worst is None or lost > worst["lost"]):
            worst = {"column": j, "columns": int(r.shape[1]), "samples": int(bulk.sum()), "of": len(col),
                     "low": float(lo), "high": float(hi),
                     "share_of_span": float(span / whole), "varying_error": varying_error,
                     "constant_error": constant_error, "lost": lost,
                     "artifact_values": int(np.unique(out[bulk]).size)}
    return {"lost_bulk": worst} if worst else {}


def _lost_bulk_failure(bulk: dict[str, Any] | None) -> str | None:
    """The sentence for :func:`_lost_bulk`'s finding, or None."""
    if not bulk:
        return None
    where = f"column {bulk['column']}: " if bulk.get("columns", 1) > 1 else ""
    return (f"{where}{bulk['samples']} of {bulk['of']} samples span {bulk['low']:.4g}..{bulk['high']:.4g}, "
            f"{bulk['share_of_span']:.2g} of the whole span, which the few beyond them set, and the artifact "
            f"follows them little better than a constant ({bulk['artifact_values']} value"
            f"{'s' if bulk['artifact_values'] != 1 else ''}; its error, a constant offset aside, averages "
            f"{bulk['varying_error']:.3g}, {bulk['lost']:.0%} of a constant's): an integer output spends its levels "
            "on those few samples; check them (an outlier in the data?), or use a target with float outputs")


def _said_once(failures: list[str]) -> list[str]:
    """Failures without the batch-1 ones that repeat a batched failure of the same output.

    An output that fails on every sample says so once: its batch-1 failure repeated the same sentence
    and pushed the rest (agreement, accuracy) out of shortened reasons. Kept when only batch 1 fails.
    Same sentence = the same text once its numbers are set aside, the batched one perhaps followed by a
    hint (where the calibration range ends); a different one (NaN only at batch 1) stays.
    """
    def kind(text: str) -> str:
        return re.sub(r"[-+]?\d[\d.,e+-]*%?", "#", text)

    def repeated(single: str) -> bool:
        head, rest = single.split(" at batch size 1: ", 1)  # head: "output 'name'", compared as it is
        return any(f.startswith(head + ": ") and kind(f[len(head) + 2:]).startswith(kind(rest))
                   for f in failures if " at batch size 1: " not in f)

    return [f for f in failures if " at batch size 1: " not in f or not repeated(f)]


def run_batched(runner: Any, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Run the artifact over all samples in batches of ``batch``; outputs concatenated by name."""
    n = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        out = runner.run({k: v[start : start + batch] for k, v in inputs.items()})
        for name, value in out.items():
            parts.setdefault(name, []).append(np.array(value, copy=True))
    return {k: np.concatenate(v) for k, v in parts.items()}


def verify(
    runner: Any,
    inputs: dict[str, np.ndarray],
    reference: Sequence[np.ndarray],
    output_names: Sequence[str],
    tolerance: Any,
    labels: np.ndarray | None = None,
    batch_check: int = DEFAULT_BATCH_CHECK,
    noise: Sequence[float] | Callable[[], Sequence[float]] | None = None,
    targets: np.ndarray | None = None,
    label_output: int | None = None,
    calibrated: bool = True,
) -> dict[str, Any]:
    """Check an artifact against reference outputs on the same raw inputs.

    Runs every sample in batches of ``batch_check`` and the first ``batch_check``
    samples again at batch size 1 (an artifact that only takes batch 1, e.g. for a
    microcontroller, runs every sample at batch size 1), and applies the target's
    tolerance and metric gate. With ``tolerance.probabilities == "metric"``,
    class-probability outputs are judged by agreement, accuracy and the mean
    probability shift (see :class:`~deploykit.targets.Tolerance`); ``notes`` then says how many
    samples moved past the elementwise bound. ``noise`` widens every bound by
    ``tolerance.noise_multiple`` times the reference's own float32 noise
    (:func:`reference_noise`); ``notes`` says when an output passed only thanks to it.

    Args:
        runner: A loaded runner.
        inputs: Input name -> samples (raw, as the reference model took them).
        reference: Reference outputs, in ``output_names`` order.
        output_names: Output names as the artifact carries them.
        tolerance: The target's :class:`~deploykit.targets.Tolerance`.
        labels: Optional class labels for accuracy: one per sample (N,) or one per position (N, *S).
        batch_check: Batch size of the second pass (0 to skip).
        noise: Per-output float32 noise of the reference, in ``output_names`` order (default 0),
            or a function returning it: then called only when an output misses its bound without it.
        targets: Optional regression target values (used when there are no labels): the reference's
            and the artifact's mean absolute and RMS error against them are reported, with a note
            when the artifact's is over 20 % higher; parity decides pass or fail.
        label_output: Index of the output labels (or targets) score, when the user named one;
            default: the first that fits them (:func:`scored_output`).
        calibrated: The artifact's integer ranges were calibrated on data: a failure at a range's end
            then says so (a float file has no such end; a TF.js file was told of calibration data).

    Returns:
        Per-output errors, accuracy/agreement, ``passed`` and the list of ``failures``.
    """
    result: dict[str, Any] = {"samples": len(reference[0]), "outputs": {}, "failures": []}
    names = list(output_names)
    scored = scored_output(reference, labels, label_output)
    known_noise: dict[str, float] | None = None if callable(noise) else dict(zip(names, noise or [0.0] * len(names)))

    def compare(ref: np.ndarray, got_out: np.ndarray, name: str) -> dict[str, Any]:
        """compare_outputs, asking a lazy ``noise`` only when the output misses the bound without it."""
        nonlocal known_noise
        if is_id_output(ref):  # judged by agreement: ids have no float32 noise to allow for
            return compare_outputs(ref, got_out, tolerance)
        if known_noise is None:
            cmp = compare_outputs(ref, got_out, tolerance)
            if _elementwise_failure(cmp, shift(ref, got_out)) is None:
                return cmp
            known_noise = dict(zip(names, noise()))
        return compare_outputs(ref, got_out, tolerance, known_noise[name])

    def named(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return out if set(out) == set(names) else dict(zip(names, out.values()))  # renamed outputs: by position

    # A sigmoid binary classifier the labels score is class probabilities too: (1 - p, p).
    binary = reference[scored] if scored is not None and is_binary_probability(reference[scored], labels) else None

    def metric_gated(ref: np.ndarray) -> bool:
        return tolerance.probabilities == "metric" and (is_probabilities(ref) or (binary is not None and ref is binary))

    def shift(ref: np.ndarray, got: np.ndarray) -> float | None:
        return mean_probability_shift(ref, got) if metric_gated(ref) else None

    n = len(reference[0])
    m = min(batch_check, n)
    got = None
    batch1_errors: dict[str, float] = {}  # max abs error with the first samples run at batch size 1
    if batch_check > 1 and n > 1:
        # Every sample in batches of m (fewer invocations), then the first m again one by one:
        # two batch sizes checked, each sample verified once in full.
        try:
            got = named(run_batched(runner, inputs, m))
        except Exception as exc:  # fixed-batch artifacts (microcontrollers) are legitimate
            result["batch_note"] = f"batch size {m} not accepted: {' '.join(str(exc).split())[:160]}"
    if got is None:
        got = named(run_batched(runner, inputs, 1))
        batch_sizes = [1]
    else:
        batch_sizes = [1, m]
        single = named(run_batched(runner, {k: v[:m] for k, v in inputs.items()}, 1))
        for name, ref in zip(names, reference):
            # Judged within the full set (batch-1 rows in place of the batched ones): the same output
            # range and violation allowance as the main check. Alone, 8 samples had their own, smaller
            # range and no allowance, and failed int8 regression outputs that pass on all samples.
            mixed = np.array(got[name], copy=True)
            mixed[:m] = np.asarray(single[name]).reshape(mixed[:m].shape)
            if is_id_output(ref):
                failure = _id_failure(ref, id_agreement(ref, mixed), tolerance)
            else:
                cmp_single = compare(ref, mixed, name)
                batch1_errors[name] = cmp_single["max_abs_error"]
                failure = _elementwise_failure(cmp_single, shift(ref, mixed))
            if failure:
                result["failures"].append(f"output {name!r} at batch size 1: {failure}")
    result["batch_sizes"] = batch_sizes
    for name, ref in zip(names, reference):
        cmp = compare(ref, got[name], name)
        if name in batch1_errors:
            cmp["max_abs_error_at_batch_1"] = batch1_errors[name]
        result["outputs"][name] = cmp
        moved = shift(ref, got[name])
        if moved is not None:
            cmp["judged_by"] = "metric"
            cmp["mean_probability_shift"] = moved
            per_sample = probability_shifts(ref, got[name])
            cmp["samples_over_bound"] = over = int(np.count_nonzero(per_sample > cmp["allowed_probability_shift"]))
            result.setdefault("notes", []).append(
                f"output {name!r} holds "
                + ("a binary classifier's probability p (rows 1 - p, p): judged by agreement at 0.5" if ref is binary else
                   "class probabilities: judged by top-1 agreement")
                + (", accuracy" if scored is not None and names[scored] == name else "")  # only where labels score it
                + f" and the mean probability shift ({moved:.2g}); in {over} of {len(ref)} samples more than "
                f"{cmp['allowed_probability_shift']:.3g} of the probability mass moved (max {float(per_sample.max()):.3g})"
            )
        if is_id_output(ref):
            # An argmax inside the model (per sample or per pixel), top-k indices: a flipped id is off
            # by "3" elementwise, which means nothing. Judged by the share of ids reproduced, like a
            # probability output's top-1 (and by accuracy, when a class-index output is scored).
            cmp["judged_by"] = "agreement"
            cmp["id_agreement"] = share = id_agreement(ref, got[name])
            if ref.dtype == np.bool_:  # a comparison's answers: flipped where its input sits near the threshold
                cmp["boolean"] = True
            if is_class_index(ref):
                cmp["top1_agreement"] = share
            failure = "has NaN/inf values" if not cmp["finite"] else _id_failure(ref, share, tolerance)
        else:
            failure = _elementwise_failure(cmp, moved)
            if failure and moved is None and cmp["finite"] and calibrated:
                hint = clipping_hint(ref, got[name], cmp["allowed_abs_error_at_max"])
                failure += f"; {hint}" if hint else ""
        if failure and moved is not None and ref.ndim == 2 and ref.shape[1] >= 256 and calibrated:
            # 8-bit outputs step by 1/256 of their range: most of a 1000-class softmax sits below one step.
            # Only for integer activations: a dynamic-range or float16 file's float output has no such steps.
            failure += (f"; an 8-bit output has 256 levels for {ref.shape[1]} class probabilities: try 16-bit "
                        "activations (tflite-int16x8, onnx-int16x8) or end the model at logits")
        if failure:
            result["failures"].append(f"output {name!r}: {failure}")
        elif cmp.get("violations_without_logit_room", 0) > cmp["allowed_violations"]:
            over = cmp["violations_without_logit_room"]
            result.setdefault("notes", []).append(
                f"output {name!r} holds class probabilities: {over} of {cmp['elements']} moved past the elementwise "
                f"bound, each within what a logit error of {cmp['logit_atol']:g} moves a probability (2 x "
                f"{cmp['logit_atol']:g} x p(1-p): samples the model is unsure of), and the mean moved mass "
                f"{cmp['mean_probability_shift']:.2g} is within {cmp['allowed_mean_shift']:.3g}")
        elif moved is None and "coarse_column" in cmp:
            c = cmp["coarse_column"]
            result.setdefault("notes", []).append(
                f"output {name!r}: column {c['column']} is off by up to {c['max_abs_error']:.3g}, {c['share_of_scale']:.0%} of "
                f"its own scale ({c['scale']:.4g}); it passes because this target's bound is {tolerance.range_atol:g} of the "
                f"whole output's range ({cmp['reference_range']:.4g}). If that column needs more, scale the columns to "
                "similar ranges inside the model, or use a float target")
        elif moved is None and not is_id_output(ref) and cmp["violations_without_noise"] > cmp["allowed_violations"]:
            result.setdefault("notes", []).append(
                f"output {name!r} matches only within the reference's own float32 noise: one-ulp changes of the "
                f"inputs move the reference by up to {cmp['reference_noise']:.3g} ({cmp['reference_noise'] / max(cmp['reference_range'], 1e-30):.2%} "
                f"of its range), so the bound includes {getattr(tolerance, 'noise_multiple', 0.0):g}x that; max abs error "
                f"{cmp['max_abs_error']:.3g}. A badly conditioned model (e.g. random weights) amplifies any rounding"
            )
        if (_is_classification(ref) or names.index(name) == scored) and not is_id_output(ref):  # ids: judged above
            failure = _judge_classes(ref, got[name], cmp, tolerance,
                                     np.shape(labels) if names.index(name) == scored else None,
                                     gated=names.index(name) == scored or is_probabilities(ref))
            if failure and ref is binary and cmp["finite"] and calibrated:  # pinned at a calibration edge: say so
                hint = clipping_hint(ref, got[name], cmp["allowed_abs_error_at_max"])
                failure += f"; {hint}" if hint else ""
            if failure:
                result["failures"].append(f"output {name!r}: {failure}")
            elif (cmp.get("flips") or {}).get("confident"):
                f = cmp["flips"]
                which = (f"the {f['count']} changed answer{'s were' if f['count'] > 1 else ' was'}" if f["confident"] == f["count"]
                         else f"{f['confident']} of the {f['count']} changed answers were")
                result.setdefault("notes", []).append(
                    f"output {name!r}: {which} one{'s' if f['confident'] > 1 else ''} the model was sure of (its top "
                    f"probability led the next by more than {CONFIDENT_LEAD:g}): within the agreement allowed, but more "
                    "than rounding where the model is unsure, unless its scores are far wider than the integer steps; "
                    "check those inputs against the calibration data's range")
    result["failures"] = _said_once(result["failures"])
    # The headline errors are those of value outputs: a class id off by 3 is a flip, counted by agreement.
    valued = [o for o in result["outputs"].values() if o.get("judged_by") != "agreement"] or list(result["outputs"].values())
    # The worst of both batch sizes: an artifact whose batch-1 outputs differ showed a batched 3e-7 here.
    result["max_abs_error"] = max(max(o["max_abs_error"], o.get("max_abs_error_at_batch_1", 0.0)) for o in valued)
    result["mean_abs_error"] = float(np.mean([o["mean_abs_error"] for o in valued]))
    # Target values score a value output: its columns' "top-1" means nothing; another output's may.
    valued = target_output(reference, targets, label_output) if targets is not None and labels is None else None
    headline = names[scored] if scored is not None else _headline_output(names, reference, result["outputs"], valued)
    if "top1_agreement" in result["outputs"][headline] and names.index(headline) != valued:
        result["top1_agreement"] = result["outputs"][headline]["top1_agreement"]
        if len(names) > 1:
            result["top1_output"] = headline
    if scored is not None:
        result["scored_output"] = headline
        per = np.shape(labels)
        ref_acc = float(np.mean(predicted_classes(reference[scored], per) == labels))
        art_acc = float(np.mean(classes_like(reference[scored], got[headline], per) == labels))
        if len(per) > 1:
            result["accuracy_per"] = f"position ({int(np.prod(per[1:]))} labelled positions per sample)"
        drop = (ref_acc - art_acc) * 100
        # ties included (agreement counts them as kept): a report that ranks a file above the model it copies
        # must know how many answers it moved (an fp16 file "more accurate" on one 0.31774 vs 0.31757 tie)
        changed = int(np.count_nonzero(classes_like(reference[scored], got[headline], per)
                                       != predicted_classes(reference[scored], per)))
        result.update({"reference_accuracy": ref_acc, "accuracy": art_acc, "accuracy_drop_points": drop,
                       "changed_answers": changed})
        tied = _tied_flips(reference[scored], got[headline], tolerance, per) if drop > tolerance.max_accuracy_drop + 1e-9 else None
        if tied is not None and tied.any():
            # Answers that moved between classes the model itself scores within the file's bound of each
            # other are ties, as agreement counts them: a random-weight EfficientNet's tfjs-fp16 file (3e-8
            # off, 100 % agreement) failed on one such sample of 100. Integer profiles have no such bound.
            kept = np.where(tied, predicted_classes(reference[scored], per), classes_like(reference[scored], got[headline], per))
            untied = (ref_acc - float(np.mean(kept == labels))) * 100
            if untied <= tolerance.max_accuracy_drop + 1e-9:
                result.setdefault("notes", []).append(
                    f"accuracy {art_acc:.2%} is {drop:.2f} points below the reference {ref_acc:.2%} only on "
                    f"{int(tied.sum())} answer(s) the model itself holds as ties (its top two scores within this "
                    "file's error bound of each other): rounding, not counted against the file")
                drop = untied
        if drop > tolerance.max_accuracy_drop + 1e-9:
            counted = int(np.size(labels))
            step = 100 / max(counted, 1)  # points one changed answer is worth
            # With 64 labels one answer is 1.56 points: the check then fails a file for a single sample,
            # which agreement (98.4 %) accepts. Say so, and how many labels a finer check needs.
            # Only when the drop is that one answer: two lost answers are a drop whatever the resolution.
            coarse = (f"; one changed answer of {counted} labelled {'positions' if len(per) > 1 else 'samples'} is "
                      f"{step:.2f} points, so this check cannot allow one: verify on at least "
                      f"{int(np.ceil(100 / tolerance.max_accuracy_drop))} (--eval-data, or a higher --verify-samples)"
                      if step > tolerance.max_accuracy_drop > 0 and drop <= step + 1e-9 else "")
            # A drop made only of near-ties is said as such, as agreement says it: a dynamic-int8 file of a
            # near-uniform softmax moved 4 answers whose top two scores were 8e-6 apart and was told nothing
            flips = result["outputs"][headline].get("flips") or {}
            unsure = (f"; its {flips['count']} changed answer{'s' if flips['count'] > 1 else ''} were all ones the model "
                      f"is unsure of (its own top two probabilities at most {flips['max_lead']:.2g} apart): rounding where "
                      "the model is unsure, which more labelled samples (--eval-data) average out" if flips.get("count") and not flips.get("confident")
                      and flips["max_lead"] <= NEAR_TIE_LEAD else "")
            result["failures"].append(
                f"accuracy {art_acc:.2%} is {drop:.2f} points below the reference {ref_acc:.2%} "
                f"(allowed: {tolerance.max_accuracy_drop} points{coarse}){unsure}"
            )
    if targets is not None and labels is None:
        _score_targets(result, reference, got, names, targets, label_output)
    if labels is not None and scored is None:
        result.setdefault("notes", []).append(unused_labels(np.shape(labels), names, label_output))
    result["passed"] = not result["failures"]
    return result
