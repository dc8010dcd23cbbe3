"""Turn manifest artifacts into report rows (formatting only, no computation of results)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.artifacts import FEW_SAMPLES, Artifact, Manifest
from deploykit.selection import ROUNDS, TIE_RATIO

COLUMNS = [
    ("target", "Target"),
    ("status", "Status"),
    ("size", "Size"),
    ("gzip", "gzip"),
    ("size_ratio", "× fp32 size"),
    ("p50", "p50 ms"),
    ("p50_ratio", "× fp32 p50"),
    ("p90", "p90 ms"),
    ("p99", "p99 ms"),
    ("init", "init ms"),
    ("accuracy", "Accuracy"),
    ("drop", "Δ acc (pts)"),
    ("agreement", "Top-1 agree"),
    ("max_err", "Max abs err"),
    ("peak", "Runtime mem"),
]


def columns(manifest: Manifest) -> list[tuple[str, str]]:
    """The Targets table's columns: a regression model's files are scored by their error against the
    targets, which the accuracy columns then hold (headed "Δ acc (pts)" over "+0.3 % MAE" before)."""
    scored = [a.verification for a in manifest.artifacts if a.verification]
    if scored and any("mae" in v for v in scored) and not any("accuracy" in v for v in scored):
        return [(k, {"accuracy": "Error", "drop": "Δ error"}.get(k, t)) for k, t in COLUMNS]
    return COLUMNS


def human_bytes(n: float | None) -> str:
    """Binary units, named as such (KiB, MiB, GiB): a "KB" of 1024 bytes read 2.4 % small against `ls`."""
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def threads_text(n: Any) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} thread" if n == 1 else f"{n} threads"


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def latency_ms(value: float | None) -> str:
    """Milliseconds to 3 decimals, or 3 significant digits below 1 ms (trailing zeros kept): a 4 us
    model read "0.004" for 0.0035 to 0.0045, which hid the 10-20 % differences the table is there to show."""
    if value is None:
        return "–"
    if not math.isfinite(value) or value <= 0:
        return f"{value:g}"
    return f"{value:.3f}" if value >= 0.9995 else f"{value:#.3g}"


def _reference_sizes(manifest: Manifest) -> dict[str, int]:
    """Per format, the size of its float32 artifact: what "× fp32 size" divides by (never across formats).
    The built-in ``<format>-fp32`` file when the run has it, else the first float32 one (as × fp32 p50)."""
    sizes: dict[str, int] = {}
    for a in sorted(manifest.artifacts, key=lambda a: a.target != f"{a.format}-fp32"):
        t = a.settings.get("target", {})
        if t.get("weights") == "float32" and t.get("activations") == "float32" and not t.get("candidates") and a.size_bytes:
            sizes.setdefault(a.format, a.size_bytes)
    return sizes


def timing(a: Artifact) -> dict[str, Any]:
    """The latency figures the report compares: the side-by-side timing when the run had one (the
    artifact timed in interleaved rounds with the others of its runtime, see deploykit.side_by_side),
    else the artifact's own benchmark."""
    return a.benchmark.get("side_by_side") or a.benchmark


def _p50_ratio(a: Artifact) -> str:
    """The side-by-side latency against the same format's float32 file timed beside it (computed by
    deploykit.side_by_side: the median of the paired rounds' ratios); "–" when there was none."""
    sbs = a.benchmark.get("side_by_side") or {}
    vs = sbs.get("vs_float32") or {}
    if vs.get("ratio") is None:
        return "–"
    # a candidate an -auto target stopped timing as clearly slower: the median of its 2 rounds is rough
    # (one fp32 outlier round made 2.65 of a steady 3.0, beside a selection text saying "at least 3.04x")
    rounds = vs.get("rounds", len(sbs.get("round_p50_ms") or []))  # the paired ones: either file may have stopped
    short = f" ({rounds} rounds)" if 0 < rounds < ROUNDS else ""
    return f"{vs['ratio']:.2f}" + (" (unsteady)" if vs.get("unsteady") else short)


def _error_change(v: dict[str, Any]) -> str:
    """A regression artifact's error against the targets beside the reference's: '+3.1 % MAE'."""
    if v.get("mae_increase") is None:
        return f"MAE ref {v['reference_mae']:.3g}"
    return f"{v['mae_increase'] * 100:+.1f} % MAE".replace("+0.0 %", "0.0 %").replace("-0.0 %", "0.0 %")


def _quality(v: dict[str, Any]) -> str:
    """The Accuracy cell: accuracy, or a regression model's "MAE x" (a verification record or an -auto candidate row)."""
    return _fmt(v.get("accuracy"), ".2%") if v.get("mae") is None else f"MAE {v['mae']:.4g}"


def _quality_change(v: dict[str, Any]) -> str:
    """The Δ acc cell: shown as a change (negative = accuracy lost, 0.00 without a sign when equal), or the MAE's change."""
    if v.get("mae") is not None:
        return _error_change(v)
    if v.get("accuracy_drop_points") is None:
        return "–"
    return f"{-v['accuracy_drop_points'] + 0.0:+.2f}".replace("+0.00", "0.00").replace("-0.00", "0.00")


def row(a: Artifact, ref_size: int | None) -> dict[str, str]:
    """One report row; ``ref_size``: the same format's float32 artifact size (None: no ratio)."""
    v, b = a.verification, timing(a)
    peak = a.benchmark.get("runtime_memory_bytes")
    return {
        "target": a.target + (f" (candidate of {a.candidate_of})" if a.candidate_of else "")
        + (f" → {a.selection.get('winner')}" if a.selection.get("winner") else ""),
        "status": "✅ ok" if a.status == "ok" else "❌ failed",
        "size": human_bytes(a.size_bytes) if a.size_bytes else "–",
        "gzip": human_bytes(a.gzip_bytes) if a.gzip_bytes else "–",
        "size_ratio": f"{a.size_bytes / ref_size:.2f}" if ref_size and a.size_bytes else "–",
        "p50": latency_ms(b.get("p50_ms")),
        "p50_ratio": _p50_ratio(a),
        "p90": latency_ms(b.get("p90_ms")),
        "p99": latency_ms(b.get("p99_ms")),
        "init": _fmt(a.benchmark.get("init_ms"), ".1f"),
        "accuracy": _quality(v),
        "drop": _quality_change(v),
        "agreement": _fmt(v.get("top1_agreement"), ".2%"),
        "max_err": _fmt(v.get("max_abs_error"), ".2e"),
        "peak": human_bytes(peak) if peak else "–",
    }


def table(manifest: Manifest) -> list[dict[str, str]]:
    refs = _reference_sizes(manifest)
    return [row(a, refs.get(a.format)) for a in manifest.artifacts]


def _changed_answers(v: dict[str, Any]) -> int:
    """How many samples' top-1 answers the artifact changed from the reference's (ties included, where
    verification counted them; agreement counts a tie as kept)."""
    if v.get("changed_answers") is not None:
        return int(v["changed_answers"])
    return int(round((1.0 - v["top1_agreement"]) * v["samples"]))


def _accuracy_beyond_chance(v: dict[str, Any]) -> float:
    """An artifact's accuracy, or the reference's when it is above it by no more than chance: a file that
    changed k answers gains a net sample or two by luck (net <= 2 sqrt(k), a sign test's spread), and was
    named the most accurate for one lucky sample in 400 beside files that reproduce the model. A loss is
    kept as it is: a file below the reference is never ranked as if it were not."""
    if v.get("accuracy_per") or v.get("top1_agreement") is None or not v.get("samples") or v.get("reference_accuracy") is None:
        return v["accuracy"]
    net = (v["accuracy"] - v["reference_accuracy"]) * v["samples"]
    return v["reference_accuracy"] if 0 < net <= 2.0 * math.sqrt(_changed_answers(v)) else v["accuracy"]


def _error_beyond_chance(v: dict[str, Any]) -> float:
    """An artifact's MAE against the targets, or the reference's when it is below it or above it by float
    noise (0.01 %): a file is judged by how well it copies the model, and one that scores better than the
    model on this data does so by luck (a uint8 file 0.0014 % below the reference's MAE was named the
    lowest error beside float files that reproduce the model exactly). A loss is kept as it is."""
    mae, ref = v["mae"], v.get("reference_mae")
    return ref if ref is not None and mae <= ref * (1 + 1e-4) else mae


