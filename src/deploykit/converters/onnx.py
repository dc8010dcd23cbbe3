"""ONNX converter: SavedModel -> frozen GraphDef -> tf2onnx -> (ONNX Runtime quantizer).

``tf2onnx.convert.from_keras`` breaks on Keras 3, so every model goes through
the run's shared SavedModel export. The serving function is frozen with its
nested functions inlined before tf2onnx sees it: a graph that keeps a nested
``StatefulPartitionedCall`` (ConvNeXtTiny here) converts into an ONNX file that
ONNX Runtime refuses ("No Op registered for StatefulPartitionedCall").

Precision follows the target's numeric fields:

====================================  =========================================
weights float16                       float16 weights, float32 inputs/outputs kept
weights int8, activations float32     ``quantize_dynamic`` (int8 weights)
activations uint8/int8                ``quantize_static`` calibrated on the run's
                                      data; ``options.quant_format`` = qdq|qoperator
activations int16                     the same, QDQ only; ONNX Runtime writes opset 21
                                      (16-bit QuantizeLinear is a standard op from there)
====================================  =========================================

Inputs and outputs keep the serving signature's names (``pixels``,
``output_0``), and the batch dimension stays dynamic, named ``batch``.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from deploykit._quiet import foreign_warnings_ignored, library_logs_muted, native_stderr_captured, python_stdout_quiet
from deploykit.converters import OptionSpec, fits_float16, is_vector
from deploykit.converters.graph_rewrite import prepare_for_export
from deploykit.errors import ConversionError
from deploykit.tmpdirs import TempDir

SUFFIX = ".onnx"
EXTERNAL_DATA_SUFFIX = ".data"
# Protobuf cannot serialize a message over 2 GiB; leave margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1800 * 1024 * 1024
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}

OPTIONS: dict[str, OptionSpec] = {
    "opset": OptionSpec(17, "ONNX opset to convert to (tf2onnx 1.17 writes up to 18); 16-bit quantization writes 21, "
                            "which its QuantizeLinear needs (the manifest records the opset written).",
                        type=int, minimum=13, maximum=18),
    "quant_format": OptionSpec(
        "qdq", "Static quantization format: qdq (QuantizeLinear/DequantizeLinear pairs) or qoperator (QLinearConv...).",
        choices=("qdq", "qoperator"), variant=True,
    ),
    "per_channel": OptionSpec(True, "Quantize weights per output channel.", type=bool),
    # Default on: x86 CPUs without VNNI (AVX2 only, as the AMD EPYC this was measured on) saturate in
    # ORT's U8S8 kernels with full 8-bit weights. Measured on the digits example: 98 elements off by up
    # to 0.6 in probability without it, 2 elements off by 0.07 with it. Set false for VNNI-only fleets.
    # (onnx-int16x8 sets it false: int16 activations do not run on those kernels.)
    "reduce_range": OptionSpec(True, "7-bit weights: avoids U8S8 saturation on x86 CPUs without VNNI (costs little accuracy).", type=bool),
    # ORT's QDQ format stores each bias as int32 plus per-channel scales and int32 zero points;
    # kept float32, MobileNetV2's QDQ file is 0.280x fp32 instead of 0.299x, with the same speed
    # (ONNX Runtime still fuses the convs into its int8 kernels) and the same outputs here.
    "quantize_bias": OptionSpec(True, "QDQ only: store biases as int32 (true) or keep them float32 (false: smaller; "
                                "some accelerator runtimes want int32 bias).", type=bool),
    "calibrate_method": OptionSpec("minmax", "Static calibration: minmax, entropy or percentile.",
                                   choices=("minmax", "entropy", "percentile")),
    "external_data": OptionSpec(
        "auto", "Store weights in a separate .data file: auto (only when the model is too big for one protobuf) or always.",
        choices=("auto", "always"),
    ),
}


def converter_settings(target: Any) -> dict[str, Any]:
    """Settings this target maps to (recorded in the manifest)."""
    # Only the options that shaped this file: quant_format, quantize_bias... on a float32 file read as if
    # it were quantized that way.
    static = target.activations in ("int8", "uint8", "int16")
    dynamic = target.weights == "int8" and not static
    unused = (() if static else ("quant_format", "quantize_bias", "calibrate_method") if dynamic
              else ("quant_format", "quantize_bias", "calibrate_method", "per_channel", "reduce_range"))
    settings = {"converter": "tf2onnx.from_graph_def (frozen SavedModel)",
                **{k: v for k, v in target.options.items() if k not in unused}}
    if target.weights == "float16":
        settings["quantization"] = "float16 weights + Cast to float32 (float32 compute and I/O)"
    elif target.activations in ("int8", "uint8", "int16"):
        settings["quantization"] = f"static {target.options['quant_format']} (onnxruntime.quantization.quantize_static)"
        settings["activation_type"] = target.activations
        settings["calibration_samples"] = target.calibration_samples
    elif target.weights == "int8":
        settings["quantization"] = "dynamic (onnxruntime.quantization.quantize_dynamic)"
        # DynamicQuantizeLinear takes one scale over the whole input tensor of each call: a sample's
        # output depends on the other samples in its batch (measured: 97.6 % agreement at batch 8,
        # 96.4 % with 497 samples in one call). Verified as an app running one sample per call sees it.
        settings["batch_dependent"] = True
        settings["note"] = ("activations are quantized per call with one scale for the whole batch, so a sample's "
                            "output depends on the other samples in its batch: verified one sample per call")
    else:
        settings["quantization"] = "none"
    return settings


@foreign_warnings_ignored  # tf2onnx and TensorFlow's graph tools: their warnings are not the caller's
def to_onnx(model: Any, opset: int) -> Any:
    """Convert the run's SavedModel to an fp32 ONNX ModelProto (cached per opset on the model)."""
    import onnx

    cache = model.__dict__.setdefault("_onnx_fp32_cache", {})
    if opset in cache:  # a copy: saving with external data rewrites a proto in place
        copy = onnx.ModelProto()
        copy.CopyFrom(cache[opset])
        return copy
    from deploykit._quiet import environment_kept, import_tensorflow

    import_tensorflow()
    with environment_kept(), native_stderr_captured():  # importing tf2onnx sets TF_CPP_MIN_LOG_LEVEL=3 for good
        from tf2onnx import convert as tf2onnx_convert
        from tf2onnx import tf_loader
    with library_logs_muted(), native_stderr_captured() as cap:
        try:
            graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
                str(model.saved_model_dir()), None, None, "serve", ["serving_default"],
                return_tensors_to_rename=True,
            )
            graph_def = prepare_for_export(graph_def, onnx=True)
            _refuse_misconverted_ops(graph_def)
            proto, _ = tf2onnx_convert.from_graph_def(
                graph_def, input_names=inputs, output_names=outputs, opset=opset, tensors_to_rename=renames,
            )
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(_explain(exc, cap.text, opset)) from None
    _check_domains(proto, opset)
    _resize_by_sizes(proto)
    _nearest_in_spec_terms(proto.graph)
    _name_batch_dims(proto)
    _keras_input_names(proto, [s.name for s in model.inputs])
    cache[opset] = proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _refuse_misconverted_ops(graph_def: Any) -> None:
    """Refuse TensorFlow ops tf2onnx converts to an ONNX op that computes something else.

    tf2onnx 1.17 maps ResizeArea (Keras ``Resizing(interpolation="area")``) to a nearest-neighbour
    Resize: the file loads and runs, 0.19 off the model, and an int8 file made from it passed on
    agreement alone. ONNX has no area resize.
    """
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    area = [n.name.replace("StatefulPartitionedCall/", "") for n in nodes if n.op == "ResizeArea"]
    if area:
        raise ConversionError(
            f"ONNX has no area resize, and tf2onnx would turn ResizeArea (e.g. {area[0]}) into a nearest-neighbour "
            "Resize that computes something else; use interpolation='bilinear' in that Resizing layer, or resize "
            "before the model's input")


