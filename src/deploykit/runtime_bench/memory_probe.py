"""Runtime memory of one artifact, measured in a process of its own.

What a user compares between targets is the memory a file adds to an app that
already has its runtime: weights as the runtime holds them (packed, dequantized
or mapped), its arena, its scratch buffers. Measured inside the converting
process, that figure depended on the order of the targets: the first file of a
runtime carried the runtime's start-up, later files reused memory freed before
them (malloc keeps it), and TensorFlow's own ~700 MB sat under all of them.

So each file gets a fresh child process that imports its runtime, notes its
resident memory, then loads the file and runs it on the benchmark's batch-1
inputs a few times; the figure is the peak from there on minus that start.
TF.js already runs in a Node process of its own, so its child asks Node for the
same two numbers (resident memory before the model was loaded, and the peak).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploykit.tmpdirs import TempDir

# The library each runner imports lazily: imported before the start figure is taken,
# so a runtime's own code and start-up are not counted against the model.
RUNTIME_LIBRARY = {"litert": "ai_edge_litert.interpreter", "onnxruntime": "onnxruntime"}
RUNTIME_NAME = {"litert": "LiteRT", "onnxruntime": "ONNX Runtime"}
RUNS = 3
TIMEOUT_S = 600.0


def _reset_peak() -> None:
    """Reset this process's kernel peak (VmHWM) to its current RSS (Linux ``clear_refs`` 5), so the
    peak measured next is the model's and not an import's. Only ever done in this throw-away child."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # not Linux: PeakRSS falls back to sampling


def _child(spec_path: str) -> dict[str, Any]:
    """Body of the child process: load, run, and report the memory figures."""
    from deploykit.runtime_bench import get_runner
    from deploykit.runtime_bench.memory import PeakRSS, release_memory

    spec = json.loads(Path(spec_path).read_text())
    runtime = spec["runtime"]
    if runtime in RUNTIME_LIBRARY:
        importlib.import_module(RUNTIME_LIBRARY[runtime])
    runner = get_runner(runtime, spec["path"], spec["threads"], spec.get("options"))
    with np.load(spec["inputs"], allow_pickle=False) as npz:
        inputs = {name: npz[key] for name, key in spec["keys"].items()}
    runner.reset_peak_at_load = True  # TF.js: Node resets its own peak
    if hasattr(runner, "preflight"):  # deploykit's own checks of the file (ONNX: imports onnx): not the model's memory
        runner.preflight()
    release_memory()
    _reset_peak()
    with PeakRSS() as mem:
        runner.load()
        runner.set_inputs(inputs)
        for _ in range(RUNS):
            runner.invoke()
        runner.get_outputs()
    if hasattr(runner, "memory"):  # the runtime lives in another process (TF.js in Node): its figures
        node = runner.memory()
        runner.close()
        start, peak = node.get("rss_before_model"), node.get("peak_rss")
        if start is None or peak is None:
            raise RuntimeError("the TF.js runner did not report its memory")
        return {"start_rss_bytes": int(start), "peak_rss_bytes": int(peak), "process": "TF.js (Node.js)"}
    runner.close()
    return {"start_rss_bytes": mem.start_bytes, "peak_rss_bytes": mem.peak_bytes, "process": f"{RUNTIME_NAME.get(runtime, runtime)} (Python)"}


def measure(runtime: str, path: str | Path, threads: int, inputs: Mapping[str, np.ndarray],
            options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The memory ``path`` adds to a process that has its runtime loaded, measured in a new process.

    Args:
        runtime: Runner name (``litert``, ``onnxruntime``, ``tfjs``).
        path: The artifact.
        threads: Runtime threads, as benchmarked.
        inputs: One batch of inputs by input name (the benchmark's: one sample, or a fixed-batch file's batch).
        options: The target's options (runners take the ones they name, e.g. TF.js ``backend``).

    Returns:
        ``runtime_memory_bytes`` (peak minus the resident memory before loading the file),
        ``runtime_process_peak_bytes`` (the whole child's peak: what a process running only this
        file needs) and ``runtime_memory_of``; on failure ``runtime_memory_bytes`` is None and
        ``runtime_memory_of`` says why.
    """
    with TempDir("mem") as tmp:
        keys = {name: f"i{n}" for n, name in enumerate(inputs)}  # input names need not be valid npz keys
        np.savez(Path(tmp) / "inputs.npz", **{keys[name]: np.asarray(x) for name, x in inputs.items()})
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"runtime": runtime, "path": str(Path(path).resolve()), "threads": int(threads),
                                    "options": dict(options or {}), "inputs": str(Path(tmp) / "inputs.npz"),
                                    "keys": keys}, default=str))
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # importable however the parent found deploykit
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            proc = subprocess.run([sys.executable, "-m", "deploykit.runtime_bench.memory_probe", str(spec)],
                                  capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"runtime_memory_bytes": None, "runtime_memory_of": f"not measured: the probe took over {TIMEOUT_S:.0f} s"}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:200]
            return {"runtime_memory_bytes": None, "runtime_memory_of": f"not measured: the probe process failed ({why})"}
        got = json.loads(lines[-1])
    batch = len(next(iter(inputs.values()))) if inputs and np.ndim(next(iter(inputs.values()))) else 1
    return {
        "runtime_memory_bytes": max(got["peak_rss_bytes"] - got["start_rss_bytes"], 0),
        "runtime_process_peak_bytes": got["peak_rss_bytes"],
        "runtime_memory_of": f"what loading this file and {RUNS} runs at batch {batch} add to a new process that has "
                             f"{got['process']} loaded (peak RSS minus RSS before loading)",
    }


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
