"""Stats keep raw samples; every summary number is derived from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deploykit.runtime_bench import benchmark
from deploykit.runtime_bench.stats import Stats


@pytest.fixture
def samples():
    return list(np.random.default_rng(3).lognormal(mean=0.0, sigma=0.5, size=101))


def test_summary_matches_numpy(samples):
    s = Stats(samples, warmup=4, threads=2)
    arr = np.asarray(samples)
    assert s.n == 101
    assert s.p50 == pytest.approx(np.percentile(arr, 50))
    assert s.p90 == pytest.approx(np.percentile(arr, 90))
    assert s.p99 == pytest.approx(np.percentile(arr, 99))
    assert s.mean == pytest.approx(arr.mean())
    assert s.std == pytest.approx(arr.std(ddof=1))
    assert (s.min, s.max) == (arr.min(), arr.max())
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert s.percentile(0) == s.min and s.percentile(100) == s.max


def test_percentile_interpolates_linearly():
    s = Stats([1.0, 2.0, 3.0, 4.0])
    assert s.p50 == 2.5
    assert s.percentile(25) == 1.75


def test_to_dict_keeps_raw_samples_and_settings(samples):
    s = Stats(samples, warmup=4, threads=2, init_ms=12.5, extra={"note": "x"})
    d = s.to_dict()
    assert set(s.summary()) <= set(d)
    assert d["n"] == len(samples) == len(d["samples_ms"])
    np.testing.assert_allclose(d["samples_ms"], samples, atol=1e-6)
    assert (d["warmup"], d["threads"], d["init_ms"], d["note"]) == (4, 2, 12.5, "x")
    json.dumps(d)  # JSON-ready
    # the summary can be recomputed from the stored samples alone
    again = Stats(d["samples_ms"]).summary()
    for key, value in s.summary().items():
        assert again[key] == pytest.approx(value, abs=1e-5)


def test_single_sample_and_nan():
    s = Stats([2.0], init_ms=float("nan"))
    assert s.std == 0.0 and s.p50 == s.p99 == 2.0
    assert s.to_dict()["init_ms"] is None  # NaN is not valid JSON


def test_no_samples_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        Stats([])


class _CountingRunner:
    """Wraps a real LiteRT runner and counts invocations (the runtime itself is real)."""

    def __init__(self, runner):
        self.runner = runner
        self.threads = runner.threads
        self.calls = 0

    def set_inputs(self, inputs):
        self.runner.set_inputs(inputs)

    def invoke(self):
        self.calls += 1
        self.runner.invoke()


@pytest.mark.parametrize("name", ["tflite-fp32", "tflite-int8-io"])
def test_benchmark_on_real_litert(tflite_files, digits, name):
    from deploykit.runtime_bench import get_runner

    real = get_runner("litert", tflite_files[name], threads=1)
    real.load()
    runner = _CountingRunner(real)
    stats = benchmark(runner, {"pixels": digits.x_eval[:1]}, warmup=3, iterations=9)
    assert runner.calls == 12  # warm-up runs happen but are not timed
    assert stats.n == 9 and stats.warmup == 3 and stats.threads == 1
    assert all(s > 0 for s in stats.samples_ms)
    assert stats.min <= stats.p50 <= stats.max and math.isfinite(stats.p99)


@pytest.mark.parametrize("runtime, name", [("litert", "tflite-fp32"), ("onnxruntime", None)])
def test_a_fresh_interpreter_settles_before_it_is_timed(tflite_files, digits, tmp_path, runtime, name):
    """LiteRT and ONNX Runtime run a freshly loaded file untimed for settle_s first (its first runs can be
    several times slower: 55 slow samples of 100 once made a p50 7.5x the settled one); once per load."""
    from deploykit.runtime_bench import get_runner

    if runtime == "onnxruntime":
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        path, inputs = tmp_path / "tiny.onnx", {"x": np.ones((1, 4), np.float32)}
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    else:
        path, inputs = tflite_files[name], {"pixels": digits.x_eval[:1]}
    r = get_runner(runtime, path, threads=1)
    assert r.settle_s > 0
    r.load()
    first = benchmark(r, inputs, warmup=1, iterations=5)
    assert first.extra["settled_s"] >= r.settle_s
    assert "settled_s" not in benchmark(r, inputs, warmup=1, iterations=5).extra
    r.load()  # a new interpreter settles again
    assert benchmark(r, inputs, warmup=1, iterations=5).extra["settled_s"] >= r.settle_s