def _check_domains(proto: Any, opset: int) -> None:
    """Refuse graphs holding ops that are not ONNX ops (tf2onnx passes unknown TF ops through)."""
    import onnx

    odd_nodes = [n for n in proto.graph.node
                 if n.domain not in STANDARD_DOMAINS or (n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type))]
    odd = Counter(n.op_type for n in odd_nodes)
    if odd:
        # The node name carries the Keras layer (functional_1/odd_gamma_1/Igamma): where to look.
        first = {}
        for n in odd_nodes:
            first.setdefault(n.op_type, n.name.replace("StatefulPartitionedCall/", ""))
        ops = ", ".join(f"{op} (x{k}, e.g. {first[op]})" for op, k in sorted(odd.items()))
        raise ConversionError(
            f"tf2onnx could not convert op(s) {ops} at opset {opset}; replace those layers with supported ops, "
            "or try another opset (options.opset) if a newer ONNX opset has the op"
        )


def _resize_by_sizes(proto: Any) -> int:
    """Give each Resize that tf2onnx wrote with constant ``scales`` the output sizes the model meant.

    tf2onnx turns ``Resizing(36, 36)`` of a 40x40 image into scales 0.9, and ONNX defines the output
    as floor(40 * 0.9): 36 where a runtime multiplies in float32 (ONNX Runtime), 35 in float64
    (onnx's shape inference, so the checker refused the int8 file the quantizer annotated with 36, and
    any runtime that computes so). The resized dimensions are known here: ``sizes`` says them, the
    others are read from the input at run time (batch, channels). Returns how many were rewritten.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    consts = {i.name: i for i in proto.graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in proto.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    resizes = [(i, n) for i, n in enumerate(proto.graph.node) if n.op_type == "Resize" and len(n.input) >= 3
               and n.input[2] in consts and (len(n.input) < 4 or not n.input[3])]
    if not resizes:
        return 0
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - a graph shape inference cannot take (or over 2 GB): left as tf2onnx wrote it
        return 0
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input] if v.type.tensor_type.HasField("shape")}
    before: dict[int, list[Any]] = {}  # Resize's index -> the nodes computing its sizes, put right before it
    replaced: set[str] = set()  # the scales the rewritten Resizes read
    for index, node in resizes:
        scales = numpy_helper.to_array(consts[node.input[2]]).astype(np.float64)
        dims = shapes.get(node.input[0])
        if dims is None or len(dims) != len(scales) or scales.size == 0:
            continue
        resized = [i for i, s in enumerate(scales) if s != 1.0]
        if not resized or any(dims[i] is None for i in resized) or any(s <= 0 for s in scales):
            continue
        prefix = f"{node.name or node.output[0]}/sizes"
        start, end = min(resized), len(scales)
        if any(dims[i] is None for i in range(start, end)):  # a dimension kept after a resized one, unknown here
            continue
        target = np.array([int(round(dims[i] * scales[i])) for i in range(start, end)], np.int64)
        if _is_tf_nearest(node):  # TF's own source indices, gathered: the same pixels in every runtime
            replaced.update(n for n in node.input[1:3] if n)
            before[index] = _nearest_as_gathers(proto, node, {i: (dims[i], int(round(dims[i] * scales[i])))
                                                              for i in resized})
            continue
        before[index] = [
            helper.make_node("Shape", [node.input[0]], [f"{prefix}/shape"], name=f"{prefix}/shape"),
            helper.make_node("Slice", [f"{prefix}/shape", f"{prefix}/zero", f"{prefix}/start"], [f"{prefix}/kept"],
                             name=f"{prefix}/kept"),
            helper.make_node("Concat", [f"{prefix}/kept", f"{prefix}/resized"], [prefix], name=prefix, axis=0),
        ]
        proto.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), f"{prefix}/zero"),
                                        numpy_helper.from_array(np.array([start], np.int64), f"{prefix}/start"),
                                        numpy_helper.from_array(target, f"{prefix}/resized")])
        inputs = [node.input[0], node.input[1], "", prefix]
        replaced.add(node.input[2])
        del node.input[:]
        node.input.extend(inputs)
    if before:  # the graph stays in topological order
        nodes = []
        for i, n in enumerate(proto.graph.node):
            kept = onnx.NodeProto()
            kept.CopyFrom(n)
            nodes += [*before.get(i, []), kept]
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        # The scales nothing reads any more: ONNX Runtime said "Removing initializer 'scales__9'" at every load.
        read = _outer_names(proto.graph) | {n for node in proto.graph.node for n in node.input}
        unread = replaced - read
        kept_inits = [i for i in proto.graph.initializer if i.name not in unread]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept_inits)
        kept_nodes = [n for n in proto.graph.node if not (n.op_type == "Constant" and n.output[0] in unread)]
        del proto.graph.node[:]
        proto.graph.node.extend(kept_nodes)
    return len(before)


def _is_tf_nearest(node: Any) -> bool:
    """A Resize tf2onnx wrote for TF's half-pixel nearest-neighbour resize (Keras Resizing(interpolation="nearest"))."""
    attrs = {a.name: a.s for a in node.attribute if a.type == a.STRING}
    return (attrs.get("mode") == b"nearest" and attrs.get("coordinate_transformation_mode") == b"tf_half_pixel_for_nn"
            and attrs.get("nearest_mode", b"round_prefer_floor") == b"floor")


