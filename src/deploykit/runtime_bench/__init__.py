"""Runners (one per runtime) and the benchmark loop they share.

A runner loads an artifact and runs it: ``load() -> seconds``,
``set_inputs``/``invoke``/``get_outputs`` and ``run``. Verification and
benchmarking use the same runner. Runners are registered by runtime name and
imported only when used.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deploykit._quiet import logs_muted
from deploykit.errors import DeployError, RuntimeLoadError, UserError
from deploykit.runtime_bench.stats import Stats

RUNNERS: dict[str, str] = {
    "litert": "deploykit.runtime_bench.litert:LiteRTRunner",
    "onnxruntime": "deploykit.runtime_bench.onnxruntime:ORTRunner",
    "tflm": "deploykit.runtime_bench.tflm:TFLMRunner",
    "tfjs": "deploykit.runtime_bench.tfjs:TFJSRunner",
}

SUFFIX_RUNTIME = {".tflite": "litert", ".onnx": "onnxruntime", ".json": "tfjs"}



# What a runtime says of a file cut short or altered (LiteRT's and TFLite Micro's flatbuffer check, a TF.js
# shard shorter than its manifest, ONNX Runtime's protobuf parse): only those get "convert the model again".
# An intact file with a custom op, a missing runtime or a refused shard path is no copy gone wrong.
_DAMAGED = r"not a valid Flatbuffer|not a valid \.tflite|weight shards hold|Protobuf parsing failed|INVALID_PROTOBUF"

def get_runner(runtime: str, path: str | Path, threads: int, options: Mapping[str, Any] | None = None) -> Any:
    """Instantiate the runner registered for ``runtime``.

    ``options`` are a target's options; those the runner's constructor names
    (e.g. TF.js ``backend``) are passed on, the converter's own are ignored.
    """
    return _runner_class(runtime)(path, threads=threads, **runner_options(runtime, options))


def _runner_class(runtime: str) -> Any:
    if runtime not in RUNNERS:
        raise UserError(f"unknown runtime {runtime!r}; known: {', '.join(RUNNERS)}")
    module, cls_name = RUNNERS[runtime].split(":")
    return getattr(importlib.import_module(module), cls_name)


def runner_options(runtime: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The target options that change how ``runtime`` runs a file (e.g. TF.js ``backend``): those
    its runner's constructor names. The converter's own options are not among them."""
    params = inspect.signature(_runner_class(runtime)).parameters
    return {k: v for k, v in (options or {}).items() if k in params and k not in ("path", "threads")}


