"""Runtime memory measured in a process per file: follows the file, not the order of the targets."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from deploykit.runtime_bench import memory_probe  # noqa: E402

N = 2048  # a 2048x2048 float32 weight: 16 MiB


def _matmul_model(path, dtype=np.float32):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(N, N)).astype(dtype)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_memory_follows_the_file_and_not_the_measuring_process(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = _matmul_model(tmp_path / "fp32.onnx")
    small = tmp_path / "int8.onnx"
    quantize_dynamic(str(big), str(small), weight_type=QuantType.QInt8)
    x = {"x": np.ones((1, N), np.float32)}
    fp32 = memory_probe.measure("onnxruntime", big, 1, x)
    int8 = memory_probe.measure("onnxruntime", small, 1, x)
    ballast = np.ones(64 << 20, np.uint8)  # this process growing does not move the figures
    again = memory_probe.measure("onnxruntime", big, 1, x)
    del ballast
    assert fp32["runtime_memory_bytes"] >= 16 << 20, fp32  # the weight is held at least once
    assert int8["runtime_memory_bytes"] < fp32["runtime_memory_bytes"] - (8 << 20), (int8, fp32)
    assert abs(again["runtime_memory_bytes"] - fp32["runtime_memory_bytes"]) < 4 << 20, (again, fp32)
    assert fp32["runtime_process_peak_bytes"] > fp32["runtime_memory_bytes"]
    assert "new process" in fp32["runtime_memory_of"]


def test_a_file_the_runtime_cannot_load_is_not_measured_and_says_why(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    got = memory_probe.measure("onnxruntime", bad, 1, {"x": np.ones((1, 4), np.float32)})
    assert got["runtime_memory_bytes"] is None and got["runtime_memory_of"].startswith("not measured: the probe process failed")


def test_deploykits_own_checks_of_an_onnx_file_are_not_counted(tmp_path):
    """The external-data check imports the onnx package (~10 MiB) and parses the graph: an app serving
    the file with ONNX Runtime does neither, so the probe runs it before its start figure. A tiny
    model was reported at ~19 MiB, about half of it that import."""
    import subprocess
    import sys

    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    got = memory_probe.measure("onnxruntime", path, 1, {"x": np.ones((1, 4), np.float32)})
    # what importing onnx costs a process that has onnxruntime loaded, measured the same way
    code = ("import onnxruntime\n"
            "def rss():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024\n"
            "a = rss()\nimport onnx\nprint(rss() - a)")
    onnx_import = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert onnx_import > 4 << 20  # the effect this test guards against is visible on this machine
    assert got["runtime_memory_bytes"] is not None
    assert got["runtime_memory_bytes"] < 16 << 20, (got, onnx_import)
