"""Datasets for calibration and evaluation, checked against the model's inputs.

Accepted forms (CLI and API alike):

* a path to an ``.npz`` file with ``x`` (and ``y`` for labels); a model with
  several inputs uses one key per input name (or ``x0``, ``x1`` ...);
* an array, a tuple ``(x, y)``, a dict ``{"x": ..., "y": ...}`` (or with the keys an
  ``.npz`` takes), or a list of arrays for a multi-input model;
* a callable returning any of the above.

Everything is validated up front — non-empty, numeric, finite, shapes that
fit the model's inputs, labels that match the samples — so a bad file fails
before anything is converted or written.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deploykit.errors import DataError, missing


@dataclass
class Dataset:
    """Samples for a model: one array per model input, optional integer labels
    (or, loaded with ``targets=True`` for a regression fine-tune, float target values)."""

    x: list[np.ndarray]
    y: np.ndarray | None
    source: str
    one_hot_classes: int | None = None  # labels given one-hot: over how many classes
    targets: np.ndarray | None = None  # regression target values, when 'y' are not class labels (scored by error)

    def __len__(self) -> int:
        return len(self.x[0])

    def spread(self, n: int) -> "Dataset":
        """``n`` samples evenly spaced over the whole set, first and last included (all when fewer).

        Calibration and verification subsets: data saved class by class (or sorted by
        any value) would otherwise give int8 calibration only the first classes' ranges.
        """
        if n >= len(self):
            return self
        idx = np.linspace(0, len(self) - 1, n).round().astype(np.int64)
        return Dataset([a[idx] for a in self.x], None if self.y is None else self.y[idx], self.source, self.one_hot_classes,
                       None if self.targets is None else self.targets[idx])

    def take(self, n: int) -> "Dataset":
        """The first ``n`` samples (all when fewer)."""
        return Dataset([a[:n] for a in self.x], None if self.y is None else self.y[:n], self.source, self.one_hot_classes,
                       None if self.targets is None else self.targets[:n])

    def distinct(self, stop: int) -> int:
        """How many different samples (inputs alike in every array) there are, counted up to ``stop``:
        50 copies of one sample verified at 100 % without the few-samples warning 1 sample gets."""
        import hashlib

        seen: set[bytes] = set()
        for i in range(len(self)):
            seen.add(hashlib.blake2b(b"".join(np.ascontiguousarray(a[i]).tobytes() for a in self.x)).digest())
            if len(seen) >= stop:
                break
        return len(seen)

    def batches(self, size: int):
        """Yield lists of per-input arrays of at most ``size`` samples."""
        for start in range(0, len(self), size):
            yield [a[start : start + size] for a in self.x]


def _shape_str(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _from_npz(path: Path, input_names: list[str], labels: bool = True) -> tuple[list[np.ndarray], np.ndarray | None]:
    if not path.exists():
        raise DataError(f"data file {path} {missing(path)}; check the path")
    if path.is_dir():
        raise DataError(f"data {path} is a directory; pass an .npz file saved with np.savez(path, x=..., y=...)")
    if not path.is_file():  # a pipe (<(cat d.npz)) is read twice here and came out "not a zip"; one with no writer hangs
        raise DataError(f"data {path} is not a regular file (a pipe or a device); save the data to an .npz file and pass that")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # .npz is a zip archive (an empty one: np.savez(path))
        raise DataError(f"{path}: not an .npz file (not a zip archive); save data with np.savez(path, x=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            if {"config.json", "metadata.json"} <= set(files):  # a .keras archive is a zip too
                raise DataError(f"{path} is a Keras model file, not data; pass an .npz saved with np.savez(path, x=..., y=...)")
            keys = _keys_used(files, input_names)
            if not labels:  # a benchmark's inputs: 'y' (pickled, or anything) is not read
                keys = [k for k in keys if k != "y" or k in input_names]
            _check_expanded_size(path, npz.zip, keys)
            arrays = {k: _read_member(npz, k, path) for k in keys}
            for k, value in arrays.items():
                if isinstance(value, bytes):  # numpy hands back a member that is not an .npy array as raw bytes
                    raise DataError(f"{path}: member {k!r} is not a NumPy array (.npy); save data with np.savez(path, x=..., y=...)")
            if labels and "y" not in files:  # keys labels may have been saved under instead: read to refuse them
                for k in (k for k in files if (k.lower() in _LABEL_LIKE or _PER_OUTPUT.match(k)) and k not in arrays):
                    with contextlib.suppress(ValueError):  # pickled metadata: not labels, not read
                        arrays[k] = npz[k]
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{path}: holds Python objects (pickled); save plain numeric arrays with np.savez") from None
        # numpy's header parser said "malformed node or string on line 1: <ast.Name object at 0x7f..>"
        why = "a corrupt .npy header" if "malformed node" in str(exc) else re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "…", str(exc))
        raise DataError(f"{path}: not a readable .npz file ({why}); save data with np.savez(path, x=..., y=...)") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); save data with np.savez(path, x=..., y=...)") from None
    return _from_keys(arrays, input_names, str(path), files, labels=labels)


def _from_keys(arrays: dict[str, Any], input_names: list[str], where: str, keys: Sequence[Any],
               x_forms: str = "", labels: bool = True) -> tuple[list[Any], Any]:
    """The input arrays and labels of an .npz's keys or a data dict's, by one rule: ``x`` for a single
    input, one key per input name, or ``x0``, ``x1`` ... in the model's input order; ``y`` the labels
    (``labels=False``: inputs only, other keys not looked at)."""
    _refuse_two_sources(arrays, input_names, where)
    if labels:
        _refuse_stray_labels(arrays, input_names, where, keys)
    numbered = [f"x{i}" for i in range(len(input_names))]
    if "y" in input_names and all(n in arrays for n in input_names) and not all(n in arrays for n in numbered):
        # an input named 'y': keyed by input name, 'y' is that input (labels then need x0, x1... keys)
        return [arrays[n] for n in input_names], None
    arrays = dict(arrays)
    y = arrays.pop("y", None)
    if len(input_names) == 1 and "x" in arrays:
        return [arrays["x"]], y
    if all(n in arrays for n in input_names):
        return [arrays[n] for n in input_names], y
    if all(n in arrays for n in numbered):
        if f"x{len(input_names)}" in arrays:  # one array more than the model has inputs: which one is extra?
            raise DataError(f"{where}: has keys x0..x{len(input_names)} or more but the model "
                            f"takes {len(input_names)} input(s) ({', '.join(map(repr, input_names))}); keep one array per input")
        return [arrays[n] for n in numbered], y
    want = (f"'x' (or the input's name, {input_names[0]!r})" if len(input_names) == 1 else
            f"one key per input ({', '.join(map(repr, input_names))}) or {', '.join(numbered)}{x_forms}")
    shown = ", ".join(map(repr, sorted(keys, key=str))) or "none"
    raise DataError(f"{where}: has keys {shown} but needs {want} (and optionally 'y' for labels)")


def _refuse_two_sources(arrays: Any, input_names: list[str], where: str) -> None:
    """Refuse 'x' beside a key named after one of the model's inputs: 'x' was read and the other ignored
    without a word, so a run could verify on other arrays than the user meant. (An input named 'y' is
    ruled on elsewhere: its key is that input.)"""
    named = [n for n in input_names if n in arrays and n != "y"]
    if not named:
        return
    # x0, x1 ... beside input names were ignored without a word, where 'x' beside them was refused
    other = [k for k in ["x", *(f"x{i}" for i in range(len(input_names)))] if k in arrays and k not in input_names]
    if other:
        raise DataError(f"{where}: has both {', '.join(map(repr, other))} and {', '.join(map(repr, named))} (the model's "
                        f"input name{'s' if len(named) > 1 else ''}): it is not clear which holds the inputs; keep one of them")


# Keys people save labels under (case aside) that are not 'y'.
_LABEL_LIKE = {"y", "label", "labels", "target", "targets", "y_true", "ys", "class", "classes"}
# Keys of labels saved per output of a multi-output model: y_<output>, y0, y1...
_PER_OUTPUT = re.compile(r"^[yY](_\w+|\d+)$")


def _refuse_stray_labels(arrays: Any, input_names: list[str], where: str, keys: Sequence[Any]) -> None:
    """Labels saved under another key than 'y' ('labels', 'Y'...) were read as no labels: the run went on
    without its accuracy check. Only numbers with one entry per sample count: class names or other
    metadata under such a key are the user's business. Labels per output (``y_cls``, ``y0``) are said
    once the inputs are found (``x_test``/``y_test`` is told its ``x`` is missing first)."""
    if "y" in keys:
        return
    numbered = [f"x{i}" for i in range(len(input_names))]
    found_inputs = ((len(input_names) == 1 and "x" in arrays) or all(n in arrays for n in input_names)
                    or all(n in arrays for n in numbered))
    first = next((arrays[k] for k in ("x", *input_names, "x0") if k in arrays), None)
    n = len(first) if isinstance(first, np.ndarray) and first.ndim else None  # samples, when plain to see
    def numbers_per_sample(k: Any) -> bool:
        value = np.asarray(arrays[k]) if not isinstance(arrays[k], np.ndarray) else arrays[k]
        return value.dtype.kind in "biuf" and value.ndim >= 1 and (n is None or len(value) == n)

    candidates = [k for k in keys if k in arrays and k not in input_names and numbers_per_sample(k)]
    for k in candidates:
        if str(k).lower() in _LABEL_LIKE:
            raise DataError(f"{where}: has {k!r} but no 'y': labels (or target values) go under the key 'y' "
                            "(np.savez(path, x=..., y=...), or {'x': ..., 'y': ...})")
    per_output = [k for k in candidates if _PER_OUTPUT.match(str(k))]
    if per_output and found_inputs:  # y_cls, y_reg / y0, y1: one label array per output, which a run does not read
        raise DataError(f"{where}: has {', '.join(map(repr, per_output))} but no 'y': a run scores one output, on labels "
                        "under the key 'y' (name the output they belong to with --label-output)")


def _keys_used(files: Sequence[str], input_names: list[str]) -> list[str]:
    """The keys of an .npz that loading reads: y and the input arrays (others are never decompressed)."""
    if len(input_names) == 1 and "x" in files:  # an unused x1 (metadata, pickled) was read and refused the file
        wanted = {"y", "x", *input_names}
    elif all(n in files for n in input_names):
        wanted = {"y", *input_names}
    else:
        wanted = {"y", "x", *input_names, *(f"x{i}" for i in range(len(input_names) + 1))}
    return [k for k in files if k in wanted]


def _read_member(npz: Any, key: str, path: Path) -> Any:
    """One array of an .npz; a pickled one is refused by its key (the file's other keys may be fine)."""
    try:
        return npz[key]
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise
        hint = " (labels as text? map them to class indices 0..N-1)" if key == "y" else ""
        raise DataError(f"{path}: {key!r} holds Python objects (pickled){hint}; save plain numeric arrays with "
                        "np.savez") from None


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil's ``available``), or None when unknown."""
    import psutil

    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


def check_allocation(nbytes: int, what: str, way_out: str) -> None:
    """Refuse, before allocating it, an array of ``nbytes`` that would not fit in free memory.

    ``what`` names the array (it is followed by "would need N GiB") and ``way_out`` says what to do
    instead. An input dimension of 2**31 made numpy try 128 GiB of random samples and end the run
    with a MemoryError traceback (or the OOM killer).

    Raises:
        DataError: ``nbytes`` is over 80 % of the memory available now.
    """
    available = _available_memory()
    if available is not None and nbytes > 0.8 * available:
        raise DataError(f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's free memory "
                        f"({available / 2**30:.1f} GiB) allows; {way_out}")


def _check_expanded_size(path: Path, archive: Any, keys: list[str]) -> None:
    """Refuse an .npz whose arrays would not fit in memory once decompressed, before decompressing them.

    A 3 MB file can hold gigabytes of zeros; loading it got the process OOM-killed (or, under a
    memory limit, a numpy traceback).
    """
    sizes = {info.filename: info.file_size for info in archive.infolist()}
    total = sum(sizes.get(f"{k}.npy", 0) for k in keys)
    available = _available_memory()
    if available is not None and total > 0.8 * available:
        raise DataError(f"{path}: its arrays expand to {total / 2**30:.1f} GiB, more than this machine's free memory "
                        f"({available / 2**30:.1f} GiB) allows; pass fewer samples (calibration reads 200, "
                        "verification up to --verify-samples)")


def _inputs_of(x: Any, input_names: list[str]) -> list[Any]:
    """``x`` as one array per model input: a list/tuple in input order, a dict keyed by input name
    (as ``model.fit`` takes a dict-input model's), or one array."""
    if isinstance(x, dict):
        missing = [n for n in input_names if n not in x]
        if missing:
            raise DataError(f"data: x is a dict with keys {sorted(x)}; it needs one array per model input, keyed "
                            f"{', '.join(input_names)} (missing {', '.join(missing)})")
        return [x[n] for n in input_names]
    if isinstance(x, (list, tuple)):
        if len(input_names) == 1 and not (len(x) == 1 and isinstance(x[0], np.ndarray)):
            return [x]  # a one-input model's rows (x.tolist(), one row too), not one array per input ([x])
        return list(x)
    return [x]


def _split(obj: Any, input_names: list[str], labels: bool = True) -> tuple[list[Any], Any]:
    if isinstance(obj, dict):
        # x may hold a multi-input model's arrays as a list or dict, as model.fit takes them; unless the
        # model has an input named x and the dict keys every input by name, as an .npz's are read
        if "x" in obj and not (len(input_names) > 1 and "x" in input_names and all(n in obj for n in input_names)):
            _refuse_two_sources(obj, input_names, "data dict")
            if labels:
                _refuse_stray_labels(obj, input_names, "data dict", list(obj))
            return _inputs_of(obj["x"], input_names), obj.get("y")
        # the rest as an .npz's keys are read (x0, x1 ... included)
        return _from_keys(obj, input_names, "data dict", list(obj), " (or 'x': a list or dict of them)", labels)
    if isinstance(obj, tuple):
        if len(obj) not in (1, 2):
            raise DataError(f"data tuple has {len(obj)} items; pass (x, y) or (x,), with x one array per model input")
        x, y = obj if len(obj) == 2 else (obj[0], None)
        if len(obj) == 2 and len(input_names) > 1 and not isinstance(x, (list, tuple, dict)):
            # (img, meta) for a two-input model: the second array would be taken for labels
            raise DataError(f"data is a 2-tuple, which is read as (x, y), and its x is one array but the model takes "
                            f"{len(input_names)} inputs ({', '.join(input_names)}); pass the inputs as a list "
                            f"[{', '.join(input_names)}] or a dict, and labels as ([{', '.join(input_names)}], y)")
        return _inputs_of(x, input_names), y
    if isinstance(obj, list) and len(input_names) == 1 and len(obj) == 2 and not _same_shape(obj):
        raise DataError("data is a list of 2 arrays of different shapes for a model with one input; "
                        "pass (x, y) as a tuple for inputs and labels, or x alone")
    if isinstance(obj, list) and (len(input_names) > 1 or (len(obj) == 1 and isinstance(obj[0], np.ndarray))):
        return obj, None  # one array per input, as Keras takes them ([x] for a single input too)
    return [obj], None


def _same_shape(items: list[Any]) -> bool:
    """The items stack into one array (a list of samples), unlike [x, y]."""
    return len({np.shape(v) for v in items if isinstance(v, np.ndarray)} | {None for v in items if not isinstance(v, np.ndarray)}) <= 1


def load_data(spec: Any, inputs: Sequence[Any], *, role: str = "data", targets: bool = False,
              labels: bool = True, positions: Mapping[tuple[int, ...], bool] | None = None) -> Dataset:
    """Load and validate a dataset for a model with the given input specs.

    Args:
        spec: Path to an ``.npz``, arrays, ``(x, y)``, dict, or a callable returning one.
        inputs: The model's input specs (``name``, ``shape``, ``dtype``).
        role: Word used in error messages (``data``, ``eval data``).
        targets: ``y`` holds the values a regression model is trained to output (float32,
            kept as given), not class labels. Only fine-tuning data is read this way:
            verification compares a regression model's outputs with the reference's.
        labels: Whether labels matter (False for a benchmark's inputs: keys that look like
            labels saved under another name are not refused).
        positions: The positions (steps, pixels: an output's shape between samples and classes) at which
            the model's outputs give a class (:func:`class_positions`). 0/1 labels of such a shape are a
            class per position (a tagger's tags), not one-hot or multi-hot rows of one class per sample.

    Returns:
        A validated :class:`Dataset`, inputs cast to the model's dtypes.

    Raises:
        DataError: empty, non-numeric, non-finite data; shapes or dtypes that do
            not fit the inputs; labels that do not match the samples.
    """
    try:
        return _load_data(spec, inputs, role, targets, labels, positions)
    except MemoryError:  # a file or array too large for this machine (or its memory limit)
        where = f"{role} {spec}" if isinstance(spec, (str, Path)) else role
        raise DataError(f"{where}: the data does not fit in this machine's memory; pass fewer samples "
                        "(calibration reads 200, verification up to --verify-samples)") from None


def _load_data(spec: Any, inputs: Sequence[Any], role: str, targets: bool, labels: bool = True,
               positions: Mapping[tuple[int, ...], bool] | None = None) -> Dataset:
    names = [s.name for s in inputs]
    if callable(spec) and not isinstance(spec, (np.ndarray, str, Path)):
        spec = spec()
    _refuse_streams(spec, role)
    if isinstance(spec, (str, Path)):
        source = str(spec)
        xs, y = _from_npz(Path(os.path.expanduser(spec)), names, labels)
    else:
        source = f"<in-memory {role}>"
        xs, y = _split(spec, names, labels)
    if not labels:
        y = None  # a benchmark's inputs: whatever 'y' holds is not read
    where = f"{role} {source}"
    if len(xs) != len(inputs):
        raise DataError(f"{where}: has {len(xs)} input array(s) but the model takes {len(inputs)} ({', '.join(names)})")
    out: list[np.ndarray] = []
    for arr, spec_i in zip(xs, inputs):
        try:
            arr = np.asarray(arr)
        except ValueError as exc:  # ragged nested lists
            raise DataError(f"{where}: input {spec_i.name!r} is not a rectangular array ({exc})") from None
        out.append(_check_input(arr, spec_i, where, role))
    n = len(out[0])
    if any(len(a) != n for a in out):
        counts = ", ".join(f"{s.name!r} {len(a)}" for s, a in zip(inputs, out))
        raise DataError(f"{where}: the inputs have different numbers of samples ({counts}); each sample needs a row "
                        "in every input array, in the same order")
    if isinstance(y, dict):  # Keras's per-output form: np.asarray made it a 0-d object ("a single value")
        raise DataError(f"{where}: labels 'y' are a dict (keys {', '.join(map(repr, sorted(y, key=str)))}), one array per "
                        "output; labels score one output: pass that output's labels as 'y' and name the output with "
                        "--label-output")
    y = None if y is None else np.asarray(y)
    if targets:
        return Dataset(out, None if y is None else _check_targets(y, n, where), source)
    labels = None if y is None else _check_labels(y, n, where, positions)
    one_hot = int(y.shape[-1]) if y is not None and labels is not None and y.ndim == labels.ndim + 1 and y.shape[-1] > 1 else None
    return Dataset(out, labels, source, one_hot)


# What each role's data is for, said when it holds NaN/inf (a benchmark's input is not calibration data).
_NEEDS_FINITE = {"bench data": "a benchmark input needs", "train data": "fine-tuning needs"}


def _check_input(arr: np.ndarray, spec: Any, where: str, role: str = "data") -> np.ndarray:
    label = f"{where}: input {spec.name!r}"
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{label} has dtype {arr.dtype}, not numeric; pass numbers ({spec.dtype})")
    if arr.ndim == 0:
        raise DataError(f"{label} is a single number, not an array of samples; pass one array of shape "
                        f"{_shape_str(tuple(spec.shape))} (samples first)")
    if arr.shape[0] == 0:
        raise DataError(f"{label} is empty; pass at least one sample")
    shape = tuple(spec.shape)
    if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape[1:], arr.shape[1:])):
        raise DataError(
            f"{label} has shape {_shape_str(arr.shape)} but the model expects {_shape_str(shape)} "
            "(first dimension = samples); reshape the data to fit"
        )
    want = np.dtype(spec.dtype) if spec.dtype not in ("", "None") else np.dtype("float32")
    if want.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(want, copy=False)  # check after the cast: 1e300 in float64 is inf in float32
        if not np.isfinite(cast).all():
            bad = int((~np.isfinite(cast)).sum())
            raise DataError(
                f"{label} contains {bad} NaN/inf value(s) (after casting to {want}); "
                f"{_NEEDS_FINITE.get(role, 'calibration and evaluation need')} finite numbers — clean or drop those samples"
            )
        return cast
    if arr.dtype.kind == "f":
        raise DataError(f"{label} is float ({arr.dtype}) but the model input is {want}; pass integer data")
    if want.kind in "iu" and arr.dtype.kind in "iu" and arr.size:
        lo, hi = np.iinfo(want).min, np.iinfo(want).max  # a cast would wrap: 300 -> 44 in uint8
        low, high = arr.min(), arr.max()
        if int(low) < lo or int(high) > hi:
            bad = int(high) if int(high) > hi else int(low)
            raise DataError(f"{label} holds {bad}, outside {want}'s {lo}..{hi}; pass values the input can hold")
    return arr.astype(want, copy=False)


