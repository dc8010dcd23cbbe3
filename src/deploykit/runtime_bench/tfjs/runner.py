"""TF.js runner: a graph model (model.json + weight shards) run by TF.js 4.22 in Node.

A long-lived ``node runner.mjs`` process loads the model once and answers JSON-line
requests (load / set / run / bench / memory / close) on its stdin/stdout, so one
load serves verification and benchmarking, as with the other runners. Latency
samples are taken inside Node (``performance.now()`` around execute + reading the
outputs back), so the pipe to Python is never in a sample; ``benchmark()`` uses
them through :meth:`TFJSRunner.timed_samples`.

Backends: ``wasm`` (XNNPACK kernels; SIMD; single-threaded in Node, see
:meth:`TFJSRunner.describe`) and ``cpu`` (plain JavaScript kernels).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploykit.errors import RuntimeLoadError
from deploykit.runtime_bench.inputs import match_inputs

PACKAGE_DIR = Path(__file__).resolve().parent
SCRIPT = PACKAGE_DIR / "runner.mjs"
NODE_MODULES = PACKAGE_DIR / "node_modules"
# What runner.mjs and the browser page load; all come with `npm ci` from package-lock.json.
REQUIRED_PACKAGES = ("@tensorflow/tfjs-core", "@tensorflow/tfjs-converter", "@tensorflow/tfjs-backend-cpu",
                     "@tensorflow/tfjs-backend-wasm")
NPM_CI = f"npm ci --prefix {PACKAGE_DIR} --no-audit --no-fund"
BACKENDS = ("wasm", "cpu")

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # URLs, drive letters: same rule as runner.mjs
_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
# Replies to requests other than bench/load should come fast; a hung Node is an error.
_TIMEOUT_S = 120.0


def node_executable() -> str:
    """Path of ``node`` (``DEPLOYKIT_NODE`` overrides); RuntimeLoadError saying how to get it."""
    node = os.environ.get("DEPLOYKIT_NODE") or shutil.which("node")
    if not node:
        raise RuntimeLoadError("TF.js runtime needs Node.js (>= 18), not found on PATH: install nodejs, then run `make install`")
    return node


def check_installed() -> None:
    """Raise RuntimeLoadError naming the fix when the pinned TF.js packages are missing."""
    missing = [p for p in REQUIRED_PACKAGES if not (NODE_MODULES / p / "package.json").is_file()]
    if missing:
        raise RuntimeLoadError(
            f"TF.js runtime not installed ({', '.join(missing)} missing in {NODE_MODULES}): "
            f"run `make install` or `{NPM_CI}`"
        )


def resolve_model_json(path: str | Path) -> Path:
    """A model.json path, given the file or the directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    return path


def check_shard_paths(model_json: Mapping[str, Any], model_dir: str | Path) -> list[Path]:
    """Weight files a model.json lists, resolved inside its directory; refuse any that leave it.

    The same rule runner.mjs enforces, checked here first so the error needs no Node.

    Raises:
        RuntimeLoadError: a path is absolute, a URL, escapes the directory (also through a
            symlink) or the manifest is malformed.
    """
    base = Path(model_dir).resolve()
    manifest = model_json.get("weightsManifest", [])
    if not isinstance(manifest, list):
        raise RuntimeLoadError("model.json: weightsManifest must be a list of {paths, weights} groups")
    out = []
    for group in manifest:
        paths = group.get("paths", []) if isinstance(group, dict) else None
        if not isinstance(paths, list):
            raise RuntimeLoadError("model.json: each weightsManifest entry needs a list of paths")
        for p in paths:
            if not isinstance(p, str) or not p or os.path.isabs(p) or _SCHEME.match(p) or p.startswith("\\"):
                raise RuntimeLoadError(f"model.json: weight shard path {p!r} is not a relative file name; refused")
            resolved = (base / p).resolve()
            if not resolved.is_relative_to(base):
                raise RuntimeLoadError(f"model.json: weight shard path {p!r} leaves the model's directory; refused")
            out.append(resolved)
    return out


