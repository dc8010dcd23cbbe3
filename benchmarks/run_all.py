"""Run every benchmark script one after another and summarise PASS/FAIL (what `make bench` calls).

Every ``benchmarks/*.py`` whose name does not start with ``_`` (helpers) is a
benchmark; the known ones run cheapest first, any others after them in name
order, so a new script is picked up without editing this file.

Scripts run sequentially, never in parallel: each measures ratios side by
side, and two benchmarks sharing this machine's two cores would disturb each
other. Each script's own output is streamed as it runs; the final table lists
exit code and duration per script. Exit code: 0 when every script passed,
1 otherwise.

Usage: .venv/bin/python benchmarks/run_all.py [--only startup digits_accuracy] [--skip vgg16_memory]
Arguments after ``--`` are not supported; run a script directly to pass its own options.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import CHILD_ENV, PYTHON, table  # noqa: E402

# Cheapest first, so a broken install fails fast.
ORDER = ["startup", "digits_accuracy", "mobilenetv2_tflite", "mobilenetv2_onnx", "applications_coverage", "vgg16_memory"]
FOUND = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all")
SCRIPTS = [s for s in ORDER if s in FOUND] + [s for s in FOUND if s not in ORDER]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run just these")
    parser.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[], help="leave these out")
    args = parser.parse_args()

    chosen = [s for s in (args.only or SCRIPTS) if s not in args.skip]
    results = []
    for name in chosen:
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([PYTHON, str(HERE / f"{name}.py")], env=CHILD_ENV)
        results.append([name, "PASS" if rc == 0 else f"FAIL (exit {rc})", f"{time.perf_counter() - t0:.0f}"])
    print("\n===== summary =====")
    print(table(["benchmark", "result", "seconds"], results))
    sys.exit(0 if all(r[1] == "PASS" for r in results) else 1)


if __name__ == "__main__":
    main()
