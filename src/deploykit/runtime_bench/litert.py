"""LiteRT (ai-edge-litert) runner for .tflite artifacts.

The same runner serves verification and benchmarking, so what is verified is
exactly what is timed. XNNPACK is LiteRT's default CPU delegate and is used
as-is. Integer inputs/outputs are quantized/dequantized with the tensor's own
scale and zero point, so callers always pass and get float data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploykit._quiet import native_stderr_captured, quiet_tensorflow_env
from deploykit.errors import RuntimeLoadError
from deploykit.runtime_bench.inputs import match_inputs, quantize_input


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if y.dtype.kind not in "iu":
        return y
    scale, zero = detail["quantization"]
    if not scale:
        return y
    return (y.astype(np.float32) - zero) * np.float32(scale)


def _signature_subgraphs(path: Path) -> dict[str, int]:
    """Each signature of a .tflite file and the subgraph it runs (from the flatbuffer's SignatureDefs)."""
    import mmap

    from ai_edge_litert import schema_py_generated as schema

    # mapped, not read: the memory probe's peak must stay the interpreter's (a VGG16 file is 0.5 GB)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        model = schema.Model.GetRootAsModel(buf, 0)
        defs = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
        return {(d.SignatureKey() or b"").decode(): int(d.SubgraphIndex()) for d in defs}


class LiteRTRunner:
    """Load a .tflite file in LiteRT and run it.

    Example:
        >>> r = LiteRTRunner("model.tflite", threads=2); r.load()
        >>> outputs = r.run({"pixels": x})
    """

    runtime = "litert"
    # Untimed running before the first timing (see runtime_bench._settle). A fresh interpreter's
    # first runs can be several times slower than the rest (its threads waking, caches, the CPU's
    # clock): in a convert run the digits CNN's tflite-fp16 ran ~0.05 ms for its first 55 timed
    # runs and 0.006 ms after, so the 10 warm-up runs left its p50 7.5x the settled figure.
    settle_s = 0.05

    def __init__(self, path: str | Path, threads: int = 2):
        self.path = Path(path)
        self.threads = threads
        self._interp: Any = None
        self._deferred = False  # built on the first inputs (inputs of any height/width)
        self._without_xnnpack = False  # LiteRT's own kernels: XNNPACK could not prepare the file (see invoke)
        self._given: Mapping[str, np.ndarray] = {}  # the inputs last set, set again on the rebuilt interpreter

    def load(self) -> float:
        """Create the interpreter and allocate tensors; returns seconds taken.

        A model whose inputs take any height/width stores them as 1x1, on which XNNPACK
        cannot prepare e.g. a 3x3 VALID conv. Such a model loads without delegates first
        (for its names and shapes) and is built with XNNPACK on the first real inputs.
        """
        # The runtime is imported before the clock starts: init time is the file's, and the first file
        # loaded in a process paid the import (30 ms here, the same file's second load 0.6 ms).
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self._deferred = False
        self._without_xnnpack = False
        self._settled = False  # a new interpreter settles again
        with quiet_tensorflow_env(), native_stderr_captured() as cap:
            t0 = time.perf_counter()
            try:
                self._interp = Interpreter(model_path=str(self.path), num_threads=self.threads)
                self._interp.allocate_tensors()
            except Exception as exc:
                message = " ".join(f"LiteRT could not load {self.path.name}: {' '.join(str(exc).split())[:300]} {cap.tail(2)}".split())
                try:
                    probe = Interpreter(model_path=str(self.path), num_threads=self.threads,
                                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                except Exception:
                    raise RuntimeLoadError(message) from None
                if not any(-1 in list(d["shape_signature"])[1:] for d in probe.get_input_details()):
                    raise RuntimeLoadError(message) from None
                self._interp, self._deferred = probe, True
            elapsed = time.perf_counter() - t0
        by_index_in = {d["index"]: d for d in self._interp.get_input_details()}
        by_index_out = {d["index"]: d for d in self._interp.get_output_details()}
        sigs = self._interp.get_signature_list()
        self._signatures = list(sigs)
        if sigs:
            # invoke() runs the main subgraph: the signature timed must be the one over it (the first in the
            # list was taken, 'aaa_small', while invoke() ran 'zzz_heavy''s graph or the other way round)
            mains = [k for k, g in _signature_subgraphs(self.path).items() if g == 0 and k in sigs] if len(sigs) > 1 else []
            key = "serving_default" if "serving_default" in sigs else (mains or list(sigs))[0]
            self._signature = key
            sr = self._interp.get_signature_runner(key)
            self._inputs = {n: by_index_in[d["index"]] for n, d in sr.get_input_details().items()}
            self._outputs = {n: by_index_out[d["index"]] for n, d in sr.get_output_details().items()}
        else:
            self._inputs = {d["name"]: d for d in by_index_in.values()}
            self._outputs = {d["name"]: d for d in by_index_out.values()}
        return elapsed

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def input_details(self) -> dict[str, dict[str, Any]]:
        """Name -> LiteRT tensor details (shape, shape_signature, dtype, quantization)."""
        return dict(self._inputs)

    def output_details(self) -> dict[str, dict[str, Any]]:
        return dict(self._outputs)

    def _build_for(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Build the XNNPACK interpreter with the inputs' shapes written into the model."""
        from ai_edge_litert.interpreter import Interpreter
        # LiteRT's own copy, not TensorFlow's: importing TensorFlow here (~570 MiB) was counted as the
        # memory a file with inputs of any height and width adds to a LiteRT process
        from ai_edge_litert.tools import flatbuffer_utils

        for name, x in inputs.items():
            # Only dimensions of any size take the inputs' sizes: a batch fixed at 1 (recurrent loops) given
            # 8 samples built a file that returned one answer for eight, which verification read as a crash
            # ("cannot reshape array of size 75"); refused here, the caller goes on at the size it takes.
            sig = [int(s) for s in self._inputs[name].get("shape_signature", self._inputs[name]["shape"])]
            given = list(np.shape(x))
            if len(sig) != len(given) or any(s != -1 and s != g for s, g in zip(sig, given)):
                raise RuntimeLoadError(f"{self.path.name} input {name!r} takes shape "
                                       f"{tuple(None if s == -1 else s for s in sig)}, got {tuple(given)}")
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(self.path.read_bytes()))
        for name, x in inputs.items():
            model.subgraphs[0].tensors[self._inputs[name]["index"]].shape = np.asarray(np.shape(x), np.int32)
        with native_stderr_captured() as cap:
            try:
                interp = Interpreter(model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(model)),
                                     num_threads=self.threads)
                interp.allocate_tensors()
            except Exception as exc:
                raise RuntimeLoadError(f"LiteRT could not run {self.path.name} on inputs of shape "
                                       f"{[tuple(np.shape(x)) for x in inputs.values()]}: {' '.join(str(exc).split())[:300]} {cap.tail(2)}") from None
        self._interp, self._deferred = interp, False
        self._refresh_details()

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Set float (or native) inputs by name; positional when the names differ but counts match."""
        inputs = match_inputs(self.input_names, inputs, self.path.name)
        self._given = inputs  # set again should XNNPACK fail on the first invoke (see invoke)
        if self._deferred:
            self._build_for(inputs)
        before = {name: list(self._inputs[name]["shape"]) for name in inputs}
        resized = [name for name, x in inputs.items() if before[name] != list(np.shape(x))]
        for name in resized:
            self._interp.resize_tensor_input(self._inputs[name]["index"], list(np.shape(inputs[name])), strict=False)
        if resized:
            try:
                self._interp.allocate_tensors()
            except Exception:
                # A model with a static batch (e.g. recurrent loops) refuses other sizes: put the
                # shapes back so the caller can go on at the size the model takes.
                for name in resized:
                    self._interp.resize_tensor_input(self._inputs[name]["index"], before[name], strict=False)
                self._interp.allocate_tensors()
                raise
            self._refresh_details()
        for name, x in inputs.items():
            detail = self._inputs[name]
            self._interp.set_tensor(detail["index"], quantize_input(x, detail))

    def _refresh_details(self) -> None:
        fresh_in = {d["index"]: d for d in self._interp.get_input_details()}
        fresh_out = {d["index"]: d for d in self._interp.get_output_details()}
        self._inputs = {n: fresh_in[d["index"]] for n, d in self._inputs.items()}
        self._outputs = {n: fresh_out[d["index"]] for n, d in self._outputs.items()}

    def invoke(self) -> None:
        try:  # free when nothing is raised (Python 3.11): the timed loop calls this
            self._interp.invoke()
        except RuntimeError as exc:
            if "XNNPACK" not in str(exc) or self._without_xnnpack:
                raise
            # XNNPACK builds its runtime on the first invoke, and may not manage (an unrolled int8 LSTM:
            # "failed to create XNNPACK runtime"): LiteRT's own kernels run the intact file, as in an app
            # that turns the delegate off; said in describe(). It was a raw RuntimeError failing the target.
            self._without_xnnpack_from_now()
            self._interp.invoke()

    def _without_xnnpack_from_now(self) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        with quiet_tensorflow_env(), native_stderr_captured():
            self._interp = Interpreter(model_path=str(self.path), num_threads=self.threads,
                                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self._interp.allocate_tensors()
        self._without_xnnpack, self._deferred = True, False
        self._refresh_details()
        if self._given:
            self.set_inputs(self._given)

    def get_outputs(self) -> dict[str, np.ndarray]:
        """Outputs by name, dequantized to float when the artifact has integer outputs."""
        return {n: _dequantize(self._interp.get_tensor(d["index"]), d) for n, d in self._outputs.items()}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set inputs, invoke, return outputs."""
        self.set_inputs(inputs)
        self.invoke()
        return self.get_outputs()

    def describe(self) -> dict[str, Any]:
        """Runtime settings recorded with benchmark results."""
        out = {"runtime": self.runtime, "threads": self.threads, "delegate": "XNNPACK (LiteRT default)"}
        if self._without_xnnpack:
            out["delegate"] = "none: XNNPACK could not prepare this file, LiteRT's builtin kernels ran it"
        if len(getattr(self, "_signatures", [])) > 1:  # said: the other signatures are not what was timed
            out["note"] = (f"timed signature {self._signature!r}, the file's main graph; its other signatures "
                           f"({', '.join(repr(k) for k in self._signatures if k != self._signature)}) were not timed")
        return out

    def close(self) -> None:
        self._interp = None
