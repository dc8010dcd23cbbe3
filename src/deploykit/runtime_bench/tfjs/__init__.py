"""TF.js runtime: graph models (model.json + weight shards) run by TF.js 4.22.

* :class:`TFJSRunner` — Node (wasm or cpu backend), a long-lived ``node runner.mjs``
  process; the runner ``deploy bench`` and the pipeline use for ``.json`` artifacts.
* :func:`bench_in_browser` — the same model timed in headless Chromium (wasm, and
  webgl where it initialises).

The JavaScript side is pinned by ``package.json``/``package-lock.json`` in this
directory and installed by ``make install`` (``npm ci``). ``FORMAT.md`` describes the
model.json format as TF.js 4.22 reads it; ``supported_ops.txt`` / ``async_ops.txt``
list the TensorFlow ops it executes (``ops.mjs`` regenerates them).
"""

from deploykit.runtime_bench.tfjs.runner import TFJSRunner, check_installed, check_shard_paths

__all__ = ["TFJSRunner", "bench_in_browser", "check_installed", "check_shard_paths"]


def __getattr__(name: str):
    if name in ("bench_in_browser", "TFJSBrowserRunner"):
        from deploykit.runtime_bench.tfjs import browser

        return getattr(browser, name)
    raise AttributeError(name)