def tf_nearest_indices(size_in: int, size_out: int) -> Any:
    """The source index of each output position as TensorFlow's ResizeNearestNeighbor (half-pixel
    centers) computes it: floor((i + 0.5) * (in / out)) in float32, at most in - 1.

    ONNX's Resize says the same index as (i + 0.5) / (out / in), or (i + 0.5) / scale - 0.5 rounded
    half up, and float32 rounds those differently where the exact value is a whole number: 2 -> 41,
    8 -> 55, 30 -> 9 ... (76 of 3600 size pairs up to 60) took the neighbouring pixel, in ONNX Runtime
    and onnx's reference runtime alike, and the file missed the model."""
    import numpy as np

    scale = np.float32(size_in) / np.float32(size_out)
    at = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale
    return np.minimum(np.floor(at).astype(np.int64), size_in - 1)


def _nearest_as_gathers(proto: Any, node: Any, axes: dict[int, tuple[int, int]]) -> list[Any]:
    """Turn a TF nearest Resize ``node`` into Gathers of TF's indices, one per resized axis
    (``axes``: axis -> (input size, output size)); returns the nodes to put before it, ``node``
    becoming the last Gather."""
    from onnx import helper, numpy_helper

    prefix = node.name or node.output[0]
    current, nodes = node.input[0], []
    for k, (axis, (size_in, size_out)) in enumerate(sorted(axes.items())):
        indices = f"{prefix}/nearest{axis}"
        proto.graph.initializer.append(numpy_helper.from_array(tf_nearest_indices(size_in, size_out), indices))
        if k < len(axes) - 1:
            out = f"{prefix}/gathered{axis}"
            nodes.append(helper.make_node("Gather", [current, indices], [out], name=out, axis=axis))
            current = out
        else:
            node.op_type = "Gather"
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("axis", axis))
            del node.input[:]
            node.input.extend([current, indices])
    return nodes


