"""TF.js converter: SavedModel -> frozen, optimized GraphDef -> TF.js graph model.

Why we write the format ourselves: the ``tensorflowjs`` pip package (4.22.0,
its last release) cannot be installed beside TensorFlow 2.21 (it pulls
tensorflow-decision-forests, which pins TF 2.19, plus jax and flax), while
the TF.js runtime on npm is healthy. The graph-model format is small: a
``model.json`` holding the GraphDef as JSON (``modelTopology``), the serving
``signature`` and a ``weightsManifest``, plus binary weight shards. We build
the graph with TensorFlow's own tools (``convert_variables_to_constants_v2``,
Grappler) and our own fusion pass (:mod:`graph_optimize`), and we check every
op against what the pinned TF.js runtime can execute before writing anything.

Target weights field -> storage: float32, float16 (half the bytes), uint8 /
uint16 (affine per tensor, ~1/4 and ~1/2 of the bytes); the runtime always
computes in float32.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from deploykit.converters import OptionSpec
from deploykit.errors import ConversionError

SUFFIX = ".json"
OPS_FILE = Path(__file__).resolve().parents[1] / "runtime_bench" / "tfjs" / "supported_ops.txt"
# Ops that stop a model from running in TF.js and what a user can do about them.
_HINTS = {
    "String": "string ops (e.g. TextVectorization/StringLookup) do not run in TF.js: do that preprocessing in JavaScript and feed numbers",
}

OPTIONS: dict[str, OptionSpec] = {
    "shard_size_bytes": OptionSpec(4 * 1024 * 1024, "Largest weight shard file, in bytes (the TF.js converter's default is 4 MB).",
                                   type=int, minimum=1024),
    "fuse": OptionSpec(True, "Fuse conv/matmul + per-channel bias + activation into TF.js fused ops.", type=bool),
    "backend": OptionSpec("wasm", "TF.js backend that verifies and benchmarks the artifact in Node.", choices=("wasm", "cpu")),
}


ASYNC_OPS_FILE = OPS_FILE.with_name("async_ops.txt")


def _op_list(path: Path) -> set[str]:
    """The op names listed in one of the runtime's generated op files (see runtime_bench/tfjs/ops.mjs)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise ConversionError(f"the TF.js op list {path} is missing; reinstall deploykit") from None
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def supported_ops() -> set[str]:
    """Op names the pinned TF.js runtime executes (from its op mappers; see runtime_bench/tfjs)."""
    return _op_list(OPS_FILE)


def async_ops() -> set[str]:
    """Op names TF.js's graph model runs only with executeAsync (control flow, dynamic shapes, hash tables)."""
    return _op_list(ASYNC_OPS_FILE)


# Kernels TF.js 4.22's cpu backend has and its wasm backend lacks (tf.getKernelsForBackend),
# as the TF ops that reach them. Einsum is lowered to BatchMatMul before this check.
WASM_MISSING = {"Einsum", "FFT", "IFFT", "RFFT", "IRFFT", "Complex", "ComplexAbs", "Real", "Imag",
                "UnsortedSegmentSum", "Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter",
                "DepthwiseConv2dNativeBackpropInput"}


def check_ops(graph_def: Any, target_name: str, backend: str = "wasm") -> None:
    """Raise ConversionError naming every op the runtime cannot execute."""
    if backend == "wasm":
        lacking = sorted({n.op for n in graph_def.node if n.op in WASM_MISSING})
        if lacking:
            # An Einsum left here is one the lowering could not take: its sizes are unknown (attention over
            # a sequence of any length), which a fixed length in the model's input gives.
            fixed = " or give the model's inputs a fixed length (an attention Einsum of known sizes is lowered)" \
                if "Einsum" in lacking else ""
            raise ConversionError(
                f"{target_name}: TF.js's wasm backend has no kernel for {', '.join(lacking)}; use a target with "
                f"options.backend = \"cpu\" (slower){fixed}, or replace those ops"
            )
    band = [n.name for n in graph_def.node if n.op == "MatrixBandPart"]
    if band:  # rewritten by graph_optimize.lower_band_part wherever its shape and limits are known
        raise ConversionError(
            f"{target_name}: TF.js 4.22 computes MatrixBandPart (tril/triu, causal attention masks; e.g. "
            f"{band[0].replace('StatefulPartitionedCall/', '')}) wrongly, and its last two dimensions are not fixed "
            "here; give the model a fixed sequence length"
        )
    known = supported_ops()
    missing: dict[str, list[str]] = {}
    for node in graph_def.node:
        if node.op not in known:
            missing.setdefault(node.op, []).append(node.name)
    if not missing:
        return
    parts = []
    for op, names in sorted(missing.items()):
        where = names[0].replace("StatefulPartitionedCall/", "")
        parts.append(f"{op} (e.g. {where})")
    hints = {h for op in missing for key, h in _HINTS.items() if key in op}
    hint = "; ".join(sorted(hints)) or "replace those layers, move them out of the model, or choose another target"
    raise ConversionError(f"{target_name}: TF.js 4.22 cannot run op(s) {', '.join(parts)}; {hint}")


