"""Target profiles: built-ins as data, self-validating value objects, TOML user targets,
and the registry coverage rule (every format has a converter, every runtime a runner,
and every built-in target is converted by the integration suite)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import tomllib
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.errors import DeployError, TargetError
from deploykit.targets import (
    DTYPES_ACTIVATIONS,
    DTYPES_IO,
    DTYPES_WEIGHTS,
    FIELD_DOCS,
    FORMATS,
    RUNTIMES,
    BenchSettings,
    Target,
    Tolerance,
    get_target,
    list_targets,
    load_target_file,
)

BUILTIN_TOML = Path(deploykit.targets.__file__).with_name("builtin.toml")
BUILTIN_NAMES = [t.name for t in list_targets()]


def _toml_entries() -> dict:
    with BUILTIN_TOML.open("rb") as fh:
        return tomllib.load(fh)


# ----------------------------------------------------------------------------- built-ins
def test_builtins_are_exactly_the_toml_entries_in_order():
    assert BUILTIN_NAMES == list(_toml_entries())
    assert len(BUILTIN_NAMES) == len(set(BUILTIN_NAMES)) >= 1


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_loads_and_is_consistent(name):
    t = get_target(name)
    entry = _toml_entries()[name]
    assert isinstance(t, Target)
    assert t.name == name
    assert t.format in FORMATS
    assert t.runtime == RUNTIMES[t.format]
    assert t.weights in DTYPES_WEIGHTS and t.activations in DTYPES_ACTIVATIONS and t.io in DTYPES_IO
    assert t.description, "every built-in needs a one-sentence description"
    # naming convention `<format>-<precision>`
    assert name == f"{t.format}-{t.precision}"
    # what the TOML says is what the object holds
    for key, value in entry.items():
        held = getattr(t, key)
        if key == "options":  # converter defaults are filled in around what the entry sets
            assert {k: held[k] for k in value} == value, f"{name}.options"
        elif key == "candidates":
            assert list(held) == value, f"{name}.candidates"
        elif isinstance(value, dict):
            for sub, v in value.items():
                assert getattr(held, sub) == v, f"{name}.{key}.{sub}"
        else:
            assert held == value, f"{name}.{key}"
    candidates = getattr(t, "candidates", ())
    if candidates:  # an -auto family: every candidate is itself a built-in of the same format
        for c in candidates:
            assert get_target(c).format == t.format and not get_target(c).candidates
        assert t.needs_calibration == any(get_target(c).needs_calibration for c in candidates)
    else:
        assert t.needs_calibration == (t.activations != "float32")


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_target_round_trips_through_plain_data(name):
    t = get_target(name)
    assert Target.from_dict(t.name, t.to_dict()) == t


def test_get_target_passes_a_target_through():
    t = get_target("tflite-fp32")
    assert get_target(t) is t


def test_target_is_frozen():
    t = get_target("tflite-fp32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.weights = "int8"  # type: ignore[misc]


def test_every_setting_has_a_description():
    """House rule 2: every setting is documented (FIELD_DOCS feeds `deploy targets --show`)."""
    expected = set()
    for f in dataclasses.fields(Target):
        if f.name == "tolerance":
            expected |= {f"tolerance.{s.name}" for s in dataclasses.fields(Tolerance)}
        elif f.name == "bench":
            expected |= {f"bench.{s.name}" for s in dataclasses.fields(BenchSettings)}
        else:
            expected.add(f.name)
    assert expected == set(FIELD_DOCS)
    assert all(doc.strip() for doc in FIELD_DOCS.values())


# ----------------------------------------------------------------------------- validation
def _make(**changes) -> Target:
    fields = dict(name="my-target", format="tflite", precision="x")
    fields.update(changes)
    return Target(**fields)


def test_int8_activations_with_float_weights_refused():
    with pytest.raises(TargetError) as exc:
        _make(weights="float32", activations="int8")
    msg = str(exc.value)
    assert "my-target" in msg and "int8 activations need int8 weights" in msg and "weights" in msg
    with pytest.raises(TargetError, match="int16 activations need int8 weights"):
        _make(weights="float16", activations="int16")


def test_int8_io_with_float_activations_refused():
    with pytest.raises(TargetError, match="int8 inputs/outputs need int8 activations"):
        _make(weights="int8", activations="float32", io="int8")
    with pytest.raises(TargetError, match="activations='int16'"):
        _make(weights="int8", activations="int16", io="int8")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(atol=0.0, rtol=0.0, range_atol=0.0), "tolerance must be > 0"),
        (dict(atol=-1e-3), "tolerance.atol must be a finite number >= 0"),
        (dict(atol=float("inf")), "tolerance.atol must be a finite number >= 0"),
        (dict(rtol=-0.1), "tolerance.rtol must be a finite number >= 0"),
        (dict(range_atol=float("nan")), "tolerance.range_atol must be a finite number >= 0"),
        (dict(max_accuracy_drop=101.0), "percentage points"),
        (dict(min_agreement=1.5), "fraction"),
        (dict(probabilities="loose"), "tolerance.probabilities must be one of elementwise, metric"),
    ],
)
def test_tolerance_refuses_impossible_values(kwargs, fragment):
    with pytest.raises(TargetError, match=fragment):
        Tolerance(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: BenchSettings(iterations=True),
    lambda: BenchSettings(threads=True),
    lambda: _make(calibration_samples=True),
], ids=["iterations", "threads", "calibration_samples"])
def test_booleans_are_not_integers(make):
    with pytest.raises(TargetError):
        make()


def test_tolerance_accepts_any_single_positive_term():
    for kwargs in (dict(atol=1e-9, rtol=0, range_atol=0), dict(atol=0, rtol=1e-3), dict(atol=0, range_atol=0.05)):
        Tolerance(**kwargs)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(iterations=0), "bench.iterations must be an integer in 1..1,000,000, got 0"),
        (dict(iterations=2.5), "bench.iterations"),
        (dict(warmup=-1), "bench.warmup must be an integer in 0..100,000"),
        (dict(threads=0), "bench.threads must be an integer in 1..256"),
        (dict(threads=5000), r"bench.threads must be an integer in 1..256, got 5000"),  # thousands of threads on 2 cores
        (dict(threads=10**20), "bench.threads must be an integer in 1..256"),
    ],
)
def test_bench_settings_refuse_impossible_values(kwargs, fragment):
    with pytest.raises(TargetError, match=fragment):
        BenchSettings(**kwargs)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(format="onnx-nope"), "format 'onnx-nope' is not one of"),
        (dict(runtime="onnxruntime"), "cannot run format 'tflite'; use 'litert'"),
        (dict(weights="int4"), "weights 'int4' is not one of"),
        (dict(activations="bf16"), "activations 'bf16' is not one of"),
        (dict(io="uint8"), "io 'uint8' is not one of"),
        (dict(calibration_samples=0), "calibration_samples must be an integer >= 1"),
    ],
)
def test_target_refuses_bad_fields(changes, fragment):
    with pytest.raises(TargetError, match=fragment):
        _make(**changes)


def test_errors_are_user_errors():
    """User mistakes are ValueErrors too, so plain Python callers can catch them."""
    with pytest.raises(ValueError):
        _make(weights="float32", activations="int8")
    assert issubclass(TargetError, DeployError)


def test_unknown_field_is_named():
    with pytest.raises(TargetError) as exc:
        Target.from_dict("t", {"format": "tflite", "precision": "x", "tolerence": {"atol": 1}})
    msg = str(exc.value)
    assert "unknown field(s) tolerence" in msg
    assert "tolerance" in msg  # the known fields are listed, so the typo is obvious


def test_unknown_nested_field_is_named():
    with pytest.raises(TargetError, match=r"unknown field\(s\) bench\.iteration;"):
        Target.from_dict("t", {"format": "tflite", "precision": "x", "bench": {"iteration": 5}})
    with pytest.raises(TargetError, match="tolerance must be a table"):
        Target.from_dict("t", {"format": "tflite", "precision": "x", "tolerance": 0.1})


def test_nested_validation_error_names_the_target():
    with pytest.raises(TargetError, match=r"target 't'.*bench.iterations must be"):
        Target.from_dict("t", {"format": "tflite", "precision": "x", "bench": {"iterations": 0}})


def test_missing_required_field_is_a_target_error():
    with pytest.raises(TargetError, match=r"target 't': missing field\(s\) precision"):
        Target.from_dict("t", {"format": "tflite"})  # no precision
    with pytest.raises(TargetError, match="tolerance.atol must be a number, got '0.1'"):
        Target.from_dict("t", {"format": "tflite", "precision": "fp32", "tolerance": {"atol": "0.1"}})


def test_unknown_target_name_lists_the_known_ones():
    with pytest.raises(TargetError) as exc:
        get_target("tflite-int4")
    msg = str(exc.value)
    assert "unknown target 'tflite-int4'" in msg
    for name in BUILTIN_NAMES:
        assert name in msg
    assert ".toml" in msg
    assert "did you mean" not in msg  # int4 is another precision, not a misspelt int8


@pytest.mark.parametrize("typed,meant", [("onnx_fp32", "onnx-fp32"), ("onnx-int8-qd", "onnx-int8-qdq"),
                                         ("TFLite-Int8", "tflite-int8"), ("tfjs-unit8", "tfjs-uint8")])
def test_a_misspelt_target_name_is_answered_with_the_name_meant(typed, meant):
    with pytest.raises(TargetError, match=f"unknown target '{typed}'; did you mean '{meant}'\\? known targets: "):
        get_target(typed)


# ----------------------------------------------------------------------------- TOML files
FLAT_TOML = """
format = "tflite"
precision = "int8"
description = "My board."
weights = "int8"
activations = "int8"
io = "int8"
calibration_samples = 50

