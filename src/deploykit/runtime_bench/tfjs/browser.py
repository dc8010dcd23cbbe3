"""Time a TF.js graph model in headless Chromium (``deploy bench --browser``).

A throw-away HTTP server on 127.0.0.1 (random free port, one thread) serves a fixed
set of files and nothing else: the bench page, tf.min.js and the wasm backend from
the pinned node_modules, the model.json and the weight shards it lists. The page
loads the model with ``tf.loadGraphModel(url)``, times warm-up + timed runs with
``performance.now()`` (execute + reading the outputs back) and POSTs the results
back. Chromium runs with a fresh profile and no network features, and is killed
afterwards.

The server sends COOP/COEP headers, so the page is cross-origin isolated and the
wasm backend may use its threaded build (SharedArrayBuffer); what it really used
is in the result (``threads``, ``wasm_multithread``).
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploykit.errors import RuntimeLoadError
from deploykit.runtime_bench.inputs import match_inputs
from deploykit.runtime_bench.stats import Stats
from deploykit.runtime_bench.tfjs.runner import (
    NODE_MODULES,
    NPM_CI,
    PACKAGE_DIR,
    check_shard_paths,
    decode_array,
    encode_array,
    resolve_model_json,
)
from deploykit.tmpdirs import TempDir

CHROMIUM = "/usr/bin/chromium"
BROWSER_BACKENDS = ("wasm", "webgl", "cpu")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--no-default-browser-check",
)
_MAX_POST_BYTES = 64 * 1024 * 1024


def chromium_executable() -> str:
    """Chromium's path (``DEPLOYKIT_CHROMIUM`` overrides); RuntimeLoadError saying how to install it."""
    path = os.environ.get("DEPLOYKIT_CHROMIUM") or CHROMIUM
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise RuntimeLoadError(f"browser benchmark needs Chromium at {path}: run `apt-get install chromium` (as root)")
    return path


def _dist_files() -> dict[str, Path]:
    """URL path -> file for the TF.js scripts and wasm binaries the page loads."""
    tfjs = NODE_MODULES / "@tensorflow" / "tfjs" / "dist"
    wasm = NODE_MODULES / "@tensorflow" / "tfjs-backend-wasm" / "dist"
    files = {"/tfjs/tf.min.js": tfjs / "tf.min.js", "/tfjs/tf-backend-wasm.min.js": wasm / "tf-backend-wasm.min.js"}
    for name in ("tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm"):
        files[f"/tfjs/{name}"] = wasm / name
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeLoadError(f"TF.js browser files missing ({missing[0]}): run `make install` or `{NPM_CI}`")
    return files


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, Path], config: bytes):
        self.files = files
        self.config = config
        self.result: dict[str, Any] | None = None
        self.got_result = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _headers(self, code: int, ctype: str, length: int) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        # Cross-origin isolation: lets the wasm backend use SharedArrayBuffer threads.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        if path == "/config.json":
            body, ctype = self.server.config, "application/json"
        elif path in self.server.files:
            file = self.server.files[path]
            body = file.read_bytes()
            ctype = {".wasm": "application/wasm", ".js": "text/javascript", ".json": "application/json",
                     ".html": "text/html; charset=utf-8"}.get(file.suffix) or mimetypes.guess_type(file.name)[0] \
                or "application/octet-stream"
        else:
            body, ctype = b"not found", "text/plain"
            self._headers(404, ctype, len(body))
            self.wfile.write(body)
            return
        self._headers(200, ctype, len(body))
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/result" or not 0 < length <= _MAX_POST_BYTES:
            self._headers(400, "text/plain", 0)
            return
        try:
            data = json.loads(self.rfile.read(length))
        except ValueError:
            data = {"fatal": "the page posted invalid JSON"}
        if not self.server.got_result.is_set():  # recorded before answering: the page may be killed next
            self.server.result = data
            self.server.got_result.set()
        self._headers(204, "text/plain", 0)


