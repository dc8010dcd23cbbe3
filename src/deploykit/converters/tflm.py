"""TFLite Micro converter: full-int8 .tflite with int8 I/O, its ops checked against the
TFLite Micro kernels, plus C sources for firmware.

The artifact is a deliverable for a microcontroller, not only a file:

* ``model.tflite`` — int8 weights and activations, int8 inputs and outputs;
* ``model_data.h`` / ``model_data.cc`` — the bytes as a 16-byte aligned ``const``
  array and its length (what ``xxd -i`` gives, with alignment, const and a name
  derived from the model);
* ``model_io.h`` — input/output shapes, dtypes, scales and zero points, so
  firmware quantizes inputs exactly as the model expects.

The kernel list comes from the tflite-micro package's own runtime library (the
``Register_<OP>`` kernels compiled into it), so "supported" means "runs on the
TFLite Micro kernels we verify with".
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from deploykit.converters import OptionSpec
from deploykit.errors import ConversionError, UserError

SUFFIX = ".tflite"
ALIGNMENT = 16

OPTIONS: dict[str, OptionSpec] = {
    "flash_budget_kb": OptionSpec(None, "Flash budget for the model bytes, in KiB (none: no limit).", type=int, minimum=1),
    "ram_budget_kb": OptionSpec(None, "RAM budget for the tensor arena, in KiB (none: no limit).", type=int, minimum=1),
    # A name the user chose is used as given: one that is not a C identifier is refused, not rewritten.
    "c_name": OptionSpec("", "C identifier stem for the arrays (default: derived from the model name).", type=str,
                         pattern=r"[A-Za-z_][A-Za-z0-9_]*",
                         pattern_says="a C identifier (letters, digits and _, not starting with a digit)"),
}


@functools.lru_cache(maxsize=1)
def micro_kernels() -> frozenset[str]:
    """Builtin op names that the installed TFLite Micro runtime has kernels for."""
    from tflite_micro.python.tflite_micro import runtime

    lib = next(Path(runtime.__file__).parent.glob("_runtime*.so"))
    names = re.findall(rb"Register_([A-Z0-9_]+)Ev", lib.read_bytes())
    return frozenset(n.decode() for n in names)


@functools.lru_cache(maxsize=2)
def _object_model(flatbuffer: bytes) -> Any:
    """The file as flatbuffer objects, parsed once for the op list, the operators and the softmax check
    (each parsed it again); read-only for its callers."""
    from tflite_micro.python.tflite_micro import runtime

    return runtime.convert_bytearray_to_object(bytearray(flatbuffer))


def model_ops(flatbuffer: bytes) -> list[str]:
    """Builtin op names used by a .tflite flatbuffer (custom ops as ``CUSTOM:<name>``)."""
    from tflite_micro.python.tflite_micro import runtime

    model = _object_model(bytes(flatbuffer))
    schema = runtime.schema_fb
    code_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for code in model.operatorCodes:
        builtin = runtime.get_builtin_code_from_operator_code(code)
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            ops.append(f"CUSTOM:{custom}")
        else:
            ops.append(code_names.get(builtin, str(builtin)))
    return ops


def heaviest_layers(flatbuffer: bytes, top: int = 5) -> list[dict[str, Any]]:
    """Operators ranked by the constant (weight) bytes they read: what to shrink first."""
    return sorted(_operators(flatbuffer), key=lambda r: -r["weight_bytes"])[:top]


def _operators(flatbuffer: bytes) -> list[dict[str, Any]]:
    """The main graph's operators in graph order: ``{op, output, weight_bytes}`` each."""
    from tflite_micro.python.tflite_micro import runtime

    model = _object_model(bytes(flatbuffer))
    code_names = {v: k for k, v in vars(runtime.schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    rows = []
    for op in graph.operators:
        weight = 0
        for t in op.inputs if op.inputs is not None else []:
            if t < 0:
                continue
            buf = model.buffers[graph.tensors[t].buffer]
            weight += len(buf.data) if buf.data is not None else 0
        out = graph.tensors[op.outputs[0]].name if op.outputs is not None and len(op.outputs) else b""
        name = out.decode() if isinstance(out, bytes) else str(out)
        code = runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        rows.append({"op": code_names.get(code, str(code)), "output": name, "weight_bytes": weight})
    return rows


# TFLite Micro's int8 SOFTMAX scales its input by beta * scale * 2**26 and aborts the process
# (QuantizeMultiplierGreaterThanOne) when that is not above 1: logits spanning ~1e-7. LOG_SOFTMAX
# does the same with beta 1.
_SOFTMAX_MIN_MULTIPLIER = 2.0 ** 26


# Ops TFLite Micro lacks that a Keras layer writes where another layer computing the same converts to one it has.
_MICRO_REPLACEMENTS = {
    # measured: equal outputs for integer factors, and the Resizing converts and verifies on TFLite Micro
    "TILE": " (Keras 3's UpSampling2D writes TILE: Resizing(height * factor, width * factor, interpolation='nearest') "
            "computes the same and becomes RESIZE_NEAREST_NEIGHBOR, which TFLite Micro runs)",
}


def flat_softmax(flatbuffer: bytes) -> str | None:
    """Why TFLite Micro cannot run this file's int8 SOFTMAX or LOG_SOFTMAX, or None: it aborts the whole
    process when the interpreter is made (exit -6, no message) on an input scale it cannot take, where
    LiteRT runs the same file. An untrained or collapsed network (an untrained MobileNetV2's logits are all
    about 0) calibrates so."""
    from tflite_micro.python.tflite_micro import runtime

    model = _object_model(bytes(flatbuffer))
    ops = {runtime.schema_fb.BuiltinOperator.SOFTMAX: "SOFTMAX", runtime.schema_fb.BuiltinOperator.LOG_SOFTMAX: "LOG_SOFTMAX"}
    for graph in model.subgraphs:
        for op in graph.operators or []:
            kind = ops.get(runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]))
            if kind is None:
                continue
            tensor = graph.tensors[op.inputs[0]]
            q = tensor.quantization
            if tensor.type != runtime.schema_fb.TensorType.INT8 or q is None or q.scale is None or not len(q.scale):
                continue
            beta = float(getattr(op.builtinOptions, "beta", 1.0) or 1.0) if kind == "SOFTMAX" else 1.0
            scale = float(q.scale[0])
            if beta * scale * _SOFTMAX_MIN_MULTIPLIER <= 1.0:
                name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
                name = name.split(";")[0].replace("StatefulPartitionedCall/", "")
                return (f"the logits into {kind} (tensor {name!r}) span only about {scale * 255:.2g} (int8 scale "
                        f"{scale:.2g}), and TFLite Micro's int8 {kind.lower().replace('_', ' ')} aborts on so narrow "
                        "a range; an untrained or collapsed model calibrates so: train it, or calibrate on data it "
                        "responds to")
    return None


