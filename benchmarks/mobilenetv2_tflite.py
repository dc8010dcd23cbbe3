"""Figures: MobileNetV2 (Keras 3, weights=None, 224x224x3) through `deploy convert`.

(a) size:    tflite-int8 file size <= 0.29x tflite-fp32 file size.
(b) latency: int8 p50 <= 0.8x fp32 p50 at 2 threads (LiteRT, XNNPACK), taken from
             the `deploy convert` manifest (median of the per-run ratios): the
             side-by-side timing the report compares (both files timed in interleaved
             rounds once built, deploykit.side_by_side; the ratio is the report's
             "× fp32 p50", the median of the paired rounds' ratios); each file's solo p50, timed
             right after its own conversion, is printed beside it for contrast; and
             (b') cross-checked by re-benchmarking both .tflite files alternately in
             this process with deploykit.bench (interleaved rounds, pooled samples).
(c) wall:    one `deploy convert model.keras -t tflite-fp32 -t tflite-int8 --data
             calib.npz --out DIR` subprocess (verification and benchmark included)
             takes <= 1.25x the wall time of the plain script a user would write
             instead (benchmarks/_plain_convert.py: load, export, fp32 + full-int8
             conversion over the same calibration samples, write both files), also
             a subprocess. Each variant runs --rounds times (default 3), alternating
             which goes first; the medians are compared.

Data: --samples (default 100) seeded image-like arrays (smooth random fields in
0..255 plus noise, see _prepare.py), preprocessed as MobileNetV2 expects:
x / 127.5 - 1, floats in [-1, 1] (the Keras 3 model embeds no preprocessing).
deploykit's tflite-int8 target calibrates on min(len(data), calibration_samples)
samples; the plain script is given that same number.

The model has random weights (BatchNorm statistics set from the data, see
_prepare.py), so its softmax is flat and the int8 top-1 agreement gate in
verification may fail; that makes `deploy` exit 1, which this benchmark
tolerates and reports (size, latency and wall time do not depend on it).

Usage: .venv/bin/python benchmarks/mobilenetv2_tflite.py [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    workdir, DEPLOY, PYTHON, Verdicts, check_ok, machine_line, median, mib, run_child, table,
)

FP32, INT8 = "tflite-fp32", "tflite-int8"


def _prepare(work: Path, samples: int) -> tuple[Path, Path]:
    model, calib = work / "MobileNetV2.keras", work / "calib.npz"
    if model.exists() and calib.exists():
        print(f"reusing {model} and {calib}")
        return model, calib
    r = run_child([PYTHON, str(HERE / "_prepare.py"), "--arch", "MobileNetV2", "--samples", str(samples),
                   "--preprocess", "mobilenet", "--out", str(work)])
    check_ok(r, "preparing MobileNetV2")
    print(r.stdout.strip(), f"({r.wall_s:.1f} s)")
    return model, calib


def _interleaved_bench(fp32: Path, int8: Path, calib: Path, rounds: int, iterations: int, warmup: int,
                       threads: int) -> dict[str, dict]:
    """Alternate deploykit.bench over both files; pool raw samples per file."""
    import deploykit

    pooled: dict[str, list[float]] = {FP32: [], INT8: []}
    round_ratios = []
    for r in range(rounds):
        order = [(FP32, fp32), (INT8, int8)] if r % 2 == 0 else [(INT8, int8), (FP32, fp32)]
        p50 = {}
        for name, path in order:
            res = deploykit.bench(path, threads=threads, warmup=warmup, iterations=iterations, data=str(calib))
            pooled[name].extend(res["samples_ms"])
            p50[name] = res["p50_ms"]
        round_ratios.append(p50[INT8] / p50[FP32])
    import numpy as np

    out = {name: {"p50_ms": float(np.percentile(s, 50)), "min_ms": float(np.min(s)), "n": len(s)}
           for name, s in pooled.items()}
    out["round_ratios"] = round_ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each of deploy / plain script, alternating")
    parser.add_argument("--samples", type=int, default=100, help="calibration/eval images")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model, data and outputs here (default: temp dir, removed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bench-rounds", type=int, default=10, help="interleaved rounds of the in-process cross-check")
    parser.add_argument("--bench-iterations", type=int, default=50, help="timed runs per file per cross-check round")
    parser.add_argument("--size-threshold", type=float, default=0.29)
    parser.add_argument("--latency-threshold", type=float, default=0.8)
    parser.add_argument("--wall-threshold", type=float, default=1.25)
    parser.add_argument("--deploy-arg", action="append", default=[],
                        help="extra argument passed to `deploy convert` (repeatable), e.g. --deploy-arg=--iterations=50")
    args = parser.parse_args()

    with workdir(args.workdir, "deploykit-bench-mnv2-") as work:
        _run(args, work)


def _run(args, work: Path) -> None:
    from deploykit.targets import get_target

    print(f"MobileNetV2 TFLite benchmark; {machine_line()}; workdir {work}")
    model, calib = _prepare(work, args.samples)
    calib_n = min(args.samples, get_target(INT8).calibration_samples)
    print(f"calibration samples: deploykit tflite-int8 uses min({args.samples}, calibration_samples="
          f"{get_target(INT8).calibration_samples}) = {calib_n}; the plain script gets --calib-samples {calib_n}")

    deploy_runs, plain_runs, manifests = [], [], []
    for r in range(args.rounds):
        out_d, out_p = work / f"deploy_{r}", work / f"plain_{r}"
        for d in (out_d, out_p):
            shutil.rmtree(d, ignore_errors=True)
        deploy_cmd = [DEPLOY, "convert", str(model), "-t", FP32, "-t", INT8, "--data", str(calib),
                      "--out", str(out_d), "--threads", str(args.threads), *args.deploy_arg]
        plain_cmd = [PYTHON, str(HERE / "_plain_convert.py"), str(model), str(calib), str(out_p),
                     "--fp32", "--int8", "--calib-samples", str(calib_n)]
        order = [("deploy", deploy_cmd), ("plain", plain_cmd)] if r % 2 == 0 else [("plain", plain_cmd), ("deploy", deploy_cmd)]
        for kind, cmd in order:
            print(f"round {r + 1}/{args.rounds}: running {kind} ...", flush=True)
            run = run_child(cmd)
            # deploy exits 1 when a target fails verification; the artifacts and timings are still there
            check_ok(run, kind, allowed=(0, 1) if kind == "deploy" else (0,))
            print(f"  {kind}: {run.wall_s:.1f} s wall, peak RSS {mib(run.maxrss_bytes)}, exit {run.returncode}")
            if kind == "deploy":
                deploy_runs.append(run)
                manifests.append(json.loads((out_d / "manifest.json").read_text()))
            else:
                plain_runs.append(run)

    # ---- per-run table from the manifests ------------------------------------------------
    m0 = manifests[0]
    arts = {a["target"]: a for a in m0["artifacts"]}
    print("\nartifacts (first deploy run):")
    rows = []
    for name in (FP32, INT8):
        a = arts[name]
        ver = a.get("verification") or {}
        rows.append([name, a["status"], f"{a['size_bytes']:,}" if a.get("size_bytes") else "-",
                     f"{a['benchmark']['p50_ms']:.2f}" if a.get("benchmark") else "-",
                     f"{ver.get('top1_agreement', float('nan')):.3f}", f"{ver.get('max_abs_error', float('nan')):.3g}",
                     (a.get("error") or "")[:70]])
    print(table(["target", "status", "bytes", "p50 ms", "top1 agree", "max abs err", "error"], rows))

    print("\ndeploy steps (first run): seconds / peak RSS")
    step_rows = [[k, "", f"{v['seconds']:.1f}", mib(v["peak_rss_bytes"])] for k, v in m0.get("steps", {}).items()]
    for name in (FP32, INT8):
        for k, v in arts[name].get("steps", {}).items():
            step_rows.append([k, name, f"{v['seconds']:.1f}", mib(v["peak_rss_bytes"])])
    print(table(["step", "target", "seconds", "peak RSS"], step_rows))

    plain_fp32 = (work / "plain_0" / "fp32.tflite").stat().st_size
    plain_int8 = (work / "plain_0" / "int8.tflite").stat().st_size

    # ---- (a) size ----------------------------------------------------------------------------
    size_ratio = arts[INT8]["size_bytes"] / arts[FP32]["size_bytes"]
    plain_size_ratio = plain_int8 / plain_fp32

    # ---- (b) latency from manifests + interleaved cross-check -------------------------------------
    lat_ratios = []
    lat_rows = []
    for i, m in enumerate(manifests):
        a = {x["target"]: x for x in m["artifacts"]}
        f, q = a[FP32]["benchmark"], a[INT8]["benchmark"]
        fs, qs = f.get("side_by_side") or f, q.get("side_by_side") or q
        # the report's × fp32 p50: the median of the paired rounds' ratios (pooled p50s without it)
        lat_ratios.append((qs.get("vs_float32") or {}).get("ratio") or qs["p50_ms"] / fs["p50_ms"])
        lat_rows.append([f"deploy run {i + 1} (manifest, side by side)", f"{fs['p50_ms']:.2f}", f"{qs['p50_ms']:.2f}",
                         f"{fs['n']}/{qs['n']}", f["threads"], f"{lat_ratios[-1]:.3f}"])
        lat_rows.append([f"deploy run {i + 1} (manifest, solo, contrast)", f"{f['p50_ms']:.2f}", f"{q['p50_ms']:.2f}",
                         f"{f['n']}/{q['n']}", f["threads"], f"{q['p50_ms'] / f['p50_ms']:.3f}"])
    print(f"\ncross-check: deploykit.bench alternating over both files of run 1, {args.bench_rounds} rounds x "
          f"{args.bench_iterations} iterations, {args.threads} threads ...", flush=True)
    xc = _interleaved_bench(work / "deploy_0" / FP32 / "model.tflite", work / "deploy_0" / INT8 / "model.tflite",
                            calib, args.bench_rounds, args.bench_iterations, 5, args.threads)
    xc_ratio = xc[INT8]["p50_ms"] / xc[FP32]["p50_ms"]
    lat_rows.append(["interleaved deploykit.bench (pooled)", f"{xc[FP32]['p50_ms']:.2f}", f"{xc[INT8]['p50_ms']:.2f}",
                     f"{xc[FP32]['n']}/{xc[INT8]['n']}", args.threads, f"{xc_ratio:.3f}"])
    rr = xc["round_ratios"]
    print(table(["source", "fp32 p50 ms", "int8 p50 ms", "n fp32/int8", "threads", "int8/fp32"], lat_rows))
    print(f"per-round int8/fp32 p50 ratios of the cross-check: {' '.join(f'{x:.3f}' for x in rr)} "
          f"(median {median(rr):.3f}, min {min(rr):.3f}, max {max(rr):.3f})")
    print(f"fastest single run (least disturbed by other load): fp32 {xc[FP32]['min_ms']:.2f} ms, int8 "
          f"{xc[INT8]['min_ms']:.2f} ms, ratio {xc[INT8]['min_ms'] / xc[FP32]['min_ms']:.3f} (context, not gated)")

    # ---- (c) wall time -----------------------------------------------------------------------------
    print("\nwall time (subprocesses, alternating):")
    wall_rows = [["deploy convert (fp32+int8, verify, bench)", " ".join(f"{r.wall_s:.1f}" for r in deploy_runs),
                  f"{median([r.wall_s for r in deploy_runs]):.1f}", mib(max(r.maxrss_bytes for r in deploy_runs))],
                 ["plain script (load, export, fp32+int8)", " ".join(f"{r.wall_s:.1f}" for r in plain_runs),
                  f"{median([r.wall_s for r in plain_runs]):.1f}", mib(max(r.maxrss_bytes for r in plain_runs))]]
    print(table(["variant", "runs s", "median s", "peak RSS"], wall_rows))
    wall_ratio = median([r.wall_s for r in deploy_runs]) / median([r.wall_s for r in plain_runs])
    per_round = [d.wall_s / p.wall_s for d, p in zip(deploy_runs, plain_runs)]

    print("\nsummary")
    print(table(["figure", "measured", "threshold"], [
        ["(a) int8/fp32 size (deploy)", f"{size_ratio:.4f}  ({arts[INT8]['size_bytes']:,} / {arts[FP32]['size_bytes']:,} B)", f"<= {args.size_threshold}"],
        ["    same, plain script files", f"{plain_size_ratio:.4f}  ({plain_int8:,} / {plain_fp32:,} B)", "(contrast)"],
        ["(b) int8/fp32 p50, manifest", f"{median(lat_ratios):.3f}  (runs: {' '.join(f'{x:.3f}' for x in lat_ratios)})", f"<= {args.latency_threshold}"],
        ["(b') int8/fp32 p50, interleaved", f"{xc_ratio:.3f}", f"<= {args.latency_threshold}"],
        ["(c) deploy/plain wall (medians)", f"{wall_ratio:.3f}  (per round: {' '.join(f'{x:.3f}' for x in per_round)})", f"<= {args.wall_threshold}"],
    ]))
    print()
    v = Verdicts()
    v.check("(a) int8 size <= 0.29x fp32", size_ratio <= args.size_threshold, f"ratio {size_ratio:.4f}")
    v.check("(b) int8 p50 <= 0.8x fp32 (manifest)", median(lat_ratios) <= args.latency_threshold,
            f"ratio {median(lat_ratios):.3f} (median of {len(lat_ratios)} run(s))")
    v.check("(b') int8 p50 <= 0.8x fp32 (interleaved cross-check)", xc_ratio <= args.latency_threshold,
            f"ratio {xc_ratio:.3f} over {xc[FP32]['n']}+{xc[INT8]['n']} samples")
    v.check("(c) deploy convert wall <= 1.25x plain script", wall_ratio <= args.wall_threshold,
            f"ratio {wall_ratio:.3f} (median {median([r.wall_s for r in deploy_runs]):.1f} s vs "
            f"{median([r.wall_s for r in plain_runs]):.1f} s)")
    v.exit()


if __name__ == "__main__":
    main()
