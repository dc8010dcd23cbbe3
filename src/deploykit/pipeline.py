"""The run: load -> convert -> verify -> bench per target -> manifest + reports.

User mistakes (bad model, data, target names, an output directory in the way)
are found before anything is written and raised at once. A target that fails
(converter error, missed tolerance) is recorded as failed and the other
targets still finish; the result's ``ok`` is then False.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import datetime as _dt
import functools
import inspect
import json
import keyword
import math
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from deploykit._quiet import logs_muted
from deploykit.artifacts import FAILED_PREFIX, FEW_SAMPLES, MANIFEST_NAME, Artifact, Manifest, atomic_path, gzip_size, sha256_file
from deploykit.errors import DataError, DeployError, ModelLoadError, OutputExistsError, UserError, api_entry, disk_full
from deploykit.optimize.settings import (CLUSTER_SETTINGS, PRUNE_SETTINGS, QAT_SETTINGS, check_cluster,
                                        check_prune, check_qat, check_qat_model, fine_tune_loss,
                                        label_output_index)
from deploykit.outdir import (LOCK_NAME, REPORT_FILES, check_out_dir, discard_previous_run, lock_out_dir,
                              restore_previous_run, set_aside_previous_run, signals_held)
from deploykit.targets import Target, get_target, is_toml_path
from deploykit.tmpdirs import TempDir, remove_stale

_BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deploykit-gzip")
DEFAULT_VERIFY_SAMPLES = 1000
RANDOM_SAMPLES = 8  # verified without data, unless verify_samples says how many
# Per format, the float32 target a pruned or clustered run converts the dense model to, for the
# report's size comparison (TFLite Micro runs .tflite files: its dense reference is the TFLite one).
DENSE_REFERENCE = {"tflite": "tflite-fp32", "tflm": "tflite-fp32", "onnx": "onnx-fp32", "tfjs": "tfjs-fp32"}

ProgressFn = Callable[[str], None]


@dataclass
class ConvertResult:
    """What a run produced; ``manifest`` is the content of ``manifest.json``."""

    out: Path
    manifest: dict[str, Any]
    manifest_path: Path
    report_path: Path
    html_report_path: Path
    # A target as it was passed (a .toml path) -> the profile name its manifest entry is stored under.
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    #: What the CLI prints as warnings: verdicts resting on too few samples, a fine-tune's accuracy cost...
    #: (``deploykit.convert`` also raises each as a UserWarning).
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every requested target produced an artifact that passed verification.

        Candidates that an ``-auto`` target built and rejected do not count.
        """
        return all(a["status"] == "ok" for a in self.manifest["artifacts"] if not a.get("candidate_of"))

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return self.manifest["artifacts"]

    def artifact(self, target: str | Path | Target) -> dict[str, Any]:
        """The manifest entry of one target: its name, or the .toml path or Target it was passed as.

        Raises:
            KeyError: the result holds no such target; the message lists the ones it holds.
        """
        name = target.name if isinstance(target, Target) else _alias(self.aliases, target)
        for a in self.artifacts:
            if a["target"] == name:
                return a
        raise KeyError(f"no target {name!r} in this result; it holds: "
                       f"{', '.join(a['target'] for a in self.artifacts)}")

    @api_entry
    def path(self, target: str) -> Path:
        """The absolute path of one target's artifact file (``model.tflite``, ``model.onnx``, ``model.json``...).

        ``artifact(target)["path"]`` is relative to ``out``, as the manifest keeps it; this is the one to
        open, copy or hand to :func:`deploykit.bench`.

        Raises:
            KeyError: the result holds no such target.
            UserError: the target failed (its message says why and where a file it built was kept), or a
                later run into ``out`` replaced this one.
        """
        a = self.artifact(target)
        if a["status"] != "ok":
            # A file that failed verification is kept for inspection, but is not the artifact to ship.
            kept = f"; the file it built is kept for inspection at {self.out / a['path']}" if a.get("path") else ""
            reason = (a.get("error") or "").split("\n")[0]
            raise UserError(f"target {a['target']!r} failed ({reason}), so it has no artifact{kept}")
        self._check_still_on_disk(a)
        return self.out / a["path"]

    def _check_still_on_disk(self, artifact: dict[str, Any]) -> None:
        """Refuse a result whose ``out`` a later run (or a person) replaced: its path() handed out the other
        run's file, or one that was gone, and deploykit.bench timed the wrong model without a word."""
        try:
            on_disk = json.loads(self.manifest_path.read_text())
            created = on_disk.get("created")
            same = any(e.get("target") == artifact["target"] and e.get("sha256") == artifact.get("sha256")
                       for e in on_disk.get("artifacts", []))
        except (OSError, ValueError, AttributeError, TypeError):
            created, same = None, False
        if created != self.manifest.get("created") or not same:
            raise UserError(f"{self.out} no longer holds this run (written {self.manifest.get('created')}): "
                            + (f"a run written {created} replaced it" if created else "its manifest.json is gone")
                            + "; use that run's result, or convert again")

    def __getitem__(self, key: str) -> Any:
        """A top-level key of the manifest (``result["artifacts"]``, ``result["model"]``...)."""
        return self.manifest[key]

    def __contains__(self, target: Any) -> bool:
        """Whether the result holds ``target`` (a name, .toml path or Target), as :meth:`artifact` finds it."""
        try:
            self.artifact(target)
        except KeyError:
            return False
        return True

    # Not iterable (iteration fell back to __getitem__(0): KeyError: 0): `in` takes target names and
    # result[...] manifest keys, so neither is what iteration would obviously give; iterate result.artifacts.
    __iter__ = None

    def __repr__(self) -> str:
        # Short: a notebook cell ending in `result` printed the whole manifest, raw timing samples included.
        targets = ", ".join(f"{a['target']}: {a['status']}" for a in self.artifacts if not a.get("candidate_of"))
        return (f"ConvertResult(out={str(self.out)!r}, ok={self.ok}, targets=[{targets}], "
                f"report={str(self.report_path)!r})")


def _alias(aliases: dict[str, str], target: Any) -> Any:
    """The profile name a target passed as ``target`` (a .toml path: as written, or any path to that file) got."""
    if not isinstance(target, (str, Path)):
        return target
    if str(target) in aliases:
        return aliases[str(target)]
    if is_toml_path(target):
        return aliases.get(str(Path(os.path.expanduser(target)).resolve()), str(target))
    return str(target)


def _resolve_targets(targets: Iterable[str | Target] | str | Target) -> tuple[list[Target], dict[str, str]]:
    """The targets, each once, and the names the ones passed as .toml paths got (see :meth:`ConvertResult.artifact`)."""
    if isinstance(targets, (str, Path, Target)):
        targets = [targets]
    if targets is None:
        targets = []
    if isinstance(targets, (bytes, dict)) or not isinstance(targets, Iterable):
        raise UserError(f"targets must be a target name or a list of them, e.g. ['tflite-int8'], got "
                        f"{type(targets).__name__} {targets!r}")
    from deploykit.targets import _builtins

    resolved: list[Target] = []
    aliases: dict[str, str] = {}
    for t in targets:
        target = get_target(t)
        if isinstance(t, (str, Path)) and str(t) != target.name:  # a .toml file: stored under its profile's name
            aliases[str(t)] = aliases[str(Path(os.path.expanduser(t)).resolve())] = target.name
        builtin = _builtins().get(target.name)
        # Bench settings do not change the artifact: get_target("tflite-int8").with_bench(threads=1) is that profile.
        if builtin is not None and dataclasses.replace(target, bench=builtin.bench) != builtin:
            # Its artifacts would sit under that name and read as the built-in profile's (a TOML file is refused the same way).
            raise UserError(f"target {target.name!r} is a built-in profile's name but has other settings; give your "
                            f"Target its own name, e.g. dataclasses.replace(target, name=\"{target.name}-custom\")")
        same = next((r for r in resolved if r.name == target.name), None)
        if same is None:
            resolved.append(target)
        elif same != target:
            raise UserError(
                f"two different targets are both named {target.name!r}; give each target a unique name"
            )
    if not resolved:
        from deploykit.targets import list_targets

        raise UserError(f"no target given; choose one or more of: {', '.join(t.name for t in list_targets())}")
    # An -auto target's candidates share the run's names: a user target named like one ("tla.tflite-int8")
    # was built in its place (or the candidate shipped under the user's name), with exit 0.
    by_name = {t.name: (t, None) for t in resolved}
    for auto in (t for t in resolved if t.is_auto):
        for cand in auto.candidate_targets():
            other, owner = by_name.setdefault(cand.name, (cand, auto.name))
            if other != cand:
                said = f"a candidate of {owner!r}" if owner else "a target of the run"
                raise UserError(f"target {cand.name!r} is both {said} and a candidate of {auto.name!r}, with other "
                                "settings; give your target another name")
    return resolved, aliases


