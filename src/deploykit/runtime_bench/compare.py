"""`deploy bench A B ...`: time existing files side by side and compare them round by round.

Timing files one after the other compares moments, not files: on a shared machine the
load changes in between (a tflite-int8 MobileNetV2 measured 0.93x its fp32 file run
after run, 0.74x in alternating rounds). Here every file is loaded at once and timed in
the interleaved rounds the ``-auto`` selection and a run's side-by-side step use
(``selection.interleaved_p50``), and each file's ratio to the first is the median of
their per-round ratios (``selection.paired_ratio``).

Files may run on different runtimes (a .tflite on LiteRT beside an .onnx on ONNX
Runtime, at the same threads): which runtime serves a model fastest on this machine
is a question users ask too. They must take the same inputs, since each round feeds
every file the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploykit.errors import UserError


@dataclass(frozen=True)
class _FileTarget:
    """What ``interleaved_p50`` reads of a target, for a file that came without one."""

    runtime: str
    bench: Any
    options: dict[str, Any] = field(default_factory=dict)


def _input_signature(inputs: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {k: (tuple(v.shape), np.asarray(v).dtype.kind) for k, v in inputs.items()}


def bench_side_by_side(paths: Sequence[str | Path], *, threads: int = 2, warmup: int = 10, iterations: int = 100,
                       data: Any = None, runtime: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """Time several artifacts in interleaved rounds; latencies and paired ratios to the first file.

    Args mean what they mean for one file (:func:`deploykit.runtime_bench.bench_file`); ``runtime``
    applies to every file (each must be of its type), ``backend`` to the TF.js ones. ``iterations`` are spread over the rounds (each
    round at least 20 ms per file).

    Returns:
        ``{"threads", "rounds", "inputs", "files": [...]}``; each file: path, runtime, sha256,
        sizes, p50/p90/p99 and raw samples of its rounds, ``round_p50_ms``, and ``vs_first``
        (its p50 over the first file's, the median of the paired rounds' ratios). A file with
        the same bytes as an earlier one is timed once and says ``same_file_as``.

    Raises:
        UserError: a file that is missing or of an unknown type, or files that take different inputs.
    """
    from deploykit.artifacts import gzip_size, sha256_file
    from deploykit.runtime_bench import _bench_inputs, _weight_files, get_runner, load_explained, resolve_runtime
    from deploykit.selection import interleaved_p50, paired_ratio, ratio_spread, unsteady
    from deploykit.targets import BenchSettings

    settings = BenchSettings(threads=threads, warmup=warmup, iterations=iterations)  # validates
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise UserError("side-by-side timing needs at least two files")
    runtimes = [resolve_runtime(p, runtime) for p in paths]
    if backend and "tfjs" not in runtimes:
        raise UserError("--backend applies to TF.js models (model.json); none of these files is one")
    targets = [_FileTarget(rt, settings, {"backend": backend} if backend and rt == "tfjs" else {}) for rt in runtimes]

    shas = [sha256_file(p) for p in paths]
    weight_files = [[p] + _weight_files(p, rt) for p, rt in zip(paths, runtimes)]
    # Same bytes: the file and its weights (two TF.js model.json of one architecture are identical,
    # their shards are not), run the same way.
    identity = [(rt, tuple(sha256_file(f) for f in files)) for rt, files in zip(runtimes, weight_files)]
    first_of: dict[tuple, int] = {}  # identity -> index of the first file with it
    for i, key in enumerate(identity):
        first_of.setdefault(key, i)
    timed = sorted(set(first_of.values()))
    if len(timed) < 2:
        named = list(dict.fromkeys(str(p) for p in paths))
        raise UserError((f"{' and '.join(named)} hold the same bytes" if len(named) > 1 else f"{named[0]} is given {len(paths)} times")
                        + "; pass different files to compare")

    # The sample every file gets: read with each file's own input list, so files that do not take the
    # same inputs are refused here, not half-way through the rounds.
    inputs: dict[str, np.ndarray] | None = None
    described: dict[int, dict[str, Any]] = {}  # each file's runtime settings (TFLite Micro runs 1 thread) and init time
    warmed: set[str] = set()
    for i in timed:
        if runtimes[i] not in warmed and runtimes[i] != "tfjs":  # TF.js: a Node process per file, each from cold
            # The first session a process opens pays the runtime's one-time start (ORT's environment and
            # thread pools: 10-14 ms against 2 ms after it), which made init_ms follow the files' order.
            warm = get_runner(runtimes[i], paths[i], threads, targets[i].options)
            try:
                load_explained(warm, paths[i])
            finally:
                warm.close()
            warmed.add(runtimes[i])
        runner = get_runner(runtimes[i], paths[i], threads, targets[i].options)
        try:
            init_s = load_explained(runner, paths[i])
            mine = _bench_inputs(runner, data, paths[i])
            described[i] = {**runner.describe(), "init_ms": init_s * 1000}
        finally:
            runner.close()
        if inputs is None:
            inputs, source = mine, i
        elif _input_signature(mine) != _input_signature(inputs):
            raise UserError(f"{paths[source]} and {paths[i]} take different inputs "
                            f"({_describe(inputs)} vs {_describe(mine)}); compare files of one model")
    summaries = dict(zip(timed, interleaved_p50([targets[i] for i in timed], [paths[i] for i in timed], inputs, drop=False,
                                                  keep_samples=True)))

    files = []
    for i, path in enumerate(paths):
        first = first_of[identity[i]]
        summary = summaries[first]
        files.append({
            # no "warmup": each round warms its block (at least 5 runs, --warmup only raises the first)
            "path": str(path), **described[first], "runtime": runtimes[i],
            **({"backend": backend} if targets[i].options else {}),
            "sha256": shas[i],
            "size_bytes": sum(f.stat().st_size for f in weight_files[i]),
            "gzip_bytes": sum(gzip_size(f) for f in weight_files[i]),
            **summary,
            "threads": described[first].get("threads", threads),  # what the runtime used (Stats holds the asked count)
            "vs_first": paired_ratio(summary, summaries[timed[0]]),
            # the rounds' ratios to the first file, largest over smallest: a ratio that swung 2.2-3.8x
            # round by round printed as one three-decimal figure
            **({"vs_first_spread": spread, "unsteady": unsteady(spread)}
               if first != timed[0] and (spread := ratio_spread(summary, summaries[timed[0]])) is not None else {}),
            **({"same_file_as": str(paths[first])} if first != i else {}),
        })
    return {"threads": threads, "rounds": len(files[0]["round_p50_ms"]), "inputs": "data" if data is not None else "random",
            "files": files}  # threads: as asked; each file's own (TFLite Micro: 1) is in its entry


def _describe(inputs: dict[str, np.ndarray]) -> str:
    """Names, shapes and dtypes: an int8-io file beside its float one differs in the dtype alone."""
    return ", ".join(f"{k} {tuple(v.shape)} {np.asarray(v).dtype}" for k, v in inputs.items())
