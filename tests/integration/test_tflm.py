"""TFLite Micro target: int8 artifact, C sources that compile, arena from the real TFLM kernels, budgets."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.errors import TargetError, UserError

FAST = dict(iterations=5, warmup=1)
GCC = shutil.which("gcc")


@pytest.fixture(scope="module")
def tflm_run(tmp_path_factory, keras3_path, data_npz):
    out = tmp_path_factory.mktemp("tflm") / "run"
    return deploykit.convert(keras3_path, ["tflm-int8", "tflite-int8"], data=data_npz, out=out, **FAST)


def test_tflm_artifact_verifies_on_micro_kernels(tflm_run):
    a = tflm_run.artifact("tflm-int8")
    assert a["status"] == "ok", a["error"]
    assert abs(a["verification"]["accuracy_drop_points"]) <= 1.0
    assert a["benchmark"]["runtime"] == "tflm" and a["benchmark"]["threads"] == 1
    assert a["footprint"]["model_bytes"] == a["size_bytes"] == (tflm_run.out / a["path"]).stat().st_size
    assert a["footprint"]["heaviest_layers"][0]["weight_bytes"] > 0
    assert "Microcontroller footprint" in (tflm_run.out / "report.md").read_text()


def test_bench_of_a_micro_file_says_which_runtime_its_run_used(tflm_run):
    """`deploy bench tflm-int8/model.tflite` timed it on LiteRT (0.012 ms) without a word beside the
    run's 0.375 ms on the TFLite Micro kernels."""
    plain = deploykit.bench(tflm_run.path("tflm-int8"), iterations=3, warmup=1)
    assert plain["runtime"] != "tflm" and "--runtime tflm times it on the TFLite Micro kernels" in plain["note"]
    assert "note" not in deploykit.bench(tflm_run.path("tflm-int8"), iterations=3, warmup=1, runtime="tflm")
    assert "note" not in deploykit.bench(tflm_run.path("tflite-int8"), iterations=3, warmup=1)


def test_bench_trusts_the_run_beside_a_file_only_for_the_file_it_wrote(tflm_run, tmp_path):
    """Another .tflite copied over tflm-int8/model.tflite was still said to be built for TFLite Micro: the
    run's manifest was matched by path alone, not by the file's sha256."""
    copy = tmp_path / "run"
    shutil.copytree(tflm_run.out, copy)
    assert "note" in deploykit.bench(copy / "tflm-int8" / "model.tflite", iterations=3, warmup=1)  # the run's file
    shutil.copyfile(tflm_run.path("tflite-int8"), copy / "tflm-int8" / "model.tflite")
    assert "note" not in deploykit.bench(copy / "tflm-int8" / "model.tflite", iterations=3, warmup=1)


def test_tflm_model_has_int8_io_and_only_micro_ops(tflm_run):
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.converters.tflm import micro_kernels, model_ops

    path = tflm_run.out / tflm_run.artifact("tflm-int8")["path"]
    interp = Interpreter(model_path=str(path))
    assert all(d["dtype"] == np.int8 for d in interp.get_input_details() + interp.get_output_details())
    ops = model_ops(path.read_bytes())
    assert ops and set(ops) <= micro_kernels()
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= micro_kernels()