[tolerance]
atol = 0.0
range_atol = 0.1
max_accuracy_drop = 2.0

[bench]
threads = 1
iterations = 7
"""


def test_flat_toml_target(tmp_path):
    path = tmp_path / "my_board.toml"
    path.write_text(FLAT_TOML)
    t = load_target_file(path)
    assert t.name == "my_board"  # name defaults to the file stem
    assert (t.weights, t.activations, t.io, t.calibration_samples) == ("int8", "int8", "int8", 50)
    # fields it sets win; the others come from the built-in profile of its format and precision
    assert t.tolerance == dataclasses.replace(get_target("tflite-int8").tolerance, atol=0.0, range_atol=0.1,
                                              max_accuracy_drop=2.0)
    assert t.bench == BenchSettings(threads=1, iterations=7)
    assert t.runtime == "litert"
    # get_target accepts the path too (what `deploy convert -t my_board.toml` does)
    assert get_target(str(path)) == t


def test_toml_tolerance_defaults_follow_the_builtin_of_the_same_format_and_precision(tmp_path):
    head = 'format = "{f}"\nprecision = "{p}"\ndescription = "x"\nweights = "int8"\nactivations = "int8"\n'
    path = tmp_path / "plain_int8.toml"
    path.write_text(head.format(f="tflite", p="int8"))
    assert load_target_file(path).tolerance == get_target("tflite-int8").tolerance  # metric gate, 5 % of range
    path = tmp_path / "onnx_qop.toml"
    path.write_text(head.format(f="onnx", p="int8-qop") + "[tolerance]\nmin_agreement = 0.9\n")
    assert load_target_file(path).tolerance == dataclasses.replace(get_target("onnx-int8-qop").tolerance, min_agreement=0.9)
    path = tmp_path / "label.toml"  # a label that contradicts the types: the types decide (fp16 bounds, not int8's)
    path.write_text('format = "tflite"\nprecision = "int8"\nweights = "float16"\n')
    assert load_target_file(path).tolerance == get_target("tflite-fp16").tolerance
    path = tmp_path / "odd.toml"  # no built-in of that precision label: the one with the same numeric types
    path.write_text(head.format(f="tflite", p="int8-custom"))
    assert load_target_file(path).tolerance == get_target("tflite-int8").tolerance


def test_options_left_out_follow_the_builtin_of_the_same_format_and_precision(tmp_path):
    """replace(onnx-int8-qop, options={"opset": 15}) (what the built-in-name error suggests) reset
    quant_format to the format's default: a QDQ file reported as int8-qop. A .toml the same."""
    qop = get_target("onnx-int8-qop")
    mine = dataclasses.replace(qop, name="my-qop", options={"opset": 15})
    assert mine.options == {**qop.options, "opset": 15}
    path = tmp_path / "q.toml"
    path.write_text('format = "onnx"\nprecision = "int8-qop"\noptions = { opset = 15 }\n')
    assert load_target_file(path).options["quant_format"] == "qoperator"
    path.write_text('format = "onnx"\nprecision = "int8-qop"\nweights = "int8"\nactivations = "int8"\n')
    assert load_target_file(path).options["quant_format"] == "qoperator"  # other types: still the label's kind
    qdq = dataclasses.replace(get_target("onnx-int8-qdq"), name="my-qdq", options={"per_channel": False})
    assert qdq.options["quantize_bias"] is False and qdq.options["per_channel"] is False  # given ones win
    path.write_text('format = "onnx"\nprecision = "int8-mine"\nweights = "int8"\nactivations = "uint8"\n')
    assert load_target_file(path).options["quant_format"] == "qdq"  # no such built-in: the format's defaults
    import numpy as np

    opset = dataclasses.replace(qop, name="np-qop", options={"opset": np.int64(15)}).options["opset"]
    assert opset == 15 and type(opset) is int  # refused as "not an integer", where threads=np.int64(1) was taken


