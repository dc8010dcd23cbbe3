"""Report rows: what each column divides by and reads (formatting only, on hand-made manifests)."""

from __future__ import annotations

from deploykit.artifacts import Artifact, Manifest
from deploykit.report.rows import table
from deploykit.targets import get_target


def _artifact(name: str, size: int, **benchmark) -> Artifact:
    t = get_target(name)
    return Artifact(target=name, format=t.format, path=f"{name}/m", size_bytes=size, gzip_bytes=size // 2, status="ok",
                    settings={"target": t.to_dict()}, benchmark=benchmark)


def test_size_ratio_divides_by_the_same_formats_float32_file_only():
    m = Manifest(model={}, tools={}, machine={}, artifacts=[
        _artifact("onnx-fp32", 1000), _artifact("tflite-int8", 300), _artifact("tflite-fp32", 1200),
        _artifact("onnx-int8-qop", 280), _artifact("tfjs-uint8", 400), _artifact("tflm-int8", 290)])
    ratio = {r["target"]: r["size_ratio"] for r in table(m)}
    assert ratio == {"onnx-fp32": "1.00", "tflite-int8": "0.25", "tflite-fp32": "1.00", "onnx-int8-qop": "0.28",
                     "tfjs-uint8": "–", "tflm-int8": "–"}  # no tfjs-fp32 / tflm float file in this run: no ratio


def test_quantized_files_no_smaller_than_float32_are_noted():
    """On a 5k-parameter model onnx-int8-qdq was 4.2x the fp32 file and tflite-int8 1.11x, without a word."""
    from deploykit.report.rows import table_note

    m = Manifest(model={}, tools={}, machine={}, artifacts=[
        _artifact("onnx-fp32", 1000), _artifact("onnx-int8-qdq", 4200), _artifact("tflite-fp32", 1000),
        _artifact("tflite-int8", 900), _artifact("tflite-fp16", 1060)])
    assert table_note(m) == ("No smaller than float32: onnx-int8-qdq is 4.20x, tflite-fp16 is 1.06x the float32 file of "
                             "its format; on a model this small the quantization parameters, the (de)quantize steps "
                             "and the graph outweigh the weight bytes saved.")
    assert table_note(Manifest(model={}, tools={}, machine={}, artifacts=[_artifact("onnx-fp32", 1000),
                                                                          _artifact("onnx-int8-qdq", 300)])) is None


def test_runtime_memory_column_reads_the_artifacts_figure():
    m = Manifest(model={}, tools={}, machine={}, artifacts=[_artifact("tflite-fp32", 1000, runtime_memory_bytes=3 * 1024 * 1024)])
    assert table(m)[0]["peak"] == "3.0 MiB"


def test_most_accurate_says_when_others_tie_and_which_is_closest():
    from deploykit.report.rows import highlights

    arts = [_artifact(n, s) for n, s in (("tflite-fp32", 1000), ("tflite-int8", 300), ("onnx-fp32", 1000))]
    for a, err in zip(arts, (1e-6, 0.04, 2e-6)):
        a.verification = {"accuracy": 0.98, "reference_accuracy": 0.98, "max_abs_error": err}
    line = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))
    assert "**tflite-fp32**" in line and "2 other artifacts as accurate, this one closest to the reference" in line
    # onnx-fp32 at 2e-6 is as close: which float32 file wins flipped with the reference's batch size
    assert line.endswith("closest to the reference, a tie with onnx-fp32: they differ from it by float32 rounding "
                         "alone (max abs error at most 1e-05))"), line
    arts[2].verification["max_abs_error"] = 3e-4  # a real difference: no tie said
    line = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))
    assert "tie" not in line, line


def test_most_accurate_is_not_an_int8_file_one_lucky_sample_ahead():
    """An int8 file at 76.25 % that changed 5 answers of 400 headed the report over files reproducing the
    model at 76.00 %: one sample's luck. A gain well beyond its changed answers' chance still wins."""
    from deploykit.report.rows import highlights

    def line(int8_accuracy, agreement):
        arts = [_artifact(n, s) for n, s in (("tflite-fp32", 1000), ("onnx-int8-qdq", 300), ("tflite-int8", 290))]
        for a, acc, agree, err in zip(arts, (0.76, int8_accuracy, 0.7575), (1.0, agreement, 0.9825), (3e-7, 0.056, 0.056)):
            a.verification = {"accuracy": acc, "reference_accuracy": 0.76, "max_abs_error": err, "samples": 400,
                              "top1_agreement": agree}
        return next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))

    lucky = line(0.7625, 0.9875)
    assert lucky.startswith("Most accurate: **tflite-fp32** (76.00%; reference 76.00%; 1 other artifact as accurate")
    assert "onnx-int8-qdq's 76.25% is within chance on the 5 answers it changed" in lucky
    better = line(0.80, 0.94)  # 16 samples net on 24 changed: beyond 2 sqrt(24) ~ 9.8
    assert better.startswith("Most accurate: **onnx-int8-qdq** (80.00%; reference 76.00%)")
    # losses stay losses: a file 1 point down on many changed answers is not lifted over one 0.5 point down
    arts = [_artifact("tflite-int8", 300), _artifact("onnx-int8-qdq", 290)]
    for a, acc, agree in zip(arts, (0.75, 0.755), (0.97, 0.995)):
        a.verification = {"accuracy": acc, "reference_accuracy": 0.76, "max_abs_error": 0.05, "samples": 1000,
                          "top1_agreement": agree}
    down = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))
    assert down == "Most accurate: **onnx-int8-qdq** (75.50%; reference 76.00%)"
    # an fp16 file with 100 % agreement (its one changed answer a tie, 0.31774 vs 0.31757) one sample up on 64:
    # it headed the report, its changed answers read 0 from agreement
    arts = [_artifact("onnx-fp32", 1000), _artifact("onnx-fp16", 500)]
    for a, acc, changed, err in zip(arts, (0.6875, 0.703125), (0, 1), (1e-7, 3e-4)):
        a.verification = {"accuracy": acc, "reference_accuracy": 0.6875, "max_abs_error": err, "samples": 64,
                          "top1_agreement": 1.0, "changed_answers": changed}
    tie = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))
    assert tie.startswith("Most accurate: **onnx-fp32** (68.75%") and "onnx-fp16's 70.31% is within chance" in tie, tie
    # five files one answer up: two explained, the other three named with them (they went without a word)
    names = ["onnx-fp32", "tflite-int8", "onnx-int8-dynamic", "onnx-int8-qdq", "onnx-int8-qop", "tflm-int8"]
    arts = [_artifact(n, 1000 - i) for i, n in enumerate(names)]
    for a in arts:
        up = a.target != "onnx-fp32"
        a.verification = {"accuracy": 0.9622 if up else 0.9597, "reference_accuracy": 0.9597, "samples": 397,
                          "max_abs_error": 0.02 if up else 1e-7, "top1_agreement": 0.99 if up else 1.0}
    five = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=arts)) if h.startswith("Most accurate"))
    assert five.startswith("Most accurate: **onnx-fp32**") and five.count("is within chance") == 2, five
    assert five.endswith("; likewise onnx-int8-qdq, onnx-int8-qop, tflm-int8)"), five