LOOP_OPS = {"Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond"}


def keep_loop_outputs(graph_def: Any, target_name: str) -> int:
    """Have each loop body write to its TensorList the tensor it also hands on as loop state.

    Keras's recurrent layers (LSTM, GRU, SimpleRNN) loop in a functional While whose body writes
    each step's output into a TensorList and returns the same value through an Identity as the next
    state. TF.js 4.22 disposes every tensor a function computed except its outputs when the function
    returns, the one written into the list included: the list then held freed tensors, and its
    TensorListStack failed ("Cannot read properties of undefined (reading 'backend')") on the cpu
    and wasm backends alike, except where only the last step's value was read. The Identity's
    output is the same value and survives the body, so the list is pointed at it.

    Returns:
        How many list writes were pointed at the body's output.

    Raises:
        ConversionError: a loop writes a value that is not one of its outputs (a custom cell).
    """
    count = 0
    for func in graph_def.library.function:
        outputs = {ref.split(":")[0] for ref in func.ret.values()}
        alias = {}  # what an output Identity copies -> that Identity's output
        for node in func.node_def:
            if node.op == "Identity" and node.name in outputs:
                data = [ref for ref in node.input if not ref.startswith("^")]
                alias.setdefault(data[0], f"{node.name}:output:0")
        returned = set(func.ret.values())
        for node in func.node_def:
            # a body argument, or a value the body returns itself (tf_keras's loops), lives on
            if node.op != "TensorListSetItem" or ":" not in node.input[2] or node.input[2] in returned:
                continue
            if node.input[2] not in alias:
                raise ConversionError(
                    f"{target_name}: a loop ({node.name.split('/while')[0]}) outputs per step a value that is not its "
                    "state (a custom RNN cell, a keras.ops.scan), which TF.js 4.22 frees before reading it; return the "
                    "state as the step's output, unroll the layer (unroll=True with a fixed sequence length) or choose "
                    "another target")
            node.input[2] = alias[node.input[2]]
            count += 1
    return count


def _refuse_loops(graph_def: Any, target_name: str) -> None:
    """Graph loops (Keras 3 LSTM/GRU/RNN layers) are not written yet: say so before writing.

    Freezing lowers a while loop to Enter/Exit/Merge/Switch frames whose unused inputs
    become Placeholders the TF.js executor then waits for; the run would only fail later
    with "Cannot compute the outputs".
    """
    loops = sorted({n.name.split("/while")[0].replace("StatefulPartitionedCall/", "")
                    for n in graph_def.node if n.op in LOOP_OPS})
    if loops:
        raise ConversionError(
            f"{target_name}: the model has graph loops ({', '.join(loops[:3])}; recurrent layers such as LSTM/GRU) "
            "that deploykit's TF.js writer does not support yet; unroll them (e.g. LSTM(unroll=True) with a fixed "
            "sequence length) or choose another target"
        )


# Lookup tables (IntegerLookup, StringLookup, Hashing's vocabularies): TF.js runs HashTableV2 and
# LookupTableFindV2, but the table is filled by the SavedModel's initializer function, which the frozen
# graph leaves out; TF.js then waited for an input named "unknown" ("Cannot compute the outputs").
TABLE_OPS = {"HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2", "MutableDenseHashTable",
             "MutableDenseHashTableV2", "LookupTableFind", "LookupTableFindV2"}