class Pipeline:
    """Convert, verify and benchmark one model for several targets.

    Args:
        targets: Target names, TOML paths or :class:`Target` objects.
        data: Calibration (and default evaluation) data: ``.npz`` path, arrays, ``(x, y)``...
        out: Output directory for artifacts, ``manifest.json`` and reports.
        eval_data: Separate evaluation data (defaults to ``data``).
        force: Overwrite a non-empty output directory's previous run.
        trust_model: Allow model files that carry code (turns Keras safe_mode off).
        threads, warmup, iterations: Override every target's bench settings.
        verify_samples: At most this many evaluation samples are verified (default: 1000 of the data;
            without data, 8 random inputs).
        bench: Benchmark artifacts (True) or only verify them.
        progress: Called with a short message as each step starts.
        prune: Prune before converting: a sparsity (``0.8``) or a dict of
            :func:`deploykit.optimize.prune.prune` settings (``sparsity``, ``schedule``,
            ``structure``, ``block_size``, ``epochs``, ``batch_size``, ``patience``,
            ``learning_rate``, ``loss``, ``validation_split``, ``seed``). Every artifact
            is then checked to still hold the pruned kernels' zeros.
        cluster: Weight clustering before converting (after ``prune``, zeros kept): a number of
            shared values per kernel (``16``) or a dict of
            :func:`deploykit.optimize.cluster.cluster` settings (``clusters``, ``epochs``,
            ``batch_size``, ``patience``, ``learning_rate``, ``loss``, ``validation_split``, ``seed``).
        qat: Quantization-aware training before converting (tf_keras models only): ``True``
            or a dict of :func:`deploykit.optimize.qat.quantize_aware` settings (``epochs``,
            ``batch_size``, ``patience``, ``learning_rate``, ``loss``, ``validation_split``,
            ``seed``). With ``prune`` too, the pruned model gets sparsity-preserving QAT.
        train_data: Labelled training data for the pruning / clustering / QAT fine-tune (``.npz`` with x, y).
        label_output: The output the labels (or regression targets) of the evaluation data score, by
            its artifact name (``output_1``) or its Keras name; default: the first that fits them.

    Example:
        >>> Pipeline(["tflite-fp32", "tflite-int8"], data="calib.npz", out="build").run("model.keras")
    """

    @api_entry
    def __init__(
        self,
        targets: Sequence[str | Target] | str | Target,
        *,
        data: Any = None,
        out: str | Path = "build",
        eval_data: Any = None,
        force: bool = False,
        trust_model: bool = False,
        threads: int | None = None,
        warmup: int | None = None,
        iterations: int | None = None,
        verify_samples: int | None = None,
        bench: bool = True,
        progress: ProgressFn | None = None,
        prune: Any = None,
        train_data: Any = None,
        qat: Any = None,
        label_output: str | None = None,
        cluster: Any = None,
    ):
        for flag, value in (("force", force), ("trust_model", trust_model), ("bench", bench)):
            if not isinstance(value, (bool, np.bool_)):  # "no" from a config file would mean yes
                raise UserError(f"{flag} must be True or False, got {type(value).__name__} {value!r}")
        force, trust_model, bench = bool(force), bool(trust_model), bool(bench)
        if not isinstance(out, (str, os.PathLike)):
            raise UserError(f"out must be a directory path, got {type(out).__name__} {out!r}")
        if verify_samples is not None and (isinstance(verify_samples, (bool, np.bool_))
                                           or not isinstance(verify_samples, (int, np.integer))):
            raise UserError(f"verify_samples must be a whole number >= 1, got {type(verify_samples).__name__} {verify_samples!r}")
        self.targets, self._aliases = _resolve_targets(targets)
        self.prune_options = check_prune(prune, train_data, tuned=qat not in (None, False) or cluster is not None)
        self.cluster_options = check_cluster(cluster, train_data)
        self.qat_options = check_qat(qat, train_data)
        if self.qat_options is not None:
            # A QAT model carries fake-quant ops: its float conversions bake them in (tflite-fp32
            # becomes QUANTIZE/DEQUANTIZE pairs, ONNX/TF.js fp32 drift ~0.1 from the QAT model).
            not_int8 = [t.name for t in self.targets if _qat_refuses(t)]
            if not_int8:
                raise UserError(
                    f"--qat trains the model for int8 inference; target(s) {', '.join(not_int8)} are not int8 "
                    "(a float conversion of a QAT model keeps its fake quantization): choose int8 targets such as "
                    "tflite-int8, tflm-int8, onnx-int8-qdq, or drop --qat"
                )
        self.train_data = train_data
        if label_output is not None and not isinstance(label_output, str):
            raise UserError(f"label_output must be an output's name, e.g. 'output_1', got {label_output!r}")
        self.label_output = label_output
        self._label_index: int | None = None
        self._output_keys: list[str] | None = None
        self.prune_report: dict[str, Any] | None = None
        self.cluster_report: dict[str, Any] | None = None
        self.qat_report: dict[str, Any] | None = None
        overrides = {k: v for k, v in (("threads", threads), ("warmup", warmup), ("iterations", iterations)) if v is not None}
        self.bench_overrides = overrides
        for t in list(self.targets):
            t.check_candidates()  # an unknown or -auto candidate is a user error, found before any work
        if overrides and not bench and not any(t.is_auto for t in self.targets):
            # recorded in the manifest beside an empty benchmark, for timings that never ran
            given = ", ".join(f"--{k}" for k in overrides)
            raise UserError(f"{given} set{'s' if len(overrides) == 1 else ''} the benchmark, which --no-bench turns off; "
                            "drop one of them (an -auto target still times its candidates)")
        if overrides:
            self.targets = [t.with_bench(**overrides) for t in self.targets]
        if verify_samples is not None and verify_samples < 1:
            raise UserError(f"verify_samples must be a whole number >= 1, got {verify_samples}")
        self.data, self.eval_data = data, eval_data
        if isinstance(out, str) and not out.strip():  # Path("") is the working directory: --force would write there
            raise UserError(f"--out is empty ({out!r}); name an output directory, e.g. --out build")
        self.out = Path(os.path.expanduser(out))  # '~/build' from Python: no shell expanded it
        self.force, self.trust_model, self.bench_enabled = force, trust_model, bench
        self.verify_samples = None if verify_samples is None else int(verify_samples)
        if progress is not None and not callable(progress):
            raise UserError(f"progress must be a function taking one message string (e.g. print), got {progress!r}")
        self.progress = _caller_progress(progress) if progress else (lambda msg: None)
        self._refused: dict[str, str] = {}  # target name -> why it cannot take this model (set by run)

    # -------------------------------------------------------------------------------------
    @api_entry
    @logs_muted
    def run(self, model: Any) -> ConvertResult:
        """Run every target on ``model`` (path or in-memory Keras model)."""
        self._restore: tuple[Any, list[np.ndarray]] | None = None
        self.completed = False  # True once run() has written everything and let go of the output directory
        # '~/m.keras' from Python: no shell expanded it. Once here, for every check and load below.
        model = _expanded(model)
        self.data, self.eval_data, self.train_data = (_expanded(d) for d in (self.data, self.eval_data, self.train_data))
        import logging

        from deploykit.interrupts import counted_sigint

        root_handlers = list(logging.root.handlers)
        remove_stale()  # what killed runs left in $TMPDIR (SavedModel exports...); live runs' stay
        told = self.progress
        try:
            with counted_sigint() as interrupts:
                if interrupts is not None:  # a Ctrl-C a TensorFlow finalizer swallowed stops the run at its next step

                    def progress(msg: str) -> None:
                        interrupts.check()
                        told(msg)

                    self.progress = progress
                return self._run(model)
        finally:
            self.progress = told
            # TensorFlow's export logs through absl, which calls logging.basicConfig() on the root logger:
            # the caller's own basicConfig(filename=...) afterwards did nothing. Handlers it added go.
            for handler in [h for h in logging.root.handlers if h not in root_handlers]:
                logging.root.removeHandler(handler)
            if self._restore is not None:  # the caller's model, pruned in place, gets its weights back
                keras_model, weights = self._restore
                keras_model.set_weights(weights)

    def _run(self, model: Any) -> ConvertResult:
        from deploykit.converters import get_converter
        from deploykit.data import load_data
        from deploykit.models import load_model
        from deploykit.runtime_bench.memory import PeakRSS, release_memory
        from deploykit.verify import reference_noise

        for t in self.targets:
            get_converter(t.format)
        check_out_dir(self.out, self.force, [t.name for t in self._all_targets()], model,
                       [self.data, self.eval_data, self.train_data])
        steps: dict[str, Any] = {}

        self.progress("loading model")
        with PeakRSS() as mem:
            loaded = load_model(model, trust_model=self.trust_model)
        steps["load"] = mem.to_dict()
        if loaded.keras_model is not None:
            from deploykit.models import check_finite_weights, check_stateless

            check_finite_weights(loaded.keras_model, loaded.source)
            check_stateless(loaded.keras_model, loaded.source)
        if self.qat_options is not None:  # before any training: a Keras 3 model must not be pruned first
            check_qat_model(loaded)
        specs = loaded.inputs
        _check_numeric(specs, "input")
        if loaded.keras_model is not None:  # exported to a SavedModel: its signature's naming rules apply
            _check_input_names(specs)
        outputs = loaded.info().outputs
        _check_numeric(outputs, "output")
        _check_batched_outputs(specs, outputs)
        aliases = None
        if loaded.keras_model is not None:  # what a per-output compiled loss is keyed by
            from deploykit.optimize.heads import output_aliases, output_keys

            self._output_keys = output_keys(loaded.keras_model)
            aliases = output_aliases(loaded.keras_model) if len(self._output_keys) == len(outputs) else None
        self._label_index = label_output_index(self.label_output, outputs, aliases)
        if loaded.keras_model is not None:  # before the data is read and before any loss is asked for
            from deploykit.optimize.heads import check_fine_tunable

            step = next((s for s, o in (("prune", self.prune_options), ("cluster", self.cluster_options),
                                        ("qat", self.qat_options)) if o is not None), None)
            if step is not None:
                check_fine_tunable(loaded.keras_model, 0 if len(outputs) == 1 else self._label_index, step)
        calib = self._evaluation_data(self.data, specs, "data", model, outputs, loaded) if self.data is not None else None
        evald = (self._evaluation_data(self.eval_data, specs, "eval data", model, outputs, loaded)
                 if self.eval_data is not None else calib)
        if calib is None and any(t.needs_calibration for t in self.targets):
            need = [t.name for t in self.targets if t.needs_calibration]
            raise DataError(f"target(s) {', '.join(need)} quantize activations and need calibration data; pass --data calib.npz")
        if evald is None:
            # a few by default (each costs a reference prediction and a run per artifact), as many as asked
            evald = _random_inputs(specs, loaded.keras_model, self.verify_samples or RANDOM_SAMPLES)
        # Labels score the first multi-class output (see verify.scored_output): their range is checked against it,
        # over every label given (a label of 42 for 10 classes was refused or not by which rows were sampled).
        from deploykit.data import check_label_range
        from deploykit.verify import label_classes, labels_fit

        described = [(tuple(o.shape), o.dtype) for o in outputs]
        if not labels_fit(described, evald.y, self._label_index):
            raise DataError(
                f"{evald.source}: labels 'y' of shape {evald.y.shape} give a class per position, and no output has "
                f"those positions (outputs: {', '.join(str(tuple(o.shape)) for o in outputs)}); pass "
                "labels of the output's shape, one class per sample (N,), or leave 'y' out")
        check_label_range(evald, label_classes(described, evald.y, self._label_index))
        evald = evald.spread(self.verify_samples or DEFAULT_VERIFY_SAMPLES)
        if self.prune_options is not None:  # the pruned model is what gets converted and verified
            dense_scores = _eval_scores(loaded.predict(evald.x), evald, self._label_index)
            loaded = self._prune(model, loaded, steps)
            specs = loaded.inputs
        if self.cluster_options is not None:  # the clustered model is what gets converted and verified
            pre_cluster_scores = _eval_scores(loaded.predict(evald.x), evald, self._label_index)
            loaded = self._cluster(model, loaded, steps)
            specs = loaded.inputs
        if self.qat_options is not None:  # the QAT model (fake-quant ops) is what gets converted and verified
            pre_qat_scores = _eval_scores(loaded.predict(evald.x), evald, self._label_index)
            loaded = self._qat(model, loaded, steps)
            specs = loaded.inputs

        self.progress("computing reference outputs")
        with PeakRSS() as mem:
            output_names = loaded.output_names  # exports the SavedModel once (shared by targets)
            reference = loaded.predict(evald.x)
        steps["reference"] = mem.to_dict()
        _check_reference_finite(reference, output_names, evald,
                                "the clustered model's" if self.cluster_options is not None else
                                "the pruned model's" if self.prune_options is not None else
                                "the QAT model's" if self.qat_options is not None else "the model's own",
                                loaded.keras_model)

        def noise() -> list[float]:
            # What float32 itself leaves undefined in each output (widens the parity bounds). Measured
            # the first time an artifact misses the plain bound, once per run: a well-conditioned
            # model never pays for it (0.5 s on MobileNetV2).
            if "float32_noise" not in steps["reference"]:
                steps["reference"]["float32_noise"] = dict(zip(output_names, reference_noise(loaded.predict, evald.x, reference)))
            return list(steps["reference"]["float32_noise"].values())

        final_scores = _eval_scores(reference, evald, self._label_index)

        def before_after(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
            return {"source": evald.source, "samples": len(evald), **{f"{k}_before": v for k, v in before.items()},
                    **{f"{k}_after": v for k, v in after.items()}}

        if self.prune_report is not None:  # the dense and the pruned model on the artifacts' evaluation data
            pruned_scores = (pre_cluster_scores if self.cluster_report is not None else
                             pre_qat_scores if self.qat_report is not None else final_scores)
            self.prune_report["eval"] = before_after(dense_scores, pruned_scores)
        if self.cluster_report is not None:  # the model before clustering and the clustered model
            self.cluster_report["eval"] = before_after(pre_cluster_scores,
                                                       pre_qat_scores if self.qat_report is not None else final_scores)
        if self.qat_report is not None:  # the model before QAT and the QAT model (fake-quant, in Keras)
            self.qat_report["eval"] = before_after(pre_qat_scores, final_scores)
        inputs = {s.name: x for s, x in zip(specs, evald.x)}
        info = loaded.info()
        # Format-specific refusals (TFLite Micro needs fixed shapes), found before anything is
        # written. A refused target fails on its own, like one whose ops do not convert, and the
        # others still run; a run in which every target is refused is bad input: exit 2, nothing written.
        self._refused = {}
        first_refusal: UserError | None = None
        for t in self._all_targets():
            preflight = getattr(get_converter(t.format), "preflight", None)
            if preflight is not None:
                try:
                    preflight(loaded, t)
                except UserError as exc:
                    self._refused[t.name] = str(exc)
                    first_refusal = first_refusal or exc
        if first_refusal is not None and all(t.name in self._refused or (t.is_auto and all(c.name in self._refused for c in t.candidate_targets()))
                                 for t in self.targets):
            raise first_refusal

        # The directories this run creates (--out and any missing parents), innermost first: a failed
        # run removes those it left empty, as if it had never started.
        created = [d for d in [self.out, *self.out.parents] if not d.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output directory {self.out} ({exc.strerror or exc}); choose another --out") from None
        lock = lock_out_dir(self.out, [t.name for t in self._all_targets()])  # puts back what a killed run left
        if not self.force and any(not p.name.startswith(LOCK_NAME) for p in self.out.iterdir()):
            # Empty when this run started, filled since: another run got here first (it finished before our claim).
            lock.release()
            raise OutputExistsError(f"output directory {self.out} was filled by another run while this one worked; "
                                    "choose another --out or pass --force to overwrite")
        # The previous run stays whole until this one has finished: set aside, put back on any failure or Ctrl-C.
        # Moving it (aside, back, or out once this run is done) is never cut short by a Ctrl-C: a second one
        # during the put-back stopped it half-way.
        with signals_held() as caught:
            try:
                aside = set_aside_previous_run(self.out, [t.name for t in self._all_targets()]) if self.force else None
            except BaseException:
                lock.release()
                raise
            if caught:  # Ctrl-C while it was set aside: stop here, with it back in place
                restore_previous_run(self.out, aside)
                lock.release()
        if caught:
            raise KeyboardInterrupt
        try:
            result = self._run_targets(model, info, calib, evald, steps, loaded, inputs, reference, output_names, noise)
        except BaseException:
            with signals_held():
                # Ctrl-C or a crash mid-run: a TF.js directory may hold shards without its model.json. Remove what
                # this run wrote (its targets' directories, then --out itself if it made it), keep anything else.
                for t in self._all_targets():
                    if (self.out / t.name).is_dir() and not (self.out / t.name).is_symlink():
                        shutil.rmtree(self.out / t.name, ignore_errors=True)
                for name in (MANIFEST_NAME, *REPORT_FILES):
                    (self.out / name).unlink(missing_ok=True)
                restore_previous_run(self.out, aside)
                lock.release()
                for d in created:
                    if not d.is_dir() or any(d.iterdir()):
                        break
                    d.rmdir()
            raise
        with signals_held():  # finished and written: the old run becomes a discard, the claim goes
            gone = discard_previous_run(self.out, aside)
            lock.release()
            self.completed = True  # a Ctrl-C from here on finds the run complete on disk
        if gone is not None:
            shutil.rmtree(gone, ignore_errors=True)
        return result

    def _run_targets(self, model, info, calib, evald, steps, loaded, inputs, reference, output_names, noise) -> ConvertResult:
        """Build every target into ``self.out``, then write the manifest and reports."""
        from deploykit.runtime_bench.memory import release_memory

        from deploykit.verify import scored_output, unused_labels

        # Said once for the run (console and report), not only in each artifact's notes: the report
        # headline said "with labels" and the Accuracy column was empty without a word.
        labels_unused = (unused_labels(np.shape(evald.y), output_names, self._label_index)
                         if evald.y is not None and scored_output(reference, evald.y, self._label_index) is None else None)
        manifest = Manifest(
            model={**info.to_dict(), **_file_identity(model),
                   **({"replaced_for_export": loaded.replaced_for_export} if loaded.replaced_for_export else {}),
                   **({"float32_from_policy": loaded.float32_from_policy} if loaded.float32_from_policy else {})},
            data={
                "source": None if calib is None else calib.source,
                "samples": None if calib is None else len(calib),
                "eval_source": evald.source,
                "eval_samples": len(evald),
                # copies of a few samples are few samples (set only when they are fewer than FEW_SAMPLES)
                **{key: k for key, d in (("distinct_samples", calib), ("eval_distinct_samples", evald))
                   if d is not None and (k := d.distinct(FEW_SAMPLES)) < min(len(d), FEW_SAMPLES)},
                "labels": evald.y is not None, "targets": evald.targets is not None,
                **({"labels_unused": labels_unused} if labels_unused else {}),
                **({"constant_outputs": constant} if (constant := _constant_outputs(reference, output_names, evald)) else {}),
            },
            steps=steps,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        done: dict[str, Artifact] = {}
        self._built: list[tuple[Target, Artifact]] = []  # every artifact built, with the target it was built as
        self._float_verdicts: dict[Any, dict[str, Any]] = {}  # float source key -> its verification
        ctx = (loaded, calib, evald, inputs, reference, output_names, noise)
        try:
            for target in self.targets:
                if target.is_auto:
                    for artifact in self._run_auto(target, ctx, done):
                        manifest.artifacts.append(artifact)
                elif target.name in done:  # already built as a candidate: now it is requested too
                    done[target.name].candidate_of = ""
                else:
                    artifact = self._run_target(loaded, target, calib, evald, inputs, reference, output_names, noise)
                    done[target.name] = artifact
                    self._built.append((target, artifact))
                    manifest.artifacts.append(artifact)
                release_memory()
        finally:
            loaded.release()
        _said_failed_too(manifest.artifacts)
        if self.bench_enabled:  # the report compares files: time them under the same load (see side_by_side)
            from deploykit.runtime_bench.memory import PeakRSS
            from deploykit.side_by_side import time_side_by_side

            with PeakRSS() as mem:
                notes = time_side_by_side(self._built, self.out, {k: v[:1] for k, v in inputs.items()}, self.progress)
            if notes is not None:  # the step timed something, or says why it could not
                steps["side_by_side"] = {**mem.to_dict(), **({"notes": notes} if notes else {})}
        from deploykit.report import write_reports
        from deploykit.report.rows import data_warnings, fine_tune_warnings, input_name_warnings

        self.progress("writing manifest and reports")
        manifest_path = manifest.write(self.out)
        md, html = write_reports(manifest, self.out)
        # Absolute: a notebook that changes directory afterwards still finds the report.
        return ConvertResult(self.out.absolute(), manifest.to_dict(), manifest_path.absolute(), md.absolute(),
                             html.absolute(), aliases=self._aliases,
                             warnings=data_warnings(manifest) + input_name_warnings(manifest) + fine_tune_warnings(manifest))

    def _prune(self, model: Any, loaded: Any, steps: dict[str, Any]) -> Any:
        """Fine-tune with pruning; return the pruned model, loaded (the original is released)."""
        from deploykit.optimize.prune import prune

        if loaded.keras_model is None:
            raise UserError(f"{loaded.source}: pruning fine-tunes a Keras model; pass the .keras/.h5 file, not a SavedModel")
        # A model that cannot be cloned (subclassed, without a config that rebuilds it) is pruned in
        # place: when it is the caller's object, run() puts its weights back at the end.
        original = (loaded.keras_model, loaded.keras_model.get_weights()) if not isinstance(model, (str, Path)) else None
        # Armed before training: an interrupt or error mid-fine-tune left the caller's model pruned.
        # (Putting back weights a cloned prune never touched costs one set_weights.)
        self._restore = original
        from deploykit._quiet import warnings_ignored

        with warnings_ignored(".*pruned in place", UserWarning):  # the weights are put back (run())
            report, pruned = self._fine_tune(model, loaded, steps, "prune", "pruning", "pruned",
                                     lambda train, config, progress: prune(loaded.keras_model, train, compile_config=config,
                                                                           progress=progress, output=self._label_index,
                                                                           **self.prune_options))
        self.prune_report = report
        if not report.get("in_place"):
            self._restore = None
        return pruned

    def _cluster(self, model: Any, loaded: Any, steps: dict[str, Any]) -> Any:
        """Weight clustering with a short fine-tune (pruned zeros kept); return the clustered model, loaded."""
        from deploykit.optimize.cluster import cluster

        if loaded.keras_model is None:
            raise UserError(f"{loaded.source}: clustering fine-tunes a Keras model; pass the .keras/.h5 file, not a SavedModel")
        report, clustered = self._fine_tune(model, loaded, steps, "cluster", "clustering", "clustered",
                                            lambda train, config, progress: cluster(
                                                loaded.keras_model, train, compile_config=config, progress=progress,
                                                output=self._label_index, **self.cluster_options))
        self.cluster_report = report
        return clustered

    def _qat(self, model: Any, loaded: Any, steps: dict[str, Any]) -> Any:
        """Quantization-aware fine-tuning (sparsity-preserving after pruning, cluster-preserving after
        clustering); return the QAT model, loaded."""
        from deploykit.optimize.qat import quantize_aware

        pqat = self.prune_options is not None
        pcqat = self.cluster_options is not None  # the clustered model's shared values kept through QAT
        label = "PCQAT" if pcqat else "PQAT" if pqat else "QAT"
        report, qat_model = self._fine_tune(model, loaded, steps, "qat", label, label,
                                 lambda train, config, progress: quantize_aware(
                                     loaded.keras_model, train, compile_config=config, preserve_sparsity=pqat,
                                     preserve_clusters=pcqat, progress=progress, output=self._label_index,
                                     **self.qat_options))
        self.qat_report = report
        return qat_model

    def _evaluation_data(self, spec: Any, specs: Any, role: str, model: Any, outputs: Sequence[Any],
                         loaded: Any = None) -> Any:
        """``--data``/``--eval-data``: 'y' are class labels. 'y' that are not labels are a regression
        model's target values when it was trained with a regression loss, or when it carries no loss
        and 'y' hold as many values per sample as one of its float outputs: artifacts are then judged
        by their outputs, and their error against the targets is reported."""
        from deploykit.data import as_one_hot, class_positions, load_data
        from deploykit.optimize.prune import _loss_name, is_regression_loss
        from deploykit.verify import label_classes, labels_fit

        loss = fine_tune_loss(model, [self.prune_options, self.cluster_options, self.qat_options], self._label_index,
                               self._output_keys)
        regression = is_regression_loss(loss, None)
        labelled, error = None, None
        try:
            labelled = load_data(spec, specs, role=role, positions=class_positions([o.shape for o in outputs]))
        except DataError as exc:
            if loss is not None and not regression:
                raise
            error = exc
        # Whole-number 'y' read as labels stay labels unless the model was trained with a regression loss
        # and they score no class output: then they are its target values (counts, scores). A classifier
        # trained with mse on one-hot rows, or a one-unit sigmoid with 0/1 labels, keeps its accuracy.
        described = [(tuple(o.shape), o.dtype) for o in outputs]
        if labelled is not None and not labels_fit(described, labelled.y, self._label_index):
            labelled = as_one_hot(labelled) or labelled  # one-hot rows with a trailing axis of 1: (N, C, 1)
        # An uncompiled model's counts, one whole number per sample that scores no class output, are its
        # target values when they fit a float output: they were kept as labels, unused, no error reported.
        # 0/1 values (masks, binary labels) and models with a class-id output (an argmax inside) keep labels.
        counts = (labelled is not None and labelled.y is not None and loss is None and labelled.y.ndim == 1
                  and not np.isin(labelled.y, (0, 1)).all() and not any(_is_id_output(o) for o in outputs))
        if labelled is not None and (labelled.y is None or not regression and not counts
                                     or label_classes(described, labelled.y, self._label_index) is not None
                                     or _binary_labels_for_one_unit(labelled.y, outputs)):
            return labelled
        try:
            data = load_data(spec, specs, role=role, targets=True)
        except DataError as exc:
            if error is not None and loss is None and "not numbers" in str(exc):
                raise error from None  # text labels of an uncompiled classifier: said as labels, not as targets
            raise
        if loss is None and error is not None and _zeros_and_ones(data.y) and _tags_for_probabilities(loaded, data):
            raise error  # multi-hot tags for a softmax: not its values to regress to, refused as labels whatever the loss
        asked = outputs if self._label_index is None else [outputs[self._label_index]]
        if data.y is None or not _fits_float_output(asked, data.y):
            if labelled is not None:
                return labelled
            if self._label_index is not None and data.y is not None and None not in tuple(asked[0].shape)[1:]:
                # the output the user named: targets that fit another head were accepted and unused (exit 0)
                other = next((o.name for o in outputs if _fits_float_output([o], data.y)), None)
                raise DataError(
                    f"{data.source}: target values 'y' of shape {tuple(np.shape(data.y))} do not fit output "
                    f"{asked[0].name!r} of shape {tuple(asked[0].shape)} (the label output asked for); pass one row "
                    "of its shape per sample" + (f", or --label-output {other!r}, the output they fit" if other else ""))
            if loss is None:  # uncompiled: targets only when they fit a float output exactly
                raise error
            if data.y is not None and all(None not in tuple(o.shape)[1:] for o in outputs):
                # a regression loss, and 'y' of no output's shape: dropped with exit 0 before (an output of any
                # length is matched by its real shape in verification)
                shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
                raise DataError(f"{data.source}: target values 'y' of shape {tuple(np.shape(data.y))} fit none of the "
                                f"model's outputs ({shapes}); pass one row of the output's shape per sample")
        if data.y is not None:
            why = f"a model trained with {_loss_name(loss)}" if loss is not None else \
                "a model without a loss, and they fit its float output"
            self.progress(f"{role}: 'y' are target values ({why}); artifacts are checked against the model's "
                          "outputs and their error against the targets is reported")
            data = replace(data, y=None, targets=data.y)
        return data

    def _fine_tune(self, model: Any, loaded: Any, steps: dict[str, Any], step: str, label: str, suffix: str,
                   train_fn: Callable[[Any, Any, ProgressFn], Any]) -> tuple[dict[str, Any], Any]:
        """The shared part of pruning and QAT: labelled train data, the model's own compile settings
        (read from the file or the in-memory model; a pruned model no longer carries them), progress,
        memory, the report under ``steps[step]``; returns (report, the fine-tuned model loaded), the original released."""
        from deploykit.data import class_positions, load_data
        from deploykit.models import load_model
        from deploykit.optimize.qat import compile_config_of
        from deploykit.runtime_bench.memory import PeakRSS

        from deploykit.optimize.prune import as_class_labels, is_regression_loss, labels_are_class_indices

        options = {"prune": self.prune_options, "cluster": self.cluster_options}.get(step, self.qat_options)
        # A regression model's 'y' are the values it outputs, not class labels (its fine-tune keeps the
        # epoch with the lowest validation loss); class indices of a classifier trained with mse stay labels.
        loss = fine_tune_loss(model, [options], self._label_index, self._output_keys)
        regression = is_regression_loss(loss, None)
        try:
            positions = class_positions([tuple(o.shape) for o in loaded.keras_model.outputs])
            train = load_data(self.train_data, loaded.inputs, role="train data", targets=regression, positions=positions)
        except DataError as labels_error:
            # A multi-output model without a loss for the labelled output: 'y' that are not class labels
            # are target values (the fine-tune matches them to an output by their size).
            if loss is not None:
                raise
            try:
                train = load_data(self.train_data, loaded.inputs, role="train data", targets=True)
            except DataError:
                raise labels_error from None  # not target values either (text): what is wrong with them as labels
            if len(loaded.keras_model.outputs) < 2:
                # Saved without compile(): the labels message pointed at verification ("leave 'y' out").
                tags = train.y is not None and np.ndim(train.y) == 2 and bool(np.isin(train.y, (0, 1)).all())
                loss = ("--loss binary_crossentropy for 0/1 tags per sample" if tags else
                        "--loss mse for target values")
                raise DataError(
                    f"train data {train.source}: 'y' are not class indices, and the model was saved without a loss "
                    f"(no compile()), so the fine-tune has nothing to train them with; pass {loss}, or class indices "
                    "0..classes-1 as 'y'") from None
        if regression and labels_are_class_indices(train, loaded.keras_model):
            train = as_class_labels(train)
        if train.y is None:
            need = "target values 'y'" if regression else "labels 'y'"
            raise DataError(f"train data {train.source} has no {need}; {label} fine-tunes the model and needs them")
        self.progress(f"{label}: fine-tuning")
        with PeakRSS() as mem:
            try:
                result = train_fn(train, compile_config_of(model), lambda msg: self.progress(f"{label}: {msg}"))
            except DataError as exc:
                if loss is not None or "label" not in str(exc):
                    raise
                # whole-number 'y' read as labels of a model saved without a loss: they may be target values
                raise DataError(f"{exc}; if they are target values (counts, degrees), the model was saved without a "
                                "loss: pass --loss mse") from None
        steps[step] = {**mem.to_dict(), "report": result.report}
        if step in ("prune", "cluster") and "dense_reference" not in steps:
            # After the fine-tune, whose checks of the training data come first (bad labels cost no
            # conversion), from the model as given: pruning and clustering work on a clone.
            steps["dense_reference"] = (self._dense_reference(loaded) if not result.report.get("in_place") else
                                        {t.format: {"target": DENSE_REFERENCE[t.format], "skipped": f"the model was {suffix} "
                                                    "in place (it cannot be cloned), so no dense copy was left to convert"}
                                         for t in self._all_targets() if t.format in DENSE_REFERENCE})
        tuned = load_model(result.model)
        tuned.source = f"{loaded.source} ({suffix})"
        # the model as given computed in float16/float64: the report says it was rebuilt (a pruned run did not)
        tuned.float32_from_policy = tuned.float32_from_policy or loaded.float32_from_policy
        tuned.output_keras_names = [o.keras_name for o in loaded.info().outputs]
        loaded.release()
        return result.report, tuned

    def _dense_reference(self, loaded: Any) -> dict[str, Any]:
        """The dense model's float32 file in each format of the run, converted into a temporary
        directory and measured (raw and gzip bytes): what "N x smaller"
        in the report is measured against. Not verified, not kept; a conversion that fails is recorded
        with its error (the run's own targets say whether the format works for this model)."""
        from deploykit.converters import get_converter

        formats = dict.fromkeys(t.format for t in self._all_targets() if t.format in DENSE_REFERENCE)
        measured: dict[str, dict[str, Any]] = {}
        with TempDir("dense") as tmp:
            for name in dict.fromkeys(DENSE_REFERENCE[f] for f in formats):
                target = get_target(name)
                # with the run's own options for that format (a TF.js backend, an ONNX opset), those of a
                # float32 target of the run first: a model the run's target takes, the reference takes too
                # (quantization options do nothing in float32)
                mine = [t for t in self._all_targets() if t.format == target.format and t.options]
                own = next((t for t in mine if t.weights == "float32"), mine[0] if mine else None)
                if own is not None:
                    target = dataclasses.replace(target, options={**target.options, **own.options})
                converter = get_converter(target.format)
                path = Path(tmp) / name / f"model{converter.SUFFIX}"
                path.parent.mkdir()
                self.progress(f"dense reference: converting the model as given to {name} (what the fine-tuned "
                              "artifacts' sizes are compared with)")
                try:
                    settings = converter.convert(loaded, target, None, path)
                    files = [path] + [path.parent / f for f in settings.get("external_data_files", [])]
                    measured[name] = {"target": name, "size_bytes": sum(f.stat().st_size for f in files),
                                      "gzip_bytes": sum(gzip_size(f) for f in files)}
                    changed = {k: v for k, v in target.options.items() if get_target(name).options.get(k) != v}
                    if changed:  # the options taken from the run's target, where they differ from the built-in
                        measured[name]["options"] = changed
                except Exception as exc:  # noqa: BLE001 - a missing comparison, not a failed run
                    measured[name] = {"target": name, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
        return {f: measured[DENSE_REFERENCE[f]] for f in formats}

    def _check_weights_survived(self, artifact: Artifact, target: Target, path: Path) -> None:
        """Record the artifact's zeros and shared values; a pruned kernel the converter densified, or a
        clustered one it stored with more values than its clusters, fails the target."""
        from deploykit.optimize.sparsity import (FORMATS, check_clusters_survived, check_sparsity_survived,
                                                 clustered_kernels, count_zeros)

        if target.format not in FORMATS:
            return
        sizes = [k["size"] for k in clustered_kernels(self.cluster_report)] if self.cluster_report else []
        counts = count_zeros(path, format=target.format, shared_for=sizes)
        if self.prune_report is not None:
            lost = check_sparsity_survived(self.prune_report, counts)
            artifact.settings["sparsity"] = {"total_zeros": counts["total_zeros"], "total_size": counts["total_size"],
                                             "densified": lost}
            if lost:
                artifact.verification["failures"] += [f"pruning lost: {m}" for m in lost]
                artifact.verification["passed"] = False
        if self.cluster_report is not None:
            lost, unproven = check_clusters_survived(self.cluster_report, counts)
            artifact.settings["clusters"] = {"kernels": len(sizes), "lost": lost, "unproven": unproven}
            if lost:
                artifact.verification["failures"] += [f"clustering lost: {m}" for m in lost]
                artifact.verification["passed"] = False

    def _all_targets(self) -> list[Target]:
        """Requested targets plus the candidates of -auto targets."""
        out = list(self.targets)
        for t in self.targets:
            out += t.candidate_targets()
        return out

    # -------------------------------------------------------------------------------------
    def _float_source_failure(self, converter: Any, loaded: Any, target: Target, inputs: dict[str, np.ndarray],
                              reference: Any, output_names: Sequence[str], noise: Any, evald: Any,
                              verification: dict[str, Any]) -> str | None:
        """Why a quantized artifact fails for the float graph it was made from, or None.

        An int8 file is judged by loose bounds (agreement, accuracy, mean shift) that can hide an
        error the converter made before quantizing: tf2onnx's nearest-neighbour Resize for an area
        resize was 0.19 off the model, onnx-fp32 failed, and every ONNX int8 file (onnx-auto's
        winner too) passed. The float source is verified with the float target's bounds and the same
        labels, once per run; the float target's own verdict counts when it ran first (onnx-auto
        builds it first). A graph holding fake quantization (a QAT model) has no float-exact source:
        a float32 rounding difference moves a value by a whole quantization step.
        """
        if not hasattr(converter, "float_source_key"):
            return None
        key = converter.float_source_key(loaded, target)
        if key is None:
            return None
        float_target = get_target(converter.FLOAT_TARGET)
        if target.name == float_target.name:  # its verdict as verified, before later checks add to it
            self._float_verdicts.setdefault(key, {**verification, "failures": list(verification.get("failures", []))})
            return None
        if target.weights != "int8" or not verification.get("passed"):  # float16 is held to near-float bounds
            return None
        if key not in self._float_verdicts:
            from deploykit.runtime_bench import get_runner
            from deploykit.verify import verify

            self.progress(f"{target.name}: verifying the float graph it quantizes")
            with TempDir("float-source") as tmp_dir:
                path = Path(tmp_dir) / "float_source.onnx"
                converter.write_float_source(loaded, target, path)
                runner = get_runner(float_target.runtime, path, target.bench.threads, float_target.options)
                try:
                    runner.load()
                    self._float_verdicts[key] = verify(
                        runner, inputs, reference, output_names, float_target.tolerance, labels=evald.y, noise=noise,
                        targets=evald.targets, label_output=self._label_index, calibrated=False)
                finally:
                    runner.close()
        found = self._float_verdicts[key]
        if found.get("passed"):
            return None
        return (f"the float32 graph it was quantized from already misses {float_target.name}'s bounds "
                f"({'; '.join(found.get('failures', []))[:300]}): the converter changed the model before quantization, "
                f"and {target.name}'s looser bounds would hide it")

    def _run_target(self, loaded, target, calib, evald, inputs, reference, output_names, noise,
                    bench_failed: bool = True) -> Artifact:
        """Convert, verify and (unless it failed and ``bench_failed`` is False) benchmark one target."""
        from deploykit.converters import get_converter
        from deploykit.runtime_bench import benchmark, get_runner, runtime_memory
        from deploykit.runtime_bench.memory import PeakRSS
        from deploykit.verify import DEFAULT_BATCH_CHECK, verify

        converter = get_converter(target.format)
        rel = Path(target.name) / f"model{converter.SUFFIX}"
        final = self.out / rel
        artifact = Artifact(target=target.name, format=target.format, path=str(rel), parent=loaded.source,
                            settings={"target": target.to_dict()})
        if target.name in self._refused:  # see run(): this target cannot take this model
            artifact.status, artifact.error, artifact.path = "failed", self._refused[target.name], ""
            return artifact
        try:
            with atomic_path(final) as tmp:
                self.progress(f"{target.name}: converting")
                with PeakRSS() as mem:
                    artifact.settings["converter"] = converter.convert(loaded, target, calib, tmp)
                artifact.steps["convert"] = mem.to_dict()
                conv_settings = artifact.settings["converter"]
                external = conv_settings.get("external_data_files", [])  # weights: part of the size
                companions = conv_settings.pop("companion_files", [])  # e.g. C sources: not part of it
                artifact.extra_files = [str(Path(target.name) / f) for f in external + companions]
                files = [tmp] + [self.out / target.name / f for f in external]
                # gzip of a large file takes ~0.6 s (MobileNetV2 fp32); zlib releases the GIL, so it
                # runs beside verification and is collected before the benchmark starts.
                gzip_job = _BACKGROUND.submit(lambda: sum(gzip_size(f) for f in files))

                self.progress(f"{target.name}: verifying")
                runner = get_runner(target.runtime, tmp, target.bench.threads, target.options)
                try:  # the runner (a Node child for TF.js) is stopped however this ends, Ctrl-C too
                    with PeakRSS() as mem:
                        init_s = runner.load()
                        artifact.verification = verify(
                            runner, inputs, reference, output_names, target.tolerance, labels=evald.y, noise=noise,
                            targets=evald.targets, label_output=self._label_index,
                            batch_check=1 if conv_settings.get("batch_dependent") else DEFAULT_BATCH_CHECK,
                            calibrated=target.needs_calibration,  # only a calibrated range can end short
                        )
                    artifact.steps["verify"] = mem.to_dict()
                    if conv_settings.get("note"):  # what the converter did that the target's name does not say
                        artifact.verification.setdefault("notes", []).append(conv_settings["note"])
                    if str(runner.describe().get("delegate", "")).startswith("none:"):  # LiteRT without XNNPACK
                        artifact.verification.setdefault("notes", []).append(
                            "XNNPACK, LiteRT's default CPU delegate, could not prepare this file (\"failed to create "
                            "XNNPACK runtime\"); it was verified on LiteRT's builtin kernels: in the app, create the "
                            "interpreter without the default delegate (Python: experimental_op_resolver_type="
                            "OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)")
                    if target.needs_calibration and calib is not None and len(calib) < FEW_SAMPLES:  # (the console says it too: data_warnings)
                        artifact.verification.setdefault("notes", []).append(
                            f"calibrated on {len(calib)} sample(s): the integer ranges come from them alone and may not cover "
                            "what the model meets in use; pass a few hundred representative samples with --data")
                    verify_init_s = init_s
                    if hasattr(converter, "audit"):  # format-specific checks, e.g. microcontroller budgets
                        footprint = {k: v for k, v in runner.describe().items() if k.endswith("_bytes")}
                        footprint["heaviest_layers"] = conv_settings.get("heaviest_layers", [])
                        artifact.footprint = footprint
                        budget = converter.audit(target, footprint, runner)
                        artifact.verification["failures"] += budget
                        artifact.verification["passed"] = artifact.verification["passed"] and not budget
                    why = self._float_source_failure(converter, loaded, target, inputs, reference, output_names,
                                                     noise, evald, artifact.verification)
                    if why:
                        artifact.verification["failures"].append(why)
                        artifact.verification["passed"] = False
                    if self.prune_report is not None or self.cluster_report is not None:
                        self._check_weights_survived(artifact, target, tmp)
                    artifact.gzip_bytes = gzip_job.result()  # never running while latency is timed
                    if self.bench_enabled and (bench_failed or artifact.verification.get("passed")):
                        # The verified runner is the timed runner: same object, no second load.
                        self.progress(f"{target.name}: benchmarking ({target.bench.iterations} runs, {target.bench.threads} thread{'s' if target.bench.threads != 1 else ''})")
                        init_s, loads = _median_load(target, tmp, verify_init_s)
                        artifact.benchmark = _bench(target, runner, init_s, {k: v[:1] for k, v in inputs.items()})
                        artifact.benchmark["init_loads"] = loads
                        artifact.steps["bench"] = {k: artifact.benchmark[k] for k in ("seconds", "peak_rss_bytes", "start_rss_bytes")}
                        artifact.benchmark.update(runtime_memory(target.runtime, tmp, target.bench.threads,
                                                                 {k: v[:1] for k, v in inputs.items()}, target.options,
                                                                 artifact.benchmark))
                finally:
                    runner.close()
                artifact.size_bytes = sum(f.stat().st_size for f in files)
                artifact.sha256 = sha256_file(tmp)
                if artifact.extra_files:
                    artifact.settings["extra_file_sha256"] = {f: sha256_file(self.out / f) for f in artifact.extra_files}
            if artifact.verification.get("passed"):
                artifact.status = "ok"
            else:
                artifact.status = "failed"
                hints = _failure_hints(target, loaded, inputs, artifact.verification, calib,
                                       ops=set(artifact.settings.get("converter", {}).get("ops") or []))
                failures = artifact.verification.get("failures", []) + (_after_qat(hints) if self.qat_options else hints)
                artifact.error = "verification failed: " + "; ".join(failures)
        except UserError:
            raise
        except Exception as exc:  # a converter/runtime crash fails this target, not the run
            if getattr(exc, "_raised_by_progress", False):  # the caller's own callback: theirs to see
                raise
            if (full := disk_full(exc)) is not None:  # the run's, not this target's: the next ones fail alike
                raise full from None
            artifact.status = "failed"
            artifact.error = (str(exc) if isinstance(exc, DeployError)
                              else f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
        written = final.name  # the temporary file's name is made from it
        if artifact.status == "failed" and final.exists():
            rel = self._set_aside(artifact, final)
            final = self.out / rel
        # Runtimes name the file they were given: the temporary one. Users know the final name, and
        # a failed artifact is not kept: its name must not send them looking for it.
        shown = str(rel) if final.exists() else f"the converted {rel} (not kept)"
        artifact.error = re.sub(rf"\.{re.escape(written)}\.[A-Za-z0-9_]+\.partial", lambda _: shown, artifact.error)
        artifact.error = _ANSI.sub("", artifact.error)  # Keras underlines names in its messages with terminal codes
        if artifact.status == "failed" and not final.exists():
            artifact.path = ""
            for extra in artifact.extra_files:  # e.g. external data of a model that never made it
                (self.out / extra).unlink(missing_ok=True)
            artifact.extra_files = []
            if final.parent.is_dir() and not any(final.parent.iterdir()):
                final.parent.rmdir()
        return artifact

    def _set_aside(self, artifact: Artifact, final: Path) -> Path:
        """Keep a file that failed verification for inspection as ``failed-model.*`` (its path relative to
        ``out`` returned). Files generated from it to build into an app (TFLite Micro's C sources) go: they
        would ship it as surely. Weights it reads (ONNX external data) stay beside it, under their names."""
        aside = final.with_name(FAILED_PREFIX + final.name)
        os.replace(final, aside)
        external = {str(Path(artifact.target) / f)
                    for f in artifact.settings.get("converter", {}).get("external_data_files", [])}
        for extra in [f for f in artifact.extra_files if f not in external]:
            (self.out / extra).unlink(missing_ok=True)
        artifact.extra_files = [f for f in artifact.extra_files if f in external]
        if "extra_file_sha256" in artifact.settings:
            artifact.settings["extra_file_sha256"] = {f: h for f, h in artifact.settings["extra_file_sha256"].items()
                                                      if f in external}
        rel = aside.relative_to(self.out)
        artifact.path = str(rel)
        return rel

    # -------------------------------------------------------------------------------------
    def _run_auto(self, target: Target, ctx: tuple, done: dict[str, Artifact]) -> list[Artifact]:
        """Build every candidate, then ship the fastest one that passed verification."""
        from deploykit.selection import select

        new: list[Artifact] = []
        candidates: list[tuple[Target, Artifact]] = []
        for cand in target.candidate_targets():
            name = cand.name
            if self.bench_overrides:
                cand = cand.with_bench(**self.bench_overrides)
            if name not in done:
                # A candidate that failed verification cannot ship: timing it would only cost time
                # (onnx-int8-dynamic: ~10 s on MobileNetV2), unless the user asked for it by name too.
                art = self._run_target(ctx[0], cand, *ctx[1:], bench_failed=any(t.name == name for t in self.targets))
                art.candidate_of = target.name
                done[name] = art
                self._built.append((cand, art))
                new.append(art)
            candidates.append((cand, done[name]))
        self.progress(f"{target.name}: comparing {len(candidates)} candidates side by side")
        auto = select(target, candidates, self.out, ctx[3], bench=self.bench_enabled)
        done[target.name] = auto
        return new + [auto]


# Loads whose median is the init time. One load's time swung 10x on this shared machine (ONNX Runtime
# 2.5-26 ms for the same file), and the report's init column then ranked files by chance.
INIT_LOADS = 3


def _median_load(target: Target, path: Path, first_s: float) -> tuple[float, int]:
    """The median load time of ``path`` in its runtime over INIT_LOADS loads, the verification's first among
    them, and how many loads that is. TF.js loads once: each load is a Node process of its own."""
    from deploykit.runtime_bench import get_runner

    if target.runtime == "tfjs":
        return first_s, 1
    times = [first_s]
    for _ in range(INIT_LOADS - 1):
        runner = get_runner(target.runtime, path, target.bench.threads, target.options)
        try:
            times.append(runner.load())
        finally:
            runner.close()
    return float(np.median(times)), len(times)


def _bench(target: Target, runner: Any, init_s: float, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Time an already loaded (and verified) runner; ``init_s`` is how long its load took."""
    from deploykit.runtime_bench import benchmark
    from deploykit.runtime_bench.memory import PeakRSS

    with PeakRSS() as mem:
        stats = benchmark(runner, inputs, warmup=target.bench.warmup, iterations=target.bench.iterations)
    stats.init_ms = init_s * 1000
    result = stats.to_dict()
    result.update(runner.describe())
    result.update(mem.to_dict())
    if hasattr(runner, "op_profile"):  # runtimes with a profiler name their most expensive ops
        result["op_profile"] = runner.op_profile(inputs)
    return result


def _failure_hints(target: Target, loaded: Any, inputs: dict[str, np.ndarray],
                   verification: dict[str, Any] | None = None, calib: Any = None, ops: set[str] | None = None) -> list[str]:
    """Causes a failed verification can have that the numbers alone do not name, each with the way out.
    ``calib``: the run's calibration data (what set a static integer target's ranges); ``ops``: the file's."""
    from deploykit.verify import few_steps, mixed_scale_hint

    from deploykit.converters.tflm import BUDGET_WAY_OUT, is_budget_failure

    failures = (verification or {}).get("failures", [])
    if failures and all(is_budget_failure(f) for f in failures):  # the numbers passed: precision hints would mislead
        return [BUDGET_WAY_OUT]
    hints = [BUDGET_WAY_OUT] if any(is_budget_failure(f) for f in failures) else []
    if target.io == "int8" and failures:
        hints.append(_float_ids_hint(loaded))
    outputs = (verification or {}).get("outputs", {}).values()
    flips = [o["flips"] for o in outputs if (o.get("flips") or {}).get("count")]
    if any("worst_column" in o and o["violations"] > o["allowed_violations"] for o in outputs):
        # A small column beside a large one: 8 bits of weights do not hold it (16-bit or float16 do).
        wider = [t for t in {"uint8": ["tfjs-uint16", "tfjs-fp16"], "uint16": ["tfjs-fp16"]}.get(target.weights, [])
                 if t != target.name] + [f"{target.format}-fp32"]
        hints.append(f"each column of the output is held to its own scale, and {target.weights} weights do not keep "
                     f"that one: try {' or '.join(wider)}" + (" (tfjs-auto ships the smallest that passes)"
                                                             if target.format == "tfjs" else ""))
    if target.activations != "float32" and any(o.get("boolean") and f"output {name!r}: " in " ".join(failures)
                                               for name, o in (verification or {}).get("outputs", {}).items()):
        # A comparison inside the model (x > t) answers differently wherever integer activations move x across t.
        key = f"{target.format}-int16" if target.activations == "int16" else target.format
        hints.append("a boolean output flips wherever the quantized activations move a compared value across its "
                     "threshold; " + _more_precision(key, loaded, ops))
    beyond = _calibration_range_hint(target, calib, inputs)
    if beyond:  # the likelier cause: more precision would clip the same way (int16x8 failed by as much as int8)
        hints.append(beyond)
    if any(few_steps(o.get("collapsed_column")) for o in outputs) and target.activations != "float32":
        # The output's (or the last layer's) one 8-bit scale: a rescaling inside the model keeps that layer as it is.
        hints.append("end the model at columns of similar ranges (e.g. standardized) and rescale them in the app, or use "
                     "a target with float activations" + {"tflite": " (tflite-dynamic, tflite-fp16)",
                                                          "onnx": " (onnx-int8-dynamic, onnx-fp16)"}.get(target.format, ""))
    vanished = any(o.get("vanished_class") for o in outputs)  # a range problem (see its clipping hint), not precision
    if (target.activations != "float32" and flips and not vanished and not beyond
            and not any(f["confident"] for f in flips)):
        # Every changed answer was a near-tie of the model's own: the file is right, its integer activations too coarse.
        key = f"{target.format}-int16" if target.activations == "int16" else target.format
        hints.append(_more_precision(key, loaded, ops))
    v = verification or {}
    if (target.activations != "float32" and v.get("mae_increase") is not None
            and any(o.get("violations", 0) > o.get("allowed_violations", 0) for o in outputs)):
        # A regression file failed on parity while its error against the real targets barely moved
        # (+0.3 % MAE): the report gave no way to judge whether that matters, nor a way out.
        key = f"{target.format}-int16" if target.activations == "int16" else target.format
        hints.append(f"against the targets its MAE changed by {v['mae_increase']:+.1%} from the reference's; where that is close "
                     f"enough, a target file with a wider tolerance.range_atol (here {target.tolerance.range_atol:g} of "
                     f"the output's range) accepts it (deploy targets --show {target.name}); "
                     + _more_precision(key, loaded, ops))
    if target.format == "tflite" and target.activations in ("int8", "int16") and failures:
        hints.append(_int8_one_hot_hint(loaded, ops or None))
    if target.format == "tflite" and target.weights == "float16":
        hints.append(_float16_range_hint(loaded) or _float16_offset_hint(loaded))
    # dynamic-range targets quantize activations to 8 bits per call: an input's features share one scale there too
    dynamic = target.activations == "float32" and target.weights == "int8"
    if target.activations != "float32" or dynamic:
        levels = 65536 if target.activations == "int16" else 256
        way_out = _FLOAT_INPUT_WAY_OUT.get(target.format, _FLOAT_INPUT_WAY_OUT["tflm"])
        if dynamic:  # it quantized the raw features itself: float storage of the whole model is the way out
            way_out = f"use a float target ({target.format}-fp16, {target.format}-fp32) or scale the features inside the model"
        if target.format == "tflite" and _float16_range_hint(loaded):  # tflite-fp16 would saturate those weights
            way_out = way_out.replace("tflite-fp16, ", "")
        hints.append(mixed_scale_hint(inputs, levels, way_out))
        if not dynamic:  # its weights alone are int8, and a Normalization's vectors are not among them
            hints.append(_constant_feature_hint(loaded, levels, way_out))
    if target.format == "onnx" and target.options.get("quant_format") == "qoperator" and target.activations != "float32":
        # Measured on a GroupNorm + separable-conv model: QOperator 21 % top-1 agreement, QDQ 99.2 %
        # (ORT's own quantize_static, per-channel and per-tensor alike).
        hints.append("ONNX Runtime's QOperator rewrite (QLinear* ops) loses more on some graphs than the QDQ "
                     "format of the same calibration: try onnx-int8-qdq (onnx-auto builds and compares both)")
    return [h for h in hints if h]


# An evaluation input that reaches this share of the calibration span past its ends, in at least this share of
# the samples, is past what the calibrated ranges hold (a few stray pixels are the calibration's own business).
BEYOND_CALIBRATION = 0.05
BEYOND_CALIBRATION_SAMPLES = 0.01


def _calibration_range_hint(target: Target, calib: Any, inputs: dict[str, np.ndarray]) -> str | None:
    """An input whose evaluation values go past what the calibration samples reach: a static integer
    target clips there. Calibrated on images at 0.85 of the evaluation's brightness, int8 and int16x8
    failed alike and were told to try more precision."""
    if calib is None or not target.needs_calibration:
        return None
    used = calib.spread(target.calibration_samples)
    for (name, x), cal in zip(inputs.items(), used.x):
        x, cal = np.asarray(x), np.asarray(cal)
        if x.dtype.kind != "f" or cal.dtype.kind != "f" or not x.size or not cal.size:
            continue
        lo, hi = float(cal.min()), float(cal.max())
        margin = BEYOND_CALIBRATION * max(hi - lo, 1e-12)
        past = ((x > hi + margin) | (x < lo - margin)).reshape(len(x), -1).any(axis=1)
        if past.sum() and past.mean() >= BEYOND_CALIBRATION_SAMPLES:
            more = len(calib) > len(used)
            return (f"input {name!r} reaches {float(x.min()):.4g}..{float(x.max()):.4g} in the evaluation data, past the "
                    f"{lo:.4g}..{hi:.4g} of the {len(used)} calibration samples in {past.mean():.0%} of the samples: "
                    f"{target.activations} activations clip beyond their calibrated range; calibrate on data that "
                    "covers what the model will see (--data)" + (f", or raise the target's calibration_samples "
                                                                 f"({len(used)} of {len(calib)} used)" if more else ""))
    return None


def _int8_one_hot_hint(loaded: Any, ops: set[str] | None = None) -> str | None:
    """A one-hot inside the model (CategoryEncoding, or Discretization with output_mode="one_hot"): TFLite's
    int8 conversion quantizes the category id itself (3 -> 2.99 -> 2) and reads ONE_HOT's off value on the
    wrong scale (0 as 0.50): every such file failed, said as a lost column or calibration."""
    model = getattr(loaded, "keras_model", None)
    if model is None:
        return None
    from deploykit.models import _flat_layers

    replaced = {r["name"] for r in getattr(loaded, "replaced_for_export", [])}  # exported as comparisons: no ONE_HOT
    found = [layer.name for layer in _flat_layers(model) if type(layer).__name__ in ("CategoryEncoding", "Discretization")
             and getattr(layer, "output_mode", "") == "one_hot" and layer.name not in replaced]
    if not found or (ops is not None and "ONE_HOT" not in ops):
        return None
    return (f"TFLite's integer conversion of a one-hot ({', '.join(map(repr, found[:3]))}) quantizes the category id and "
            "the one-hot's zeros (an id of 3 reads as 2, a 0 as 0.5): use tflite-dynamic or tflite-fp16, or one-hot "
            "the ids before the model")


def _float_ids_hint(loaded: Any) -> str | None:
    """A float input that feeds an Embedding: with int8 I/O the ids are quantized like pixels, and on the way
    back in 24 of 50 ids read another row (54 % agreement, said as rounding with int16x8 as the way out)."""
    model = getattr(loaded, "keras_model", None)
    if model is None:
        return None
    from deploykit.models import _flat_layers

    floats = {id(t): getattr(t, "name", "") for t in model.inputs if "float" in str(getattr(t, "dtype", ""))}
    for layer in _flat_layers(model):
        if type(layer).__name__ == "Embedding":
            try:
                fed = layer.input
            except (AttributeError, ValueError):  # a shared layer has no one input
                continue
            if id(fed) in floats:
                name = floats[id(fed)].split(":")[0]
                return (f"input {name!r} is float and feeds Embedding {layer.name!r}: int8 I/O quantizes its ids to 256 "
                        f"levels, and ids read back off by one read other rows; declare the ids as integers "
                        f"(keras.Input(..., dtype='int32')), or choose a target with float I/O (tflite-int8)")
    return None


def _said_failed_too(artifacts: Sequence[Artifact]) -> None:
    """Mark, in each failure's text, the targets it suggests that failed in this run too: the hints are
    fixed advice ("try onnx-int8-qdq") written as each target fails, and sent users to files the same
    run had already failed (MobileNetV2: onnx-int16x8 was told to try onnx-int8-dynamic and onnx-fp16)."""
    from deploykit.targets import _builtins

    # The hints suggest built-in profiles only: a user target named "output" or "shift" was marked inside
    # other failures' words ("max abs error (failed in this run too)").
    failed = {a.target for a in artifacts if a.status == "failed"} & set(_builtins())
    for a in artifacts:
        if a.status != "failed" or not a.error or a.selection:  # an -auto's failure lists its failed candidates itself
            continue
        for name in sorted(failed - {a.target}, key=len, reverse=True):  # not inside a path: tflite-int8/model.tflite
            a.error = re.sub(rf"(?<![\w./-]){re.escape(name)}(?![\w/-])(?! \(failed)", f"{name} (failed in this run too)",
                             a.error)


def _constant_feature_hint(loaded: Any, levels: int, way_out: str) -> str | None:
    """A Normalization adapted on data where some feature never varies divides it by Keras's epsilon:
    its 1/std reaches ~1e7, and one integer scale for that constant vector rounds every other
    feature's factor to zero (61 of 64 on flattened digits)."""
    if loaded.keras_model is None:
        return None
    from deploykit.models import _flat_layers

    for layer in _flat_layers(loaded.keras_model):
        if type(layer).__name__ != "Normalization" or getattr(layer, "variance", None) is None:
            continue
        try:
            std = np.sqrt(np.maximum(np.asarray(layer.variance, np.float64).ravel(), 0.0))
        except Exception:  # noqa: BLE001 - not adapted / odd state: nothing to say
            continue
        factor = 1.0 / np.maximum(std, 1e-7)
        if std.size > 1 and factor.max() > levels * factor.min():
            # Constant: a std at Keras's epsilon, what gives the 1e7 factors. Against the median std, 2 of 4
            # features in 0..1 beside 2 in 0..1e4 were called "never varied" and their dropping advised.
            flat = int(np.count_nonzero(std < 1e-6))
            return (f"Normalization {layer.name!r} multiplies its features by factors from {factor.min():.3g} to "
                    f"{factor.max():.3g}" + (f" ({flat} feature(s) never varied in the data it was adapted on)" if flat else "")
                    + f": one {int(np.log2(levels))}-bit scale for those factors rounds the small ones to zero; "
                    + ("drop the constant features or adapt on data where they vary, or " if flat else "") + way_out)
    return None


def _float16_range_hint(loaded: Any) -> str | None:
    """TFLite stores every float weight as float16 and saturates those beyond its range: named when the model has any."""
    from deploykit.converters import FLOAT16_MAX

    if loaded.keras_model is None:
        return None
    for w in loaded.keras_model.weights:
        value = np.asarray(w)
        if value.dtype.kind == "f" and value.size and np.nanmax(np.abs(value)) > FLOAT16_MAX:
            name = getattr(w, "path", None) or w.name
            extreme = float(value.flat[int(np.nanargmax(np.abs(value)))])
            return (f"weight {name!r} holds {extreme:.3g}, beyond float16's ±{FLOAT16_MAX:g}: TFLite "
                    "stores it saturated; use tflite-fp32 or tflite-dynamic (onnx-fp16 and tfjs-fp16 keep such tensors float32)")
    return None


def _float16_offset_hint(loaded: Any) -> str | None:
    """A Normalization mean that float16 storage moves by a sizeable share of its standard deviation
    (year-like features: 2000.28 with std 3 lands on float16's step of 1 there): TFLite's float16 file
    stores it so, and every input it normalizes is shifted. Named when one moves by 2 % of a std or more."""
    if loaded.keras_model is None:
        return None
    from deploykit.models import _flat_layers

    for layer in _flat_layers(loaded.keras_model):
        mean, variance = getattr(layer, "mean", None), getattr(layer, "variance", None)
        if type(layer).__name__ != "Normalization" or mean is None or variance is None:
            continue
        try:
            mean, std = np.asarray(mean, np.float32), np.sqrt(np.maximum(np.asarray(variance, np.float32), 1e-12))
        except (TypeError, ValueError):  # not adapted yet
            continue
        shift = np.abs(mean.astype(np.float16).astype(np.float32) - mean) / std
        if shift.size and float(shift.max()) >= 0.02:
            i = int(np.argmax(shift))
            return (f"float16 stores the mean of layer {layer.name!r}, {float(mean.flat[i]):.6g}, as "
                    f"{float(mean.astype(np.float16).flat[i]):.6g}, {float(shift.flat[i]):.2f} of that feature's standard "
                    "deviation: every input it normalizes moves; use tflite-fp32 or tflite-dynamic (onnx-fp16 and tfjs-fp16 "
                    "keep such vectors float32), or subtract the offset before the model")
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Targets that keep a float input (its features then reach the model's Normalization intact).
_FLOAT_INPUT_WAY_OUT = {
    # The dynamic-range targets keep a Normalization's float scaling before their first int8 layer (they
    # quantize a weight layer's input per call): they pass where the model normalizes its features itself.
    "tflite": "use a target with float activations (tflite-fp16, tflite-dynamic) or scale the features before the model",
    "onnx": "use a target with float activations (onnx-fp16, onnx-int8-dynamic) or scale the features before the model",
    "tflm": "scale the features before the model (TFLite Micro is integer throughout)",
}


# Where an integer target changes only answers the model was unsure of: what keeps more precision.
def _more_precision(key: str, loaded: Any, ops: set[str] | None = None) -> str:
    """Where a file short of precision can get more (``key``: the format, ``-int16`` for 16-bit activations).
    TFLite's 16x8 quantizer has no kernel for hard_swish or gelu: a model with either (MobileNetV3) is sent to
    float activations instead of to a target that refuses it back. Read from the Keras layers' activations
    and from the file's ``ops`` (tf_keras MobileNetV3 writes x * relu6(x + 3) / 6, which TFLite fuses)."""
    found = (_activations_of(loaded) & {"hard_swish", "gelu"}) | {op.lower() for op in ops or () if op in ("HARD_SWISH", "GELU")}
    if key == "tflite" and found:
        return ("for more precision try a target with float activations (tflite-dynamic: int8 weights, about the same "
                f"size; tflite-fp16; tflite-int16x8's quantizer has no kernel for this model's {' or '.join(sorted(found))}), "
                "or --qat (tf_keras models) to train the model for int8")
    return _MORE_PRECISION.get(key, _MORE_PRECISION["tflm"])


def _activations_of(loaded: Any) -> set[str]:
    """The names of the activation functions the Keras model's layers apply (empty without a Keras model)."""
    from deploykit.models import _flat_layers

    model = getattr(loaded, "keras_model", None)
    names = set()
    for layer in _flat_layers(model) if model is not None else []:
        fn = getattr(layer, "activation", None)
        name = getattr(fn, "__name__", fn if isinstance(fn, str) else None)
        if name:
            names.add({"hard_silu": "hard_swish"}.get(str(name), str(name)))  # Keras 3's name for it
    return names


def _qat_refuses(target: Target) -> bool:
    """Whether --qat refuses ``target``: a QAT model is for int8 files; a float or 16-bit conversion keeps its
    fake quantization (tflite-fp32 becomes QUANTIZE/DEQUANTIZE pairs)."""
    return target.is_auto or target.weights != "int8" or target.activations == "int16"


def _after_qat(hints: list[str]) -> list[str]:
    """``hints`` without the advice to train for int8 with --qat: this run's model was (it read as if it
    had not been, and TFLite Micro's hint said nothing else). A hint that names targets --qat refuses says
    they need a run without it: tried with --qat, each was refused."""
    qat = (", or --qat (tf_keras models) to train the model for int8", _MORE_PRECISION["tflm"])
    kept = [h for h in (functools.reduce(lambda text, said: text.replace(said, ""), qat, h) for h in hints) if h]
    return [h + _without_qat(h) for h in kept]


def _without_qat(hint: str) -> str:
    """" (in a run without --qat)" where ``hint`` names a target --qat refuses, else ""."""
    from deploykit.errors import TargetError

    refused = []
    for name in dict.fromkeys(re.findall(r"\b(?:tflite|onnx|tfjs|tflm)-[a-z0-9]+(?:-[a-z0-9]+)*", hint)):
        try:
            if _qat_refuses(get_target(name)):
                refused.append(name)
        except TargetError:  # a word that only looks like a target name
            continue
    return f" ({', '.join(refused)}: in a run without --qat, which trains for int8 files only)" if refused else ""


_MORE_PRECISION = {
    "tflite": "for more precision try tflite-int16x8 (16-bit activations, int8 weights: about the same size) or "
              "tflite-dynamic, or --qat (tf_keras models) to train the model for int8",
    "tflite-int16": "for more precision try a target with float activations (tflite-dynamic: int8 weights, about the "
                    "same size; tflite-fp16)",
    "onnx": "for more precision try onnx-int16x8 (16-bit activations, int8 weights: about the same size) or a "
            "target with float activations (onnx-int8-dynamic; onnx-fp16)",
    "onnx-int16": "for more precision try a target with float activations (onnx-int8-dynamic: int8 weights, about the "
                  "same size; onnx-fp16)",
    "tflm": "TFLite Micro is integer throughout: --qat (tf_keras models) trains the model for int8 activations",
}


def _caller_progress(progress: ProgressFn) -> ProgressFn:
    """The caller's progress callback, its exceptions marked: one raised inside a target's steps was
    taken for a converter failure of that target, and the run went on (with ``force``, replacing the
    previous run)."""

    def call(msg: str) -> None:
        try:
            progress(msg)
        except Exception as exc:
            try:
                exc._raised_by_progress = True  # type: ignore[attr-defined]
            except AttributeError:  # an exception type without attributes: wrapped, cause kept
                wrapped = DeployError(f"the progress callback raised {type(exc).__name__}: {exc}")
                wrapped._raised_by_progress = True  # type: ignore[attr-defined]
                raise wrapped from exc
            raise

    return call


def _binary_labels_for_one_unit(labels: np.ndarray, outputs: Sequence[Any]) -> bool:
    """0/1 labels, one per sample, beside a one-unit float output: a binary classifier (a sigmoid
    trained with mse is one too), scored by accuracy at 0.5 rather than by its error."""
    if np.ndim(labels) != 1 or not len(labels) or not np.isin(labels, (0, 1)).all():
        return False
    return any("float" in str(o.dtype) and int(np.prod([d or 0 for d in tuple(o.shape)[1:]], dtype=np.int64)) == 1
               for o in outputs)


def _tags_for_probabilities(loaded: Any, data: Any) -> bool:
    """Whether 'y' fit only class-probability outputs (a softmax: rows summing to 1), on a few samples: an
    uncompiled softmax model's multi-hot tags were read as its target values, where an uncompiled sigmoid
    autoencoder's 0/1 targets are what it regresses to."""
    from deploykit.verify import is_probabilities

    if loaded is None:
        return True
    try:
        probe = loaded.predict([x[:8] for x in data.x])
    except DeployError:
        return True
    fitting = [out for out in probe if tuple(np.shape(out)[1:]) == tuple(np.shape(data.y)[1:])]
    return bool(fitting) and all(is_probabilities(out) for out in fitting)


def _zeros_and_ones(y: Any) -> bool:
    """'y' of rows of 0s and 1s (multi-hot tags, or one-hot rows some of which are not)."""
    return y is not None and np.ndim(y) >= 2 and np.shape(y)[-1] > 1 and bool(np.isin(y, (0, 1)).all())


def _is_id_output(spec: Any) -> bool:
    """An output of integers or booleans: class ids (an argmax inside the model) or a comparison."""
    return any(k in str(spec.dtype) for k in ("int", "bool"))


def _fits_float_output(outputs: Sequence[Any], targets: np.ndarray) -> bool:
    """Some float output declares exactly as many values per sample as ``targets`` hold."""
    per = int(np.prod(np.shape(targets)[1:], dtype=np.int64))
    for o in outputs:
        dims = tuple(o.shape)[1:]
        if "float" in str(o.dtype) and all(d is not None for d in dims) and int(np.prod(dims, dtype=np.int64)) == per:
            return True
    return False


def _eval_scores(outputs: list[np.ndarray], evald: Any, only: int | None = None) -> dict[str, Any]:
    """A model's scores on the evaluation data, as verification scores its artifacts: ``accuracy`` of the
    output the labels score (:func:`deploykit.verify.scored_output`; None without labels) and, for
    regression target values, ``mae`` and ``rmse`` of the output they score."""
    from deploykit.verify import label_accuracy, target_errors, target_output

    scores: dict[str, Any] = {"accuracy": label_accuracy(outputs, evald.y, only)}
    i = target_output(outputs, evald.targets, only)
    if i is not None:
        scores["mae"], scores["rmse"] = target_errors(outputs[i], evald.targets)
    return scores


def _check_batched_outputs(inputs, outputs) -> None:
    """Every output must start with the batch dimension when the inputs do: deploykit runs and
    compares the model sample by sample (and in batches), and an output that does not grow with
    the batch (a mean over it, a counter) cannot be lined up with its samples."""
    if not any(s.shape and s.shape[0] is None for s in inputs):
        return  # a fixed-batch model: its outputs are as fixed as its inputs
    for o in outputs:
        if o.shape and o.shape[0] is not None:  # () is a scalar or an unknown rank: left to verification
            raise UserError(
                f"output {o.name!r} has shape {tuple(o.shape)} whatever the batch size, while the inputs take any "
                "batch: deploykit verifies outputs sample by sample; export a serving signature whose outputs all "
                "start with the batch dimension (drop or batch this one)"
            )


def _check_input_names(specs) -> None:
    """Input names a SavedModel signature can hold, each distinct after TensorFlow lower-cases it and
    turns other characters into '_' (else the export failed with TensorFlow's own message)."""
    from deploykit.models import placeholder_name

    seen: dict[str, str] = {}
    for s in specs:
        if not re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*", s.name):  # TensorFlow's rule for graph names
            raise UserError(f"input name {s.name!r} is not a name a SavedModel signature can take (spaces, '+', "
                            "accents...); rename the input (keras.Input(name=...)) with letters, digits, '_', '.', '-'")
        if keyword.iskeyword(s.name):  # the export names a Python parameter after each input
            raise UserError(f"input name {s.name!r} is a Python keyword, which a SavedModel signature cannot take "
                            f"(its export makes each input a Python parameter); rename the input, e.g. "
                            f"keras.Input(name={s.name + '_input'!r})")
        key = placeholder_name(s.name)
        if key in seen:
            raise UserError(f"inputs {seen[key]!r} and {s.name!r} both become {key!r} in a SavedModel signature "
                            "(TensorFlow lower-cases names and turns other characters into '_'); rename one of them")
        seen[key] = s.name


# String tensors have no path through the converters (string ops need TF Select or ONNX Runtime
# extensions, which no target ships): TFLite and TF.js failed on the op, and ONNX "passed" a string
# output with a numeric error of 5e-07. What to do instead, per side.
_STRING_WAY_OUT = {
    "input": ("takes strings", "apply the text layers (TextVectorization, StringLookup) to your data before the model "
              "and give the model their integer ids"),
    "output": ("gives strings", "end the model at the numbers the strings are made from (class ids, scores) and turn "
               "them into text after it"),
}


def _check_numeric(specs, side: str) -> None:
    """Refuse string inputs (``side`` "input") or outputs ("output") before any work."""
    does, way_out = _STRING_WAY_OUT[side]
    for s in specs:
        if s.dtype in ("string", "str", "object"):
            raise UserError(f"{side} {s.name!r} {does}; deploykit converts numeric models only (string ops need TF "
                            f"Select or ONNX Runtime extensions, which its targets do not ship): {way_out}")


def _constant_outputs(reference: list[np.ndarray], output_names: list[str], evald: Any) -> list[str]:
    """Outputs the model gives alike (within float32 rounding) for every sample of different ones.

    Every artifact then matches a constant, and its verification proves nothing about the model's function:
    MobileNetV3Small built with weights=None answered exactly 0.1 per class on every image, and each target
    passed at 100 % agreement without a word (an untrained model, a layer that collapsed, or data of one kind:
    a detector shown only positives)."""
    if len(evald) < 2 or evald.distinct(2) < 2:  # one sample (or copies of one): the few-samples warning says it
        return []
    constant = []
    for name, values in zip(output_names, reference):
        if np.asarray(values).dtype.kind not in "fc" or np.size(values) == 0:
            continue
        v = np.asarray(values, np.float64).reshape(len(values), -1)
        # Column by column, each against its own size: a confident classifier's 1.0 column is constant while
        # its other columns still vary (1e-11 apart). An untrained EfficientNetB0 answers 0.1 +- 1.25e-6 (~100
        # float32 steps of 0.1): within 1024 steps a column says nothing a float32 comparison can check.
        spread = v.max(axis=0) - v.min(axis=0)
        size = np.maximum(np.abs(v).max(axis=0), np.finfo(np.float32).tiny)
        if np.all(spread <= 1024 * np.finfo(np.float32).eps * size):
            constant.append(name)
    return constant


def _check_reference_finite(reference: list[np.ndarray], output_names: list[str], evald: Any, whose: str,
                            keras_model: Any = None) -> None:
    """The model's own outputs must be finite: an artifact cannot be compared with NaN or inf.

    Every target would fail verification with "has NaN/inf values" and no word on whose they
    are; the model (or data it was not trained on: pixels 0..255 into a model that expects 0..1
    without its Rescaling) is the problem, so it is bad input.
    """
    for name, out in zip(output_names, reference):
        out = np.asarray(out)
        if out.dtype.kind != "f" or not out.size:
            continue
        bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1) if out.ndim else ~np.isfinite(out.reshape(1))
        if bad.any():
            kinds = " and ".join(k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if f(out).any())
            from deploykit.models import non_finite_weights

            infinite = [name for name, _, inf, _ in non_finite_weights(keras_model) if inf]
            if infinite:  # the weights, not the data
                raise ModelLoadError(
                    f"{whose} output {name!r} holds {kinds} values on {int(bad.sum())} of {len(bad)} samples, and weight "
                    f"{infinite[0]!r} holds inf" + (f" (and {len(infinite) - 1} more)" if len(infinite) > 1 else "")
                    + ": the model itself is broken; retrain it or restore a checkpoint from before the overflow")
            if _all_padding(evald, bad, keras_model):
                raise DataError(
                    f"{whose} output {name!r} holds {kinds} values on {int(bad.sum())} of {len(bad)} samples of "
                    f"{evald.source} (first: sample {int(np.argmax(bad))}), whose ids are all 0: padding only, and a "
                    "masked mean or attention (Embedding(mask_zero=True)) over no token is 0/0; drop such samples, "
                    "or give empty input a token of its own (e.g. a start id) when training and serving")
            raise DataError(
                f"{whose} output {name!r} holds {kinds} values on {int(bad.sum())} of {len(bad)} samples of {evald.source} "
                f"(first: sample {int(np.argmax(bad))}), so no artifact can be checked against it; give the model data "
                "of the range it was trained on, or fix the model (its layers overflow float32 on these inputs)"
            )


def _all_padding(evald: Any, bad: np.ndarray, keras_model: Any) -> bool:
    """Every sample with a non-finite output holds only 0 in its integer inputs, and the model masks 0 (an
    Embedding with ``mask_zero``): an empty text, whose masked mean is 0/0, not an overflow."""
    if keras_model is None or len(bad) != len(evald):
        return False
    from deploykit.models import _flat_layers

    if not any(getattr(layer, "mask_zero", False) for layer in _flat_layers(keras_model)):
        return False
    # ids: integer inputs, or float ones holding whole numbers (keras.Input's default dtype feeds many Embeddings)
    ids = [np.asarray(a)[bad] for a in evald.x if np.asarray(a).dtype.kind in "iu"
           or (np.asarray(a).dtype.kind == "f" and np.array_equal(np.asarray(a), np.round(np.asarray(a))))]
    return bool(ids) and all(not a.reshape(len(a), -1).any(axis=1).any() for a in ids)


def _random_inputs(specs, keras_model: Any = None, count: int = 8) -> Any:
    """``count`` samples to verify on when no data is given: floats uniform in 0..1, integers over a range the
    model takes.

    Integer inputs (uint8 images, token ids) get integers: uniform floats cast to them would all
    be 0, and a verification on 8 identical samples proves little.
    """
    from deploykit.data import check_allocation

    for s in specs:
        if any(d is None for d in s.shape[1:]):  # a size of 1 would verify on 1x1 images, or not run at all
            raise DataError(f"input {s.name!r} has dimensions of any size {tuple(s.shape)}; verifying on random "
                            "inputs needs a size: pass --data with real samples (data=... in Python)")

    def dtype_of(s: Any) -> np.dtype:
        dtype = np.dtype(s.dtype) if s.dtype != "bfloat16" else np.dtype("float32")
        return dtype if dtype.kind in "biuf" else np.dtype("float32")

    # A dimension of 2**31 asked numpy for 128 GiB (and a MemoryError traceback): sized first.
    # Python ints: a product of huge dimensions must not wrap around.
    nbytes = sum(count * math.prod(int(d) for d in s.shape[1:]) * dtype_of(s).itemsize for s in specs)
    what = f"the random verification samples ({count} of " + ", ".join(f"{s.name!r} {tuple(s.shape)}" for s in specs) + ")"
    way_out = "pass --data with real samples (data=... in Python)"
    check_allocation(nbytes, what, way_out)
    rng = np.random.default_rng(0)
    vocab = _smallest_vocabulary(keras_model)
    try:
        return _draw_random_inputs(specs, rng, vocab, dtype_of, count)
    except MemoryError:  # under a memory limit psutil does not see
        raise DataError(f"{what} do not fit in this process's memory; {way_out}") from None


def _draw_random_inputs(specs, rng: Any, vocab: int | None, dtype_of: Callable[[Any], np.dtype], count: int) -> Any:
    from deploykit.data import Dataset

    xs, ranges = [], []
    for s in specs:
        shape = [count] + list(s.shape[1:])
        dtype = dtype_of(s)
        # Drawn in the input's own dtype: float64 (or int64) first and then cast needed up to twice
        # the memory of the samples themselves.
        if dtype.kind == "b":
            xs.append(rng.integers(0, 2, shape, dtype=np.uint8).astype(bool))
            ranges.append(f"{s.name} 0/1")
        elif dtype.kind in "iu":
            # Token ids must stay inside the smallest Embedding/CategoryEncoding table; otherwise a byte's range.
            high = min(vocab or 256, 256, int(np.iinfo(dtype).max) + 1)
            xs.append(rng.integers(0, high, shape, dtype=dtype))
            ranges.append(f"{s.name} integers 0..{high - 1}")
        else:  # Generator.random draws float32 or float64 only
            drawn = rng.random(shape, dtype=np.float64 if dtype == np.float64 else np.float32)
            xs.append(drawn if drawn.dtype == dtype else drawn.astype(dtype))
            ranges.append(f"{s.name} uniform 0..1")
    return Dataset(xs, None, f"<random inputs ({', '.join(ranges)}), no data given>")


def _smallest_vocabulary(keras_model: Any) -> int | None:
    """The smallest index range an integer input may feed (Embedding input_dim, CategoryEncoding num_tokens)."""
    if keras_model is None:
        return None
    from deploykit.models import _flat_layers

    sizes = [getattr(layer, attr, None) for layer in _flat_layers(keras_model) for attr in ("input_dim", "num_tokens")]
    sizes = [int(v) for v in sizes if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(sizes) if sizes else None


def _expanded(spec: Any) -> Any:
    """A path given as str or Path with '~' expanded; anything else (arrays, models) as it is."""
    return Path(os.path.expanduser(spec)) if isinstance(spec, (str, Path)) else spec


def _file_identity(model: Any) -> dict[str, Any]:
    if isinstance(model, (str, Path)) and Path(model).is_file():
        return {"path": str(model), "sha256": sha256_file(Path(model)), "size_bytes": Path(model).stat().st_size}
    if isinstance(model, (str, Path)):
        return {"path": str(model)}
    return {"path": None}


def convert(
    model: Any,
    targets: Sequence[str | Target] | str | Target,
    data: Any = None,
    out: str | Path = "build",
    **options: Any,
) -> ConvertResult:
    """Convert a model for each target, verify and benchmark every artifact, write reports.

    Args:
        model: Path to a ``.keras``/``.h5`` file or SavedModel directory, or an
            in-memory Keras 3 / tf_keras model.
        targets: Target names (``deploy targets`` lists them), TOML paths or Target objects.
        data: Calibration and evaluation data (``.npz`` path with ``x``/``y``, arrays, ``(x, y)``).
        out: Output directory.
        **options: ``eval_data``, ``force``, ``trust_model``, ``threads``, ``warmup``,
            ``iterations``, ``verify_samples``, ``bench``, ``progress``, ``prune``, ``cluster``, ``qat``,
            ``train_data``, ``label_output`` (see :class:`Pipeline`).

    Returns:
        A :class:`ConvertResult`; ``result.manifest`` is the content of ``manifest.json``. Each of
        ``result.warnings`` (too few samples to trust the verdicts, a fine-tune's accuracy cost) is also
        raised as a :class:`UserWarning`.

    Raises:
        UserError: bad model, data, target or output directory; nothing is written.

    Example:
        >>> result = deploykit.convert("digits.keras", ["tflite-fp32", "tflite-int8"],
        ...                            data="digits.npz", out="build/digits")
        >>> result.artifact("tflite-int8")["verification"]["accuracy"]
    """
    known = [p for p in inspect.signature(Pipeline.__init__).parameters if p not in ("self", "targets", "data", "out")]
    unknown = sorted(set(options) - set(known))
    if unknown:  # a TypeError from Pipeline named the word, not where it belongs
        tuning = [k for k in unknown if k in (*PRUNE_SETTINGS, *CLUSTER_SETTINGS, *QAT_SETTINGS)]
        hint = (f"; {', '.join(tuning)} {'is a' if len(tuning) == 1 else 'are'} fine-tune setting{'s' if len(tuning) > 1 else ''}: "
                f"pass {'them' if len(tuning) > 1 else 'it'} in the dict of the step, e.g. prune={{'sparsity': 0.8, "
                f"{', '.join(f'{k!r}: ...' for k in tuning)}}}" if tuning else "")
        raise UserError(f"unknown option(s) {', '.join(unknown)} for convert; choose from: {', '.join(known)}{hint}")
    from deploykit.errors import at_api_boundary, in_python_terms

    with at_api_boundary():  # the messages name CLI flags: said once more in a Python caller's terms
        named = [model, data, out, options.get("eval_data"), options.get("train_data"),
                 *(targets if isinstance(targets, (list, tuple)) else [targets])]
        for path in named:  # a name that is not UTF-8 reaches runtimes and reports: refused before anything runs
            if isinstance(path, (str, os.PathLike)):
                os.fsdecode(path).encode("utf-8")
        result = Pipeline(targets, data=data, out=out, **options).run(model)
    # Here, not in Pipeline.run: the CLI runs the Pipeline and prints these itself.
    for text in result.warnings:
        warnings.warn(in_python_terms(text), UserWarning, stacklevel=2)
    return result
