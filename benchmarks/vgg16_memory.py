"""Figure: peak memory of `deploy convert` on VGG16 (138M parameters, Keras 3, weights=None).

Threshold: the peak RSS of ONE `deploy convert VGG16.keras -t tflite-fp32 -t
tflite-int8 --data calib.npz` subprocess must be <= 1.1x the peak RSS of a plain
script doing only the int8 conversion (load the .keras file, model.export, full
int8 TFLiteConverter over the same calibration samples) -- i.e. running both
targets, verification and benchmarks must cost little more memory than the
single most expensive conversion.

How peak RSS is measured: each variant runs as its own child process and is
reaped with ``os.wait4(pid)``, whose rusage is that child's alone, so
``ru_maxrss`` is exactly that process's lifetime peak resident set (the kernel's
high-water mark, no sampling gaps). ``getrusage(RUSAGE_CHILDREN)`` would not do:
its ru_maxrss is the maximum over all children reaped so far, so a second,
smaller child would be invisible. ``deploy`` is the venv's console script whose
shebang runs Python directly, so the reaped process is the converting process.

Contrast variants (not gated, skip with --no-contrast): the plain fp32-only
conversion, and a plain script doing fp32 then int8 in one process (the same
conversions deploykit runs, without reference/verify/bench) -- this separates
what TensorFlow itself retains between two conversions from what deploykit adds.

Per step, two views (not gated): the deploy manifest's own figures (``steps``
of the run and of each artifact: RSS sampled from a Python thread while the
step ran), and an exact per-step peak from one more run of the same pipeline
in a helper process (_step_peaks.py: the kernel's VmHWM read and reset at every
step boundary). The sampled figure misses conversion peaks because the TFLite
converter holds the GIL for seconds; the exact one shows which step sets the
process peak and whether a later target piles on an earlier one. Skip the extra
run with --no-attribute.

Data: --samples (default 16) seeded image-like arrays, VGG16 ("caffe")
preprocessing. deploy gets small --iterations/--warmup/--verify-samples so the
run stays short; those do not change the memory picture (verification runs
the LiteRT interpreter, the peak is in conversion).

Usage: .venv/bin/python benchmarks/vgg16_memory.py [--samples 16] [--rounds 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import workdir, DEPLOY, PYTHON, Verdicts, check_ok, gib, machine_line, median, run_child, table  # noqa: E402

FP32, INT8 = "tflite-fp32", "tflite-int8"


def _step_key(progress: str) -> tuple[str, str]:
    """deploykit progress message -> (target, manifest step name)."""
    fixed = {"loading model": ("", "load"), "computing reference outputs": ("", "reference"), "start (imports)": ("", "start")}
    if progress in fixed:
        return fixed[progress]
    if ": " in progress:
        target, what = progress.split(": ", 1)
        for word, step in (("convert", "convert"), ("verif", "verify"), ("bench", "bench")):
            if what.startswith(word):
                return target, step
        return target, what
    return "", progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="calibration/eval images")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each variant (alternating); medians compared")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model, data and outputs here (default: temp dir, removed)")
    parser.add_argument("--iterations", type=int, default=5, help="deploy --iterations")
    parser.add_argument("--warmup", type=int, default=1, help="deploy --warmup")
    parser.add_argument("--verify-samples", type=int, default=4, help="deploy --verify-samples")
    parser.add_argument("--threshold", type=float, default=1.1)
    parser.add_argument("--no-contrast", action="store_true", help="skip the plain fp32 and plain fp32+int8 runs")
    parser.add_argument("--no-attribute", action="store_true", help="skip the exact per-step peak run (_step_peaks.py)")
    args = parser.parse_args()

    with workdir(args.workdir, "deploykit-bench-vgg16-") as work:
        _run(args, work)


def _run(args, work: Path) -> None:
    from deploykit.targets import get_target

    print(f"VGG16 memory benchmark; {machine_line()}; workdir {work}")
    model, calib = work / "VGG16.keras", work / "calib.npz"
    if model.exists() and calib.exists():
        print(f"reusing {model} and {calib}")
    else:
        r = run_child([PYTHON, str(HERE / "_prepare.py"), "--arch", "VGG16", "--samples", str(args.samples),
                       "--preprocess", "caffe", "--out", str(work)])
        check_ok(r, "preparing VGG16")
        print(r.stdout.strip(), f"({r.wall_s:.1f} s, peak RSS {gib(r.maxrss_bytes)})")
    calib_n = min(args.samples, get_target(INT8).calibration_samples)

    def plain(out: Path, *flags: str) -> list[str]:
        return [PYTHON, str(HERE / "_plain_convert.py"), str(model), str(calib), str(out), *flags,
                "--calib-samples", str(calib_n)]

    variants: dict[str, callable] = {
        "deploy convert fp32+int8": lambda out: [
            DEPLOY, "convert", str(model), "-t", FP32, "-t", INT8, "--data", str(calib), "--out", str(out),
            "--iterations", str(args.iterations), "--warmup", str(args.warmup),
            "--verify-samples", str(args.verify_samples)],
        "plain int8 only": lambda out: plain(out, "--int8"),
    }
    if not args.no_contrast:
        variants["plain fp32 only"] = lambda out: plain(out, "--fp32")
        variants["plain fp32+int8, one process"] = lambda out: plain(out, "--fp32", "--int8")

    runs: dict[str, list] = {k: [] for k in variants}
    manifests = []
    names = list(variants)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            out = work / f"{name.split()[0]}_{name.split()[1]}_{r}".replace("+", "_")
            shutil.rmtree(out, ignore_errors=True)
            print(f"round {r + 1}/{args.rounds}: {name} ...", flush=True)
            run = run_child(variants[name](out))
            check_ok(run, name, allowed=(0, 1) if name.startswith("deploy") else (0,))
            print(f"  {run.wall_s:.0f} s wall, peak RSS {gib(run.maxrss_bytes)}, exit {run.returncode}", flush=True)
            runs[name].append(run)
            if name.startswith("deploy"):
                manifests.append(json.loads((out / "manifest.json").read_text()))

    print("\npeak RSS per process (os.wait4 ru_maxrss):")
    base = median([r.maxrss_bytes for r in runs["plain int8 only"]])
    rows = []
    for name, rs in runs.items():
        m = median([r.maxrss_bytes for r in rs])
        rows.append([name, " ".join(gib(r.maxrss_bytes) for r in rs), gib(m), f"{m / base:.3f}x",
                     f"{median([r.wall_s for r in rs]):.0f}"])
    print(table(["variant", "runs", "median peak", "vs plain int8", "wall s"], rows))

    m0 = manifests[0]
    sampled = {("", k): v for k, v in m0.get("steps", {}).items()}
    for a in m0["artifacts"]:
        sampled.update({(a["target"], k): v for k, v in a.get("steps", {}).items()})

    exact: dict[tuple[str, str], dict] = {}
    if not args.no_attribute:
        print("\nexact per-step peaks: one more deploykit run in a helper process (VmHWM reset per step) ...", flush=True)
        out = work / "step_peaks"
        shutil.rmtree(out, ignore_errors=True)
        r = run_child([PYTHON, str(HERE / "_step_peaks.py"), str(model), str(calib), str(out), "-t", FP32, "-t", INT8,
                       "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                       "--verify-samples", str(args.verify_samples)])
        check_ok(r, "per-step peak run")
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("STEP_PEAKS_JSON ")][-1]
        info = json.loads(line.split(" ", 1)[1])
        if not info["reset"]:
            print("note: /proc/self/clear_refs not writable; per-step peaks are the running high-water mark")
        for st in info["steps"]:
            exact[_step_key(st["step"])] = st
        print(f"  helper process: {r.wall_s:.0f} s wall, lifetime peak n/a (reset per step)")

    print("\ndeploy per-step memory (manifest: sampled from a thread; exact: kernel VmHWM per step):")
    keys = list(dict.fromkeys([k for k in exact if k[1] not in ("start", "")] + list(sampled)))
    step_rows = []
    for key in keys:
        s_, e_ = sampled.get(key), exact.get(key)
        step_rows.append([key[1], key[0], f"{s_['seconds']:.1f}" if s_ else "-",
                          f"{e_['seconds']:.1f}" if e_ else "-",
                          gib(s_["peak_rss_bytes"]) if s_ else "-",
                          gib(e_["peak_rss_bytes"]) if e_ else "-",
                          f"{e_['peak_rss_bytes'] / base:.3f}x" if e_ else "-",
                          gib(e_["end_rss_bytes"]) if e_ else "-"])
    print(table(["step", "target", "manifest s", "to next step s", "manifest peak", "exact peak",
                 "exact vs plain int8", "RSS at end"], step_rows))
    print("(\"to next step\" also counts the work between steps: after bench, sizes/gzip/sha256 of the artifact;"
          " after the last step, manifest and reports)")
    for a in m0["artifacts"]:
        if a["status"] != "ok":
            print(f"note: {a['target']} {a['status']}: {(a.get('error') or '')[:200]}")

    ratio = median([r.maxrss_bytes for r in runs["deploy convert fp32+int8"]]) / base
    print()
    v = Verdicts()
    v.check("VGG16 deploy convert peak RSS <= 1.1x plain int8 script", ratio <= args.threshold,
            f"ratio {ratio:.3f} ({gib(median([r.maxrss_bytes for r in runs['deploy convert fp32+int8']]))} vs {gib(base)})")
    v.exit()


if __name__ == "__main__":
    main()