def _kill_group(proc: subprocess.Popen) -> None:
    """Chromium starts a tree of processes (zygote, renderer, GPU, utility): end the whole group."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    else:  # the launcher script is gone; its children may not be
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_page(model_json: str | Path, *, warmup: int, iterations: int, backends: tuple[str, ...] = ("wasm",),
             inputs: Mapping[str, np.ndarray] | None = None, threads: int = 0, return_outputs: bool = False,
             timeout_s: float | None = None, settle: bool = True) -> dict[str, Any]:
    """Serve the model and the page, run headless Chromium once, return the page's raw report.

    With ``settle``, each backend runs untimed until its latency is stable before its warm-up
    (the rule of ``runtime_bench._settle``); a visit for outputs only skips that.

    Raises:
        RuntimeLoadError: Chromium or TF.js missing, the page failed, or no result in time.
    """
    model_json = resolve_model_json(model_json)
    if not model_json.is_file():
        raise RuntimeLoadError(f"{model_json} not found; pass a TF.js model.json or its directory")
    try:
        spec = json.loads(model_json.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RuntimeLoadError(f"{model_json.name} is not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(spec, dict) or "modelTopology" not in spec:
        raise RuntimeLoadError(f"{model_json.name} has no modelTopology; not a TF.js model.json")
    unknown = [b for b in backends if b not in BROWSER_BACKENDS]
    if unknown or not backends:
        said = ", ".join(map(repr, unknown)) if unknown else "(none)"
        raise RuntimeLoadError(f"unknown browser backend {said}; choose from {', '.join(BROWSER_BACKENDS)}")
    chromium = chromium_executable()
    base = model_json.parent.resolve()
    files = dict(_dist_files())
    files["/bench.html"] = PACKAGE_DIR / "bench.html"
    files["/model/model.json"] = model_json
    for shard in check_shard_paths(spec, base):
        if not shard.is_file():
            raise RuntimeLoadError(f"{model_json.name}: weight shard {shard.name} is missing (expected at {shard})")
        files["/model/" + shard.relative_to(base).as_posix()] = shard
    if inputs:
        sig_inputs = (spec.get("signature") or {}).get("inputs") or {}
        if sig_inputs:  # by the signature's names, or by position (as every runner matches)
            inputs = match_inputs(list(sig_inputs), inputs, model_json.name)
    from deploykit.runtime_bench import SETTLE_CAP, SETTLE_STEP
    from deploykit.runtime_bench.tfjs.runner import TFJSRunner

    config = {
        "model_url": "/model/model.json", "warmup": int(warmup), "iterations": int(iterations),
        "settle_ms": TFJSRunner.settle_s * 1000 if settle else 0, "settle_cap": SETTLE_CAP, "settle_step": SETTLE_STEP,
        "backends": list(backends), "threads": int(threads), "return_outputs": bool(return_outputs),
        "inputs": {k: encode_array(np.asarray(v)) for k, v in inputs.items()} if inputs else None,
    }
    if timeout_s is None:
        timeout_s = 120.0 + (5.0 * (warmup + iterations) + config["settle_ms"] * SETTLE_CAP / 1000) * len(backends)
    server = _Server(files, json.dumps(config).encode())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    profile_dir = TempDir("chromium")
    profile = profile_dir.name
    url = f"http://127.0.0.1:{server.server_address[1]}/bench.html"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not server.got_result.wait(0.2):
            if proc.poll() is not None and not server.got_result.is_set():
                log.seek(0)
                tail = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()][-2:]
                raise RuntimeLoadError(f"Chromium exited (code {proc.returncode}) before the page reported: "
                                       + " | ".join(tail)[:300])
            if time.monotonic() > deadline:
                raise RuntimeLoadError(f"the browser bench page sent no result within {timeout_s:.0f} s")
        report = server.result or {}
    finally:
        _kill_group(proc)
        server.shutdown()
        server.server_close()
        log.close()
        profile_dir.cleanup()
    if "fatal" in report:
        raise RuntimeLoadError(f"TF.js in Chromium: {report['fatal']}")
    report["browser_version"] = _chromium_version(report.get("user_agent", ""))
    return report


def _chromium_version(user_agent: str) -> str | None:
    for part in user_agent.split():
        if part.startswith(("HeadlessChrome/", "Chrome/")):
            return part.split("/", 1)[1]
    return None


def bench_in_browser(model_json: str | Path, warmup: int = 10, iterations: int = 100, backend: str = "wasm",
                     inputs: Mapping[str, np.ndarray] | None = None, threads: int = 0,
                     also: tuple[str, ...] = ("webgl",), timeout_s: float | None = None) -> dict[str, Any]:
    """Benchmark a TF.js graph model in headless Chromium.

    Args:
        model_json: The model.json (or its directory); weight shards beside it.
        warmup: Untimed runs after the first (init) run.
        iterations: Timed runs.
        backend: The backend whose samples make the result: ``wasm`` (default), ``webgl``, ``cpu``.
        inputs: Input name -> array (first sample is enough); deterministic values in [-1, 1) otherwise.
        threads: wasm threads to ask for (0: TF.js default, the number of cores); used only when
            the page is cross-origin isolated, which this server arranges.
        also: Further backends tried in the same page visit; each one's summary, or why it did
            not initialise, lands in ``result["also"]`` (webgl needs a GPU or SwiftShader).
        timeout_s: Give up after this long (default grows with the run count).

    Returns:
        The Stats summary keys (``p50_ms`` … ``n``, ``samples_ms``, ``warmup``, ``threads``,
        ``init_ms``) plus ``runtime``, ``runtime_version``, ``backend``, ``environment``,
        ``user_agent``, ``browser_version``, ``cross_origin_isolated``, wasm/webgl details and
        ``also``.

    Raises:
        RuntimeLoadError: Chromium or TF.js missing, the backend did not initialise, the page failed.

    Example:
        >>> bench_in_browser("build/tfjs-fp32/model.json", iterations=50)["p50_ms"]
    """
    backends = (backend, *[b for b in also if b != backend])
    report = run_page(model_json, warmup=warmup, iterations=iterations, backends=backends, inputs=inputs,
                      threads=threads, timeout_s=timeout_s)
    by_backend = {r.get("backend"): r for r in report.get("results", [])}
    main = by_backend.get(backend) or {"error": "no result"}
    if main.get("error"):
        raise RuntimeLoadError(f"TF.js {backend} backend in Chromium: {main['error']}")
    result = _summary(main, warmup)
    result.update({
        "runtime": "tfjs", "runtime_version": report.get("tfjs_version"), "environment": "chromium-headless",
        "user_agent": report.get("user_agent"), "browser_version": report.get("browser_version"),
        "cross_origin_isolated": report.get("cross_origin_isolated"),
        "hardware_concurrency": report.get("hardware_concurrency"),
        "also": {b: (_summary(r, warmup) if not r.get("error") else {"error": r["error"]})
                 for b, r in by_backend.items() if b != backend},
    })
    return result


def _summary(r: Mapping[str, Any], warmup: int) -> dict[str, Any]:
    stats = Stats([float(s) for s in r["samples_ms"]], warmup=warmup, threads=int(r.get("threads") or 1),
                  init_ms=float(r["init_ms"]))
    out = stats.to_dict()
    out["backend"] = r["backend"]
    if r.get("settled_ms"):  # untimed running before the warm-up, as the Node runner records it
        out["settled_s"] = round(float(r["settled_ms"]) / 1000, 3)
    for key in ("backend_init_ms", "load_ms", "warm_ms"):
        if key in r:
            out[f"tfjs_{key}"] = round(float(r[key]), 3)
    for key in ("execution", "wasm_simd", "wasm_multithread", "webgl_version", "webgl_renderer"):
        if key in r:
            out[key] = r[key]
    return out


class TFJSBrowserRunner:
    """A model's outputs and timings from TF.js in headless Chromium (one page visit per call).

    Not a pipeline runner (each call starts a browser); for checks and ``deploy bench --browser``.

    Example:
        >>> outs = TFJSBrowserRunner("build/tfjs-fp32/model.json").run({"pixels": x[:1]})
    """

    runtime = "tfjs"

    def __init__(self, path: str | Path, threads: int = 0, backend: str = "wasm"):
        self.path = resolve_model_json(path)
        self.threads = threads
        self.backend = backend

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for ``inputs`` (all samples in one batch)."""
        report = run_page(self.path, warmup=0, iterations=1, backends=(self.backend,), inputs=inputs, settle=False,
                          threads=self.threads, return_outputs=True)
        (res,) = report["results"]
        if res.get("error"):
            raise RuntimeLoadError(f"TF.js {self.backend} backend in Chromium: {res['error']}")
        return {k: decode_array(v) for k, v in res["output_values"].items()}

    def bench(self, inputs: Mapping[str, np.ndarray] | None = None, warmup: int = 10,
              iterations: int = 100) -> dict[str, Any]:
        return bench_in_browser(self.path, warmup, iterations, backend=self.backend, inputs=inputs,
                                threads=self.threads, also=())