def test_flat_toml_with_explicit_name(tmp_path):
    path = tmp_path / "whatever.toml"
    path.write_text('name = "edge-int8"\n' + FLAT_TOML)
    assert load_target_file(path).name == "edge-int8"


def test_named_table_toml_target(tmp_path):
    path = tmp_path / "boards.toml"
    body = "\n".join(
        line if not line.startswith("[") else line.replace("[", "[cortex-m.", 1) for line in FLAT_TOML.splitlines()
    )
    path.write_text("[cortex-m]\n" + body)
    t = load_target_file(path)
    assert t.name == "cortex-m"
    assert t.bench.iterations == 7 and t.tolerance.range_atol == 0.1


def test_builtin_entry_copied_into_a_file_loads_identically(tmp_path):
    """A user target is 'a TOML file with the same fields' as builtin.toml."""
    text = BUILTIN_TOML.read_text()
    start = text.index("[tflite-int8]")
    end = text.index("\n[", start + 1)
    path = tmp_path / "copy.toml"
    path.write_text(text[start:end])
    assert load_target_file(path) == get_target("tflite-int8")


def test_toml_errors(tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        load_target_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("format = \n")
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target_file(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text(FLAT_TOML.replace("calibration_samples", "calib_samples"))
    with pytest.raises(TargetError) as exc:
        load_target_file(typo)
    assert "calib_samples" in str(exc.value) and str(typo) in str(exc.value)
    impossible = tmp_path / "impossible.toml"
    impossible.write_text(FLAT_TOML.replace('weights = "int8"', 'weights = "float32"'))
    with pytest.raises(TargetError, match="need int8 weights") as exc:
        load_target_file(impossible)
    assert str(exc.value).startswith(f"target 'impossible' in {impossible}: ")  # which file, with several -t files
    shadow = tmp_path / "shadow.toml"  # a built-in's name with other settings: its artifacts would pass for the built-in's
    shadow.write_text('name = "tflite-int8"\nformat = "tflite"\nprecision = "fp32"\n')
    with pytest.raises(TargetError, match="names its profile 'tflite-int8', a built-in target, with other settings"):
        load_target_file(shadow)
    # a format that is no text is named as the problem (the message spoke of the precision); text fields are text
    for field, line, said in (("format", "format = 3", "format 3 is not one of tflite"),
                              ("description", "description = 5", "description must be text in quotes, got 5"),
                              ("precision", "precision = 8", "precision must be text in quotes, got 8")):
        odd = tmp_path / f"odd_{field}.toml"
        odd.write_text("\n".join(line if ln.startswith(field) else ln for ln in FLAT_TOML.splitlines())
                       + ("" if field in FLAT_TOML else f"\n{line}\n"))
        with pytest.raises(TargetError, match=said):
            load_target_file(odd)
    plain = tmp_path / "plain_select.toml"  # select_by on a target without candidates was accepted and ignored
    plain.write_text('format = "tflite"\nprecision = "fp32"\nselect_by = "download"\n')
    with pytest.raises(TargetError, match=r"select_by picks among an -auto target's candidates; this target has none"):
        load_target_file(plain)
    bare = tmp_path / "bare.toml"  # without types, the precision was read as a label to look up
    bare.write_text('format = "tflite"\nprecision = 8\n')
    with pytest.raises(TargetError, match="precision must be text in quotes, got 8"):
        load_target_file(bare)


# ----------------------------------------------------------------------------- with_bench
def test_with_bench_copies_and_validates():
    t = get_target("tflite-int8")
    fast = t.with_bench(iterations=5, warmup=1, threads=1)
    assert fast.bench == BenchSettings(threads=1, warmup=1, iterations=5)
    assert dataclasses.replace(fast, bench=t.bench) == t  # nothing else changed
    assert t.bench == get_target("tflite-int8").bench  # original untouched
    with pytest.raises(TargetError, match="bench.iterations"):
        t.with_bench(iterations=0)
    with pytest.raises(TypeError):
        t.with_bench(iteration=3)


def test_pipeline_applies_bench_overrides_to_every_target():
    from deploykit.pipeline import Pipeline

    p = Pipeline(BUILTIN_NAMES, iterations=3, warmup=0, threads=1)
    assert [t.name for t in p.targets] == BUILTIN_NAMES
    assert all(t.bench == BenchSettings(threads=1, warmup=0, iterations=3) for t in p.targets)


def test_pipeline_drops_repeated_identical_targets():
    from deploykit.pipeline import Pipeline

    p = Pipeline(["tflite-fp32", "tflite-int8", "tflite-fp32"])
    assert [t.name for t in p.targets] == ["tflite-fp32", "tflite-int8"]


def test_two_different_targets_with_one_name_are_refused():
    from deploykit.pipeline import Pipeline

    fp32 = get_target("tflite-fp32")
    from deploykit.errors import UserError

    strict = dataclasses.replace(fp32, tolerance=Tolerance(atol=1e-9, min_agreement=1.0))
    with pytest.raises(UserError, match="tflite-fp32"):
        Pipeline([fp32, strict])


def test_pipeline_refuses_no_targets_and_unknown_targets_before_any_work(tmp_path):
    from deploykit.errors import UserError
    from deploykit.pipeline import Pipeline

    with pytest.raises(UserError, match="no target given"):
        Pipeline([], out=tmp_path / "o")
    with pytest.raises(TargetError, match="unknown target"):
        Pipeline(["tflite-fp32", "nope"], out=tmp_path / "o")
    # wrong Python types are user errors too, never a raw TypeError; "no" is not False
    for kwargs, fragment in ((dict(out=None), "out must be a directory path"), (dict(force="no"), "force must be True or False"),
                             (dict(verify_samples=2.5), "verify_samples must be a whole number")):
        with pytest.raises(UserError, match=fragment):
            Pipeline(["tflite-fp32"], **{"out": tmp_path / "o", **kwargs})
    for targets in (5, b"tflite-fp32", {"tflite-fp32": 1}):
        with pytest.raises(UserError, match="targets must be a target name or a list of them"):
            Pipeline(targets, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- registries
def test_every_registered_converter_imports_and_has_the_interface():
    from deploykit.converters import CONVERTERS, get_converter

    assert CONVERTERS, "no converter registered"
    for fmt, module_name in CONVERTERS.items():
        module = importlib.import_module(module_name)
        assert get_converter(fmt) is module
        assert isinstance(module.SUFFIX, str) and module.SUFFIX.startswith(".")
        params = list(inspect.signature(module.convert).parameters)
        assert params[:4] == ["model", "target", "calibration", "out_path"], fmt
    with pytest.raises(TargetError, match="no converter for format"):
        get_converter("nope")


def test_every_registered_runner_imports_and_has_the_interface():
    from deploykit.runtime_bench import RUNNERS

    assert RUNNERS, "no runner registered"
    for runtime, spec in RUNNERS.items():
        module_name, cls_name = spec.split(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
        for method in ("load", "set_inputs", "invoke", "get_outputs", "run", "describe", "close", "input_details"):
            assert callable(getattr(cls, method, None)), f"{spec} lacks {method}"
        assert cls.runtime == runtime


def test_registry_runner_runs_a_real_artifact(tflite_files, reference_outputs, digits):
    from deploykit.runtime_bench import get_runner

    runner = get_runner("litert", tflite_files["tflite-fp32"], threads=1)
    assert runner.load() >= 0
    out = runner.run({"pixels": digits.x_eval[:3]})
    (got,) = out.values()
    np.testing.assert_allclose(got, reference_outputs[:3], atol=1e-5)
    assert runner.describe()["runtime"] == "litert"
    runner.close()
    from deploykit.errors import UserError

    with pytest.raises(UserError, match="unknown runtime 'nope'"):
        get_runner("nope", tflite_files["tflite-fp32"], threads=1)


def test_every_format_has_a_converter_and_runtime_and_bench_suffix():
    from deploykit.converters import CONVERTERS, get_converter
    from deploykit.runtime_bench import RUNNERS, SUFFIX_RUNTIME

    assert set(FORMATS) == set(CONVERTERS)
    assert set(RUNTIMES) == set(FORMATS)
    assert set(RUNTIMES.values()) <= set(RUNNERS)
    for fmt in FORMATS:  # `deploy bench` can time every artifact a converter writes
        # by suffix, or (a .tflite meant for TFLite Micro) with --runtime
        assert get_converter(fmt).SUFFIX in SUFFIX_RUNTIME and RUNTIMES[fmt] in RUNNERS


def test_every_registered_converter_and_runner_is_used_by_a_builtin_target():
    """A new converter or runner must come with a built-in target, so that the
    integration suite (parametrized over list_targets()) exercises it."""
    from deploykit.converters import CONVERTERS
    from deploykit.runtime_bench import RUNNERS

    targets = list_targets()
    assert set(CONVERTERS) == {t.format for t in targets}
    assert set(RUNNERS) == {t.runtime for t in targets}


def test_integration_suite_converts_every_builtin_target():
    """House rule 1: adding a built-in target without converting it in a test fails here.

    test_convert.py parametrizes its per-target test over ``list_targets()``, so a
    new built-in is converted, verified and benchmarked without editing the tests.
    """
    import importlib.util

    path = Path(__file__).parents[1] / "integration" / "test_convert.py"
    spec = importlib.util.spec_from_file_location("_dk_test_convert_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(t.name for t in module.ALL_TARGETS) == sorted(BUILTIN_NAMES)
    marks = [m for m in module.test_builtin_target_end_to_end.pytestmark if m.name == "parametrize"]
    assert marks and [t.name for t in marks[0].args[1]] == BUILTIN_NAMES


def test_auto_candidates_and_reserved_names_are_refused_before_any_work(tmp_path):
    from deploykit.pipeline import Pipeline

    selfref = tmp_path / "loop.toml"
    selfref.write_text(f'format = "tflite"\nprecision = "auto"\ncandidates = ["{selfref}"]\n')
    with pytest.raises(TargetError, match="is itself an auto target"):
        Pipeline([str(selfref)], out=tmp_path / "o1")
    nested = tmp_path / "nested.toml"
    nested.write_text('format = "tflite"\nprecision = "auto"\ncandidates = ["tflite-fp32", "tflite-auto"]\n')
    with pytest.raises(TargetError, match="'tflite-auto' is itself an auto target"):
        Pipeline([str(nested)], out=tmp_path / "o2")
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('format = "tflite"\nprecision = "auto"\ncandidates = ["tflite-fp32", "onnx-fp32"]\n')
    with pytest.raises(TargetError, match="'onnx-fp32' is onnx, not tflite"):
        Pipeline([str(mixed)], out=tmp_path / "o3")
    for name in ("manifest.json", "report.md", "Report.html", "size_vs_latency.svg"):
        with pytest.raises(TargetError, match="taken by a file every run writes"):
            Target(name=name, format="tflite", precision="fp32")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_user_profiles_inherit_the_closest_builtin_tolerance_and_io_int8_is_tflite_only(tmp_path):
    """An ONNX profile named 'int8' matched no built-in precision label and got float32 tolerances."""
    from deploykit.targets import get_target, load_target_file

    f = tmp_path / "onnx_int8.toml"
    f.write_text('format = "onnx"\nprecision = "int8"\nweights = "int8"\nactivations = "uint8"\n')
    assert load_target_file(f).tolerance == get_target("onnx-int8-qdq").tolerance
    dyn = tmp_path / "dyn.toml"
    dyn.write_text('format = "onnx"\nprecision = "q"\nweights = "int8"\n')
    assert load_target_file(dyn).tolerance == get_target("onnx-int8-dynamic").tolerance
    io8 = tmp_path / "io8.toml"
    io8.write_text('format = "onnx"\nprecision = "int8"\nweights = "int8"\nactivations = "int8"\nio = "int8"\n')
    with pytest.raises(TargetError, match="onnx targets take and return float32"):
        load_target_file(io8)
    opset = tmp_path / "op.toml"
    opset.write_text('format = "onnx"\nprecision = "fp32"\noptions = { opset = 30 }\n')
    with pytest.raises(TargetError, match="options.opset must be <= 18"):
        load_target_file(opset)


def test_user_profiles_inherit_bench_settings_too(tmp_path):
    from deploykit.targets import get_target, load_target_file

    f = tmp_path / "web.toml"
    f.write_text('format = "tfjs"\nprecision = "fp32"\n[bench]\niterations = 7\n')
    t = load_target_file(f)
    assert t.bench.threads == get_target("tfjs-fp32").bench.threads == 1 and t.bench.iterations == 7


def test_bench_settings_take_numpy_integers_as_ints():
    import numpy as np

    b = BenchSettings(threads=np.int64(3), iterations=np.int32(7))
    assert (b.threads, b.iterations) == (3, 7) and type(b.threads) is int


def test_a_target_built_in_python_takes_the_closest_builtin_tolerance_like_a_toml_file():
    """Built in Python, an int8 Target was judged by float32 bounds (and failed a 99.5 %-agreeing file);
    the same fields in a .toml took tflite-int8's."""
    from deploykit.targets import Target

    board = Target(name="board", format="tflite", precision="int8", weights="int8", activations="int8", io="int8")
    assert board.tolerance == get_target("tflite-int8-io").tolerance and board.bench == get_target("tflite-int8-io").bench
    own = Target(name="mine", format="tflite", precision="int8", weights="int8", activations="int8",
                 tolerance=Tolerance(atol=0.5))
    assert own.tolerance == Tolerance(atol=0.5)  # given: kept


def test_a_python_target_reusing_a_builtin_name_with_other_settings_is_refused():
    from deploykit.errors import UserError
    from deploykit.pipeline import Pipeline

    loose = dataclasses.replace(get_target("tflite-int8"), tolerance=Tolerance(atol=10, min_agreement=0.0))
    with pytest.raises(UserError, match="built-in profile's name"):
        Pipeline([loose])
    Pipeline([dataclasses.replace(loose, name="tflite-int8-loose")])  # its own name: fine


def test_a_builtin_profile_with_other_bench_settings_is_still_that_profile():
    """get_target('tflite-int8').with_bench(threads=1) was refused as "a built-in name with other settings",
    while --threads does the same inside the pipeline."""
    from deploykit.pipeline import Pipeline

    Pipeline([get_target("tflite-int8").with_bench(threads=1, iterations=5)])


def test_an_auto_targets_options_and_overrides_are_set_on_its_candidates(tmp_path):
    """A variant of onnx-auto with percentile calibration, 8-bit per-tensor weights, a stricter accuracy
    gate, one thread and 100 calibration samples builds every candidate that way (they were checked,
    then silently rebuilt from their built-in profiles)."""
    auto = tmp_path / "cfg" / "mine.toml"
    auto.parent.mkdir()
    auto.write_text('name = "my-auto"\nformat = "onnx"\nprecision = "auto"\n'
                    'candidates = ["onnx-fp32", "onnx-int8-qop"]\n'
                    'options = { calibrate_method = "percentile", reduce_range = false, per_channel = false }\n'
                    'tolerance = { max_accuracy_drop = 0.5 }\nbench = { threads = 1 }\ncalibration_samples = 100\n')
    t = get_target(str(auto))
    assert dict(t.options) == {"calibrate_method": "percentile", "reduce_range": False, "per_channel": False}
    assert t.overrides == {"tolerance": {"max_accuracy_drop": 0.5}, "bench": {"threads": 1}, "calibration_samples": 100}
    fp32, qop = t.candidate_targets()
    assert (fp32.name, qop.name) == ("my-auto.onnx-fp32", "my-auto.onnx-int8-qop")  # not the built-ins any more
    builtin = get_target("onnx-int8-qop")
    assert qop.options == {**builtin.options, "calibrate_method": "percentile", "reduce_range": False, "per_channel": False}
    assert qop.options["quant_format"] == "qoperator"  # what makes it that candidate is kept
    assert qop.tolerance == dataclasses.replace(builtin.tolerance, max_accuracy_drop=0.5)
    assert (qop.bench.threads, qop.bench.iterations, qop.calibration_samples) == (1, builtin.bench.iterations, 100)
    assert fp32.tolerance == dataclasses.replace(get_target("onnx-fp32").tolerance, max_accuracy_drop=0.5)
    assert Target.from_dict(t.name, t.to_dict()) == t  # the manifest's plain data rebuilds it
    # the built-in families set nothing: their candidates are the built-in profiles themselves
    for family in ("onnx-auto", "tflite-auto", "tfjs-auto"):
        fam = get_target(family)
        assert not fam.options and not fam.overrides
        assert fam.candidate_targets() == [get_target(c) for c in fam.candidates]


def test_a_target_named_like_an_auto_candidate_with_other_settings_is_refused(tmp_path):
    """A user's fp16 target named "tla.tflite-int8" was built as tla's int8 candidate (or the candidate
    shipped under the user's name), exit 0. The same profile under both roles is still built once."""
    from deploykit.errors import UserError
    from deploykit.pipeline import _resolve_targets

    (tmp_path / "tla.toml").write_text('format = "tflite"\nprecision = "auto"\n'
                                       'candidates = ["tflite-fp32", "tflite-int8"]\ncalibration_samples = 20\n')
    (tmp_path / "board.toml").write_text('name = "tla.tflite-int8"\nformat = "tflite"\nprecision = "fp16"\n')
    for order in (["board.toml", "tla.toml"], ["tla.toml", "board.toml"]):
        with pytest.raises(UserError, match=r"target 'tla.tflite-int8' is both a target of the run and a candidate "
                                            r"of 'tla', with other settings; give your target another name"):
            _resolve_targets([str(tmp_path / n) for n in order])
    assert [t.name for t in _resolve_targets(["tflite-auto", "tflite-int8"])[0]] == ["tflite-auto", "tflite-int8"]


def test_auto_candidate_files_are_found_beside_the_auto_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "slow.toml").write_text('format = "onnx"\nprecision = "int8-qdq"\nweights = "int8"\n'
                                                'activations = "uint8"\noptions = { calibrate_method = "entropy" }\n')
    auto = tmp_path / "cfg" / "auto.toml"
    auto.write_text('format = "onnx"\nprecision = "auto"\ncandidates = ["onnx-fp32", "slow.toml"]\n')
    assert [c.name for c in get_target(str(auto)).candidate_targets()] == ["onnx-fp32", "slow"]


def test_auto_settings_that_would_merge_candidates_or_do_nothing_are_refused(tmp_path):
    with pytest.raises(TargetError, match="options.quant_format picks which kind of onnx target"):
        Target(name="a", format="onnx", precision="auto", candidates=("onnx-int8-qdq", "onnx-int8-qop"),
               options={"quant_format": "qdq"})
    with pytest.raises(TargetError, match="overrides are what an -auto target sets"):
        Target(name="p", format="onnx", precision="fp32", overrides={"bench": {"threads": 1}})
    with pytest.raises(TargetError, match="unknown override"):
        Target(name="a", format="onnx", precision="auto", candidates=("onnx-fp32",), overrides={"weights": "int8"})
    with pytest.raises(TargetError, match="unknown field.*tolerance.max_drop"):
        Target(name="a", format="onnx", precision="auto", candidates=("onnx-fp32",),
               overrides={"tolerance": {"max_drop": 1}})
    with pytest.raises(TargetError, match="bench.threads must be an integer"):
        Target(name="a", format="onnx", precision="auto", candidates=("onnx-fp32",), overrides={"bench": {"threads": 0}})
    # two candidates that the auto target's settings make identical
    same = Target(name="a", format="onnx", precision="auto", candidates=("onnx-fp32", "onnx-fp16"),
                  options={"opset": 17})
    assert len(same.candidate_targets()) == 2  # still different: float16 weights
    dup = tmp_path / "qdq-percentile.toml"
    dup.write_text('format = "onnx"\nprecision = "int8-qdq"\nweights = "int8"\nactivations = "uint8"\n'
                   'options = { quantize_bias = false, calibrate_method = "percentile" }\n')
    merged = Target(name="a", format="onnx", precision="auto", candidates=("onnx-int8-qdq", str(dup)),
                    options={"calibrate_method": "percentile"})
    with pytest.raises(TargetError, match="make candidates 'onnx-int8-qdq' and 'qdq-percentile' the same target"):
        merged.candidate_targets()
    # one candidate listed twice, two candidate files of one name, a missing file: each named as such
    with pytest.raises(TargetError, match="'onnx-fp32' is listed twice"):
        Target(name="a", format="onnx", precision="auto", candidates=("onnx-fp32", "onnx-fp32")).candidate_targets()
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "q.toml").write_text('format = "onnx"\nprecision = "fp32"\n')
    twins = Target(name="a", format="onnx", precision="auto", candidates=(str(tmp_path / "x/q.toml"), str(tmp_path / "y/q.toml")))
    with pytest.raises(TargetError, match="two candidates are named 'q'"):
        twins.candidate_targets()
    with pytest.raises(TargetError, match=r"target 'a': target file .*nope.toml does not exist"):
        Target(name="a", format="onnx", precision="auto", candidates=("nope.toml",)).candidate_targets()
    # a too-long combined name is named as such, not as a bad character
    long = Target(name="a" * 60, format="onnx", precision="auto", candidates=("onnx-fp32",), options={"opset": 18})
    with pytest.raises(TargetError, match="over 64 characters"):
        long.candidate_targets()


def test_a_target_file_with_a_precision_label_and_no_types_takes_the_builtins_or_is_refused(tmp_path):
    """precision = "int8" alone built a float32 file reported as ok; "int3" too; an auto file without
    candidates shipped one file, compared with nothing."""
    from deploykit.targets import load_target_file

    f = tmp_path / "board.toml"
    f.write_text('format = "tflite"\nprecision = "int8"\n')
    t = load_target_file(f)
    assert (t.weights, t.activations, t.io) == ("int8", "int8", "float32") and t.needs_calibration
    f.write_text('format = "tflite"\nprecision = "int3"\n')
    with pytest.raises(TargetError, match=r"precision 'int3' is a label.*set weights, activations, io.*int8"):
        load_target_file(f)
    f.write_text('format = "tflite"\nprecision = "fp32-mine"\nweights = "float16"\n')  # types given: a label
    assert load_target_file(f).weights == "float16"
    f.write_text('format = "onnx"\nprecision = "auto"\n')
    assert load_target_file(f).candidates == get_target("onnx-auto").candidates
    f.write_text('format = "onnx"\nprecision = "auto"\ncandidates = []\n')
    with pytest.raises(TargetError, match="candidates is empty"):
        load_target_file(f)
    f.write_text('format = "tflm"\nprecision = "auto"\n')
    with pytest.raises(TargetError, match='precision "auto" compares candidates; list them'):
        load_target_file(f)


def test_a_target_file_without_precision_is_told_so(tmp_path):
    from deploykit.targets import load_target_file

    f = tmp_path / "t.toml"
    f.write_text('format = "tflite"\n')
    with pytest.raises(TargetError, match=r"missing field\(s\) precision"):
        load_target_file(f)


def test_the_small_column_hint_never_suggests_the_target_that_failed():
    from deploykit.pipeline import _failure_hints

    v = {"failures": ["output 'y': column 1 ..."],
         "outputs": {"y": {"worst_column": {"column": 1}, "violations": 9, "allowed_violations": 1}}}
    uint8 = " ".join(_failure_hints(get_target("tfjs-uint8"), None, {}, v))
    uint16 = " ".join(_failure_hints(get_target("tfjs-uint16"), None, {}, v))
    assert "try tfjs-uint16 or tfjs-fp16 or tfjs-fp32" in uint8
    assert "try tfjs-fp16 or tfjs-fp32" in uint16 and "tfjs-uint16 or" not in uint16


def test_an_auto_file_without_types_takes_them_from_its_first_candidate(tmp_path):
    """A TFLite Micro auto file (no types: they mean nothing on an auto target) was refused because
    "tflm cannot store float32 weights", weights the user never set."""
    path = tmp_path / "micro_auto.toml"
    path.write_text('format = "tflm"\nprecision = "auto"\ncandidates = ["tflm-int8", "tflm-int8-cortex-m4"]\n'
                    'options = { c_name = "fw" }\n')
    t = load_target_file(path)
    assert (t.weights, t.activations, t.io) == ("int8", "int8", "int8")
    assert [c.options["c_name"] for c in t.candidate_targets()] == ["fw", "fw"]
    (tmp_path / "board.toml").write_text('format = "tflm"\nprecision = "int8"\n')  # a .toml first candidate too
    path.write_text('format = "tflm"\nprecision = "auto"\ncandidates = ["board.toml", "tflm-int8"]\n')
    assert load_target_file(path).weights == "int8"


def test_a_target_made_in_python_checks_tolerance_and_bench_dicts_as_a_file_does():
    """Target(tolerance={"atol": -1.0}) was accepted; the run then failed with AttributeError: 'dict'
    object has no attribute 'atol' (a valid dict too), and the manifest recorded the bad value."""
    t = Target("py-tol", "tflite", "fp32", tolerance={"atol": 0.5}, bench={"threads": 1})
    assert isinstance(t.tolerance, Tolerance) and t.tolerance.atol == 0.5 and t.bench.threads == 1
    # the fields given, over the closest built-in's, as a file's table: over float32 defaults, an int8 file that
    # passes as tflite-int8 failed element by element
    int8 = get_target("tflite-int8")
    loose = dataclasses.replace(int8, name="loose-int8", tolerance={"max_accuracy_drop": 3})
    assert loose.tolerance == dataclasses.replace(int8.tolerance, max_accuracy_drop=3)
    assert t.tolerance == dataclasses.replace(get_target("tflite-fp32").tolerance, atol=0.5)
    # an -auto target's own: set on its candidates, as a file's [tolerance] table (it was silently dropped)
    auto = Target("my-auto", "tfjs", "auto", candidates=("tfjs-fp32", "tfjs-uint8"), tolerance={"min_agreement": 0.5})
    assert auto.overrides == {"tolerance": {"min_agreement": 0.5}}
    assert [c.tolerance.min_agreement for c in auto.candidate_targets()] == [0.5, 0.5]
    for kw, message in (({"tolerance": {"atol": -1.0}}, "tolerance.atol must be a finite number >= 0"),
                        ({"bench": {"threads": 0}}, "bench.threads must be an integer in 1..256"),
                        ({"tolerance": {"nope": 1}}, "unknown field\\(s\\) tolerance.nope"),
                        ({"tolerance": 3}, "tolerance must be a Tolerance or a dict of its fields, got 3")):
        with pytest.raises(TargetError, match=f"^target 'py-tol': {message}"):
            Target("py-tol", "tflite", "fp32", **kw)


def test_an_upper_case_toml_suffix_and_numpy_counts_are_taken(tmp_path):
    """'board.TOML' was an unknown target name; calibration_samples=np.int64(10) was refused, though bench
    settings take NumPy integers."""
    import numpy as np

    (tmp_path / "board.TOML").write_text('format = "tflite"\nprecision = "fp32"\n')
    assert get_target(str(tmp_path / "board.TOML")).name == "board"
    t = Target("np-cal", "tflite", "int8", weights="int8", activations="int8", calibration_samples=np.int64(10))
    assert t.calibration_samples == 10 and type(t.calibration_samples) is int


def test_two_candidates_that_are_one_target_under_two_names_are_said_so(tmp_path):
    """A q.toml copying tflite-int8, listed beside it, was blamed on the auto file's options (it has none)."""
    (tmp_path / "q.toml").write_text('format = "tflite"\nprecision = "int8"\nweights = "int8"\nactivations = "int8"\n')
    (tmp_path / "a.toml").write_text('format = "tflite"\nprecision = "auto"\ncandidates = ["tflite-int8", "q.toml"]\n')
    with pytest.raises(TargetError, match="candidates 'tflite-int8' and 'q' are the same target under two names; "
                                          "list one of them"):
        get_target(str(tmp_path / "a.toml")).candidate_targets()


def test_the_auto_descriptions_say_the_rule_selection_applies():
    """onnx-auto said it "ships the fastest", while the report of the same run shipped a smaller file 2% slower
    (ties within TIE_RATIO go to the smaller file)."""
    from deploykit.selection import TIE_RATIO

    for name in ("tflite-auto", "onnx-auto"):
        description = get_target(name).description
        assert "smallest not measurably slower than the fastest" in description
        assert f"within {TIE_RATIO - 1:.0%}" in description
