"""Time a run's artifacts side by side, per runtime, once every target is built.

Each artifact's own benchmark runs right after its conversion and verification,
seconds to minutes apart from the others'. On a shared machine the load changes
in between, and a report that compares the artifacts then compares moments, not
files: MobileNetV2's tflite-int8 measured 0.93x fp32 that way and 0.74x when the
same two files were timed in alternating rounds. So after the last target, the
benchmarked artifacts that run on the same runtime are timed again together, in
the interleaved rounds the ``-auto`` selection uses (``selection.interleaved_p50``),
and whatever load the machine has falls on all of them alike. The report compares
these figures; each file's solo benchmark (init time, memory, its own p50) stays
in the manifest beside them.

Artifacts are grouped by runtime, not across runtimes: within one runtime the
question "which quantization mode is fastest here" is what a user decides with
this, and the runners of one runtime share its thread pool behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploykit.artifacts import Artifact


def time_side_by_side(built: Sequence[tuple[Any, Artifact]], out: Path, inputs: dict[str, np.ndarray],
                      progress: Callable[[str], None]) -> list[str]:
    """Add ``benchmark["side_by_side"]`` to every benchmarked artifact that shares its runtime with another.

    ``built``: (target, artifact) pairs as the run built them (the target with the run's bench
    settings); ``inputs``: one sample per input, as the solo benchmarks used. An ``-auto`` artifact
    is a copy of its winner and shares its benchmark record, so it is not timed twice. Returns notes
    for the manifest: a group whose timing failed keeps its solo figures and is named there.
    """
    from deploykit.selection import interleaved_p50

    groups: dict[str, list[tuple[Any, Artifact]]] = {}
    for target, artifact in built:
        if artifact.path and not artifact.selection and artifact.benchmark.get("p50_ms") is not None:
            groups.setdefault(target.runtime, []).append((target, artifact))
    notes = []
    for runtime, members in groups.items():
        if len(members) < 2:
            continue
        names = [a.target for _, a in members]
        progress(f"timing {len(members)} {runtime} artifacts side by side ({', '.join(names)})")
        try:
            summaries = interleaved_p50([t for t, _ in members], [out / a.path for _, a in members], inputs)
        except Exception as exc:  # noqa: BLE001 - every file was built, verified and timed alone already:
            # a runtime that fails the second time loses the comparison, not the run.
            notes.append(f"timing {', '.join(names)} side by side failed ({' '.join(str(exc).split())[:200]}); "
                         "their p50s are solo timings")
            continue
        for (_, artifact), summary in zip(members, summaries):
            artifact.benchmark["side_by_side"] = {
                **summary, "rounds": len(summary["round_p50_ms"]),
                "with": [n for n in names if n != artifact.target],
            }
    return notes