def encode_array(x: np.ndarray) -> dict[str, Any]:
    """Array -> the protocol's ``{shape, dtype, data}`` (base64 of little-endian bytes)."""
    x = np.asarray(x)
    if x.dtype == np.bool_:
        dtype, raw = "bool", x.astype(np.uint8)
    elif x.dtype.kind in "iu":
        dtype, raw = "int32", x.astype("<i4")
    else:
        dtype, raw = "float32", x.astype("<f4")
    return {"shape": [int(d) for d in x.shape], "dtype": dtype,
            "data": base64.b64encode(np.ascontiguousarray(raw).tobytes()).decode("ascii")}


def decode_array(obj: Mapping[str, Any]) -> np.ndarray:
    """The protocol's ``{shape, dtype, data}`` -> array (float32, int32 or bool)."""
    dtype = obj.get("dtype", "float32")
    raw = base64.b64decode(obj["data"])
    wire = {"float32": "<f4", "int32": "<i4", "bool": "u1"}.get(dtype)
    if wire is None:
        raise RuntimeLoadError(f"TF.js returned an output of dtype {dtype!r}")
    arr = np.frombuffer(raw, dtype=wire).reshape([int(d) for d in obj["shape"]])
    return arr.astype(_DTYPES[dtype])


def _read_lines(pipe: Any, lines: "queue.Queue[bytes | None]") -> None:
    # Each reader closes its pipe at Node's exit: left to garbage collection, an open pipe raised a
    # ResourceWarning in the caller's process (an error under warnings.simplefilter("error")).
    with pipe:
        for line in iter(pipe.readline, b""):
            lines.put(line)
    lines.put(None)


