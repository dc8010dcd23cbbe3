"""Time a run's artifacts side by side, per runtime, once every target is built.

Each artifact's own benchmark runs right after its conversion and verification,
seconds to minutes apart from the others'. On a shared machine the load changes
in between, and a report that compares the artifacts then compares moments, not
files: MobileNetV2's tflite-int8 measured 0.93x fp32 that way and 0.74x when the
same two files were timed in alternating rounds. So after the last target, the
benchmarked artifacts that run the same way (runtime, threads, runner options
such as the TF.js backend) are timed again together, in the interleaved rounds
the ``-auto`` selection uses (``selection.interleaved_p50``, every file timed
in every round here), and whatever load the machine has falls on all of them
alike. A group that is exactly an ``-auto`` target's candidates keeps the
selection's own figures: the report then shows the numbers the choice was made
on. The report compares these figures; each file's solo benchmark (init time,
memory, its own p50) stays in the manifest beside them. Ratios between files are
medians of their paired rounds' ratios (``selection.paired_ratio``).

All runners of a group are loaded at once for the rounds: the step's memory is
the sum of the group's files in their runtimes (steps.side_by_side records this
process's peak; TF.js files run in Node children, outside it).

Files are not compared across runtimes or thread counts: "which quantization
mode is fastest on this runtime" is what a user decides with this. Two targets
that produced the same bytes (tflm-int8 and a budgeted tflm profile) are one
file: it is timed once and both records say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploykit.artifacts import Artifact


def group_key(target: Any) -> tuple:
    """What must match for two artifacts' latencies to be compared: runtime, threads, runner options."""
    from deploykit.runtime_bench import runner_options

    return (target.runtime, target.bench.threads, tuple(sorted(runner_options(target.runtime, target.options).items())))


def _already_timed_together(members: Sequence[tuple[Any, Artifact]]) -> bool:
    """True when these files were timed side by side as exactly this group already: the candidates of
    an ``-auto`` target, timed by its selection minutes ago. Timing them again doubled that cost (a 17x
    slower dynamic-int8 MobileNetV2 for 5 more rounds) and could contradict the choice in the report."""
    names = {a.target for _, a in members}
    return all("side_by_side" in a.benchmark and {a.target, *a.benchmark["side_by_side"]["with"]} == names
               for _, a in members)