def _nearest_in_spec_terms(graph: Any) -> None:
    """Say tf2onnx's nearest-neighbour Resize in the terms of the opset the file declares.

    tf2onnx writes TF's half-pixel nearest resize as coordinate_transformation_mode
    'tf_half_pixel_for_nn' with nearest_mode 'floor': x = floor((i + 0.5) / scale). That mode left the
    spec at Resize-13, so a spec-strict runtime (onnx's ReferenceEvaluator) refused our opset-17 files
    and ONNX Runtime warned at every load. 'half_pixel' with 'round_prefer_ceil' is the same index,
    round-half-up of (i + 0.5) / scale - 0.5. Subgraphs (a Resizing's pad/crop branches) included.
    """
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _nearest_in_spec_terms(sub)
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs.get("coordinate_transformation_mode")
        nearest = attrs.get("nearest_mode")
        if mode is None or mode.s != b"tf_half_pixel_for_nn" or nearest is None or nearest.s != b"floor":
            continue
        mode.s = b"half_pixel"
        nearest.s = b"round_prefer_ceil"


def _name_batch_dims(proto: Any) -> None:
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def _explain(exc: Exception, native: str, opset: int) -> str:
    import re

    text = " ".join(str(exc).split())
    ops = sorted(set(re.findall(r"(?:op|Op)\s*\[?['\"]?(\w+)['\"]?\]? is not supported", text + " " + native)))
    if ops:
        return f"tf2onnx cannot convert op(s) {', '.join(ops)} at opset {opset}; replace them or try another options.opset"
    return f"ONNX conversion failed at opset {opset}: {text[:400]}"