def _one_hot_rows(y: np.ndarray) -> np.ndarray | None:
    """Per-row count of ones along the last axis when every value is 0 or 1, else None."""
    if y.dtype.kind in "biuf" and y.size and np.isin(y, (0, 1)).all():
        return np.count_nonzero(y, axis=-1)
    return None


def _refuse_streams(spec: Any, role: str) -> None:
    """tf.data datasets, generators and iterators are streams, not arrays: said so, with the way to arrays.

    numpy turned them into a 0-d object array, and the message blamed a dtype ("object, not numeric").
    """
    import inspect

    kind = type(spec).__module__ + "." + type(spec).__name__
    tf_dataset = "tensorflow" in kind and "Dataset" in kind
    # keras.utils.PyDataset / tf_keras Sequence: batches by index, which numpy read as a ragged array
    batches = any(c.__name__ in ("PyDataset", "Sequence") and "keras" in c.__module__ for c in type(spec).__mro__)
    if tf_dataset or batches or inspect.isgenerator(spec) or (
            hasattr(spec, "__next__") and not isinstance(spec, (np.ndarray, str, bytes))):
        raise DataError(
            f"{role}: a {type(spec).__name__} is a stream; pass arrays: (x, y), a dict or an .npz "
            "(e.g. x = np.concatenate([b for b, _ in ds]) from a tf.data batch stream)"
        )


