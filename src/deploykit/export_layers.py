"""Layers no target takes whole, written for export as the same computation in plain ops.

- **IntegerLookup** keeps its vocabulary in a TensorFlow hash table. No target takes one: TFLite has no
  builtin kernel for it, tf2onnx has no handler, and a frozen graph (TF.js) leaves out the function
  that fills it. So every target failed on a tabular model with a categorical feature, the common Keras
  recipe. The vocabulary is fixed at inference, so the lookup is written as what it computes: each id
  compared with every key, the matching key's value taken (a sum over the at most one match), the
  table's default where none matches, the mask token's value where it is the mask token.
- **CategoryEncoding** (and IntegerLookup's encoded modes): ``multi_hot`` and ``count`` compute with
  DenseBincount, which TFLite has no kernel for, and ``one_hot`` with OneHot, which TFLite Micro lacks,
  TFLite's int8 file got wrong (its zeros read as 0.5) and tf2onnx half-converted for rank-2 ids. Each
  is written as a comparison of each id with every category, then the maximum (multi_hot) or sum
  (count) over the ids.
- **Discretization** encodes its bucket (one_hot, multi_hot, count) as CategoryEncoding does, so
  multi_hot/count failed every TFLite target and one_hot TFLite's int8 file. The bucket (Bucketize) is
  kept, and encoded as above. (TF.js and ONNX take no Bucketize: ``graph_rewrite.expand_bucketize``
  writes it as comparisons in their frozen graphs. TFLite Micro has no BUCKETIZE and stays refused:
  comparisons there would compare the int8-quantized value, and move ids near a boundary.)

The same holds for tf_keras's layers (which compute every encoding with DenseBincount); their replacements
are tf_keras layers. Only the exported copy of the model carries these layers (``models.export_copy``);
the model as given stays the reference, and every artifact is verified against it. A layer is replaced only when the
replacement gives the same output as the layer itself on a probe (every key, ids beside them, the
dtype's extremes and the mask token; every category and ids past them), in the shape the model gives
it. Hashed out-of-vocabulary buckets (``num_oov_indices > 1``), ``tf_idf`` output, sparse output and
vocabularies over ``MAX_KEYS`` keys keep their table (and the targets' refusals name them).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# Each id is compared with every key: a (..., keys) tensor per call. 65536 int64 keys are 512 KiB of
# constants and of comparisons per id, which still runs on phones; past that a table is the right tool.
MAX_KEYS = 1 << 16


def _encode(ids: Any, depth: int, mode: str, dtype: str) -> Any:
    """one_hot / multi_hot / count of ids as Keras encodes them, written as a comparison of each id with
    every category.

    Not a OneHot op: tf2onnx left a OneHot of rank-2 ids half-converted (the checker refused its four
    inputs), TFLite's int8 ONE_HOT read its zeros as 0.5, TFLite Micro has no ONE_HOT, and DenseBincount
    (multi_hot, count) has no TFLite kernel. Written as 1 - (id != category): TFLite's converter fuses
    Cast(Equal(id, range)) back into ONE_HOT once shapes are static (TFLite Micro's batch of 1).
    int64 ids stay int64 (2**32 + 2, cast to int32, wrapped into category 2; Keras counts it nowhere);
    narrower integers compare as int32 (no int8 constant in TF.js weights, no int8 Equal kernel in TFLite),
    and float ids are truncated first, as Keras does (2.5 is category 2)."""
    import keras
    from keras import ops

    kind = keras.backend.standardize_dtype(ids.dtype)
    if kind != "int64":
        ids = ops.cast(ids, "int32")
        kind = "int32"
    categories = ops.arange(depth, dtype=kind)
    hot = 1 - ops.cast(ops.not_equal(ops.expand_dims(ids, -1), categories), dtype)
    if mode == "one_hot":  # Keras encodes ids of shape (batch, 1) as rows of shape (batch, depth)
        return ops.squeeze(hot, axis=-2) if len(ids.shape) >= 2 and ids.shape[-1] == 1 else hot
    return ops.max(hot, axis=-2) if mode == "multi_hot" else ops.sum(hot, axis=-2)


@functools.lru_cache(maxsize=None)
def _layer_classes(library: str = "keras") -> tuple[type, type, type]:
    """The replacement layer classes as ``library``'s layers (keras, or tf_keras for a tf_keras model),
    defined once it is imported (not at this module's import). They compute with Keras 3's ops either way:
    on the TensorFlow backend those are TensorFlow ops, which a tf_keras layer traces as its own."""
    import importlib

    import keras
    from keras import ops

    base = importlib.import_module(library).layers.Layer

    class TableFreeLookup(base):
        """IntegerLookup's mapping as comparisons against its keys (see the module docstring)."""

        def __init__(self, keys: np.ndarray, values: np.ndarray, default: int, mask: tuple[int, int] | None,
                     output_mode: str, depth: int, output_dtype: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.keys, self.values, self.default, self.mask = keys, values, default, mask
            self.output_mode, self.depth, self.output_dtype = output_mode, depth, output_dtype

        def call(self, ids: Any) -> Any:
            ids = ops.cast(ids, self.keys.dtype)
            match = ops.equal(ops.expand_dims(ids, -1), ops.convert_to_tensor(self.keys))
            # Keys are unique: at most one matches, so the sum of the matched values is the match's value and
            # the count of matches says whether the default applies (no REDUCE_ANY: TFLite Micro lacks it).
            values = ops.convert_to_tensor(self.values)
            matched = ops.sum(ops.cast(match, self.values.dtype), axis=-1)
            looked = ops.sum(ops.where(match, values, ops.zeros_like(values)), axis=-1)
            looked = looked + (1 - matched) * ops.cast(self.default, self.values.dtype)
            if self.mask is not None:
                looked = ops.where(ops.equal(ids, ops.cast(self.mask[0], self.keys.dtype)),
                                   ops.cast(self.mask[1], self.values.dtype), looked)
            return looked if self.output_mode == "int" else _encode(looked, self.depth, self.output_mode, self.output_dtype)

    class ComparedEncoding(base):
        """CategoryEncoding as comparisons of each id with every category (see the module docstring)."""

        def __init__(self, depth: int, output_mode: str, output_dtype: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.depth, self.output_mode, self.output_dtype = depth, output_mode, output_dtype

        def call(self, ids: Any) -> Any:
            return _encode(ids, self.depth, self.output_mode, self.output_dtype)

    class EncodedBuckets(base):
        """Discretization's bucket, encoded as comparisons (see the module docstring)."""

        def __init__(self, boundaries: np.ndarray, output_mode: str, output_dtype: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.boundaries, self.output_mode, self.output_dtype = boundaries, output_mode, output_dtype
            self.depth = boundaries.size + 1

        def call(self, x: Any) -> Any:
            # The bucket stays Bucketize on the float value: TFLite's int8 file keeps that op float, where the
            # same comparisons written out would compare the int8-quantized value (2 % of ids moved a bucket)
            bucket = ops.digitize(x, self.boundaries.tolist())
            return _encode(bucket, self.depth, self.output_mode, self.output_dtype)

    return TableFreeLookup, ComparedEncoding, EncodedBuckets


def for_export(layer: Any) -> tuple[Any, str] | None:
    """The layer that replaces ``layer`` (a Keras 3 or tf_keras layer) in the exported copy, and what it is
    written as; None to keep it."""
    if not type(layer).__module__.startswith(("keras.", "tf_keras.")):  # a user's subclass may compute otherwise
        return None
    if type(layer).__name__ == "IntegerLookup" and (lookup := table_free(layer)) is not None:
        return lookup, (f"comparisons against its {lookup.keys.size} keys (no hash table; each id is compared with "
                        "every key, so the cost grows with the vocabulary)")
    op = "DenseBincount" if _library(layer) == "tf_keras" else _OP.get(getattr(layer, "output_mode", ""))  # tf_keras: all modes
    if type(layer).__name__ == "CategoryEncoding" and (encoding := compared_encoding(layer)) is not None:
        return encoding, f"a comparison of each id with its {encoding.depth} categories (no {op})"
    if type(layer).__name__ == "Discretization" and (buckets := encoded_buckets(layer)) is not None:
        return buckets, f"its bucket id compared with each of its {buckets.depth} buckets (no {op})"
    return None


def _library(layer: Any) -> str:
    """The Keras ``layer`` comes from: its replacement is a layer of the same library."""
    return "tf_keras" if type(layer).__module__.startswith("tf_keras.") else "keras"


# What each Keras 3 CategoryEncoding mode computes with in TensorFlow, which no target (or TFLite's int8) takes
# whole; tf_keras computes every mode with DenseBincount.
_OP = {"one_hot": "OneHot", "multi_hot": "DenseBincount", "count": "DenseBincount"}


def compared_encoding(layer: Any) -> Any | None:
    """A layer computing what a ``CategoryEncoding`` computes (one_hot, multi_hot, count) as comparisons of
    each id with every category; None for sparse output, or when the two disagree on the probe."""
    if layer.output_mode not in _OP or getattr(layer, "sparse", False):
        return None
    depth = int(layer.num_tokens)
    # ids past the categories are counted nowhere (2**32 + 2 too); a negative one only by one_hot (the
    # others' DenseBincount refuses it)
    outside = np.array([depth, depth + 1, 2**32 + 2] + ([-1] if layer.output_mode == "one_hot" else []), np.int64)
    if _library(layer) == "tf_keras":  # it asserts every id is a category: no output to agree with outside them
        outside = np.empty(0, np.int64)
    try:
        replacement = _layer_classes(_library(layer))[1](depth, layer.output_mode, str(layer.compute_dtype), name=layer.name)
        return replacement if _agrees(layer, replacement, np.arange(depth, dtype=np.int64), outside) else None
    except Exception:  # noqa: BLE001 - anything the probe cannot run: keep the layer
        return None


def encoded_buckets(layer: Any) -> Any | None:
    """A layer computing what a ``Discretization`` with an encoded output (one_hot, multi_hot, count)
    computes, its encoding written as comparisons; None for int or sparse output, no boundaries yet, or when
    the two disagree on the probe."""
    if layer.output_mode not in _OP or getattr(layer, "sparse", False) or layer.bin_boundaries is None:
        return None
    bounds = np.asarray(layer.bin_boundaries, np.float32)
    if bounds.ndim != 1 or bounds.size == 0:
        return None
    # each boundary, the floats either side of it, the integers around it, and the values past every boundary
    near = np.concatenate([bounds, np.nextafter(bounds, np.float32(np.inf)), np.nextafter(bounds, np.float32(-np.inf)),
                           np.floor(bounds) - 1, np.floor(bounds), np.ceil(bounds), np.ceil(bounds) + 1])
    far = np.array([np.nan, np.inf, -np.inf, 0.0, 3.0e38, -3.0e38, 2.0**31 - 1, -2.0**31], np.float64)
    try:
        dtype = str(getattr(layer, "output_dtype", None) or layer.compute_dtype)  # tf_keras: no output_dtype
        replacement = _layer_classes(_library(layer))[2](bounds, layer.output_mode, dtype, name=layer.name)
        return replacement if _agrees(layer, replacement, near.astype(np.float64), far) else None
    except Exception:  # noqa: BLE001 - anything the probe cannot run: keep the layer
        return None


def table_free(layer: Any) -> Any | None:
    """A layer computing what the Keras 3 ``IntegerLookup`` ``layer`` computes, without its table; None when
    its options or size are not covered, or the two disagree on the probe."""
    if layer.num_oov_indices > 1 or layer.output_mode == "tf_idf" or getattr(layer, "sparse", False):
        return None
    try:
        keys, values = (np.asarray(t) for t in layer.lookup_table.export())
        default = int(np.asarray(layer.lookup_table.default_value))
    except Exception:  # noqa: BLE001 - not adapted, or a table of another kind: keep the layer
        return None
    if not 0 < keys.size <= MAX_KEYS or keys.ndim != 1:
        return None
    mask = None
    if layer.mask_token is not None:
        # Encoded modes give the mask token an all-zero row: Keras maps it to int64's largest value, which
        # no category equals; -1 says the same to the comparisons, where that value broke ONNX's Gather and
        # TF.js (no int64 constants)
        mask = (int(np.asarray(layer._mask_key)), int(np.asarray(layer._mask_value)) if layer.output_mode == "int" else -1)
    depth = layer.max_tokens if getattr(layer, "pad_to_max_tokens", False) else layer.vocabulary_size()
    try:
        replacement = _layer_classes(_library(layer))[0](keys, values, default, mask, layer.output_mode, int(depth),
                                     str(layer.compute_dtype) if layer.output_mode != "int" else "int64",
                                     name=layer.name)
        if not _agrees(layer, replacement, keys if mask is None else np.append(keys, keys.dtype.type(mask[0])),
                       np.empty(0, keys.dtype) if layer.num_oov_indices == 0 else _beside(keys)):
            return None
    except Exception:  # noqa: BLE001 - anything the probe cannot run: keep the layer
        return None
    return replacement


# Probe at most this many id-key comparisons at once: a 65536-key vocabulary probed in one call built a
# (196608, 65536) comparison and took 14 GB before failing.
PROBE_ELEMENTS = 1 << 22


def _beside(keys: np.ndarray) -> np.ndarray:
    """Ids outside the vocabulary: each key's neighbours (of 4096 keys at most), and the dtype's extremes."""
    info = np.iinfo(keys.dtype)
    some = keys if keys.size <= 4096 else np.random.default_rng(0).choice(keys, 4096, replace=False)
    return np.concatenate([some[some < info.max] + 1, some[some > info.min] - 1,  # no wrapping at the ends
                           np.array([info.min + 1, info.max - 1, 0, -1], keys.dtype)])


def _agrees(layer: Any, replacement: Any, inside: np.ndarray, outside: np.ndarray) -> bool:
    """The two layers give the same output on every id of ``inside`` (keys, categories, the mask token) and
    of ``outside`` (ids they do not hold), in the shape (batch, 1) and in the shape the model gives the layer."""
    probe = np.unique(np.concatenate([inside, outside.astype(inside.dtype)]))
    probes = [probe.reshape(-1, 1)]
    try:  # and in the shape and dtype the model gives it (a one-hot of several ids per sample encodes otherwise)
        shape = [int(d) for d in tuple(layer.input.shape)[1:]]
        given = np.dtype(str(layer.input.dtype))
    except Exception:  # noqa: BLE001 - unknown or unbuilt: the first probe decides
        shape, given = None, None
    if shape is not None and all(d > 0 for d in shape):  # [] for ids of shape (batch,)
        ids = probe
        if given.kind in "iu":  # the ids that dtype can hold
            ids = probe[(probe >= np.iinfo(given).min) & (probe <= np.iinfo(given).max)].astype(given)
        elif given.kind == "f":  # and fractions, which Keras truncates
            ids = np.concatenate([probe, probe[:64] + 0.5, -probe[:64] - 0.5]).astype(given)
        per = int(np.prod(shape))
        ids = np.resize(ids, (-(-ids.size // per)) * per).reshape([-1, *shape])
        try:  # the layer alone may refuse that dtype (DenseBincount takes no int8), which a model's call casts
            layer(ids[:1])
        except Exception:  # noqa: BLE001 - then the ids the layer takes, in that shape
            ids = np.resize(probe, (-(-probe.size // per)) * per).reshape([-1, *shape])
        probes.append(ids)
    width = max(getattr(replacement, "keys", np.empty(1)).size, getattr(replacement, "depth", 1), 1)
    for ids in probes:
        rows = max(1, PROBE_ELEMENTS // (width * max(1, ids[0].size)))
        for at in range(0, len(ids), rows):
            chunk = ids[at:at + rows]
            want, got = np.asarray(layer(chunk)), np.asarray(replacement(chunk))
            if want.shape != got.shape or want.dtype != got.dtype or not np.array_equal(want, got):
                return False
    return True
