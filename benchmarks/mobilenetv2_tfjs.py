"""Figures (TF.js issue): MobileNetV2 (Keras 3, weights=None, 224x224x3) as a TF.js graph model.

(a) size:  `tfjs-fp32` total weight bytes (all shards) within 2% of 4 bytes x parameter count;
           `tfjs-uint8` weight bytes <= 0.26x of that.
(b) speed: our `tfjs-fp32` artifact's p50 on the wasm backend in Node (1 thread, batch 1) is no
           slower than the official tensorflowjs converter's output of the same SavedModel.
           Both run in the same Node runtime (deploykit's TF.js runner, @tensorflow/tfjs 4.22.0),
           timed inside Node, in interleaved rounds (A B, B A, ...), p50 over all samples.

The official converter cannot be installed beside TF 2.21, so it runs in a separate
virtualenv (default build/bench-venvs/tfjs-official, created on first use with
tensorflow==2.19.*, tensorflowjs==4.22.0, ydf==0.11.0 -- about 2 GB, several minutes). It is
never a dependency of deploykit. Both outputs are also compared with each other on the same
input (they should agree to ~1e-5).

(c) --official-check (default ResNet50,EfficientNetB0; 96x96 features): the architectures whose
    official-converter output TF.js refuses ("FusedConv2D only supports rank-1 bias") are converted
    by both and run once in Node: ours must run and match Keras (deploy's verification); the
    official result is printed as found (informative, not a figure).

Model and data as in mobilenetv2_tflite.py (_prepare.py: BatchNorm statistics from the data),
with the standard 1000-class head: the size figure is about the stock architecture. Our weight
bytes sit a little under 4 x params because BatchNorm folds into the convolutions (its moving
mean/variance and scale disappear); with a small head (--classes 10) that share grows. On random
weights `tfjs-uint8` usually misses the top-1 agreement gate (per-tensor uint8 weights through 50
layers); the size figure does not depend on that.

Usage: .venv/bin/python benchmarks/mobilenetv2_tfjs.py [--rounds 5] [--iterations 30] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, DEPLOY, PYTHON, Verdicts, check_ok, export_saved_model, machine_line, run_child, table, workdir  # noqa: E402

OFFICIAL_PACKAGES = ["tensorflow==2.19.*", "tensorflowjs==4.22.0", "ydf==0.11.0"]


def _official_venv(path: Path) -> Path:
    exe = path / "bin" / "tensorflowjs_converter"
    if not exe.exists():
        print(f"creating {path} for the official converter ({', '.join(OFFICIAL_PACKAGES)}); this takes minutes", flush=True)
        subprocess.run([sys.executable if not Path("/usr/bin/python3.11").exists() else "python3.11", "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", *OFFICIAL_PACKAGES], check=True)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30, help="timed runs per model per round")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--official-venv", type=Path, default=ROOT / "build" / "bench-venvs" / "tfjs-official")
    parser.add_argument("--official-check", default="ResNet50,EfficientNetB0",
                        help="architectures to convert with both converters and run once ('' to skip)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with workdir(args.workdir, "deploykit-bench-tfjs-") as work:
        run(args, work)


def run(args, work: Path) -> None:
    print(f"MobileNetV2 TF.js benchmark; {machine_line()}; workdir {work}")
    model, calib = work / "MobileNetV2.keras", work / "calib.npz"
    if not model.exists():
        check_ok(run_child([PYTHON, str(HERE / "_prepare.py"), "--arch", "MobileNetV2", "--samples", "32",
                            "--classes", str(args.classes), "--out", str(work)]), "preparing MobileNetV2")
    v = Verdicts()

    out = work / "deploy"
    shutil.rmtree(out, ignore_errors=True)
    r = run_child([DEPLOY, "convert", str(model), "-t", "tfjs-fp32", "-t", "tfjs-uint8", "--data", str(calib),
                   "--out", str(out), "--iterations", "5", "--warmup", "2"])
    check_ok(r, "deploy convert -t tfjs-fp32 -t tfjs-uint8", allowed=(0, 1))
    m = json.loads((out / "manifest.json").read_text())
    params = int(m["model"]["params"])
    arts = {a["target"]: a for a in m["artifacts"]}
    rows = []
    for name, a in arts.items():
        wb = a["settings"]["converter"]["weight_bytes"]
        ver = a["verification"]
        rows.append([name, a["status"], f"{wb:,}", f"{wb / (4 * params):.4f}", f"{a['size_bytes']:,}", f"{a['gzip_bytes']:,}",
                     f"{ver.get('max_abs_error', float('nan')):.2e}", f"{ver.get('top1_agreement', float('nan')):.3f}",
                     (a.get("error") or "")[:50]])
    print(f"\n{params:,} parameters; 4 x params = {4 * params:,} bytes")
    print(table(["target", "status", "weight bytes", "/ (4 x params)", "files", "gzip", "max abs err", "top1 agree", "error"], rows))
    fp32_ratio = arts["tfjs-fp32"]["settings"]["converter"]["weight_bytes"] / (4 * params)
    v.check("tfjs-fp32 weight bytes within 2% of 4 x params", abs(fp32_ratio - 1) <= 0.02, f"{fp32_ratio:.4f}")
    u8_ratio = arts["tfjs-uint8"]["settings"]["converter"]["weight_bytes"] / (4 * params)
    v.check("tfjs-uint8 weight bytes <= 0.26 x (4 x params)", u8_ratio <= 0.26, f"{u8_ratio:.4f}")
    v.check("tfjs-fp32 verified in the TF.js runtime", arts["tfjs-fp32"]["status"] == "ok",
            arts["tfjs-fp32"].get("error") or f"max abs error {arts['tfjs-fp32']['verification']['max_abs_error']:.2e}")

    # --- the official converter on the same SavedModel, then both timed side by side in Node
    sm = export_saved_model(model, work)
    official = work / "official"
    if not (official / "model.json").exists():
        exe = _official_venv(args.official_venv)
        check_ok(run_child([str(exe), "--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
                            "--signature_name=serving_default", str(sm), str(official)]), "official tensorflowjs_converter")
    ours = out / arts["tfjs-fp32"]["path"]

    from deploykit.runtime_bench.tfjs.runner import TFJSRunner

    x = np.load(calib)["x"][:1].astype(np.float32)
    runners = {"deploykit": TFJSRunner(ours, threads=1, backend="wasm"),
               "official": TFJSRunner(official / "model.json", threads=1, backend="wasm")}
    outputs, samples = {}, {k: [] for k in runners}
    try:
        for name, runner in runners.items():
            runner.load()
            outputs[name] = next(iter(runner.run({runner.input_names[0]: x}).values()))
        for i in range(args.rounds):
            order = list(runners) if i % 2 == 0 else list(runners)[::-1]
            for name in order:
                samples[name] += runners[name].timed_samples(warmup=3, iterations=args.iterations)
        describe = runners["deploykit"].describe()
    finally:
        for runner in runners.values():
            runner.close()
    p50 = {k: float(np.median(s)) for k, s in samples.items()}
    print(f"\nwasm in Node ({describe.get('runtime_version')}, threads used {describe.get('threads')}, "
          f"simd {describe.get('wasm_simd')}), batch 1, {args.rounds} interleaved rounds x {args.iterations}:")
    print(table(["artifact", "p50 ms", "p90 ms", "n"],
                [[k, f"{p50[k]:.2f}", f"{np.percentile(s, 90):.2f}", len(s)] for k, s in samples.items()]))
    diff = float(np.abs(outputs["deploykit"] - outputs["official"]).max())
    print(f"max abs difference between the two artifacts' outputs: {diff:.2e}")
    ratio = p50["deploykit"] / p50["official"]
    v.check("tfjs-fp32 wasm p50 no slower than the official converter's output", ratio <= 1.0,
            f"{p50['deploykit']:.2f} / {p50['official']:.2f} ms = {ratio:.3f}x")
    if args.official_check:
        _official_check(args, work, v)
    v.exit()


BUILD_APP = r'''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras
arch, out = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
m = getattr(keras.applications, arch)(weights=None, input_shape=(96, 96, 3), include_top=False, pooling="avg")
x = np.random.default_rng(0).uniform(-1, 1, (16, 96, 96, 3)).astype("float32")
bns = [l for l in m.layers if isinstance(l, keras.layers.BatchNormalization)]
for bn in bns: bn.momentum = 0.0
if bns: m(x, training=True)
m.save(out + "/model.keras"); np.savez(out + "/x.npz", x=x); m.export(out + "/saved_model", verbose=False)
'''


def _official_check(args, work: Path, v: Verdicts) -> None:
    from deploykit.errors import DeployError
    from deploykit.runtime_bench.tfjs.runner import TFJSRunner

    rows = []
    for arch in args.official_check.split(","):
        d = work / f"check_{arch}"
        if not (d / "model.keras").exists():
            d.mkdir(parents=True, exist_ok=True)
            check_ok(run_child([PYTHON, "-c", BUILD_APP, arch, str(d)]), f"building {arch}")
        out = d / "deploy"
        shutil.rmtree(out, ignore_errors=True)
        r = run_child([DEPLOY, "convert", str(d / "model.keras"), "-t", "tfjs-fp32", "--data", str(d / "x.npz"),
                       "--out", str(out), "--no-bench"])
        check_ok(r, f"deploy convert {arch}", allowed=(0, 1))
        ours = json.loads((out / "manifest.json").read_text())["artifacts"][0]
        official = d / "official"
        if not (official / "model.json").exists():
            rr = run_child([str(_official_venv(args.official_venv)), "--input_format=tf_saved_model",
                            "--output_format=tfjs_graph_model", str(d / "saved_model"), str(official)])
            official_status = "converter failed: " + (rr.stderr.strip().splitlines() or ["?"])[-1][:80] if rr.returncode else ""
        else:
            official_status = ""
        if not official_status:
            runner = TFJSRunner(official / "model.json", threads=1)
            try:
                runner.load()
                runner.run({runner.input_names[0]: np.load(d / "x.npz")["x"][:1]})
                official_status = "runs"
            except DeployError as exc:
                official_status = "fails in TF.js: " + str(exc)[:90]
            finally:
                runner.close()
        err = ours["verification"].get("max_abs_error")
        rows.append([arch, ours["status"], f"{err:.1e}" if err is not None else "-", official_status])
        v.check(f"{arch}: our tfjs-fp32 runs in TF.js and matches Keras", ours["status"] == "ok",
                ours.get("error") or f"max abs error {err:.2e}")
    print(table(["architecture", "ours", "max abs err", "official converter's output"], rows))


if __name__ == "__main__":
    main()
