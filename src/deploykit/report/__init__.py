"""Reports are views of the manifest: Markdown and HTML with a size-vs-latency plot.

Nothing here computes a result; every number comes from the manifest.
"""

from __future__ import annotations

from pathlib import Path

from deploykit.artifacts import Manifest, write_text_atomic
from deploykit.report.html import render_html
from deploykit.report.markdown import render_markdown
from deploykit.report.plot import PLOT_NAME, write_plot


def write_reports(manifest: Manifest, out: Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the plot into ``out``; returns the two report paths."""
    out = Path(out)
    plot_svg = write_plot(manifest, out / PLOT_NAME)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, render_markdown(manifest, PLOT_NAME if plot_svg else None))
    write_text_atomic(html_path, render_html(manifest, plot_svg))
    return md_path, html_path