def _read_stderr(pipe: Any, tail: "collections.deque[str]") -> None:
    with pipe:
        for line in iter(pipe.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            if text and not text.startswith("=====") and "looks like you are running TensorFlow.js in Node" not in text:
                tail.append(text)


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()  # runner.mjs exits when stdin closes (closed even after an exit: no ResourceWarning)
    except Exception:
        pass
    if proc.poll() is None:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class NodeProcess:
    """The ``node runner.mjs`` child: one JSON request per line, one reply per line."""

    def __init__(self, script: Path = SCRIPT, startup_timeout_s: float = 60.0):
        check_installed()
        node = node_executable()
        t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                [node, str(script)], cwd=str(script.parent), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0,
            )
        except OSError as exc:
            raise RuntimeLoadError(f"could not start Node ({node}): {exc}") from None
        # Killed with us: finalize runs on garbage collection and at interpreter exit.
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._next_id = 0
        # The readers get the pipe and the buffers, not ``self``: a thread running a bound method
        # keeps the object alive, so the finalizer above never ran and an interrupted run left Node behind.
        threading.Thread(target=_read_lines, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=_read_stderr, args=(self.proc.stderr, self._stderr), daemon=True).start()
        self.ready = self._reply(startup_timeout_s, "start")
        self.start_ms = (time.perf_counter() - t0) * 1000

    def stderr_tail(self, n: int = 3) -> str:
        return " | ".join(list(self._stderr)[-n:])

    def death_reason(self) -> str:
        """Why Node died: the error its uncaught-exception handler reported, else the end of its stderr
        (a stack trace's last frames said nothing: "at Engine.runKernel ... | Node.js v20")."""
        said = [line for line in self._stderr if line.startswith(("node: uncaught:", "node: unhandled rejection:"))]
        return said[-1][len("node: "):] if said else self.stderr_tail()

    def _reply(self, timeout_s: float, what: str, request_id: int | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                tail = self.stderr_tail()
                self.close()
                raise RuntimeLoadError(f"TF.js runner gave no answer to {what} within {timeout_s:.0f} s; stopped it"
                                       + (f" ({tail})" if tail else "")) from None
            if line is None:
                code = self.proc.wait()
                _interrupted_if(code)
                tail = self.death_reason()
                raise RuntimeLoadError(f"TF.js runner (Node) exited with code {code} during {what}" + (f": {tail}" if tail else ""))
            try:
                reply = json.loads(line)
            except ValueError:
                self._stderr.append(line.decode("utf-8", "replace").rstrip())  # stray output: not ours
                continue
            if request_id is not None and reply.get("id") != request_id:
                # Not the answer to this request: an uncaught error reported by Node between requests.
                self._stderr.append(f"node: {reply.get('error', reply)}")
                continue
            if "error" in reply:
                raise RuntimeLoadError(f"TF.js {what}: {reply['error']}")
            return reply

    def request(self, cmd: str, timeout_s: float = _TIMEOUT_S, **fields: Any) -> dict[str, Any]:
        """Send one request, wait for its reply; RuntimeLoadError on error, timeout or exit."""
        if self.proc.poll() is not None:
            _interrupted_if(self.proc.returncode)
            why = self.death_reason()
            raise RuntimeLoadError(f"TF.js runner (Node) is not running (exit code {self.proc.returncode})"
                                   + (f": {why}" if why else ""))
        self._next_id += 1
        try:
            self.proc.stdin.write((json.dumps({"cmd": cmd, "id": self._next_id, **fields}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reply reader reports the exit with Node's stderr
        return self._reply(timeout_s, cmd, self._next_id)

    def close(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class TFJSRunner:
    """Load a TF.js graph model (model.json) in Node and run it.

    Args:
        path: The model.json, or the directory holding it.
        threads: Threads asked of the wasm backend (Node runs it single-threaded;
            ``describe()["threads"]`` says what was used).
        backend: ``"wasm"`` (default) or ``"cpu"``.

    Example:
        >>> r = TFJSRunner("build/tfjs-fp32/model.json"); r.load()
        >>> outputs = r.run({"pixels": x})
        >>> samples_ms = r.timed_samples(warmup=10, iterations=100)
    """

    runtime = "tfjs"
    # Untimed running a fresh Node process needs before its latency means anything (see
    # runtime_bench.benchmark): V8 and the wasm backend tier up over the first few hundred runs. The
    # digits CNN ran 1.1-1.4 ms a run at first, ~0.4 ms after 0.5 s, ~0.3 ms after 1 s; the 10
    # warm-up runs of a target timed the first phase and reported 0.6 ms.
    settle_s = 0.5

    def __init__(self, path: str | Path, threads: int = 1, backend: str = "wasm"):
        if backend not in BACKENDS:
            raise RuntimeLoadError(f"unknown TF.js backend {backend!r} for Node; choose from {', '.join(BACKENDS)}")
        self.path = resolve_model_json(path)
        self.threads_requested = int(threads)
        self.backend = backend
        self._node: NodeProcess | None = None
        self._info: dict[str, Any] = {}
        self._outputs: dict[str, np.ndarray] = {}
        self._inputs_set = False
        self._leaked_tensors = 0
        # memory_probe sets this: Node's peak then counts from the model's load, not from its start-up.
        self.reset_peak_at_load = False

    # ------------------------------------------------------------------ loading
    def load(self) -> float:
        """Start Node, load the model, run it once; returns seconds (backend init + load + first run).

        Node's own start (about 0.2 s, mostly importing TF.js) is not included; it is
        in ``describe()["process_start_ms"]``.
        """
        self._settled = False  # a new Node process compiles from scratch (see runtime_bench._settle)
        if not self.path.is_file():
            raise RuntimeLoadError(f"{self.path} not found; pass a TF.js model.json or its directory")
        try:
            model_json = json.loads(self.path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RuntimeLoadError(f"{self.path.name} is not valid JSON ({' '.join(str(exc).split())[:120]})") from None
        if not isinstance(model_json, dict) or "modelTopology" not in model_json:
            raise RuntimeLoadError(f"{self.path.name} has no modelTopology; not a TF.js model.json")
        for shard in check_shard_paths(model_json, self.path.parent):
            if not shard.is_file():
                raise RuntimeLoadError(f"{self.path.name}: weight shard {shard.name} is missing (expected at {shard})")
        self.close()
        self._node = NodeProcess()
        self._info = self._node.request("load", timeout_s=600, model_json_path=str(self.path.resolve()),
                                        backend=self.backend, threads=self.threads_requested,
                                        reset_peak=self.reset_peak_at_load)
        self._inputs_set = False
        return float(self._info["init_ms"]) / 1000

    def _require(self) -> NodeProcess:
        if self._node is None or not self._info:
            raise RuntimeLoadError(f"{self.path.name}: call load() first")
        return self._node

    @property
    def threads(self) -> int:
        """Threads the runtime really uses (after load), else the number asked for."""
        return int(self._info.get("threads", self.threads_requested))

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self._info.get("inputs", [])]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self._info.get("outputs", [])]

    def input_details(self) -> dict[str, dict[str, Any]]:
        """Name -> shape (-1 for unknown dims), dtype, no quantization (TF.js takes floats)."""
        out = {}
        for i in self._info.get("inputs", []):
            shape = [int(d) if d is not None and int(d) >= 0 else -1 for d in (i.get("shape") or [])]
            out[i["name"]] = {"shape": shape, "shape_signature": shape, "dtype": _DTYPES.get(i["dtype"], np.float32),
                              "quantization": (0.0, 0)}
        return out

    # ------------------------------------------------------------------ running
    def _encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        inputs = match_inputs(self.input_names, inputs, self.path.name)
        details = self.input_details()
        return {n: encode_array(np.asarray(x, dtype=details[n]["dtype"])) for n, x in inputs.items()}

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Send inputs to Node, where they stay for invoke() and timed_samples()."""
        self._require().request("set", inputs=self._encode(inputs))
        self._inputs_set = True

    def invoke(self) -> None:
        """Run once on the inputs set last (includes the pipe round trip; time with timed_samples)."""
        reply = self._require().request("run")
        self._outputs = {n: decode_array(v) for n, v in reply["outputs"].items()}

    def get_outputs(self) -> dict[str, np.ndarray]:
        return dict(self._outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set inputs, run, return outputs by name: one round trip."""
        reply = self._require().request("run", inputs=self._encode(inputs))
        self._inputs_set = True
        self._outputs = {n: decode_array(v) for n, v in reply["outputs"].items()}
        return self.get_outputs()

    def timed_samples(self, warmup: int, iterations: int) -> list[float]:
        """Latency samples (ms) measured inside Node on the inputs set last."""
        if not self._inputs_set:
            raise RuntimeLoadError(f"{self.path.name}: set_inputs() before timed_samples()")
        timeout = _TIMEOUT_S + 60.0 * (warmup + iterations)  # generous: a big model on cpu takes seconds per run
        reply = self._require().request("bench", timeout_s=timeout, warmup=int(warmup), iterations=int(iterations))
        self._leaked_tensors = int(reply.get("leaked_tensors", 0))  # should stay 0: a runner bug otherwise
        return [float(s) for s in reply["samples_ms"]]

    def memory(self) -> dict[str, Any]:
        """The Node process's memory (process.memoryUsage()) and TF.js tensor counts."""
        reply = self._require().request("memory")
        return {k: v for k, v in reply.items() if k != "ok"}

    def describe(self) -> dict[str, Any]:
        """Runtime settings recorded with benchmark results."""
        info = self._info
        out: dict[str, Any] = {
            "runtime": self.runtime,
            "runtime_version": info.get("tfjs_version"),
            "backend": info.get("backend", self.backend),
            "threads": self.threads,
            "threads_requested": self.threads_requested,
            "node_version": info.get("node_version"),
            "execution": info.get("execution"),
        }
        if info.get("backend") == "wasm":
            out.update({"wasm_simd": info.get("wasm_simd"), "wasm_multithread": info.get("wasm_multithread"),
                        "wasm_binary": info.get("wasm_binary")})
        for key in ("backend_init_ms", "load_ms", "warm_ms"):
            if key in info:
                out[f"tfjs_{key}"] = round(float(info[key]), 3)
        if self._leaked_tensors:
            out["tfjs_leaked_tensors"] = self._leaked_tensors
        if self._node is not None:
            out["process_start_ms"] = round(self._node.start_ms, 1)
            if self._node.alive:
                try:
                    mem = self.memory()
                    out["node_rss_bytes"] = mem.get("rss")
                    out["node_peak_rss_bytes"] = mem.get("peak_rss")
                    if mem.get("wasm_memory_bytes") is not None:
                        out["wasm_memory_bytes"] = mem["wasm_memory_bytes"]
                except RuntimeLoadError:
                    pass
        return out

    def close(self) -> None:
        """Stop the Node process (also done at interpreter exit)."""
        if self._node is not None:
            try:
                if self._node.alive:
                    self._node.request("close", timeout_s=5)
            except RuntimeLoadError:
                pass
            self._node.close()
            self._node = None

    def __enter__(self) -> "TFJSRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interrupted_if(code: int | None) -> None:
    """Node killed by SIGINT was Ctrl-C (or ``kill -INT`` to the job) meant for the whole run; a Python
    that ignores SIGINT (a background job of a script) read it as "Node exited with code -2", exit 2."""
    if code == -signal.SIGINT:
        raise KeyboardInterrupt
