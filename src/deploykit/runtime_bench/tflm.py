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

from deploykit.errors import RuntimeLoadError, UserError
from deploykit.runtime_bench.inputs import match_inputs, quantize_input
from deploykit.tmpdirs import TempDir

ARENA_ALIGN = 16


def io_layout(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs/outputs in the TFLite Micro index order with names, shapes, dtypes, scales, zero points.

    TFLite Micro's Python interpreter knows tensors only by position; LiteRT reads
    the same flatbuffer's signature to put names on those positions.
    """
    from ai_edge_litert.interpreter import Interpreter

    from deploykit._quiet import native_stderr_captured

    with native_stderr_captured() as cap:
        try:
            interp = Interpreter(model_path=str(path))
        except Exception as exc:  # not a TFLite flatbuffer (truncated, another format)
            why = " ".join(f"{exc} {cap.tail(1)}".split())[:200]
            raise RuntimeLoadError(f"TFLite Micro cannot read {Path(path).name}: it is not a valid .tflite model ({why})") from None
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
                        "shape_signature": [int(s) for s in d.get("shape_signature", d["shape"])],
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


MAX_CHILD_RESTARTS = 32
# TFLite Micro's words for an arena too small for the model's tensors, and the largest arena tried.
_TOO_SMALL = re.compile(r"Failed to (resize buffer|allocate)|available \d+, missing")
MAX_ARENA_PROBE = 1 << 30


_ARENAS: dict[str, dict[str, Any]] = {}  # by the flatbuffer's sha256: the converter and the runner both ask


def measure_arena(path: str | Path) -> dict[str, Any]:
    """The interpreter's recorded arena and the smallest arena it really allocates and runs in
    (measured once per flatbuffer content; see :func:`_measure_arena`)."""
    import hashlib

    key = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if key not in _ARENAS:
        _ARENAS[key] = _measure_arena(path)
    return dict(_ARENAS[key])


def _measure_arena(path: str | Path) -> dict[str, Any]:
    """The interpreter's recorded arena and the smallest arena it really allocates and runs in.

    The search runs in a child process (``python -m deploykit.runtime_bench.tflm``):
    in some too-small arenas the tflite-micro package does not fail cleanly but
    crashes the process (measured: a Dense-only model segfaults in
    ``Interpreter.__init__`` after "All temp buffers must be freed before calling
    ResetTempAllocations()"). The child logs every size it tries to a file; when
    it dies, the size it was trying counts as too small and a new child resumes
    the search from the bounds known so far.
    """
    import json
    import subprocess

    path = Path(path)
    env = dict(os.environ)  # the child imports this very package, wherever it was imported from
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2])] + [p for p in [env.get("PYTHONPATH")] if p])
    with TempDir("tflm") as tmp:
        log = Path(tmp) / "search.log"
        bounds: list[str] = []
        for _ in range(MAX_CHILD_RESTARTS):
            proc = subprocess.run([sys.executable, "-m", "deploykit.runtime_bench.tflm", str(path), str(log), *bounds],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env)
            state: dict[str, Any] = {}
            for line in log.read_text().splitlines() if log.exists() else []:
                key, _, value = line.partition(" ")
                state[key] = json.loads(value)
            if "arena" in state:
                return {"recorded": state["recorded"], "allocations": state["allocations"], "arena": state["arena"]}
            if "recorded" not in state:  # the model does not even run in a generous arena
                why = _micro_error(proc.stdout) or (f"the interpreter crashed (exit {proc.returncode})" if proc.returncode else "")
                raise RuntimeLoadError(f"TFLite Micro could not run {path.name}: {explain_failure(path, why) or 'no reason given'}")
            lo, hi = state["lo"], state["hi"]
            if state.get("trying") is not None:  # it died trying this size: too small
                lo = max(lo, state["trying"])
            bounds = [str(lo), str(hi)]
        raise RuntimeLoadError(f"TFLite Micro kept crashing while sizing the arena of {path.name}")


def _micro_error(output: str) -> str:
    """The lines of TFLite Micro's own output that say why a model failed (kernel checks, unsupported types)."""
    # Allocator records and Python traceback frames are noise; kernel messages and the exception line are the reason.
    keep = [" ".join(l.split()) for l in output.splitlines()
            if l.strip() and not l.startswith(("[RecordingMicroAllocator]", "Traceback", " "))]
    return "; ".join(dict.fromkeys(keep))[:300]


_FAILED_NODE = re.compile(r"Node (\w+) \(number (\d+)\) failed to (prepare|invoke)")
_TYPE_CHECK = re.compile(r"\((\w+) != (\w+)\)")


def _node_io(path: Path, index: int) -> tuple[str, list[tuple[str, int]]]:
    """The output tensor name of operator ``index`` of the main graph, and (type, rank) of its tensors."""
    from tflite_micro.python.tflite_micro import runtime

    model = runtime.convert_bytearray_to_object(bytearray(path.read_bytes()))
    graph = model.subgraphs[0]
    op = graph.operators[index]
    type_names = {v: k for k, v in vars(runtime.schema_fb.TensorType).items() if not k.startswith("_")}
    tensors = [graph.tensors[t] for t in [*(op.inputs if op.inputs is not None else []),
                                          *(op.outputs if op.outputs is not None else [])] if t >= 0]
    name = graph.tensors[op.outputs[0]].name if op.outputs is not None and len(op.outputs) else b""
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name.split(";")[0], [(type_names.get(t.type, str(t.type)), len(t.shape) if t.shape is not None else 0)
                                for t in tensors]


def explain_failure(path: str | Path, why: str) -> str:
    """TFLite Micro's kernel message, led by what it means: the op, the layer it came from, and the way out.

    The kernels report a failed check (``input->type != expected_type (INT8 != FLOAT32)``,
    ``input dim should not exceed 4``) and a node number; the node's tensors say
    which limit was hit: a kernel that exists only for other types, or a tensor
    of higher rank than TFLite Micro's kernels take.
    """
    match = _FAILED_NODE.search(why)
    if not match:
        return why
    op, index = match.group(1), int(match.group(2))
    try:
        layer, tensors = _node_io(Path(path), index)
    except Exception:  # noqa: BLE001 - the raw message is still the answer
        return why
    where = f"node {index}, {layer}" if layer else f"node {index}"
    ranks = [r for _, r in tensors]
    types = {t for t, _ in tensors}
    check = _TYPE_CHECK.search(why)
    if max(ranks, default=0) > 4:
        lead = (f"{op} ({where}) works on {max(ranks)}-D tensors and TFLite Micro's kernels take at most 4-D (video or "
                "TimeDistributed inputs are 5-D); reshape to 4-D inside the model or use a TFLite target")
    elif check and len({check.group(1), check.group(2)} & types) == 1:
        given = check.group(1) if check.group(1) in types else check.group(2)
        wanted = check.group(2) if given == check.group(1) else check.group(1)
        lead = (f"TFLite Micro's {op} kernel takes {wanted}, not the {given} this model gives it ({where}); "
                "compute that part outside the model (before its input or after its output) or use a TFLite target")
    else:
        lead = f"TFLite Micro's {op} kernel refused the model ({where})"
    return f"{lead} (kernel said: {why})"


def _search(path: str, log_path: str, bounds: list[str]) -> None:
    """Child side of :func:`measure_arena`: log each step as ``key json`` lines, flushed as they happen."""
    import json

    from tflite_micro.python.tflite_micro import runtime

    log = open(log_path, "a", buffering=1)

    def note(key: str, value: Any) -> None:
        log.write(f"{key} {json.dumps(value)}\n")
        log.flush()
        os.fsync(log.fileno())

    layout = io_layout(path)

    def runs_in(arena: int, record: bool = False) -> str | None:
        interp = runtime.Interpreter.from_file(path, arena_size=arena)
        for i, t in enumerate(layout["inputs"]):
            interp.set_input(np.zeros(t["shape"], dtype=t["dtype"]), i)
        interp.invoke()
        return _capture_native_output(interp.print_allocations) if record else None

    if bounds:
        lo, hi = (int(b) for b in bounds)
        first = None
    else:
        probe = max(Path(path).stat().st_size * 10, 256 * 1024)
        while True:
            tried: dict[str, Any] = {}

            def attempt() -> None:
                try:
                    tried["text"] = runs_in(probe, record=True)
                except Exception as exc:  # noqa: BLE001 - said below, with TFLite Micro's own lines
                    tried["error"] = exc

            native = _capture_native_output(attempt)
            if "error" not in tried:
                text = tried["text"]
                break
            if _TOO_SMALL.search(native) and probe < MAX_ARENA_PROBE:
                # Activations larger than the first guess (a 6 KB model with 128x128x16 maps needs ~600 KB):
                # refused as "could not run" before; a bigger arena, the way to its real size.
                probe *= 4
                continue
            sys.stderr.write(native)  # the reason is in TFLite Micro's own lines, and the exception
            print(" ".join(str(tried["error"]).split())[:200], file=sys.stderr)
            return
        match = re.search(r"Arena allocation total (\d+) bytes", text or "")
        if not match:
            print("TFLite Micro did not report its arena", file=sys.stderr)
            return
        note("allocations", text.strip().splitlines())
        note("recorded", int(match.group(1)))
        # The allocation record misses scratch ("temp") memory some kernels ask for while
        # preparing, so the recorded total can be a few bytes short. The figure is the smallest
        # arena (16-byte steps) in which the interpreter really allocates and runs.
        first = -(-int(match.group(1)) // ARENA_ALIGN) * ARENA_ALIGN
        lo, hi = first - ARENA_ALIGN, probe  # below the record nothing fits
        note("lo", lo)
        note("hi", hi)
    while hi - lo > ARENA_ALIGN:
        # The recorded total first (usually enough), then bisection.
        mid = first if first is not None else (lo + hi) // 2 // ARENA_ALIGN * ARENA_ALIGN
        first = None
        note("trying", mid)
        try:
            _capture_native_output(lambda: runs_in(mid))  # a too-small arena prints allocation errors
            hi = mid
            note("hi", hi)
        except Exception:
            lo = mid
            note("lo", lo)
        note("trying", None)
    note("arena", hi)


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
        self._inputs: list[tuple[int, np.ndarray]] = []  # (index, data as the interpreter takes it)

    def _make(self, arena: int | None):
        from tflite_micro.python.tflite_micro import runtime

        return runtime.Interpreter.from_file(str(self.path), arena_size=arena)

    def load(self) -> float:
        """Measure the arena in a child process, then load with exactly that arena; returns load seconds."""
        self._layout = io_layout(self.path)
        for t in self._layout["inputs"]:
            # TFLite Micro runs the sizes the file stores (1 for a dimension of any size): a sequence of
            # any length was timed at length 1 without a word, and --data of length 7 refused. A free
            # batch is fine: run at the stored batch of 1, as LiteRT does.
            sig = t.get("shape_signature", t["shape"])
            if any(s == -1 for s in sig[1:]):
                shown = tuple(None if s == -1 else s for s in sig)
                raise UserError(f"TFLite Micro runs fixed shapes only, and input {t['name']!r} of {self.path.name} has "
                                f"dimensions of any size {shown}; convert the model with a fixed input size for "
                                "microcontrollers, or time this file on LiteRT (--runtime litert) with --data")
        from deploykit.converters.tflm import flat_softmax

        flat = flat_softmax(self.path.read_bytes())
        if flat:  # the file is fine (LiteRT runs it): TFLite Micro would abort without a word
            raise UserError(f"TFLite Micro cannot run {self.path.name}: {flat}; time this file on LiteRT (--runtime litert)")
        found = measure_arena(self.path)
        self.arena_recorded_bytes = found["recorded"]
        self.allocations = found["allocations"]
        self.arena_bytes = found["arena"]
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401 - imported before the clock: init is the file's

        t0 = time.perf_counter()
        # This size allocated and ran in the child: deterministic, so it does here too.
        self._interp = self._make(self.arena_bytes)
        elapsed = time.perf_counter() - t0
        self._zero_inputs(self._interp)
        self._interp.invoke()
        return elapsed

    def _zero_inputs(self, interp) -> None:
        self._inputs = [(i, np.zeros(t["shape"], dtype=t["dtype"])) for i, t in enumerate(self._layout["inputs"])]
        for i, x in self._inputs:
            interp.set_input(x, i)

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
        details = self.input_details()
        self._inputs = [(i, np.ascontiguousarray(quantize_input(inputs[t["name"]], details[t["name"]])))
                        for i, t in enumerate(self._layout["inputs"])]

    def invoke(self) -> None:
        # TFLite Micro's memory planner lets later tensors reuse an input's bytes once it has been
        # read, so an input holds garbage after invoke(): it is written before every call, as
        # firmware does (invoked twice on one write, an Embedding model gathered garbage ids and failed).
        for i, x in self._inputs:
            self._interp.set_input(x, i)
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


if __name__ == "__main__":  # the arena search's child process (see measure_arena)
    _search(sys.argv[1], sys.argv[2], sys.argv[3:])