def test_reported_arena_is_the_interpreters_own_and_sufficient(tflm_run):
    from tflite_micro.python.tflite_micro import runtime

    a = tflm_run.artifact("tflm-int8")
    path = tflm_run.out / a["path"]
    arena = a["footprint"]["arena_bytes"]
    assert 0 < arena < 1 << 20

    def runs_in(size: int) -> bool:
        try:
            interp = runtime.Interpreter.from_file(str(path), arena_size=size)
            interp.set_input(np.zeros((1, 8, 8, 1), np.int8), 0)
            interp.invoke()
            return True
        except Exception:
            return False

    assert runs_in(-(-arena // 16) * 16)
    assert not runs_in(arena // 4)
    # What firmware reads: to the byte in model_io.h and the report (a report's "4.1 KiB" was 42 bytes short)
    header = (path.parent / "model_io.h").read_text()
    assert re.search(rf"#define \w+_TENSOR_ARENA_SIZE {arena}\n", header)
    assert f"tensor arena {arena:,} bytes" in (tflm_run.out / "report.md").read_text()


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_c_sources_compile_and_hold_the_exact_bytes(tflm_run, tmp_path):
    a = tflm_run.artifact("tflm-int8")
    folder = (tflm_run.out / a["path"]).parent
    assert sorted(Path(f).name for f in a["extra_files"]) == ["model_data.cc", "model_data.h", "model_io.h"]
    subprocess.run([GCC, "-c", "-Wall", "-Werror", "-std=c++17", str(folder / "model_data.cc"), "-o", str(tmp_path / "m.o")],
                   check=True)
    main_c = tmp_path / "main.c"
    main_c.write_text('#include "model_io.h"\n#include "model_data.h"\n'
                      "int main(void) { return TINY_CNN_INPUT0_ELEMENTS > 0 ? 0 : 1; }\n")
    subprocess.run([GCC, "-c", "-Wall", "-Werror", "-std=c11", f"-I{folder}", str(main_c), "-o", str(tmp_path / "main.o")],
                   check=True)
    source = (folder / "model_data.cc").read_text()
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", source.split("{", 1)[1]))
    assert data == (tflm_run.out / a["path"]).read_bytes()
    assert re.search(r"alignas\(16\) const unsigned char g_tiny_cnn_model_data\[\]", source)
    assert f"g_tiny_cnn_model_data_len = {len(data)};" in source


def test_io_header_matches_the_model_quantization(tflm_run):
    from ai_edge_litert.interpreter import Interpreter

    a = tflm_run.artifact("tflm-int8")
    path = tflm_run.out / a["path"]
    header = (path.parent / "model_io.h").read_text()
    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    scale, zero = detail["quantization"]
    got_scale = float(re.search(r"INPUT0_SCALE ([0-9.e-]+)f", header).group(1))
    assert got_scale == pytest.approx(scale, rel=1e-6)
    assert f"INPUT0_ZERO_POINT {zero}" in header
    assert "INPUT0_SHAPE {1, 8, 8, 1}" in header
    # the ops to register were in manifest.json only: firmware needs them beside the arena size
    ops = a["settings"]["converter"]["ops"]
    assert f"TINY_CNN_NUM_OPS {len(ops)}\n" in header and "resolver.AddConv2D()" in header
    assert "resolver.AddFullyConnected()" in header and "resolver.AddSoftmax()" in header


def test_over_budget_is_failed_with_by_how_much(tmp_path, keras3_path, data_npz):
    board = tmp_path / "tiny_board.toml"
    board.write_text('format = "tflm"\nprecision = "int8"\nweights = "int8"\nactivations = "int8"\nio = "int8"\n'
                     "options = { flash_budget_kb = 1, ram_budget_kb = 1 }\n")
    result = deploykit.convert(keras3_path, [str(board)], data=data_npz, out=tmp_path / "out", **FAST)
    a = result.artifact("tiny_board")
    assert a["status"] == "failed" and not result.ok
    assert re.search(r"over the 1 KiB flash budget by \d+ bytes", a["error"])
    assert re.search(r"over the 1 KiB RAM budget by \d+ bytes", a["error"])
    # the way out fits the failure: a smaller model, not precision advice (--qat shrinks neither)
    assert "a budget is met by a smaller model" in a["error"] and "--qat" not in a["error"]


@pytest.mark.parametrize("bad, field", [
    ('options = { ram_budget_kb = 0 }', "options.ram_budget_kb"),
    ('options = { flash_budget_kb = -5 }', "options.flash_budget_kb"),
    ('options = { flash_budget = 5 }', "options.flash_budget"),
    ('activations = "float32"', "int8"),
    ('colour = "red"', "colour"),
    # a chosen C name is used as given: one that is not an identifier is refused, not silently rewritten
    ('options = { c_name = "my-model" }', "options.c_name = 'my-model' is not a C identifier"),
    ('options = { c_name = "2nd" }', "options.c_name = '2nd' is not a C identifier"),
])
def test_impossible_micro_targets_are_refused_naming_the_field(tmp_path, bad, field):
    from deploykit.targets import load_target_file

    base = {"format": '"tflm"', "precision": '"int8"', "weights": '"int8"', "activations": '"int8"', "io": '"int8"'}
    key = bad.split("=")[0].strip()
    lines = [f"{k} = {v}" for k, v in base.items() if k != key] + [bad]
    path = tmp_path / "board.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TargetError, match=re.escape(field)):
        load_target_file(path)


def test_unsupported_micro_op_is_named_and_other_targets_finish(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Activation("gelu", name="smooth"),
                              keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8", "tflite-int8"], data=x, out=tmp_path / "out", **FAST)
    assert result.artifact("tflm-int8")["status"] == "failed"
    # the layer that made it, not a pointer to an op list no report held
    error = result.artifact("tflm-int8")["error"]
    assert "no kernel for op(s) GELU (the first writes tensor '" in error and "smooth" in error and "lists the ops" not in error, error
    assert result.artifact("tflite-int8")["status"] == "ok"
    assert not (tmp_path / "out" / "tflm-int8").exists()
    # Keras 3's UpSampling2D writes TILE: the layer computing the same that TFLite Micro runs is named
    up = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, padding="same"), keras.layers.UpSampling2D(2),
                           keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    result = deploykit.convert(up, ["tflm-int8"], data=np.random.default_rng(0).normal(size=(32, 4, 4, 1)).astype("float32"),
                               out=tmp_path / "up", bench=False)
    error = result.artifact("tflm-int8")["error"]
    assert "no kernel for op(s) TILE" in error and "Resizing(height * factor, width * factor, interpolation='nearest')" in error


def test_dynamic_shapes_are_refused_before_anything_is_written(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((None, None, 1), name="img"), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D()])
    path = tmp_path / "dyn.keras"
    model.save(path)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 1), np.float32))
    proc = subprocess.run([sys.executable, "-m", "deploykit.cli", "convert", str(path), "-t", "tflm-int8",
                           "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "'img'" in proc.stderr and "dynamic" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError):
        deploykit.convert(model, ["tflm-int8"], data=np.zeros((4, 8, 8, 1), np.float32), out=tmp_path / "o2")
    # Beside a target that can take the model, only the micro target fails: the other still ships.
    both = deploykit.convert(model, ["tflite-fp32", "tflm-int8"], data=np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32"),
                             out=tmp_path / "o3", **FAST)
    assert not both.ok and both.artifact("tflite-fp32")["status"] == "ok"
    micro = both.artifact("tflm-int8")
    assert micro["status"] == "failed" and "dynamic" in micro["error"] and micro["path"] == ""
    assert not (tmp_path / "o3" / "tflm-int8").exists()


def test_a_model_that_crashes_tflite_micro_in_small_arenas_gets_its_arena(tmp_path):
    """A Dense-only model: some too-small arenas segfault the tflite-micro package (not a clean failure).

    The arena search runs in a child process that is restarted past a crash; the run
    must finish, with the arena found and the artifact verified.
    """
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    x = np.random.default_rng(0).random((64, 6), dtype=np.float32)
    result = deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "out", **FAST)
    a = result.artifact("tflm-int8")
    assert a["status"] == "ok", a["error"]
    assert a["footprint"]["arena_recorded_bytes"] <= a["footprint"]["arena_bytes"] < 4096


def test_uint8_image_input_is_refused_up_front_and_other_targets_finish(tmp_path):
    """A uint8 input stays uint8 through conversion and meets a CAST TFLite Micro cannot run."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1), dtype="uint8", name="image"), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1)).astype(np.uint8)
    with pytest.raises(UserError, match="'image' is uint8.*float32 input"):
        deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "alone")
    assert not (tmp_path / "alone").exists()
    both = deploykit.convert(model, ["tflite-int8-io", "tflm-int8"], data=x, out=tmp_path / "out", **FAST)
    assert both.artifact("tflite-int8-io")["status"] == "ok"
    # TFLite quantizes float inputs only: the manifest says the uint8 one stayed uint8
    assert "'image' (uint8) kept as it is" in both.artifact("tflite-int8-io")["settings"]["converter"]["inference_input_type"]
    assert both.artifact("tflm-int8")["status"] == "failed" and "uint8" in both.artifact("tflm-int8")["error"]
    assert not (tmp_path / "out" / "tflm-int8").exists()


def test_a_kernel_that_fails_at_run_time_is_reported_without_sending_the_user_to_a_missing_file(tmp_path):
    """TFLite Micro's LOG takes float only; the int8 model passes the op-name check and fails when run."""
    import keras

    class Log1p(keras.layers.Layer):
        def call(self, x):
            return keras.ops.log(keras.ops.relu(x) + 1.0)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), Log1p(), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "out", bench=False)
    error = result.artifact("tflm-int8")["error"]
    assert result.artifact("tflm-int8")["status"] == "failed" and "LOG" in error
    assert "the converted tflm-int8/model.tflite (not kept)" in error and ".partial" not in error
    # led by the meaning: the kernel's type, the layer it came from, the way out; TFLite Micro's own words after
    assert "LOG kernel takes FLOAT32, not the INT8" in error and "log1p" in error and "outside the model" in error
    assert "kernel said:" in error
    assert not (tmp_path / "out" / "tflm-int8").exists()


