"""Proof that pruning and clustering survived conversion: count the zeros (and shared values) an artifact stores.

:func:`count_zeros` reads the constant tensors of an artifact file as the
runtime would load them, without running it:

* ``.tflite``: the flatbuffer's buffers (``flatbuffer_utils``; buffers past the
  2 GB offset are read too). A quantized weight is zero when it equals its
  zero point (0 for TFLite's symmetric int8 weights; per-channel zero points
  are broadcast along ``quantized_dimension``). A tensor stored in TFLite's
  sparse format holds only its non-zero blocks: the zeros are the dense size
  minus the stored non-zero values.
* ``.onnx``: graph initializers and ``Constant`` nodes (subgraphs included,
  external data loaded). An integer initializer that a ``DequantizeLinear``,
  ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger`` or ``MatMulInteger``
  node dequantizes is zero when it equals that node's zero point.
* TF.js graph model (``model.json`` or its directory): the weights manifest
  and shards; quantized weights are dequantized as the runtime does
  (``q * scale + min`` for uint8/uint16, float16 widened) and exact zeros
  counted in float64. A grouped Conv2D's kernel, which the writer splits per
  group, is joined back into one tensor.

:func:`check_sparsity_survived` matches each pruned kernel of a pruning report
to an artifact tensor with the same number of elements. Names differ across
converters (and kernels are transposed), so matching is by size and zero
count: a kernel survived when some not-yet-claimed tensor of its size holds at
least ``sparsity - tolerance`` zeros.

:func:`check_clusters_survived` does the same for a clustering report: a
clustered kernel survived when a tensor of its size holds at most ``clusters``
distinct non-zero values in every output channel. Channels, because converters
fold per-channel factors into kernels (BatchNorm, per-channel int8 scales), which
multiplies each channel's shared values by its own factor: they stay shared
within the channel. The output-channel axis is the first (TFLite, ONNX Conv,
Gemm with transB), the second (ONNX ConvTranspose) or the last (TF.js, ONNX
MatMul): each is counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.errors import UserError


def _entry(name: str, shape: tuple[int, ...], size: int, zeros: int, dtype: str) -> dict[str, Any]:
    return {
        "name": name, "shape": [int(d) for d in shape], "size": int(size), "zeros": int(zeros),
        "sparsity": float(zeros / size) if size else 0.0, "dtype": dtype,
    }


def _totals(tensors: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    return {
        "format": fmt, "tensors": tensors,
        "total_zeros": int(sum(t["zeros"] for t in tensors)),
        "total_size": int(sum(t["size"] for t in tensors)),
    }


def shared_values(values: np.ndarray, zero: Any = 0) -> list[list[int]]:
    """``[[distinct, nonzero], ...]`` for the output-channel axis first, second (ONNX ConvTranspose
    stores (in, out, kh, kw)) and last: the most distinct
    non-``zero`` values any one channel holds, and the most non-zero values any one channel holds
    (channels of at most 16 values cannot show that they share 16). See the module docstring."""
    v = np.asarray(values)
    if v.ndim < 2:
        v = v.reshape(1, -1)
    zp = np.asarray(zero if zero is not None else 0, dtype=np.float64).reshape(-1)
    out = []
    axes = [0, 1, v.ndim - 1] if v.ndim >= 3 else [0, v.ndim - 1]
    for rows in (np.moveaxis(v, a, 0).reshape(v.shape[a], -1) for a in axes):
        # float32 holds every int8/int16 value and every float32 exactly
        f = rows.astype(np.float64 if rows.dtype == np.float64 else np.float32)
        zeros = f == (zp.reshape(-1, 1) if zp.size == rows.shape[0] and zp.size > 1 else (zp[0] if zp.size else 0))
        f[zeros] = np.nan  # sorted last, and never a change between two values
        d = np.diff(np.sort(f, axis=1), axis=1)
        counts = np.where((~zeros).any(axis=1), np.count_nonzero(np.isfinite(d) & (d != 0), axis=1) + 1, 0)
        out.append([int(counts.max(initial=0)), int((~zeros).sum(axis=1).max(initial=0))])
        if np.asarray(values).ndim < 2:
            break
    return out


def _zeros_vs(values: np.ndarray, zero_point: Any, axis: int | None) -> int:
    """Count elements equal to the zero point (scalar, or one per slice along ``axis``)."""
    zp = np.asarray(zero_point if zero_point is not None else 0).astype(np.int64)
    vals = values.astype(np.int64)
    if zp.size <= 1:
        return int(np.count_nonzero(vals == (zp.reshape(-1)[0] if zp.size else 0)))
    if axis is None or vals.ndim == 0 or vals.shape[axis] != zp.size:
        return int(np.count_nonzero(vals == 0))  # unknown layout: symmetric weights have zero point 0
    shape = [1] * vals.ndim
    shape[axis] = zp.size
    return int(np.count_nonzero(vals == zp.reshape(shape)))


# ------------------------------------------------------------------------------ TFLite
_TFLITE_DTYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT8": np.int8, "UINT8": np.uint8,
    "INT16": np.int16, "UINT16": np.uint16, "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64,
    "UINT64": np.uint64, "BOOL": np.bool_,
}


def _count_tflite(path: Path, shared_for: frozenset[int] = frozenset()) -> dict[str, Any]:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    seen: set[int] = set()
    tensors = []
    for sg_index, subgraph in enumerate(model.subgraphs):
        for tensor in subgraph.tensors:
            buf_index = tensor.buffer
            if not buf_index or buf_index in seen or buf_index >= len(model.buffers):
                continue
            data = model.buffers[buf_index].data
            if data is None or len(data) == 0:
                continue
            type_name = type_names.get(tensor.type, str(tensor.type))
            dtype = _TFLITE_DTYPES.get(type_name)
            if dtype is None:  # int4, strings, resources: not weights we can count
                continue
            seen.add(buf_index)
            values = np.frombuffer(bytes(data), dtype=dtype)
            shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
            size = int(np.prod(shape)) if shape else values.size
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            if sg_index:
                name = f"subgraph{sg_index}/{name}"
            q = tensor.quantization
            zero_point = None if q is None or q.zeroPoint is None or not len(q.zeroPoint) else np.asarray(q.zeroPoint)
            if tensor.sparsity is not None:
                # Sparse format: only the non-zero blocks are stored (they may hold a few zeros themselves).
                stored_nonzero = _nonzero_quantized(values, zero_point) if dtype in (np.int8, np.uint8, np.int16) else int(np.count_nonzero(values))
                zeros = size - stored_nonzero
                tensors.append({**_entry(name, shape, size, zeros, type_name.lower()), "sparse_format": True})
                continue
            if values.size != size:
                continue  # not a plain dense constant
            values = values.reshape(shape) if shape else values
            if dtype in (np.int8, np.uint8, np.int16) and zero_point is not None:
                axis = int(q.quantizedDimension) if q.quantizedDimension is not None else 0
                zeros = _zeros_vs(values, zero_point, axis)
            else:
                zeros = int(np.count_nonzero(values == 0))
            tensors.append(_entry(name, shape, size, zeros, type_name.lower()))
            if size in shared_for:
                tensors[-1]["shared_values"] = shared_values(values, zero_point if dtype != np.float32 else 0)
    return _totals(tensors, "tflite")


def _nonzero_quantized(values: np.ndarray, zero_point: Any) -> int:
    zp = np.asarray(zero_point if zero_point is not None else 0).reshape(-1)
    if zp.size <= 1:
        return int(np.count_nonzero(values.astype(np.int64) != (int(zp[0]) if zp.size else 0)))
    return int(np.count_nonzero(values))  # per-channel sparse layout: symmetric weights, zero point 0


# ------------------------------------------------------------------------------ ONNX
# op type -> [(index of the quantized value input, index of its zero point input, axis or None)]
_ONNX_QUANT_INPUTS = {
    "DequantizeLinear": [(0, 2, "axis")],
    "QLinearConv": [(0, 2, None), (3, 5, 0)],  # x too: an embedding table gathered straight into a conv
    "QLinearAdd": [(0, 2, None), (3, 5, None)],
    "QLinearMul": [(0, 2, None), (3, 5, None)],
    "QLinearGlobalAveragePool": [(0, 2, None)],
    "QLinearAveragePool": [(0, 2, None)],
    "QLinearLeakyRelu": [(0, 2, None)],
    "QLinearSigmoid": [(0, 2, None)],
    "QLinearSoftmax": [(0, 2, None)],
    "QLinearMatMul": [(0, 2, None), (3, 5, -1)],
    "ConvInteger": [(1, 3, 0)],
    "MatMulInteger": [(0, 2, None), (1, 3, -1)],
    "QGemm": [(0, 2, None), (3, 5, "transB")],  # com.microsoft; B is (N, K) when transB
    "DynamicQuantizeMatMul": [(1, 3, -1)],  # com.microsoft
    "MatMulIntegerToFloat": [(0, 4, None), (1, 5, -1)],  # com.microsoft
}
# Inputs that hold quantization parameters (scales, zero points), not weights: left out of the totals
# (122 per-channel zero points of a 38 k-parameter CNN counted as pruned zeros otherwise).
_ONNX_QUANT_PARAMS = {
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "QLinearAdd": {1, 2, 4, 5, 6, 7}, "QLinearMul": {1, 2, 4, 5, 6, 7},
    "QLinearGlobalAveragePool": {1, 2, 3, 4}, "QLinearAveragePool": {1, 2, 3, 4}, "QLinearLeakyRelu": {1, 2, 3, 4},
    "QLinearSigmoid": {1, 2, 3, 4}, "QLinearSoftmax": {1, 2, 3, 4},
    "ConvInteger": {2, 3}, "MatMulInteger": {2, 3}, "QGemm": {1, 2, 4, 5, 7, 8},
    "DynamicQuantizeMatMul": {2, 3}, "MatMulIntegerToFloat": {2, 3, 4, 5},
}


def _onnx_quant_params(graph: Any) -> set[str]:
    """Names of the tensors a graph's quantized ops read as scales or zero points."""
    names = set()
    # quantize_dynamic multiplies the activation's runtime scale (DynamicQuantizeLinear's second output)
    # by the weight's scale in a plain Mul: that constant is a weight scale too.
    runtime_scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    for node in graph.node:
        if node.op_type == "Mul" and runtime_scales.intersection(node.input):
            names.update(i for i in node.input if i not in runtime_scales)
            continue
        if node.op_type == "QLinearConcat":  # Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
            slots = {0, 1} | {i for i in range(2, len(node.input)) if (i - 2) % 3}
        else:
            slots = _ONNX_QUANT_PARAMS.get(node.op_type, set())
        names.update(node.input[i] for i in slots if i < len(node.input) and node.input[i])
    return names