def _refuse_tables(graph_def: Any, target_name: str, model: Any) -> None:
    """Say that the model's lookup tables are not written, naming the layers, before writing anything."""
    nodes = [n for n in list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
             if n.op in TABLE_OPS]
    if not nodes:
        return
    # the layer each lookup computes in (the export numbers scopes: integer_lookup_1 for the layer integer_lookup);
    # the tables themselves are resources named after nothing ("unknown")
    named = sorted({model.layer_at(n.name) for n in nodes if n.op.startswith("LookupTableFind")} - {""}) \
        or sorted({n.op for n in nodes})
    raise ConversionError(
        f"{target_name}: the model has lookup tables ({', '.join(named[:3])}; IntegerLookup/StringLookup layers) "
        "whose contents deploykit's TF.js writer does not write; map the ids before the model (outside it) or "
        "choose another target")


def _rename_ref(ref: str, rename: dict[str, str]) -> str:
    control = ref.startswith("^")
    head, sep, tail = ref.lstrip("^").partition(":")
    return ("^" if control else "") + rename.get(head, head) + sep + tail


def _function_weights(graph_def: Any, weights: str) -> list[Any]:
    """Constants inside library functions (loop bodies) as weights, like the graph's own.

    The TF.js executor looks every Const up by node name in one weight map shared by the
    graph and its functions, so each function's constants get names unique to it
    (``<function>/<node>``), references inside the function renamed to match.
    """
    from deploykit._quiet import import_tensorflow

    tf = import_tensorflow()
    out = []
    for func in graph_def.library.function:
        consts = [n for n in func.node_def if n.op == "Const"]
        if not consts:
            continue
        rename = {n.name: f"{func.signature.name}/{n.name}" for n in consts}
        for node in func.node_def:
            refs = [_rename_ref(r, rename) for r in node.input]
            del node.input[:]
            node.input.extend(refs)
        for key in list(func.ret):
            func.ret[key] = _rename_ref(func.ret[key], rename)
        for key in list(func.control_ret):
            func.control_ret[key] = rename.get(func.control_ret[key], func.control_ret[key])
        for node in consts:
            node.name = rename[node.name]
            out.append(_into_shards(node, tf.make_ndarray(node.attr["value"].tensor), weights))
    return out


def _into_shards(node: Any, value: Any, weights: str) -> Any:
    """``value`` of Const ``node`` as a shard weight; the node keeps only its dtype and shape."""
    from deploykit._quiet import import_tensorflow
    from deploykit.converters.tfjs_weights import encode

    tf = import_tensorflow()
    weight = encode(node.name, value, weights)
    dtype = {"float32": tf.float32, "int32": tf.int32, "bool": tf.bool}[weight.entry["dtype"]]
    shape = type(node.attr["value"].tensor.tensor_shape)()
    shape.CopyFrom(node.attr["value"].tensor.tensor_shape)
    node.attr["value"].tensor.Clear()
    node.attr["value"].tensor.dtype = dtype.as_datatype_enum
    node.attr["value"].tensor.tensor_shape.CopyFrom(shape)
    node.attr["dtype"].type = dtype.as_datatype_enum
    return weight


def _graph_weights(graph_def: Any, weights: str) -> tuple[list[Any], int]:
    """The graph's constants as shard weights, each value stored once; returns them and how many copies went.

    Freezing gives each call of a layer its own copy of the layer's weights: a Dense applied twice
    (a shared layer, a siamese tower) was written into the shards twice, doubling its download and
    the memory the TF.js runtime holds it in. A copy's consumers read the kept Const instead. A
    grouped conv's per-group kernels stay apart even when equal: the pruning and clustering checks
    join them back into the layer's one kernel (sparsity._groups_joined).
    """
    import hashlib

    from deploykit._quiet import import_tensorflow
    from deploykit.converters.graph_optimize import GROUP_KERNEL

    tf = import_tensorflow()
    encoded, first, same = [], {}, {}
    for node in graph_def.node:
        for key in [k for k in node.attr if k.startswith("_")]:
            del node.attr[key]  # e.g. _output_shapes: not read by the runtime
        if node.op != "Const":
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        if not GROUP_KERNEL.fullmatch(node.name):
            key = (value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).hexdigest())
            if key in first:
                same[node.name] = first[key]
                continue
            first[key] = node.name
        encoded.append(_into_shards(node, value, weights))
    if same:
        kept = [n for n in graph_def.node if n.name not in same]
        for node in kept:
            refs = [_rename_ref(r, same) for r in node.input]
            del node.input[:]
            node.input.extend(refs)
        del graph_def.node[:]
        graph_def.node.extend(kept)
    return encoded, len(same)


