"""Matching caller inputs to an artifact's input tensors, shared by every runner."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from deploykit.errors import RuntimeLoadError


def match_inputs(names: list[str], inputs: Mapping[str, np.ndarray], artifact: str) -> dict[str, np.ndarray]:
    """Inputs keyed by the artifact's names: by name, or by position when the names differ
    but the counts match (a converter may rename inputs; order is what they keep)."""
    if set(inputs) == set(names):
        return dict(inputs)
    if len(inputs) != len(names):
        raise RuntimeLoadError(f"{artifact} takes inputs {names}, got {list(inputs)}")
    return dict(zip(names, inputs.values()))


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as an input tensor of ``detail`` (``dtype``, ``quantization`` = (scale, zero point)) takes it:
    real values quantized and clipped for an integer tensor with a scale, otherwise cast."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu" or np.asarray(x).dtype == dtype:
        return np.asarray(x, dtype=dtype)
    scale, zero = detail["quantization"]
    if not scale:
        return np.asarray(x).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, np.float32) / scale + zero), info.min, info.max).astype(dtype)
