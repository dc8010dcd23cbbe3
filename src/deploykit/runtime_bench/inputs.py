"""Matching caller inputs to an artifact's input tensors, shared by every runner."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from deploykit.errors import RuntimeLoadError


def match_inputs(names: list[str], inputs: Mapping[str, np.ndarray], artifact: str) -> dict[str, np.ndarray]:
    """Inputs keyed by the artifact's names: by name; by name regardless of case (a SavedModel
    signature lower-cases names); one input whatever its name ('x' of an .npz).

    Several inputs are never paired by position: an artifact lists them in its own order (LiteRT's
    signature sorts them by name), so two inputs of the same shape would swap without an error.
    """
    if set(inputs) == set(names):
        return dict(inputs)
    if len(inputs) == len(names) == 1:
        return {names[0]: next(iter(inputs.values()))}
    folded = {n.casefold(): n for n in names}
    if len(inputs) == len(names) == len(folded) and {k.casefold() for k in inputs} == set(folded):
        return {folded[k.casefold()]: v for k, v in inputs.items()}
    raise RuntimeLoadError(f"{artifact} takes inputs {names}, got {list(inputs)}: several inputs are matched by "
                           "name; name the arrays by the artifact's inputs")


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