def fp16_weights(proto: Any) -> Any:
    """Store float32 initializers as float16 and cast them back to float32 inside the graph.

    Vectors (biases, scales, Normalization means) stay float32, as in TF.js's float16 files
    (:func:`deploykit.converters.is_vector`), and so do values beyond float16's range.

    Why not onnxruntime's convert_float_to_float16: it makes the *compute*
    float16, and ONNX Runtime's x86 CPU provider lacks float16 kernels for
    most ops (Conv...), so the model would not load where we ship it. Float16
    storage halves the file; ORT folds the casts at load time.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or is_vector(init.dims):
            keep.append(init)
            continue
        value = numpy_helper.to_array(init)
        if not fits_float16(value):
            keep.append(init)
            continue
        half = numpy_helper.from_array(value.astype(np.float16), init.name + "__fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=init.name + "__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _save(proto: Any, path: Path, external: bool) -> list[str]:
    """Save a ModelProto; with external data the weights go to ``<final name>.data`` beside it.

    Initializers are written in name order: tf2onnx's optimizer lists them in an order that changes from
    run to run, and the same model gave six different files (and sha256s) in 13 conversions."""
    import onnx

    _initializers_by_name(proto.graph)
    if not external:
        onnx.save_model(proto, str(path))
        return []
    location = _final_name(path) + EXTERNAL_DATA_SUFFIX
    data_path = path.parent / location
    data_path.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    if not data_path.exists():  # every tensor under the threshold (external_data = "always" on a tiny model)
        return []
    data_path.chmod(path.stat().st_mode & 0o777)
    return [location]


def _initializers_by_name(graph: Any) -> None:
    """Sort ``graph``'s initializers by name, and those of its subgraphs (a loop's body), in place."""
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    if [t.name for t in ordered] != [t.name for t in graph.initializer]:
        del graph.initializer[:]
        graph.initializer.extend(ordered)
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _initializers_by_name(sub)


def _final_name(path: Path) -> str:
    # atomic_path gives ".model.onnx.<random>.partial"; external data must carry the final name.
    name = path.name
    if name.startswith(".") and name.endswith(".partial"):
        name = name[1:].rsplit(".", 2)[0]
    return name


def _proto_bytes(proto: Any) -> int:
    return sum(len(t.raw_data) or 0 for t in proto.graph.initializer) + 1024 * len(proto.graph.node)


class _Reader:
    """CalibrationDataReader over the run's data, one sample per call."""

    def __init__(self, calibration: Any, input_names: list[str]):
        self._iter = ({n: x[i : i + 1] for n, x in zip(input_names, calibration.x)} for i in range(len(calibration)))

    def get_next(self):
        return next(self._iter, None)


# The float file a quantized target is made from, checked with this target's tolerance: an int8
# tolerance (agreement, accuracy) is loose enough to hide a float conversion error (see
# Pipeline._float_source_failure).
FLOAT_TARGET = "onnx-fp32"


def float_source_key(model: Any, target: Any) -> tuple[str, int] | None:
    """Which float graph ``target``'s file is (or is quantized from): the same key, the same graph.
    None for a graph holding fake quantization (a QAT model): it has no float-exact source."""
    opset = target.options["opset"]
    cache = model.__dict__.get("_onnx_fp32_cache", {})
    proto = cache[opset] if opset in cache else to_onnx(model, opset)  # converted by now: no copy
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return None
    return ("onnx", int(target.options["opset"]))


def write_float_source(model: Any, target: Any, path: Path) -> None:
    """Write the float32 ONNX file ``target`` quantizes (the tf2onnx graph, cached per opset)."""
    proto = to_onnx(model, target.options["opset"])
    _in_declared_order(proto, [s.name for s in model.inputs], list(model.output_names))
    _save(proto, Path(path), target.options["external_data"] == "always" or _proto_bytes(proto) > EXTERNAL_DATA_THRESHOLD)