def c_identifier(text: str) -> str:
    ident = re.sub(r"\W", "_", text).strip("_").lower() or "model"
    return ident if not ident[0].isdigit() else f"m_{ident}"


def preflight(model: Any, target: Any) -> None:
    """Checks that need no conversion, run before anything is written: input types, fixed input shapes."""
    _check_input_types(model)
    _check_static_shapes(model)


# Float inputs become int8 (the target's I/O); int8/int16/int32 pass as they are. Others stay as
# they are too and meet a CAST TFLite Micro has no kernel for (uint8 images: "Input type UINT8 not
# supported"), or no kernel at all (int64, bool, float64).
_MICRO_INPUT_TYPES = ("float32", "int8", "int16", "int32")


def _check_input_types(model: Any) -> None:
    for spec in model.inputs:
        if spec.dtype not in _MICRO_INPUT_TYPES:
            raise UserError(
                f"input {spec.name!r} is {spec.dtype}, which TFLite Micro's kernels cannot take (it stays "
                f"{spec.dtype} through conversion); give the model a float32 input (keep the Rescaling inside) "
                "or an int32 one for token ids"
            )


def _check_static_shapes(model: Any) -> None:
    for spec in model.inputs:
        dynamic = [i for i, d in enumerate(spec.shape) if d is None and i > 0]
        if dynamic:
            # the example in the input's own rank: (96, 96, 1) was offered for token ids and series too
            example = tuple(64 if d is None else int(d) for d in spec.shape[1:])
            raise UserError(
                f"input {spec.name!r} has dynamic dimension(s) {dynamic} in shape {tuple(spec.shape)}; TFLite Micro "
                f"needs fixed shapes — rebuild the model with a fixed input shape (e.g. keras.Input(shape={example}), "
                "with the size the device feeds)"
            )


