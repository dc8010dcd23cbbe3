"""Turn manifest artifacts into report rows (formatting only, no computation of results)."""

from __future__ import annotations

from typing import Any

from deploykit.artifacts import Artifact, Manifest

COLUMNS = [
    ("target", "Target"),
    ("status", "Status"),
    ("size", "Size"),
    ("gzip", "gzip"),
    ("size_ratio", "× fp32 size"),
    ("p50", "p50 ms"),
    ("p90", "p90 ms"),
    ("p99", "p99 ms"),
    ("init", "init ms"),
    ("accuracy", "Accuracy"),
    ("drop", "Δ acc (pts)"),
    ("agreement", "Top-1 agree"),
    ("max_err", "Max abs err"),
    ("peak", "Peak RSS"),
]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _reference_size(manifest: Manifest) -> int | None:
    for a in manifest.artifacts:
        if a.settings.get("target", {}).get("weights") == "float32" and a.settings.get("target", {}).get("activations") == "float32" and a.size_bytes:
            return a.size_bytes
    return None


def row(a: Artifact, ref_size: int | None) -> dict[str, str]:
    v, b = a.verification, a.benchmark
    peak = max((s.get("peak_rss_bytes", 0) for s in a.steps.values()), default=None)
    return {
        "target": a.target + (f" (candidate of {a.candidate_of})" if a.candidate_of else "")
        + (f" → {a.selection.get('winner')}" if a.selection.get("winner") else ""),
        "status": "✅ ok" if a.status == "ok" else "❌ failed",
        "size": human_bytes(a.size_bytes) if a.size_bytes else "–",
        "gzip": human_bytes(a.gzip_bytes) if a.gzip_bytes else "–",
        "size_ratio": f"{a.size_bytes / ref_size:.2f}" if ref_size and a.size_bytes else "–",
        "p50": _fmt(b.get("p50_ms"), ".3f"),
        "p90": _fmt(b.get("p90_ms"), ".3f"),
        "p99": _fmt(b.get("p99_ms"), ".3f"),
        "init": _fmt(b.get("init_ms"), ".1f"),
        "accuracy": _fmt(v.get("accuracy"), ".2%"),
        # shown as a change (negative = accuracy lost); 0.00 without a sign when equal
        "drop": "–" if v.get("accuracy_drop_points") is None else f"{-v['accuracy_drop_points'] + 0.0:+.2f}".replace("+0.00", "0.00").replace("-0.00", "0.00"),
        "agreement": _fmt(v.get("top1_agreement"), ".2%"),
        "max_err": _fmt(v.get("max_abs_error"), ".2e"),
        "peak": human_bytes(peak) if peak else "–",
    }


def table(manifest: Manifest) -> list[dict[str, str]]:
    ref = _reference_size(manifest)
    return [row(a, ref) for a in manifest.artifacts]


def highlights(manifest: Manifest) -> list[str]:
    """One line each: smallest, fastest, most accurate among the artifacts that passed."""
    ok = [a for a in manifest.artifacts if a.status == "ok"]
    lines = []
    if ok:
        small = min(ok, key=lambda a: a.size_bytes)
        lines.append(f"Smallest: **{small.target}** ({human_bytes(small.size_bytes)}, gzip {human_bytes(small.gzip_bytes)})")
        timed = [a for a in ok if a.benchmark.get("p50_ms") is not None]
        if timed:
            fast = min(timed, key=lambda a: a.benchmark["p50_ms"])
            lines.append(f"Fastest: **{fast.target}** (p50 {fast.benchmark['p50_ms']:.3f} ms, {fast.benchmark.get('threads')} threads)")
        acc = [a for a in ok if a.verification.get("accuracy") is not None]
        if acc:
            best = max(acc, key=lambda a: (a.verification["accuracy"], -a.size_bytes))
            lines.append(
                f"Most accurate: **{best.target}** ({best.verification['accuracy']:.2%}; reference "
                f"{best.verification['reference_accuracy']:.2%})"
            )
    failed = [a for a in manifest.artifacts if a.status != "ok"]
    if failed:
        lines.append(f"Failed: {', '.join('**' + a.target + '**' for a in failed)} (details below)")
    return lines


def selection_lines(manifest: Manifest) -> list[str]:
    """Markdown lines explaining each -auto decision: every candidate and why the winner won."""
    lines: list[str] = []
    for a in manifest.artifacts:
        sel = a.selection
        if not sel:
            continue
        lines += [f"### {a.target}", "", sel.get("reason", ""), "",
                  "| Candidate | Status | Size | interleaved p50 ms | Accuracy | Top-1 agree |", "|---|---|---|---|---|---|"]
        for r in sel.get("candidates", []):
            mark = " (winner)" if r["target"] == sel.get("winner") else ""
            p50 = r.get("interleaved_p50_ms", r.get("p50_ms"))
            lines.append(
                f"| {r['target']}{mark} | {r['status']} | {human_bytes(r['size_bytes']) if r['size_bytes'] else '–'} | "
                f"{_fmt(p50, '.3f')} | {_fmt(r.get('accuracy'), '.2%')} | {_fmt(r.get('top1_agreement'), '.2%')} |"
            )
        lines.append("")
    return lines


def op_profile_lines(manifest: Manifest, top: int = 5) -> list[str]:
    """Markdown lines: the most expensive op types per profiled artifact."""
    lines: list[str] = []
    for a in manifest.artifacts:
        prof = a.benchmark.get("op_profile") if a.benchmark else None
        if not prof or a.selection:
            continue
        ops = ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in prof["top_op_types"][:top])
        lines.append(f"- **{a.target}** ({a.benchmark.get('runtime')}, {a.benchmark.get('threads')} threads, "
                     f"optimization {a.benchmark.get('graph_optimization_level')}): {ops}")
    return lines


def footprint_lines(manifest: Manifest) -> list[str]:
    """Markdown lines: microcontroller flash/arena figures, budgets and the heaviest layers."""
    lines: list[str] = []
    for a in manifest.artifacts:
        fp = a.footprint
        if not fp:
            continue
        opts = a.settings.get("target", {}).get("options", {})
        flash_budget = f" of {opts['flash_budget_kb']} KiB budget" if opts.get("flash_budget_kb") else ""
        ram_budget = f" of {opts['ram_budget_kb']} KiB budget" if opts.get("ram_budget_kb") else ""
        heavy = ", ".join(f"{h['op']} {human_bytes(h['weight_bytes'])}" for h in fp.get("heaviest_layers", [])[:3])
        lines.append(
            f"- **{a.target}**: flash {human_bytes(fp.get('model_bytes'))}{flash_budget}; tensor arena "
            f"{human_bytes(fp.get('arena_bytes'))}{ram_budget} (TFLite Micro's own allocation record, re-run in exactly "
            f"that arena); heaviest layers: {heavy or '–'}"
        )
    return lines