def _relative_p50(a: Any, fast: Any) -> float:
    """``a``'s latency over ``fast``'s: from their paired rounds against the same float32 file when both
    were timed side by side (the table's × fp32 p50), else from their p50s."""
    va = (a.benchmark.get("side_by_side") or {}).get("vs_float32") or {}
    vf = (fast.benchmark.get("side_by_side") or {}).get("vs_float32") or {}
    if va.get("ratio") and vf.get("ratio") and va.get("target") == vf.get("target"):
        return va["ratio"] / vf["ratio"]
    return timing(a)["p50_ms"] / timing(fast)["p50_ms"]


# Max abs errors at or below this are float32 rounding (a few ulps of values near 1): no file is closer.
FLOAT_ROUNDING = 1e-5


def highlights(manifest: Manifest) -> list[str]:
    """One line each: smallest, fastest, most accurate among the artifacts that passed (an -auto
    target's copy of a file in the run is not counted twice)."""
    ok = [a for a in manifest.artifacts if a.status == "ok"]
    ok = [a for a in ok if not (a.selection and a.sha256 and any(b is not a and b.sha256 == a.sha256 for b in ok))]
    lines = []
    if ok:
        small = min(ok, key=lambda a: a.size_bytes)
        # the smallest file on the device and the smallest download differ when formats compress differently
        # (a TFLite Micro C array's file vs TF.js's uint8 shards): a pruned run's point is the download
        download = min(ok, key=lambda a: (a.gzip_bytes if a.gzip_bytes is not None else a.size_bytes, a.size_bytes))
        lines.append(f"Smallest: **{small.target}** ({human_bytes(small.size_bytes)}, gzip {human_bytes(small.gzip_bytes)})"
                     + (f"; smallest download: **{download.target}** (gzip {human_bytes(download.gzip_bytes)}, "
                        f"{human_bytes(download.size_bytes)} unpacked)"
                        if download is not small and download.gzip_bytes is not None and small.gzip_bytes is not None
                        and download.gzip_bytes < small.gzip_bytes else ""))
        timed = [a for a in ok if timing(a).get("p50_ms") is not None]
        if timed:
            fast = min(timed, key=lambda a: timing(a)["p50_ms"])
            for _ in range(len(timed)):  # the paired rounds (the table's × fp32 p50) outrank separate p50s:
                quicker = [a for a in timed if _relative_p50(a, fast) < 1 / TIE_RATIO]  # a file 17 % faster by them
                if not quicker:                                                         # was called "within 3 %"
                    break
                fast = min(quicker, key=lambda a: _relative_p50(a, fast))
            # within the -auto targets' tie ratio, either way: naming one file alone read as a measured difference
            tied = [a.target for a in sorted(timed, key=lambda a: timing(a)["p50_ms"])
                    if a is not fast and 1 / TIE_RATIO <= _relative_p50(a, fast) <= TIE_RATIO][:2]
            lines.append(f"Fastest: **{fast.target}** (p50 {latency_ms(timing(fast)['p50_ms'])} ms, {threads_text(fast.benchmark.get('threads'))}"
                         + (f"; {' and '.join(tied)} within {TIE_RATIO - 1:.0%} of it: a tie" if tied else "") + ")")
        acc = [a for a in ok if a.verification.get("accuracy") is not None]
        if acc:
            # ties go to the artifact closest to the reference, then the smaller one
            best = max(acc, key=lambda a: (_accuracy_beyond_chance(a.verification), -(a.verification.get("max_abs_error") or 0.0),
                                           -a.size_bytes))
            per = " of labelled positions (pixels or steps)" if best.verification.get("accuracy_per") else ""
            level = _accuracy_beyond_chance(best.verification)
            tied = sum(1 for a in acc if a is not best and _accuracy_beyond_chance(a.verification) == level)
            luckier = [a for a in acc if a.verification["accuracy"] > best.verification["accuracy"]
                       and _accuracy_beyond_chance(a.verification) != a.verification["accuracy"]]  # ranked by chance
            # float32 files a few 1e-7 apart: which is "closest" flips with the reference's batch size
            rounding = [a.target for a in acc if a is not best and _accuracy_beyond_chance(a.verification) == level
                        and (a.verification.get("max_abs_error") or 0.0) <= FLOAT_ROUNDING] \
                if (best.verification.get("max_abs_error") or 0.0) <= FLOAT_ROUNDING else []
            lines.append(
                f"Most accurate: **{best.target}** ({best.verification['accuracy']:.2%}{per}; reference "
                f"{best.verification['reference_accuracy']:.2%}"
                + (f"; {tied} other artifact{'s' if tied > 1 else ''} as accurate, this one closest to the reference"
                   + (f", a tie with {', '.join(rounding[:2])}{' and others' if len(rounding) > 2 else ''}: they differ "
                      f"from it by float32 rounding alone (max abs error at most {FLOAT_ROUNDING:g})" if rounding else "")
                   if tied else "")
                + "".join(f"; {a.target}'s {a.verification['accuracy']:.2%} is within chance on the "
                          + (f"{_changed_answers(a.verification)} answers it changed" if _changed_answers(a.verification) != 1
                             else "one answer it changed") for a in luckier[:2])
                + _likewise(luckier[2:]) + ")"
            )
        scored = [a for a in ok if a.verification.get("mae") is not None]
        if scored:
            # ties go to the artifact closest to the reference, then the smaller one (as for accuracy)
            best = min(scored, key=lambda a: (_error_beyond_chance(a.verification),
                                              a.verification.get("max_abs_error") or 0.0, a.size_bytes))
            v = best.verification
            # a lower MAE than the table shows for the named file: said as what it is, as for accuracy
            luckier = [a for a in scored if a.verification["mae"] < v["mae"]
                       and _error_beyond_chance(a.verification) != a.verification["mae"]]
            lines.append(f"Lowest error against the targets: **{best.target}** (MAE {v['mae']:.4g}, RMSE {v['rmse']:.4g} "
                         f"on output `{v['scored_output']}`; reference MAE {v['reference_mae']:.4g}, RMSE {v['reference_rmse']:.4g}"
                         + "".join(f"; {a.target}'s MAE {a.verification['mae']:.4g} below the reference's is chance on this "
                                   "data: an artifact is ranked by how closely it copies the model" for a in luckier[:2])
                         + _likewise(luckier[2:]) + ")")
    failed = [a for a in manifest.artifacts if a.status != "ok"]
    if failed:
        lines.append(f"Failed: {', '.join('**' + a.target + '**' for a in failed)} (details below)")
    # printed by the CLI too; in the report, where the verdicts it qualifies are read
    lines += [f"**Warning:** {w}" for w in data_warnings(manifest) + input_name_warnings(manifest)]
    return lines


