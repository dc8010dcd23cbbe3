"""How runners pair the arrays they are given with an artifact's inputs."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import RuntimeLoadError
from deploykit.runtime_bench.inputs import match_inputs


def test_several_inputs_are_paired_by_name_never_by_position():
    """Names that differ were paired by position: an artifact lists its inputs in its own order (LiteRT
    sorts them), so two same-shaped inputs would have swapped without an error."""
    a, b = np.zeros((1, 3)), np.ones((1, 3))
    assert match_inputs(["beta", "alpha"], {"alpha": a, "beta": b}, "m.tflite") == {"alpha": a, "beta": b}
    got = match_inputs(["feats", "ids"], {"Feats": a, "ids": b}, "m.onnx")  # a signature lower-cases names
    assert got["feats"] is a and got["ids"] is b
    with pytest.raises(RuntimeLoadError, match=r"m.tflite takes inputs \['serving_a', 'serving_b'\], got \['a', 'b'\]: "
                                               "several inputs are matched by name"):
        match_inputs(["serving_a", "serving_b"], {"a": a, "b": b}, "m.tflite")
    assert match_inputs(["input_1"], {"x": a}, "m.tflite")["input_1"] is a  # one input: whatever its name
