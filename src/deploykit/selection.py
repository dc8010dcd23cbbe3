"""Choose among the candidates of an ``-auto`` target by measurement.

Which quantization mode is fastest depends on the runtime and the CPU (on
this kind of machine ONNX Runtime's dynamic int8 MobileNetV2 is ~17x slower
than float, its QOperator int8 ~1.6x faster), so we do not guess: every
candidate is built and verified, the ones that pass are timed again side by
side in interleaved rounds (so a noisy neighbour slows them all alike), and
the fastest p50 ships; ties go to the smaller file. A family whose runtime
computes the same way whatever the weight storage (TF.js dequantizes weights at
load and runs float32) selects by download size instead: the smallest gzip
that passed ships.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploykit.artifacts import Artifact, atomic_path

ROUNDS = 5
# Before each timed block after an ONNX Runtime one: a pause, so its thread pool stops spinning (ORT's
# idle workers spin; timed right after another session, a 2-thread MobileNetV2 ran 2x slower than
# alone). Then untimed runs to get back to steady state.
SWITCH_PAUSE_S = 0.05
SWITCH_WARMUP = 5
# Each timed block lasts at least this long, and is warmed up for a quarter of it. With a fixed
# iterations/ROUNDS, a ~5 us model's block was 0.1 ms of wake-up state: its round p50s swung 6x
# and two copies of one file measured 29 % apart. At 0.02 s (one scheduler quantum on a shared
# 2-core VM) one file's block landed in a neighbour's burst and the next file's did not: run_mnv3's
# per-round qdq/fp32 ratios went from 0.17 to 0.80. A MobileNetV2 block (20 x 4 ms) is longer anyway.
MIN_BLOCK_S = 0.1
MAX_BLOCK_ITERATIONS = 20000
# Before round 0 every runner runs untimed (runtime_bench._settle) for at least SETTLE_RUNS runs,
# within SETTLE_MAX_S: a fresh LiteRT interpreter of run_mnv3's dynamic-range file ran 10-13 ms a
# run for its first 60-80 runs at 2 threads, then 0.7 ms, and the rounds had dropped it as 15x
# slower by then. A fast model's settling is the runtime's settle_s anyway (100 runs of 1 ms: 0.1 s).
SETTLE_RUNS = 100
SETTLE_MAX_S = 1.5
# p50s within this ratio of the fastest count as a tie; the smaller file then wins.
TIE_RATIO = 1.03
# Up to this ratio, a candidate that beat the fastest in at least ROUND_WINS paired rounds
# also ties (equal speeds do so in 26 of 32 outcomes of 5 rounds); beyond it the gap is real whatever
# the rounds say.
NOISE_RATIO = 1.15
ROUND_WINS = 2
# After DROP_AFTER rounds, a candidate at least DROP_RATIO times the fastest's p50 in every one of them
# is not timed further: it cannot tie (NOISE_RATIO), and a 17x slower dynamic-int8 file timed 5 rounds
# long cost tens of seconds. Two rounds, so one burst from a neighbour does not drop a file.
DROP_AFTER = 2
DROP_RATIO = 2.0
# A file's per-round ratios to the file it is compared with spanning more than this (largest over
# smallest) mark the ratio as unsteady in the manifest and the report: the rounds disagreed.
UNSTEADY_SPREAD = 1.5
# Verification figures copied onto each candidate's row besides accuracy, top-1 agreement and max error.
QUALITY_KEYS = ("accuracy_drop_points", "mae", "mae_increase", "reference_mae")


def paired_ratio(summary: dict[str, Any], reference: dict[str, Any]) -> float:
    """How many times ``reference``'s latency ``summary``'s is: the median of their per-round p50 ratios.

    Rounds are paired in time, so the ratio of each round cancels what the machine did then. The
    pooled p50s do not: on a VM whose speed switched between ~1.2 and ~2.2 us a run mid-way, two
    files of the same float32 graph came out 1.34x apart pooled and 1.04x round by round. Falls back
    to the pooled p50s without rounds (only the rounds both files ran count).
    """
    # rounds a coarse timer read as 0 for either file say nothing about their ratio (ratio_spread skips them too)
    pairs = [(a, b) for a, b in zip(summary.get("round_p50_ms") or [], reference.get("round_p50_ms") or []) if a > 0 and b > 0]
    if pairs:
        return float(np.median([a / b for a, b in pairs]))
    ref = reference["p50_ms"]
    return summary["p50_ms"] / ref if ref > 0 else (1.0 if summary["p50_ms"] <= 0 else float("inf"))


def ratio_spread(summary: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """How far ``summary``'s per-round p50 ratios to ``reference``'s range: the largest over the smallest
    (None with fewer than 2 paired rounds), the extreme round at each end left out from 5 rounds on. A
    paired ratio is only as steady as its rounds: on a loaded 2-core machine run_mnv3's qdq/fp32 went from
    0.17 to 0.80 round by round, and its median, 0.22, read as "4.5x faster" where a quiet timing found
    0.76-0.93. One outlier round in five (0.59, 0.99, 0.99, 1.22, 1.71 about a steady 0.99) is not that."""
    ratios = sorted(a / b for a, b in zip(summary.get("round_p50_ms") or [], reference.get("round_p50_ms") or [])
                    if a > 0 and b > 0)
    if len(ratios) >= 5:
        ratios = ratios[1:-1]
    return ratios[-1] / ratios[0] if len(ratios) >= 2 else None


def unsteady(spread: float | None) -> bool:
    """Per-round ratios spanning more than ``UNSTEADY_SPREAD``: their median is not a figure to rely on."""
    return spread is not None and spread > UNSTEADY_SPREAD


def fastest(summaries: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """The fastest candidate by direct paired comparison, and whether it is unbeaten.

    Unbeaten: no other candidate's :func:`paired_ratio` against it is below 1 (over the rounds both
    ran). Ratios to one common file do not chain: by their medians against onnx-fp32, qdq (0.22)
    looked faster than qop (0.51), while qop was 1.11x faster than qdq head to head. When several
    are unbeaten (equal), or none is (a cycle: a beats b beats c beats a, which noise can make),
    the lowest geometric mean of paired ratios against all the others decides, then the pooled p50.
    """
    names = list(summaries)

    def beaten(k: str) -> bool:
        return any(paired_ratio(summaries[o], summaries[k]) < 1 for o in names if o != k)

    def overall(k: str) -> tuple[float, float]:
        logs = [np.log(max(paired_ratio(summaries[k], summaries[o]), 1e-12)) for o in names if o != k]
        return (float(np.mean(logs)) if logs else 0.0), summaries[k]["p50_ms"]

    unbeaten = [k for k in names if not beaten(k)]
    return min(unbeaten or names, key=overall), bool(unbeaten)


def tied_with_fastest(summaries: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """The fastest candidate round by round (:func:`fastest`), and every candidate not measurably slower than it.

    A candidate ties when its latency is within ``TIE_RATIO`` of the
    fastest's (:func:`paired_ratio` against the fastest itself), or within ``NOISE_RATIO`` and lower than
    the fastest's in at least ``ROUND_WINS`` interleaved rounds (rounds are paired in time, so a
    noisy neighbour slows both; one lucky round is not enough: a file 25 %
    slower in a quiet run won one of five under load). On a shared machine two equally fast files (ONNX
    Runtime fuses QDQ int8 into the same QLinear kernels as QOperator int8)
    swap places from round to round, and a 5 % gap in the pooled p50 is then
    noise, not a reason to ship the larger file.
    """
    best_name = fastest(summaries)[0]
    best = summaries[best_name]

    def tied(k: str) -> bool:
        s = summaries[k]
        return ties(paired_ratio(s, best), round_wins(s, best))

    return best_name, [k for k in summaries if k == best_name or tied(k)]


def round_wins(summary: dict[str, Any], reference: dict[str, Any]) -> int:
    """In how many paired rounds ``summary``'s p50 was at most ``reference``'s."""
    return sum(a <= b for a, b in zip(summary.get("round_p50_ms") or [], reference.get("round_p50_ms") or []))


def ties(ratio: float, wins: int) -> bool:
    """A file ``ratio`` times the fastest's p50 (median of paired rounds' ratios), faster than it in
    ``wins`` rounds, is not measurably slower (see :func:`tied_with_fastest`)."""
    return ratio <= TIE_RATIO or (ratio <= NOISE_RATIO and wins >= ROUND_WINS)


def timed_winners(summaries: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """:func:`tied_with_fastest` among the candidates timed in every round.

    A dropped candidate's p50 comes from the first rounds only, on a machine that may have been
    quieter than in the rest: it is never compared on it, let alone shipped (a file 2x slower in
    both paired rounds "won" once every later round ran 3x slower for all).
    """
    return tied_with_fastest(fully_timed(summaries))


def fully_timed(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The candidates timed in every round (all of them if every one was dropped)."""
    return {n: s for n, s in summaries.items() if "dropped_after_rounds" not in s} or summaries


