"""Report rows: what each column divides by and reads (formatting only, on hand-made manifests)."""

from __future__ import annotations

from deploykit.artifacts import Artifact, Manifest
from deploykit.report.rows import table
from deploykit.targets import get_target


def _artifact(name: str, size: int, **benchmark) -> Artifact:
    t = get_target(name)
    return Artifact(target=name, format=t.format, path=f"{name}/m", size_bytes=size, gzip_bytes=size // 2, status="ok",
                    settings={"target": t.to_dict()}, benchmark=benchmark)


def test_size_ratio_divides_by_the_same_formats_float32_file_only():
    m = Manifest(model={}, tools={}, machine={}, artifacts=[
        _artifact("onnx-fp32", 1000), _artifact("tflite-int8", 300), _artifact("tflite-fp32", 1200),
        _artifact("onnx-int8-qop", 280), _artifact("tfjs-uint8", 400), _artifact("tflm-int8", 290)])
    ratio = {r["target"]: r["size_ratio"] for r in table(m)}
    assert ratio == {"onnx-fp32": "1.00", "tflite-int8": "0.25", "tflite-fp32": "1.00", "onnx-int8-qop": "0.28",
                     "tfjs-uint8": "–", "tflm-int8": "–"}  # no tfjs-fp32 / tflm float file in this run: no ratio


def test_runtime_memory_column_reads_the_artifacts_figure():
    m = Manifest(model={}, tools={}, machine={}, artifacts=[_artifact("tflite-fp32", 1000, runtime_memory_bytes=3 * 1024 * 1024)])
    assert table(m)[0]["peak"] == "3.0 MB"


def test_most_accurate_says_when_others_tie_and_which_is_closest():
    from deploykit.report.rows import highlights

    arts = [_artifact(n, s) for n, s in (("tflite-fp32", 1000), ("tflite-int8", 300), ("onnx-fp32", 1000))]
    for a, err in zip(arts, (1e-6, 0.04, 2e-6)):
        a.verification = {"accuracy": 0.98, "reference_accuracy": 0.98, "max_abs_error": err}
    line = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))
    assert "**tflite-fp32**" in line and "2 other artifacts as accurate, this one closest to the reference" in line