def test_pruning_section_names_the_2_4_mask_and_a_regression_models_loss():
    from deploykit.report.rows import prune_lines

    def manifest(structure, **rep):
        report = {"settings": {"sparsity": 0.5, "structure": structure, "schedule": {"kind": "polynomial"},
                               "loss": "mse", "epochs": 3}, "totals": {}, "layers": [], "epochs_run": 3, **rep}
        return Manifest(model={}, tools={}, machine={}, artifacts=[], steps={"prune": {"report": report}})

    text = "\n".join(prune_lines(manifest("2:4")))
    assert "(2:4, the 2:4 mask set at the first step)" in text and "polynomial" not in text
    text = "\n".join(prune_lines(manifest("unstructured", score="val_loss", val_loss_before=0.01, val_loss_after=0.02,
                                          history=[{"epoch": 1, "loss": 0.1, "val_loss": 0.02, "sparsity": 0.5}],
                                          best_epoch=1)))
    assert "(unstructured, polynomial schedule)" in text
    assert "Validation loss (mse) on the held-out training split: dense 0.01 → pruned 0.02" in text
    assert "**Warning:** pruning raised the validation loss 2.0x" in text
    assert "| 1 ★ | 0.1000 | 0.02 | 50.00% |" in text
    # blocks that tile a kernel coarsely: the share reached is said beside the target
    def layer(*kernels):
        return {"name": "o", "class": "Dense", "target_sparsity": 0.5,
                "kernels": [{"weight": "kernel", "shape": shape, "size": shape[0] * shape[1], "achieved_sparsity": a}
                            for shape, a in kernels]}

    text = "\n".join(prune_lines(manifest("block", layers=[layer(((9, 4), 7 / 9), ((8, 10), 0.75))])))
    assert "Pruned to **50%** sparsity, 75.9% reached over the pruned kernels (block," in text
    assert "reached over" not in "\n".join(prune_lines(manifest("block", layers=[layer(((8, 4), 0.5))])))


def test_targets_table_says_what_its_p50_is_when_an_auto_target_chose_by_interleaved_rounds():
    from deploykit.report.rows import table_note

    plain = Manifest(model={}, tools={}, machine={}, artifacts=[_artifact("onnx-fp32", 1000, p50_ms=1.0)])
    assert table_note(plain) is None
    auto = _artifact("onnx-auto", 1000, p50_ms=1.0)
    auto.selection = {"rounds": 5, "winner": "onnx-fp32", "candidates": []}
    assert "interleaved rounds" in table_note(Manifest(model={}, tools={}, machine={}, artifacts=[auto]))


def test_loss_warning_measures_growth_against_the_losses_own_size():
    from deploykit.report.rows import fine_tune_warnings

    def warnings(before, after):
        report = {"val_loss_before": before, "val_loss_after": after}
        return fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[], steps={"prune": {"report": report}}))

    assert "raised the validation loss by 0.79" in warnings(-0.99, -0.20)[0]  # cosine similarity: best at -1
    assert warnings(0.0, 1e-9) == [] and warnings(0.01, 0.014) == []
    assert "raised the validation loss 2.0x" in warnings(0.01, 0.02)[0]


def test_table_note_is_only_there_when_a_figure_could_be_misread():
    from deploykit.report.rows import table_note

    arts = [_artifact("onnx-fp32", 1000, runtime="onnxruntime", runtime_memory_bytes=28 << 20),
            _artifact("onnx-int8-qop", 300, runtime="onnxruntime", runtime_memory_bytes=4096)]
    assert table_note(Manifest(model={}, tools={}, machine={}, artifacts=arts)) is None  # memory: one process per file
    # --no-bench with an -auto target: no p50 in the table, so no note on what its p50 are
    auto = _artifact("tflite-auto", 300)
    auto.selection = {"shipped_target": "tflite-int8", "rounds": 3}
    assert table_note(Manifest(model={}, tools={}, machine={}, artifacts=[_artifact("tflite-int8", 300), auto])) is None
    auto.benchmark["p50_ms"] = 1.0
    assert "p50 in this table is each file timed on its own" in table_note(
        Manifest(model={}, tools={}, machine={}, artifacts=[_artifact("tflite-int8", 300), auto]))


def test_a_pruning_warning_quotes_the_model_the_artifacts_match_when_clustering_moved_it_again():
    from deploykit.report.rows import fine_tune_warnings

    steps = {"prune": {"report": {"eval": {"accuracy_before": 0.8844, "accuracy_after": 0.3556}}},
             "cluster": {"report": {"eval": {"accuracy_before": 0.3556, "accuracy_after": 0.4822}}}}
    (line,) = fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[], steps=steps))
    assert line.startswith("pruning cost 52.88 points of accuracy (88.44% → 35.56%); the artifacts match the clustered "
                           "model (at 48.22%): prune less"), line
    del steps["cluster"]
    (line,) = fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[], steps=steps))
    assert "the artifacts match the pruned model: prune less" in line
    # said of the files that passed: a run whose every file failed read as if they had matched the model
    failed, ok = _artifact("tflite-int8", 300), _artifact("onnx-int8-qdq", 300)
    failed.status, failed.verification, ok.verification = "failed", {"passed": False}, {"passed": True}
    (line,) = fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[failed], steps=steps))
    assert "the artifacts were made from the pruned model (none passed verification): prune less" in line
    (line,) = fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[failed, ok], steps=steps))
    assert "the artifacts that passed verification match the pruned model: prune less" in line


def test_size_against_the_dense_model_per_format():
    from deploykit.report.rows import size_against_dense

    arts = [_artifact("tflite-int8", 30_000), _artifact("onnx-int8-qop", 32_000), _artifact("tfjs-uint8", 28_000)]
    arts[2].status = "failed"  # not kept: not compared
    refs = {"tflite": {"target": "tflite-fp32", "size_bytes": 160_000, "gzip_bytes": 150_000},
            "onnx": {"target": "onnx-fp32", "error": "ValueError: no"}}
    lines = size_against_dense(Manifest(model={}, tools={}, machine={}, artifacts=arts, steps={"dense_reference": refs}))
    assert lines[0] == ("- Download size (gzip) against the dense model's float32 file of the same format (tflite-fp32 "
                        "146.5 KiB; a quantized file's ratio is pruning and quantization together): tflite-int8 14.6 KiB = **0.100×** (10.0x smaller).")
    assert lines[1].startswith("- The dense model did not convert to onnx-fp32 for the size comparison: ValueError: no")
    assert size_against_dense(Manifest(model={}, tools={}, machine={}, artifacts=arts)) == []
    why = "the model was pruned in place (it cannot be cloned), so no dense copy was left to convert"
    in_place = {f: {"target": t, "skipped": why} for f, t in (("tflite", "tflite-fp32"), ("onnx", "onnx-fp32"))}
    assert size_against_dense(Manifest(model={}, tools={}, machine={}, artifacts=arts, steps={"dense_reference": in_place})) \
        == [f"- No size comparison with the dense model: {why}."]