def _tensor_info(name: str, spec: Any) -> dict[str, Any]:
    dims = [{"size": str(-1 if d is None else int(d))} for d in spec.shape]
    return {"name": name, "dtype": f"DT_{spec.dtype.name.upper()}".replace("DT_FLOAT32", "DT_FLOAT"),
            "tensorShape": {"dim": dims}}


def converter_settings(target: Any) -> dict[str, Any]:
    """The settings this target maps to (recorded in the manifest)."""
    return {"converter": "deploykit graph-model writer (frozen SavedModel + Grappler)", "weights": target.weights,
            **target.options}


def _optimized_graph(model: Any, target_name: str, fuse: bool) -> Any:
    """The frozen, optimized graph, built once per run and handed out as a copy (writing mutates it).

    Every TF.js precision starts from the same graph; MobileNetV2 takes seconds to freeze and optimize.
    """
    from dataclasses import replace

    from tensorflow.core.framework import graph_pb2

    from deploykit.converters import graph_optimize

    cache = model.__dict__.setdefault("_tfjs_graph_cache", {})
    if fuse not in cache:
        try:
            cache[fuse] = graph_optimize.optimize(model.saved_model_dir(), fuse=fuse)
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"{target_name}: freezing the serving function failed: {' '.join(str(exc).split())[:300]}") from None
    copy = graph_pb2.GraphDef()
    copy.CopyFrom(cache[fuse].graph_def)
    return replace(cache[fuse], graph_def=copy, fusions=dict(cache[fuse].fusions))


def _declared_order(entries: dict[str, Any], declared: list[str]) -> dict[str, Any]:
    """``entries`` (keyed by SavedModel signature key) keyed by the ``declared`` names, in their order.

    A Keras input named ``Pixel-Values`` has the signature key ``Pixel_Values``: the model.json keeps
    the user's name (TF.js resolves a signature key to its node, whatever characters it holds), so
    ``execute({'Pixel-Values': x})`` works as the report says; unchanged when the names do not match.
    """
    from deploykit.models import signature_key

    keys = [name if name in entries else signature_key(name) for name in declared]
    if sorted(keys) != sorted(entries) or len(set(keys)) != len(keys):
        return entries
    return {name: entries[key] for name, key in zip(declared, keys)}


