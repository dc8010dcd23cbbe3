"""The TF.js writer's pieces that need no JavaScript runtime: weight encoding,
zero-preserving affine quantization, the rank-1 bias fusion rules and the op check."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.converters import tfjs, tfjs_weights
from deploykit.converters.graph_optimize import _per_channel
from deploykit.errors import ConversionError


@pytest.mark.parametrize("dtype,levels", [("uint8", 255), ("uint16", 65535)])
def test_affine_quantization_error_is_half_a_step(dtype, levels):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (3, 3, 8, 16)).astype(np.float32)
    q, lo, scale = tfjs_weights.quantize_affine(w, dtype)
    assert q.dtype == np.dtype(dtype) and q.shape == w.shape
    restored = q.astype(np.float64) * scale + lo  # what the TF.js loader computes
    assert np.abs(restored - w).max() <= scale / 2 + 1e-7
    assert scale == pytest.approx((w.max() - w.min()) / levels, rel=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_affine_quantization_keeps_pruned_zeros_exactly_zero(dtype):
    rng = np.random.default_rng(1)
    w = rng.normal(0.2, 0.5, (64, 32)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0.0
    q, lo, scale = tfjs_weights.quantize_affine(w, dtype)
    restored = q.astype(np.float64) * scale + lo
    assert np.all(restored[w == 0] == 0.0)
    assert (restored == 0).sum() >= (w == 0).sum()


def test_constant_and_all_positive_tensors_round_trip():
    q, lo, scale = tfjs_weights.quantize_affine(np.full((4,), 0.75, np.float32), "uint8")
    assert np.all(q * scale + lo == 0.75)
    w = np.linspace(0.5, 1.0, 50, dtype=np.float32)  # range without 0: plain min/max
    q, lo, scale = tfjs_weights.quantize_affine(w, "uint8")
    assert lo == pytest.approx(0.5) and np.abs(q * scale + lo - w).max() <= scale / 2 + 1e-7


def test_encode_sizes_and_manifest_fields():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert len(tfjs_weights.encode("w", w, "float32").data) == 48
    fp16 = tfjs_weights.encode("w", w, "float16")
    assert len(fp16.data) == 24 and fp16.entry["quantization"]["dtype"] == "float16"
    u8 = tfjs_weights.encode("w", w, "uint8")
    assert len(u8.data) == 12 and set(u8.entry["quantization"]) >= {"dtype", "min", "scale"}
    assert tfjs_weights.encode("w", w, "uint16").entry["dtype"] == "float32"  # logical dtype stays
    # vectors (biases, Normalization statistics) stay float32 under affine storage: one min/scale per tensor
    # cannot hold per-channel values spread from -102 to 1900
    for shape in [(3,), (1, 3), (1, 1, 3)]:
        vec = tfjs_weights.encode("mean", np.array([-102.0, 1900.0, 0.5], np.float32).reshape(shape), "uint8")
        assert "quantization" not in vec.entry and len(vec.data) == 12
    assert "quantization" in tfjs_weights.encode("dw", np.ones((3, 3, 4, 1), np.float32), "uint8").entry  # a kernel
    # float16: vectors stay float32 as well, and so does a kernel beyond float16's range (it would be inf)
    assert "quantization" not in tfjs_weights.encode("mean", np.array([[3e5, 120.0, 3.0]], np.float32), "float16").entry
    huge = tfjs_weights.encode("k", np.full((4, 4), 1e5, np.float32), "float16")
    assert "quantization" not in huge.entry and np.isfinite(np.frombuffer(huge.data, "<f4")).all()
    assert "quantization" in tfjs_weights.encode("k", np.full((4, 4), 1e4, np.float32), "float16").entry
    # integer constants (shapes, indices) are never quantized; int64 becomes int32
    ints = tfjs_weights.encode("shape", np.array([1, -1], np.int64), "uint8")
    assert ints.entry == {"name": "shape", "shape": [2], "dtype": "int32"} and len(ints.data) == 8


def test_encode_refuses_what_tfjs_cannot_hold():
    with pytest.raises(ConversionError, match="int32"):
        tfjs_weights.encode("big", np.array([2**40], np.int64), "float32")
    with pytest.raises(ConversionError, match="dtype"):
        tfjs_weights.encode("c", np.array([1 + 2j]), "float32")
    with pytest.raises(ConversionError, match="float64 values beyond float32's range"):
        tfjs_weights.encode("huge", np.array([1e300]), "float32")


def test_float64_constants_are_stored_as_the_float32_tfjs_computes_them_in():
    """TF.js's graph loader maps DT_DOUBLE to float32; a tf_keras CenterCrop's float64 offsets were refused."""
    w = tfjs_weights.encode("half", np.array([0.5, 3.0]), "float32")
    assert w.entry["dtype"] == "float32" and np.frombuffer(w.data, "<f4").tolist() == [0.5, 3.0]


def test_shards_split_at_the_size_and_concatenate_back(tmp_path):
    rng = np.random.default_rng(2)
    encoded = [tfjs_weights.encode(f"w{i}", rng.normal(size=(100,)).astype(np.float32), "float32") for i in range(5)]
    manifest, names = tfjs_weights.write_shards(encoded, tmp_path, shard_bytes=1024)
    assert names == [f"group1-shard{i}of2.bin" for i in (1, 2)]
    assert manifest[0]["paths"] == names and [w["name"] for w in manifest[0]["weights"]] == [f"w{i}" for i in range(5)]
    blob = b"".join((tmp_path / n).read_bytes() for n in names)
    assert blob == b"".join(e.data for e in encoded)
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    "shape,ok",
    [((), True), ((1,), True), ((8,), True), ((1, 1, 1, 8), True), ((1, 8), True),
     ((8, 1), False), ((2, 8), False), ((1, 1, 2, 4), False), ((4,), False)],
)
def test_only_per_channel_vectors_become_a_rank1_bias(shape, ok):
    value = np.ones(shape, np.float32)
    result = _per_channel(value, 8)
    assert (result is not None) == ok
    if ok:
        assert result.shape == (8,)


def test_op_check_names_ops_and_suggests(monkeypatch, tmp_path):
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.node.add(name="x", op="Placeholder")
    gd.node.add(name="StatefulPartitionedCall/text_vectorization/StringSplitV2", op="StringSplitV2")
    gd.node.add(name="y", op="Relu")
    with pytest.raises(ConversionError) as info:
        tfjs.check_ops(gd, "tfjs-fp32")
    msg = str(info.value)
    assert "StringSplitV2" in msg and "text_vectorization" in msg and "Relu" not in msg
    assert "JavaScript" in msg and "\n" not in msg


def test_supported_op_list_covers_the_fused_ops_we_emit():
    ops = tfjs.supported_ops()
    assert {"_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul", "Const", "Placeholder"} <= ops


def test_op_check_knows_what_the_wasm_backend_lacks():
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.node.add(name="x", op="Placeholder")
    gd.node.add(name="spectrum", op="RFFT")
    with pytest.raises(ConversionError, match=r"wasm backend has no kernel for RFFT.*backend = \"cpu\""):
        tfjs.check_ops(gd, "tfjs-fp32", "wasm")
    tfjs.check_ops(gd, "tfjs-fp32", "cpu")  # the cpu backend runs it


def test_an_einsum_left_for_wasm_names_a_fixed_length_as_a_way_out():
    """Attention over a sequence of any length keeps its Einsum (sizes unknown): only the cpu backend was offered."""
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.node.add(name="x", op="Placeholder")
    gd.node.add(name="scores", op="Einsum")
    with pytest.raises(ConversionError, match=r"no kernel for Einsum.*backend = \"cpu\" \(slower\) or give the model's "
                                              r"inputs a fixed length"):
        tfjs.check_ops(gd, "tfjs-fp32", "wasm")
    gd.node[1].op = "RFFT"
    with pytest.raises(ConversionError, match=r"\(slower\), or replace those ops"):  # no Einsum: no length to fix
        tfjs.check_ops(gd, "tfjs-fp32", "wasm")