def test_a_run_checked_on_too_few_samples_says_so_once():
    from deploykit.report.rows import data_warnings

    def manifest(eval_n, calib_n, activations="uint8", accuracy=True, built=True):
        art = _artifact("onnx-int8-qdq", 1000)
        art.settings = {"target": {"activations": activations}}
        art.verification = ({"accuracy": 1.0} if accuracy else {"mae": 0.1}) if built else {}
        return Manifest(model={}, tools={}, machine={}, artifacts=[art],
                        data={"source": "d.npz", "samples": calib_n, "eval_source": "d.npz", "eval_samples": eval_n})

    (line,) = data_warnings(manifest(1, 1))
    assert "verified on 1 sample of d.npz" in line and "calibrated on 1 sample" in line and "100 points" in line
    (line,) = data_warnings(manifest(500, 8))
    assert "calibrated on 8 samples" in line and "verified" not in line
    assert data_warnings(manifest(500, 8, activations="float32")) == []  # nothing was calibrated
    assert data_warnings(manifest(300, 300)) == []
    (line,) = data_warnings(manifest(3, 300, accuracy=False))  # a regression model: scored by MAE, no accuracy
    assert "verified on 3 samples" in line and "accuracy" not in line, line
    # no artifact got as far as verification (TF.js cannot run the model): none "was verified on 8 samples"
    assert data_warnings(manifest(8, 8, built=False)) == []