def convert(model: Any, target: Any, calibration: Any, out_path: Path) -> dict[str, Any]:
    """Convert ``model`` for an ONNX ``target`` into ``out_path``; returns the settings used.

    Raises:
        ConversionError: tf2onnx or the quantizer failed, or the checker refused the result.
    """
    import onnx

    opts = target.options
    settings = converter_settings(target)
    if "calibration_samples" in settings and calibration is not None and len(calibration):
        settings["calibration_samples"] = min(target.calibration_samples, len(calibration))  # what was used, not asked
    proto = to_onnx(model, opts["opset"])
    fake_quant = any(n.op_type == "QuantizeLinear" for n in proto.graph.node)  # a QAT model's fake-quant ops
    external = opts["external_data"] == "always" or _proto_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    out_path = Path(out_path)
    with TempDir("onnx") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            if target.weights == "float16":
                proto = fp16_weights(proto)
            elif target.weights == "int8":
                src = tmp / "fp32.onnx"
                _save(proto, src, external)
                float_io = proto.graph
                # ONNX Runtime's quantizer warns through the root logger, and its sessions (calibration,
                # shape inference) through ORT's native logger ("Removing initializer ..." on stderr)
                with library_logs_muted(), native_stderr_captured():
                    proto = _quantize(src, tmp / "q.onnx", target, calibration, model, external, fake_quant)
                _tidy_after_quantizer(proto, float_io)
                if tables := quantized_tables(proto):
                    # said where the target list says "int8 per channel": ONNX Runtime's quantizer takes a Gather's
                    # table for an activation (most of an Embedding model's parameters)
                    said = ", ".join(f"'{model.layer_at(n.split(':')[0]) or n}' ({d})" for n, d in tables[:3]) + (" …" if len(tables) > 3 else "")
                    settings["note"] = "; ".join(filter(None, [settings.get("note"), (
                        f"ONNX Runtime's quantizer stores an Embedding's table (Gather) as an activation: {said}, one "
                        "scale for the whole table, not int8 per channel")]))
        except ConversionError:
            raise
        except Exception as exc:
            why = " ".join(str(exc).split())[:400]
            if target.weights == "int8" and target.options.get("quant_format") == "qoperator":
                # Measured on Keras 3 GRU/LSTM graphs: QOperator rewriting leaves a tensor the loop body
                # reads without its producer ("unknown initializers/tensors"); QDQ only annotates the graph.
                # Keeping that producer float gives a file ORT 1.32's graph optimizer aborts on: no retry.
                # After QAT, a conv's weights arrive through QuantizeLinear/DequantizeLinear, not as the
                # initializer the QOperator rewrite reads (its bias lookup finds None).
                cause = ("a QAT model's graph already holds QuantizeLinear/DequantizeLinear" if fake_quant
                         else "e.g. recurrent loops")
                why += f"; ONNX Runtime's QOperator rewrite fails on this graph ({cause}): try onnx-int8-qdq"
            elif target.weights == "int8" and target.activations == "float32" and "unknown initializers" in why:
                # Measured on Keras 3 GRU graphs (LSTM and Bidirectional pass): the dynamic quantizer's
                # rewrite leaves a tensor the loop body reads without its producer, as QOperator's does.
                why += ("; ONNX Runtime's dynamic quantizer fails on this graph (e.g. a GRU's recurrent loop): "
                        "try onnx-int16x8 or onnx-fp16, or tflite-dynamic")
            raise ConversionError(f"{target.name}: ONNX quantization failed: {why}") from None
        _in_declared_order(proto, [s.name for s in model.inputs], list(model.output_names))
        written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opts["opset"])
        if written != opts["opset"]:  # 16-bit QuantizeLinear is a standard op from opset 21: the quantizer upgrades
            settings["opset_written"] = written
            settings["opset"] = written  # the opset a runtime must support is the file's, not the one asked for
        settings["external_data_files"] = _save(proto, out_path, external)
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except Exception as exc:
        raise ConversionError(f"{target.name}: onnx.checker refused the model: {' '.join(str(exc).split())[:300]}") from None
    settings["checker"] = "onnx.checker.check_model(full_check=True) passed"
    settings["input_names"] = [i.name for i in proto.graph.input]
    settings["output_names"] = [o.name for o in proto.graph.output]
    return settings


