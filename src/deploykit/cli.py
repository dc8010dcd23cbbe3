"""The `deploy` command line. Each command builds a config and calls the library.

Errors: every DeployError becomes one line on stderr and exit code 2 (no
traceback). A run in which some target failed exits 1. TensorFlow is imported
only by the commands that need it, so `deploy --help` and `deploy targets`
start fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from deploykit.errors import DeployError, path_refusal
from deploykit.selection import MIN_BLOCK_S

app = typer.Typer(
    name="deploy",
    help="Take a trained Keras/TensorFlow model to verified, benchmarked device artifacts.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # `deploy convert -h` was "No such option: -h"
)


def _print_version(value: bool) -> None:
    if value:
        from deploykit import __version__

        print(f"deploykit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print deploykit's version and exit.")) -> None:
    """Take a trained Keras/TensorFlow model to verified, benchmarked device artifacts."""

EXIT_TARGET_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
_INTERRUPT_SAID: list[bool] = []  # a command that said how it stopped on Ctrl-C (convert: what it removed)
_CONSOLE: list[bool] = []  # set by main(): this is the `deploy` process itself, not an in-process caller


def _console(stderr: bool = False):
    from rich.console import Console

    if stderr:
        # A private copy of fd 2: native libraries' chatter is captured by pointing fd 2
        # elsewhere while they run, and progress must stay visible meanwhile.
        stream = os.fdopen(os.dup(2), "w", buffering=1)
        return Console(file=stream, stderr=True, width=None if stream.isatty() else 160)
    # Not a terminal (CI logs, pipes): use a wide fixed width rather than 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


@app.command()
def convert(
    model: Path = typer.Argument(..., help="Keras 3 .keras, tf_keras .keras/.h5 file, or SavedModel directory."),
    target: List[str] = typer.Option(..., "--target", "-t", help="Target name (see `deploy targets`) or a .toml target file; repeatable."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help=".npz with x (and y) for calibration and evaluation."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Separate .npz for evaluation (defaults to --data)."),
    # a str, not a Path: Path("") is "." (the working directory), and an empty --out is refused, not run there
    out: str = typer.Option("build", "--out", "-o", help="Output directory (must be empty or new unless --force)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the previous run in a non-empty output directory."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Allow Lambda/TFSMLayer layers (turns Keras safe_mode off) and SavedModels whose graphs use stateful ops beyond a model's own (file reads and writes...). Only for files you trust."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Runtime threads for benchmarks (default: the target's, 2)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed runs before timing."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Timed runs."),
    verify_samples: Optional[int] = typer.Option(None, "--verify-samples", show_default=False,
                                                 help="Verify at most this many samples [default: 1000 of --data; 8 random inputs without it]."),
    label_output: Optional[str] = typer.Option(None, "--label-output", help="The output the labels 'y' score (output_1, or its Keras name); default: the first that fits them."),
    no_bench: bool = typer.Option(False, "--no-bench", help="Verify only; skip benchmarks (an -auto target still times its candidates to choose)."),
    prune: Optional[float] = typer.Option(None, "--prune", help="Prune to this sparsity (e.g. 0.8 zeroes 80% of each prunable kernel) while fine-tuning on --train-data, then convert the pruned model."),
    prune_schedule: Optional[str] = typer.Option(None, "--prune-schedule", help="polynomial (default; sparsity rises from 0, as tfmot's PolynomialDecay) or constant."),
    prune_structure: Optional[str] = typer.Option(None, "--prune-structure", help="unstructured (default), 2:4 (2 zeros in every 4 input-channel weights; implies 50%) or block."),
    prune_block: Optional[str] = typer.Option(None, "--prune-block", help="Block (rows x cols of the kernel) for --prune-structure block (default 1x4)."),
    cluster: Optional[int] = typer.Option(None, "--cluster", help="Weight clustering: share this many values per kernel (e.g. 16; 2..256) with a short fine-tune on --train-data; after --prune, zeros stay zero. Shrinks the gzipped download of every target."),
    cluster_epochs: Optional[int] = typer.Option(None, "--cluster-epochs", help="Fine-tune epochs of --cluster (default 3; 0 clusters without fine-tuning)."),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware training on --train-data before converting (tf_keras models only; Keras 3 models: use tflite-int8). With --prune: sparsity-preserving QAT of the pruned model; with --cluster: cluster-preserving QAT."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Labelled .npz (x, y) for the pruning / clustering / QAT fine-tune (y: class labels, or the target values of a model trained with a regression loss such as mse)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Fine-tune epochs of --prune (default 12; once at the target sparsity, stops early after --patience epochs without a better validation score) and of --qat (default 4)."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Fine-tune learning rate (default: the compiled optimizer's, else Adam 1e-3)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Loss for a model saved without compile(), e.g. sparse_categorical_crossentropy."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop the fine-tune after this many epochs without a better validation accuracy (default 2; pruning counts from the final sparsity on)."),
) -> None:
    """Convert MODEL for each --target, verify every artifact, benchmark it, write manifest and reports."""
    from deploykit.pipeline import Pipeline

    from deploykit.errors import UserError

    prune_settings = None
    tuning_values = (("epochs", epochs), ("learning_rate", learning_rate), ("loss", loss), ("patience", patience))
    tuning = ["--" + k.replace("_", "-") for k, v in tuning_values if v is not None]
    if prune is None and prune_structure is None and not qat and cluster is None and tuning:
        raise UserError(f"{', '.join(tuning)} {'applies' if len(tuning) == 1 else 'apply'} only to the pruning, clustering and QAT fine-tunes; add --prune 0.8 "
                        "(or --prune-structure 2:4), --cluster 16 or --qat")
    if cluster is None and cluster_epochs is not None:
        raise UserError("--cluster-epochs only applies to clustering; add --cluster 16")
    if cluster is not None and epochs is not None and prune is None and prune_structure is None and not qat:
        raise UserError("--epochs sets the pruning and QAT fine-tunes; clustering's is --cluster-epochs (default 3)")
    if cluster_epochs is not None and cluster_epochs < 0:
        raise UserError(f"--cluster-epochs must be 0 or more (0 clusters without fine-tuning), got {cluster_epochs}")
    _check_prune_flags(prune, prune_schedule, prune_structure, prune_block)
    if prune is not None or prune_structure is not None:
        prune_settings = {"sparsity": prune, "structure": prune_structure or "unstructured"}
        # Only what was given: the settings' own defaults (polynomial, 1x4) apply otherwise.
        if prune_schedule is not None:
            prune_settings["schedule"] = prune_schedule
        if prune_block is not None:
            prune_settings["block_size"] = _block_size(prune_block)
        prune_settings.update({k: v for k, v in tuning_values if v is not None})
    cluster_settings = None
    if cluster is not None:
        cluster_settings = {"clusters": cluster, **{k: v for k, v in tuning_values if v is not None and k != "epochs"}}
        if cluster_epochs is not None:
            cluster_settings["epochs"] = cluster_epochs
    qat_settings = None
    if qat:
        qat_settings = {k: v for k, v in tuning_values if v is not None}

    err = _console(stderr=True)
    from deploykit.interrupts import CountedInterrupts, quiet_unraisable_interrupts

    interrupts = CountedInterrupts()
    # Put back when the command returns: a process that calls it in-process (CliRunner, a notebook)
    # keeps its own Ctrl-C.
    saved = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    signal.signal(signal.SIGINT, interrupts.handler)
    quiet_unraisable_interrupts()
    # SIGTERM (CI cancel, timeout, docker stop) stops the run the same way: what it wrote goes,
    # and with --force the previous run is put back.
    signal.signal(signal.SIGTERM, interrupts.handler)
    from deploykit.errors import called_from_cli

    try:
        def make_pipeline(progress: Any) -> Any:
            with _flag_terms(), called_from_cli():  # the settings are checked here: --iterations 0 is named as --iterations
                return Pipeline(
                    target, data=data, out=out, eval_data=eval_data, force=force, trust_model=trust_model,
                    threads=threads, warmup=warmup, iterations=iterations, verify_samples=verify_samples,
                    bench=not no_bench, progress=progress,
                    prune=prune_settings, train_data=train_data, qat=qat_settings, label_output=label_output,
                    cluster=cluster_settings,
                )

        result = _run_convert(err, interrupts, out, make_pipeline, model)
        _print_summary(result)
    finally:
        # The `deploy` process, its run on disk, is about to exit: a Ctrl-C during TensorFlow's teardown
        # (where Python puts the default handler back) killed it silently with code 130. Ignored there.
        written_console = interrupts.written and _CONSOLE
        signal.signal(signal.SIGINT, signal.SIG_IGN if written_console else saved[0])
        signal.signal(signal.SIGTERM, saved[1])
        sys.unraisablehook = saved[2]
    if not result.ok:
        raise typer.Exit(EXIT_TARGET_FAILED)


def _flag_terms() -> contextlib.AbstractContextManager[None]:
    """A refusal of a value the CLI filled from a flag names the flag (``--iterations``), not the setting it
    fills (``bench.iterations``): the library's messages name settings, for the Python API and .toml files."""
    from deploykit.errors import UserError, in_cli_terms, reworded

    return reworded(UserError, in_cli_terms)