def test_latency_ratio_divides_only_by_a_float32_file_timed_beside_it_round_by_round():
    from deploykit.report.rows import highlights, table_note
    from deploykit.side_by_side import add_float32_ratios

    def timed(name, solo, rounds=None, with_=()):
        a = _artifact(name, 1000, p50_ms=solo, threads=2)
        if rounds is not None:
            a.benchmark["side_by_side"] = {"p50_ms": float(sorted(rounds)[len(rounds) // 2]), "p90_ms": max(rounds),
                                           "round_p50_ms": rounds, "rounds": len(rounds), "with": list(with_)}
        return get_target(name), a

    # The machine switched speed after round 2: pooled p50s say int8 is 1.0x fp32 (3.0 vs 3.0);
    # round by round it is 0.75x.
    built = [timed("tflite-fp32", 3.0, [4.0, 4.0, 2.0, 2.0, 2.0], ["tflite-int8"]),
             timed("tflite-int8", 3.2, [3.0, 3.0, 1.5, 1.5, 1.5], ["tflite-fp32"]),
             timed("onnx-fp32", 5.0), timed("onnx-int8-qop", 2.0, [2.5] * 5, ["onnx-int8-qdq"]),
             timed("onnx-int8-qdq", 2.4, [2.6] * 5, ["onnx-int8-qop"])]
    add_float32_ratios(built)
    m = Manifest(model={}, tools={}, machine={}, artifacts=[a for _, a in built])
    rows = {r["target"]: r for r in table(m)}
    assert rows["tflite-int8"]["p50"] == "1.500" and rows["tflite-int8"]["p50_ratio"] == "0.75"
    assert rows["tflite-fp32"]["p50_ratio"] == "1.00"
    # onnx-fp32 was timed alone: no ratio for files that were not timed beside it, nor for itself
    assert rows["onnx-int8-qop"]["p50_ratio"] == rows["onnx-fp32"]["p50_ratio"] == "–"
    assert rows["onnx-fp32"]["p50"] == "5.000"
    assert any(h.startswith("Fastest: **tflite-int8** (p50 1.500 ms") for h in highlights(m))
    assert "timed again side by side" in table_note(m) and "Timed on their own (no other file ran alike, or the " \
        "comparison failed): onnx-fp32." in table_note(m)
    # fp32 stopped after 2 rounds (clearly slower): the int8 file's ratio rests on those 2 rounds too
    short = [timed("tflite-fp32", 3.0, [4.0, 4.2], ["tflite-int8"]), timed("tflite-int8", 3.2, [1.7] * 5, ["tflite-fp32"])]
    add_float32_ratios(short)
    rows2 = {r["target"]: r for r in table(Manifest(model={}, tools={}, machine={}, artifacts=[a for _, a in short]))}
    assert rows2["tflite-int8"]["p50_ratio"].endswith("(2 rounds)") and rows["tflite-int8"]["p50_ratio"] == "0.75"
    built[1][1].benchmark["side_by_side"]["p50_ms"] = 0.0054  # under 1 ms: 3 significant digits, zeros kept
    assert {r["target"]: r for r in table(m)}["tflite-int8"]["p50"] == "0.00540"


def test_the_builtin_float32_file_is_what_both_ratios_divide_by():
    """A user's own float32 profile listed first made the built-in tflite-fp32 row read 0.50x."""
    import dataclasses

    from deploykit.side_by_side import add_float32_ratios

    mine = dataclasses.replace(get_target("tflite-fp32"), name="my-fp32")
    a_mine = Artifact(target="my-fp32", format="tflite", path="my/m", size_bytes=2000, gzip_bytes=1000, status="ok",
                      settings={"target": mine.to_dict()}, benchmark={"p50_ms": 2.0})
    a_fp32 = _artifact("tflite-fp32", 1000, p50_ms=1.0)
    a_int8 = _artifact("tflite-int8", 250, p50_ms=0.5)
    names = ["my-fp32", "tflite-fp32", "tflite-int8"]
    for a, p50 in ((a_mine, 2.0), (a_fp32, 1.0), (a_int8, 0.5)):
        a.benchmark["side_by_side"] = {"p50_ms": p50, "round_p50_ms": [p50] * 5, "rounds": 5,
                                       "with": [n for n in names if n != a.target]}
    add_float32_ratios([(mine, a_mine), (get_target("tflite-fp32"), a_fp32), (get_target("tflite-int8"), a_int8)])
    rows = {r["target"]: r for r in table(Manifest(model={}, tools={}, machine={}, artifacts=[a_mine, a_fp32, a_int8]))}
    assert [rows[n]["p50_ratio"] for n in names] == ["2.00", "1.00", "0.50"]
    assert [rows[n]["size_ratio"] for n in names] == ["2.00", "1.00", "0.25"]


def test_latency_formatting_edge_cases():
    from deploykit.report.rows import latency_ms

    assert [latency_ms(v) for v in (None, 0.0, 1e-5, 0.0054, 0.9996, 1.0004, 12.3456)] == \
        ["–", "0", "1.00e-05", "0.00540", "1.000", "1.000", "12.346"]


def test_a_file_verified_on_another_tfjs_backend_says_so_and_a_user_target_is_described():
    import dataclasses

    from deploykit.report.rows import converter_notes, target_description

    base = get_target("tfjs-fp32")

    def user(options: dict, description: str = "") -> Artifact:
        t = dataclasses.replace(base, name="tfjs-mine", description=description, options=options)
        return Artifact(target=t.name, format="tfjs", path="tfjs-mine/model.json", status="ok",
                        settings={"target": t.to_dict()}, benchmark={"p50_ms": 1.0})

    cpu = user({"backend": "cpu"})
    (note,) = converter_notes(Manifest(model={}, tools={}, machine={}, artifacts=[cpu]))
    assert note == "tfjs-mine: verified and timed with backend = 'cpu' (run it the same way: tf.setBackend('cpu') before loading)"
    # the runner's default, or an option only the converter reads: nothing to say
    for options in ({"backend": "wasm"}, {}):
        assert converter_notes(Manifest(model={}, tools={}, machine={}, artifacts=[user(options)])) == []
    assert target_description(cpu) == "tfjs (weights float32, activations float32, io float32) — user target, no description"
    assert target_description(user({}, "Mine.")) == "Mine."


def test_layers_left_dense_for_one_reason_are_one_entry_from_four():
    from deploykit.report.rows import _left_alone

    skipped = ([{"layer": f"bn{i}", "class": "BatchNormalization", "reason": "no prunable kernel"} for i in range(35)]
               + [{"layer": "scale", "class": "Rescaling", "reason": "preprocessing layer"},
                  {"layer": "drop", "class": "Dropout", "reason": "no weights"}]
               + [{"layer": f"dw{i}", "class": "DepthwiseConv2D", "reason": "depthwise"} for i in range(3)])
    (line,) = _left_alone("Kept dense", skipped)
    assert line == ("- Kept dense: 35 BatchNormalization layers (`bn0`, `bn1`, `bn2`, …: no prunable kernel), "
                    "`scale` (Rescaling: preprocessing layer), `dw0` (DepthwiseConv2D: depthwise), "
                    "`dw1` (DepthwiseConv2D: depthwise), `dw2` (DepthwiseConv2D: depthwise).")


def _auto_run(dynamic_rounds):
    """tflite-auto shipped tflite-dynamic by its rounds; the run's later side-by-side timing gave these rounds."""
    sel = {"winner": "tflite-dynamic", "rounds": 5, "reason": "tflite-dynamic ships: fastest in the interleaved rounds",
           "candidates": [{"target": "tflite-fp32", "status": "ok", "size_bytes": 1000, "interleaved_p50_ms": 0.0061},
                          {"target": "tflite-dynamic", "status": "ok", "size_bytes": 300, "interleaved_p50_ms": 0.0059}]}
    group = ["tflite-fp32", "tflite-dynamic", "tflite-int16x8"]  # timed again with a file that is no candidate
    fp32 = _artifact("tflite-fp32", 1000, side_by_side={"p50_ms": 0.0073, "round_p50_ms": [0.0072, 0.0078, 0.0073, 0.0060],
                                                        "with": [g for g in group if g != "tflite-fp32"]})
    dyn = _artifact("tflite-dynamic", 300, side_by_side={"p50_ms": 0.0093, "round_p50_ms": dynamic_rounds,
                                                         "with": [g for g in group if g != "tflite-dynamic"]})
    auto = _artifact("tflite-auto", 300)
    auto.selection = sel
    return Manifest(model={}, tools={}, machine={}, artifacts=[fp32, dyn, auto])


def test_an_auto_choice_the_later_side_by_side_timing_contradicts_is_said_beside_it():
    from deploykit.report.rows import selection_lines

    text = "\n".join(selection_lines(_auto_run([0.0090, 0.0094, 0.0093, 0.0059])))
    # the ratio alone: pooled p50s beside it (0.00930 vs 0.00730 ms) divide to 1.27, not 1.23
    assert "tflite-dynamic measured 1.23x tflite-fp32 (median of 4 paired rounds' ratios, slower in 3 of them)" in text
    assert "`deploy bench tflite-dynamic/m tflite-fp32/m`" in text
    agreeing = "\n".join(selection_lines(_auto_run([0.0070, 0.0075, 0.0072, 0.0061])))
    assert "Timed again after the build" not in agreeing
    tie = "\n".join(selection_lines(_auto_run([0.0081, 0.0070, 0.0083, 0.0059])))  # 1.10x, faster in 2 rounds: a tie
    assert "Timed again after the build" not in tie
    own = _auto_run([0.0090, 0.0094, 0.0093, 0.0059])  # the group was the candidates: the selection's own figures
    for a in own.artifacts:
        if "side_by_side" in a.benchmark:
            a.benchmark["side_by_side"]["with"] = [t for t in ("tflite-fp32", "tflite-dynamic") if t != a.target]
    assert "Timed again after the build" not in "\n".join(selection_lines(own))
    # the candidate table shows 3 significant digits: 0.0059 and 0.0061 no longer both read 0.006
    assert "| tflite-dynamic (winner) | ok | 300 B | – | 0.00590 |" in agreeing


def test_both_reports_say_how_it_was_measured_the_same_way():
    """The HTML report's section left out the gzip level, what Runtime mem means and the OS."""
    from deploykit.report.html import render_html
    from deploykit.report.markdown import render_markdown

    m = Manifest(model={}, tools={"deploykit": "0.1"}, machine={"cpu": "Xeon", "cores": 2, "os": "Linux-6"},
                 artifacts=[_artifact("tflite-fp32", 1000, threads=2, p50_ms=0.1)])
    m.model = {"source": "m.keras", "kind": "keras3", "params": 10, "inputs": [{"name": "x", "shape": [None, 4],
                                                                                 "dtype": "float32"}]}
    m.data = {"eval_samples": 40, "eval_source": "d.npz", "labels": True}
    m.artifacts[0].sha256 = "ab" * 32
    md, page = render_markdown(m, None), render_html(m, None)
    for text in ("gzip (level 6", "Runtime mem: what the file adds", "Linux-6", "threads 2",
                 "Verified on 40 samples of", "10 parameters", "sha256", "tflite-fp32/m"):  # the HTML lacked the last four
        assert text in md and text in page, text


def test_more_threads_than_cores_is_said_where_the_report_says_how_it_was_measured():
    """--threads 8 on 2 cores was accepted and its latencies reported like any others."""
    from deploykit.report.rows import measured_lines

    def lines(threads: int, cores: int) -> str:
        m = Manifest(model={}, tools={}, machine={"cores": cores},
                     artifacts=[_artifact("tflite-fp32", 1000, threads=threads, p50_ms=0.1)])
        return "\n".join(measured_lines(m))

    assert "8 threads on this machine's 2 cores take turns" in lines(8, 2)
    assert "take turns" not in lines(2, 2) and "take turns" not in lines(4, 8)


def test_names_in_the_markdown_report_cannot_become_markup():
    """A Keras 3 output key is any string: '<script>' in a verification note became a live element in
    Markdown viewers, and a line break in it started a heading of its own."""
    from deploykit.report.markdown import render_markdown

    evil = "p<script>alert(1)</script>\n## Injected"
    m = Manifest(model={"source": "m.keras", "kind": "keras3", "outputs": [{"name": evil, "shape": [None, 2]}]},
                 tools={}, machine={}, artifacts=[_artifact("tflite-fp32", 1000, threads=2, p50_ms=0.1)])
    m.artifacts[0].verification = {"passed": True, "notes": [f"output {evil!r} holds class probabilities"],
                                   "outputs": {}}
    m.data = {"eval_samples": 40, "eval_source": "d.npz"}
    md = render_markdown(m, None)
    assert "<script>" not in md.replace("`p<script>alert(1)</script> ## Injected`", "")  # code shows it as text
    assert "p&lt;script>" in md or evil not in md
    assert not any(line.startswith("## Injected") for line in md.splitlines())
    assert "`p<script>alert(1)</script> ## Injected`" in md  # the outputs line: in code, as it is


def test_fastest_agrees_with_the_paired_rounds_and_ties_only_within_3_percent_either_way():
    """The demo report said "Fastest: tflite-dynamic; tflite-int8 within 3 % of it: a tie" while its own
    × fp32 p50 column had int8 at 0.63 and dynamic at 0.76: picked by p50, tied by the paired ratio with
    no lower bound, so a file 17 % faster was a "tie"."""
    from deploykit.report.rows import highlights

    def art(name, p50, ratio):
        return _artifact(name, 1000, p50_ms=p50, threads=2,
                         side_by_side={"p50_ms": p50, "vs_float32": {"ratio": ratio, "target": "tflite-fp32"}})

    arts = [art("tflite-fp32", 0.0143, 1.0), art("tflite-dynamic", 0.00844, 0.76), art("tflite-int8", 0.00905, 0.63),
            art("tflite-int8-io", 0.00940, 0.64)]
    m = Manifest(model={}, tools={}, machine={}, artifacts=arts)
    (fastest,) = [h for h in highlights(m) if h.startswith("Fastest")]
    assert fastest.startswith("Fastest: **tflite-int8** (p50 0.00905 ms") and "tflite-int8-io within 3% of it" in fastest
    assert "tflite-dynamic" not in fastest


def test_the_console_summary_cuts_nothing_on_an_80_column_terminal(monkeypatch, tmp_path):
    """rich cut every cell to fit 80 columns: all six TFLite rows read "tflite…" and 8.70e-02 read "8.70e-…"."""
    import io
    import types

    from rich.console import Console

    from deploykit import cli

    arts = [_artifact(n, 47_000, p50_ms=0.00905, threads=2) for n in ("tflite-int8-io", "onnx-int8-dynamic")]
    for a in arts:
        a.verification = {"passed": True, "max_abs_error": 0.087, "agreement": 1.0, "outputs": {}}
    m = Manifest(model={"name": "digits_cnn"}, tools={}, machine={}, artifacts=arts)
    result = types.SimpleNamespace(manifest=m.to_dict(), warnings=[], manifest_path=tmp_path / ("a" * 200),
                                   report_path=tmp_path / "r.md", html_report_path=tmp_path / "r.html")
    for width in (80, 160):
        screen = io.StringIO()
        monkeypatch.setattr(cli, "_console", lambda stderr=False: Console(file=screen, width=width))
        cli._print_summary(result)
        text = screen.getvalue()
        assert "…" not in text and "tflite-int8-io" in text and "onnx-int8-dynamic" in text and "8.70e-02" in text, text
        assert f"manifest: {tmp_path / ('a' * 200)}" in text  # one line, however long


def test_the_plot_takes_a_log_latency_axis_when_latencies_span_orders_of_magnitude():
    """TF.js at 0.2 ms beside TFLite at 0.006 ms: on a linear axis the fast points (and labels) sat on top
    of each other at the bottom."""
    import re

    from deploykit.report.plot import render_plot

    def ys(*p50s):
        arts = [_artifact(n, 1000 * (i + 1), p50_ms=v, p90_ms=v) for i, (n, v) in
                enumerate(zip(("tflite-fp32", "tflite-int8", "tfjs-fp32"), p50s))]
        svg = render_plot(Manifest(model={}, tools={}, machine={}, artifacts=arts))
        return svg, [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]

    svg, (fp32, int8, tfjs) = ys(0.006, 0.009, 0.2)
    assert "log scale" in svg and fp32 - int8 > 30 and int8 - tfjs > 100  # 1.5x apart is visibly apart
    svg, (a, b, c) = ys(0.10, 0.12, 0.2)
    assert "log scale" not in svg and a > b > c


def test_plot_labels_do_not_cover_each_other_and_the_shipped_file_is_marked():
    """Two files of one size and speed (onnx-int8-qdq and -qop) wrote one label over the other, and the
    plot, which leaves -auto copies out, did not say which file ships."""
    import re

    from deploykit.report.plot import render_plot

    arts = [_artifact("onnx-int8-qdq", 1000, p50_ms=0.05, p90_ms=0.05),
            _artifact("onnx-int8-qop", 1010, p50_ms=0.05, p90_ms=0.05),
            _artifact("onnx-auto", 1010, p50_ms=0.05, p90_ms=0.05), _artifact("onnx-fp32", 4000, p50_ms=0.06, p90_ms=0.06)]
    arts[2].selection = {"winner": "onnx-int8-qop", "candidates": []}
    svg = render_plot(Manifest(model={}, tools={}, machine={}, artifacts=arts))
    labels = re.findall(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>(onnx-[^<]*)</text>', svg)
    assert [t for _, _, t in labels] == ["onnx-int8-qdq", "onnx-int8-qop (onnx-auto ships it)", "onnx-fp32"]
    (_, y1, _), (_, y2, _), _ = labels
    assert abs(float(y1) - float(y2)) >= 13


def test_a_run_verified_on_few_samples_says_so_in_the_report_not_only_on_the_console():
    from deploykit.report.rows import highlights

    art = _artifact("tflite-fp32", 1000)
    art.verification = {"passed": True, "max_abs_error": 0.0}
    m = Manifest(model={}, tools={}, machine={}, artifacts=[art],
                 data={"eval_samples": 5, "eval_source": "tiny.npz", "samples": 5, "source": "tiny.npz"})
    assert any(h.startswith("**Warning:** every artifact was verified on 5 samples of tiny.npz") for h in highlights(m))


def test_an_unlabelled_output_that_moved_far_is_warned_about():
    from deploykit.report.rows import fine_tune_warnings

    def run(change, agree=None):
        d = {"output": "bright", "loss": "mse", "mean_abs_change": change, "dense_std": 0.1}
        if agree is not None:
            d = {"output": "cls", "loss": "categorical_crossentropy (soft targets)", "mean_abs_change": 0.01,
                 "dense_std": 0.3, "top1_agreement": agree}
        rep = {"settings": {"epochs": 12}, "epochs_run": 12, "outputs": {"labelled": "digit", "distilled": [d]}}
        return fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[], steps={"prune": {"report": rep}}))

    assert run(0.03) == [] and run(0.01, agree=0.97) == []
    (w,) = run(0.06)
    assert w.startswith("pruning moved output `bright` (no labels for it) away from the model's own values: by 60% of its spread")
    (w,) = run(0.01, agree=0.9)
    assert "its answers agree with the model's before on 90.0%" in w


def test_an_input_keras_named_by_session_is_warned_about():
    """An unnamed keras.Input is `keras_tensor` in one session and `keras_tensor_5` in the next: the
    artifacts take inputs by that name, so the app feeding them broke after a retrain."""
    from deploykit.report.rows import input_name_warnings

    def warned(*names):
        return input_name_warnings(Manifest(model={"inputs": [{"name": n} for n in names]}, tools={}, machine={}))

    (line,) = warned("keras_tensor_5", "meta")
    assert line.startswith("input 'keras_tensor_5' has the name Keras numbers by session") and "name=" in line
    assert warned("input_1")  # tf_keras's
    assert warned("pixels", "input", "input_ids") == []


def _regression_auto(rounds: int):
    """A regression model's -auto target: candidates recorded as select() records them."""
    from deploykit.artifacts import Artifact

    quality = {"mae": 756.6, "mae_increase": -1.6e-6, "reference_mae": 756.6, "max_abs_error": 0.094}
    cands = [{"target": "tfjs-fp32", "status": "ok", "size_bytes": 18308, "gzip_bytes": 12190, "p50_ms": 0.138, **quality},
             {"target": "tfjs-uint16", "status": "ok", "size_bytes": 12800, "gzip_bytes": 7100, "p50_ms": 0.074,
              **quality, "mae": 756.67, "mae_increase": 2.55e-5, "max_abs_error": 4.59}]
    auto = Artifact(target="tfjs-auto", format="tfjs", path="tfjs-auto/model.json", status="ok",
                    selection={"winner": "tfjs-uint16", "rounds": rounds, "reason": "tfjs-uint16 ships", "candidates": cands})
    fp32 = _artifact("tfjs-fp32", 18308, p50_ms=0.138, side_by_side={"p50_ms": 0.0786, "round_p50_ms": [0.08] * 5})
    u16 = _artifact("tfjs-uint16", 12800, p50_ms=0.074, side_by_side={"p50_ms": 0.0830, "round_p50_ms": [0.083] * 5})
    fp32.verification, u16.verification = dict(quality), {**quality, "mae": 756.67}
    return Manifest(model={}, tools={}, machine={}, artifacts=[fp32, u16, auto])


def test_auto_candidate_tables_show_a_regression_models_mae_and_max_error():
    """run_reg: every candidate row read "Accuracy –" while the Targets table showed "MAE 756.6"."""
    from deploykit.report.rows import selection_lines

    text = "\n".join(selection_lines(_regression_auto(0)))
    assert "| tfjs-uint16 (winner) | ok | 12.5 KiB | 6.9 KiB | 0.0830 | MAE 756.7 | 0.0 % MAE | – | 4.59e+00 |" in text
    assert "Error | Δ error | Top-1 agree | Max abs err |" in text  # headed as the Targets table heads them


def test_a_download_choice_lists_the_side_by_side_p50s_the_targets_table_shows():
    """tfjs-auto listed solo p50s (uint16 0.074 vs fp32 0.138: "1.9x faster") beside a Targets table that
    timed the same files side by side level (0.083 vs 0.079)."""
    from deploykit.report.rows import selection_lines

    text = "\n".join(selection_lines(_regression_auto(0)))
    assert "| side-by-side p50 ms |" in text and "| 0.0786 |" in text and "0.138" not in text
    m = _regression_auto(0)
    del m.artifacts[0].benchmark["side_by_side"]  # timed alone: said so in its cell
    assert "| 0.138 (solo) |" in "\n".join(selection_lines(m))


def test_auto_candidate_table_gives_the_paired_ratio_to_the_winner_and_marks_unsteady_ones():
    from deploykit.report.rows import selection_lines

    m = _regression_auto(5)
    m.artifacts[2].selection["candidates"][0].update(interleaved_p50_ms=0.08, ratio_to_winner=1.31, rounds_faster=0,
                                                      ratio_spread=2.4, unsteady=True)
    m.artifacts[2].selection["candidates"][1]["interleaved_p50_ms"] = 0.07
    text = "\n".join(selection_lines(m))
    assert "| tfjs-fp32 | ok | 17.9 KiB | 11.9 KiB | 0.0800 | 1.31 (unsteady) | MAE 756.6 |" in text
    assert "| tfjs-uint16 (winner) | ok | 12.5 KiB | 6.9 KiB | 0.0700 | 1.00 |" in text


def test_an_unsteady_fp32_ratio_is_marked_in_the_targets_table_and_explained():
    """run_mnv3's qdq "0.22x fp32" came from per-round ratios 0.17..0.80."""
    from deploykit.report.rows import table_note

    fp32 = _artifact("onnx-fp32", 1000, p50_ms=1.0, side_by_side={"p50_ms": 1.0, "rounds": 5, "round_p50_ms": [1.0] * 5,
                                                                 "vs_float32": {"target": "onnx-fp32", "ratio": 1.0}})
    qdq = _artifact("onnx-int8-qdq", 300, p50_ms=1.0, side_by_side={
        "p50_ms": 1.0, "rounds": 5, "round_p50_ms": [1.0] * 5,
        "vs_float32": {"target": "onnx-fp32", "ratio": 0.22, "spread": 4.7, "unsteady": True}})
    m = Manifest(model={}, tools={}, machine={}, artifacts=[fp32, qdq])
    assert [r["p50_ratio"] for r in table(m)] == ["1.00", "0.22 (unsteady)"]
    assert "marked (unsteady) (onnx-int8-qdq): that file's per-round ratios to fp32 spanned more than 1.5x" in table_note(m)


def test_the_float32_ratio_records_how_far_its_rounds_spread():
    """run_mnv3's rounds: fp32 swung between 1.55 and 12.5 ms, qdq/fp32 went 0.17..0.80 round by round."""
    from deploykit.side_by_side import add_float32_ratios

    names = ["onnx-fp32", "onnx-int8-qdq", "onnx-int8-qop"]
    rounds = {"onnx-fp32": [1.5534325, 2.3424395, 10.0819685, 12.517327, 6.888724],
              "onnx-int8-qdq": [0.904004, 1.865885, 1.7507315, 2.7517465, 1.368958],
              "onnx-int8-qop": [1.0, 1.5, 7.0, 9.0, 6.0]}  # steady against fp32: 0.64..0.87
    built = []
    for n in names:
        a = _artifact(n, 1000, p50_ms=1.0)
        a.benchmark["side_by_side"] = {"p50_ms": 1.0, "round_p50_ms": rounds[n], "rounds": 5,
                                       "with": [o for o in names if o != n]}
        built.append((get_target(n), a))
    add_float32_ratios(built)
    vs = {a.target: a.benchmark["side_by_side"]["vs_float32"] for _, a in built}
    assert vs["onnx-int8-qdq"]["unsteady"] and round(vs["onnx-int8-qdq"]["spread"], 2) == 2.93  # 4.59 with the extreme rounds
    assert "unsteady" not in vs["onnx-int8-qop"] and "unsteady" not in vs["onnx-fp32"]
    assert vs["onnx-fp32"]["spread"] == 1.0


def test_a_latency_that_swings_between_speeds_is_noted_under_the_table():
    """A tflite-dynamic file ran 0.7 ms and 10-13 ms in phases: p50 1.0 beside p90 10.5, and nothing said so."""
    from deploykit.report.rows import table_note

    arts = [_artifact("tflite-fp32", 1000, p50_ms=1.1, p90_ms=1.3), _artifact("tflite-dynamic", 300, p50_ms=1.0, p90_ms=10.5)]
    note = table_note(Manifest(model={}, tools={}, machine={}, artifacts=arts)) or ""
    assert "Latency that swings: tflite-dynamic p90 10.500 ms is 10.5x its p50 1.000 ms" in note
    assert "tflite-fp32 p90" not in note


def test_a_fine_tune_on_a_handful_of_samples_is_warned_about():
    """3 training samples: 2 trained on, the "best" epoch chosen by 1 held-out answer, and not a word said."""
    from deploykit.report.rows import fine_tune_warnings

    def warnings(step, train, val):
        report = {"settings": {"train_samples": train, "validation_samples": val}}
        return fine_tune_warnings(Manifest(model={}, tools={}, machine={}, artifacts=[], steps={step: {"report": report}}))

    (line,) = warnings("prune", 2, 1)
    assert line.startswith("pruning fine-tuned on 2 samples and chose its epoch on 1 held-out: too few") and "--train-data" in line
    assert warnings("qat", 500, 4)[0].startswith("quantization-aware training fine-tuned on 500 samples and chose its epoch on 4")
    assert warnings("cluster", 1437, 160) == []


def test_what_a_shipping_reader_needs_is_on_the_line_they_read():
    """A TF.js model.json holds no weights (a dense and a pruned model's hashed the same); "Fastest"
    named one of two files 1 % apart; the int8-io formula left out the clamp naive casts need."""
    from deploykit.report.rows import artifact_lines, highlights, io_quantization_lines

    tfjs = _artifact("tfjs-fp32", 1000, p50_ms=1.00)
    tfjs.sha256 = "e965168a" * 8
    tfjs.settings["extra_file_sha256"] = {"tfjs-fp32/group1-shard1of1.bin": "13be0588" * 8}
    (line,) = artifact_lines(Manifest(model={}, tools={}, machine={}, artifacts=[tfjs]))
    assert "sha256 `e965168ae965168a…`" in line and "(+ `group1-shard1of1.bin` `13be058813be0588…`)" in line

    close = _artifact("tflite-int8", 1000, p50_ms=1.01)
    far = _artifact("onnx-fp32", 1000, p50_ms=1.50)
    fast = next(h for h in highlights(Manifest(model={}, tools={}, machine={}, artifacts=[tfjs, close, far]))
                if h.startswith("Fastest"))
    assert "tfjs-fp32" in fast and "tflite-int8 within 3% of it: a tie" in fast and "onnx-fp32" not in fast

    io = _artifact("tflite-int8-io", 1000)
    io.settings["converter"] = {"io_quantization": {"input x": {"dtype": "int8", "scale": 0.5, "zero_point": -128},
                                                    "output y": {"dtype": "int8", "scale": 0.25, "zero_point": 0}}}
    (line,) = io_quantization_lines(Manifest(model={}, tools={}, machine={}, artifacts=[io]))
    assert "q = round(x / 0.5) - 128, clamped to -128..127" in line and "x = q × 0.25" in line


def test_a_regression_run_heads_its_score_columns_as_errors():
    from deploykit.report.rows import columns

    reg = _artifact("tflite-int8", 1000)
    reg.verification = {"mae": 47.0, "reference_mae": 46.9, "mae_increase": 0.003}
    titles = dict(columns(Manifest(model={}, tools={}, machine={}, artifacts=[reg])))
    assert titles["accuracy"] == "Error" and titles["drop"] == "Δ error"
    clf = _artifact("tflite-fp32", 1000)
    clf.verification = {"accuracy": 0.9, "reference_accuracy": 0.9}
    assert dict(columns(Manifest(model={}, tools={}, machine={}, artifacts=[reg, clf])))["drop"] == "Δ acc (pts)"


def test_a_pruned_run_plots_the_download_pruning_shrinks():
    """Pruning leaves a file's raw size as it was: every fp32 file of a pruned model sat at the dense size."""
    from deploykit.report.plot import render_plot

    a = _artifact("tflite-fp32", 150 * 1024, p50_ms=1.0)
    a.gzip_bytes = 40 * 1024
    plain = render_plot(Manifest(model={}, tools={}, machine={}, artifacts=[a]))
    pruned = render_plot(Manifest(model={}, tools={}, machine={}, artifacts=[a], steps={"prune": {"report": {}}}))
    assert ">file size (KiB)<" in plain and "gzipped file size (KiB)" in pruned
    assert ">150<" in plain or ">200<" in plain  # the axis reaches the raw size
    assert ">50<" in pruned or ">40<" in pruned


def test_highlights_compare_paired_rounds_skip_auto_copies_and_do_not_reward_luck():
    """"Fastest" called a file 1.04x fp32 in the table "within 3 %: a tie" (pooled p50s), counted an -auto
    target's copy as a tie with itself, and "Lowest error" named a uint8 file 0.0014 % below the
    reference's MAE beside float files that reproduce the model exactly."""
    from deploykit.report.rows import highlights

    def paired(name, p50, ratio):
        a = _artifact(name, 1000, p50_ms=p50)
        a.benchmark["side_by_side"] = {"p50_ms": p50, "vs_float32": {"target": "tflite-fp32", "ratio": ratio, "rounds": 5}}
        a.sha256 = name * 4
        return a

    fp32, int8, dyn = paired("tflite-fp32", 1.000, 1.0), paired("tflite-int8", 1.029, 1.044), paired("tflite-dynamic", 0.9, 0.9)
    auto = paired("tflite-auto", 0.9, 0.9)
    auto.sha256, auto.selection = dyn.sha256, {"shipped_target": "tflite-dynamic"}
    lines = highlights(Manifest(model={}, tools={}, machine={}, artifacts=[fp32, int8, dyn, auto]))
    fast = next(h for h in lines if h.startswith("Fastest"))
    assert fast.startswith("Fastest: **tflite-dynamic**") and "tie" not in fast, fast
    fp32.benchmark["side_by_side"]["vs_float32"]["ratio"] = 1.0
    int8.benchmark["side_by_side"]["vs_float32"]["ratio"] = 1.02  # paired: within 3 % of fp32
    lines = highlights(Manifest(model={}, tools={}, machine={}, artifacts=[fp32, int8]))
    assert "tflite-int8 within 3% of it: a tie" in next(h for h in lines if h.startswith("Fastest"))

    def scored(name, mae, err):
        a = _artifact(name, 1000)
        a.verification = {"mae": mae, "rmse": mae, "reference_mae": 38.75594, "reference_rmse": 38.75594,
                          "max_abs_error": err, "scored_output": "y"}
        return a

    lines = highlights(Manifest(model={}, tools={}, machine={}, artifacts=[
        scored("tfjs-uint8", 38.75538, 0.1), scored("tflite-fp32", 38.755940, 3.8e-6), scored("onnx-fp32", 38.75594, 0.0)]))
    assert any(h.startswith("Lowest error against the targets: **onnx-fp32**") for h in lines), lines
    lines = highlights(Manifest(model={}, tools={}, machine={}, artifacts=[
        scored("tfjs-uint8", 30.0, 0.1), scored("onnx-fp32", 38.75594, 0.0)]))  # below the model it copies: still luck
    lowest = next(h for h in lines if h.startswith("Lowest error against the targets: **onnx-fp32**"))
    # the table's lower MAE beside the named file is said as chance, as "Most accurate" says its luckier files
    assert lowest.endswith("; tfjs-uint8's MAE 30 below the reference's is chance on this data: an artifact is ranked by "
                           "how closely it copies the model)"), lowest


def test_the_heaviest_layers_are_named_by_their_graph_scope_not_only_their_op():
    """"heaviest layers: CONV_2D 4.6 KiB, FULLY_CONNECTED 360 B, CONV_2D 208 B" named no layer, and the budget
    message sends users to this list."""
    from deploykit.report.rows import footprint_lines

    a = _artifact("tflm-int8", 9000)
    a.footprint = {"model_bytes": 9000, "arena_bytes": 2864, "heaviest_layers": [
        {"op": "CONV_2D", "output": "digits_cnn_1/conv2d_1_2/Relu;digits_cnn_1/conv2d_1_2/BiasAdd", "weight_bytes": 4736},
        {"op": "FULLY_CONNECTED", "output": "StatefulPartitionedCall/digits_cnn_1/dense_1/MatMul", "weight_bytes": 360},
        {"op": "SOFTMAX", "output": "Identity", "weight_bytes": 0}]}
    (line,) = [ln for ln in footprint_lines(Manifest(model={}, tools={}, machine={}, artifacts=[a])) if "heaviest" in ln]
    assert line.endswith("heaviest layers: CONV_2D at `conv2d_1_2` 4.6 KiB, FULLY_CONNECTED at `dense_1` 360 B, "
                         "SOFTMAX at `Identity` 0 B"), line


def test_a_failure_s_suggestions_that_failed_in_the_same_run_say_so():
    """MobileNetV2: onnx-int16x8 was told to try onnx-int8-dynamic and onnx-fp16, which had both failed."""
    from deploykit.pipeline import _said_failed_too

    arts = [_artifact(n, 100) for n in ("onnx-int16x8", "onnx-int8-dynamic", "onnx-fp16", "onnx-fp32", "onnx-int8-qdq")]
    for a in arts[:3]:
        a.status = "failed"
    arts[0].error = ("verification failed: top-1 agreement 93.4%; try a target with float activations (onnx-int8-dynamic "
                     "or onnx-int8-dynamic-x; onnx-fp16, onnx-fp32)")
    arts[1].error = "verification failed: try onnx-int16x8"
    _said_failed_too(arts)
    assert arts[0].error.endswith("(onnx-int8-dynamic (failed in this run too) or onnx-int8-dynamic-x; "
                                  "onnx-fp16 (failed in this run too), onnx-fp32)"), arts[0].error
    assert arts[1].error == "verification failed: try onnx-int16x8 (failed in this run too)"
    _said_failed_too(arts)  # said once
    assert arts[1].error.count("failed in this run too") == 1
    # not inside a path, and not in an -auto's own list of its failed candidates
    arts[2].error = "TF.js could not load onnx-int8-dynamic/model.onnx"
    auto = _artifact("onnx-auto", 100)
    auto.status, auto.selection = "failed", {"winner": None}
    auto.error = "no candidate could be built: onnx-int16x8, onnx-fp16: an op"
    _said_failed_too([*arts, auto])
    assert arts[2].error == "TF.js could not load onnx-int8-dynamic/model.onnx"
    # a user target named like a word of other failures: "max abs error (failed in this run too) 5e-07"
    words = [_artifact("onnx-fp32", 100), _artifact("onnx-fp32", 100)]
    for a, name in zip(words, ("error", "output")):
        a.target, a.status = name, "failed"
        a.error = "verification failed: output 'output_0': max abs error 5.07e-07 exceeds the allowed 1e-07"
    _said_failed_too(words)
    assert "failed in this run too" not in words[0].error + words[1].error
    assert auto.error == "no candidate could be built: onnx-int16x8, onnx-fp16: an op"


def test_the_html_tables_are_not_held_to_the_text_width():
    """A 1200 px body put the targets table's right columns (Δ acc, agreement, error, memory) behind a
    scrollbar even in a 1400 px window, and off the page in print."""
    import re

    from deploykit.report.html import _CSS

    body = re.search(r"body\{([^}]*)\}", _CSS).group(1)
    assert "max-width" not in body and re.search(r"p,ul,[^{]*\{max-width:1200px\}", _CSS)
    assert "td:first-child{white-space:normal" in _CSS  # long target names wrap instead of widening the table
    assert "@media print{.wide{overflow:visible}" in _CSS


def test_the_smallest_download_is_named_when_it_is_not_the_smallest_file():
    """A pruned run named tflm-int8 (84 KiB, gzip 56 KiB) "Smallest" beside tfjs-uint8's 51 KiB download, in a
    report whose plot is about the gzipped download pruning shrinks."""
    from deploykit.report.rows import highlights

    tflm, tfjs = _artifact("tflm-int8", 86_000), _artifact("tfjs-uint8", 89_000)
    tflm.gzip_bytes, tfjs.gzip_bytes = 57_000, 52_000
    (small,) = [ln for ln in highlights(Manifest(model={}, tools={}, machine={}, artifacts=[tflm, tfjs]))
                if ln.startswith("Smallest")]
    assert small == ("Smallest: **tflm-int8** (84.0 KiB, gzip 55.7 KiB); smallest download: **tfjs-uint8** "
                     "(gzip 50.8 KiB, 86.9 KiB unpacked)"), small
    tfjs.gzip_bytes = 60_000
    (small,) = [ln for ln in highlights(Manifest(model={}, tools={}, machine={}, artifacts=[tflm, tfjs]))
                if ln.startswith("Smallest")]
    assert "download" not in small