def table_note(manifest: Manifest) -> str | None:
    """What the Targets table's figures are where they could be misread: which latencies were timed side
    by side (and where that failed), or p50 beside -auto choices made in interleaved rounds."""
    notes = []
    side_by_side = [a.benchmark["side_by_side"] for a in manifest.artifacts if "side_by_side" in a.benchmark]
    if side_by_side:
        how = [f"{max(s['rounds'] for s in side_by_side)} interleaved rounds, the same load on each"]
        if any(a.selection and a.selection.get("rounds") for a in manifest.artifacts):
            how.append("an -auto target's candidates as its selection timed them"
                       + (", the run's other files beside its float32 candidate in rounds of their own"
                          if any("anchor" in s for s in side_by_side) else ""))
        if any("dropped_after_rounds" in s for s in side_by_side):
            how.append("a candidate at least 2x slower than the fastest in each of the first rounds was timed for those only")
        notes.append("Latencies of files that run alike (same runtime, threads and backend) were timed again side by side "
                     f"once all were built ({'; '.join(how)}), so their rows compare files, not moments; × fp32 p50 is "
                     "taken from those timings only. Each file's solo benchmark is in manifest.json.")
        alone = [a.target for a in manifest.artifacts if a.benchmark.get("p50_ms") is not None
                 and "side_by_side" not in a.benchmark]
        if alone:
            notes.append(f"Timed on their own (no other file ran alike, or the comparison failed): {', '.join(alone)}.")
    elif any(a.selection and a.selection.get("rounds") for a in manifest.artifacts) and \
            any(timing(a).get("p50_ms") is not None for a in manifest.artifacts):  # --no-bench: no p50 to describe
        notes.append("p50 in this table is each file timed on its own; the -auto choices compare their candidates in "
                     "interleaved rounds (Auto selection below), which holds on a loaded machine where solo timings drift.")
    from deploykit.selection import UNSTEADY_SPREAD

    unsteady = [a.target for a in manifest.artifacts
                if ((a.benchmark.get("side_by_side") or {}).get("vs_float32") or {}).get("unsteady")]
    if unsteady:
        notes.append(f"× fp32 p50 marked (unsteady) ({', '.join(unsteady)}): that file's per-round ratios to fp32 spanned "
                     f"more than {UNSTEADY_SPREAD:g}x, the machine's load changed between rounds, and the median is not a "
                     "figure to rely on; time the files again with `deploy bench` on a quieter machine.")
    # A p90 far above the p50: the file swings between speeds (run_mnv3's tflite-dynamic ran 0.7 ms and
    # 10-13 ms in phases at 2 threads), which neither p50 nor a ratio says.
    swinging = [(a.target, timing(a)) for a in manifest.artifacts if a.status == "ok"
                and (timing(a).get("p50_ms") or 0) > 0 and (timing(a).get("p90_ms") or 0) >= SWINGING_P90 * timing(a)["p50_ms"]]
    if swinging:
        notes.append("Latency that swings: " + ", ".join(
            f"{t} p90 {latency_ms(x['p90_ms'])} ms is {x['p90_ms'] / x['p50_ms']:.1f}x its p50 {latency_ms(x['p50_ms'])} ms"
            for t, x in swinging) + " (the runtime switching between speeds, or load on this machine); time "
            f"{'it' if len(swinging) == 1 else 'them'} on the device before choosing for speed.")
    refs = _reference_sizes(manifest)
    # Quantized files no smaller than float32 (a tiny model: scales, zero points and quantize nodes
    # outweigh the weight bytes saved), where the targets' descriptions promise half or a quarter.
    larger = [(a.target, a.size_bytes / refs[a.format]) for a in manifest.artifacts
              if a.status == "ok" and refs.get(a.format) and a.size_bytes >= refs[a.format]
              and a.settings.get("target", {}).get("weights") not in (None, "float32")]
    if larger:
        notes.append("No smaller than float32: " + ", ".join(f"{t} is {r:.2f}x" for t, r in larger)
                     + " the float32 file of its format; on a model this small the quantization parameters, the "
                     "(de)quantize steps and the graph outweigh the weight bytes saved.")
    notes += [f"Note: {n}." for n in manifest.steps.get("side_by_side", {}).get("notes", [])]
    return " ".join(notes) or None


SWINGING_P90 = 3.0  # p90 at this many times the p50 or more: noted under the Targets table


