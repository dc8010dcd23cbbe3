"""Size-vs-latency scatter as a small hand-written SVG.

Which artifact is smallest, fastest, and at what accuracy — at a glance. Written
directly rather than through matplotlib: importing and rendering with matplotlib
cost ~0.8 s of every run, for one scatter plot.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from deploykit.artifacts import Manifest, write_text_atomic
from deploykit.report.rows import timing

PLOT_NAME = "size_vs_latency.svg"
W, H = 720, 430
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 40, 55


def _nice_ticks(hi: float, count: int = 5) -> list[float]:
    if hi <= 0:
        return [0.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(hi / step) + 1)]


# Latencies spanning more than this ratio get a log axis: TF.js at 0.2 ms beside TFLite at 0.006 ms put
# every TFLite and ONNX point (and label) on top of each other at the bottom of a linear one.
LOG_AXIS_FROM = 20.0


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^k between lo and hi."""
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** k for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if v >= 0.001 or v == 0 else f"{v:.1e}"


def render_plot(manifest: Manifest) -> str | None:
    """SVG text of the plot, or None when no artifact was benchmarked."""
    # Pruning and clustering leave the raw size as it was and shrink the download: their runs plot that
    # (every fp32 file of a pruned model sat at the dense model's size, the gain nowhere to be seen).
    gzipped = any(manifest.steps.get(k) for k in ("prune", "cluster"))

    def size(a: Any) -> float:
        return (a.gzip_bytes if gzipped else a.size_bytes) / 1024

    points = [a for a in manifest.artifacts
              if a.size_bytes and (a.gzip_bytes or not gzipped) and timing(a).get("p50_ms") is not None and not a.selection]
    if not points:
        return None
    x_hi = max(size(a) for a in points) * 1.3
    slowest = max(timing(a).get("p90_ms", timing(a)["p50_ms"]) for a in points)
    fastest = min(timing(a)["p50_ms"] for a in points)
    log_y = fastest > 0 and slowest / fastest > LOG_AXIS_FROM
    xt = _nice_ticks(x_hi)
    x_hi = max(x_hi, xt[-1])
    if log_y:
        y_lo, y_hi = fastest / 1.5, slowest * 1.5
        yt = _log_ticks(y_lo, y_hi)
    else:
        y_lo, yt = 0.0, _nice_ticks(slowest * 1.3)
        y_hi = max(slowest * 1.3, yt[-1])
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(v: float) -> float:
        return LEFT + v / x_hi * pw

    def sy(v: float) -> float:
        if log_y:
            return TOP + ph - math.log(max(v, y_lo) / y_lo) / math.log(y_hi / y_lo) * ph
        return TOP + ph - v / y_hi * ph

    title = f"{manifest.model.get('name') or 'model'}: size vs latency (lower left is better)"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>']
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" y1="{TOP}" x2="{sx(v):.1f}" y2="{TOP + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{sx(v):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{_fmt(v)}</text>')
    for v in yt:
        out.append(f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{LEFT + pw}" y2="{sy(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    axis = "gzipped file size (KiB): the download pruning and clustering shrink" if gzipped else "file size (KiB)"
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 12}" text-anchor="middle">{axis}</text>')
    out.append(f'<text transform="translate(16 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
               f"latency p50 (ms{', log scale' if log_y else ''}), bar to p90</text>")
    # which -auto target ships each file: marked on the plot, which leaves the -auto copies out
    ships: dict[str, list[str]] = {}
    for a in manifest.artifacts:
        if a.selection and a.selection.get("winner"):
            ships.setdefault(a.selection["winner"], []).append(a.target)
    placed: list[tuple[float, float, float, float]] = []  # label boxes drawn so far
    for a in points:
        ok = a.status == "ok"
        color = "#1f77b4" if ok else "#d62728"
        x, y = sx(size(a)), sy(timing(a)["p50_ms"])
        y90 = sy(timing(a).get("p90_ms", timing(a)["p50_ms"]))
        out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y90:.1f}" stroke="{color}"/>')
        if ok:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>')
        else:
            out.append(f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
                       f'L{x + 4:.1f},{y - 4:.1f}" stroke="{color}" stroke-width="2"/>')
        label = a.target
        if a.verification.get("accuracy") is not None:
            label += f" · {a.verification['accuracy']:.1%}"
        if a.target in ships:
            label += f" ({', '.join(ships[a.target])} ships it)"
        width = len(label) * LABEL_CHAR_W
        left = x + 7 + width > W - 4  # near the right edge: the label goes left of its point
        lx, ly = _free_spot(x - 7 - width if left else x + 7, y - 6, width, placed)
        if abs(ly - (y - 6)) > 1:  # moved off its point to stay readable: a leader line says whose it is
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{lx + (width if left else 0):.1f}" y2="{ly - 4:.1f}" '
                       'stroke="#999" stroke-width="0.6"/>')
        bold = ' font-weight="bold"' if a.target in ships else ""
        out.append(f'<text x="{lx + (width if left else 0):.1f}" y="{ly:.1f}"'
                   f'{" text-anchor=" + chr(34) + "end" + chr(34) if left else ""}{bold}>{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


LABEL_CHAR_W, LABEL_H = 6.2, 13.0  # an 11 px sans-serif label's average character width and line height


def _free_spot(x: float, y: float, width: float, placed: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """Where a label of ``width`` goes near (x, y) without covering one already drawn: a line lower or
    higher, nearest first (two files of one size and speed, qdq and qop, wrote one label over the other)."""
    def clashes(ty: float) -> bool:
        return any(x < px + pw and px < x + width and ty - LABEL_H < py and py - LABEL_H < ty for px, py, pw, _ in placed)

    for step in range(12):
        for ty in ((y + step * LABEL_H, y - step * LABEL_H) if step else (y,)):
            if TOP + LABEL_H <= ty <= H - BOTTOM and not clashes(ty):
                placed.append((x, ty, width, LABEL_H))
                return x, ty
    placed.append((x, y, width, LABEL_H))
    return x, y


def write_plot(manifest: Manifest, path: Path) -> str | None:
    """Write the plot's SVG to ``path``; returns the SVG text (None when nothing to plot)."""
    svg = render_plot(manifest)
    if svg is not None:
        write_text_atomic(path, svg)
    return svg