def _check_prune_flags(prune: Optional[float], schedule: Optional[str], structure: Optional[str],
                       block: Optional[str]) -> None:
    """Refuse --prune-schedule and --prune-block where they would do nothing (they were silently ignored)."""
    from deploykit.errors import UserError

    if schedule is not None and prune is None and structure is None:
        raise UserError("--prune-schedule only applies to pruning; add --prune 0.8 (or --prune-structure 2:4), "
                        "or drop --prune-schedule")
    if block is not None and structure != "block":
        raise UserError("--prune-block only applies to --prune-structure block; add --prune-structure block "
                        "(with --prune 0.8), or drop --prune-block")


def _block_size(text: str) -> tuple[int, int]:
    """--prune-block ROWSxCOLS as a tuple, refused in the flag's own terms (not block_size's)."""
    from deploykit.errors import UserError

    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--prune-block must look like 1x4 (rows x cols of the kernel), got {text!r}") from None
    if min(rows, cols) < 1:
        raise UserError(f"--prune-block needs two positive sizes like 1x4, got {text!r}")
    if (rows, cols) == (1, 1):
        raise UserError("--prune-block 1x1 is unstructured pruning; drop --prune-structure block and --prune-block, "
                        "or pass a larger block like 1x4")
    return rows, cols


def _run_convert(err: Any, interrupts: Any, out: str, make_pipeline: Any, model: Any) -> Any:
    """Run the pipeline under a status line; a Ctrl-C says what it removed (exit 130; SIGTERM 143)."""
    from deploykit.errors import called_from_cli

    with err.status("starting") as status:

        def progress(msg: str) -> None:
            interrupts.check()  # a Ctrl-C a TensorFlow finalizer swallowed stops the run here (see interrupts)
            status.update(msg)
            if re.search(r"\bepoch \d+/\d+:", msg):  # fine-tune epochs stay on screen and in logs
                err.print(msg, highlight=False)

        pipeline = make_pipeline(progress)
        try:
            with called_from_cli():  # its messages name the flags typed
                result = pipeline.run(model)
        except KeyboardInterrupt:  # typer would turn it into a silent exit 130
            status.stop()
            # 128 + the signal, as the shell reports a process the signal killed: 130 Ctrl-C, 143 SIGTERM
            stopped = "terminated" if interrupts.signum == signal.SIGTERM else "interrupted"
            if getattr(pipeline, "completed", False):  # it came while the finished run let go of --out
                print(f"deploy: {stopped} after the run was written to {out}; its output is complete", file=sys.stderr)
            else:
                print(f"deploy: {stopped}; removed what this run had written to {out}", file=sys.stderr)
            _INTERRUPT_SAID.append(True)
            raise typer.Exit(128 + int(interrupts.signum)) from None
        interrupts.written = True  # the run is complete and on disk: a late Ctrl-C changes nothing
    return result


