"""Self-contained HTML report (plot inlined as SVG) from a manifest."""

from __future__ import annotations

import html
import re

from deploykit.artifacts import Manifest
from deploykit.report.rows import (SECTIONS, artifact_lines, columns, highlights, measured_lines, model_lines, table,
                                  table_note)

# The tables take the page's whole width and the text keeps 1200 px to read: a 1200 px body put the
# targets table's right columns (accuracy change, agreement, error, memory) behind a scrollbar even in a
# 1400 px window, and off the page in print.
_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
p,ul,h1,h2,h3,svg{max-width:1200px}
table{border-collapse:collapse;font-size:.9rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
td{white-space:nowrap}td:first-child{white-space:normal;min-width:9rem}.wide{overflow-x:auto}
@media print{.wide{overflow:visible}table{font-size:.65rem}th,td{padding:.15rem .3rem}}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}tr.failed{background:#fff0f0}
code{background:#f5f5f5;padding:0 .2rem}.fail{color:#b00}
"""


def _md_inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def _md_block(lines: list[str]) -> str:
    """Tiny Markdown subset (headings, bullet lists, pipe tables, paragraphs) to HTML."""
    out, table_open = [], False
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not table_open:
                out.append("<table>")
                table_open = True
                out.append("<tr>" + "".join(f"<th>{_md_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{_md_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if table_open:
            out.append("</table>")
            table_open = False
        if line.startswith("### "):
            out.append(f"<h3>{_md_inline(line[4:])}</h3>")
        elif line.startswith("- "):
            out.append(f"<p>• {_md_inline(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{_md_inline(line)}</p>")
    if table_open:
        out.append("</table>")
    return "\n".join(out)


def render_html(manifest: Manifest, plot_svg: str | None) -> str:
    m = manifest.model
    title = f"deploykit report: {m.get('name') or m.get('source')}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _md_block(model_lines(manifest)),
    ]
    parts.append("<h2>At a glance</h2><ul>" + "".join(f"<li>{_md_inline(h)}</li>" for h in highlights(manifest)) + "</ul>")
    # numbers kept whole ("1.79e-" over "06" read as two figures): a narrow window scrolls the table instead
    parts.append("<h2>Targets</h2><div class='wide'><table><tr>" + "".join(f"<th>{html.escape(t)}</th>" for _, t in columns(manifest)) + "</tr>")
    for a, r in zip(manifest.artifacts, table(manifest)):
        cls = "" if a.status == "ok" else " class='failed'"
        parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(r[k])}</td>" for k, _ in columns(manifest)) + "</tr>")
    parts.append("</table></div>")
    if table_note(manifest):
        parts.append(f"<p>{html.escape(table_note(manifest))}</p>")
    if plot_svg:
        svg = plot_svg[plot_svg.find("<svg"):]
        parts.append(f"<h2>Size vs latency</h2><div>{svg}</div>")
    for title, lines_of in SECTIONS:
        section = lines_of(manifest)
        if section:
            parts.append(f"<h2>{html.escape(title)}</h2>" + _md_block(section))
    failed = [a for a in manifest.artifacts if a.status != "ok"]
    if failed:
        parts.append("<h2>Failures</h2><ul>" + "".join(
            f"<li class='fail'><b>{html.escape(a.target)}</b>: {html.escape(a.reason)}</li>" for a in failed) + "</ul>")
    parts.append("<h2>Artifacts</h2>" + _md_block(artifact_lines(manifest)))
    parts.append("<h2>How this was measured</h2>" + _md_block(measured_lines(manifest)))
    parts.append("</body></html>\n")
    return "\n".join(parts)