# Ops that hand a quantized weight on unchanged in value (an embedding table read by Gather, then
# DequantizeLinear): the consumer's zero point is the weight's own when it is one value per tensor.
_ONNX_PASS_THROUGH = {"Gather": 0, "Identity": 0, "Reshape": 0, "Transpose": 0, "Squeeze": 0, "Unsqueeze": 0,
                      "Flatten": 0}


def _onnx_graphs(graph: Any):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _onnx_graphs(attr.g)
            for g in attr.graphs:
                yield from _onnx_graphs(g)


def _count_onnx(path: Path, shared_for: frozenset[int] = frozenset()) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))  # loads external data from beside the file
    tensors = []
    for graph in _onnx_graphs(model.graph):
        consts: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        consts[node.output[0]] = numpy_helper.to_array(attr.t)
        # integer weights and the zero point their consumer uses
        zero_points: dict[str, tuple[Any, int | None]] = {}
        producer = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            for value_i, zp_i, axis_spec in _ONNX_QUANT_INPUTS.get(node.op_type, []):
                if value_i >= len(node.input):
                    continue
                zp = consts.get(node.input[zp_i]) if zp_i < len(node.input) and node.input[zp_i] else None
                if axis_spec == "axis":
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                elif axis_spec == "transB":
                    axis = 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else -1
                else:
                    axis = axis_spec
                value = node.input[value_i]
                while value not in consts and value in producer and producer[value].op_type in _ONNX_PASS_THROUGH \
                        and (zp is None or np.size(zp) == 1):  # a per-axis zero point's axis moves: not followed
                    value = producer[value].input[_ONNX_PASS_THROUGH[producer[value].op_type]]
                if value in consts:
                    zero_points[value] = (zp, axis)
        params = _onnx_quant_params(graph)
        for name, arr in consts.items():
            # int64: shapes, axes, indices (ONNX weights are float, int8/uint8 and int32 biases)
            if arr.dtype.kind not in "biuf" or arr.size == 0 or arr.dtype == np.int64 or name in params:
                continue
            zp = None
            if name in zero_points and arr.dtype.kind in "iu":
                zp, axis = zero_points[name]
                if axis is not None and arr.ndim:
                    axis = axis % arr.ndim
                zeros = _zeros_vs(arr, zp, axis)
            else:
                zeros = int(np.count_nonzero(arr == 0))
            tensors.append(_entry(name, arr.shape, arr.size, zeros, str(arr.dtype)))
            if arr.size in shared_for:
                tensors[-1]["shared_values"] = shared_values(arr, zp)
    return _totals(tensors, "onnx")


