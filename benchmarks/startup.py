"""Figure: `deploy --help` and `deploy targets` each start in < 0.5 s.

Threshold: the median wall time of N (default 5) fresh subprocess runs of each
command must be below 0.5 s. The runs of all commands are interleaved round by
round, so a burst of load on this shared machine hits every command alike.

For contrast (not gated) the same table shows a bare `python -c pass` (the
interpreter's own floor) and `python -c 'import tensorflow'` (what the CLI
would cost if it imported TensorFlow eagerly), with each command's median as a
ratio of the TensorFlow import.

Usage: .venv/bin/python benchmarks/startup.py [--runs 5] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEPLOY, PYTHON, Verdicts, check_ok, machine_line, median, run_child, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="subprocess runs per command (median taken)")
    parser.add_argument("--threshold", type=float, default=0.5, help="seconds; gated commands must start faster")
    parser.add_argument("--tf-runs", type=int, default=2, help="runs of `import tensorflow` (slow; contrast only)")
    args = parser.parse_args()

    gated = {
        "deploy --help": [DEPLOY, "--help"],
        "deploy targets": [DEPLOY, "targets"],
    }
    contrast = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "python -c 'import tensorflow'": [PYTHON, "-c", "import tensorflow"],
    }
    times: dict[str, list[float]] = {k: [] for k in [*gated, *contrast]}
    rss: dict[str, int] = {}
    print(f"startup benchmark: {args.runs} runs per command, interleaved; {machine_line()}")
    for _ in range(2):  # warm the page cache so the first measured run is not a cold disk read
        for cmd in gated.values():
            run_child(cmd)
    for i in range(max(args.runs, args.tf_runs)):
        for name, cmd in {**gated, **contrast}.items():
            limit = args.tf_runs if name.endswith("tensorflow'") else args.runs
            if i >= limit:
                continue
            r = run_child(cmd)
            check_ok(r, name)
            times[name].append(r.wall_s)
            rss[name] = max(rss.get(name, 0), r.maxrss_bytes)

    tf_median = median(times["python -c 'import tensorflow'"])
    rows = []
    for name, ts in times.items():
        m = median(ts)
        rows.append([name, len(ts), f"{m:.3f}", f"{min(ts):.3f}", f"{max(ts):.3f}",
                     f"{m / tf_median:.3f}x", f"{rss[name] / 2**20:.0f} MiB",
                     f"< {args.threshold:g} s" if name in gated else "(contrast)"])
    print()
    print(table(["command", "n", "median s", "min s", "max s", "vs import tf", "peak RSS", "gate"], rows))
    print()
    v = Verdicts()
    for name in gated:
        m = median(times[name])
        v.check(f"startup `{name}`", m < args.threshold,
                f"median {m:.3f} s (threshold < {args.threshold:g} s; {m / tf_median:.3f}x of `import tensorflow`)")
    v.exit()


if __name__ == "__main__":
    main()
