"""TFLite Micro runner: the real TFLite Micro kernels through the tflite-micro package.

The arena figure is the interpreter's own: its RecordingMicroAllocator's total
is recorded, and the arena we report is the smallest (16-byte steps, from that
total up) in which the interpreter really allocates and runs the model — the
record alone misses kernels' scratch memory and can be a few bytes short. The
runner then verifies and times the model in exactly that arena. TFLite Micro
runs batch 1, single-threaded.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploykit.errors import RuntimeLoadError
from deploykit.runtime_bench.inputs import match_inputs

ARENA_ALIGN = 16


def io_layout(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs/outputs in the TFLite Micro index order with names, shapes, dtypes, scales, zero points.

    TFLite Micro's Python interpreter knows tensors only by position; LiteRT reads
    the same flatbuffer's signature to put names on those positions.
    """
    from ai_edge_litert.interpreter import Interpreter

    from deploykit._quiet import native_stderr_captured

    with native_stderr_captured():
        interp = Interpreter(model_path=str(path))
    names_in: dict[int, str] = {}
    names_out: dict[int, str] = {}
    sigs = interp.get_signature_list()
    if sigs:
        sr = interp.get_signature_runner("serving_default" if "serving_default" in sigs else next(iter(sigs)))
        names_in = {d["index"]: n for n, d in sr.get_input_details().items()}
        names_out = {d["index"]: n for n, d in sr.get_output_details().items()}

    def rows(details, names):
        out = []
        for d in details:
            scale, zero = d["quantization"]
            out.append({"name": names.get(d["index"], d["name"]), "shape": [int(s) for s in d["shape"]],
                        "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zero)})
        return out

    return {"inputs": rows(interp.get_input_details(), names_in), "outputs": rows(interp.get_output_details(), names_out)}


def _capture_native_output(fn) -> str:
    """Run ``fn`` with fds 1 and 2 pointed at a temp file; the allocator prints from C++."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        for fd in saved:
            os.dup2(tmp.fileno(), fd)
        try:
            fn()
        finally:
            ctypes.CDLL(None).fflush(None)  # flush C stdio buffers before restoring the fds
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
        tmp.seek(0)
        return tmp.read().decode("utf-8", "replace")


class TFLMRunner:
    """Run an int8 .tflite on the TFLite Micro kernels.

    Example:
        >>> r = TFLMRunner("model.tflite"); r.load(); r.arena_bytes
    """

    runtime = "tflm"

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.threads = 1  # TFLite Micro is single-threaded whatever was asked
        self.arena_bytes: int | None = None
        self._interp: Any = None

    def _make(self, arena: int | None):
        from tflite_micro.python.tflite_micro import runtime

        return runtime.Interpreter.from_file(str(self.path), arena_size=arena)

    def load(self) -> float:
        """Load, measure the arena, then re-load with exactly that arena; returns first-load seconds."""
        self._layout = io_layout(self.path)
        size = self.path.stat().st_size
        t0 = time.perf_counter()
        try:
            probe = self._make(max(size * 10, 256 * 1024))
            elapsed = time.perf_counter() - t0
            self._zero_inputs(probe)
            probe.invoke()
            text = _capture_native_output(probe.print_allocations)
        except Exception as exc:
            raise RuntimeLoadError(f"TFLite Micro could not run {self.path.name}: {' '.join(str(exc).split())[:300]}") from None
        match = re.search(r"Arena allocation total (\d+) bytes", text)
        if not match:
            raise RuntimeLoadError(f"TFLite Micro did not report its arena for {self.path.name}")
        self.arena_recorded_bytes = int(match.group(1))
        self.allocations = text.strip().splitlines()
        # The allocation record misses scratch ("temp") memory some kernels ask for while
        # preparing, so the recorded total can be a few bytes short. Find the smallest arena
        # (16-byte steps) in which the interpreter really allocates and runs: that is the figure.
        probe_size = max(size * 10, 256 * 1024)
        lo = -(-self.arena_recorded_bytes // ARENA_ALIGN) * ARENA_ALIGN
        if self._runs_in(lo):
            hi = lo
        else:
            hi = probe_size
            while hi - lo > ARENA_ALIGN:
                mid = (lo + hi) // 2 // ARENA_ALIGN * ARENA_ALIGN
                if self._runs_in(mid):
                    hi = mid
                else:
                    lo = mid
        self.arena_bytes = hi
        self._interp = self._make(hi)
        self._zero_inputs(self._interp)
        self._interp.invoke()
        return elapsed

    def _runs_in(self, arena: int) -> bool:
        try:
            interp = self._make(arena)
            self._zero_inputs(interp)
            _capture_native_output(interp.invoke)  # a too-small arena prints allocation errors
            return True
        except Exception:
            return False

    def _zero_inputs(self, interp) -> None:
        for i, t in enumerate(self._layout["inputs"]):
            interp.set_input(np.zeros(t["shape"], dtype=t["dtype"]), i)

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self._layout["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self._layout["outputs"]]

    def input_details(self) -> dict[str, dict[str, Any]]:
        return {t["name"]: {"shape": t["shape"], "shape_signature": t["shape"], "dtype": np.dtype(t["dtype"]),
                            "quantization": (t["scale"], t["zero_point"])} for t in self._layout["inputs"]}

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        inputs = match_inputs(self.input_names, inputs, self.path.name)
        for i, t in enumerate(self._layout["inputs"]):
            x = np.asarray(inputs[t["name"]])
            if tuple(x.shape) != tuple(t["shape"]):
                raise RuntimeLoadError(f"TFLite Micro input {t['name']!r} has fixed shape {tuple(t['shape'])}, got {x.shape}")
            dtype = np.dtype(t["dtype"])
            if dtype.kind in "iu" and x.dtype != dtype and t["scale"]:
                info = np.iinfo(dtype)
                x = np.clip(np.round(x.astype(np.float32) / t["scale"] + t["zero_point"]), info.min, info.max)
            self._interp.set_input(x.astype(dtype), i)

    def invoke(self) -> None:
        self._interp.invoke()

    def get_outputs(self) -> dict[str, np.ndarray]:
        out = {}
        for i, t in enumerate(self._layout["outputs"]):
            y = np.asarray(self._interp.get_output(i))
            if y.dtype.kind in "iu" and t["scale"]:
                y = (y.astype(np.float32) - t["zero_point"]) * np.float32(t["scale"])
            out[t["name"]] = y
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.set_inputs(inputs)
        self.invoke()
        return self.get_outputs()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "kernels": "TFLite Micro reference kernels (tflite-micro package)",
                "threads": 1, "arena_bytes": self.arena_bytes, "arena_recorded_bytes": self.arena_recorded_bytes,
                "model_bytes": self.path.stat().st_size}

    def close(self) -> None:
        self._interp = None
