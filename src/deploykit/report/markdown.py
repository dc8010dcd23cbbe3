"""Markdown report from a manifest."""

from __future__ import annotations

import re

from deploykit.artifacts import Manifest
from deploykit.report.rows import (SECTIONS, artifact_lines, columns, highlights, measured_lines, model_lines, table,
                                  table_note)


def render_markdown(manifest: Manifest, plot_file: str | None) -> str:
    m = manifest.model
    lines = [
        f"# deploykit report: {m.get('name') or m.get('source')}",
        "",
        *model_lines(manifest),
        "",
        "## At a glance",
        "",
    ]
    lines += [f"- {h}" for h in highlights(manifest)]
    lines += ["", "## Targets", ""]
    lines.append("| " + " | ".join(title for _, title in columns(manifest)) + " |")
    lines.append("|" + "|".join("---" for _ in columns(manifest)) + "|")
    for r in table(manifest):
        lines.append("| " + " | ".join(r[key] for key, _ in columns(manifest)) + " |")
    if table_note(manifest):
        lines += ["", table_note(manifest)]
    if plot_file:
        lines += ["", f"![size vs latency]({plot_file})"]
    for title, lines_of in SECTIONS:
        section = lines_of(manifest)
        if section:
            lines += ["", f"## {title}", ""] + section
    failed = [a for a in manifest.artifacts if a.status != "ok"]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- **{a.target}**: {a.reason}" for a in failed]
    lines += ["", "## Artifacts", "", *artifact_lines(manifest)]
    lines += ["", "## How this was measured", "", *measured_lines(manifest), ""]
    return "\n".join(_inert(line) for line in lines)


def _inert(line: str) -> str:
    """A report line whose names (a model's output keys, paths) cannot turn into markup: a line break
    inside one started a heading or table of its own, and a '<script>' became a live element in
    Markdown viewers. Only a '<' that opens a tag, outside `code`, is written as an entity ('<= 0.1'
    stays as it is; code shows its text as it is)."""
    parts = re.split(r"(`[^`]*`)", line.replace("\r", " ").replace("\n", " "))
    return "".join(p if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", p) for i, p in enumerate(parts))