def test_a_5d_tensor_is_named_as_the_tflite_micro_rank_limit(tmp_path):
    """TimeDistributed over frames keeps a 5-D tensor; TFLite Micro's kernels stop at 4-D (fails in prepare)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3, 8, 8, 1)), keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3), name="frames"),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(16, 3, 8, 8, 1)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "out", bench=False)
    error = result.artifact("tflm-int8")["error"]
    assert result.artifact("tflm-int8")["status"] == "failed"
    assert "5-D tensors" in error and "at most 4-D" in error and "frames" in error, error


def test_a_keras3_embedding_model_runs_on_tflite_micro(tmp_path):
    """Keras 3's take() wraps negative ids with an int32 SELECT_V2, which TFLite Micro has no kernel for:
    every Keras 3 Embedding model failed tflm-int8 at run time. Exported as a plain gather, it runs."""
    import keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).integers(0, 50, size=(256, 10)).astype("int32")
    y = (x < 25).sum(axis=1) % 3  # a decisive model: an untrained one sits at 1/3 each, and int8 flips its ties
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    # benchmarked too: TFLite Micro reuses the input's bytes, and invoking again on one write of the
    # ids gathered garbage and failed the (correct) artifact
    result = deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "emb", warmup=2, iterations=20)
    a = result.artifact("tflm-int8")
    assert a["status"] == "ok", a["error"]
    assert len(a["benchmark"]["samples_ms"]) == 20
    assert "SELECT_V2" not in a["settings"]["converter"]["ops"]
    header = (result.out / "tflm-int8" / "model_io.h").read_text()  # ids are not quantized: no SCALE to divide by
    assert "'tokens' shape (1, 10) int32 (not quantized: pass the values as they are)" in header
    assert "INPUT0_SCALE" not in header and "OUTPUT0_SCALE" in header
    # the report gives the int8 output's scale and zero point, and says the ids input stays int32, unquantized
    report = (result.out / "report.md").read_text()
    assert "## Integer inputs and outputs (scale, zero point)" in report
    assert re.search(r"output `output_0` int8: x = \(q [+-] \d+\) × [0-9.e-]+", report)
    assert "input `tokens` int32: the values as they are (not quantized)" in report
    # and the manifest gives the ids no scale to divide by (it listed scale 0.0)
    quant = a["settings"]["converter"]["io_quantization"]
    assert quant["input tokens"] == {"dtype": "int32", "quantized": False}
    assert quant["output output_0"]["quantized"] and quant["output output_0"]["scale"] > 0


def test_a_per_step_dense_tagger_runs_on_tflite_micro(tmp_path):
    """With a dynamic batch, a Dense on (N, T, F) reshapes through SHAPE/REDUCE_PROD, which TFLite Micro lacks;
    TFLite Micro runs batch 1, so the model is exported at batch 1."""
    import keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input((10,), dtype="int32")
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Embedding(20, 8)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).integers(0, 20, size=(256, 10)).astype("int32")
    y = x % 3  # a tag per step
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    result = deploykit.convert(model, ["tflm-int8"], data=(x, y), out=tmp_path / "tag", bench=False)
    a = result.artifact("tflm-int8")
    assert a["status"] == "ok", a["error"]
    assert "REDUCE_PROD" not in a["settings"]["converter"]["ops"] and a["settings"]["converter"]["fixed_batch"] == 1
    assert "labelled positions" in a["verification"]["accuracy_per"]


def test_a_chosen_c_name_is_used_as_given(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(4, activation="softmax")],
                             name="Tiny-Model.v2")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    board = tmp_path / "board.toml"
    board.write_text('format = "tflm"\nprecision = "int8"\nweights = "int8"\nactivations = "int8"\nio = "int8"\n'
                     'options = { c_name = "MyBoard_v2" }\n')
    result = deploykit.convert(model, ["tflm-int8", str(board)], data=x, out=tmp_path / "out", bench=False)
    assert result.ok
    assert result.artifact("board")["settings"]["converter"]["c_array"] == "g_MyBoard_v2_model_data"  # case kept
    assert "g_MyBoard_v2_model_data[]" in (result.out / "board" / "model_data.cc").read_text()
    # without one, the model's name becomes an identifier
    assert result.artifact("tflm-int8")["settings"]["converter"]["c_array"] == "g_tiny_model_v2_model_data"


def test_a_recurrent_loop_is_refused_for_tflm_not_crashed_on(tmp_path):
    """A Keras 3 GRU with tflm-int8 first in the run: the micro converter exports at batch 1 directly,
    and TFLite's int8 calibrator then segfaulted on the loop, taking the process and the run's other
    targets down (exit 139, an empty tflm-int8/ left behind)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20, 4), name="seq"), keras.layers.GRU(8),
                              keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(32, 20, 4)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8", "tflite-fp32"], data=x, out=tmp_path / "out", bench=False)
    micro = result.artifact("tflm-int8")
    assert micro["status"] == "failed" and "calibration crashes on the model's recurrent loop" in micro["error"]
    # the way out on a microcontroller: unrolling (a float or ONNX file was offered, which it does not run)
    assert "unroll the layers" in micro["error"] and "tflite-dynamic" not in micro["error"], micro["error"]
    assert result.artifact("tflite-fp32")["status"] == "ok"