# Below this many columns the summary table cannot show its eight columns whole.
NARROW_TERMINAL = 110


def _print_summary(result) -> None:
    from rich.table import Table

    from deploykit.artifacts import Manifest
    from deploykit.report.rows import columns, converter_notes, table

    manifest = Manifest.from_dict(result.manifest)
    t = Table(title=f"deploykit: {manifest.model.get('name') or manifest.model.get('source')}")
    titles = dict(columns(manifest))  # a regression run's "Error", as the report heads it
    cols = [(k, titles[k]) for k in ("target", "status", "size", "gzip", "p50", "accuracy", "agreement", "max_err")]
    for _, title in cols:
        t.add_column(title)
    rows = table(manifest)
    for r in rows:
        t.add_row(*(r[k] for k, _ in cols))
    console = _console()
    if console.width >= NARROW_TERMINAL:
        console.print(t)
    else:  # on 80 columns rich cut every cell to "tflite…" and "8.70e-…": one line per target, nothing cut
        console.print(t.title, highlight=False, markup=False)
        for r in rows:
            console.print(f"{r['target']}  {r['status']}  " + "  ".join(f"{title} {r[k]}" for k, title in cols[2:]),
                          highlight=False, markup=False, soft_wrap=True)
    for a in manifest.artifacts:
        if a.status != "ok":
            console.print(f"[red]{a.target} failed:[/red] {a.reason}", markup=True, highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False)
    for note in converter_notes(manifest):
        console.print(f"note: {note}", highlight=False)
    paths = [_shown(p) for p in (result.manifest_path, result.report_path, result.html_report_path)]
    # one line each, however long (a script greps them; piped output is 160 columns wide)
    console.print(f"manifest: {paths[0]}\nreport:   {paths[1]}\nhtml:     {paths[2]}", highlight=False, soft_wrap=True)