def changed_runner_options(runtime: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`runner_options` that differ from the runner's defaults (TF.js ``backend = "cpu"``, not ``"wasm"``)."""
    params = inspect.signature(_runner_class(runtime)).parameters
    return {k: v for k, v in runner_options(runtime, options).items() if v != params[k].default}


def benchmark(runner: Any, inputs: Mapping[str, np.ndarray], *, warmup: int, iterations: int) -> Stats:
    """Time ``iterations`` invocations after ``warmup`` untimed ones; inputs set once.

    Only ``invoke`` is inside the timed region, as in LiteRT's benchmark_model.
    Runners whose runtime lives in another process (TF.js in Node) time themselves
    with ``timed_samples``, so the pipe is not in the samples.
    """
    runner.set_inputs(inputs)
    settled_s = _settle(runner)
    if hasattr(runner, "timed_samples"):
        samples = runner.timed_samples(warmup, iterations)
    else:
        for _ in range(warmup):
            runner.invoke()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(iterations):
            t0 = clock()
            runner.invoke()
            samples.append((clock() - t0) / 1e6)
    stats = Stats(samples, warmup=warmup, threads=getattr(runner, "threads", 1))
    if settled_s:  # the untimed running before the warm-up, recorded with the samples it preceded
        stats.extra["settled_s"] = round(settled_s, 3)
    return stats


SETTLE_CAP = 4  # settling stops after this many times a runner's settle_s, stable or not
SETTLE_STEP = 0.1  # consecutive batch medians within this of each other: settled


def _settle(runner: Any, *, min_runs: int = 0, cap_s: float | None = None) -> float:
    """Run a freshly loaded runner untimed until its latency is stable, once; returns the seconds spent.

    Runtimes that compile as they go (TF.js: V8 and wasm tier-up) declare ``settle_s``: they are
    2-4x slower over their first few hundred runs than any warm-up count of a target covers. They run
    for at least ``settle_s``, then until two consecutive batch medians agree within ``SETTLE_STEP``
    (on a loaded machine 0.5 s left p50s still falling 2x across the rounds), at most ``SETTLE_CAP``
    times ``settle_s``. A runner's ``load()`` clears ``_settled`` when it starts a new process.

    ``min_runs`` (with ``cap_s``, the time limit then) asks for that many runs before stability counts:
    a slow phase is stable too (run_mnv3's tflite-dynamic ran 10-13 ms for its first 60-80 runs after
    each load, then 0.7 ms, and settled inside it after 0.05 s: the -auto rounds then dropped it as 15x slower).
    """
    need = float(getattr(runner, "settle_s", 0.0))
    if not need or getattr(runner, "_settled", False):
        return 0.0
    cap = max(need * SETTLE_CAP, cap_s or 0.0)
    start, batch, last, runs = time.perf_counter(), 1, None, 0  # last: the previous batch of the same size's median
    while (elapsed := time.perf_counter() - start) < cap:
        if hasattr(runner, "timed_samples"):  # in batches: few pipe round trips
            samples = runner.timed_samples(0, batch)
        else:
            samples = []
            for _ in range(batch):
                t0 = time.perf_counter()
                runner.invoke()
                samples.append((time.perf_counter() - t0) * 1000)
        runs += batch
        median = float(np.median(samples))
        if (elapsed >= need and runs >= min_runs and last is not None
                and abs(median - last) <= SETTLE_STEP * max(last, 1e-9)):
            break
        # batches grow to 50 runs, or to a quarter of settle_s for a slow model
        grown = max(1, min(batch * 2, 50, int(need * 1000 / 4 / max(median, 1e-6))))
        last, batch = (median if grown == batch else None), grown
    runner._settled = True
    return time.perf_counter() - start


def _header(path: Path) -> bytes:
    """A file's first 8 bytes (a .tflite's identifier is bytes 4-8): not the whole file, which may be large."""
    with path.open("rb") as f:
        return f.read(8)


def _text_input(name: str) -> str:
    """The refusal of a text input, with data or without (data is numbers: load_data refuses text)."""
    return (f"input {name!r} takes text, which deploy bench cannot feed (random inputs and --data are numbers); time a "
            "file whose inputs are numbers, e.g. the model after its text preprocessing (token ids in)")


def synthetic_inputs(runner: Any, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs fitting the runner's input tensors, for `deploy bench` without data."""
    from deploykit.data import check_allocation

    details = runner.input_details()
    shapes = {name: [batch if i == 0 and s == -1 else (1 if s == -1 else int(s))
                     for i, s in enumerate(d.get("shape_signature", d["shape"]))] for name, d in details.items()}

    def dtype_of(d: dict) -> np.dtype:  # what is handed to the runner: float32, or the integer ids' own dtype
        dtype = np.dtype(d["dtype"])
        return np.dtype(np.float32) if dtype.kind == "f" or (d.get("quantization") or (0, 0))[0] else dtype

    # A fixed dimension of 2**31 asked numpy for 64 GiB (a MemoryError traceback): sized first, in Python ints.
    nbytes = sum(math.prod(shapes[name]) * dtype_of(d).itemsize for name, d in details.items())
    what = "the random benchmark input (" + ", ".join(f"{n!r} {tuple(s)}" for n, s in shapes.items()) + ")"
    way_out = ("this file's fixed input size is too large to run on this machine: convert the model again with a "
               "smaller input size (or a dynamic batch)")
    check_allocation(nbytes, what, way_out)
    rng = np.random.default_rng(seed)
    out = {}
    try:
        for name, d in details.items():
            shape, dtype = shapes[name], np.dtype(d["dtype"])
            # Drawn in float32 directly: float64 first and then cast needed three times the input's memory.
            if dtype.kind == "f":
                out[name] = rng.standard_normal(shape, dtype=np.float32)
            elif dtype.kind == "b":  # a mask or a flag: np.iinfo takes no bool ("Invalid integer data type 'b'")
                out[name] = rng.integers(0, 1, shape, endpoint=True, dtype=np.uint8).astype(bool)
            elif dtype.kind not in "iu":
                if dtype.kind in "USO":
                    raise UserError(_text_input(name))
                raise UserError(f"input {name!r} takes {dtype} values, which no random input stands for; "
                                "pass --data with samples for it")
            else:
                info = np.iinfo(dtype)
                scale, zero = d["quantization"]
                if scale:  # quantized input: give float values the runner will quantize
                    lo, hi = (info.min - zero) * scale, (info.max - zero) * scale
                    x = rng.random(shape, dtype=np.float32)
                    x *= np.float32(hi - lo)
                    x += np.float32(lo)
                    out[name] = x
                else:  # ids (an Embedding's, a lookup's): 0 and 1 are in every table; the whole int32 range ran out of them
                    out[name] = rng.integers(0, min(1, info.max), shape, endpoint=True, dtype=dtype)
    except MemoryError:  # under a memory limit psutil does not see
        raise UserError(f"{what} does not fit in this process's memory; {way_out}") from None
    return out


def runtime_memory(runtime: str, path: str | Path, threads: int, inputs: Mapping[str, np.ndarray],
                   options: Mapping[str, Any] | None, benchmark: Mapping[str, Any]) -> dict[str, Any]:
    """The memory a file adds to a process that has its runtime, the figure targets are compared by.

    Measured in a new process per file (:mod:`memory_probe`), so it depends neither on what the
    measuring process holds nor on the files measured before. TFLite Micro's is its tensor arena.
    """
    if runtime == "tflm":
        return {"runtime_memory_bytes": benchmark.get("arena_bytes"),
                "runtime_memory_of": "TFLite Micro tensor arena (RAM on the device; the model itself stays in flash)"}
    from deploykit.runtime_bench import memory_probe

    return memory_probe.measure(runtime, path, threads, inputs, options)


def _weight_files(path: Path, runtime: str) -> list[Path]:
    """Files beside the artifact that hold its weights (ONNX external data, TF.js shards)."""
    import json

    if runtime == "onnxruntime":
        from deploykit.runtime_bench.onnxruntime import check_external_data

        return [path.parent / loc for loc in check_external_data(path)]
    if runtime == "tfjs":
        from deploykit.runtime_bench.tfjs.runner import check_shard_paths

        try:
            return check_shard_paths(json.loads(path.read_text()), path.parent)
        except ValueError:
            return []  # the runner's load names what is wrong with the file
    return []


def _run_manifest(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The manifest of the deploykit run that wrote ``path`` (``OUT/<target>/model.*`` beside
    ``OUT/manifest.json``) and its artifact record; None when there is none, or when the file is not the
    one the run wrote (its sha256 differs: another file copied over it was said to be the run's)."""
    import json

    from deploykit.artifacts import sha256_file

    if path is None:
        return None
    file = Path(path).resolve()
    try:
        record = json.loads((file.parent.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    for a in (record.get("artifacts") or []) if isinstance(record, dict) else []:
        if isinstance(a, dict) and a.get("path") and (file.parent.parent / a["path"]).resolve() == file:
            return (record, a) if a.get("sha256") == sha256_file(file) else None
    return None


def _model_input_order(path: Path | None) -> list[str] | None:
    """The Keras model's input order, from the manifest of the run that wrote ``path``; None when there is none."""
    run = _run_manifest(path)
    try:
        names = [i["name"] for i in run[0]["model"]["inputs"]] if run else []
    except (KeyError, TypeError):
        return None
    return names or None


def _built_for_micro(path: Path) -> str | None:
    """The target name when the run that wrote ``path`` built it for TFLite Micro (its .tflite is timed on
    LiteRT unless --runtime tflm says otherwise: a 0.012 ms figure beside the run's 0.375 ms, unexplained)."""
    run = _run_manifest(path)
    return str(run[1].get("target")) if run and run[1].get("format") == "tflm" else None


def _given_arrays(data: Any, names: list[str]) -> dict[str, tuple[np.dtype, tuple[int, ...] | None]]:
    """The dtype and shape of each input's array as the data holds it (an .npz path, a dict or one
    array), by the keys load_data reads: the input's name, x0, x1..., or x for a one-input model."""
    wanted = {*names, "x", *(f"x{i}" for i in range(len(names)))}
    if isinstance(data, (str, Path)) and str(data).endswith(".npz") and Path(data).is_file():  # a pipe: load_data refuses
        try:  # the arrays' headers only: load_data reads the data itself
            arrays = _npz_headers(Path(data), wanted)
        except Exception:  # noqa: BLE001 - load_data gives the real error
            return {}
    elif isinstance(data, dict):
        arrays = data
    elif isinstance(data, np.ndarray) and len(names) == 1:
        arrays = {"x": data}
    else:
        return {}
    out = {}
    for i, name in enumerate(names):
        value = arrays.get(name, arrays.get(f"x{i}", arrays.get("x") if len(names) == 1 else None))
        if isinstance(value, np.ndarray):
            out[name] = (value.dtype, value.shape)
        elif isinstance(value, tuple):
            out[name] = value
    return out


def _npz_headers(path: Path, keys: set[str]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The dtype and shape of each of ``keys`` in an .npz, read from its .npy headers."""
    import zipfile

    out = {}
    with zipfile.ZipFile(path) as archive:
        for key in keys:
            if f"{key}.npy" not in archive.namelist():
                continue
            with archive.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = header(f)
                out[key] = (dtype, tuple(shape))
    return out


def _numbered_npz(data: Any) -> bool:
    if not isinstance(data, (str, Path)) or not str(data).endswith(".npz") or not Path(data).is_file():
        return False
    try:
        with np.load(data, allow_pickle=False) as npz:
            return "x0" in npz.files
    except Exception:  # noqa: BLE001 - load_data gives the real error
        return False


def _check_random_inputs_fit(runner: Any) -> None:
    """Refuse to time random inputs where the file's inputs have no fixed size: the size would be a guess
    (the browser page made every unknown dimension 1 and timed a 1x1 image, 70x faster than a real one)."""
    for name, d in runner.input_details().items():
        if d.get("rank_unknown"):
            raise UserError(f"input {name!r} records no shape, so no random input fits it; pass --data with a real sample")
        sig = list(d.get("shape_signature", d["shape"]))
        if any(int(s) == -1 for s in sig[1:]):
            raise UserError(f"input {name!r} has dimensions of any size {tuple(None if int(s) == -1 else int(s) for s in sig)}; "
                            "random inputs need a size: pass --data with a real sample")


def _bench_inputs(runner: Any, data: Any, path: Path | None = None) -> dict[str, np.ndarray]:
    if data is None:
        _check_random_inputs_fit(runner)
        return synthetic_inputs(runner)
    from deploykit.data import load_data
    from deploykit.models import TensorSpec

    specs = []
    for name, d in runner.input_details().items():
        if np.dtype(d.get("dtype", np.float32)).kind in "USO":  # said before the data was refused as "not numeric"
            raise UserError(_text_input(name))
        sig = list(d.get("shape_signature", d["shape"]))
        # Integer inputs (token ids) stay integers; quantized ones (int8 I/O, scale > 0) take real
        # values that the runner quantizes, like float inputs. A float32 label on ids made the
        # browser runner send floats to an int32 input.
        dtype = np.dtype(d.get("dtype", np.float32))
        quant = d.get("quantization") or (0.0, 0)
        scale = quant[0] if isinstance(quant, (tuple, list)) and quant else 0.0
        kind = dtype.name if dtype.kind in "iub" and not scale else "float32"
        specs.append(TensorSpec(name, tuple(None if s == -1 else int(s) for s in sig), kind))
    if len(specs) > 1:
        # x0, x1 ... number the Keras model's inputs (as `deploy convert` reads them); an artifact lists
        # its inputs in its own order (often sorted by name), so two same-shaped inputs could swap.
        order = _model_input_order(path)
        if order and sorted(order) == sorted(s.name for s in specs):
            specs.sort(key=lambda s: order.index(s.name))
        elif _numbered_npz(data):
            raise UserError(f"{Path(data).name}: keys x0, x1 ... follow the Keras model's input order, which this artifact "
                            f"does not record; name the arrays by input ({', '.join(s.name for s in specs)})")
        elif isinstance(data, (list, tuple)) and not (order and sorted(order) == sorted(s.name for s in specs)):
            # [a, b] was matched to the file's own order (TFLite sorts names): two same-shaped inputs swapped silently
            raise UserError(f"data is a list of {len(data)} arrays, in the Keras model's input order, which this artifact "
                            f"does not record; pass a dict keyed by input name ({', '.join(s.name for s in specs)})")
    # Quantized inputs take real values, which the runner quantizes; data already in the input's own integer
    # type (int8 for an int8-io file) is taken as quantized: it was quantized a second time, to -128/127.
    given = _given_arrays(data, [s.name for s in specs])
    details = runner.input_details()
    specs = [TensorSpec(s.name, s.shape, given[s.name][0].name) if s.dtype == "float32" and s.name in given
             and np.dtype(details[s.name].get("dtype", np.float32)).kind in "iu" and given[s.name][0] == np.dtype(details[s.name]["dtype"])
             else s for s in specs]
    # An input that records no shape takes the data's (any size in each dimension); its [] read as a scalar.
    specs = [TensorSpec(s.name, (None,) * len(given[s.name][1]), s.dtype)
             if details[s.name].get("rank_unknown") and s.name in given and given[s.name][1] is not None else s for s in specs]
    # A file made for a fixed batch (8) is timed at it, as on random inputs: one sample resized it to 1
    # (LiteRT) or was refused (ONNX Runtime); data with fewer samples is repeated to fill the batch.
    fixed = {int(s.shape[0]) for s in specs if s.shape and s.shape[0] is not None}
    batch = fixed.pop() if len(fixed) == 1 and all(s.shape and s.shape[0] is not None for s in specs) else 1
    ds = load_data(data, specs, role="bench data", labels=False).take(batch)
    inputs = {spec.name: (x if len(x) == batch else np.resize(x, (batch, *x.shape[1:]))) for spec, x in zip(specs, ds.x)}
    try:  # once, untimed: values the model cannot take (ids past an Embedding's table) fail here, not mid-timing
        runner.run(inputs)
    except DeployError as exc:
        if not str(exc).startswith("TF.js run: "):  # TF.js's own refusal of the values is said as the others are
            raise
        why = " ".join(str(exc).removeprefix("TF.js run: ").split())
        raise UserError(f"{(path or Path('the artifact')).name} cannot run on the data's first sample: {why}; check its "
                        "values (e.g. token ids within the model's Embedding vocabulary)") from None
    except Exception as exc:  # noqa: BLE001 - the runtime's own error, said in one line
        why = " ".join(str(exc).split())
        why = why if len(why) <= 300 else why[:300].rsplit(" ", 1)[0] + " …"  # whole words: "indices elemen" lost its value
        raise UserError(f"{(path or Path('the artifact')).name} cannot run on the data's first sample: {why}; check its values "
                        "(e.g. token ids within the model's Embedding vocabulary)") from None
    return inputs


def resolve_runtime(path: Path, runtime: str | None) -> str:
    """The runtime that runs ``path``: ``runtime`` when given (checked against the file type), else by suffix."""
    if not path.is_file():
        hint = "pass a model artifact such as model.tflite"
        from deploykit.artifacts import FAILED_PREFIX

        names = ("model.json", "model.tflite", "model.onnx")
        inside = [path / n for n in names if (path / n).is_file()]
        failed = [path / (FAILED_PREFIX + n) for n in names if (path / (FAILED_PREFIX + n)).is_file()]
        if path.is_dir() and inside:  # a run's target folder: its artifact file is what runs
            hint = f"pass the artifact file in it: {inside[0]}"
        elif path.is_dir() and failed:  # a target that failed: its file was set aside under another name
            hint = (f"the file in it failed verification and is kept for inspection as {failed[0]}; pass that name "
                    "to time it anyway")
        elif not path.is_absolute() and len(path.parts) == 2 and path.name.startswith("model.") and not path.exists():
            # TARGET/model.EXT is a manifest's artifact path, relative to its run's out directory, not to the cwd
            hint = (f"an artifact path from a deploykit manifest is relative to its out directory: pass OUT/{path} "
                    f"(in Python: result.path({path.parts[0]!r}))")
        raise UserError(f"{path} is not a file; {hint}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:  # a PermissionError from deep in a runner, or "cut short ... convert again"
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if path.stat().st_size == 0:  # LiteRT said "mmap of size 0 requested.The model allocation is null/empty"
        raise UserError(f"{path} is empty (0 bytes); pass the artifact file a run wrote, or convert the model again")
    if path.suffix.lower() == ".json":
        _refuse_run_manifest(path)
    runtime = runtime or SUFFIX_RUNTIME.get(path.suffix.lower())
    if runtime is None:
        raise UserError(f"cannot benchmark {path.name}: unknown artifact type {path.suffix!r}; supported: {', '.join(SUFFIX_RUNTIME)}")
    wanted = {"tflm": ".tflite"}.get(runtime) or next((k for k, v in SUFFIX_RUNTIME.items() if v == runtime), None)
    if wanted and path.suffix.lower() != wanted:
        raise UserError(f"--runtime {runtime} runs {wanted} files ({'model.json' if wanted == '.json' else 'model' + wanted}); "
                        f"{path.name} is not one")
    return runtime


def _refuse_run_manifest(path: Path) -> None:
    """A deploykit run's manifest.json passed for a TF.js model.json: "no modelTopology ... convert the
    model again" sent the user to redo a run whose files were fine."""
    import json

    try:
        if path.stat().st_size > 64 << 20:
            return
        content = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return  # the runner says what is wrong with it
    if not (isinstance(content, dict) and isinstance(content.get("artifacts"), list) and "modelTopology" not in content):
        return
    files = [a["path"] for a in content["artifacts"] if isinstance(a, dict) and a.get("status") == "ok" and a.get("path")]
    example = f" (e.g. {path.parent / files[0]})" if files else ""
    raise UserError(f"{path} is a deploykit run's manifest, not an artifact; pass one of the files it lists{example}")


@logs_muted
def load_explained(runner: Any, path: str | Path) -> float:
    """``runner.load()`` (its seconds), a load failure said with its cause and way out: a copy cut short or
    edited since, a file of another format, TensorFlow ops LiteRT does not carry, permissions."""
    try:
        return runner.load()
    except RuntimeLoadError as exc:  # an existing file: a copy cut short, or edited since
        if re.search(r"permission denied|EACCES", str(exc), re.IGNORECASE):
            raise RuntimeLoadError(f"{exc}; check the files' permissions") from None
        if "Select TensorFlow op" in str(exc):  # an intact file LiteRT has no kernels for: said so
            raise RuntimeLoadError(
                f"LiteRT could not load {Path(path).name}: it uses TensorFlow ops (SELECT_TF_OPS, the Flex "
                "delegate), which the ai-edge-litert interpreter does not carry; time a file converted "
                "with builtin ops only (deploy convert makes those)") from None
        if re.search(r"not a valid Flatbuffer|not a valid \.tflite", str(exc)) and \
                Path(path).is_file() and _header(Path(path))[4:8] != b"TFL3":
            raise RuntimeLoadError(f"{Path(path).name} is not a TFLite file (its header lacks the TFL3 "
                                   "identifier of every .tflite); pass a .tflite file, or name the file "
                                   "by its own format") from None
        if re.search(_DAMAGED, str(exc)):  # not for a custom op, a missing runtime, a refused path...
            raise RuntimeLoadError(f"{exc}; {CUT_SHORT}") from None
        raise


# Said of a file that exists but does not parse.
CUT_SHORT = "a file cut short or changed since it was written is refused like this: convert the model again"


def bench_file(path: str | Path | Sequence[str | Path], *, threads: int = 2, warmup: int = 10, iterations: int = 100,
               data: Any = None, runtime: str | None = None, browser: bool = False,
               backend: str | None = None) -> dict[str, Any]:
    """Benchmark an existing artifact on its runtime, or several side by side.

    Args:
        path: The artifact (``.tflite``, ``.onnx``, or a TF.js ``model.json``), or a list of them:
            two or more files are timed in interleaved rounds and compared round by round
            (:func:`deploykit.runtime_bench.compare.bench_side_by_side`).
        threads: Runtime threads.
        warmup: Untimed runs first.
        iterations: Timed runs.
        data: Optional ``.npz``/arrays; the first sample is used. Random inputs otherwise.
        runtime: Runtime to use (default: by file suffix; ``tflm`` runs a .tflite on TFLite Micro).
        browser: TF.js only: run in headless Chromium instead of Node.
        backend: TF.js only: ``wasm`` (default), ``cpu``, or in the browser also ``webgl``.

    Returns:
        Latency summary with raw samples, init time, sizes and peak memory; for several files,
        ``{"files": [...]}`` with each one's latencies and ``vs_first`` ratio.

    Example:
        >>> deploykit.bench("build/tflite-int8/model.tflite", threads=2)["p50_ms"]
        >>> [f["vs_first"] for f in deploykit.bench(["build/tflite-fp32/model.tflite",
        ...                                          "build/tflite-int8/model.tflite"])["files"]]
    """
    from deploykit.artifacts import gzip_size, sha256_file
    from deploykit.runtime_bench.memory import PeakRSS
    from deploykit.targets import BenchSettings

    if not isinstance(path, (str, Path, list, tuple)) or (isinstance(path, (list, tuple)) and not path):
        # None reached len() as a bare TypeError; [] was "side-by-side timing needs at least two files"
        raise UserError(f"pass an artifact file to benchmark (e.g. 'build/tflite-int8/model.tflite') or a list of "
                        f"them, got {type(path).__name__} {path!r}")
    if not isinstance(path, (str, Path)) and len(path) == 1:
        path = path[0]
    # '~/build/model.tflite' from Python: no shell expanded it ("is not a file"), as convert()'s paths are
    path = Path(os.path.expanduser(path)) if isinstance(path, (str, Path)) else \
        [Path(os.path.expanduser(p)) if isinstance(p, (str, Path)) else p for p in path]
    if not isinstance(path, (str, Path)):  # several files: timed side by side
        if browser:
            raise UserError("--browser times one TF.js model at a time; pass one model.json")
        from deploykit.runtime_bench.compare import bench_side_by_side

        return bench_side_by_side(path, threads=threads, warmup=warmup, iterations=iterations, data=data,
                                  runtime=runtime, backend=backend)
    BenchSettings(threads=threads, warmup=warmup, iterations=iterations)  # validates
    from deploykit.tmpdirs import remove_stale

    remove_stale()  # what killed runs left in $TMPDIR; live runs' stay
    path = Path(path)
    micro = _built_for_micro(path) if runtime is None and path.suffix.lower() == ".tflite" else None
    runtime = resolve_runtime(path, runtime)
    if (browser or backend) and runtime != "tfjs":
        raise UserError(f"--browser and --backend apply to TF.js models (model.json), not to {path.name}")
    options = {"backend": backend} if backend else {}
    if browser:
        from deploykit.runtime_bench.tfjs.browser import bench_in_browser
        from deploykit.runtime_bench.tfjs.runner import TFJSRunner

        inputs = None
        # Loaded in Node first, data or not: its checks of model.json and the shards say what is wrong with a
        # file in one line, where the page said "Cannot read properties of undefined (reading 'producer')"
        # of a layers model; and the Node runner knows the input specs the data must fit.
        probe = TFJSRunner(path, threads=1)
        try:
            probe.load()
            if data is not None:
                inputs = _bench_inputs(probe, data, path)
            else:  # the page makes its own random inputs: they must have a size to take
                _check_random_inputs_fit(probe)
        finally:
            probe.close()
        with PeakRSS() as mem:
            result = bench_in_browser(path, warmup=warmup, iterations=iterations, backend=backend or "wasm",
                                      inputs=inputs, threads=threads)
    else:
        runner = get_runner(runtime, path, threads, options)
        try:  # stopped however this ends (a TF.js runner is a Node child)
            with PeakRSS() as mem:
                init_s = load_explained(runner, path)
                inputs = _bench_inputs(runner, data, path)
                stats = benchmark(runner, inputs, warmup=warmup, iterations=iterations)
            stats.init_ms = init_s * 1000
            result = stats.to_dict()
            result.update(runner.describe())
            if hasattr(runner, "op_profile"):
                result["op_profile"] = runner.op_profile(inputs)
        finally:
            if hasattr(runner, "close"):
                runner.close()
        result.update(runtime_memory(runtime, path, threads, inputs, options, result))
    files = [path] + _weight_files(path, runtime)
    result.update(
        {
            "path": str(path),
            "sha256": sha256_file(path),
            "size_bytes": sum(f.stat().st_size for f in files),
            "gzip_bytes": sum(gzip_size(f) for f in files),
            "peak_rss_bytes": mem.peak_bytes,
            "rss_increase_bytes": mem.peak_bytes - mem.start_bytes,
            "peak_rss_of": "this process",
            "inputs": "data" if data is not None else "random",
        }
    )
    if micro:
        result["note"] = (f"the run beside this file built it for TFLite Micro ({micro}): timed here on LiteRT; "
                          "--runtime tflm times it on the TFLite Micro kernels, as that run did")
    # TF.js runs in another process: its memory is that process's, not this driver's.
    if result.get("node_peak_rss_bytes"):
        result.update({"peak_rss_bytes": result["node_peak_rss_bytes"], "peak_rss_of": "the Node.js process running TF.js"})
        result.pop("rss_increase_bytes")
    elif browser:
        result.update({"peak_rss_bytes": None, "peak_rss_of": "not measured: Chromium runs the model"})
        result.pop("rss_increase_bytes")
    return result


def bench(*args: Any, **kwargs: Any) -> dict[str, Any]:
    # deploykit.bench: bench_file for Python callers. Its messages name CLI flags, said once more in
    # the keywords a caller passes ("--backend" is backend=); docs and signature are bench_file's.
    from deploykit.errors import at_api_boundary

    with at_api_boundary():
        return bench_file(*args, **kwargs)


functools.update_wrapper(bench, bench_file)
