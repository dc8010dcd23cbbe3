"""TF.js weight encoding: the ``weightsManifest`` entries and binary shards.

Layout as the TF.js loader reads it (tfjs-core ``io/weights_loader`` and
``decodeWeights``): one weight group, its shard files concatenated in order
form one buffer; each manifest entry takes ``size × bytes-per-element`` bytes
from it in turn. A quantized entry keeps its logical ``dtype`` (float32) and
adds ``quantization``:

* ``{"dtype": "float16"}``: IEEE half floats (kernels within float16's range; vectors stay float32).
* ``{"dtype": "uint8"|"uint16", "min": m, "scale": s}``: the loader computes
  ``q * s + m`` (in JavaScript doubles, stored as float32). Vectors (biases,
  scales, normalization statistics) stay float32.

Affine quantization keeps 0.0 exact whenever the tensor's range contains it
(pruned weights must stay zero): ``min`` is nudged to ``-zero_point * scale``
computed in doubles, so the loader's ``zero_point * scale + min`` is exactly
0.0. The official converter nudges the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.converters import fits_float16, is_vector
from deploykit.errors import ConversionError

DEFAULT_SHARD_BYTES = 4 * 1024 * 1024
QUANT_BITS = {"uint8": 8, "uint16": 16}
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32", np.dtype(np.bool_): "bool"}


@dataclass
class EncodedWeight:
    """One manifest entry plus its bytes."""

    entry: dict[str, Any]
    data: bytes


def quantize_affine(values: np.ndarray, dtype: str) -> tuple[np.ndarray, float, float]:
    """``(q, min, scale)`` such that ``q * scale + min`` approximates ``values``."""
    bits = QUANT_BITS[dtype]
    levels = (1 << bits) - 1
    flat = values.astype(np.float64).ravel()
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 0.0)
    if hi == lo:  # constant tensor: every q is 0 and min carries the value exactly
        return np.zeros(flat.shape, dtype=np.dtype(dtype)).reshape(values.shape), lo, 1.0
    scale = (hi - lo) / levels
    if lo <= 0.0 <= hi:
        zero_point = round(-lo / scale)
        lo = -(zero_point * scale)  # the loader's q*scale + min is then exactly 0 at q == zero_point
    q = np.clip(np.round((flat - lo) / scale), 0, levels).astype(np.dtype(dtype))
    return q.reshape(values.shape), lo, scale


def encode(name: str, value: np.ndarray, weights: str) -> EncodedWeight:
    """Encode one constant for the manifest; float32 tensors are stored as ``weights``."""
    value = np.asarray(value)
    if value.dtype == np.int64:  # TF.js has no int64 tensors; shape/index constants fit in int32
        if value.size and (value.min() < np.iinfo(np.int32).min or value.max() > np.iinfo(np.int32).max):
            raise ConversionError(f"constant {name!r} holds int64 values outside int32, which TF.js cannot represent")
        value = value.astype(np.int32)
    if value.dtype == np.float64:  # TF.js computes DT_DOUBLE in float32 (its graph loader maps it so)
        with np.errstate(over="ignore"):
            narrowed = value.astype(np.float32)
        if np.isfinite(value).all() and not np.isfinite(narrowed).all():
            raise ConversionError(f"constant {name!r} holds float64 values beyond float32's range, which TF.js cannot represent")
        value = narrowed
    if value.dtype not in _DTYPE_NAMES:
        raise ConversionError(f"constant {name!r} has dtype {value.dtype}, which TF.js weights cannot hold (float32, int32, bool)")
    entry: dict[str, Any] = {"name": name, "shape": [int(d) for d in value.shape], "dtype": _DTYPE_NAMES[value.dtype]}
    # Reduced storage for kernels only: one min/scale across a vector of per-channel values with the
    # widest spread in the model (a Normalization mean spanning -100..1900 is off by 4 in every entry
    # at uint8, which failed a tabular model; a mean of 3e5 is inf in float16); vectors are a small
    # share of the bytes. A kernel beyond float16's range stays float32 too.
    if value.dtype != np.float32 or weights == "float32" or (weights in (*QUANT_BITS, "float16") and is_vector(value.shape)) \
            or (weights == "float16" and not fits_float16(value)):
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
    elif weights == "float16":
        entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
        data = value.astype("<f2").tobytes()
    elif weights in QUANT_BITS:
        q, lo, scale = quantize_affine(value, weights)
        entry["quantization"] = {"dtype": weights, "min": lo, "scale": scale, "original_dtype": "float32"}
        data = q.astype(q.dtype.newbyteorder("<")).tobytes()
    else:
        raise ConversionError(f"unknown TF.js weight type {weights!r}; use float32, float16, uint8 or uint16")
    return EncodedWeight(entry, data)


def write_shards(encoded: list[EncodedWeight], directory: Path, shard_bytes: int = DEFAULT_SHARD_BYTES,
                 prefix: str = "group1") -> tuple[list[dict[str, Any]], list[str]]:
    """Write the weights as ``group1-shardKofN.bin`` files; returns (weightsManifest, file names).

    Each shard is written under a temporary name and renamed when complete.
    """
    blob = b"".join(e.data for e in encoded)
    count = max(1, -(-len(blob) // shard_bytes))
    names = [f"{prefix}-shard{i + 1}of{count}.bin" for i in range(count)]
    for i, name in enumerate(names):
        tmp = directory / f".{name}.partial"
        tmp.write_bytes(blob[i * shard_bytes : (i + 1) * shard_bytes])
        tmp.replace(directory / name)
    manifest = [{"paths": names, "weights": [e.entry for e in encoded]}]
    return manifest, names
