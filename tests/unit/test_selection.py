"""The -auto tie rule: which candidates count as fast as the fastest (pure arithmetic on timings)."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.selection import NOISE_RATIO, TIE_RATIO, tied_with_fastest


def _s(p50: float, rounds: list[float]) -> dict:
    return {"p50_ms": p50, "round_p50_ms": rounds}


def test_a_clearly_slower_candidate_never_ties():
    fastest, tied = tied_with_fastest({"fp32": _s(8.5, [8, 9, 8.4, 8.6, 8.5]), "qop": _s(4.8, [4.6, 5, 4.9, 4.7, 4.8])})
    assert (fastest, tied) == ("qop", ["qop"])


def test_within_the_tie_ratio_is_a_tie_whatever_the_rounds():
    rounds = [4.9, 5.0, 5.0, 5.1, 5.0]
    slower = [r * TIE_RATIO * 0.999 for r in rounds]  # slower in every round, by less than the tie ratio
    summaries = {"a": _s(5.0, rounds), "b": _s(5.0 * TIE_RATIO * 0.999, slower)}
    assert sorted(tied_with_fastest(summaries)[1]) == ["a", "b"]


def test_swapping_places_between_rounds_is_a_tie_up_to_the_noise_ratio():
    # 7 % slower in three paired rounds, faster in two: noise, not a real gap
    qdq = [5.0, 5.6, 4.6, 4.7, 5.5]
    summaries = {"qdq": _s(5.0, qdq), "qop": _s(5.35, [5.35, 5.99, 4.5, 4.6, 5.88])}
    assert sorted(tied_with_fastest(summaries)[1]) == ["qdq", "qop"]
    # one lucky round is not enough
    summaries["qop"] = _s(5.35, [5.35, 5.99, 4.5, 5.03, 5.88])
    assert tied_with_fastest(summaries)[1] == ["qdq"]
    # the same gap, slower in every round: a real difference
    summaries["qop"] = _s(5.35, [5.35, 5.99, 4.92, 5.03, 5.88])
    assert tied_with_fastest(summaries)[1] == ["qdq"]


def test_a_speed_change_mid_way_is_not_read_as_a_gap_between_files():
    """Two files of one graph on a VM that switched from ~2.2 to ~1.2 us a run after round 2: pooled over
    rounds they came out 1.34x apart, and the larger file shipped; round by round they are level."""
    from deploykit.selection import paired_ratio

    fp32 = [2.2, 2.2, 1.2, 1.2, 1.2]
    fp16 = [2.25, 2.2, 2.2, 1.22, 1.2]  # its third block fell before the switch
    s32, s16 = _s(1.2, fp32), _s(1.6, fp16)  # pooled p50s 1.34x apart
    assert paired_ratio(s16, s32) < TIE_RATIO
    assert sorted(tied_with_fastest({"fp32": s32, "fp16": s16})[1]) == ["fp16", "fp32"]


def test_beyond_the_noise_ratio_one_lucky_round_does_not_tie():
    best = 4.0
    summaries = {"a": _s(best, [4.0, 4.0, 9.0, 4.0, 4.0]), "b": _s(best * NOISE_RATIO * 1.01, [4.7, 4.7, 4.7, 4.7, 4.7])}
    assert tied_with_fastest(summaries)[1] == ["a"]


def test_download_selection_ships_the_smallest_gzip_that_passed(tmp_path):
    """tfjs-auto: TF.js computes in float32 whatever the weight storage, so the download decides."""
    from deploykit.artifacts import Artifact
    from deploykit.selection import select
    from deploykit.targets import get_target

    auto = get_target("tfjs-auto")
    assert auto.select_by == "download" and get_target("onnx-auto").select_by == "speed"
    cands = []
    for name, gz, status in [("tfjs-fp32", 900, "ok"), ("tfjs-fp16", 500, "ok"), ("tfjs-uint16", 520, "ok"),
                             ("tfjs-uint8", 250, "failed")]:  # the smallest failed its tolerance: not shipped
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(name)
        cands.append((get_target(name), Artifact(target=name, format="tfjs", path=f"{name}/model.json", size_bytes=gz * 2,
                                                 gzip_bytes=gz, status=status, error="accuracy" if status != "ok" else "")))
    art = select(auto, cands, tmp_path, {"x": np.zeros((2, 3), np.float32)}, bench=True)
    assert art.status == "ok" and art.selection["winner"] == "tfjs-fp16"
    assert "smallest download" in art.selection["reason"] and "tfjs-uint8 failed" in art.selection["reason"]
    assert (tmp_path / art.path).read_text() == "tfjs-fp16" and art.selection["rounds"] == 0


def test_select_by_is_checked():
    import pytest

    from deploykit.errors import TargetError
    from deploykit.targets import Target

    with pytest.raises(TargetError, match="select_by 'size' is not one of speed, download"):
        Target(name="my-auto", format="tfjs", precision="auto", candidates=("tfjs-fp32",), select_by="size")


def test_a_candidate_dropped_after_two_rounds_never_wins():
    """Its p50 comes from the first rounds only: when every later round ran 3x slower, its pooled
    p50 looked fastest."""
    from deploykit.selection import timed_winners

    summaries = {
        "tflite-fp32": _s(3.0, [1.0, 1.0, 3.0, 3.0, 3.0]),
        "tflite-dynamic": {**_s(2.1, [2.1, 2.1]), "dropped_after_rounds": 2, "dropped_ratio": 2.1},
    }
    assert timed_winners(summaries) == ("tflite-fp32", ["tflite-fp32"])


def test_no_division_by_zero_when_every_p50_is_zero():
    from deploykit.selection import tied_with_fastest

    fastest, tied = tied_with_fastest({"a": _s(0.0, [0.0] * 5), "b": _s(0.0, [0.0] * 5)})
    assert fastest == "a" and tied == ["a", "b"]


def test_the_fastest_is_found_round_by_round_not_by_pooled_p50():
    """After a speed switch the pooled p50 called the int8 file fastest although it was 1.10x slower
    in 4 of 5 rounds, and fp32, 'faster than the fastest', tied: the smaller, slower file shipped."""
    fp32 = _s(2.2, [1.2, 1.2, 2.2, 2.2, 2.2])
    int8 = _s(1.32, [1.32, 1.32, 1.32, 2.42, 2.42])  # its third block ran before the switch
    assert tied_with_fastest({"tflite-fp32": fp32, "tflite-int8": int8}) == ("tflite-fp32", ["tflite-fp32"])
    big = _s(1.2, [0.6, 0.6, 1.2, 1.2, 1.2])  # 1.67x faster in 4 of 5 rounds, pooled slower
    small = _s(1.0, [1.0, 1.0, 1.0, 2.0, 2.0])
    assert tied_with_fastest({"small": small, "big": big}) == ("big", ["big"])


def test_the_fastest_is_the_one_no_other_beats_head_to_head():
    """run_mnv3's onnx-auto rounds: by their medians against the first candidate (onnx-fp32) qdq looked
    fastest (0.22 vs qop's 0.51), while qop was 1.11x faster than qdq paired directly (faster in 3 of 5)."""
    from deploykit.selection import fastest, paired_ratio

    summaries = {
        "onnx-fp32": _s(7.509, [1.5534325, 2.3424395, 10.0819685, 12.517327, 6.888724]),
        "onnx-fp16": _s(2.327, [1.5728035, 1.172244, 8.3844805, 7.8862805, 1.8772415]),
        "onnx-int8-qdq": _s(1.569, [0.904004, 1.865885, 1.7507315, 2.7517465, 1.368958]),
        "onnx-int8-qop": _s(1.395, [0.812848, 1.1890395, 1.4728595, 7.133291, 1.39876]),
    }
    assert paired_ratio(summaries["onnx-int8-qdq"], summaries["onnx-int8-qop"]) > 1
    assert fastest(summaries) == ("onnx-int8-qop", True)
    best, tied = tied_with_fastest(summaries)
    assert best == "onnx-int8-qop"
    for name in tied:  # nothing called "not slower than the fastest" is measured faster than it
        assert paired_ratio(summaries[best], summaries[name]) <= 1


def test_a_cycle_falls_back_to_the_geometric_mean_of_paired_ratios():
    """a beats b, b beats c, c beats a (noise can do that): none is unbeaten; the one with the lowest
    geometric mean of its paired ratios against all others is taken, and the caller is told."""
    from deploykit.selection import fastest, paired_ratio

    summaries = {"a": _s(1.0, [1.0, 1.0, 3.0]), "b": _s(1.0, [2.0, 1.1, 1.0]), "c": _s(1.0, [0.5, 2.0, 2.0])}
    assert paired_ratio(summaries["a"], summaries["b"]) < 1 < paired_ratio(summaries["a"], summaries["c"])
    assert paired_ratio(summaries["b"], summaries["c"]) < 1
    name, unbeaten = fastest(summaries)
    assert not unbeaten
    geo = {k: np.exp(np.mean([np.log(paired_ratio(summaries[k], summaries[o])) for o in summaries if o != k]))
           for k in summaries}
    assert name == min(geo, key=geo.get)


_MNV3_ONNX = {  # run_mnv3's onnx-auto rounds (s19 review), sizes made up so that qdq is the smaller file
    "onnx-fp32": ([1.5534325, 2.3424395, 10.0819685, 12.517327, 6.888724], 6000),
    "onnx-fp16": ([1.5728035, 1.172244, 8.3844805, 7.8862805, 1.8772415], 3000),
    "onnx-int8-qdq": ([0.904004, 1.865885, 1.7507315, 2.7517465, 1.368958], 1500),
    "onnx-int8-qop": ([0.812848, 1.1890395, 1.4728595, 7.133291, 1.39876], 1600),
}


def _select_with_rounds(tmp_path, monkeypatch, recorded):
    """select() on onnx-auto with interleaved_p50 replaced by recorded rounds (no runtime is run)."""
    from deploykit import selection
    from deploykit.artifacts import Artifact
    from deploykit.targets import get_target

    def fake_interleaved(targets, paths, inputs, **kw):
        return [{"p50_ms": float(np.median(recorded[t.name][0])), "round_p50_ms": recorded[t.name][0]} for t in targets]

    monkeypatch.setattr(selection, "interleaved_p50", fake_interleaved)
    cands = []
    for name, (_, size) in recorded.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_text(name)
        cands.append((get_target(name), Artifact(target=name, format="onnx", path=f"{name}/model.onnx", size_bytes=size,
                                                 gzip_bytes=size, status="ok")))
    return selection.select(get_target("onnx-auto"), cands, tmp_path, {"x": np.zeros((1, 3), np.float32)}, bench=False)


def test_a_file_faster_head_to_head_is_never_shipped_as_tied_with_a_slower_fastest(tmp_path, monkeypatch):
    """Ranked by their medians against the first candidate, the smaller file (qdq: 0.24) looked faster
    than qop (0.30), and qop, "within 3 % of the fastest", tied: qdq shipped. Paired directly, qdq is
    1.2x qop and slower in 4 of 5 rounds: not a tie, qop ships."""
    rounds = {"onnx-fp32": ([10.0] * 5, 6000), "onnx-int8-qop": ([1.0, 2.0, 3.0, 9.0, 9.5], 1600),
              "onnx-int8-qdq": ([1.2, 2.4, 3.6, 2.0, 11.4], 1500)}
    sel = _select_with_rounds(tmp_path, monkeypatch, rounds).selection
    assert sel["winner"] == "onnx-int8-qop"
    qdq = next(r for r in sel["candidates"] if r["target"] == "onnx-int8-qdq")
    assert round(qdq["ratio_to_winner"], 6) == 1.2 and qdq["rounds_faster"] == 1
    assert sel["basis"].startswith("fastest in the interleaved rounds")


def test_the_recorded_mnv3_rounds_name_qop_the_fastest_and_qdq_a_tie(tmp_path, monkeypatch):
    """run_mnv3: the reason called qdq "the fastest" and then 1.11x the winner qop. qdq is 1.11x qop
    and as fast in 2 of 5 rounds: a tie by the rule (so the smaller file ships), qop the fastest."""
    sel = _select_with_rounds(tmp_path, monkeypatch, _MNV3_ONNX).selection
    assert sel["winner"] == "onnx-int8-qdq"  # the smaller of the tied pair here
    assert "than the fastest (onnx-int8-qop, which no candidate was faster than head to head)" in sel["reason"]
    assert "onnx-int8-qop 0.90x the winner's latency" in sel["reason"]


def test_the_reason_never_calls_a_file_the_fastest_and_gives_it_a_ratio_above_the_winner(tmp_path, monkeypatch):
    import re

    # qop and qdq level (qop faster in 2 of 5, 4 % slower): the smaller qdq ships, qop is the fastest
    rounds = dict(_MNV3_ONNX, **{"onnx-int8-qop": ([0.86, 1.79, 1.82, 2.65, 1.42], 1600)})
    sel = _select_with_rounds(tmp_path, monkeypatch, rounds).selection
    assert sel["winner"] == "onnx-int8-qdq" and "the fastest (onnx-int8-qop" in sel["reason"]
    qop = next(r for r in sel["candidates"] if r["target"] == "onnx-int8-qop")
    assert qop["ratio_to_winner"] <= 1
    assert re.search(r"onnx-int8-qop 0\.\d\dx the winner's latency", sel["reason"])


def test_the_reason_gives_the_paired_ratio_without_pooled_p50s_that_disagree_with_it(tmp_path, monkeypatch):
    """'onnx-fp32 p50 7.509 ms = 1.97x the winner's 1.395 ms': 7.509 / 1.395 is 5.4."""
    reason = _select_with_rounds(tmp_path, monkeypatch, dict(_MNV3_ONNX, **{"onnx-int8-qdq": (
        _MNV3_ONNX["onnx-int8-qdq"][0], 1700)})).selection["reason"]  # qop the winner, as in run_mnv3
    assert reason.startswith("onnx-int8-qop ships")
    assert " ms" not in reason.split("ships:")[1]
    assert "onnx-fp32 1.97x the winner's latency (median of 5 paired rounds' ratios; as fast or faster in 0 of 5)" in reason


def test_every_runner_is_settled_for_at_least_settle_runs_before_round_0(monkeypatch):
    """run_mnv3's tflite-dynamic ran 10-13 ms for its first 60-80 runs after each load, then 0.7 ms. Settled
    for 0.05 s (stable inside the slow phase), then probed and timed 2 rounds, it was dropped as 15x slower."""
    import time
    from types import SimpleNamespace

    from deploykit import runtime_bench, selection

    class SlowStart:
        settle_s = 0.05
        threads = 2

        def __init__(self, *a, **kw):
            self.calls, self.first_timed_at = 0, None

        def load(self):
            self._settled = False

        def set_inputs(self, inputs):
            pass

        def invoke(self):
            self.calls += 1
            time.sleep(0.001)  # ~50 runs fit in the runtime's own settle_s

        def close(self):
            pass

    made = []

    def get_runner(*a, **kw):
        made.append(SlowStart())
        return made[-1]

    real_benchmark = runtime_bench.benchmark

    def benchmark(runner, inputs, **kw):
        if runner.first_timed_at is None:
            runner.first_timed_at = runner.calls
        return real_benchmark(runner, inputs, **kw)

    monkeypatch.setattr(runtime_bench, "get_runner", get_runner)
    monkeypatch.setattr(runtime_bench, "benchmark", benchmark)
    monkeypatch.setattr(selection, "MIN_BLOCK_S", 0.002)
    target = SimpleNamespace(runtime="litert", options={}, bench=SimpleNamespace(iterations=10, warmup=1, threads=2))
    out = selection.interleaved_p50([target, target], ["a", "b"], {"x": np.zeros(1)})
    assert len(made) == 2 and all(len(s["round_p50_ms"]) == selection.ROUNDS for s in out)
    assert all(r.first_timed_at >= selection.SETTLE_RUNS for r in made)


def test_candidate_rows_carry_what_the_targets_table_shows_for_a_regression_model(tmp_path, monkeypatch):
    """run_reg's candidate tables read "Accuracy –": only accuracy/top-1/max error were recorded per candidate."""
    from deploykit import selection
    from deploykit.artifacts import Artifact
    from deploykit.targets import get_target

    cands = []
    for name, mae in (("tfjs-fp32", 756.6), ("tfjs-uint8", 758.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(name)
        cands.append((get_target(name), Artifact(
            target=name, format="tfjs", path=f"{name}/model.json", size_bytes=100, gzip_bytes=50 if "8" in name else 90,
            status="ok", verification={"mae": mae, "mae_increase": mae / 756.6 - 1, "reference_mae": 756.6,
                                       "max_abs_error": 1.5})))
    sel = selection.select(get_target("tfjs-auto"), cands, tmp_path, {"x": np.zeros((1, 3), np.float32)}).selection
    row = next(r for r in sel["candidates"] if r["target"] == "tfjs-uint8")
    assert (row["mae"], row["reference_mae"], row["max_abs_error"]) == (758.0, 756.6, 1.5)
    assert abs(row["mae_increase"] - (758.0 / 756.6 - 1)) < 1e-12


def test_the_reason_flags_a_ratio_whose_rounds_disagree(tmp_path, monkeypatch):
    """run_mnv3's onnx-fp32 rounds went 1.55..12.5 ms beside qop's 0.81..7.1: its ratio to the winner is a
    median of per-round ratios 3.9x apart, flagged unsteady on its row and in the reason."""
    sel = _select_with_rounds(tmp_path, monkeypatch, dict(_MNV3_ONNX, **{"onnx-int8-qdq": (
        _MNV3_ONNX["onnx-int8-qdq"][0], 1700)})).selection
    fp32 = next(r for r in sel["candidates"] if r["target"] == "onnx-fp32")
    assert fp32["unsteady"] and round(fp32["ratio_spread"], 1) == 2.6  # 3.9 with the extreme rounds; 2.6 without
    assert "onnx-fp32 1.97x the winner's latency (median of 5 paired rounds' ratios; as fast or faster in 0 of 5), " \
           f"unsteady (its per-round ratios spanned {fp32['ratio_spread']:.1f}x)" in sel["reason"]
    assert sel["reason"].count("per-round ratios spanning more than 1.5x") == 1


def test_rounds_a_coarse_timer_read_as_zero_do_not_make_a_file_infinitely_fast():
    from deploykit.selection import paired_ratio, ratio_spread

    a = {"p50_ms": 0.1, "round_p50_ms": [0.0, 0.1, 0.1, 0.2, 0.1]}
    b = {"p50_ms": 0.1, "round_p50_ms": [0.1, 0.1, 0.1, 0.1, 0.1]}
    assert paired_ratio(a, b) == pytest.approx(1.0)  # the 0-round said "0.00x the winner's latency"
    assert ratio_spread(a, b) == pytest.approx(2.0)


def test_the_cli_says_when_a_side_by_side_ratio_is_unsteady():
    """deploy bench A B printed a three-decimal x first for ratios that swung 2.17-3.79x round by round."""
    import io

    from rich.console import Console

    from deploykit.cli import _print_side_by_side

    def file(path, p50, spread=None):
        return {"path": path, "runtime": "onnxruntime", "threads": 2, "p50_ms": p50, "p90_ms": p50, "vs_first": p50,
                "size_bytes": 100, "gzip_bytes": 50,
                **({"vs_first_spread": spread, "unsteady": spread > 1.5} if spread else {})}

    out = io.StringIO()
    _print_side_by_side(Console(file=out, width=200), {"threads": 2, "rounds": 5, "inputs": "random",
                                                        "files": [file("a.onnx", 1.0), file("b.onnx", 2.5, 1.75)]})
    assert "unsteady: b.onnx's round ratios spanned 1.8x (more than 1.5x" in out.getvalue()
    out = io.StringIO()
    _print_side_by_side(Console(file=out, width=200), {"threads": 2, "rounds": 5, "inputs": "random",
                                                        "files": [file("a.onnx", 1.0), file("b.onnx", 2.5, 1.2)]})
    assert "unsteady" not in out.getvalue()


def test_one_outlier_round_in_five_does_not_make_a_ratio_unsteady():
    """0.59, 0.99, 0.99, 1.22, 1.71 about a steady 0.99 (three runs gave 0.993-0.997) was "not a figure to rely on"."""
    from deploykit.selection import ratio_spread, unsteady

    ref = {"p50_ms": 1.0, "round_p50_ms": [1.0] * 5}
    one_off = {"p50_ms": 0.99, "round_p50_ms": [0.59, 0.99, 0.99, 1.22, 1.71]}
    assert ratio_spread(one_off, ref) == pytest.approx(1.22 / 0.99) and not unsteady(ratio_spread(one_off, ref))
    swinging = {"p50_ms": 2.5, "round_p50_ms": [2.17, 3.79, 2.2, 3.5, 3.7]}
    assert unsteady(ratio_spread(swinging, ref))


def test_an_auto_target_whose_candidates_were_all_refused_says_it_once(tmp_path):
    """tfjs-auto said "no candidate passed verification" (none was verified) and repeated one op refusal
    four times in a 900-character line."""
    from deploykit import selection
    from deploykit.artifacts import Artifact
    from deploykit.targets import get_target

    why = "TF.js 4.22 cannot run op(s) ResizeBicubic (bicubic_resize); use a TFLite or ONNX target"
    cands = [(get_target(n), Artifact(target=n, format="tfjs", path="", status="failed", error=f"{n}: {why}"))
             for n in ("tfjs-fp32", "tfjs-uint8")]
    auto = selection.select(get_target("tfjs-auto"), cands, tmp_path, {"x": np.zeros((1, 3), np.float32)})
    assert auto.error == f"no candidate could be built: tfjs-fp32, tfjs-uint8: {why}"
    cands[1][1].settings["converter"] = {"converter": "deploykit TF.js writer"}  # built, then failed
    cands[1][1].error = "tfjs-uint8: verification failed: top-1 agreement 90%"
    auto = selection.select(get_target("tfjs-auto"), cands, tmp_path, {"x": np.zeros((1, 3), np.float32)})
    assert auto.error == f"no candidate passed verification: tfjs-fp32: {why}; tfjs-uint8: verification failed: top-1 agreement 90%"