def converter_settings(target: Any) -> dict[str, Any]:
    from deploykit.converters import tflite

    return {**tflite.converter_settings(target), "micro": dict(target.options)}


def convert(model: Any, target: Any, calibration: Any, out_path: Path) -> dict[str, Any]:
    """Full-int8 conversion, TFLite Micro op check, then the .tflite and its C sources.

    Raises:
        UserError: an input has dynamic (non-batch) dimensions.
        ConversionError: the model needs ops TFLite Micro has no kernel for.
    """
    from deploykit.converters import tflite

    _check_input_types(model)
    _check_static_shapes(model)
    out_path = Path(out_path)
    # int8 + int8 I/O per the target, exported at batch 1 (all TFLite Micro runs): with a dynamic batch,
    # a Dense on a sequence reshapes through SHAPE/REDUCE_PROD, and TFLite Micro has no REDUCE_PROD.
    settings = tflite.convert(model, target, calibration, out_path, batch=1)
    flatbuffer = out_path.read_bytes()
    ops = model_ops(flatbuffer)
    missing = sorted({op for op in ops if op not in micro_kernels()})
    if missing:
        # where: the first such op's output tensor, as the converter named it (after a Keras layer's scope
        # more often than not, but a fused op may carry its neighbour's): said as the tensor it is, with
        # the layer that scope belongs to (the export numbers scopes: `dense_1` may be the layer `dense`)
        where = next((r["output"] for r in _operators(flatbuffer) if r["op"] in missing), "")
        layer = model.layer_at(where) if where else ""
        where = where.split(";")[0].replace("StatefulPartitionedCall/", "")
        out_path.unlink(missing_ok=True)
        raise ConversionError(
            f"{target.name}: TFLite Micro has no kernel for op(s) {', '.join(missing)}"
            + (f" (the first writes tensor {where!r}" + (f", in layer {layer!r}" if layer else "") + ")" if where else "")
            + "; replace the layers that produce them or use a TFLite target"
            + "".join(_MICRO_REPLACEMENTS[op] for op in missing if op in _MICRO_REPLACEMENTS)
        )
    flat = flat_softmax(flatbuffer)
    if flat:
        out_path.unlink(missing_ok=True)
        raise ConversionError(f"{target.name}: {flat}, or use a TFLite target")
    name = target.options.get("c_name") or c_identifier(model.info().name or "model")
    keras_names = {o.name: o.keras_name for o in model.info().outputs if getattr(o, "keras_name", None)}
    extra = write_c_sources(flatbuffer, out_path.parent, name, io=_io_details(out_path), arena=_arena(out_path),
                            ops=sorted(set(ops)), keras_names=keras_names)
    settings.update({
        **converter_settings(target),
        **({"calibration_samples": settings["calibration_samples"]} if "calibration_samples" in settings else {}),
        "ops": sorted(set(ops)),
        "c_array": f"g_{name}_model_data",
        "companion_files": extra,  # written beside the model; listed as the artifact's extra files
        "heaviest_layers": [{**h, "layer": model.layer_at(h["output"])} for h in heaviest_layers(flatbuffer)],
    })
    return settings


def _arena(path: Path) -> int | None:
    """The tensor arena the model needs (measured on TFLite Micro's kernels; the runner reuses the
    figure), or None when it does not run: verification then says why."""
    from deploykit.errors import RuntimeLoadError
    from deploykit.runtime_bench.tflm import measure_arena

    try:
        return int(measure_arena(path)["arena"])
    except RuntimeLoadError:
        return None


def _io_details(path: Path) -> dict[str, list[dict[str, Any]]]:
    from deploykit.runtime_bench.tflm import io_layout

    return io_layout(path)