def time_side_by_side(built: Sequence[tuple[Any, Artifact]], out: Path, inputs: dict[str, np.ndarray],
                      progress: Callable[[str], None]) -> list[str] | None:
    """Add ``benchmark["side_by_side"]`` to every benchmarked artifact that runs like another one.

    ``built``: (target, artifact) pairs as the run built them (the target with the run's bench
    settings); ``inputs``: one sample per input, as the solo benchmarks used. An ``-auto`` artifact
    is a copy of its winner and shares its benchmark record, so it is not timed twice. Returns None
    when no group had two files, else notes for the manifest (empty when all went well): a group
    whose timing failed keeps its solo figures and is named there.
    """
    from deploykit.selection import interleaved_p50

    groups: dict[tuple, list[tuple[Any, Artifact]]] = {}
    for target, artifact in built:
        if artifact.path and not artifact.selection and artifact.benchmark.get("p50_ms") is not None:
            groups.setdefault(group_key(target), []).append((target, artifact))
    notes: list[str] | None = None
    for members in groups.values():
        if _already_timed_together(members):
            continue
        # An -auto target's candidates keep the figures their choice was made on: timing them again beside
        # another file of the run (onnx-int16x8 with onnx-auto) gave the table other figures than the
        # choice (a 1.25x candidate shown at 0.99x). The other files are timed beside one of them, the
        # anchor (its float32 file when there is one), and compared with it in those rounds.
        chosen = [(t, a) for t, a in members if "side_by_side" in a.benchmark]
        if len({frozenset([a.target, *a.benchmark["side_by_side"]["with"]]) for _, a in chosen}) > 1:
            # two -auto targets sharing candidates timed them in two sessions (the later one's figures replaced
            # the earlier's on the shared files): ratios would pair rounds of different sessions, so all again
            chosen = []
        anchor = next((m for m in chosen if m[0].weights == "float32" and m[0].activations == "float32"),
                      chosen[0] if chosen else None)
        if anchor is not None:
            members = [(t, a) for t, a in members if "side_by_side" not in a.benchmark] + [anchor]
        files: dict[str, tuple[Any, Artifact]] = {}  # sha256 -> the first artifact with those bytes
        for target, artifact in members:
            files.setdefault(artifact.sha256 or artifact.target, (target, artifact))
        if len(files) < 2:
            continue
        notes = notes or []
        names = [a.target for _, a in members]
        timed = list(files.values())
        progress(f"timing {len(members)} {members[0][0].runtime} artifacts side by side ({', '.join(names)})")
        try:
            summaries = interleaved_p50([t for t, _ in timed], [out / a.path for _, a in timed], inputs, drop=False)
        except Exception as exc:  # noqa: BLE001 - every file was built, verified and timed alone already:
            # a runtime that fails the second time loses the comparison, not the run.
            notes.append(f"timing {', '.join(names)} side by side failed ({' '.join(str(exc).split())[:200]}); "
                         "their latencies are solo timings")
            continue
        by_file = {a.sha256 or a.target: (a.target, s) for (_, a), s in zip(timed, summaries)}
        anchored = None if anchor is None else {"target": anchor[1].target,
                                                 **by_file[anchor[1].sha256 or anchor[1].target][1]}
        for target, artifact in members:
            if anchor is not None and artifact is anchor[1]:
                continue  # keeps its selection's figures; these rounds are in the others' "anchor"
            first, summary = by_file[artifact.sha256 or artifact.target]
            artifact.benchmark["side_by_side"] = {
                **summary, "rounds": len(summary["round_p50_ms"]), "threads": target.bench.threads,
                "with": [n for n in names if n != artifact.target],
                **({"same_file_as": first} if first != artifact.target else {}),
                **({"anchor": anchored} if anchored else {}),
            }
    add_float32_ratios(built)
    return notes


def add_float32_ratios(built: Sequence[tuple[Any, Artifact]]) -> None:
    """Set ``side_by_side["vs_float32"]`` (what the report's "× fp32 p50" shows) on every artifact timed
    beside its format's float32 file: that file's name and the median of the paired rounds' ratios
    (selection.paired_ratio), how far the per-round ratios spread (selection.ratio_spread) and, past
    selection.UNSTEADY_SPREAD, ``unsteady``. A file compared with nothing, or only with files of other
    settings, gets none."""
    from deploykit.selection import paired_ratio, ratio_spread, unsteady

    # the built-in <format>-fp32 first: a user's own float32 profile listed before it is not "fp32" to divide by
    float32 = sorted((a for t, a in built if t.weights == "float32" and t.activations == "float32" and not t.is_auto
                      and "side_by_side" in a.benchmark), key=lambda a: a.target != f"{a.format}-fp32")
    for _, artifact in built:
        sbs = artifact.benchmark.get("side_by_side")
        if not sbs or artifact.selection:
            continue
        ref = next((f for f in float32 if f.format == artifact.format
                    and (f is artifact or f.target in sbs["with"])), None)
        if ref is not None:
            # timed beside an -auto's candidate in rounds of its own: paired with that file's figures there
            ref_sbs = sbs["anchor"] if (sbs.get("anchor") or {}).get("target") == ref.target else ref.benchmark["side_by_side"]
            spread = ratio_spread(sbs, ref_sbs)
            paired = min(len(sbs.get("round_p50_ms") or []), len(ref_sbs.get("round_p50_ms") or []))
            sbs["vs_float32"] = {"target": ref.target, "ratio": paired_ratio(sbs, ref_sbs), "rounds": paired,
                                 **({"spread": spread} if spread is not None else {}),
                                 # the rounds disagreed: the report marks the ratio (run_mnv3's qdq 0.22 came from 0.17..0.80)
                                 **({"unsteady": True} if unsteady(spread) else {})}