@app.command()
def targets(
    show: Optional[str] = typer.Option(None, "--show", help="Print every field of one target (name or .toml path)."),
) -> None:
    """List the built-in target profiles and their settings."""
    from deploykit.targets import FIELD_DOCS, get_target, is_toml_path, list_targets

    console = _console()
    if show is not None and not show.strip():
        from deploykit.errors import UserError

        raise UserError("--show takes a target's name or a .toml path, e.g. --show tflite-int8")
    if show:
        from deploykit.converters import option_specs

        t = get_target(show)
        data = t.to_dict()
        if t.is_auto:  # its candidates carry the numeric types, tolerance and bench (overrides: what it sets on them)
            t.check_candidates()
            for key in ("weights", "activations", "io", "runtime", "calibration_samples", "tolerance", "bench"):
                data.pop(key)
        else:  # a profile that is no -auto target compares no candidates (an empty list is refused in a file)
            data.pop("candidates", None)
            data.pop("select_by", None)
        option_docs = {f"options.{k}": spec.description for k, spec in option_specs(t.format).items()}
        # Printed as TOML, so that the output saved as a file (renamed, edited) is a target file.
        for key, value in data.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    doc = FIELD_DOCS.get(f"{key}.{sub}") or option_docs.get(f"{key}.{sub}") or FIELD_DOCS.get(key, "")
                    if v is not None:
                        console.print(f"{key}.{sub} = {_toml_value(v)}    # {doc}", highlight=False, soft_wrap=True,
                                      markup=False)
            elif value is not None:
                if key == "candidates":  # a candidate file was joined to its auto file's folder: absolute, it loads anywhere
                    value = [os.path.abspath(c) if is_toml_path(c) else c for c in value]
                console.print(f"{key} = {_toml_value(value)}    # {FIELD_DOCS.get(key, '')}", highlight=False,
                              soft_wrap=True, markup=False)
        return
    for t in list_targets():
        tol = t.tolerance
        parts = [f"atol {tol.atol:g}"] + ([f"rtol {tol.rtol:g}"] if tol.rtol else []) + \
            ([f"+{tol.range_atol:.2g} x output range" if tol.range_atol < 0.005 else f"+{tol.range_atol:.0%} of output range"]
             if tol.range_atol else []) + \
            [f"accuracy drop <= {tol.max_accuracy_drop:g} pt", f"agreement >= {tol.min_agreement:.0%}"]
        if t.is_auto:  # its own types and tolerance judge nothing: each candidate is built and judged by its own
            head = f"{t.name:<16} candidates {', '.join(c.name for c in t.candidate_targets())}, runtime {t.runtime}"
            judged = "each candidate by its own tolerance"
        else:
            head = f"{t.name:<16} weights {t.weights:<8} activations {t.activations:<8} io {t.io:<8} runtime {t.runtime}"
            judged = ", ".join(parts)
        console.print(f"{head}\n{'':16} tolerance: {judged}\n{'':16} {t.description}", highlight=False, soft_wrap=True,
                      markup=False)
    console.print("Show every field of one: deploy targets --show NAME. A .toml file with the same fields is a target too.", highlight=False)


