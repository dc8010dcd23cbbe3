"""Markdown report from a manifest."""

from __future__ import annotations

from deploykit.artifacts import Manifest
from deploykit.report.rows import COLUMNS, SECTIONS, highlights, measured_lines, table, table_note, target_description


def _inputs(model: dict) -> str:
    return ", ".join(f"`{i['name']}` {tuple(i['shape'])} {i.get('dtype', '')}".rstrip() for i in model.get("inputs", []))


def _outputs(model: dict) -> str:
    """Each output as the artifacts name it, with the Keras name it stands for."""
    return ", ".join(f"`{o['name']}`" + (f" (Keras `{o['keras_name']}`)" if o.get("keras_name") else "")
                     + f" {tuple(o['shape'])} {o.get('dtype', '')}".rstrip() for o in model.get("outputs", []))


def render_markdown(manifest: Manifest, plot_file: str | None) -> str:
    m = manifest.model
    lines = [
        f"# deploykit report: {m.get('name') or m.get('source')}",
        "",
        f"Model `{m.get('source')}` ({m.get('kind')}, {m.get('params') or '?'} parameters); "
        f"inputs {_inputs(m)}" + (f"; outputs {_outputs(m)}." if m.get("outputs") else "."),
    ]
    if m.get("preprocessing_layers"):
        lines.append("Embedded preprocessing: " + ", ".join(f"{p['class']} (`{p['name']}`)" for p in m["preprocessing_layers"]) + ".")
    if m.get("float32_from_policy"):
        lines.append(f"The model computes with the {m['float32_from_policy']} dtype policy, not float32: it was rebuilt in float32 with the "
                     "same weights, and that float32 model is the reference and what every target converts.")
    if m.get("removed_for_export"):
        lines.append("Replaced by Identity in the exported graph (they pass their input through at inference; the "
                     "reference is the model as given): " + ", ".join(f"{p['class']} (`{p['name']}`)" for p in m["removed_for_export"]) + ".")
    d = manifest.data
    lines += [
        f"Verified on {d.get('eval_samples')} sample{'' if d.get('eval_samples') == 1 else 's'} of `{d.get('eval_source')}`"
        + (" with labels." if d.get("labels") else
           " with target values: Accuracy shows each file's mean absolute error (MAE) against them, Δ its change "
           "from the reference's." if d.get("targets") else " (no labels: accuracy not measured)."),
        "",
        "## At a glance",
        "",
    ]
    lines += [f"- {h}" for h in highlights(manifest)]
    lines += ["", "## Targets", ""]
    lines.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for r in table(manifest):
        lines.append("| " + " | ".join(r[key] for key, _ in COLUMNS) + " |")
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
        lines += [f"- **{a.target}**: {a.error}" for a in failed]
    lines += ["", "## Artifacts", ""]
    for a in manifest.artifacts:
        if a.path:
            lines.append(f"- **{a.target}**: `{a.path}` sha256 `{a.sha256[:16]}…` — {target_description(a)}")
    lines += ["", "## How this was measured", "", *measured_lines(manifest), ""]
    return "\n".join(lines)
