"""TFLite converter: SavedModel -> .tflite through TFLiteConverter.

Keras 3 models go through ``model.export`` -> SavedModel ->
``TFLiteConverter.from_saved_model``: the converter's Keras path
(``from_keras_model``) stumbles on Keras 3, while the SavedModel path converted
every Keras 3 application tried here. The export happens once per run and all
TFLite targets share it.

Precision -> converter settings (the target's weights/activations/io fields):

==============  ============================================================
weights=float16  Optimize.DEFAULT + supported_types=[float16]
weights=int8     Optimize.DEFAULT (dynamic range without calibration)
activations=int8 + representative dataset, TFLITE_BUILTINS_INT8 only
activations=int16 + representative dataset, 16x8 op set
io=int8          inference_input/output_type = int8
==============  ============================================================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from deploykit._quiet import foreign_warnings_ignored, import_tensorflow, native_stderr_captured
from deploykit.errors import ConversionError

SUFFIX = ".tflite"
OPTIONS: dict = {}  # TFLite settings follow from the target's weights/activations/io fields


def _representative(calibration: Any, names: list[str], signature_inputs: list[str]):
    use_names = set(names) == set(signature_inputs)

    def gen():
        for i in range(len(calibration)):
            sample = [x[i : i + 1] for x in calibration.x]
            yield dict(zip(names, sample)) if use_names else sample

    return gen


def converter_settings(target: Any) -> dict[str, Any]:
    """Human-readable settings this target maps to (recorded in the manifest)."""
    settings: dict[str, Any] = {"converter": "TFLiteConverter.from_saved_model", "optimizations": []}
    if target.weights != "float32" or target.activations != "float32":
        settings["optimizations"] = ["DEFAULT"]
    if target.weights == "float16":
        settings["supported_types"] = ["float16"]
    if target.activations == "int8":
        settings["supported_ops"] = ["TFLITE_BUILTINS_INT8"]
    elif target.activations == "int16":
        settings["supported_ops"] = ["EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"]
    if target.needs_calibration:
        settings["calibration_samples"] = target.calibration_samples
    if target.io == "int8":
        settings["inference_input_type"] = settings["inference_output_type"] = "int8"
    return settings


def convert(model: Any, target: Any, calibration: Any, out_path: Path, batch: int | None = None) -> dict[str, Any]:
    """Convert ``model`` (a LoadedModel) for ``target`` into ``out_path``.

    Args:
        model: The :class:`deploykit.models.LoadedModel`.
        target: The :class:`deploykit.targets.Target`.
        calibration: Dataset for integer activations (None when not needed).
        out_path: Where to write the .tflite bytes.
        batch: Export with this batch size fixed (TFLite Micro runs batch 1); default: any batch.

    Returns:
        The converter settings used.

    Raises:
        ConversionError: the converter failed (unsupported ops are named).
    """
    settings = converter_settings(target)
    if "calibration_samples" in settings and calibration is not None and len(calibration):
        settings["calibration_samples"] = min(target.calibration_samples, len(calibration))  # what was used, not asked
    try:
        if getattr(model, "_tflite_needs_fixed_batch", False):  # an earlier target of this run found out
            raise ConversionError("TensorList ops need a static batch")
        if batch is not None and model.keras_model is not None:
            fixed = model.fixed_batch_saved_model_dir(batch)
            if target.needs_calibration and _loops_over_sequence(fixed):  # see the refusal below
                raise _calibration_crashes(target)
            flatbuffer = _convert(fixed, model, target, settings, calibration)
            settings["fixed_batch"] = batch
        else:
            flatbuffer = _convert(model.saved_model_dir(), model, target, settings, calibration)
    except ConversionError as exc:
        # Recurrent loops (Keras 3 LSTM/GRU) carry TensorList ops that TFLite lowers to a builtin
        # WHILE only with static shapes; with a dynamic batch it asks for Flex (SELECT_TF_OPS),
        # which LiteRT's pip runtime does not ship. Re-exported with batch 1 they convert.
        if "TensorList" not in str(exc):
            raise
        if model.keras_model is None:  # a SavedModel's traced graph keeps its dynamic batch (measured: wrapping
            # its signature in a batch-1 function leaves the called graph's shapes dynamic)
            raise ConversionError(
                f"{target.name}: the SavedModel's recurrent loops (TensorList ops) convert to TFLite only with a fixed "
                "batch, which a SavedModel's traced graph cannot be given; pass the .keras/.h5 file the model was saved "
                "from (deploykit then exports its loops at batch 1), save the SavedModel from a function with batch 1 "
                "in its input signature, or choose an ONNX target") from None
        model._tflite_needs_fixed_batch = True  # the run's other TFLite targets skip the failing attempt
        if target.needs_calibration:
            raise _calibration_crashes(target) from None
        flatbuffer = _convert(model.fixed_batch_saved_model_dir(1), model, target, settings, calibration)
        settings["fixed_batch"] = 1
        settings["fixed_batch_reason"] = "recurrent loops (TensorList ops) convert to builtin WHILE only with a static batch"
    if (_carried_state_ops(flatbuffer) and model.kind == "tf_keras" and model.keras_model is not None
            and not target.needs_calibration):
        # A tf_keras LSTM/GRU fused with its state in variables: traced again as a plain loop, it
        # converts to a stateless WHILE (static shapes needed, as for Keras 3's loops).
        flatbuffer = _convert(model.fixed_batch_saved_model_dir(1, unfused=True), model, target, settings, calibration)
        settings["fixed_batch"] = 1
        settings["fixed_batch_reason"] = ("tf_keras LSTM/GRU exported as plain loops (a stateless WHILE, batch fixed "
                                          "for it): TFLite's fused LSTM op keeps its state from one run to the next")
    _refuse_carried_state(flatbuffer, target)
    if target.io == "int8":
        kept = [f"{s.name!r} ({s.dtype})" for s in model.inputs if not s.dtype.startswith("float")]
        if kept:  # the converter's inference_input_type applies to float inputs only
            settings["inference_input_type"] = f"int8 for float inputs; {', '.join(kept)} kept as it is"
    flatbuffer = _in_declared_order(flatbuffer, [s.name for s in model.inputs], model.output_names)
    if target.activations in ("int8", "int16"):
        flatbuffer = _kernel_bias_scales(flatbuffer, settings)
    Path(out_path).write_bytes(flatbuffer)
    _record_weight_storage(Path(out_path), target, settings)
    settings.update(_io_names(flatbuffer))
    from deploykit.converters.tflm import model_ops

    settings["ops"] = sorted(set(model_ops(flatbuffer)))  # what a runtime must carry (and what hints read)
    return settings


def _kernel_bias_scales(flatbuffer: bytes, settings: dict[str, Any]) -> bytes:
    """``flatbuffer`` with every integer bias at input scale x weight scale, the one its kernel assumes
    (see :mod:`deploykit.converters.tflite_bias`); what was re-encoded is recorded and noted."""
    from deploykit.converters.tflite_bias import requantize_biases

    flatbuffer, repaired = requantize_biases(flatbuffer)
    if repaired:
        settings["biases_requantized"] = repaired
        settings["note"] = "; ".join(filter(None, [settings.get("note"), (
            f"the converter stored {len(repaired)} bias(es) at a scale other than input x weight, the one TFLite's "
            "kernels assume (a float BatchNormalization folded into the next layer of a QAT model); deploykit "
            "re-encoded them at that scale (same values), in the layers writing " + ", ".join(repr(r) for r in repaired))]))
    return flatbuffer


def _loops_over_sequence(sm_dir: Path) -> bool:
    """The SavedModel loops over a sequence: a While over TensorList ops (Keras 3 LSTM/GRU/RNN layers)."""
    from tensorflow.python.tools import saved_model_utils

    graph = saved_model_utils.get_meta_graph_def(str(sm_dir), "serve").graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    return bool(ops & {"While", "StatelessWhile"}) and any(op.startswith("TensorList") for op in ops)


def _calibration_crashes(target: Any) -> ConversionError:
    """The refusal of int8 calibration on a recurrent loop.

    Measured with TF 2.21 on Keras 3 LSTM and GRU: the calibrator segfaults feeding the WHILE
    loop, taking the whole process (and every other target of the run) down.
    """
    unroll = ("unroll the layers (e.g. GRU(unroll=True), with a fixed sequence length; each step is then its own "
              "operators, and a microcontroller's arena holds records for each)")
    if target.format == "tflm":  # a float or ONNX file does not run on the microcontroller: unrolling is the way
        return ConversionError(f"{target.name}: TFLite's int8 calibration crashes on the model's recurrent loop "
                               f"(LSTM/GRU/RNN layers; TensorFlow 2.21); {unroll}")
    return ConversionError(
        f"{target.name}: TFLite's int8 calibration crashes on the model's recurrent loop (LSTM/GRU/RNN layers; "
        f"TensorFlow 2.21); {unroll.split(';')[0]}), or choose "
        "tflite-fp32, tflite-fp16 or tflite-dynamic (int8 weights, no calibration), or an ONNX target")


# Fused sequence ops whose state lives in variable tensors that persist from one invocation to the next.
_STATEFUL_SEQUENCE_OPS = {35: "UNIDIRECTIONAL_SEQUENCE_RNN", 44: "UNIDIRECTIONAL_SEQUENCE_LSTM",
                          46: "BIDIRECTIONAL_SEQUENCE_RNN", 52: "BIDIRECTIONAL_SEQUENCE_LSTM"}


def _refuse_carried_state(flatbuffer: bytes, target: Any) -> None:
    """Refuse a file that carries a stateless model's recurrent state from one run into the next.

    TFLite fuses a tf_keras LSTM (its functions say they implement one) into
    UNIDIRECTIONAL_SEQUENCE_LSTM, which keeps its hidden and cell state in variable tensors:
    every invocation after the first starts from the previous one's state unless the app calls
    ``reset_all_variables()`` first (tensorflow#47813). Measured here: the first sample matched
    the Keras model, the next ones were off by up to 0.51. A Keras 3 LSTM becomes a WHILE loop and
    is exact; so does a tf_keras one exported as a plain loop (:func:`convert` does that for targets
    without calibration). (Models with ``stateful=True`` layers are refused before conversion.)
    """
    fused = _carried_state_ops(flatbuffer)
    if not fused:
        return
    if target.needs_calibration:
        raise ConversionError(
            f"{target.name}: TFLite fused the model's recurrent layers into {', '.join(fused)}, which keeps their state "
            "between invocations, and the stateless loop they convert to otherwise cannot be calibrated for int8 "
            "activations (TFLite's calibration crashes on it, TensorFlow 2.21); choose tflite-fp32, tflite-fp16 or "
            "tflite-dynamic (int8 weights, no calibration), or an ONNX target")
    raise ConversionError(
        f"{target.name}: TFLite fused the model's recurrent layers into {', '.join(fused)}, which keeps their state "
        "between invocations (each run after the first would start from the last one's state; apps must call "
        "reset_all_variables() before every run); choose an ONNX target, or save the model with Keras 3, whose "
        "LSTM/GRU convert to a stateless loop")


def _carried_state_ops(flatbuffer: bytes) -> list[str]:
    """The fused sequence ops of a file that keep state in variable tensors (empty: none)."""
    # The flatbuffer's own reader, not flatbuffer_utils' object copy: a VGG16 file is 0.5 GB of buffers.
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.Model.GetRootAsModel(flatbuffer, 0)
    codes = [fb.OperatorCodes(i) for i in range(fb.OperatorCodesLength())]
    codes = [max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) for c in codes]
    subgraphs = [fb.Subgraphs(i) for i in range(fb.SubgraphsLength())]
    fused = sorted({_STATEFUL_SEQUENCE_OPS[codes[sg.Operators(k).OpcodeIndex()]]
                    for sg in subgraphs for k in range(sg.OperatorsLength())
                    if codes[sg.Operators(k).OpcodeIndex()] in _STATEFUL_SEQUENCE_OPS})
    if not fused or not any(sg.Tensors(t).IsVariable() for sg in subgraphs for t in range(sg.TensorsLength())):
        return []
    return fused


def _in_declared_order(flatbuffer: bytes, input_names: list[str], output_names: list[str]) -> bytes:
    """The model with its subgraph inputs and outputs in the order the model declares them.

    The converter lists a SavedModel's outputs in its own order (a Keras model's [cls, reg] came
    out as [reg, cls]), while ONNX and TF.js keep the model's. Code that reads tensors by index
    (``output(0)`` in TFLite Micro, ``get_output_details()[0]``) would take the wrong one, silently
    when the shapes match. Signature names map to tensors by index, so they stay right.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    sigs = model.signatureDefs or []
    sig = next((s for s in sigs if s.signatureKey == b"serving_default"), sigs[0] if len(sigs) == 1 else None)
    if sig is None:
        return flatbuffer
    graph = model.subgraphs[sig.subgraphIndex]
    changed = False
    for declared, tensors, attr in ((input_names, sig.inputs, "inputs"), (output_names, sig.outputs, "outputs")):
        by_name = {t.name.decode(): t.tensorIndex for t in tensors or []}
        want = [by_name[n] for n in declared if n in by_name]
        have = [int(i) for i in getattr(graph, attr)]
        if sorted(want) == sorted(have) and want != have:
            setattr(graph, attr, want)
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