def _check_targets(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Regression targets: finite numbers, one row per sample, as float32."""
    if y.ndim == 0:
        raise DataError(f"{where}: targets 'y' is a single value; pass one target row per sample ({n})")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: targets 'y' are {y.dtype}, not numbers; pass the values the model should output")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise DataError(f"{where}: targets 'y' hold NaN or inf (or values beyond float32); clean or drop those samples")
    if len(y) != n:
        raise DataError(f"{where}: has {n} samples but {len(y)} targets in 'y'; they must match")
    return y


def class_positions(output_shapes: Sequence[Sequence[int | None]]) -> dict[tuple[int, ...], bool]:
    """The positions at which outputs give a class, each with whether another output also gives one of
    as many classes per sample: {(20,): False} for outputs (None, 20, 2); {(6,): True} for (None, 6, 2)
    beside (None, 6), where one-hot rows stay one class per sample (the class head's labels), as before."""
    per_sample = {tuple(shape[1:]) for shape in output_shapes if len(shape) == 2}
    return {tuple(shape[1:-1]): tuple(shape[1:-1]) in per_sample for shape in output_shapes
            if len(shape) >= 3 and None not in shape[1:] and (shape[-1] or 0) >= 2}


def _per_position(y: np.ndarray, positions: Mapping[tuple[int, ...], bool]) -> bool:
    """Whether 2-D 0/1 rows are a class per position (a tagger's tags) rather than one-hot or multi-hot
    rows of one class per sample: an output gives a class at those positions, and no output of as many
    classes per sample takes them as one-hot rows instead."""
    key = tuple(y.shape[1:])
    if key not in positions:
        return False
    ones = _one_hot_rows(y)
    return not (positions[key] and ones is not None and (ones == 1).all())


def _check_labels(y: np.ndarray, n: int, where: str, positions: Mapping[tuple[int, ...], bool] | None = None) -> np.ndarray:
    """Class indices: (N,) one per sample, or (N, *S) one per position (pixels, steps).

    One-hot rows (and soft labels summing to 1) become the index of their largest
    entry; a trailing axis of 1 is dropped. Integer arrays of higher rank are a
    class per position, scored against an output that gives one there.
    """
    if y.ndim == 0:
        raise DataError(f"{where}: labels 'y' is a single value; pass one label per sample ({n})")
    if y.dtype.kind in "USO":  # class names: the model's outputs are indexed, not named
        raise DataError(f"{where}: labels 'y' are {'text' if y.dtype.kind in 'US' else 'Python objects'} (e.g. "
                        f"{str(y.flat[0])[:30]!r}), not class indices; map them to the indices of the model's output "
                        "columns (0..classes-1) in the order it was trained with")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.isfinite(y).all()):
        raise DataError(f"{where}: labels 'y' must be finite class indices (or one-hot rows)")
    if y.ndim >= 2 and y.shape[-1] == 1:
        y = y[..., 0]
    elif y.ndim == 2 and y.shape[1] > 1 and not _per_position(y, positions or {}):
        ones = _one_hot_rows(y)
        soft = y.dtype.kind == "f" and y.min() >= 0 and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
        if ones is not None and (ones != 1).any():
            row = int(np.flatnonzero(ones != 1)[0])
            raise DataError(
                f"{where}: labels 'y' have rows with {int(ones[row])} ones (e.g. row {row}), not one-hot: multi-label "
                "tags cannot be scored as one class per sample; leave 'y' out (outputs are still compared)"
            )
        if ones is not None or soft:  # one-hot or soft labels: the class is the largest entry
            y = y.argmax(axis=1)
        # else whole numbers per step (a tagger's labels): checked below, kept per position
    elif y.ndim >= 3:
        ones = _one_hot_rows(y)
        if ones is not None and (ones == 1).all():  # one-hot per pixel, as categorical_crossentropy takes them
            y = y.argmax(axis=-1)
    if len(y) != n:
        raise DataError(f"{where}: has {n} samples but {len(y)} labels in 'y'; they must match")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise DataError(f"{where}: labels 'y' are not whole numbers; labels score classification "
                        "accuracy, so pass class indices (a regression model's target values are scored when it is "
                        "compiled with a regression loss such as mse, or with none and 'y' fit its output; else leave 'y' out)")
    if y.dtype.kind != "b" and y.size and y.min() < 0:
        raise DataError(f"{where}: labels 'y' contain negative class index {int(y.min())}; pass indices 0..classes-1")
    if y.size and y.dtype.kind in "uf" and y.max() > np.iinfo(np.int64).max:  # a uint64 -1 would wrap to -1
        raise DataError(f"{where}: labels 'y' hold {y.max()}, not a class index; pass indices 0..classes-1")
    return y.astype(np.int64)


def as_one_hot(data: Dataset) -> Dataset | None:
    """Labels read as a class per position that are one-hot rows (given as (N, C, 1), whose trailing
    axis was dropped) read as one class per sample instead; None when they are not one-hot rows.
    Called when no output has those positions, so the per-sample reading is the only one that fits."""
    y = data.y
    if y is None or y.ndim != 2 or y.shape[1] < 2:
        return None
    ones = _one_hot_rows(y)
    if ones is None or (ones != 1).any():
        return None
    return replace(data, y=y.argmax(axis=1), one_hot_classes=int(y.shape[1]))


def check_label_range(data: Dataset, classes: int | None) -> None:
    """Refuse labels that the model's classification output cannot produce (they would skew accuracy)."""
    if data.y is None or not classes or len(data.y) == 0:
        return
    if data.one_hot_classes and data.one_hot_classes != classes:
        raise DataError(
            f"{data.source}: labels 'y' are one-hot over {data.one_hot_classes} classes but the model outputs {classes}; "
            "pass labels for the model's classes"
        )
    top = int(data.y.max())
    if top >= classes:
        raise DataError(
            f"{data.source}: label {top} is out of range for a model with {classes} output classes; "
            "labels must be class indices 0..classes-1"
        )
