"""Layers no target takes, written for export as the same computation in ops every target has.

- **IntegerLookup** keeps its vocabulary in a TensorFlow hash table. No target takes one: TFLite has no
  builtin kernel for it, tf2onnx has no handler, and a frozen graph (TF.js) leaves out the function
  that fills it. So every target failed on a tabular model with a categorical feature, the common Keras
  recipe. The vocabulary is small and fixed at inference, so the lookup is written as what it
  computes: each id compared with every key, the matching key's value taken, the table's default where
  none matches, the mask token's value where it is the mask token.
- **CategoryEncoding** (and IntegerLookup) in ``multi_hot`` or ``count`` mode computes with
  DenseBincount, which TFLite has no builtin kernel for: written as a one-hot of each id, then the
  maximum (multi_hot) or sum (count) over the ids.

Only the exported copy of the model carries these layers (``models.export_copy``); the model as given
stays the reference, and every artifact is verified against it. A layer is replaced only when the
replacement gives the same output as the layer itself on a probe (every key, ids outside the
vocabulary and the mask token; every category), in the shape the model gives it. Hashed
out-of-vocabulary buckets (``num_oov_indices > 1``), ``tf_idf`` output, sparse output and vocabularies
over ``MAX_KEYS`` keys keep their table (and the targets' refusals name them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Each id is compared with every key: a (..., keys) tensor per call. 65536 int64 keys are 512 KiB of
# constants and of comparisons per id, which still runs on phones; past that a table is the right tool.
MAX_KEYS = 1 << 16


def _one_hot_reduce(ids: Any, depth: int, mode: str, dtype: str) -> Any:
    """multi_hot / count of rank-2 ids (batch, k) as a one-hot per id reduced over the ids: no DenseBincount.

    The one-hot is a comparison with every category, not a OneHot op: tf2onnx left a OneHot of rank-2
    ids half-converted (the checker refused its four inputs), and an id outside 0..depth-1 is simply
    counted nowhere on every runtime."""
    from keras import ops

    ids = ops.cast(ids, "int32")
    hot = ops.cast(ops.equal(ops.expand_dims(ids, -1), ops.arange(depth, dtype="int32")), dtype)
    return ops.max(hot, axis=-2) if mode == "multi_hot" else ops.sum(hot, axis=-2)


def _layer_classes() -> tuple[type, type]:
    import keras
    from keras import ops

    class TableFreeLookup(keras.layers.Layer):
        """IntegerLookup's mapping as comparisons against its keys (see the module docstring)."""

        def __init__(self, keys: np.ndarray, values: np.ndarray, default: int, mask: tuple[int, int] | None,
                     output_mode: str, depth: int, output_dtype: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.keys, self.values, self.default, self.mask = keys, values, default, mask
            self.output_mode, self.depth, self.output_dtype = output_mode, depth, output_dtype
            self.encode = (keras.layers.CategoryEncoding(num_tokens=depth, output_mode="one_hot", dtype=output_dtype)
                           if output_mode == "one_hot" else None)

        def call(self, ids: Any) -> Any:
            ids = ops.cast(ids, self.keys.dtype)
            match = ops.equal(ops.expand_dims(ids, -1), ops.convert_to_tensor(self.keys))
            # Keys are unique: at most one match, so the sum of matched values is the match's value.
            values = ops.convert_to_tensor(self.values)
            found = ops.any(match, axis=-1)
            looked = ops.sum(ops.where(match, values, ops.zeros_like(values)), axis=-1)
            looked = ops.where(found, looked, ops.cast(self.default, self.values.dtype))
            if self.mask is not None:
                looked = ops.where(ops.equal(ids, ops.cast(self.mask[0], self.keys.dtype)),
                                   ops.cast(self.mask[1], self.values.dtype), looked)
            if self.output_mode in ("multi_hot", "count"):
                return _one_hot_reduce(looked, self.depth, self.output_mode, self.output_dtype)
            return looked if self.encode is None else self.encode(looked)

    class BincountFreeEncoding(keras.layers.Layer):
        """CategoryEncoding's multi_hot / count without DenseBincount (see the module docstring)."""

        def __init__(self, depth: int, output_mode: str, output_dtype: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.depth, self.output_mode, self.output_dtype = depth, output_mode, output_dtype

        def call(self, ids: Any) -> Any:
            return _one_hot_reduce(ids, self.depth, self.output_mode, self.output_dtype)

    return TableFreeLookup, BincountFreeEncoding


def for_export(layer: Any) -> tuple[Any, str] | None:
    """The layer that replaces ``layer`` in the exported copy, and what it is written as; None to keep it."""
    if not type(layer).__module__.startswith("keras."):  # a user's subclass may compute otherwise
        return None
    if type(layer).__name__ == "IntegerLookup" and (lookup := table_free(layer)) is not None:
        return lookup, f"comparisons against its {lookup.keys.size} keys (no hash table)"
    if type(layer).__name__ == "CategoryEncoding" and (encoding := bincount_free(layer)) is not None:
        return encoding, f"a one-hot per id, then its {'maximum' if layer.output_mode == 'multi_hot' else 'sum'} (no DenseBincount)"
    return None


def bincount_free(layer: Any) -> Any | None:
    """A layer computing what a ``CategoryEncoding`` in multi_hot or count mode computes, without
    DenseBincount; None for other modes, sparse output, or when the two disagree on the probe."""
    if layer.output_mode not in ("multi_hot", "count") or getattr(layer, "sparse", False):
        return None
    depth = int(layer.num_tokens)
    try:
        replacement = _layer_classes()[1](depth, layer.output_mode, str(layer.compute_dtype), name=layer.name)
        return replacement if _agrees(layer, replacement, np.arange(depth, dtype=np.int64), None, strict=True) else None
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
        mask = (int(np.asarray(layer._mask_key)), int(np.asarray(layer._mask_value)))
    depth = layer.max_tokens if getattr(layer, "pad_to_max_tokens", False) else layer.vocabulary_size()
    try:
        replacement = _layer_classes()[0](keys, values, default, mask, layer.output_mode, int(depth),
                                     str(layer.compute_dtype) if layer.output_mode != "int" else "int64",
                                     name=layer.name)
        if not _agrees(layer, replacement, keys, mask, strict=layer.num_oov_indices == 0):
            return None
    except Exception:  # noqa: BLE001 - anything the probe cannot run: keep the layer
        return None
    return replacement


def _agrees(layer: Any, replacement: Any, keys: np.ndarray, mask: tuple[int, int] | None, strict: bool) -> bool:
    """The two layers give the same output on every key, ids beside them, and the mask token.
    ``strict``: ids outside ``keys`` are not probed (a lookup with ``num_oov_indices=0`` refuses them,
    DenseBincount fails on negative ones)."""
    # Ids outside the vocabulary: the smallest and largest representable values, and neighbours of keys.
    info = np.iinfo(keys.dtype)
    near = [keys] if strict else [keys, keys[keys < info.max] + 1, keys[keys > info.min] - 1,  # no wrapping
                                  np.array([info.min + 1, info.max - 1, 0, -1], keys.dtype)]
    probe = np.unique(np.concatenate(near + ([np.array([mask[0]], keys.dtype)] if mask else [])))
    probes = [probe.reshape(-1, 1)]
    try:  # and in the shape the model gives it (a one-hot of several ids per sample encodes otherwise)
        shape = [int(d) for d in tuple(layer.input.shape)[1:]]
    except Exception:  # noqa: BLE001 - unknown or unbuilt: the first probe decides
        shape = None
    if shape is not None and all(d > 0 for d in shape):  # [] for ids of shape (batch,)
        per = int(np.prod(shape))
        probes.append(np.resize(probe, (-(-probe.size // per)) * per).reshape([-1, *shape]))
    for ids in probes:
        want, got = np.asarray(layer(ids)), np.asarray(replacement(ids))
        if want.shape != got.shape or want.dtype != got.dtype or not np.array_equal(want, got):
            return False
    return True