def quantized_tables(proto: Any) -> list[tuple[str, str]]:
    """The Gather tables (an Embedding's) the quantizer stored with one scale for the whole table, with
    their integer type: QDQ reads them through a DequantizeLinear of a one-element scale, QOperator
    gathers from the integer initializer itself."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    made = {o: n for n in proto.graph.node for o in n.output}
    out = []
    for node in proto.graph.node:
        if node.op_type != "Gather" or not node.input:
            continue
        table, scale = node.input[0], None
        if (dq := made.get(table)) is not None and dq.op_type == "DequantizeLinear":
            table, scale = dq.input[0], dq.input[1] if len(dq.input) > 1 else None
        t = inits.get(table)
        if t is None or t.data_type not in (TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16):
            continue
        if scale is not None and scale in inits and numpy_helper.to_array(inits[scale]).size > 1:
            continue  # per channel after all
        out.append((table, TensorProto.DataType.Name(t.data_type).lower()))
    return out


def _tidy_after_quantizer(proto: Any, float_graph: Any) -> None:
    """Undo what ONNX Runtime's quantizer changes beyond quantizing, in place.

    Its shape inference (quant_pre_process) renames a symbolic output dimension (``batch`` became
    ``floor(1.0*batch)`` behind a Resizing layer) and declares every opset domain it knows
    (``org.pytorch.aten``, ``com.microsoft.nchwc``...) whether a node uses it or not.
    """
    import onnx.helper
    before = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in list(float_graph.input) + list(float_graph.output)}
    for value in list(proto.graph.input) + list(proto.graph.output):
        params = before.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if params and len(params) == len(dims):
            for dim, param in zip(dims, params):
                if param and not dim.HasField("dim_value"):
                    dim.dim_param = param
    used = {n.domain for n in proto.graph.node} | {"", "ai.onnx"}
    for f in proto.functions:
        used |= {f.domain} | {n.domain for n in f.node}
    kept = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    # The int16 QDQ upgrade to opset 21 keeps IR version 8; ONNX's table puts opset 21 at IR 10.
    proto.ir_version = max(proto.ir_version, onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True))
    _sort_topologically(proto.graph)


def _outer_names(graph: Any) -> set[str]:
    """The names a subgraph (an If branch, a Loop body) reads from the graphs around it."""
    made = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        read |= {n for n in node.input if n}
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                read |= _outer_names(sub)
        made |= set(node.output)
    return read - made


def _sort_topologically(graph: Any) -> None:
    """Order ``graph``'s nodes so that each comes after what it reads, its subgraphs' outer names included.

    ONNX Runtime's quantizer moved an If node (Keras's ``Resizing(pad_to_aspect_ratio=True)`` branches on
    the image's shape) before the node whose output its branch reads, and onnx.checker refused the
    file. Stable: a graph already in order keeps it.
    """
    import heapq

    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    needs: list[set[int]] = []
    for n in nodes:
        read = {x for x in n.input if x}
        for attr in n.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                read |= _outer_names(sub)
        needs.append({producer[x] for x in read if x in producer} - {len(needs)})
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for d in deps:
            users.setdefault(d, []).append(i)
    waiting = [len(d) for d in needs]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes) or order == list(range(len(nodes))):  # a cycle (the checker says so) or in order
        return
    import onnx

    copies = []
    for i in order:
        c = onnx.NodeProto()
        c.CopyFrom(nodes[i])
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)


def _keras_input_names(proto: Any, keras_names: list[str]) -> None:
    """Give graph inputs the Keras input names the SavedModel lowercased or sanitized, in place.

    The SavedModel names its placeholders in lower case with '_' for other characters: a model taking
    ``token_ids`` and ``Feats`` became ONNX inputs ``feats`` and ``token_ids``. With the names differing,
    neither the declared order nor feeding by name applied, and the inputs were fed in swapped order.
    """
    from deploykit.models import placeholder_name as key

    have = [v.name for v in proto.graph.input]
    by_key: dict[str, list[str]] = {}
    for name in have:
        by_key.setdefault(key(name), []).append(name)
    renames = {}
    for want in keras_names:
        found = by_key.get(key(want), [])
        if want not in have and len(found) == 1 and sum(key(k) == key(want) for k in keras_names) == 1:
            renames[found[0]] = want
    if not renames:
        return
    for v in proto.graph.input:
        v.name = renames.get(v.name, v.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for v in proto.graph.output:  # an input passed straight through
        v.name = renames.get(v.name, v.name)


def _in_declared_order(proto: Any, input_names: list[str], output_names: list[str]) -> None:
    """Put the graph's inputs and outputs in the order the model declares them, in place.

    tf2onnx lists a SavedModel signature's tensors alphabetically: a model taking
    (z_image, a_tabular) came out as (a_tabular, z_image), and code feeding inputs by position
    (``session.get_inputs()[0]``) fed the wrong one.
    """
    import onnx

    for field, declared in ((proto.graph.input, input_names), (proto.graph.output, output_names)):
        have = [v.name for v in field]
        if not set(declared) <= set(have) or have[: len(declared)] == list(declared):
            continue
        by_name = {v.name: onnx.ValueInfoProto() for v in field}
        for v in field:
            by_name[v.name].CopyFrom(v)
        ordered = list(declared) + [n for n in have if n not in declared]
        del field[:]
        field.extend(by_name[n] for n in ordered)


# ONNX Runtime's quantization pre-processing, run by _pre_process in a child process.
_PRE_PROCESS = (
    "import sys\n"
    "from onnxruntime.quantization import quant_pre_process\n"
    "src, pre, external, fake_quant = sys.argv[1:5]\n"
    "quant_pre_process(src, pre, skip_symbolic_shape=False, save_as_external_data=external == '1',\n"
    "                  skip_optimization=fake_quant == '1')\n"
)


def _pre_process(src: Path, pre: Path, external: bool, fake_quant: bool) -> bool:
    """ONNX Runtime's quantization pre-processing (shape inference, graph optimization) of ``src`` into
    ``pre``; False where it fails (attention graphs, whose symbolic shape inference is incomplete).

    In a child process whose working directory is ``src``'s temp folder: on incomplete inference ORT saves
    ``sym_shape_infer_temp.onnx`` and its external data into the current directory. Changing ours
    (contextlib.chdir) moved the whole caller's process there, every thread's relative paths with it: a
    worker thread's conversion sent the main thread's writes into a temp folder that was then removed.
    The child costs ~0.3 s of start-up against a pre-processing of seconds."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-c", _PRE_PROCESS, str(src), str(pre), str(int(external)), str(int(fake_quant))]
    # The child imports onnxruntime from where this process does (a caller may have extended sys.path).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        done = subprocess.run(args, cwd=src.parent, env=env, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    except OSError:  # no interpreter to start (an embedded Python): quantize the plain graph
        return False
    return done.returncode == 0 and pre.is_file()