# ------------------------------------------------------------------------------ TF.js
_TFJS_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "uint8": np.uint8, "float16": np.float16,
                "uint16": np.uint16, "int8": np.int8, "int16": np.int16, "complex64": np.complex64}


def _count_tfjs(model_json: Path, shared_for: frozenset[int] = frozenset()) -> dict[str, Any]:
    try:
        spec = json.loads(model_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{model_json}: not a readable TF.js model.json ({exc})") from None
    tensors: list[dict[str, Any]] = []
    read = []
    for group in spec.get("weightsManifest", []):
        blob = b"".join((model_json.parent / p).read_bytes() for p in group.get("paths", []))
        offset = 0
        for w in group.get("weights", []):
            shape = tuple(int(d) for d in w.get("shape", []))
            size = int(np.prod(shape)) if shape else 1
            dtype = w.get("dtype", "float32")
            quant = w.get("quantization")
            if dtype == "string":
                raise UserError(f"{model_json}: string weight {w.get('name')!r}; cannot count its bytes")
            stored = _TFJS_DTYPES[quant["dtype"]] if quant else _TFJS_DTYPES[dtype]
            nbytes = size * np.dtype(stored).itemsize
            raw = np.frombuffer(blob[offset : offset + nbytes], dtype=stored)
            offset += nbytes
            if quant and quant["dtype"] in ("uint8", "uint16"):
                values = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
            else:
                values = raw.astype(np.float64) if raw.dtype.kind == "f" else raw
            label = f"{dtype}" + (f" ({quant['dtype']})" if quant else "")
            read.append((w.get("name", "?"), values.reshape(shape), label))
    for name, values, label in _groups_joined(read):
        tensors.append(_entry(name, tuple(values.shape), int(values.size), int(np.count_nonzero(values == 0)), label))
        if values.size in shared_for:
            tensors[-1]["shared_values"] = shared_values(values if values.ndim else values.reshape(1))
    return _totals(tensors, "tfjs")


def _groups_joined(read: list[tuple[str, np.ndarray, str]]) -> list[tuple[str, np.ndarray, str]]:
    """The weights of a grouped Conv2D, which the TF.js writer splits into one kernel per group
    (``<conv>/group_<g>_weights``, see graph_optimize.ungroup_convolutions), joined back into the
    layer's one kernel along its output channels: the kernel pruned or clustered is that one."""
    from deploykit.converters.graph_optimize import GROUP_KERNEL

    parts: dict[str, dict[int, tuple[np.ndarray, str]]] = {}
    out = []
    for name, values, label in read:
        match = GROUP_KERNEL.fullmatch(name)
        if match and values.ndim == 4:
            parts.setdefault(match.group(1), {})[int(match.group(2))] = (values, label)
        else:
            out.append((name, values, label))
    for conv, groups in parts.items():
        ordered = [groups[g] for g in sorted(groups)]
        out.append((f"{conv}/kernel", np.concatenate([v for v, _ in ordered], axis=-1), ordered[0][1]))
    return out


FORMATS = {"tflite": "tflite", "tflm": "tflite", "onnx": "onnx", "tfjs": "tfjs"}


def count_zeros(path: str | Path, format: str | None = None,  # noqa: A002 - the Target field's name
                shared_for: Any = ()) -> dict[str, Any]:
    """Zeros per constant tensor of a converted artifact.

    Args:
        path: A ``.tflite`` or ``.onnx`` file, a TF.js ``model.json``, or the directory holding it.
        format: ``tflite``, ``tflm``, ``onnx`` or ``tfjs`` when the file name does not tell
            (e.g. a temporary file before its final rename); default: from the suffix.
        shared_for: Tensor sizes (element counts) whose :func:`shared_values` are counted too,
            as ``shared_values`` (a clustering report's kernels: :func:`clustered_kernels`).

    Returns:
        ``{"format", "tensors": [{name, shape, size, zeros, sparsity, dtype[, shared_values]}], "total_zeros",
        "total_size"}``.

    Raises:
        UserError: missing file or a format this function does not read.

    Example:
        >>> counts = count_zeros("build/tflite-int8/model.tflite")
        >>> counts["total_zeros"] / counts["total_size"]
    """
    path = Path(path)
    if path.is_dir() and (path / "model.json").is_file():
        path = path / "model.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a .tflite, .onnx or TF.js model.json file")
    suffix = path.suffix.lower()
    if format is not None:
        if format not in FORMATS:
            raise UserError(f"cannot count zeros of format {format!r}; choose one of: {', '.join(FORMATS)}")
        suffix = {"tflite": ".tflite", "onnx": ".onnx", "tfjs": ".json"}[FORMATS[format]]
    sizes = frozenset(int(n) for n in shared_for)
    if suffix == ".tflite":
        return _count_tflite(path, sizes)
    if suffix == ".onnx":
        return _count_onnx(path, sizes)
    if suffix == ".json":
        return _count_tfjs(path, sizes)
    raise UserError(f"{path}: cannot count zeros in a {suffix or 'suffix-less'} file; pass a .tflite, .onnx or TF.js model.json")