@app.command()
def bench(
    artifacts: List[Path] = typer.Argument(..., metavar="ARTIFACT...", help="An artifact file, e.g. model.tflite; several are timed side by side."),
    threads: int = typer.Option(2, "--threads"),
    warmup: int = typer.Option(10, "--warmup"),
    iterations: int = typer.Option(100, "--iterations", help="Timed runs of one file; side by side, the least per file: "
                                   f"each round runs every file for at least {MIN_BLOCK_S:g} s, so fast files run more."),
    data: Optional[Path] = typer.Option(None, "--data", help=".npz whose first sample is the input (random inputs otherwise); a quantized input takes real values, or values of its own integer type as they are."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result (raw samples included) as JSON."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="litert | onnxruntime | tflm | tfjs (default: from the file suffix)."),
    browser: bool = typer.Option(False, "--browser", help="TF.js: run in headless Chromium (wasm; webgl tried too) instead of Node."),
    backend: Optional[str] = typer.Option(None, "--backend", help="TF.js backend: wasm (default) or cpu; in the browser also webgl."),
) -> None:
    """Benchmark an existing artifact on its real runtime (a TF.js model.json in Node, or --browser).

    Several files are timed side by side, in alternating rounds, and compared round by round.
    """
    from deploykit.runtime_bench import bench_file
    from deploykit.targets import BenchSettings

    with _flag_terms():  # checked here, where a refusal can name the flag
        BenchSettings(threads=threads, warmup=warmup, iterations=iterations)
    result = bench_file(artifacts, threads=threads, warmup=warmup, iterations=iterations, data=data, runtime=runtime,
                        browser=browser, backend=backend)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from deploykit.report.rows import human_bytes, oversubscribed, threads_text
    from deploykit.report.rows import latency_ms as ms

    console = _console()
    crowded = oversubscribed([threads], os.cpu_count()).strip()
    if crowded:
        console.print(f"note: {crowded}", highlight=False)
    if "files" in result:
        _print_side_by_side(console, result)
        return
    artifact = artifacts[0]
    where = result["runtime"] + (f" {result['backend']}" if result.get("backend") else "")
    if result.get("environment") == "chromium-headless":
        where += f" in Chromium {result.get('browser_version') or ''}".rstrip()
    console.print(
        f"{artifact.name} on {where} ({threads_text(result['threads'])}, {result['warmup']} warm-up, n={result['n']}, {result['inputs']} inputs)\n"
        f"  p50 {ms(result['p50_ms'])} ms  p90 {ms(result['p90_ms'])}  p99 {ms(result['p99_ms'])}  "
        f"mean {ms(result['mean_ms'])} ± {ms(result['std_ms'])}  min {ms(result['min_ms'])}  max {ms(result['max_ms'])}\n"
        f"  init {result['init_ms']:.1f} ms  size {human_bytes(result['size_bytes'])} (gzip {human_bytes(result['gzip_bytes'])})  "
        f"peak RSS {human_bytes(result['peak_rss_bytes']) if result['peak_rss_bytes'] else '–'}"
        + (f" ({result['peak_rss_of']})" if result.get("peak_rss_of", "this process") != "this process" else "")
        + (f"\n  runtime mem {human_bytes(result['runtime_memory_bytes'])} ({result['runtime_memory_of']})"
           if result.get("runtime_memory_of") else ""),
        highlight=False,
    )
    profile = result.get("op_profile") or {}
    if profile.get("top_op_types"):  # ONNX Runtime's profiler (the README promises them here, not only in --json)
        console.print("  top ops: " + ", ".join(f"{o['op_type']} {o['share']:.0%} ({o['nodes']} node{'s' if o['nodes'] != 1 else ''})"
                                              for o in profile["top_op_types"][:5]), highlight=False)
    if result.get("note"):
        console.print(f"  note: {result['note']}", highlight=False)
    for other, r in result.get("also", {}).items():  # browser: the other backends tried in the same page
        detail = r["error"] if "error" in r else f"p50 {ms(r['p50_ms'])} ms  p90 {ms(r['p90_ms'])}  init {r['init_ms']:.1f} ms"
        renderer = f" ({r['webgl_renderer']})" if r.get("webgl_renderer") else ""
        console.print(f"  also {other}{renderer}: {detail}", highlight=False)


def _print_side_by_side(console: Any, result: dict[str, Any]) -> None:
    from deploykit.report.rows import human_bytes, latency_ms, threads_text

    shown = [_shown(Path(f["path"])) for f in result["files"]]
    width = max(len(s) for s in shown)
    console.print(f"{len(shown)} files side by side ({threads_text(result['threads'])} asked, {result['rounds']} alternating rounds, "
                  f"{result['inputs']} inputs); × first = median of the rounds' p50 ratios", highlight=False)
    console.print(f"  {'file':{width}}  {'runtime':11}  {'threads':>7}  {'p50 ms':>8}  {'p90 ms':>8}  {'× first':>7}  {'size':>10}  "
                  f"{'gzip':>10}", highlight=False)
    for name, f in zip(shown, result["files"]):
        where = f["runtime"] + (f" {f['backend']}" if f.get("backend") else "")
        same = f"  (same bytes as {_shown(Path(f['same_file_as']))})" if f.get("same_file_as") else ""
        console.print(f"  {name:{width}}  {where:11}  {f['threads']:>7}  {latency_ms(f['p50_ms']):>8}  {latency_ms(f['p90_ms']):>8}  "
                      f"{f['vs_first']:>7.3f}  {human_bytes(f['size_bytes']):>10}  {human_bytes(f['gzip_bytes']):>10}{same}",
                      highlight=False)
    from deploykit.selection import UNSTEADY_SPREAD

    swung = [(name, f["vs_first_spread"]) for name, f in zip(shown, result["files"]) if f.get("unsteady")]
    if swung:
        console.print("  unsteady: " + ", ".join(f"{n}'s round ratios spanned {s:.1f}x" for n, s in swung)
                      + f" (more than {UNSTEADY_SPREAD:g}x, the extreme rounds aside: the machine's load or the runtime's "
                      f"speed changed between rounds); {'its' if len(swung) == 1 else 'their'} × first "
                      f"{'is not a figure' if len(swung) == 1 else 'are not figures'} to rely on: time again, on a quieter "
                      "machine", highlight=False)


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="Keras 3 .keras, tf_keras .keras/.h5 file, or SavedModel directory."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Allow layers that carry code."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Print a model's inputs, outputs, layers, embedded preprocessing layers and parameter count."""
    from deploykit.models import inspect_model

    info = inspect_model(model, trust_model=trust_model)
    if as_json:
        print(json.dumps(info.to_dict(), indent=2))
        return
    console = _console()
    console.print(f"{info.name or model} ({info.kind}), {info.params if info.params is not None else '?'} parameters", highlight=False)
    for label, specs in (("input", info.inputs), ("output", info.outputs)):
        for s in specs:
            keras = f" (Keras '{s.keras_name}')" if getattr(s, "keras_name", "") and s.keras_name != s.name else ""
            console.print(f"  {label:6} {s.name}{keras}: shape {tuple(s.shape)} {s.dtype}", highlight=False)
    if info.preprocessing_layers:
        console.print("  preprocessing: " + ", ".join(
            f"{p['class']} ({p['name']}" + ("; identity at inference, removed at export" if p.get("at_inference") else "") + ")"
            for p in info.preprocessing_layers), highlight=False)
    elif info.kind == "saved_model":
        console.print("  preprocessing: unknown (a SavedModel keeps no layer list; inspect the Keras file instead)", highlight=False)
    else:
        console.print("  preprocessing: none embedded", highlight=False)
    if info.layers:
        console.print(f"  layers ({len(info.layers)}):", highlight=False)
        for layer in info.layers:
            console.print(f"    {layer['name']}: {layer['class']}", highlight=False)


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to the working directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _repeated_option(argv: list[str]) -> str | None:
    """A one-value option given twice (``--data a.npz --data b.npz``): click keeps the last and drops the
    first without a word, so a run calibrated on the wrong file. Only --target (and flags) repeat.
    Read the way click reads the line: an option's value (``--loss --out``) is not an option, and
    ``-da.npz`` / ``--data=a.npz`` carry theirs."""
    command = typer.main.get_command(app)
    sub = getattr(command, "commands", {}).get(argv[0]) if argv else None
    if sub is None:
        return None
    options = {}  # every name of a value-taking option -> (its long name, whether it may repeat)
    for param in sub.params:
        if hasattr(param, "is_flag") and not param.is_flag and not getattr(param, "count", False):
            flag = next((n for n in param.opts if n.startswith("--")), param.opts[0])
            options.update({n: (flag, param.multiple) for n in (*param.opts, *param.secondary_opts)})
    seen: dict[str, int] = {}
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        if arg in ("--help", "-h"):
            return None  # the help, whatever else the line holds
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2] if arg.startswith("-") else None
        if name not in options:
            continue
        if arg == name:
            next(args, None)  # its value, whatever it looks like
        flag, repeats = options[name]
        seen[flag] = seen.get(flag, 0) + 1
        if seen[flag] > 1 and not repeats:
            return f"{flag} is given more than once; give it once"
    return None