@foreign_warnings_ignored  # ONNX Runtime's quantizer
def _quantize(src: Path, dst: Path, target: Any, calibration: Any, model: Any, external: bool,
              fake_quant: bool = False) -> Any:
    """``src`` quantized by ONNX Runtime's quantizer into ``dst`` (dynamic or static, as ``target`` says).

    ``fake_quant``: the graph holds a QAT model's QuantizeLinear/DequantizeLinear. The pre-processing's
    graph optimization is then skipped: ONNX Runtime's WeightBiasQuantization quantized each float kernel
    behind a DequantizeLinear (tf2onnx folds a QAT kernel's fake quantization into a float constant) with
    one asymmetric scale, so pruned zeros were stored as 3 or 18 and the file was not per-channel as said;
    left float, the quantizer's own per-channel symmetric rule takes them.
    """
    import onnx
    from onnxruntime import quantization as q

    opts = target.options
    if target.activations == "float32":  # dynamic range
        q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8, per_channel=opts["per_channel"],
                           reduce_range=opts["reduce_range"], use_external_data_format=external)
        return onnx.load(str(dst))
    if calibration is None:
        raise ConversionError(f"{target.name} needs calibration data; pass --data")
    pre = src.with_name("pre.onnx")
    if not _pre_process(src, pre, external, fake_quant):  # an optimization: the plain graph quantizes too
        pre = src
    names = [s.name for s in model.inputs]
    graph_inputs = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]
    if set(names) != set(graph_inputs):
        names = graph_inputs
    # The entropy and percentile calibrators print their progress ("Number of histogram bins : 2048")
    # with print(): kept off the CLI's console (main thread only: sys.stdout is the whole process's).
    with python_stdout_quiet():
        _quantize_static(q, pre, dst, target, calibration, names, external)
    return onnx.load(str(dst))


def _quantize_static(q: Any, pre: Path, dst: Path, target: Any, calibration: Any, names: list[str], external: bool) -> None:
    opts = target.options
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    q.quantize_static(
        str(pre), str(dst), _Reader(calibration.spread(target.calibration_samples), names),
        quant_format=q.QuantFormat.QDQ if opts["quant_format"] == "qdq" else q.QuantFormat.QOperator,
        per_channel=opts["per_channel"], reduce_range=opts["reduce_range"],
        activation_type={"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8, "int16": q.QuantType.QInt16}[target.activations],
        weight_type=q.QuantType.QInt8, calibrate_method=methods[opts["calibrate_method"]],
        use_external_data_format=external, extra_options={"QuantizeBias": opts["quantize_bias"]},
    )