def test_a_model_whose_activations_outgrow_the_first_arena_guess_is_measured_not_refused(tmp_path):
    """A 5 KB model with 128x128x16 activations: the arena search started from max(10x the file, 256 KiB)
    and called a model that did not fit there "could not run" (no sources, no arena figure)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((128, 128, 1), name="img"), keras.layers.Conv2D(16, 3, padding="same"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    x = np.random.default_rng(0).uniform(size=(8, 128, 128, 1)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "out", bench=False)
    a = result.artifact("tflm-int8")
    assert a["status"] == "ok", a["error"]
    assert a["footprint"]["arena_bytes"] > 256 * 1024 > a["size_bytes"] * 10
    assert a["settings"]["converter"]["calibration_samples"] == 8  # what calibration used, as tflite-int8 records it
    assert f"TENSOR_ARENA_SIZE {a['footprint']['arena_bytes']}" in (result.out / "tflm-int8" / "model_io.h").read_text()


def test_io_header_names_the_keras_output_and_the_resolver_calls():
    """model_io.h named a two-output model's outputs output_0/output_1 only, and listed no ops."""
    from deploykit.converters.tflm import _io_header, resolver_call

    io = {"inputs": [{"name": "x", "shape": [1, 4], "dtype": "int8", "scale": 0.1, "zero_point": 0}],
          "outputs": [{"name": "output_0", "shape": [1, 3], "dtype": "int8", "scale": 0.004, "zero_point": -128},
                      {"name": "output_1", "shape": [1, 1], "dtype": "int8", "scale": 0.02, "zero_point": 3}]}
    header = _io_header("two", io, 1024, ["FULLY_CONNECTED", "SOFTMAX"], {"output_0": "cls", "output_1": "reg"})
    assert "// output 0: 'output_0' (Keras 'cls') shape (1, 3) int8" in header
    assert "// output 1: 'output_1' (Keras 'reg') shape (1, 1) int8" in header
    assert "resolver.AddFullyConnected(), resolver.AddSoftmax();\n#define TWO_NUM_OPS 2" in header
    assert [resolver_call(op) for op in ("DEPTHWISE_CONV_2D", "MAX_POOL_2D", "BATCH_TO_SPACE_ND", "PADV2", "RELU6")] == [
        "AddDepthwiseConv2D()", "AddMaxPool2D()", "AddBatchToSpaceNd()", "AddPadV2()", "AddRelu6()"]


