"""Target profiles: what to build, how to check it and how to time it.

A :class:`Target` is a frozen value object. The built-in profiles live as data
in ``builtin.toml`` next to this module; a user target is a TOML file with the
same fields (``deploy convert --target my_board.toml``). Every field is
validated when the object is made, so an impossible profile never reaches a
converter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deploykit.errors import TargetError

FORMATS = ("tflite", "onnx", "tflm", "tfjs")
RUNTIMES = {"tflite": "litert", "onnx": "onnxruntime", "tflm": "tflm", "tfjs": "tfjs"}
DTYPES_WEIGHTS = ("float32", "float16", "int8", "uint8", "uint16")
# Weight storage each format can hold (TF.js stores affine uint8/uint16 and computes in float32).
FORMAT_WEIGHTS = {
    "tflite": ("float32", "float16", "int8"),
    "onnx": ("float32", "float16", "int8"),
    "tflm": ("int8",),
    "tfjs": ("float32", "float16", "uint8", "uint16"),
}
DTYPES_ACTIVATIONS = ("float32", "int8", "uint8", "int16")
DTYPES_IO = ("float32", "int8")
SELECT_BY = ("speed", "download")

FIELD_DOCS: dict[str, str] = {
    "name": "Profile name, `<format>-<precision>`.",
    "format": f"Artifact format, one of {FORMATS}.",
    "precision": "Short precision label shown in reports.",
    "description": "One sentence for humans.",
    "runtime": "Runtime used to verify and benchmark (derived from the format when omitted).",
    "weights": f"Stored weight type, one of {DTYPES_WEIGHTS}.",
    "activations": f"Activation type at inference, one of {DTYPES_ACTIVATIONS}; integer activations need calibration data.",
    "io": f"Model input/output type, one of {DTYPES_IO}; int8 I/O needs int8 activations.",
    "calibration_samples": "How many samples of the run's data calibrate integer activations.",
    "options": "Format-specific converter settings, checked against the converter's OPTIONS (see `deploy targets --show`).",
    "candidates": "For `-auto` targets: the targets to build, verify and compare; of those that pass, the smallest not measurably slower than the fastest ships (tfjs-auto: the smallest download).",
    "select_by": "For `-auto` targets: 'speed' (the smallest file within 3% of the fastest, round by round, ships) or 'download' (smallest gzip ships).",
    "overrides": "For `-auto` targets: tolerance, bench and calibration_samples fields set on every candidate (in a target "
                 "file, an auto target's own such fields go here); its options are set on every candidate too.",
    "tolerance.atol": "Absolute elementwise tolerance against the reference model.",
    "tolerance.rtol": "Relative elementwise tolerance (times |reference|).",
    "tolerance.range_atol": "Extra absolute tolerance as a fraction of the reference output's range.",
    "tolerance.max_accuracy_drop": "Largest allowed top-1 accuracy drop, in percentage points (labelled data).",
    "tolerance.min_agreement": "Smallest allowed top-1 agreement with the reference, 0..1 (classification outputs).",
    "tolerance.max_violation_fraction": "Fraction of output elements allowed to exceed the elementwise bound (quantized targets: 0.001).",
    "tolerance.probabilities": "Softmax-probability outputs: 'elementwise', or 'metric' (agreement, accuracy, mean shift).",
    "tolerance.logit_atol": "Class probabilities: extra room of 2 x logit_atol x p(1-p), a logit error's effect (fp16: 0.1).",
    "tolerance.max_mean_shift": "With that room in use: largest mean mass moved per sample, 0..1 (fp16: 0.005; 1: no cap).",
    "tolerance.noise_multiple": "Bound widened by this many times the reference's own change under one-ulp input changes.",
    "tolerance.column_ranges": "range_atol of each column's own range in a value output of 2-8 columns (float-compute quantized profiles).",
    "bench.threads": "Runtime threads for benchmarking.",
    "bench.warmup": "Untimed runs before timing.",
    "bench.iterations": "Timed runs.",
}


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Files a run writes into --out beside the target directories (manifest, reports, plot).
_RESERVED_NAMES = ("manifest.json", "report.md", "report.html", "size_vs_latency.svg")


MAX_THREADS = 256


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML `true` is not 1


def _plain_int(value: Any) -> Any:
    """``np.int64(15)`` from a script as the int it is; anything else (a bool too) as it is, to be checked."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def is_toml_path(name: Any) -> bool:
    """A target given as a path to a target file (``board.toml``, ``board.TOML``), not a profile name."""
    return isinstance(name, (str, Path)) and str(name).lower().endswith(".toml")