def _not_utf8(args: list[str]) -> str | None:
    """Why an argument cannot be used when its bytes are not UTF-8 (a file name from a Latin-1 system or
    an archive), or None; refused before anything runs, as the API refuses such a path."""
    from deploykit.errors import not_utf8

    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return f"argument {not_utf8(arg)}"
    return None


def main() -> None:
    """Console-script entry point: maps DeployError and usage errors to one line and exit code 2."""
    # Typer's click (vendored in newer typer) names its usage error only in BadParameter's bases.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    from deploykit._quiet import _ENV_DEFAULTS, CLI_ENV_DEFAULTS, library_logs_muted

    for key, value in {**_ENV_DEFAULTS, **CLI_ENV_DEFAULTS}.items():  # this process and its children are ours
        os.environ.setdefault(key, value)
    _CONSOLE.append(True)
    refused = _not_utf8(sys.argv[1:]) or _repeated_option(sys.argv[1:])
    if refused:
        print(f"deploy: error: {refused}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    try:
        with library_logs_muted():  # every command, not only the API's entry points
            code = app(standalone_mode=False, prog_name="deploy")
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `deploy`: the help, as before
            print(exc.format_message(), file=sys.stderr)
        else:  # click printed usage, a hint and the error on four lines
            where = exc.ctx.command_path if exc.ctx else "deploy"
            print(f"deploy: error: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.Abort:  # Ctrl-C while click itself was prompting or parsing
        print("deploy: interrupted", file=sys.stderr)
        sys.exit(130)
    except DeployError as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))  # Keras's terminal codes
        print(f"deploy: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("deploy: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        refusal = path_refusal(exc)
        if refusal is not None:
            print(f"deploy: error: {refusal}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # The run has already removed what it wrote (and restored a --force run's previous output).
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"deploy: error: {exc.strerror}{where}; free some space or choose another --out (or TMPDIR)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if code == EXIT_INTERRUPTED and not _INTERRUPT_SAID:  # typer turns Ctrl-C in a command into a silent 130
        print("deploy: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()


def _toml_value(value: Any) -> str:
    """``value`` written as TOML (true/false, quoted strings, arrays), not as Python's repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, dict):  # an -auto file's overrides.tolerance: an inline table, not Python's {'k': v}
        return "{ " + ", ".join(f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', str(k)) else json.dumps(str(k))} = "
                                f"{_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)