@pytest.mark.parametrize("op", ["SOFTMAX", "LOG_SOFTMAX"])
def test_logits_too_flat_for_micro_softmax_are_named_not_a_crash(tmp_path, op):
    """An untrained network's logits span ~1e-6: TFLite Micro's int8 SOFTMAX (and LOG_SOFTMAX) aborts the
    process when the interpreter is made (exit -6), said as "the interpreter crashed", and `deploy bench`
    blamed the file."""
    import keras

    rng = np.random.default_rng(0)
    inp = keras.Input((16,), name="features")
    dense = keras.layers.Dense(4)
    last = keras.layers.Softmax() if op == "SOFTMAX" else keras.layers.Activation("log_softmax")
    model = keras.Model(inp, last(dense(inp)))
    w, b = dense.get_weights()
    dense.set_weights([w * 1e-8, b])
    x = rng.normal(0, 1, (64, 16)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8", "tflite-int8-io"], data=x, out=tmp_path / "o", bench=False)
    error = result.artifact("tflm-int8")["error"]
    assert f"the logits into {op} (tensor" in error and "aborts on so narrow a range" in error and "crashed" not in error, error
    tflite = result.artifact("tflite-int8-io")
    path = tmp_path / "o" / tflite["path"]
    assert path.exists(), tflite  # kept for inspection if it failed: LiteRT runs the file either way
    with pytest.raises(UserError, match=rf"TFLite Micro cannot run (failed-)?model.tflite: the logits into {op} .*--runtime litert"):
        deploykit.bench(path, runtime="tflm", iterations=2, warmup=0)


def test_bench_on_micro_refuses_a_file_with_dimensions_of_any_size(tmp_path):
    """TFLite Micro runs the sizes a file stores, 1 for a dimension of any size: a sequence model was timed
    at length 1 without a word, and --data of length 7 was refused as 'expects (1, 1, 3)'. A free batch runs."""
    import tensorflow as tf

    def write(name, shape):
        fn = tf.function(lambda x: {"out": tf.reduce_mean(x, axis=1) * 2.0},
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="seq")])
        (tmp_path / name).write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()]).convert())
        return tmp_path / name

    dynamic = write("dyn.tflite", [None, None, 3])
    with pytest.raises(UserError, match=r"TFLite Micro runs fixed shapes only, and input 'seq' of dyn.tflite has "
                                        r"dimensions of any size \(None, None, 3\).*--runtime litert"):
        deploykit.bench(dynamic, runtime="tflm", iterations=2, warmup=0)
    assert deploykit.bench(write("batch.tflite", [None, 7, 3]), runtime="tflm", iterations=2, warmup=0)["n"] == 2