def pruned_kernels(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The pruned kernels of a pruning report: ``[{layer, weight, size, zeros, sparsity}]``."""
    out = []
    for layer in report.get("layers", []):
        for k in layer.get("kernels", []):
            out.append({"layer": layer["name"], "weight": k["weight"], "size": int(k["size"]),
                        "zeros": int(k["zeros"]), "sparsity": float(k["achieved_sparsity"])})
    return out


def check_sparsity_survived(
    pruned_report: dict[str, Any], artifact_counts: dict[str, Any], *, tolerance: float = 0.01
) -> list[str]:
    """Which pruned kernels an artifact densified; empty when every kernel's zeros survived.

    Each kernel (size ``n``, achieved sparsity ``s``) claims one artifact tensor of ``n``
    elements with at least ``s - tolerance`` zeros. Kernels are matched sparsest first
    and each claims the sparsest free tensor, so two kernels of equal size cannot share
    one tensor.

    Args:
        pruned_report: ``PruneResult.report`` (or the dict it was saved as).
        artifact_counts: :func:`count_zeros` of the artifact.
        tolerance: Allowed loss of sparsity (fraction of the kernel's elements).

    Returns:
        One message per densified kernel.
    """
    free: dict[int, list[dict[str, Any]]] = {}
    for t in artifact_counts.get("tensors", []):
        free.setdefault(int(t["size"]), []).append(t)
    for group in free.values():
        group.sort(key=lambda t: -t["zeros"])
    failures = []
    fmt = artifact_counts.get("format", "artifact")
    for k in sorted(pruned_kernels(pruned_report), key=lambda k: -k["sparsity"]):
        candidates = free.get(k["size"], [])
        need = k["sparsity"] - tolerance
        match = next((t for t in candidates if t["zeros"] / k["size"] >= need - 1e-12), None)
        if match is not None:
            candidates.remove(match)
            continue
        best = max((t["zeros"] / k["size"] for t in candidates), default=None)
        found = (f"the sparsest free tensor of that size has {best:.1%} zeros" if best is not None
                 else "no tensor of that size is left")
        failures.append(
            f"{k['layer']}/{k['weight']} ({k['size']} weights, {k['sparsity']:.1%} zeros) was densified in the "
            f"{fmt} artifact: {found}"
        )
    return failures


def clustered_kernels(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The clustered kernels of a clustering report: ``[{layer, weight, size, clusters}]``
    (``clusters``: the distinct non-zero values the kernel holds, and never more than the
    requested number: a kernel the clustering missed fails the check instead of setting its bound)."""
    limit = int(report.get("clusters") or 0) or None
    return [{"layer": l["name"], "weight": l["weight"], "size": int(l["size"]),
             "clusters": min(int(l["distinct_nonzero_after"]), limit or int(l["distinct_nonzero_after"]))}
            for l in report.get("layers", [])]


def check_clusters_survived(cluster_report: dict[str, Any], artifact_counts: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Which clustered kernels an artifact no longer stores as shared values.

    A kernel of ``n`` weights in ``k`` clusters claims one tensor of ``n`` elements (counted with
    ``shared_for``) that holds at most ``k`` distinct non-zero values per output channel, on an
    axis where some channel has more than ``k`` non-zero values (fewer prove nothing). It is lost
    only when every axis has such channels and holds more values. Kernels with the fewest
    clusters are matched first.

    Returns:
        ``(lost, unproven)``: one message per kernel stored with more values than its clusters, and
        the kernels whose candidate tensor has, on one of the axes, channels too short to tell
        (that axis may be the channel axis; the other then mixes channels).
    """
    free: dict[int, list[dict[str, Any]]] = {}
    for t in artifact_counts.get("tensors", []):
        if "shared_values" in t:
            free.setdefault(int(t["size"]), []).append(t)
    fmt = artifact_counts.get("format", "artifact")
    lost, unproven = [], []
    for k in sorted(clustered_kernels(cluster_report), key=lambda k: k["clusters"]):
        candidates = free.get(k["size"], [])
        proven = next((t for t in candidates if any(n <= k["clusters"] < nonzero for n, nonzero in t["shared_values"])), None)
        if proven is not None:
            candidates.remove(proven)
            continue
        # A channel axis too short to tell may be the real one: the other axis then mixes channels whose
        # per-channel factors (int8 scales, folded BatchNorm) multiply the shared values apart.
        short = next((t for t in candidates if any(nonzero <= k["clusters"] for _, nonzero in t["shared_values"])), None)
        if short is not None:
            candidates.remove(short)
            unproven.append(f"{k['layer']}/{k['weight']}")
            continue
        fewest = min((n for t in candidates for n, nonzero in t["shared_values"] if nonzero > k["clusters"]), default=None)
        found = (f"the closest tensor of that size holds {fewest} distinct values in one channel" if fewest is not None
                 else "no tensor of that size is left")
        lost.append(f"{k['layer']}/{k['weight']} ({k['size']} weights, {k['clusters']} shared values) was not stored as "
                    f"shared values in the {fmt} artifact: {found}")
    return lost, unproven