def write_c_sources(flatbuffer: bytes, directory: Path, name: str, io: dict[str, list[dict[str, Any]]],
                    arena: int | None = None, ops: list[str] | None = None,
                    keras_names: dict[str, str] | None = None) -> list[str]:
    """Write model_data.h/.cc and model_io.h (with the tensor arena size, the ops to register and the
    Keras output each output is, when known); returns their file names."""
    from deploykit.artifacts import write_text_atomic

    array, length = f"g_{name}_model_data", f"g_{name}_model_data_len"
    guard = f"DEPLOYKIT_{name.upper()}_MODEL_DATA_H_"
    header = (
        f"// Generated by deploykit: the {name} model as a C array (TFLite Micro flatbuffer).\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"extern const unsigned char {array}[];\nextern const unsigned int {length};\n\n#endif  // {guard}\n"
    )
    rows = []
    for start in range(0, len(flatbuffer), 12):
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in flatbuffer[start : start + 12]) + ",")
    source = (
        f"// Generated by deploykit from model.tflite ({len(flatbuffer)} bytes). Do not edit.\n"
        '#include "model_data.h"\n\n'
        f"// TFLite Micro reads the flatbuffer in place: keep it {ALIGNMENT}-byte aligned and in flash (const).\n"
        f"alignas({ALIGNMENT}) const unsigned char {array}[] = {{\n" + "\n".join(rows) + "\n};\n"
        f"const unsigned int {length} = {len(flatbuffer)};\n"
    )
    write_text_atomic(directory / "model_data.h", header)
    write_text_atomic(directory / "model_data.cc", source)
    write_text_atomic(directory / "model_io.h", _io_header(name, io, arena, ops, keras_names))
    return ["model_data.h", "model_data.cc", "model_io.h"]


# MicroMutableOpResolver method names that are not the op name in CamelCase.
_RESOLVER_NAMES = {"BATCH_MATMUL": "BatchMatMul", "CUMSUM": "CumSum", "PADV2": "PadV2",
                   "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM"}


def resolver_call(op: str) -> str:
    """The MicroMutableOpResolver call that registers ``op`` (CONV_2D -> AddConv2D())."""
    if op.startswith("CUSTOM:"):
        return f'AddCustom("{op[7:]}", /* its registration */)'
    words = _RESOLVER_NAMES.get(op) or "".join(w if re.fullmatch(r"\d+D", w) else w.capitalize() for w in op.split("_"))
    return f"Add{words}()"


def _io_header(name: str, io: dict[str, list[dict[str, Any]]], arena: int | None = None,
               ops: list[str] | None = None, keras_names: dict[str, str] | None = None) -> str:
    guard = f"DEPLOYKIT_{name.upper()}_MODEL_IO_H_"
    lines = [
        f"// Generated by deploykit: tensor layout of the {name} model for firmware.",
        "// Quantize a float input x as: q = round(x / SCALE) + ZERO_POINT, clamped to the dtype's range.",
        "// Dequantize an output q as:   x = (q - ZERO_POINT) * SCALE.",
        f"#ifndef {guard}", f"#define {guard}", "",
        f"#define {name.upper()}_NUM_INPUTS {len(io['inputs'])}",
        f"#define {name.upper()}_NUM_OUTPUTS {len(io['outputs'])}", "",
    ]
    if arena is not None:
        lines += [
            "// The smallest tensor arena (in 16-byte steps) in which TFLite Micro's reference kernels allocated and",
            "// ran this model, measured on a 64-bit host. Optimized kernels (CMSIS-NN) and 32-bit targets ask for",
            "// other scratch sizes: leave headroom, and check AllocateTensors() on the device.",
            f"#define {name.upper()}_TENSOR_ARENA_SIZE {arena}", "",
        ]
    if ops:
        lines += [
            "// The ops this model uses: register each in a tflite::MicroMutableOpResolver<"
            f"{name.upper()}_NUM_OPS>,",
            "// e.g. " + ", ".join(f"resolver.{resolver_call(op)}" for op in ops) + ";",
            f"#define {name.upper()}_NUM_OPS {len(ops)}", "",
        ]
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(io[kind]):
            stem = f"{name.upper()}_{kind[:-1].upper()}{i}"
            unquantized = not t["scale"]  # token ids, indices: passed as they are, no SCALE to divide by
            lines += [
                f"// {kind[:-1]} {i}: '{t['name']}'"
                + (f" (Keras '{keras_names[t['name']]}')" if kind == "outputs" and (keras_names or {}).get(t["name"])
                   and keras_names[t["name"]] != t["name"] else "")
                + f" shape {tuple(t['shape'])} {t['dtype']}"
                + (" (not quantized: pass the values as they are)" if unquantized else ""),
                f"#define {stem}_DIMS {len(t['shape'])}",
                # A macro, not a static array: a header array unused in some C file trips -Wall -Werror.
                f"#define {stem}_SHAPE {{{', '.join(map(str, t['shape']))}}}",
                f"#define {stem}_ELEMENTS {int(_prod(t['shape']))}",
                f"#define {stem}_TYPE_{t['dtype'].upper()} 1",
            ]
            if not unquantized:
                lines += [f"#define {stem}_SCALE {t['scale']!r}f", f"#define {stem}_ZERO_POINT {t['zero_point']}"]
            lines.append("")
    lines.append(f"#endif  // {guard}")
    return "\n".join(lines) + "\n"


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


