"""Size-vs-latency scatter: which artifact is smallest, fastest, and at what accuracy."""

from __future__ import annotations

import io
from pathlib import Path

from deploykit.artifacts import Manifest, write_text_atomic

PLOT_NAME = "size_vs_latency.svg"


def render_plot(manifest: Manifest) -> str | None:
    """SVG text of the plot, or None when no artifact was benchmarked."""
    points = [a for a in manifest.artifacts if a.size_bytes and a.benchmark.get("p50_ms") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for a in points:
        ok = a.status == "ok"
        x, y = a.size_bytes / 1024, a.benchmark["p50_ms"]
        p90 = a.benchmark.get("p90_ms", y)
        ax.errorbar(x, y, yerr=[[0], [max(p90 - y, 0)]], fmt="o" if ok else "x", color="tab:blue" if ok else "tab:red", capsize=3)
        label = a.target
        if a.verification.get("accuracy") is not None:
            label += f"\n{a.verification['accuracy']:.1%}"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("file size (KB)")
    ax.set_ylabel("latency p50 (ms), bar to p90")
    ax.set_title(f"{manifest.model.get('name') or 'model'}: size vs latency (lower left is better)")
    ax.grid(True, alpha=0.3)
    # Headroom so the labels of the largest/slowest points stay inside the axes.
    ax.set_xlim(0, max(a.size_bytes for a in points) / 1024 * 1.3)
    ax.set_ylim(0, max(a.benchmark.get("p90_ms", a.benchmark["p50_ms"]) for a in points) * 1.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def write_plot(manifest: Manifest, path: Path) -> str | None:
    """Write the plot's SVG to ``path``; returns the SVG text (None when nothing to plot)."""
    svg = render_plot(manifest)
    if svg is not None:
        write_text_atomic(path, svg)
    return svg