def selection_lines(manifest: Manifest) -> list[str]:
    """Markdown lines explaining each -auto decision: every candidate and why the winner won."""
    lines: list[str] = []
    by_name = {x.target: x for x in manifest.artifacts}
    titles = dict(columns(manifest))  # as the Targets table heads them ("Error" on a regression run)
    for a in manifest.artifacts:
        sel = a.selection
        if not sel:
            continue
        rows = sel.get("candidates", [])
        timed = bool(sel.get("rounds"))
        p50s = {r["target"]: _candidate_p50(r, timed, by_name.get(r["target"])) for r in rows}
        timing = ("interleaved p50 ms" if timed else "side-by-side p50 ms" if any(w == "side by side" for _, w in p50s.values())
                  else "solo p50 ms")
        head = ["Candidate", "Status", "Size", "gzip", timing] + (["× winner (paired rounds)"] if timed else []) + [
            titles["accuracy"], titles["drop"], "Top-1 agree", "Max abs err"]
        lines += [f"### {a.target}", "", sel.get("reason", ""), "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in rows:
            mark = " (winner)" if r["target"] == sel.get("winner") else ""
            p50, where = p50s[r["target"]]
            cells = [f"{r['target']}{mark}", r["status"], human_bytes(r["size_bytes"]) if r["size_bytes"] else "–",
                     human_bytes(r.get("gzip_bytes")) if r.get("gzip_bytes") else "–",
                     latency_ms(p50) + (" (solo)" if where == "solo" and timing.startswith("side") else "")]
            if timed:
                cells.append(_vs_winner(r, mark))
            cells += [_quality(r), _quality_change(r), _fmt(r.get("top1_agreement"), ".2%"),
                      _fmt(r.get("max_abs_error"), ".2e")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [*_retimed_note(manifest, a), ""]
    return lines


def _candidate_p50(r: dict[str, Any], timed: bool, built: Artifact | None) -> tuple[float | None, str]:
    """A candidate's p50 in its -auto table, and where it comes from. Timed for the choice: the rounds'
    figure only (a failed candidate timed alone, as it was also requested, showed its solo p50 beside the
    winner's interleaved one, as if it had won). Otherwise the side-by-side figure the Targets table shows
    for the same file, when the run timed one (tfjs-auto listed solo p50s 1.9x apart for files the Targets
    table showed level), else its solo p50."""
    if timed:
        return r.get("interleaved_p50_ms"), "interleaved"
    sbs = (built.benchmark.get("side_by_side") or {}) if built is not None and r.get("status") == "ok" else {}
    if sbs.get("p50_ms") is not None:
        return sbs["p50_ms"], "side by side"
    return r.get("p50_ms"), "solo"


def _vs_winner(r: dict[str, Any], mark: str) -> str:
    """The × winner cell: the paired-round ratio the reason gives, marked when its rounds disagreed."""
    if mark:
        return "1.00"
    if r.get("ratio_to_winner") is None:
        return "dropped" if r.get("dropped_after_rounds") else "–"  # its ratio was to the fastest, in 2 rounds
    return f"{r['ratio_to_winner']:.2f}" + (" (unsteady)" if r.get("unsteady") else "")


def _retimed_note(manifest: Manifest, auto: Artifact) -> list[str]:
    """When the run's side-by-side timing after the build (the Targets table's figures) found another
    candidate faster than the one the selection shipped, by the selection's own rule (not a tie), say
    so here: the two timings of the same files are minutes apart, and a reader saw "X ships: fastest"
    beside a table ranking it slower. Not when those figures are the selection's own (a group that is
    exactly the candidates is not timed again)."""
    from deploykit.selection import ties

    sel = auto.selection
    if not sel.get("rounds"):
        return []
    by_name = {x.target: x for x in manifest.artifacts}
    winner = by_name.get(sel.get("winner"))
    sbs = lambda x: x.benchmark.get("side_by_side") or {}  # noqa: E731
    if winner is None or not sbs(winner).get("round_p50_ms"):
        return []
    if {winner.target, *sbs(winner).get("with", [])} <= {r["target"] for r in sel.get("candidates", [])}:
        return []  # the selection's own rounds
    faster = []
    for r in sel.get("candidates", []):
        other = by_name.get(r["target"])
        if other is None or other is winner or r.get("status") != "ok":
            continue
        pairs = [(w, o) for w, o in zip(sbs(winner).get("round_p50_ms", []), sbs(other).get("round_p50_ms", [])) if w and o]
        if len(pairs) < 2:
            continue
        ratio = float(np.median([w / o for w, o in pairs]))
        wins = sum(w <= o for w, o in pairs)
        if not ties(ratio, wins):
            faster.append((ratio, other, len(pairs), wins))
    if not faster:
        return []
    ratio, other, n, wins = max(faster, key=lambda t: t[0])
    return ["", f"Timed again after the build beside the run's other files (the Targets table), {auto.selection['winner']} "
            # the ratio alone: the pooled p50s the Targets table shows are not what it is built from
            f"measured {ratio:.2f}x {other.target} (median of {n} paired rounds' ratios, slower in "
            f"{n - wins} of them). The two timings of the same files, minutes apart, disagree: "
            "each compares the files under one load, and the machine's load changed between them. Time them again "
            f"with `deploy bench {winner.path} {other.path}` before relying on either."]


def op_profile_lines(manifest: Manifest, top: int = 5) -> list[str]:
    """Markdown lines: the most expensive op types per profiled artifact."""
    lines: list[str] = []
    for a in manifest.artifacts:
        prof = a.benchmark.get("op_profile") if a.benchmark else None
        if not prof or a.selection:
            continue
        ops = ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in prof["top_op_types"][:top])
        lines.append(f"- **{a.target}** ({a.benchmark.get('runtime')}, {threads_text(a.benchmark.get('threads'))}, "
                     f"optimization {a.benchmark.get('graph_optimization_level')}): {ops}")
    return lines


def verification_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: how each artifact's outputs were judged where that is not plain elementwise."""
    return [f"- **{a.target}**: {note}" for a in manifest.artifacts if not a.selection  # -auto repeats its winner
            for note in a.verification.get("notes", [])]


def footprint_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: microcontroller flash/arena figures, budgets and the heaviest layers."""
    lines: list[str] = []
    for a in manifest.artifacts:
        fp = a.footprint
        if not fp:
            continue
        opts = a.settings.get("target", {}).get("options", {})
        flash_budget = f" of {human_bytes(opts['flash_budget_kb'] * 1024)} budget" if opts.get("flash_budget_kb") else ""
        ram_budget = f" of {opts['ram_budget_kb']} KiB budget" if opts.get("ram_budget_kb") else ""
        heavy = ", ".join(f"{h['op']}{_graph_scope(h)} {human_bytes(h['weight_bytes'])}"
                          for h in fp.get("heaviest_layers", [])[:3])
        lines.append(
            f"- **{a.target}**: flash {human_bytes(fp.get('model_bytes'))}{flash_budget}; tensor arena "
            f"{_exact_bytes(fp.get('arena_bytes'))}{ram_budget} (the smallest arena, in 16-byte steps, in which TFLite Micro's "
            f"reference kernels allocated and ran the model here; `model_io.h` defines it, with the ops to register; "
            f"optimized kernels such as "
            f"CMSIS-NN may need more: leave headroom); heaviest layers: {heavy or '–'}"
        )
    return lines


def _graph_scope(heavy: dict[str, Any]) -> str:
    """` at <layer>` for one of the heaviest TFLite ops: the Keras layer the converter found its output tensor
    in (``layer``), or for a manifest without it the scope of the tensor (``model_1/conv2d_1_2/Relu;...``)
    as the export wrote it; the op type alone ("CONV_2D 4.6 KiB, CONV_2D 208 B") named no layer."""
    from deploykit.layer_scopes import layer_at

    scope = heavy.get("layer") or layer_at(heavy.get("output", ""), {})
    return f" at `{scope}`" if scope else ""


def _exact_bytes(n: int | None) -> str:
    """Bytes to the byte (an arena rounded to 0.1 KiB may be too small to allocate), then in KiB."""
    return "–" if n is None else f"{n:,} bytes ({human_bytes(n)})"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


# Pruning/QAT within this many points of accuracy is "nearly free" (the figure tfmot advertises);
# beyond it the user is told, since every artifact then faithfully matches a worse model.
FINE_TUNE_WARN_POINTS = 1.0
FINE_TUNE_WARN_LOSS_RATIO = 1.5  # a regression model's validation loss grown by half is worth a warning


def converter_notes(manifest: Manifest) -> list[str]:
    """One line per shipped artifact whose converter did something its target's name does not say
    (e.g. a tflite-dynamic file with no int8 weight)."""
    out = []
    for a in manifest.artifacts:
        conv = a.settings.get("converter") or {}
        if a.status != "ok" or a.candidate_of:
            continue
        if conv.get("note"):
            out.append(f"{a.target}: {conv['note']}")
        if conv.get("execute_async_ops"):
            out.append(f"{a.target}: the graph has ops TF.js runs only asynchronously ({', '.join(conv['execute_async_ops'])}): "
                       "call model.executeAsync(), not model.execute() or predict(), which throw on them")
        if conv.get("fixed_batch") and conv.get("fixed_batch_reason"):  # (TFLite Micro runs batch 1 by design)
            out.append(f"{a.target}: takes batches of exactly {conv['fixed_batch']} ({conv['fixed_batch_reason']}); "
                       "run it once per sample")
        runs_on = _runner_settings(a)
        if runs_on:  # a file verified on TF.js's cpu backend may fail on wasm: nothing in model.json says so
            out.append(f"{a.target}: verified{' and timed' if a.benchmark else ''} with "
                       + ", ".join(f"{k} = {v!r}" for k, v in runs_on.items())
                       + (f" (run it the same way: tf.setBackend({runs_on['backend']!r}) before loading)"
                          if a.format == "tfjs" and "backend" in runs_on else ""))
    return out


def _runner_settings(a: Artifact) -> dict[str, Any]:
    """The target options that changed how the runtime ran this file, where they differ from its runner's defaults."""
    target = a.settings.get("target") or {}
    runtime, options = target.get("runtime"), target.get("options") or {}
    if not runtime or not options:
        return {}
    from deploykit.runtime_bench import changed_runner_options

    try:
        return changed_runner_options(runtime, options)
    except Exception:  # noqa: BLE001 - a manifest from another version naming a runtime not here: no note
        return {}


def target_description(a: Artifact) -> str:
    """The target's own description, or what its fields say when it has none (a user target file)."""
    target = a.settings.get("target") or {}
    if target.get("description"):
        return target["description"]
    fields = [f"{k} {target[k]}" for k in ("weights", "activations", "io") if target.get(k)]
    return (f"{target.get('format', a.format)} ({', '.join(fields)})" if fields else a.format) + " — user target, no description"


def converter_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: :func:`converter_notes` as a list."""
    return [f"- {note}" for note in converter_notes(manifest)]


def _likewise(rest: list[Any]) -> str:
    """"; likewise a, b" for the artifacts scoring above the named one past the two explained (five showed
    96.22 % beside the named 95.97 %, and three of them went without a word)."""
    return f"; likewise {', '.join(a.target for a in rest)}" if rest else ""


def data_warnings(manifest: Manifest) -> list[str]:
    """One line when the run's checks rested on very few samples: every verdict (and each
    calibrated file's integer ranges) then says little about the data the model meets in use;
    one when the data's labels scored no output; one when the model's outputs were the same for every sample."""
    d = manifest.data
    n, calib = d.get("eval_samples"), d.get("samples")
    copies = {key: d[f"{distinct}"] for key, distinct in (("n", "eval_distinct_samples"), ("calib", "distinct_samples"))
              if isinstance(d.get(distinct), int)}
    n, calib = copies.get("n", n), copies.get("calib", calib)
    # what no artifact reached is not qualified: a run whose every file failed to convert said each "was verified"
    verified = [a for a in manifest.artifacts if a.verification]
    calibrated = any((a.settings.get("target") or {}).get("activations") in ("int8", "uint8", "int16") for a in verified)
    few_eval = bool(verified) and isinstance(n, int) and n < FEW_SAMPLES
    few_calib = calibrated and isinstance(calib, int) and calib < FEW_SAMPLES
    named = "the label output asked for" in str(d.get("labels_unused"))  # --label-output given: it is the one
    said = [f"{d['labels_unused']} in {d.get('eval_source')}: accuracy is not measured; pass the labels "
            + ("that output gives" if named else "of a class output (or name one with --label-output)")] \
        if d.get("labels_unused") else []
    if d.get("constant_outputs") and verified:  # an untrained model (weights=None) or a collapsed layer: nothing was really compared
        said.append(f"the model gave the same {'output' if len(d['constant_outputs']) == 1 else 'outputs'} "
                    f"({', '.join(map(repr, d['constant_outputs']))}) for every sample of {d.get('eval_source')} "
                    "(within float32 rounding): each artifact matched a constant, which says little of the model's "
                    "function; an untrained model gives such outputs (keras.applications with weights=None), and so "
                    "does data of one kind: verify on data whose answers vary")
    if not (few_eval or few_calib):
        return said
    what = " and ".join(w for w, on in (
        (f"every artifact was verified on {n}{' different' if 'n' in copies else ''} sample{'s' if n != 1 else ''} of "
         f"{d.get('eval_source')}", few_eval),
        (f"integer ranges were calibrated on {calib}{' different' if 'calib' in copies else ''} sample"
         f"{'s' if calib != 1 else ''} of {d.get('source')}", few_calib)) if on)
    # a regression model's values are scored by MAE/RMSE: no answer to change, no accuracy to move
    scored = any("accuracy" in (a.verification or {}) for a in manifest.artifacts)
    step = f" (one changed answer moves accuracy by {100 / n:.0f} points)" if few_eval and n and scored else ""
    return [f"{what}{step}: too few to trust; pass a few hundred representative samples with --data"
            + (" (or --eval-data)" if few_eval else "")] + said


# Names Keras gives an input nobody named, numbered by how many tensors the session made before:
# the same model exported from another notebook session takes `keras_tensor_5` instead of `keras_tensor`.
_UNNAMED_INPUT = re.compile(r"keras_tensor(_\d+)?|input_layer(_\d+)?|input_\d+")


def input_name_warnings(manifest: Manifest) -> list[str]:
    """One line when the model's inputs carry names Keras made up: apps feed artifacts by those names."""
    unnamed = [i["name"] for i in manifest.model.get("inputs", []) if _UNNAMED_INPUT.fullmatch(str(i.get("name", "")))]
    if not unnamed:
        return []
    k = "tf_keras" if manifest.model.get("kind") == "tf_keras" else "keras"
    return [f"input {', '.join(map(repr, unnamed))} has the name Keras numbers by session, not one of its own: the "
            "artifacts take it under that name, and the same model built in another session takes another; name it "
            f"where the model is built, e.g. {k}.Input(shape, name=\"pixels\"), save it and convert again"]


# An output the labels did not train (a multi-output model's other heads) moved this share of its spread,
# or kept fewer than this share of its answers: warned like a lost accuracy point.
DISTILLED_WARN_SPREAD = 0.5
DISTILLED_WARN_AGREEMENT = 0.95


# Held-out samples below which a fine-tune's choice of epoch rests on a handful of answers.
FEW_VALIDATION = 10


def _matching(manifest: Manifest, model: str) -> str:
    """"the artifacts match the QAT model", said only of artifacts that passed verification (a run whose
    every file failed read as if they had matched)."""
    verified = [a for a in manifest.artifacts if a.verification]
    if verified and all(a.status != "ok" for a in verified):
        return f"the artifacts were made from the {model} (none passed verification)"
    if any(a.status != "ok" for a in verified):
        return f"the artifacts that passed verification match the {model}"
    return f"the artifacts match the {model}"


def fine_tune_warnings(manifest: Manifest) -> list[str]:
    """One line per fine-tuning step (pruning, QAT) that cost more than FINE_TUNE_WARN_POINTS of accuracy
    (or, for a regression model, raised its validation loss by more than FINE_TUNE_WARN_LOSS_RATIO), and
    one per step that trained on too few samples to trust."""
    out = []
    for key, what, fix in (("prune", "pruning", "prune less (--prune) or fine-tune longer (--epochs)"),
                           ("cluster", "clustering", "use more clusters (--cluster) or fine-tune longer (--cluster-epochs)"),
                           ("qat", "quantization-aware training", "fine-tune longer (--epochs) or lower --learning-rate")):
        rep = (manifest.steps.get(key) or {}).get("report", {})
        asked, run = (rep.get("settings") or {}).get("epochs"), rep.get("epochs_run")
        if key == "cluster" and rep.get("best_epoch") == 0:  # no epoch beat the clustered model: longer will not help
            fix = ("use more clusters (--cluster); no fine-tune epoch beat the clustered model on the held-out split, "
                   "so its weights before fine-tuning are the ones converted (a lower --learning-rate may let one)")
        elif asked and run and run < asked:  # early stopping ended it: more epochs alone would not run
            fix = re.sub(r"\(--(cluster-)?epochs\)", f"(it stopped early at epoch {run} of {asked}: raise --patience)", fix)
        settings = rep.get("settings") or {}
        n_train, n_val = settings.get("train_samples"), settings.get("validation_samples")
        if isinstance(n_train, int) and (n_train < FEW_SAMPLES or (isinstance(n_val, int) and n_val < FEW_VALIDATION)):
            # a fine-tune of 2 samples that kept its "best" epoch by 1 held-out answer passed without a word
            out.append(f"{what} fine-tuned on {n_train} sample{'s' if n_train != 1 else ''} and chose its epoch on "
                       f"{n_val} held-out: too few to learn from or to choose by; pass a few hundred labelled samples "
                       "with --train-data")
        ev = rep.get("eval", {})
        before, after = ev.get("accuracy_before"), ev.get("accuracy_after")
        on = ""
        if before is None and after is None:  # no labelled --data: the fine-tune's own held-out split tells
            before, after = rep.get("accuracy_before"), rep.get("accuracy_after")
            on = (" on the held-out split of the training data (no labels in --data that score an output; that split "
                  "comes from data the model may have been trained on before)")
        matched = ("QAT model" if key == "qat" or manifest.steps.get("qat") else
                   "clustered model" if key == "cluster" or manifest.steps.get("cluster") else "pruned model")
        last = next(k for k in ("qat", "cluster", "prune") if manifest.steps.get(k) or k == "prune")
        final = ((manifest.steps.get(last) or {}).get("report", {}).get("eval") or {}).get("accuracy_after")
        # rounded as shown: 90.5 % -> 89.5 % is 1.0000000000000009 points in floats, and "more than a point" is not
        if before is not None and after is not None and round((before - after) * 100, 2) > FINE_TUNE_WARN_POINTS:
            # a later step (clustering, QAT) moved the accuracy again: the artifacts' model is quoted as it is
            where = f" (at {_pct(final)})" if key != last and final is not None and not on else ""
            out.append(f"{what} cost {(before - after) * 100:.2f} points of accuracy{on} ({_pct(before)} → {_pct(after)}); "
                       f"{_matching(manifest, matched)}{where}: {fix}")
        lb, la = rep.get("val_loss_before"), rep.get("val_loss_after")
        # by how much it grew, against the loss's own size (cosine similarity is negative at its best,
        # and a loss of exactly 0 that becomes 1e-9 has not really grown)
        if lb is not None and la is not None and la - lb > max((FINE_TUNE_WARN_LOSS_RATIO - 1) * abs(lb), 1e-6):
            grew = f"{la / lb:.1f}x" if lb > 0 else f"by {la - lb:.4g}"
            out.append(f"{what} raised the validation loss {grew} ({lb:.4g} → {la:.4g}); "
                       f"{_matching(manifest, matched)}: {fix}")
        for d in (rep.get("outputs") or {}).get("distilled", []):  # the outputs the labels did not train
            moved = d.get("mean_abs_change", 0.0) / d["dense_std"] if d.get("dense_std") else 0.0
            agree = d.get("top1_agreement", d.get("tag_agreement", 1.0))
            if moved > DISTILLED_WARN_SPREAD or agree < DISTILLED_WARN_AGREEMENT:
                how = (f"its answers agree with the model's before on {agree:.1%}" if agree < DISTILLED_WARN_AGREEMENT
                       else f"by {moved:.0%} of its spread")
                out.append(f"{what} moved output `{d['output']}` (no labels for it) away from the model's own values: "
                           f"{how}; {fix}, or fine-tune on that output's labels (--label-output)")
    for off in (manifest.steps.get("prune") or {}).get("report", {}).get("off_target", []):
        out.append(f"pruning missed its target sparsity: {off}")
    return out


def _history_lines(rep: dict[str, Any]) -> list[str]:
    """The fine-tune epoch by epoch: loss, validation accuracy (or loss), sparsity, and which epoch's weights were kept."""
    history = rep.get("history") or []
    if not history:
        return []
    asked, run, best = (rep.get("settings") or {}).get("epochs"), rep.get("epochs_run", len(history)), rep.get("best_epoch")
    patience = (rep.get("settings") or {}).get("patience")
    by_loss = rep.get("score") == "val_loss"
    better = "lower validation loss" if by_loss else "better validation accuracy"
    from deploykit.optimize.prune import TIE_BREAK_MIN_GAIN, TIE_BREAK_PROGRESS

    nll = not by_loss and any(h.get("val_nll") is not None for h in history)
    better = ("lower validation loss" if by_loss else
              f"better validation accuracy, nor a −log p lower by {TIE_BREAK_PROGRESS:.0%} and {TIE_BREAK_MIN_GAIN:g} at the "
              "same accuracy" if nll else
              "better validation accuracy")
    stopped = (f"stopped early after epoch {run} of {asked} (no {better} for {patience} epoch(s)"
               f"{' at the target sparsity' if 'sparsity' in history[0] else ''})" if asked and run < asked else f"{run} epoch(s)")
    why = ("lowest validation loss" if by_loss else
           "best validation accuracy; among equally accurate epochs, the lowest −log p" if nll else "best validation accuracy")
    kept = f"; kept the weights of epoch {best} ({why})" if best else ""
    pruning = "sparsity" in history[0]
    lines = ["", f"Fine-tuning: {stopped}{kept}.", "",
             f"| Epoch | Loss | {'Val loss' if by_loss else 'Val accuracy'} |" + (" Val −log p |" if nll else "")
             + (" Sparsity |" if pruning else ""),
             "|---|---|---|" + ("---|" if nll else "") + ("---|" if pruning else "")]
    for h in history:
        mark = " ★" if h.get("epoch") == best else ""
        ramp = " (ramping up)" if pruning and not h.get("at_target", True) else ""
        val = f"{h['val_loss']:.4g}" if by_loss and h.get("val_loss") is not None else _pct(h.get("val_accuracy"))
        lines.append(f"| {h.get('epoch')}{mark} | {h.get('loss', float('nan')):.4f} | {val} |"
                     + ((f" {h['val_nll']:.4f} |" if h.get("val_nll") is not None else " – |") if nll else "")
                     + (f" {h['sparsity']:.2%}{ramp} |" if pruning else ""))
    return lines


def _score_line(rep: dict[str, Any], before: str, after: str) -> str:
    """How the fine-tune changed the model: accuracy (evaluation data and held-out split), or a
    regression model's validation loss."""
    ev = rep.get("eval", {})
    if rep.get("score") == "val_loss":
        loss = (rep.get("settings") or {}).get("loss", "")
        errors = ""
        if ev.get("mae_before") is not None and ev.get("mae_after") is not None:
            errors = (f"; against the evaluation data's targets ({ev.get('samples', '–')} samples): MAE {before} "
                      f"{ev['mae_before']:.4g} → {after} {ev['mae_after']:.4g}, RMSE {ev['rmse_before']:.4g} → {ev['rmse_after']:.4g}")
        return (f"- Validation loss ({loss}) on the held-out training split: {before} {rep.get('val_loss_before', float('nan')):.4g} → "
                f"{after} {rep.get('val_loss_after', float('nan')):.4g}{errors} (a regression model: no accuracy; the Targets "
                "table compares each artifact's outputs with the fine-tuned model's).")
    return (f"- Accuracy on the evaluation data ({ev.get('samples', '–')} samples): {before} {_pct(ev.get('accuracy_before'))} → "
            f"{after} {_pct(ev.get('accuracy_after'))}; on the held-out training split: {_pct(rep.get('accuracy_before'))} → "
            f"{_pct(rep.get('accuracy_after'))}.")


def _left_alone(label: str, skipped: list[dict[str, Any]]) -> list[str]:
    """One line naming the layers a fine-tune left as they were, with why (layers without weights aside)."""
    kept = [s for s in skipped if s.get("reason") != "no weights"]
    if not kept:
        return []
    groups: dict[tuple[str, str], list[str]] = {}  # (class, reason) -> layers, in model order
    for s in kept:
        groups.setdefault((s.get("class", ""), s["reason"]), []).append(s["layer"])
    parts = []
    for (cls, reason), layers in groups.items():
        if len(layers) < GROUP_LAYERS_FROM:
            parts += [f"`{name}` ({cls}: {reason})" for name in layers]
        else:  # a MobileNet's 35 BatchNormalization layers: one entry, not 35 identical ones
            shown = ", ".join(f"`{n}`" for n in layers[:3])
            parts.append(f"{len(layers)} {cls} layers ({shown}, …: {reason})")
    return [f"- {label}: " + ", ".join(parts) + "."]


GROUP_LAYERS_FROM = 4  # layers of one class left alone for one reason are listed as one entry from this many


def _against_dense(manifest: Manifest, rep: dict[str, Any]) -> list[str]:
    """One line: each artifact's accuracy (a regression model's: MAE) against the dense model's (the Targets table compares
    artifacts with the model they were made from: pruned, clustered or QAT)."""
    dense = (rep.get("eval") or {}).get("accuracy_before")
    dense_mae = (rep.get("eval") or {}).get("mae_before")
    if dense is None and dense_mae:  # a regression model: its error against the targets, before and after
        parts = [f"{a.target} {a.verification['mae']:.4g} ({(a.verification['mae'] - dense_mae) / dense_mae:+.1%})"
                 for a in manifest.artifacts if a.verification.get("mae") is not None and not a.candidate_of]
        return [f"- MAE after conversion against the dense model's {dense_mae:.4g}: " + ", ".join(parts) + "."] if parts else []
    if dense is None:
        return []
    parts = [f"{a.target} {_pct(a.verification['accuracy'])} ({(a.verification['accuracy'] - dense) * 100:+.2f})"
             for a in manifest.artifacts if a.verification.get("accuracy") is not None and not a.candidate_of]
    if not parts:
        return []
    return [f"- Accuracy after conversion against the dense model's {_pct(dense)} (points): " + ", ".join(parts) + "."]


def size_against_dense(manifest: Manifest) -> list[str]:
    """One line: each kept artifact's download size (gzip) against the dense model's float32 file of
    the same format, converted before pruning or clustering: the "N x smaller" the fine-tune and the
    target's quantization bought together (said so: an int8 file's ratio is mostly quantization's)."""
    refs = manifest.steps.get("dense_reference") or {}
    parts, used = [], {}
    for a in manifest.artifacts:
        ref = refs.get(a.format) or {}
        if a.status != "ok" or a.candidate_of or not a.gzip_bytes or not ref.get("gzip_bytes"):
            continue
        used[ref["target"]] = ref["gzip_bytes"]
        parts.append(f"{a.target} {human_bytes(a.gzip_bytes)} = **{a.gzip_bytes / ref['gzip_bytes']:.3f}×** "
                     f"({ref['gzip_bytes'] / a.gzip_bytes:.1f}x smaller)")
    failed = sorted({r["target"] for r in refs.values() if r.get("error")})
    skipped = list(dict.fromkeys(r["skipped"] for r in refs.values() if r.get("skipped")))
    lines = []
    if parts:
        lines.append("- Download size (gzip) against the dense model's float32 file of the same format ("
                     + ", ".join(f"{t} {human_bytes(n)}" for t, n in used.items()) + "; a quantized file's ratio is "
                     "pruning and quantization together): " + "; ".join(parts) + ".")
    if failed:
        errors = dict.fromkeys(r["error"] for r in refs.values() if r.get("error") and r["target"] in failed)
        lines.append(f"- The dense model did not convert to {', '.join(failed)} for the size comparison: "
                     + "; ".join(errors)[:300] + ".")
    lines += [f"- No size comparison with the dense model: {why}." for why in skipped]
    return lines


def _distilled_lines(rep: dict[str, Any]) -> list[str]:
    """A multi-output model's outputs without labels: what held them, and how far they moved from the
    dense model's values (validation data)."""
    outs = rep.get("outputs")
    if not outs:
        return []
    lines = [f"- The labels trained output `{outs['labelled']}`; each other output was trained towards the dense "
             "model's own values of it:"]
    for d in outs.get("distilled", []):
        if "ids_kept" in d:
            lines.append(f"  - `{d['output']}` (class ids, not trained: they follow the output they come from): "
                         f"{d['ids_kept']:.2%} the same as the dense model's")
            continue
        spread = d.get("dense_std") or 0.0
        share = f" ({d['mean_abs_change'] / spread:.0%} of its spread, std {spread:.4g})" if spread > 0 else ""
        agree = (f"; top-1 agreement with the dense model {d['top1_agreement']:.2%}" if "top1_agreement" in d else
                 f"; tags (at 0.5) the same as the dense model's {d['tag_agreement']:.2%}" if "tag_agreement" in d else "")
        lines.append(f"  - `{d['output']}` ({d['loss']}): mean |change| {d['mean_abs_change']:.4g}{share}{agree}")
    return lines


def prune_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: pruning settings, accuracy before/after, sizes, per-layer sparsity, and
    the zeros each artifact still holds (the proof that sparsity survived conversion)."""
    step = manifest.steps.get("prune")
    if not step or "report" not in step:
        return []
    rep = step["report"]
    st = rep.get("settings", {})
    tot = rep.get("totals", {})
    kernels = [k for layer in rep.get("layers", []) for k in layer.get("kernels", [])]
    covered, params = sum(k["size"] for k in kernels), tot.get("parameters") or 0
    share = f" (kernels holding {covered / params:.0%} of the parameters)" if params and covered < 0.95 * params else ""
    reached = (sum(k["size"] * k.get("achieved_sparsity", 0.0) for k in kernels) / covered) if covered else None
    if reached is not None and abs(reached - st.get("sparsity", 0)) >= 0.005:  # blocks that tile a kernel coarsely
        share += f", {reached:.1%} reached over the pruned kernels"
    lines = [
        f"Pruned to **{st.get('sparsity', 0) * 100:g}%** sparsity{share} ({st.get('structure')}, "
        + ("the 2:4 mask set at the first step" if st.get("structure") == "2:4" else f"{st.get('schedule', {}).get('kind')} schedule")
        + f") by fine-tuning {rep.get('epochs_run')} epoch(s) on {st.get('train_samples')} samples "
        f"({rep.get('path')}); loss and optimizer from {st.get('training_settings_from')}.",
        "",
        _score_line(rep, "dense", "pruned") + ("" if rep.get("score") == "val_loss" else
                                                " Each artifact's accuracy after conversion is in the Targets table."),
        *_against_dense(manifest, rep),
        *_distilled_lines(rep),
        *[f"- **Warning:** {w}." for w in fine_tune_warnings(manifest) if w.startswith("pruning")],
        f"- Parameters {tot.get('parameters', 0):,}; zeros {tot.get('zeros_before', 0):,} → {tot.get('zeros_after', 0):,}; "
        f"weights raw {human_bytes(tot.get('raw_bytes_before'))} → {human_bytes(tot.get('raw_bytes_after'))}, "
        f"gzip {human_bytes(tot.get('gzip_bytes_before'))} → {human_bytes(tot.get('gzip_bytes_after'))}.",
        *size_against_dense(manifest),
    ]
    skipped = rep.get("skipped", [])
    lines += _left_alone("Kept dense", skipped)
    lines += ["", "| Layer | Class | Weight | Target | Achieved | Zeros |", "|---|---|---|---|---|---|"]
    for layer in rep.get("layers", []):
        for k in layer.get("kernels", []):
            zeros = f"{k['zeros']:,} of {k['size']:,}" if "zeros" in k and "size" in k else "–"
            lines.append(f"| {layer['name']} | {layer['class']} | {k['weight']} {tuple(k['shape'])} | "
                         f"{layer['target_sparsity']:.0%} | {k['achieved_sparsity']:.2%} | {zeros} |")
    lines += _history_lines(rep)
    survived = [a for a in manifest.artifacts if "sparsity" in a.settings]
    if survived:
        lines += ["", "Zeros in each artifact's weight tensors (a converter or quantizer that densified a pruned "
                  "kernel fails its target; the counts include the few constants a converter adds, such as shapes "
                  "and axes, besides the model's parameters):", ""]
        for a in survived:
            s = a.settings["sparsity"]
            frac = s["total_zeros"] / s["total_size"] if s.get("total_size") else 0.0
            verdict = "all pruned kernels kept their zeros" if not s.get("densified") else "DENSIFIED: " + "; ".join(s["densified"])
            lines.append(f"- **{a.target}**: {s['total_zeros']:,} of {s['total_size']:,} weight values are zero "
                         f"({frac:.1%}); {verdict}")
    return lines


def cluster_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: weight clustering settings, accuracy before/after, shared values and zeros per kernel."""
    step = manifest.steps.get("cluster")
    if not step or "report" not in step:
        return []
    rep = step["report"]
    st = rep.get("settings", {})
    layers = rep.get("layers", [])
    zeros = sum(l["zeros_after"] for l in layers)
    lines = [
        f"Clustered to at most **{rep.get('clusters')}** shared non-zero values per kernel (1-D k-means, "
        f"{rep.get('path')}), then fine-tuned {rep.get('epochs_run')} epoch(s) on {st.get('train_samples')} samples; "
        f"loss and optimizer from {st.get('training_settings_from')}."
        + (f" Zeros are a cluster of their own, pinned at 0: {zeros:,} kept." if zeros else ""),
        "",
        _score_line(rep, "before", "clustered") + ("" if rep.get("score") == "val_loss" else
                                                   " Each artifact's accuracy after conversion is in the Targets table."),
        *_distilled_lines(rep),
        *[f"- **Warning:** {w}." for w in fine_tune_warnings(manifest) if w.startswith("clustering")],
        *([] if manifest.steps.get("prune") else size_against_dense(manifest)),  # after pruning: in its section
    ]
    if rep.get("best_epoch") == 0 and rep.get("epochs_run"):
        lines.append("- The fine-tune did not improve on the clustered model: its weights before fine-tuning are kept.")
    lines += _left_alone("Not clustered", rep.get("skipped", []))
    lines += ["", "| Layer | Class | Weight | Distinct non-zero values | Zeros |", "|---|---|---|---|---|"]
    for l in layers:
        lines.append(f"| {l['name']} | {l['class']} | {l['weight']} {tuple(l['shape'])} | "
                     f"{l['distinct_nonzero_before']:,} → {l['distinct_nonzero_after']:,} | "
                     f"{l['zeros_before']:,} → {l['zeros_after']:,} of {l['size']:,} |")
    lines += _history_lines(rep)
    checked = [a for a in manifest.artifacts if "clusters" in a.settings]
    if checked:
        lines += ["", "Shared values in each artifact's weight tensors (at most the kernel's clusters per output "
                  "channel; a converter that stored more fails its target):", ""]
        for a in checked:
            c = a.settings["clusters"]
            if c.get("lost"):
                verdict = "NOT SHARED: " + "; ".join(c["lost"])
            else:
                verdict = f"all {c['kernels'] - len(c.get('unproven', []))} checkable kernels kept their shared values"
                if c.get("unproven"):
                    verdict += (f"; {', '.join(c['unproven'])}: channels too short to tell")
            lines.append(f"- **{a.target}**: {verdict}")
    return lines


def qat_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: quantization-aware training (QAT, or PQAT after pruning) and its accuracy."""
    step = manifest.steps.get("qat")
    if not step or "report" not in step:
        return []
    rep = step["report"]
    st = rep.get("settings", {})
    kind = ("Cluster-preserving QAT (PCQAT: every kernel put back onto its shared values after each step)"
            if rep.get("preserve_clusters") else
            "Sparsity-preserving QAT (PQAT)" if rep.get("preserve_sparsity") else "Quantization-aware training")
    quantized = rep.get("quantized", [])
    names = [q if isinstance(q, str) else q.get("layer", str(q)) for q in quantized]
    lines = [
        f"{kind} with tfmot ({rep.get('scheme')}): {rep.get('epochs_run')} epoch(s) on {st.get('train_samples')} samples; "
        f"loss and optimizer from {st.get('training_settings_from')}.",
        "",
        _score_line(rep, "before", "QAT model"),
        *_distilled_lines(rep),
        f"- Quantized layers ({len(names)}): " + (", ".join(f"`{n}`" for n in names) or "–") + ".",
        *[f"- **Warning:** {w}." for w in fine_tune_warnings(manifest) if w.startswith("quantization")],
    ]
    skipped = rep.get("skipped", [])
    if skipped:
        lines.append("- Left in float: " + ", ".join(f"`{s.get('layer')}` ({s.get('class', '')}: {s.get('reason')})" for s in skipped) + ".")
    zeros = rep.get("kernel_zeros")
    if zeros:
        kept = sum(z["zeros_after"] for z in zeros)
        before = sum(z["zeros_before"] for z in zeros)
        lines.append(f"- Pruned zeros kept through QAT: {kept:,} of {before:,}.")
    values = rep.get("kernel_values")
    if values:
        lines.append("- Shared values kept through QAT: " + ", ".join(
            f"`{v['kernel']}` {v['values_before']} → {v['values_after']}" for v in values) + ".")
    return lines + _history_lines(rep)


def io_quantization_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: scale and zero point of each integer input and output (int8 I/O artifacts),
    which the code feeding the artifact needs (TFLite Micro's model_io.h carries them too)."""
    lines = []
    for a in manifest.artifacts:
        quant = (a.settings.get("converter") or {}).get("io_quantization") or {}
        if not quant or not a.path:
            continue
        parts = []
        for key, q in quant.items():
            role, name = key.split(" ", 1)
            if not q.get("scale"):  # ids, indices: not quantized
                parts.append(f"{role} `{name}` {q['dtype']}: the values as they are (not quantized)")
                continue
            zp = q["zero_point"]
            plus = f" + {zp}" if zp > 0 else f" - {-zp}" if zp < 0 else ""
            minus = f" - {zp}" if zp > 0 else f" + {-zp}" if zp < 0 else ""
            bounds = {"int8": "-128..127", "uint8": "0..255", "int16": "-32768..32767"}.get(q["dtype"])
            how = (f"q = round(x / {q['scale']:.6g}){plus}" + (f", clamped to {bounds}" if bounds else "") if role == "input"
                   else f"x = (q{minus}) × {q['scale']:.6g}" if zp else f"x = q × {q['scale']:.6g}")
            parts.append(f"{role} `{name}` {q['dtype']}: {how}")
        lines.append(f"- **{a.target}**: " + "; ".join(parts))
    return lines


# The report's optional sections, in order: (title, lines function). Markdown and HTML render the
# same list, so a new section is added once.
SECTIONS = [
    ("Pruning", prune_lines),
    ("Weight clustering", cluster_lines),
    ("Quantization-aware training", qat_lines),
    ("Auto selection (measured, not guessed)", selection_lines),
    ("Converter notes", converter_lines),
    ("Verification notes", verification_lines),
    ("Integer inputs and outputs (scale, zero point)", io_quantization_lines),
    ("Microcontroller footprint", footprint_lines),
    ("Most expensive ops (runtime profiler; top 10 in manifest.json)", op_profile_lines),
]


def oversubscribed(threads: list[int], cores: Any) -> str:
    """A warning when a file was timed with more threads than the machine has cores: they take turns on
    the cores, so its latency says nothing about a device that has that many."""
    over = [t for t in threads if isinstance(t, int) and isinstance(cores, int) and t > cores]
    return (f" {max(over)} threads on this machine's {cores} cores take turns: those latencies are not what a device "
            f"with {max(over)} cores gives (time with --threads {cores} or fewer)." if over else "")


def measured_lines(manifest: Manifest) -> list[str]:
    """Markdown lines of "How this was measured" (machine, tools, what latency, size and memory mean),
    shared by the Markdown and HTML reports."""
    mach, tools = manifest.machine, manifest.tools
    threads = sorted({a.benchmark.get("threads") for a in manifest.artifacts if a.benchmark} - {None})
    return [
        f"- Machine: {mach.get('cpu')}, {mach.get('cores')} cores, {human_bytes(mach.get('memory_bytes'))}, {mach.get('os')}",
        f"- Tools: {', '.join(f'{k} {v}' for k, v in tools.items())}",
        (f"- Latency: invoke only, after the freshly loaded file settles (untimed runs until stable) and warm-up; threads {', '.join(map(str, threads))}; raw samples in manifest.json."
         + oversubscribed(threads, mach.get("cores"))
         if threads else "- Latency: not measured (benchmarks were off)."),
        "- Size: raw bytes and gzip (level 6, the common default). Runtime mem: what the file adds to a process that "
        "already has its runtime, measured in a new process per file (peak resident memory while loading it and "
        "running it at batch 1, minus the memory just before loading; TF.js: the Node process; TFLite Micro: the "
        "tensor arena).",
        f"- Created {manifest.created}; manifest schema {manifest.schema_version}.",
    ]


def _inputs(model: dict) -> str:
    return ", ".join(f"`{i['name']}` {tuple(i['shape'])} {i.get('dtype', '')}".rstrip() for i in model.get("inputs", []))


def _outputs(model: dict) -> str:
    """Each output as the artifacts name it, with the Keras name it stands for."""
    return ", ".join(f"`{o['name']}`" + (f" (Keras `{o['keras_name']}`)" if o.get("keras_name") else "")
                     + f" {tuple(o['shape'])} {o.get('dtype', '')}".rstrip() for o in model.get("outputs", []))


def model_lines(manifest: Manifest) -> list[str]:
    """The report's opening lines: the model, its inputs and outputs, preprocessing, what was verified on."""
    m = manifest.model
    lines = [f"Model `{m.get('source')}` ({m.get('kind')}, {m.get('params') or '?'} parameters); "
             f"inputs {_inputs(m)}" + (f"; outputs {_outputs(m)}." if m.get("outputs") else ".")]
    declared = sorted({i["shape"][0] for i in m.get("inputs", []) if i.get("shape") and isinstance(i["shape"][0], int)})
    if declared and m.get("kind") in ("keras3", "tf_keras"):
        fixed = [a.target for a in manifest.artifacts if a.settings.get("converter", {}).get("fixed_batch")]
        lines.append(f"The model's inputs declare batch size {', '.join(map(str, declared))}; its files take any batch size, "
                     "as Keras's model.export() leaves it" + (f", except {', '.join(fixed)}, which take batches of "
                     "exactly 1" if fixed else "") + ".")
    if m.get("preprocessing_layers"):
        lines.append("Embedded preprocessing: " + ", ".join(f"{p['class']} (`{p['name']}`)" for p in m["preprocessing_layers"]) + ".")
    if m.get("float32_from_policy"):
        lines.append(f"The model computes with the {m['float32_from_policy']} dtype policy, not float32: it was rebuilt in float32 with the "
                     "same weights, and that float32 model is the reference and what every target converts.")
    replaced = m.get("replaced_for_export") or []
    if identity := [p for p in replaced if p.get("as", "Identity") == "Identity"]:
        lines.append("Replaced by Identity in the exported graph (they pass their input through at inference; the "
                     "reference is the model as given): " + ", ".join(f"{p['class']} (`{p['name']}`)" for p in identity) + ".")
    if rewritten := [p for p in replaced if p.get("as", "Identity") != "Identity"]:
        lines.append("Written in the exported graph as the same computation in plain ops, which the targets take "
                     "where they refuse the original's (the reference is the model as given): " + ", ".join(f"{p['class']} (`{p['name']}`) as {p['as']}"
                                                                          for p in rewritten) + ".")
    d = manifest.data
    lines += [
        f"Verified on {d.get('eval_samples')} sample{'' if d.get('eval_samples') == 1 else 's'} of `{d.get('eval_source')}`"
        + (" with labels that no output scores (accuracy not measured; see the warning)." if d.get("labels_unused") else
           " with labels." if d.get("labels") else
           " with target values: Accuracy shows each file's mean absolute error (MAE) against them, Δ its change "
           "from the reference's." if d.get("targets") else " (no labels: accuracy not measured)."),
    ]
    return lines


def artifact_lines(manifest: Manifest) -> list[str]:
    """One line per file written: path, sha256 prefix, what the target is."""
    return [f"- **{a.target}**: `{a.path}` sha256 `{a.sha256[:16]}…`{_extra_hashes(a)} — {target_description(a)}"
            for a in manifest.artifacts if a.path]


def _extra_hashes(a: Artifact) -> str:
    """The hashes of the files beside the main one: a TF.js model.json holds no weights, and a dense and a
    pruned model's were byte for byte the same, so its hash alone named two different models."""
    hashes = a.settings.get("extra_file_sha256") or {}
    shown = [f"`{Path(f).name}` `{h[:16]}…`" for f, h in list(hashes.items())[:3]]
    more = f" and {len(hashes) - 3} more (manifest)" if len(hashes) > 3 else ""
    return f" (+ {', '.join(shown)}{more})" if shown else ""
