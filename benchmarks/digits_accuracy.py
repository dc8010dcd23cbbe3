"""Figure: on the bundled digits example, tflite-int8 accuracy is within 1 point of the reference.

Builds the example (examples/digits/build_model.py: a small CNN trained on
scikit-learn's load_digits, with its preprocessing inside the model; seeded,
offline), runs ``deploykit.convert`` with every built-in tflite target on the
held-out digits.npz, and prints each target's top-1 accuracy beside the
reference Keras model's, the drop in points, top-1 agreement, verification
status, size and p50.

Threshold: reference accuracy - tflite-int8 accuracy <= 1.0 percentage point
(same held-out samples, same raw inputs). The other targets are reported, not
gated here (their own tolerances are checked by deploykit's verification and
shown in the status column).

Usage: .venv/bin/python benchmarks/digits_accuracy.py [--workdir DIR] [--epochs 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import workdir, PYTHON, ROOT, Verdicts, check_ok, machine_line, run_child, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep model, data and outputs here (default: temp dir, removed)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the example")
    parser.add_argument("--threshold", type=float, default=1.0, help="max tflite-int8 accuracy drop, points")
    parser.add_argument("--no-bench", action="store_true", help="verify only (skip latency)")
    args = parser.parse_args()

    with workdir(args.workdir, "deploykit-bench-digits-") as work:
        _run(args, work)


def _run(args, work: Path) -> None:
    print(f"digits accuracy benchmark; {machine_line()}; workdir {work}")
    example = work / "example"
    if (example / "digits.keras").exists() and (example / "digits.npz").exists():
        print(f"reusing {example}")
    else:
        r = run_child([PYTHON, str(ROOT / "examples" / "digits" / "build_model.py"), "--out", str(example),
                       "--epochs", str(args.epochs)])
        check_ok(r, "building the digits example")
        print(r.stdout.strip(), f"({r.wall_s:.1f} s)")

    import deploykit

    targets = [t.name for t in deploykit.list_targets() if t.format == "tflite"]
    out = work / "out"
    t0 = time.perf_counter()
    result = deploykit.convert(example / "digits.keras", targets, data=example / "digits.npz", out=out,
                               force=True, bench=not args.no_bench)
    print(f"deploykit.convert with {len(targets)} targets: {time.perf_counter() - t0:.1f} s")

    rows = []
    drops = {}
    for a in result.artifacts:
        ver = a.get("verification") or {}
        acc, ref = ver.get("accuracy"), ver.get("reference_accuracy")
        drop = ver.get("accuracy_drop_points")
        drops[a["target"]] = drop
        rows.append([
            a["target"], a["status"],
            "-" if ref is None else f"{ref * 100:.2f}",
            "-" if acc is None else f"{acc * 100:.2f}",
            "-" if drop is None else f"{drop:+.2f}",
            "-" if ver.get("top1_agreement") is None else f"{ver['top1_agreement'] * 100:.2f}",
            f"{a['size_bytes']:,}" if a.get("size_bytes") else "-",
            f"{a['benchmark']['p50_ms']:.3f}" if a.get("benchmark") else "-",
        ])
    print(f"\n{result['data']['eval_samples']} held-out samples")
    print(table(["target", "status", "ref acc %", "acc %", "drop pt", "agree %", "bytes", "p50 ms"], rows))
    for a in result.artifacts:
        if a["status"] != "ok":
            print(f"note: {a['target']}: {a.get('error')}")
    print()
    v = Verdicts()
    d = drops.get("tflite-int8")
    v.check("digits tflite-int8 accuracy within 1 point of reference", d is not None and d <= args.threshold + 1e-9,
            "no accuracy recorded" if d is None else f"drop {d:.2f} points (threshold {args.threshold:g})")
    v.exit()


if __name__ == "__main__":
    main()