PROBABILITY_GATES = ("elementwise", "metric")


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact must stay to the reference model.

    An element passes when ``|artifact - reference| <= atol + rtol * |reference|
    + range_atol * (reference.max() - reference.min()) + noise_multiple * noise``,
    where ``noise`` is how far the reference itself moves when its float inputs
    move by one unit in the last place (:func:`deploykit.verify.reference_noise`):
    a float32 model defines its outputs no better than that, and a badly
    conditioned one (InceptionV3 with random weights: 4e-3) would otherwise fail
    every correct conversion. With labels, accuracy
    may drop by at most ``max_accuracy_drop`` points; for classification outputs
    top-1 agreement with the reference must reach ``min_agreement``. Quantized
    targets may let a tiny ``max_violation_fraction`` of elements exceed the
    elementwise bound: a sample near a decision boundary legitimately moves a
    lot under int8, and the metric gate is what judges classification quality.

    ``probabilities = "metric"`` (the quantized profiles) applies that to
    class-probability outputs (rows of non-negative numbers summing to 1, and the
    one 0..1 column of a sigmoid binary classifier scored by 0/1 labels, read as
    the rows (1 - p, p)): their elementwise errors are reported, and it is top-1 agreement, accuracy and the
    mean probability shift (half the L1 distance between a sample's rows, which
    must stay within the elementwise bound) that decide. Softmax
    stretches a small logit error into a large probability change wherever the
    reference is unsure (dp = p(1-p) dz), so an int8 MobileNetV2 that agrees with
    its float model on 99.7 % of images and loses 0.3 accuracy points still
    moves 6 % of its samples' probabilities by more than 0.05. Counting those
    elements would reject every quantized classifier short of a perfect one, and
    would be stricter than the agreement gate for 10 classes yet looser for 1000.
    Features, logits and regression outputs stay elementwise.

    ``logit_atol`` (the float16 profiles: 0.1) widens the elementwise bound of
    class-probability outputs by what a logit error of that size does to a
    probability, ``2 * logit_atol * p * (1 - p)``: float16 weights move logits by
    a fraction of a percent, and an unsure sample (0.6 / 0.3) turns that into 0.03
    of probability, past the 1 % bound, on 2 of 540 samples of a correct
    MobileNetV2 file. The room only rescues: an output the plain bound passes is
    not judged again, and one it fails passes only if every element is within
    the room and the mean moved mass stays under ``max_mean_shift`` (0.005), so a
    small shift of every sample still fails. A confident class that collapses,
    swapped or zeroed classes fail too. Probabilities per pixel or step (the last
    axis) get the same room.

    ``column_ranges`` (the weight-quantized float profiles: fp16, TF.js uint8/uint16) takes
    ``range_atol`` of each column's own range in a value output of 2-8 columns (a price beside a
    rating): 5 % of the whole output's range let a TF.js uint8 file pass with the rating column off
    by 8 % of its span on average. Integer-activation profiles keep the whole range: one output scale
    is what int8 has, and a column whose variation it lost fails on its own (``collapsed_column``).
    """

    atol: float = 1e-4
    rtol: float = 0.0
    range_atol: float = 0.0
    max_accuracy_drop: float = 1.0
    min_agreement: float = 0.97
    max_violation_fraction: float = 0.0
    probabilities: str = "elementwise"
    noise_multiple: float = 4.0
    logit_atol: float = 0.0
    max_mean_shift: float = 1.0
    column_ranges: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.column_ranges, bool):
            raise TargetError(f"tolerance.column_ranges must be true or false, got {self.column_ranges!r}")
        if self.probabilities not in PROBABILITY_GATES:
            raise TargetError(
                f"tolerance.probabilities must be one of {', '.join(PROBABILITY_GATES)}, got {self.probabilities!r}"
            )
        if not (0 <= self.max_violation_fraction < 0.5):
            raise TargetError(
                f"tolerance.max_violation_fraction is a fraction of elements (0 <= f < 0.5), got {self.max_violation_fraction!r}"
            )
        for name in ("atol", "rtol", "range_atol", "noise_multiple", "max_violation_fraction", "max_accuracy_drop",
                     "min_agreement", "logit_atol", "max_mean_shift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TargetError(f"tolerance.{name} must be a number, got {value!r}")
        for name in ("atol", "rtol", "range_atol", "noise_multiple", "logit_atol"):
            value = getattr(self, name)
            if not (0 <= value < math.inf):  # inf would pass every artifact: no verification at all
                raise TargetError(f"tolerance.{name} must be a finite number >= 0, got {value!r}")
        if self.atol + self.rtol + self.range_atol <= 0:
            raise TargetError(
                "tolerance must be > 0: set at least one of tolerance.atol, tolerance.rtol, "
                "tolerance.range_atol to a positive number"
            )
        if not (0 <= self.max_accuracy_drop <= 100):
            raise TargetError(
                f"tolerance.max_accuracy_drop is in percentage points (0..100), got {self.max_accuracy_drop!r}"
            )
        if not (0 <= self.min_agreement <= 1):
            raise TargetError(f"tolerance.min_agreement is a fraction (0..1), got {self.min_agreement!r}")
        if not (0 <= self.max_mean_shift <= 1):
            raise TargetError(f"tolerance.max_mean_shift is a share of probability mass (0..1), got {self.max_mean_shift!r}")


@dataclass(frozen=True)
class BenchSettings:
    """How an artifact is timed on its runtime."""

    threads: int = 2
    warmup: int = 10
    iterations: int = 100

    def __post_init__(self) -> None:
        # Upper bounds too: --threads 5000 started thousands of runtime threads on a 2-core machine
        # and did not finish in ten minutes; a 20-digit number failed every target on a type error.
        for name, low, high in (("threads", 1, MAX_THREADS), ("warmup", 0, 100_000), ("iterations", 1, 1_000_000)):
            value = _plain_int(getattr(self, name))
            object.__setattr__(self, name, value)
            if not _is_int(value) or not low <= value <= high:
                raise TargetError(f"bench.{name} must be an integer in {low}..{high:,}, got {value!r}")


def _settings_table(where: str, key: str, sub: type, table: Mapping[str, Any]) -> Any:
    """A ``tolerance`` or ``bench`` table as its checked dataclass (``sub``), unknown fields refused by name."""
    sub_known = {f.name for f in dataclasses.fields(sub)}
    bad = sorted(set(table) - sub_known)
    if bad:
        raise TargetError(f"{where}: unknown field(s) {', '.join(key + '.' + b for b in bad)}; "
                          f"known: {', '.join(key + '.' + k for k in sorted(sub_known))}")
    try:
        return sub(**table)
    except (TargetError, TypeError) as exc:
        raise TargetError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Target:
    """One deployment target: format, numeric types, tolerance and bench settings.

    Args:
        name: Profile name, ``<format>-<precision>``.
        format: Artifact format (``tflite``).
        precision: Short label (``fp32``, ``int8`` ...).
        weights: Stored weight type.
        activations: Activation type at inference.
        io: Input/output tensor type.
        description: One sentence for humans.
        runtime: Runtime that verifies and benchmarks the artifact.
        calibration_samples: Samples used to calibrate integer activations.
        tolerance: Verification tolerance.
        bench: Benchmark settings.
        options: Format-specific converter settings; an ``-auto`` target's are set on its candidates.
        candidates: For an ``-auto`` target, the targets it builds and compares.
        select_by: For an ``-auto`` target, ``speed`` or ``download``.
        overrides: For an ``-auto`` target, ``tolerance`` / ``bench`` fields (tables of some of their
            fields) and ``calibration_samples`` set on every candidate.

    Raises:
        TargetError: when a field is unknown or the combination is impossible
            (for example int8 activations with float weights).
    """

    name: str
    format: str
    precision: str
    weights: str = "float32"
    activations: str = "float32"
    io: str = "float32"
    description: str = ""
    runtime: str = ""
    calibration_samples: int = 200
    # None: those of the closest built-in profile (as for a TOML target file), so an int8 Target built
    # in Python is judged like tflite-int8, not by float32 bounds that fail every quantized output.
    tolerance: Tolerance = None  # type: ignore[assignment]
    bench: BenchSettings = None  # type: ignore[assignment]
    options: Mapping[str, Any] = field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    select_by: str = "speed"
    # An -auto target's settings for its candidates (see candidate_targets); its options too.
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"target {self.name!r}"
        # The name becomes a directory under --out: one plain path component, nothing else.
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise TargetError(
                f"{where}: a target name may only use letters, digits, '.', '_' and '-' and must start "
                "with a letter or digit (it names the artifact's directory)"
            )
        if self.name.lower() in _RESERVED_NAMES:
            raise TargetError(f"{where}: the name is taken by a file every run writes beside the artifacts; rename the target")
        if self.format not in FORMATS:
            raise TargetError(f"{where}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        for fname in ("precision", "description"):  # shown in reports and tables: text, e.g. precision = "int8"
            if not isinstance(getattr(self, fname), str):
                raise TargetError(f"{where}: {fname} must be text in quotes, got {getattr(self, fname)!r}")
        if not self.runtime:
            object.__setattr__(self, "runtime", RUNTIMES[self.format])
        elif self.runtime != RUNTIMES[self.format]:
            raise TargetError(
                f"{where}: runtime {self.runtime!r} cannot run format {self.format!r}; use {RUNTIMES[self.format]!r}"
            )
        for fname, allowed in (("weights", DTYPES_WEIGHTS), ("activations", DTYPES_ACTIVATIONS), ("io", DTYPES_IO)):
            if getattr(self, fname) not in allowed:
                raise TargetError(f"{where}: {fname} {getattr(self, fname)!r} is not one of {', '.join(allowed)}")
        if self.weights not in FORMAT_WEIGHTS[self.format]:
            raise TargetError(
                f"{where}: {self.format} cannot store {self.weights} weights; choose one of {', '.join(FORMAT_WEIGHTS[self.format])}"
            )
        if self.format == "tfjs" and (self.activations, self.io) != ("float32", "float32"):
            raise TargetError(f"{where}: TF.js computes in float32: set activations and io to \"float32\" (quantize weights only)")
        if self.activations in ("int8", "uint8", "int16") and self.weights != "int8":
            raise TargetError(
                f"{where}: {self.activations} activations need int8 weights, got weights={self.weights!r}; "
                "set weights = \"int8\" or use float activations"
            )
        if self.io == "int8" and self.format not in ("tflite", "tflm"):
            raise TargetError(f"{where}: {self.format} targets take and return float32; int8 inputs/outputs are a TFLite option")
        if self.io == "int8" and self.activations != "int8":
            raise TargetError(
                f"{where}: int8 inputs/outputs need int8 activations, got activations={self.activations!r}"
            )
        if self.format == "tflm" and (self.weights, self.activations, self.io) != ("int8", "int8", "int8"):
            raise TargetError(
                f"{where}: TFLite Micro targets are full int8: set weights, activations and io to \"int8\""
            )
        # Target(tolerance={"max_accuracy_drop": 3}) in a script: the fields given, over the closest built-in's,
        # as a file's table is (over float32 defaults, an int8 file failed element by element where the file passed)
        tables: dict[str, Mapping[str, Any]] = {}
        for key, sub in (("tolerance", Tolerance), ("bench", BenchSettings)):
            value = getattr(self, key)
            if isinstance(value, Mapping) and self.candidates:
                # an -auto target's own tolerance judges nothing: set on its candidates, as a file's table is
                if key in (self.overrides or {}):
                    raise TargetError(f"{where}: set {key} directly or under overrides, not both")
                _settings_table(where, key, sub, value)
                object.__setattr__(self, "overrides", {**(self.overrides or {}), key: dict(value)})
                object.__setattr__(self, key, None)
            elif isinstance(value, Mapping):
                _settings_table(where, key, sub, value)  # unknown fields and bad values, named as given
                tables[key] = value
                object.__setattr__(self, key, None)
            elif value is not None and not isinstance(value, sub):
                raise TargetError(f"{where}: {key} must be a {sub.__name__} or a dict of its fields, got {value!r}")
        if self.tolerance is None or self.bench is None:
            like = None if _LOADING_BUILTINS else _closest_builtin(
                {"format": self.format, "precision": self.precision, "weights": self.weights,
                 "activations": self.activations, "io": self.io})
            for key, sub in (("tolerance", Tolerance), ("bench", BenchSettings)):
                if getattr(self, key) is None:
                    base = getattr(like, key) if like else sub()
                    if key in tables:
                        base = _settings_table(where, key, sub, {**dataclasses.asdict(base), **tables[key]})
                    object.__setattr__(self, key, base)
        object.__setattr__(self, "calibration_samples", _plain_int(self.calibration_samples))
        if not _is_int(self.calibration_samples) or self.calibration_samples < 1:
            raise TargetError(f"{where}: calibration_samples must be an integer >= 1, got {self.calibration_samples!r}")
        if not isinstance(self.options, Mapping):
            raise TargetError(f"{where}: options must be a table of converter settings")
        if isinstance(self.candidates, str) or not all(isinstance(c, str) for c in self.candidates):
            raise TargetError(f"{where}: candidates must be a list of target names")
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if self.name in self.candidates:
            raise TargetError(f"{where}: an auto target cannot be its own candidate")
        # An auto target's options are what it sets on its candidates: only those given, never the
        # format's defaults (a default quant_format = "qdq" would turn onnx-int8-qop into QDQ).
        options = dict(self.options)
        if not self.candidates and not _LOADING_BUILTINS:
            # Options left out come from the built-in of the same format and precision, as tolerance and
            # bench do: replace(onnx-int8-qop, options={"opset": 15}) was built as QDQ, labelled int8-qop.
            # (by label alone, unlike tolerances: the label names the kind, int8-qop stays QOperator)
            same = next((t for t in list_targets() if t.format == self.format and t.precision == self.precision
                         and not t.candidates), None)
            options = {**(same.options if same else {}), **options}
        object.__setattr__(self, "options", _check_options(self.format, options, where, fill=not self.candidates))
        object.__setattr__(self, "overrides", _check_overrides(self.overrides, where, auto=bool(self.candidates)))
        if self.format == "onnx" and self.activations == "int16" and self.options.get("quant_format") == "qoperator":
            raise TargetError(f"{where}: ONNX Runtime's QOperator ops (QLinearConv...) take 8-bit activations only; "
                              "set options.quant_format = \"qdq\" for int16 activations")
        if self.select_by not in SELECT_BY:
            raise TargetError(f"{where}: select_by {self.select_by!r} is not one of {', '.join(SELECT_BY)}")
        if self.select_by != "speed" and not self.candidates:  # it was accepted and ignored
            raise TargetError(f"{where}: select_by picks among an -auto target's candidates; this target has none "
                              "(list them in candidates, or leave select_by out)")

    @property
    def needs_calibration(self) -> bool:
        """True when integer activations must be calibrated on representative data."""
        if self.candidates:  # one level: candidates are plain targets (checked by check_candidates)
            return any(c.activations in ("int8", "uint8", "int16") for c in self.candidate_targets())
        return self.activations in ("int8", "uint8", "int16")

    def check_candidates(self) -> None:
        """Resolve every candidate of an ``-auto`` target: known, of this format, and not ``-auto`` itself.

        Raises:
            TargetError: the first candidate that cannot be built for this target.
        """
        self.candidate_targets()

    def candidate_targets(self) -> list["Target"]:
        """The candidates of an ``-auto`` target as they are built and compared.

        Each is its profile with this target's ``options`` and ``overrides`` set on it (an
        ``onnx-auto`` variant with ``calibrate_method = "percentile"`` builds percentile-calibrated
        int8 candidates; ``overrides.tolerance.max_accuracy_drop`` is the accuracy every candidate
        must keep). A candidate those change is named ``<auto>.<candidate>``: it is not the built-in
        profile any more, and a run that also asks for that profile builds both.

        Raises:
            TargetError: a candidate is unknown, of another format or itself ``-auto``; or the
                settings make two candidates the same target (an option that tells them apart).
        """
        where = f"target {self.name!r}"
        built: list[tuple[Target, Target]] = []
        if len(set(self.candidates)) < len(self.candidates):
            twice = next(c for c in self.candidates if self.candidates.count(c) > 1)
            raise TargetError(f"{where}: candidate {twice!r} is listed twice; list each candidate once")
        for name in self.candidates:
            try:
                cand = get_target(name)
            except TargetError as exc:
                raise TargetError(f"{where}: {exc}") from None
            if any(cand.name == other.name for other, _ in built):
                # two files of one name (a/q.toml, b/q.toml) would share a directory and one of them be skipped
                raise TargetError(f"{where}: two candidates are named {cand.name!r}; give one of them another name")
            if cand.candidates:
                raise TargetError(f"{where}: candidate {name!r} is itself an auto target; list plain targets")
            if cand.format != self.format:
                raise TargetError(f"{where}: candidate {name!r} is {cand.format}, not {self.format}")
            changes: dict[str, Any] = {}
            if self.options:
                changes["options"] = {**cand.options, **self.options}
            try:
                for key in ("tolerance", "bench"):
                    if key in self.overrides:
                        changes[key] = dataclasses.replace(getattr(cand, key), **self.overrides[key])
            except TargetError as exc:
                raise TargetError(f"{where}: on candidate {cand.name!r}: {exc}") from None
            if "calibration_samples" in self.overrides:
                changes["calibration_samples"] = self.overrides["calibration_samples"]
            mine = dataclasses.replace(cand, **changes) if changes else cand
            if mine != cand:
                name = f"{self.name}.{cand.name}"
                if not _NAME_RE.fullmatch(name):
                    raise TargetError(f"{where}: its candidate {cand.name!r} with its settings would be named {name!r}, "
                                      "over 64 characters; give the auto target a shorter name")
                mine = dataclasses.replace(mine, name=name)
            built.append((cand, mine))
        for i, (cand_a, a) in enumerate(built):
            for cand_b, b in built[i + 1:]:
                if dataclasses.replace(a, name="x", description="") == dataclasses.replace(b, name="x", description=""):
                    apart = sorted(k for k in self.options if cand_a.options.get(k) != cand_b.options.get(k))
                    if not apart and dataclasses.replace(cand_a, name="x", description="") == \
                            dataclasses.replace(cand_b, name="x", description=""):
                        # the same settings under two names (a q.toml that copies tflite-int8): no option did it
                        raise TargetError(f"{where}: candidates {cand_a.name!r} and {cand_b.name!r} are the same "
                                          "target under two names; list one of them")
                    raise TargetError(
                        f"{where}: its options make candidates {cand_a.name!r} and {cand_b.name!r} the same target"
                        + (f" ({', '.join('options.' + k for k in apart)} is what tells them apart)" if apart else "")
                        + "; drop that option, or list only the candidate you want")
        return [mine for _, mine in built]

    @property
    def is_auto(self) -> bool:
        """True for a family target that picks among candidates by measurement."""
        return bool(self.candidates)

    @property
    def is_quantized(self) -> bool:
        """True when weights or activations are stored as integers."""
        return self.weights == "int8" or self.activations != "float32"

    def with_bench(self, **changes: Any) -> "Target":
        """Copy of this target with some bench settings changed (e.g. ``threads=4``)."""
        return dataclasses.replace(self, bench=dataclasses.replace(self.bench, **changes))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as stored in the manifest."""
        data = dataclasses.asdict(self)
        data["options"] = dict(self.options)
        data["candidates"] = list(self.candidates)
        data["overrides"] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.overrides.items()}
        return data

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any], *, source: str = "") -> "Target":
        """Build a target from a TOML/JSON table, refusing unknown fields by name."""
        where = f"target {name!r}" + (f" in {source}" if source else "")
        data = dict(data)
        data.setdefault("name", name)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TargetError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        for key, sub in (("tolerance", Tolerance), ("bench", BenchSettings)):
            if key in data:
                if not isinstance(data[key], Mapping):
                    raise TargetError(f"{where}: {key} must be a table")
                data[key] = _settings_table(where, key, sub, data[key])
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [f for f in required if f not in data]
        if missing:
            raise TargetError(f"{where}: missing field(s) {', '.join(missing)} (every target sets {', '.join(required)}; "
                              "`deploy targets --show tflite-int8` prints a complete one)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise TargetError(f"{where}: {exc}") from None
        except TargetError as exc:  # the checks name the target only: with several files, say which one
            prefix = f"target {name!r}:"
            if source and str(exc).startswith(prefix):
                raise TargetError(f"{where}:{str(exc)[len(prefix):]}") from None
            raise


OVERRIDABLE = ("tolerance", "bench", "calibration_samples")


def _check_overrides(overrides: Any, where: str, *, auto: bool) -> dict[str, Any]:
    """Validate an auto target's ``overrides``: known fields with valid values, as plain data."""
    if not isinstance(overrides, Mapping):
        raise TargetError(f"{where}: overrides must be a table of {', '.join(OVERRIDABLE)}")
    if overrides and not auto:
        raise TargetError(f"{where}: overrides are what an -auto target sets on its candidates; set those fields "
                          "directly on a plain target")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise TargetError(f"{where}: unknown override(s) {', '.join(unknown)}; an -auto target overrides "
                          f"{', '.join(OVERRIDABLE)}")
    out: dict[str, Any] = {}
    for key, cls in (("tolerance", Tolerance), ("bench", BenchSettings)):
        if key not in overrides:
            continue
        table = overrides[key]
        if dataclasses.is_dataclass(table):
            table = dataclasses.asdict(table)
        if not isinstance(table, Mapping):
            raise TargetError(f"{where}: {key} must be a table")
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(table) - names)
        if bad:
            raise TargetError(f"{where}: unknown field(s) {', '.join(key + '.' + b for b in bad)}; "
                              f"known: {', '.join(key + '.' + k for k in sorted(names))}")
        try:  # each value checked now (the whole tolerance is checked again on each candidate)
            cls(**{**({"atol": 1.0, "rtol": 1.0, "range_atol": 1.0} if cls is Tolerance else {}), **table})
        except (TargetError, TypeError) as exc:
            raise TargetError(f"{where}: {exc}") from None
        out[key] = dict(table)
    if "calibration_samples" in overrides:
        n = overrides["calibration_samples"]
        if not _is_int(n) or n < 1:
            raise TargetError(f"{where}: calibration_samples must be an integer >= 1, got {n!r}")
        out["calibration_samples"] = n
    return out