# What meets a budget: TFLite Micro holds the model's bytes as they are (pruned zeros are stored too),
# and its arena holds the largest activations alive at once.
BUDGET_WAY_OUT = ("a budget is met by a smaller model: fewer channels or units in the heaviest layers (listed under "
                  "Microcontroller footprint) for flash, a smaller input or narrower early layers for the arena; "
                  "pruning and clustering do not shrink the file TFLite Micro holds (its zeros are stored)")


def is_budget_failure(text: str) -> bool:
    """``text`` is one of :func:`audit`'s failures."""
    return " budget by " in text and (text.startswith("model is ") or text.startswith("tensor arena needs "))


def audit(target: Any, artifact: Any, runner: Any) -> list[str]:
    """Budget checks after the artifact ran: flash = model bytes, RAM = the interpreter's arena."""
    failures = []
    opts = target.options
    flash = artifact.get("model_bytes", 0)
    arena = artifact.get("arena_bytes")
    if opts.get("flash_budget_kb") and flash > opts["flash_budget_kb"] * 1024:
        over = flash - opts["flash_budget_kb"] * 1024
        failures.append(f"model is {flash} bytes, over the {opts['flash_budget_kb']} KiB flash budget by {over} bytes")
    if opts.get("ram_budget_kb") and arena is not None and arena > opts["ram_budget_kb"] * 1024:
        over = arena - opts["ram_budget_kb"] * 1024
        failures.append(f"tensor arena needs {arena} bytes, over the {opts['ram_budget_kb']} KiB RAM budget by {over} bytes"
                        + _arena_of_records(getattr(runner, "allocations", None) or []))
    return failures


def _arena_of_records(allocations: list[str]) -> str:
    """What the arena holds when activations are the smaller part of it: TFLite Micro keeps records per
    operator and tensor there, which an unrolled GRU over 64 steps (1086 ops) made 74 times its 3 KB of
    activations. "A smaller input" was the advice, which changes those records hardly at all."""
    text = "\n".join(allocations)
    found = {k: int(v) for k, v in re.findall(r"Arena allocation (total|head) (\d+) bytes", text)}
    ops = re.search(r"for (\d+) NodeAndRegistration structs", text)
    if not {"total", "head"} <= set(found) or found["head"] * 4 > found["total"]:
        return ""
    return (f" (activations take {found['head']} of the {found['total']} bytes the allocator recorded; the rest is "
            f"TFLite Micro's records per operator{f' ({ops.group(1)} of them)' if ops else ''} and tensor, which "
            "fewer operators shrink (fewer layers, a recurrent layer not unrolled over many steps), not a smaller "
            "input; measured on this 64-bit machine, where those records' pointers are twice a 32-bit chip's)")
