"""Latency statistics that keep their raw samples.

Only the samples are stored; percentiles and moments are computed from them on
demand, so a report can always be re-derived and two runs compared sample by
sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Stats:
    """Raw latency samples (milliseconds) plus how they were taken."""

    samples_ms: list[float]
    warmup: int = 0
    threads: int = 1
    init_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("Stats needs at least one sample")

    def _arr(self) -> np.ndarray:
        return np.asarray(self.samples_ms, dtype=np.float64)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), linear interpolation."""
        return float(np.percentile(self._arr(), q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(self._arr().mean())

    @property
    def std(self) -> float:
        return float(self._arr().std(ddof=1)) if self.n > 1 else 0.0

    @property
    def min(self) -> float:
        return float(self._arr().min())

    @property
    def max(self) -> float:
        return float(self._arr().max())

    def summary(self) -> dict[str, float | int]:
        """p50/p90/p99/mean/std/min/max (ms) and n."""
        return {
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "mean_ms": self.mean,
            "std_ms": self.std,
            "min_ms": self.min,
            "max_ms": self.max,
            "n": self.n,
        }

    def to_dict(self) -> dict[str, Any]:
        """Summary, settings and the raw samples, as stored in the manifest."""
        data: dict[str, Any] = dict(self.summary())
        data.update(
            {
                "warmup": self.warmup,
                "threads": self.threads,
                "init_ms": self.init_ms,
                "samples_ms": [round(s, 6) for s in self.samples_ms],
            }
        )
        data.update(self.extra)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}
