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