def _io_names(flatbuffer: bytes) -> dict[str, list[str]]:
    """Signature names of the inputs and outputs, listed in the interpreter's index order.

    A harness that reads tensors by index (TFLite Micro, C++) finds which is which here: a
    SavedModel's outputs are not always in the order the model declared them.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_content=flatbuffer)
        sigs = interp.get_signature_list()
        if not sigs:
            return {}
        runner = interp.get_signature_runner("serving_default" if "serving_default" in sigs else next(iter(sigs)))
    except Exception:  # noqa: BLE001 - names are documentation; verification loads the file anyway
        return {}

    def in_index_order(by_name: dict[str, dict[str, Any]], details: list[dict[str, Any]]) -> list[str]:
        position = {d["index"]: i for i, d in enumerate(details)}
        return sorted(by_name, key=lambda n: position.get(by_name[n]["index"], len(details)))

    names = {"input_names": in_index_order(runner.get_input_details(), interp.get_input_details()),
             "output_names": in_index_order(runner.get_output_details(), interp.get_output_details())}
    # Integer inputs and outputs (int8 I/O): what a caller needs to quantize inputs and read outputs,
    # in tensor index order (listed by name, input 0 of a firmware harness read the wrong scale).
    # Integer inputs without a scale (token ids) are listed too: they stay int32, whatever "int8 I/O" says.
    quantized = {}
    for role, details, all_details in (("input", runner.get_input_details(), interp.get_input_details()),
                                       ("output", runner.get_output_details(), interp.get_output_details())):
        for name in in_index_order(details, all_details):
            d = details[name]
            scale, zero_point = d.get("quantization", (0.0, 0))
            if np.dtype(d["dtype"]).kind in "iu" and (scale or role == "input"):
                # An unscaled one has no scale to divide by: a consumer applying q = x / scale + zp to every
                # entry divided by the 0.0 listed before.
                quantized[f"{role} {name}"] = ({"dtype": np.dtype(d["dtype"]).name, "quantized": True, "scale": float(scale),
                                                "zero_point": int(zero_point)} if scale else
                                               {"dtype": np.dtype(d["dtype"]).name, "quantized": False})
    if any(q["quantized"] for q in quantized.values()):
        names["io_quantization"] = quantized
    return names


def _record_weight_storage(path: Path, target: Any, settings: dict[str, Any]) -> None:
    """How many weight values the file stores in each type, and a note when the target's type holds none.

    TFLite's dynamic-range quantization leaves tensors under 1024 values in float32: on a small
    model tflite-dynamic is then the float32 file, and "int8 weights" would be a false label.
    """
    if target.weights not in ("int8", "float16"):
        return
    from deploykit.optimize.sparsity import count_zeros

    values: dict[str, int] = {}
    largest = 0
    for t in count_zeros(path, "tflite")["tensors"]:
        if t["dtype"] in ("float32", "float16", "int8") and t["size"] > 1:
            values[t["dtype"]] = values.get(t["dtype"], 0) + t["size"]
            largest = max(largest, t["size"])
    total = sum(values.values())
    if not total:
        return
    settings["weight_values"] = dict(sorted(values.items()))  # per stored type: biases and small tensors may stay float32
    stored = values.get(target.weights, 0)
    if stored == 0 and largest < 1024:
        settings["note"] = (
            f"no weight is stored as {target.weights}: TFLite quantizes only weight tensors of 1024 values or more "
            f"(this model's largest has {largest}), so this file keeps float32 weights like tflite-fp32"
        )
    elif stored == 0:  # not the threshold: the converter left even a large one (a QAT model's LSTM loop)
        settings["note"] = (
            f"no weight is stored as {target.weights}: the converter kept every weight float32, though the largest "
            f"has {largest} values (past the 1024 TFLite quantizes from; weights it reads inside a recurrent loop, "
            "or that a QAT model's fake-quant ops hold, can stay float), so this file is as large as tflite-fp32"
        )


@foreign_warnings_ignored  # int8 calibration warns that tf.lite.Interpreter is deprecated
def _convert(sm_dir: Path, model: Any, target: Any, settings: dict[str, Any], calibration: Any) -> bytes:
    tf = import_tensorflow()
    with native_stderr_captured() as cap:
        try:
            # serving_default alone: a SavedModel with more signatures put all of them in the file, and
            # runtimes (and calibration) ran the first one, not the one deploykit verifies against.
            conv = tf.lite.TFLiteConverter.from_saved_model(str(sm_dir), signature_keys=["serving_default"])
            if settings["optimizations"]:
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if target.weights == "float16":
                conv.target_spec.supported_types = [tf.float16]
            if target.needs_calibration:
                if calibration is None or len(calibration) == 0:
                    raise ConversionError(f"{target.name} needs calibration data; pass --data")
                sig_inputs = [s.name for s in model.signature()["inputs"]]
                names = [s.name for s in model.inputs]
                conv.representative_dataset = _representative(
                    calibration.spread(target.calibration_samples), names, sig_inputs
                )
                ops = (
                    tf.lite.OpsSet.TFLITE_BUILTINS_INT8
                    if target.activations == "int8"
                    else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                )
                conv.target_spec.supported_ops = [ops]
            if target.io == "int8":
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
            return conv.convert()
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(_explain(target, exc, cap.text)) from None
        finally:
            conv = None  # drop the converter's graph before the next target


def _explain(target: Any, exc: Exception, native: str) -> str:
    text = " ".join(str(exc).split())
    ops = sorted(set(re.findall(r"\btf\.([A-Z]\w*)", text + " " + native)))  # TF op names are CamelCase
    if ops:
        # MLIR locations name the node, and with it the Keras layer: fused["Igamma:", "functional_1/odd_gamma_1/Igamma@..."]
        nodes: dict[str, str] = {}
        for op, node in re.findall(r'fused\["(\w+):", "([^"@]+)@', text + " " + native):
            nodes.setdefault(op, node.replace("StatefulPartitionedCall/", ""))
        named = ", ".join(f"{op} (e.g. {nodes[op]})" if op in nodes else op for op in ops)
        fixes = "".join(f" ({_TF_OP_FIX[op]})" for op in ops if op in _TF_OP_FIX)
        return (
            f"{target.name}: TFLite cannot convert op(s) {named} with builtin kernels "
            f"({target.activations} activations); replace those layers or choose another target{fixes}"
        )
    if "Max and min for dynamic tensors should be recorded" in text:
        # The 16x8 calibrator records ranges of float tensors only; an integer input (token ids) has none.
        # Ids that only feed an Embedding's lookup need none (those models pass): the ids reach another op.
        tensor = re.search(r"Failed for tensor (\S+)", text)
        return (f"{target.name}: TFLite's 16x8 quantizer needs a calibrated range for every tensor and an integer "
                f"one has none ({tensor.group(1) if tensor else 'an input'}): integer ids reach an op besides an "
                "Embedding lookup (a one-hot, multi-hot or count encoding; the mask of Embedding(mask_zero=True); or "
                "arithmetic on them); choose tflite-int8 (ids stay int32) or a float target")
    unquantizable = list(dict.fromkeys(re.findall(r"not yet supported for op: '(\w+)'", text + " " + native)))
    if unquantizable:  # the 16x8 quantizer lacks kernels the int8 one has, said once per op instance
        named = ", ".join(f"{op} ({_OP_ORIGIN[op]})" if op in _OP_ORIGIN else op for op in unquantizable)
        mode = re.search(r"Quantization to (\S+) not yet supported", text + " " + native)
        return (f"{target.name}: TFLite's {mode.group(1) if mode else target.activations} quantizer has no kernel "
                f"for op(s) {named}; choose a target with float activations (tflite-dynamic: int8 weights, about the "
                "same size; tflite-fp16) or tflite-int8 for this model")
    # Converter messages repeat one sentence per op instance: each said once, cut at a word.
    said = " ".join(dict.fromkeys(re.split(r"(?<=\.) ", text)))
    return f"{target.name}: TFLite conversion failed: {said if len(said) <= 400 else said[:400].rsplit(' ', 1)[0] + ' ...'}"


# TensorFlow ops TFLite has no kernel for, with where they come from and the way out.
_TF_OP_FIX = {
    "DenseBincount": "DenseBincount: a bincount, e.g. a multi-hot or count encoding; Keras's CategoryEncoding and "
                     "Discretization layers are exported as comparisons, so use those or encode the ids before the model",
}


# TFLite op names a quantizer may refuse, with the Keras layer or activation they come from.
_OP_ORIGIN = {
    "HARD_SWISH": "the hard_swish activation, e.g. MobileNetV3",
    "NEG": "a negation, e.g. inside LayerNormalization (of the mean) or exact GELU (approximate=False)",
    "GELU": "the gelu activation",
    "EXP": "an exp, e.g. inside a custom softmax or swish",
    "LOG": "a log",
    "CAST": "a cast between types, e.g. of a uint8 image input to float for its Rescaling: a float32 input takes "
            "16x8",
}
