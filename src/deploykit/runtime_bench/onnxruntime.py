"""ONNX Runtime runner (CPUExecutionProvider) for .onnx artifacts.

Also reads ORT's profiler to name the most expensive ops, and refuses models
whose external-data paths point outside the model's directory (a crafted
.onnx could otherwise make us read any file on the machine).
"""

from __future__ import annotations

import json
import re
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploykit.errors import RuntimeLoadError, UserError
from deploykit.runtime_bench.inputs import match_inputs
from deploykit.tmpdirs import TempDir

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32, "tensor(uint32)": np.uint32, "tensor(int64)": np.int64, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_, "tensor(string)": np.str_,
}


def _graph_of(path: Path) -> Any:
    """The model's proto without its external data (the graph only)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        from deploykit.runtime_bench import CUT_SHORT

        raise UserError(f"{path}: not a readable ONNX model ({' '.join(str(exc).split())[:200]}); {CUT_SHORT}") from None


def unranked_inputs(proto: Any) -> set[str]:
    """Graph inputs that record no shape at all. ONNX Runtime reports them as shape [], as it does a
    scalar, and a random scalar was timed for them without a word."""
    initializers = {t.name for t in proto.graph.initializer}
    return {i.name for i in proto.graph.input if i.name not in initializers
            and i.type.HasField("tensor_type") and not i.type.tensor_type.HasField("shape")}


_SET_UP = False


def _set_up_once() -> None:
    """Create and drop one session of a one-node model, once per process.

    ONNX Runtime sets up its environment (logging, kernel registries) in the first session a process
    creates: 17-35 ms here. It was charged to whichever file a run loaded first, so onnx-fp32 "took"
    39 ms to load beside 5 ms for the others, and swapping the --target flags swapped the figures.
    """
    global _SET_UP
    if _SET_UP:
        return
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "set_up", value,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    _SET_UP = True


def check_external_data(path: Path, proto: Any = None) -> list[str]:
    """External-data files a model references; refuse any that leave its directory.

    Raises:
        UserError: the file is no ONNX model, or a location is absolute or escapes the model's directory.
    """
    from onnx import external_data_helper

    proto = _graph_of(path) if proto is None else proto
    base = path.resolve().parent
    locations = set()
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        resolved = (base / location).resolve()
        if os.path.isabs(location) or not resolved.is_relative_to(base):
            raise UserError(
                f"{path.name}: external data location {location!r} of tensor {tensor.name!r} leaves the model's "
                "directory; refused. Keep external data files beside the model with relative names"
            )
        if not (base / location).is_file():  # ORT opens the path as written: 'w/../x' needs a 'w' directory
            raise UserError(
                f"{path.name}: external data file {location!r} of tensor {tensor.name!r} does not exist beside the "
                "model (or is not a file); copy the model together with its data file(s)"
            )
        locations.add(location)
    return sorted(locations)



def ort_reason(exc: Exception, limit: int = 400) -> str:
    """ONNX Runtime's reason without its C++ scaffolding: the source paths, the function signatures
    and the repeated "[ONNXRuntimeError] : 1 : FAIL :" prefixes came first and filled the 300
    characters, cutting off the reason ("'Cubic' mode only supports ..."). The status code stays."""
    text = " ".join(str(exc).split())
    codes = re.findall(r"\[ONNXRuntimeError\] : \d+ : (\w+) :", text)
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ :\s*", "", text)
    text = re.sub(r"/onnxruntime_src/\S+?:\d+\s*", "", text)  # from the slash: "failed:/onnxruntime_src/..." keeps "failed:"
    text = re.sub(r"(?:\b(?:void|bool|int|auto|Status|common::Status)\s+)?onnxruntime::[\w:~]+\([^)]*\)\s*"
                  r"(?:\[with [^\]]*\]\s*)?", "", text)
    text = re.sub(r"(?<![\w/])\w+\.(?:h|cc|cpp):\d+\s+", "", text).strip()
    text = f"{codes[0]}: {text}" if codes else text
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _said_with_way_out(reason: str) -> str:
    """ONNX Runtime's reason, shortened and with what to do where the cause is known."""
    if "'Cubic' mode only supports" in reason:
        # ORT's cubic kernel takes 2-D inputs (or 4-D resized over the last two axes); an NHWC image's Resize
        # resizes its middle axes. tf2onnx moves a float graph's Resize into NCHW when a convolution follows
        # it; an int8 graph's, between quantize/dequantize nodes, and one that ends the model stay NHWC.
        node = re.search(r"Name:'([^']+)'", reason)
        return (f"ONNX Runtime cannot run the bicubic Resize{f' {node.group(1)!r}' if node else ''} of an image in "
                "channels-last layout ('Cubic' mode only supports 2-D inputs ...): use interpolation='bilinear' in the "
                "Keras Resizing layer (TFLite and TF.js have no bicubic resize either), or resize before the model "
                "(a float ONNX file runs it where a convolution follows the Resize)")
    return reason