def _check_options(fmt: str, options: dict[str, Any], where: str, *, fill: bool = True) -> dict[str, Any]:
    """Validate format-specific options against the converter's OPTIONS schema; fill defaults
    (``fill=False``: only the options given, as an -auto target sets them on its candidates)."""
    from deploykit.converters import option_specs

    specs = option_specs(fmt)
    unknown = sorted(set(options) - set(specs))
    if unknown:
        known = ", ".join(sorted(specs)) or "none"
        raise TargetError(f"{where}: unknown option(s) {', '.join('options.' + u for u in unknown)}; {fmt} options: {known}")
    out = {}
    for name, spec in specs.items():
        if not fill and name not in options:
            continue
        if not fill and spec.variant:
            raise TargetError(f"{where}: options.{name} picks which kind of {fmt} target a candidate is, so an -auto "
                              "target cannot set it on all of them; list the candidates you want")
        value = options.get(name, spec.default)
        if spec.type is int:
            value = _plain_int(value)
        if value is None and spec.default is None:  # optional setting left unset
            out[name] = None
            continue
        if spec.choices and value not in spec.choices:
            raise TargetError(f"{where}: options.{name} = {value!r} is not one of {', '.join(map(repr, spec.choices))}")
        if spec.type is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise TargetError(f"{where}: options.{name} must be an integer, got {value!r}")
        if spec.type is bool and not isinstance(value, bool):
            raise TargetError(f"{where}: options.{name} must be true or false, got {value!r}")
        if spec.type is str and not isinstance(value, str):
            raise TargetError(f"{where}: options.{name} must be a string, got {value!r}")
        if spec.pattern and value and not re.fullmatch(spec.pattern, value):
            raise TargetError(f"{where}: options.{name} = {value!r} is not {spec.pattern_says}")
        if spec.minimum is not None and value < spec.minimum:
            raise TargetError(f"{where}: options.{name} must be >= {spec.minimum}, got {value!r}")
        if spec.maximum is not None and value > spec.maximum:
            raise TargetError(f"{where}: options.{name} must be <= {spec.maximum}, got {value!r}")
        out[name] = value
    return out


