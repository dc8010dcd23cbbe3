"""Messages shared by the CLI and the Python API, said in a Python caller's terms."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import PYTHON_TERMS, in_python_terms


def test_flags_get_their_python_names_once_and_only_where_the_text_lacks_them():
    assert in_python_terms("tflite-int8 needs calibration data; pass --data") == (
        "tflite-int8 needs calibration data; pass --data (in Python: --data is data=)")
    text = "prune less (--prune) or fine-tune longer (--epochs); --prune 0.8"
    assert in_python_terms(text).endswith("(in Python: --prune is prune=, --epochs is 'epochs' in the step's settings dict)")
    said = "pass --force (force=True in Python) to overwrite"  # already in both terms: unchanged
    assert in_python_terms(said) == said
    assert in_python_terms("no flags here") == "no flags here"
    assert all(flag.startswith("--") for flag in PYTHON_TERMS)


def test_convert_refusals_name_the_keyword_a_python_caller_passes(tmp_path):
    import keras

    import deploykit
    from deploykit.errors import UserError

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    with pytest.raises(UserError, match=r"pass --data.*\(in Python: --data is data=\)"):
        deploykit.convert(model, ["tflite-int8"], out=tmp_path / "o", bench=False)
    with pytest.raises(UserError, match=r"\(in Python: --label-output is label_output=\)"):
        deploykit.convert(model, ["tflite-fp32"], data=np.ones((8, 4), np.float32), out=tmp_path / "o2", bench=False,
                          label_output="nope")