def interleaved_p50(targets: Sequence[Any], paths: Sequence[Path], inputs: dict[str, np.ndarray],
                    *, drop: bool = True, keep_samples: bool = False) -> list[dict[str, Any]]:
    """Time every artifact in alternating rounds; returns each one's Stats summary plus its per-round p50s
    (and with ``keep_samples`` its raw samples: thousands per round for a fast model, so not by default).

    Every runner is settled first (at least ``SETTLE_RUNS`` untimed runs, see ``runtime_bench._settle``).
    Each round times every artifact for ``iterations / ROUNDS`` runs, or for ``MIN_BLOCK_S`` when that
    is more (estimated from a few untimed runs first). With ``drop``, a candidate clearly slower than
    the fastest after ``DROP_AFTER`` rounds (``DROP_RATIO``) is timed no further: its summary holds
    those rounds only, and ``dropped_after_rounds`` says so.
    """
    from deploykit.runtime_bench import _settle, benchmark, get_runner
    from deploykit.runtime_bench.stats import Stats

    runners = []
    samples: list[list[float]] = [[] for _ in targets]
    round_p50: list[list[float]] = [[] for _ in targets]
    per_round = max(5, max(t.bench.iterations for t in targets) // ROUNDS)
    try:  # every runner is stopped however this ends (TF.js runners are Node children)
        for t, p in zip(targets, paths):
            r = get_runner(t.runtime, p, t.bench.threads, t.options)
            runners.append(r)
            r.load()
        block = []  # iterations per round of each artifact
        for t, r in zip(targets, runners):
            r.set_inputs(inputs)
            _settle(r, min_runs=SETTLE_RUNS, cap_s=SETTLE_MAX_S)  # the probe's benchmark then does not settle again
            probe = benchmark(r, inputs, warmup=max(t.bench.warmup, SWITCH_WARMUP), iterations=SWITCH_WARMUP)
            each_s = max(float(np.median(probe.samples_ms)), 1e-6) / 1000
            block.append(min(max(per_round, int(np.ceil(MIN_BLOCK_S / each_s))), max(per_round, MAX_BLOCK_ITERATIONS)))
        active = list(range(len(targets)))
        dropped: dict[int, float] = {}  # index -> its smallest ratio to the round's fastest
        previous = targets[-1].runtime  # the runtime that ran last
        for round_ in range(ROUNDS):
            if drop and round_ == DROP_AFTER:
                ratios = {i: min(p / max(min(round_p50[j][k] for j in active), 1e-12) for k, p in enumerate(round_p50[i]))
                          for i in active}
                dropped = {i: r for i, r in ratios.items() if r >= DROP_RATIO}
                if len(dropped) < len(active):  # never all of them (every p50 0: nothing to compare)
                    active = [i for i in active if i not in dropped]
                else:
                    dropped = {}
            # Each round starts with the next candidate: none is always timed right after the same one.
            shift = round_ % len(active)
            for i in active[shift:] + active[:shift]:
                t, r = targets[i], runners[i]
                if previous == "onnxruntime":
                    time.sleep(SWITCH_PAUSE_S)
                previous = t.runtime
                stats = benchmark(r, inputs, warmup=max(SWITCH_WARMUP, block[i] // 4), iterations=block[i])
                samples[i].extend(stats.samples_ms)
                round_p50[i].append(float(np.median(stats.samples_ms)))
    finally:
        for r in runners:
            r.close()
    return [{**Stats(s, threads=t.bench.threads).summary(), "round_p50_ms": rp, **({"samples_ms": s} if keep_samples else {}),
             **({"dropped_after_rounds": len(rp), "dropped_ratio": dropped[i]} if i in dropped else {})}
            for i, (s, rp, t) in enumerate(zip(samples, round_p50, targets))]


def select(target: Any, candidates: Sequence[tuple[Any, Artifact]], out: Path, inputs: dict[str, np.ndarray],
           *, bench: bool = True) -> Artifact:
    """Build the ``-auto`` artifact: a copy of the winning candidate plus the selection record."""
    sample = {k: v[:1] for k, v in inputs.items()}
    passing = [(t, a) for t, a in candidates if a.status == "ok" and a.path]
    rows = []
    for t, a in candidates:
        v = a.verification
        rows.append({
            "target": t.name, "status": a.status, "size_bytes": a.size_bytes, "gzip_bytes": a.gzip_bytes,
            "p50_ms": a.benchmark.get("p50_ms"), "accuracy": v.get("accuracy"),
            "top1_agreement": v.get("top1_agreement"), "max_abs_error": v.get("max_abs_error"),
            # what the Targets table shows for the file, so the candidates compare on it (a regression
            # model's candidates showed "–" for accuracy: their MAE was not recorded here)
            **{k: v[k] for k in QUALITY_KEYS if v.get(k) is not None},
            "error": a.error,
        })
    auto = Artifact(target=target.name, format=target.format, path="", parent="", step="select",
                    settings={"target": target.to_dict()})
    if not passing:
        auto.status = "failed"
        reasons = {r["target"]: r["error"].removeprefix(r["target"] + ": ") for r in rows}
        built = any(a.settings.get("converter") for _, a in candidates)  # some candidate's converter made a file
        if len(set(reasons.values())) == 1:  # one reason for all (an op no candidate's runtime has): said once
            said = f"{', '.join(reasons)}: {next(iter(reasons.values()))}"
        else:
            said = "; ".join(f"{t}: {why}" for t, why in reasons.items())
        auto.error = ("no candidate passed verification: " if built else "no candidate could be built: ") + said
        auto.selection = {"candidates": rows, "winner": None, "reason": auto.error}
        return auto
    rounds = 0
    if target.select_by == "download":
        winner_t, winner = min(passing, key=lambda ta: (ta[1].gzip_bytes, ta[1].size_bytes))
        basis = "smallest download (gzip) among the candidates that passed verification"
    elif len(passing) > 1:
        # Timed even with benchmarks off: the choice is the measurement (by size alone, --no-bench
        # shipped dynamic-range int8, the slowest file for convolutions on CPUs).
        summaries = interleaved_p50([t for t, _ in passing], [out / a.path for _, a in passing], sample)
        rounds = ROUNDS
        by_name = {t.name: s for (t, _), s in zip(passing, summaries)}
        if bench:  # the report compares these same figures (see side_by_side: the group is not timed again)
            for (t, a), summary in zip(passing, summaries):
                a.benchmark["side_by_side"] = {**summary, "rounds": len(summary["round_p50_ms"]),
                                               "threads": t.bench.threads,
                                               "with": [n for n in by_name if n != t.name]}
        for name, summary in by_name.items():
            row = next(r for r in rows if r["target"] == name)
            row["interleaved_p50_ms"], row["round_p50_ms"] = summary["p50_ms"], summary["round_p50_ms"]
            if "dropped_after_rounds" in summary:
                row["dropped_after_rounds"] = summary["dropped_after_rounds"]
                row["dropped_ratio"] = summary["dropped_ratio"]
        key = {name: s["p50_ms"] for name, s in by_name.items()}
        best, tied_names = timed_winners(by_name)
        tied = [ta for ta in passing if ta[0].name in tied_names]
        winner_t, winner = min(tied, key=lambda ta: (ta[1].size_bytes, key[ta[0].name]))
        _compare_with_winner(rows, by_name, winner_t.name)
        basis = _speed_basis(best, fastest(fully_timed(by_name))[1], len(tied))
        if not bench:
            basis += " (timed for this choice only: benchmarks were off)"
    else:
        winner_t, winner = passing[0]
        basis = "only candidate that passed"
    auto.selection = {"candidates": rows, "winner": winner_t.name, "basis": basis,
                      "reason": _reason(winner_t.name, basis, rows), "rounds": rounds}
    _copy_winner(winner, out, target.name, auto)
    auto.parent = winner.path
    if "converter" in winner.settings:  # how the shipped file was made (and its weight files: TF.js shards)
        auto.settings["converter"] = winner.settings["converter"]
    if "target" in winner.settings:  # the profile it was built, judged and timed as (with the auto target's overrides)
        auto.settings["shipped_target"] = winner.settings["target"]
    for proof in ("sparsity", "clusters"):  # the zeros / shared values found in the shipped file (the same bytes)
        if proof in winner.settings:
            auto.settings[proof] = winner.settings[proof]
    hashes = winner.settings.get("extra_file_sha256") or {}
    if hashes:  # the copied weight files (TF.js shards, ONNX external data) are the winner's bytes
        auto.settings["extra_file_sha256"] = {copied: hashes[f] for f, copied in zip(winner.extra_files, auto.extra_files)
                                              if f in hashes}
    auto.status = "ok"
    auto.verification = winner.verification
    auto.benchmark = winner.benchmark
    auto.sha256, auto.size_bytes, auto.gzip_bytes = winner.sha256, winner.size_bytes, winner.gzip_bytes
    return auto


def _speed_basis(best: str, unbeaten: bool, n_tied: int) -> str:
    """Why the winner of a timed choice won. ``best`` is :func:`fastest`'s pick; when no candidate was
    unbeaten head to head it is not called "the fastest" (another file may have beaten it directly)."""
    if unbeaten:
        if n_tied == 1:
            return "fastest in the interleaved rounds (no candidate was faster head to head)"
        ref = f"the fastest ({best}, which no candidate was faster than head to head)"
    else:
        overall = (f"lowest geometric mean of the paired ratios to the others (no candidate was faster than every "
                   f"other head to head)")
        if n_tied == 1:
            return overall
        ref = f"{best} ({overall})"
    return (f"smallest of {n_tied} candidates not measurably slower than {ref}: within "
            f"{TIE_RATIO - 1:.0%} of it round by round (median of the paired rounds' ratios), or within "
            f"{NOISE_RATIO - 1:.0%} and faster in at least {ROUND_WINS} of {ROUNDS} paired rounds")


def _compare_with_winner(rows: list[dict[str, Any]], by_name: dict[str, dict[str, Any]], winner: str) -> None:
    """Record on each timed candidate's row how it compared with the winner in the paired rounds: the
    ratio the reason gives, the rounds it was at least as fast, and how far its per-round ratios spread."""
    won = by_name[winner]
    for name, summary in by_name.items():
        if name == winner or "dropped_after_rounds" in summary:
            continue
        row = next(r for r in rows if r["target"] == name)
        spread = ratio_spread(summary, won)
        row["ratio_to_winner"] = paired_ratio(summary, won)
        row["rounds_faster"] = round_wins(summary, won)
        row["ratio_spread"] = spread
        if unsteady(spread):
            row["unsteady"] = True


def _copy_winner(winner: Artifact, out: Path, name: str, auto: Artifact) -> None:
    src = out / winner.path
    dst = out / name / src.name
    for extra in winner.extra_files:  # external data first, so the model never points at a missing file
        extra_dst = out / name / Path(extra).name
        with atomic_path(extra_dst) as tmp:
            shutil.copyfile(out / extra, tmp)
        auto.extra_files.append(str(Path(name) / Path(extra).name))
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    auto.path = str(Path(name) / src.name)


def _reason(winner: str, basis: str, rows: list[dict[str, Any]]) -> str:
    parts = [f"{winner} ships: {basis}"]
    for r in rows:
        if r["target"] == winner:
            continue
        if r["status"] != "ok":
            parts.append(f"{r['target']} failed ({textwrap.shorten(r['error'], 160, placeholder=' …')})")
        elif r.get("dropped_after_rounds"):
            parts.append(f"{r['target']} timed {r['dropped_after_rounds']} rounds only: at least {r['dropped_ratio']:.2f}x "
                         f"the fastest candidate's p50 in each (from {DROP_RATIO:g}x on, a candidate is not timed further)")
        elif r.get("ratio_to_winner") is not None:
            # The ratio alone, not the pooled p50s beside it: those are not what it is built from
            # ("7.509 ms = 1.97x the winner's 1.395 ms" read as wrong arithmetic).
            n = len(r.get("round_p50_ms") or [])
            text = (f"{r['target']} {r['ratio_to_winner']:.2f}x the winner's latency (median of {n} paired rounds' "
                    f"ratios; as fast or faster in {r['rounds_faster']} of {n})")
            if r.get("unsteady"):
                text += f", unsteady (its per-round ratios spanned {r['ratio_spread']:.1f}x)"
            parts.append(text)
        else:
            parts.append(f"{r['target']} passed, {r['size_bytes']} bytes (gzip {r['gzip_bytes']})")
    if any(r.get("unsteady") for r in rows):  # said once, not after every such candidate
        parts.append(f"unsteady: per-round ratios spanning more than {UNSTEADY_SPREAD:g}x, as the machine's load "
                     "changed between rounds; time the files again before relying on those ratios")
    return "; ".join(parts)