def test_an_arena_of_operator_records_is_said_as_one_with_its_way_out(tmp_path):
    """An unrolled GRU over 64 steps: 1086 ops, 3 KB of activations in a 230 KB recorded arena, and the budget
    failure advised "a smaller input", which changes those records hardly at all."""
    import keras

    from deploykit.converters.tflm import _arena_of_records
    from deploykit.runtime_bench.tflm import measure_arena

    inp = keras.Input((4,), name="x")
    h = inp
    for _ in range(60):  # many small ops: the arena is their records, not their 16-float activations
        h = keras.layers.Dense(4, activation="relu")(h)
    model = keras.Model(inp, h)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    result = deploykit.convert(model, ["tflm-int8"], data=x, out=tmp_path / "o", bench=False)
    found = measure_arena(tmp_path / "o" / result.artifact("tflm-int8")["path"])
    said = _arena_of_records(found["allocations"])
    assert said.startswith(" (activations take ") and "records per operator (60 of them)" in said, said
    assert "not a smaller input" in said


def test_a_sequence_of_any_length_is_refused_with_an_example_of_its_own_rank(tmp_path):
    """The refusal offered keras.Input(shape=(96, 96, 1)), an image's shape, for token ids and series too."""
    import keras

    inp = keras.Input((None, 3), name="series")
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(inp)))
    with pytest.raises(UserError, match=r"input 'series' has dynamic dimension\(s\) \[1\] in shape \(None, None, 3\); "
                                        r"TFLite Micro needs fixed shapes .*keras\.Input\(shape=\(64, 3\)\)"):
        deploykit.convert(model, ["tflm-int8"], data=np.ones((8, 10, 3), np.float32), out=tmp_path / "o", bench=False)
    assert not (tmp_path / "o").exists()