_LOADING_BUILTINS = False  # the built-in profiles themselves take the plain defaults


@functools.lru_cache(maxsize=1)
def _builtins() -> dict[str, Target]:
    global _LOADING_BUILTINS
    path = Path(__file__).with_name("builtin.toml")
    with path.open("rb") as fh:
        table = tomllib.load(fh)
    _LOADING_BUILTINS = True
    try:
        return {name: Target.from_dict(name, entry, source=path.name) for name, entry in table.items()}
    finally:
        _LOADING_BUILTINS = False


def list_targets() -> list[Target]:
    """All built-in target profiles, in definition order."""
    return list(_builtins().values())


def load_target_file(path: str | Path) -> Target:
    """Load a user target from a TOML file holding one profile's fields.

    The file is either a flat table of fields (the profile name defaults to
    the file stem) or a single named table, like the entries of builtin.toml.
    Tolerance and bench fields it leaves out come from the closest built-in
    profile: the same format and precision, else the same format and numeric
    types, else the same numeric types in another format; ``options`` it leaves out, from the built-in
    of the same format and precision, else the format's defaults. In an ``-auto``
    target they are set on its candidates instead (with its ``options`` and
    ``calibration_samples``), and candidate ``.toml`` paths are relative to
    this file's directory.
    """
    path = Path(os.path.expanduser(path))  # '~/board.toml' from Python: no shell expanded it
    try:
        with path.open("rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise TargetError(f"target file {path} does not exist") from None
    except IsADirectoryError:
        raise TargetError(f"target file {path} is a directory; pass a .toml file") from None
    except OSError as exc:
        raise TargetError(f"target file {path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TargetError(f"target file {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target file {path} is not valid TOML: {exc}") from None
    if len(table) == 1 and isinstance(next(iter(table.values())), dict) and "format" not in table:
        name, entry = next(iter(table.items()))
    else:
        name, entry = table.get("name", path.stem), table
    entry = dict(entry)
    if entry.get("candidates"):
        # An auto target's own tolerance, bench and calibration fields are for its candidates (see
        # Target.candidate_targets); merged with a built-in's below they would be indistinguishable.
        given = {k: entry.pop(k) for k in OVERRIDABLE if k in entry}
        if given and "overrides" in entry:
            raise TargetError(f"target file {path}: set {', '.join(given)} directly or under overrides, not both")
        if given:
            entry["overrides"] = given
        if isinstance(entry["candidates"], list):  # candidate files beside this one, as config files do
            entry["candidates"] = [str(path.parent / c) if is_toml_path(c)
                                   and not Path(c).is_absolute() else c for c in entry["candidates"]]
    _fill_types(entry, str(path))
    # A user profile that does not set a tolerance field takes it from the built-in profile of
    # the same format and precision (an int8 board file is judged like tflite-int8, not by the
    # float32 defaults that fail every quantized classifier element by element).
    # A file naming a built-in target (`deploy targets --show tflite-auto` saved as it is) takes that
    # target's own: an -auto target's tolerance, which --show does not print, came from tflite-fp32 and
    # the unchanged file was refused as "other settings".
    like = _builtins().get(str(name)) or _closest_builtin(entry)
    # Bench fields too: a TF.js profile timed with 2 threads reported "threads 1, 2" (wasm runs one).
    for key, value in (("tolerance", like.tolerance if like else None), ("bench", like.bench if like else None)):
        if value is not None and isinstance(entry.get(key, {}), Mapping):
            entry[key] = {**dataclasses.asdict(value), **entry.get(key, {})}
    target = Target.from_dict(name, entry, source=str(path))
    builtin = _builtins().get(target.name)
    if builtin is not None and target != builtin:
        # Its artifacts would sit in tflite-int8/ under that name, reported as the built-in profile.
        raise TargetError(f"target file {path} names its profile {target.name!r}, a built-in target, with other settings; "
                          f"give it its own name (e.g. name = \"{target.name}-custom\")")
    return target


TYPE_FIELDS = ("weights", "activations", "io")


def _fill_types(entry: dict[str, Any], where: str) -> None:
    """The numeric types (and an -auto target's candidates) of a target file that sets none of them, from
    the built-in profile of the same format and precision; refused when there is none to take them from.

    ``precision`` is a label: a file with ``precision = "int8"`` and no types built a float32 file
    and reported it as ok, labelled int8.
    """
    if ("format" not in entry or "precision" not in entry or entry["format"] not in FORMATS
            or not isinstance(entry["precision"], str)):
        return  # Target names the missing field, the unknown format or the precision that is no text
    same = next((t for t in list_targets() if t.format == entry.get("format")
                 and t.precision == entry.get("precision")), None)
    if "candidates" in entry and not entry["candidates"]:
        raise TargetError(f"target file {where}: candidates is empty; list the targets it builds and compares "
                          "(`deploy targets --show tflite-auto` prints one)")
    if same is not None and same.candidates:
        if "candidates" not in entry:
            entry["candidates"] = list(same.candidates)
            entry.setdefault("select_by", same.select_by)
        return
    if entry.get("candidates"):
        # Types mean nothing on an auto target, but its format must store them: a tflm auto file without
        # types was refused for "float32 weights" it never asked for. They come from its first candidate.
        head = entry["candidates"][0] if isinstance(entry["candidates"], list) else None
        first = _builtins().get(head) if isinstance(head, str) else None
        if first is None and is_toml_path(head):
            with contextlib.suppress(TargetError):  # a candidate file's own mistakes are said where it is built
                first = load_target_file(head)
        if first is not None and not any(k in entry for k in TYPE_FIELDS):
            entry.update({k: getattr(first, k) for k in TYPE_FIELDS})
        return
    if entry.get("precision") == "auto":
        raise TargetError(f"target file {where}: precision \"auto\" compares candidates; list them (candidates = "
                          "[\"tflite-fp32\", \"tflite-int8\"]) or use a built-in -auto target's format")
    missing = [k for k in TYPE_FIELDS if k not in entry]
    if len(missing) < len(TYPE_FIELDS):  # the file says its types: the ones left out are float32
        return
    if same is None:
        known = sorted({t.precision for t in list_targets() if t.format == entry.get("format") and not t.candidates})
        raise TargetError(
            f"target file {where}: precision {entry.get('precision')!r} is a label, and no built-in "
            f"{entry.get('format')} profile has it to take the numeric types from; set {', '.join(missing)} "
            f"(e.g. weights = \"int8\"), or use a built-in precision: {', '.join(known)}")
    for k in missing:
        entry[k] = getattr(same, k)


def _closest_builtin(entry: Mapping[str, Any]) -> Target | None:
    """The built-in profile whose tolerance a user profile inherits (see :func:`load_target_file`).

    An ONNX profile named "int8" matched no built-in precision label (int8-qdq, int8-qop...) and was
    judged by the float32 defaults: every quantized output failed element by element.
    """
    plain = [t for t in list_targets() if not t.candidates]
    types = tuple(entry.get(k, "float32") for k in ("weights", "activations", "io"))
    same_types = [t for t in plain if (t.weights, t.activations, t.io) == types]
    # The same label counts only with the same types: precision = "int8" on a float16 file was judged by
    # int8's bounds, 5x looser than tflite-fp16's (the label is only a label).
    for candidates in ([t for t in plain if t.format == entry.get("format") and t.precision == entry.get("precision")
                        and (t.weights, t.activations, t.io) == types],
                       [t for t in same_types if t.format == entry.get("format")],
                       same_types,
                       [t for t in plain if (t.weights, t.activations) == types[:2]]):
        if candidates:
            return candidates[0]
    return None


def get_target(name: str | Target) -> Target:
    """Resolve a target by built-in name, TOML file path, or pass a Target through.

    Raises:
        TargetError: for an unknown name; the message lists the known ones.
    """
    if isinstance(name, Target):
        return name
    if isinstance(name, Path):
        name = str(name)
    if not isinstance(name, str):
        raise TargetError(f"a target is a name, a .toml path or a Target, got {type(name).__name__} {name!r}")
    builtins = _builtins()
    if name in builtins:
        return builtins[name]
    if is_toml_path(name):
        return load_target_file(name)
    import difflib

    # onnx_fp32, TFLite-Int8, onnx-int8-qd: the name meant, said first (case and separators as typed differ);
    # never another precision (tflite-int4 is not a misspelt tflite-int8)
    digits = lambda text: re.sub(r"\D", "", text)  # noqa: E731
    typed = {k.lower().replace("_", "-"): k for k in builtins if digits(k) == digits(name)}
    close = difflib.get_close_matches(name.lower().replace("_", "-"), list(typed), n=1, cutoff=0.8)
    meant = f"did you mean {typed[close[0]]!r}? " if close else ""
    raise TargetError(
        f"unknown target {name!r}; {meant}known targets: {', '.join(builtins)} (or a path to a .toml target file)"
    )