def _sorted_keys(obj: Any) -> Any:
    """``obj`` with every dict's keys sorted, recursively (lists keep their order)."""
    if isinstance(obj, dict):
        return {k: _sorted_keys(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted_keys(v) for v in obj]
    return obj


def convert(model: Any, target: Any, calibration: Any, out_path: Path) -> dict[str, Any]:
    """Write ``model`` as a TF.js graph model: ``out_path`` (model.json) plus shards beside it.

    Returns:
        The settings used; ``external_data_files`` lists the shard files.

    Raises:
        ConversionError: an op the TF.js runtime cannot execute, or a constant it cannot hold.
    """
    from google.protobuf.json_format import MessageToDict

    from deploykit import __version__
    from deploykit._quiet import import_tensorflow
    from deploykit.converters.tfjs_weights import write_shards

    tf = import_tensorflow()
    opts = target.options
    settings = converter_settings(target)
    graph = _optimized_graph(model, target.name, opts["fuse"])
    gd = graph.graph_def
    _refuse_loops(gd, target.name)
    _refuse_tables(gd, target.name, model)
    check_ops(gd, target.name, opts["backend"])
    rewired = keep_loop_outputs(gd, target.name)
    if rewired:
        graph.fusions["TensorListSetItem given the loop output"] = rewired
    encoded, shared = _graph_weights(gd, target.weights)
    if shared:
        graph.fusions["equal constants stored once"] = shared
    encoded += _function_weights(gd, target.weights)
    out_path = Path(out_path)
    manifest, shard_names = write_shards(encoded, out_path.parent, opts["shard_size_bytes"])
    # The signature in the model's own input and output order: TF.js takes a model's inputs (and
    # predict()'s array arguments) in the order of these keys, and a SavedModel's are alphabetical.
    inputs = _declared_order(graph.inputs, [s.name for s in model.inputs])
    outputs = _declared_order(graph.outputs, list(model.output_names))
    model_json = {
        "convertedBy": f"deploykit {__version__}",
        "format": "graph-model",
        "generatedBy": tf.__version__,
        # Sorted keys: MessageToDict's order varies from run to run, and so did the file's sha256 and gzip size.
        "modelTopology": _sorted_keys(MessageToDict(gd)),
        "signature": {
            "inputs": {k: _sorted_keys(_tensor_info(t, s)) for k, (t, s) in inputs.items()},
            "outputs": {k: _sorted_keys(_tensor_info(t, s)) for k, (t, s) in outputs.items()},
        },
        "weightsManifest": _sorted_keys(manifest),
    }
    out_path.write_text(json.dumps(model_json, separators=(",", ":")))
    settings.update(
        {
            "external_data_files": shard_names,
            "input_names": list(inputs),
            "output_names": list(outputs),
            "fused_ops": graph.fusions,
            "weight_bytes": sum(len(e.data) for e in encoded),
        }
    )
    used = {n.op for n in gd.node} | {n.op for f in gd.library.function for n in f.node_def}
    # the ops the runtime must carry, as TFLite's record names them (a count here broke the failure hints)
    settings.update({"ops": sorted(used), "nodes": len(gd.node)})
    # TF.js tensors are float32, int32, bool (or string): an integer input of another width is an
    # int32 tensor there, and model.execute refuses float32 pixels for it.
    needs_async = sorted(used & async_ops())
    if needs_async:  # model.execute() throws on them ("use model.executeAsync() instead"): only the manifest's
        # benchmark.execution said so, and nothing with --no-bench
        settings["execute_async_ops"] = needs_async
    notes = []
    narrow = [s for s in model.inputs if s.dtype not in ("float32", "int32", "bool", "string")
              and not s.dtype.startswith("float")]
    if narrow:
        # the fromPixels remark only where it applies: an image's uint8 pixels (token ids come from a tokenizer)
        pixels = any(s.dtype == "uint8" and len(s.shape) == 4 for s in narrow)
        notes.append("TF.js has no " + "/".join(sorted({s.dtype for s in narrow})) + " tensors: feed "
                     + ", ".join(f"`{s.name}`" for s in narrow) + " as int32 ("
                     + ("tf.browser.fromPixels gives int32; " if pixels else "tf.tensor(ids, shape, 'int32'); ")
                     + "model.execute refuses float32 for it)")
    wide = [s for s in model.inputs if s.dtype.startswith("float") and s.dtype != "float32"]
    if wide:  # TF.js reads DT_DOUBLE/DT_HALF as float32, and refuses int32 there ("must be float32")
        notes.append("TF.js has no " + "/".join(sorted({s.dtype for s in wide})) + " tensors: feed "
                     + ", ".join(f"`{s.name}`" for s in wide) + " as float32, which TF.js computes it in")
    # and the same on the way out: an int64 output arrives as an int32 tensor (a hashed id or a timestamp
    # past 2**31 wraps there, and verification, on the model's own values, would not show it)
    outs = [s for s in model.info().outputs if s.dtype not in ("float32", "int32", "bool", "string")]
    if outs:
        notes.append("TF.js returns " + ", ".join(f"`{s.name}` ({s.dtype})" for s in outs) + " as "
                     + " and ".join(sorted({"float32" if s.dtype.startswith("float") else "int32" for s in outs}))
                     + (" tensors: values beyond int32's ±2**31 do not survive" if any(s.dtype in ("int64", "uint64", "uint32") for s in outs)
                        else " tensors"))
    if notes:
        settings["note"] = "; ".join(notes)
    return settings
