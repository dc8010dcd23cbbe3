"""Messages shared by the CLI and the Python API, said in a Python caller's terms."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import CLI_FLAGS, PYTHON_TERMS, in_cli_terms, in_python_terms


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
    with pytest.raises(UserError, match=r"^threads must be an integer in 1\.\.256, got 0$"):  # was bench.threads
        deploykit.convert(model, ["tflite-fp32"], out=tmp_path / "o3", threads=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    with pytest.raises(UserError, match=r"pass --force to overwrite \(in Python: --out is out=, --force is force=True\)$"):
        deploykit.convert(model, ["tflite-fp32"], out=tmp_path / "full", bench=False)  # "in Python" said twice


def test_the_cli_names_the_flag_a_setting_came_from_and_only_at_the_start():
    assert in_cli_terms("bench.iterations must be an integer in 1..1,000,000, got 0") == (
        "--iterations must be an integer in 1..1,000,000, got 0")
    assert in_cli_terms("learning_rate must be a finite number > 0, got inf") == "--learning-rate must be a finite number > 0, got inf"
    toml = "target 'x' in x.toml: bench.iterations must be an integer in 1..1,000,000, got 0"  # the file's field stays
    assert in_cli_terms(toml) == toml
    assert in_cli_terms("epochsx must be") == "epochsx must be"
    assert set(CLI_FLAGS.values()) <= set(PYTHON_TERMS)  # every flag is one the Python API names back


def test_bench_of_no_file_is_a_one_line_user_error():
    import deploykit
    from deploykit.errors import UserError

    with pytest.raises(UserError, match="pass an artifact file to benchmark .* got NoneType None"):
        deploykit.bench(None)


def test_a_full_disk_inside_tensorflow_is_said_as_the_full_disk_it_is(tmp_path):
    """SavedModel export on a full TMPDIR gave TensorFlow's op error ({{function_node __wrapped__SaveV2...}},
    a temp file's name) as the run's one line; as ENOSPC it gets the CLI's "free some space" line."""
    import errno

    import tensorflow as tf

    from deploykit.errors import disk_full

    said = tf.errors.UnknownError(None, None, "{{function_node __wrapped__SaveV2}} /t/x.tempstate1; No space left on device [Op:SaveV2]")
    full = disk_full(said, str(tmp_path))
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC and full.filename == str(tmp_path)
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")).errno == errno.EDQUOT
    assert disk_full(ValueError("shape mismatch")) is None and disk_full(OSError(errno.EACCES, "denied")) is None