def test_layers_are_named_as_keras_names_them_not_as_the_export_numbered_their_scopes(tmp_path):
    """The export scopes the layer `dense` as `dense_1` (and `dense_1` as `dense_1_1`): the heaviest-layers
    list said `dense_1` for the 4160-parameter `dense`, and a GELU in `dense` was placed in `dense_1`."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    h = keras.layers.Dense(256, name="dense")(inp)
    h = keras.layers.Dense(4, name="dense_1")(h)
    h = keras.layers.Dense(3, activation="softmax", name="dense_2")(h)
    x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    result = deploykit.convert(keras.Model(inp, h), ["tflm-int8"], data=x, out=tmp_path / "ok", bench=False)
    heaviest = result.artifact("tflm-int8")["footprint"]["heaviest_layers"]
    assert [(h["layer"], h["weight_bytes"] > 4000) for h in heaviest[:2]] == [("dense", True), ("dense_1", False)], heaviest
    assert "FULLY_CONNECTED at `dense` 4." in result.report_path.read_text()

    gelu = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="gelu", name="dense"),
                             keras.layers.Dense(3, activation="softmax", name="dense_1")])
    error = deploykit.convert(gelu, ["tflm-int8"], data=x[:, :8], out=tmp_path / "gelu", bench=False,
                              ).artifact("tflm-int8")["error"]
    assert "GELU" in error and "in layer 'dense')" in error, error


def test_category_encodings_beside_other_features_run_on_tflite_micro(tmp_path):
    """At TFLite Micro's batch of 1 the converter fused Cast(Equal(id, range)) back into ONE_HOT, which TFLite
    Micro lacks: a one-hot concatenated with float features (the usual tabular model) and any multi_hot failed."""
    import keras

    keras.utils.set_random_seed(0)
    cat, tags, feat = keras.Input((1,), dtype="int32", name="cat"), keras.Input((3,), dtype="int32", name="tags"), keras.Input((3,), name="feat")
    h = keras.layers.Concatenate()([keras.layers.CategoryEncoding(8, "one_hot")(cat),
                                    keras.layers.CategoryEncoding(6, "multi_hot")(tags), feat])
    model = keras.Model([cat, tags, feat], keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(h)))
    rng = np.random.default_rng(0)
    data = {"cat": rng.integers(0, 8, (128, 1)).astype("int32"), "tags": rng.integers(0, 6, (128, 3)).astype("int32"),
            "feat": rng.normal(size=(128, 3)).astype("float32")}
    art = deploykit.convert(model, ["tflm-int8"], data=data, out=tmp_path / "o", bench=False).artifact("tflm-int8")
    assert art["status"] == "ok", art["error"]
    assert "ONE_HOT" not in art["settings"]["converter"]["ops"]
