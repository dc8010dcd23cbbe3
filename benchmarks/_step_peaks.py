"""Exact peak RSS of each deploykit pipeline step, read from the kernel (helper, Linux only).

Runs ``deploykit.convert`` in this process with a progress callback. At every
step boundary it reads ``VmHWM`` (the kernel's resident high-water mark) from
/proc/self/status, then resets it by writing ``5`` to /proc/self/clear_refs, so
each reading is the true peak of the step that just ended -- no sampling gaps.

Why not the manifest's own figures: deploykit samples RSS from a Python
thread, and the TFLite converter holds the GIL for seconds at a time (a 5 ms
sampler measured here went up to 1.7 s without a sample during a
MobileNetV2 conversion), so a conversion's peak can be missed entirely.

The reset also resets this process's ``ru_maxrss``, which is why this runs as
its own process and never inside a process whose lifetime peak is measured.

Step names follow deploykit's progress messages; a step ends where the next
begins, so "<target>: benchmarking" also covers writing sizes/hashes, and the
last one covers writing the manifest and reports.

Usage: python benchmarks/_step_peaks.py MODEL DATA OUT -t T [-t T ...] [--iterations N] [--warmup N] [--verify-samples N]
Prints one line "STEP_PEAKS_JSON " + a JSON object: {"steps": [{"step", "seconds", "peak_rss_bytes", "end_rss_bytes"}], "reset": bool, "manifest": {...}}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1)) * 1024


def _reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("-t", "--target", action="append", required=True)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--verify-samples", type=int, default=1000)
    args = parser.parse_args()

    steps: list[dict] = []
    state = {"name": "start (imports)", "t": time.perf_counter()}
    resets = [_reset()]

    def close_step(next_name: str) -> None:
        now = time.perf_counter()
        steps.append({"step": state["name"], "seconds": round(now - state["t"], 2),
                      "peak_rss_bytes": _status("VmHWM"), "end_rss_bytes": _status("VmRSS")})
        resets.append(_reset())
        state.update(name=next_name, t=time.perf_counter())

    import deploykit

    result = deploykit.convert(args.model, args.target, data=args.data, out=args.out, iterations=args.iterations,
                               warmup=args.warmup, verify_samples=args.verify_samples, progress=close_step)
    close_step("")
    sys.stdout.write("\nSTEP_PEAKS_JSON " + json.dumps({"steps": steps, "reset": all(resets), "manifest": result.manifest}) + "\n")


if __name__ == "__main__":
    main()
