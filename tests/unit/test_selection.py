"""The -auto tie rule: which candidates count as fast as the fastest (pure arithmetic on timings)."""

from __future__ import annotations

import numpy as np

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