class ORTRunner:
    """Load an .onnx file in ONNX Runtime and run it.

    Example:
        >>> r = ORTRunner("model.onnx", threads=2); r.load()
        >>> outputs = r.run({"pixels": x})
    """

    runtime = "onnxruntime"
    settle_s = 0.05  # untimed running of a fresh session first, as LiteRTRunner's (see there)

    def __init__(self, path: str | Path, threads: int = 2, optimization_level: str = "all"):
        self.path = Path(path)
        self.threads = threads
        self.optimization_level = optimization_level
        self._session: Any = None
        self._feed: dict[str, np.ndarray] = {}
        self._outputs: list[np.ndarray] = []
        self._unranked: set[str] = set()  # inputs that record no shape (see unranked_inputs)

    def _options(self, profile_dir: str | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 4  # a load failure is raised with ORT's message; its log line would repeat it raw
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.optimization_level]
        if profile_dir:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(profile_dir) / "ort")
        return opts

    def _session_for(self, opts):
        import onnxruntime as ort

        return ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])

    def preflight(self) -> None:
        """Check the file's external data before loading it. Separate from :meth:`load` so the memory
        probe can run it before its start figure: it imports the ``onnx`` package (~10 MiB) and parses
        the graph, which an app serving the file with ONNX Runtime does neither."""
        proto = _graph_of(self.path)
        check_external_data(self.path, proto)
        self._unranked = unranked_inputs(proto)
        _set_up_once()
        self._preflighted = True

    def load(self) -> float:
        """Create the session (graph optimization included); returns seconds taken."""
        self._settled = False  # a new session settles again
        if not getattr(self, "_preflighted", False):
            self.preflight()
        # Options are built (onnxruntime imported) before the clock starts: the first file loaded in a
        # process paid the import (~150 ms) in its init time.
        opts = self._options()
        t0 = time.perf_counter()
        try:
            self._session = self._session_for(opts)
        except Exception as exc:
            raise RuntimeLoadError(f"ONNX Runtime could not load {self.path.name}: "
                                   f"{_said_with_way_out(ort_reason(exc))}") from None
        elapsed = time.perf_counter() - t0
        self._in = {i.name: i for i in self._session.get_inputs()}
        self._out_names = [o.name for o in self._session.get_outputs()]
        return elapsed

    @property
    def input_names(self) -> list[str]:
        return list(self._in)

    @property
    def output_names(self) -> list[str]:
        return list(self._out_names)

    def input_details(self) -> dict[str, dict[str, Any]]:
        """Name -> shape (-1 for symbolic dims), dtype, no quantization (ORT takes floats); ``rank_unknown``
        for an input that records no shape (ONNX Runtime says [] for it, as for a scalar)."""
        out = {}
        for name, i in self._in.items():
            shape = [d if isinstance(d, int) else -1 for d in i.shape]
            out[name] = {"shape": shape, "shape_signature": shape, "dtype": _ORT_DTYPES.get(i.type, np.float32),
                         "quantization": (0.0, 0)}
            if name in self._unranked:
                out[name]["rank_unknown"] = True
        return out

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        inputs = match_inputs(self.input_names, inputs, self.path.name)
        self._feed = {n: np.ascontiguousarray(x, dtype=_ORT_DTYPES.get(self._in[n].type, np.float32)) for n, x in inputs.items()}

    def invoke(self) -> None:
        try:  # free when nothing is raised (Python 3.11): the timed loop calls this
            self._outputs = self._session.run(self._out_names, self._feed)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            # the same exception type, with the reason first and any known way out
            raise type(exc)(_said_with_way_out(ort_reason(exc))) from None

    def get_outputs(self) -> dict[str, np.ndarray]:
        return {n: np.asarray(o, dtype=np.float32) if np.asarray(o).dtype == np.float16 else np.asarray(o)
                for n, o in zip(self._out_names, self._outputs)}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.set_inputs(inputs)
        self.invoke()
        return self.get_outputs()

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runtime": self.runtime, "runtime_version": ort.__version__, "threads": self.threads,
                "graph_optimization_level": self.optimization_level, "execution_provider": "CPUExecutionProvider"}

    def op_profile(self, inputs: Mapping[str, np.ndarray], runs: int = 20, top: int = 10) -> dict[str, Any]:
        """Run with ORT's profiler on; the ``top`` op types and nodes by total kernel time."""
        with TempDir("ortprof") as tmp:
            session = self._session_for(self._options(profile_dir=tmp))
            feed = dict(self._feed) if self._feed else None
            if feed is None:
                self.set_inputs(inputs)
                feed = self._feed
            for _ in range(runs):
                session.run(self._out_names, feed)
            try:
                trace = json.loads(Path(session.end_profiling()).read_text())
            except (OSError, ValueError):  # a full $TMPDIR cuts ORT's trace short, silently: the profile is an extra
                return {}
        # Per node, the median over runs: the first run (allocation, prepacking) would otherwise dominate.
        durations: dict[tuple[str, str], list[float]] = defaultdict(list)
        for event in trace:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            key = (event["name"][: -len("_kernel_time")], event.get("args", {}).get("op_name", "?"))
            durations[key].append(float(event.get("dur", 0)))
        by_node = {key: float(np.median(v)) for key, v in durations.items()}
        by_type: dict[str, float] = defaultdict(float)
        nodes_of: dict[str, int] = defaultdict(int)
        for (_, op), us in by_node.items():
            by_type[op] += us
            nodes_of[op] += 1
        total = sum(by_type.values()) or 1.0
        ops = sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
        nodes = sorted(by_node.items(), key=lambda kv: -kv[1])[:top]
        return {
            "runs": runs,
            "statistic": "median per node over runs",
            "top_op_types": [{"op_type": op, "ms_per_run": us / 1000, "share": us / total, "nodes": nodes_of[op]}
                             for op, us in ops],
            "top_nodes": [{"node": n, "op_type": op, "ms_per_run": us / 1000, "share": us / total}
                          for (n, op), us in nodes],
        }

    def close(self) -> None:
        self._session = None
