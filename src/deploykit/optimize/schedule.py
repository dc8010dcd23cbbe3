"""Pruning schedules with tensorflow-model-optimization's exact semantics, in plain Python.

Both pruning paths use these objects: the Keras 3 path calls them at every
training step, the tf_keras path turns them into the equivalent tfmot schedule
(:meth:`to_tfmot`). Semantics copied from tfmot 0.8.1 ``pruning_schedule.py``:

* steps count training batches from 1 (tfmot's ``UpdatePruningStep`` sets the
  step to 0 before training and every training call increments it first);
* a mask update happens when ``begin_step <= step <= end_step`` (or
  ``end_step == -1``) and ``(step - begin_step) % frequency == 0``;
* ``PolynomialDecay``: ``s = final + (initial - final) * (1 - p) ** power`` with
  ``p = clip((step - begin) / (end - begin), 0, 1)``, computed in float32;
* ``ConstantSparsity``: the target at every update step.

:func:`make_schedule` picks ``begin_step``, ``end_step`` and ``frequency`` from
the data so that the last update lands exactly on ``end_step`` (tfmot itself
never reaches ``final_sparsity`` when ``end_step - begin_step`` is not a
multiple of ``frequency``) and the last third of the epochs fine-tunes at the
final sparsity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deploykit.errors import UserError

SCHEDULES = ("polynomial", "constant")
DEFAULT_FREQUENCY = 100  # tfmot's default
# On small data: at least this many mask updates while the sparsity ramps up. Measured on the digits
# example (80 %, 8 epochs): 10 updates -> 96.1 % test accuracy, 40 -> 96.9 %, dense 98.0 %: big
# jumps in sparsity knock the model over, small ones let it follow.
MASK_UPDATES = 40


@dataclass(frozen=True)
class PolynomialDecay:
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` (tfmot.sparsity.keras.PolynomialDecay)."""

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3
    frequency: int = DEFAULT_FREQUENCY
    kind: str = "polynomial"

    def __post_init__(self) -> None:
        _validate(self.begin_step, self.end_step, self.frequency, allow_forever=False)
        for name in ("initial_sparsity", "final_sparsity"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def sparsity(self, step: int) -> float:
        span = np.float32(self.end_step - self.begin_step)
        p = np.float32(min(1.0, max(0.0, np.float32(step - self.begin_step) / span))) if span else np.float32(1.0)
        value = np.float32(self.initial_sparsity - self.final_sparsity) * np.float32(1 - p) ** np.float32(self.power)
        return float(np.float32(value + np.float32(self.final_sparsity)))

    def __call__(self, step: int) -> tuple[bool, float]:
        return _should_prune(step, self.begin_step, self.end_step, self.frequency), self.sparsity(step)

    @property
    def target_reached_step(self) -> int:
        """First step after whose mask update the weights are at ``final_sparsity``."""
        return self.end_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_tfmot(self, tfmot: Any) -> Any:
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=self.initial_sparsity, final_sparsity=self.final_sparsity,
            begin_step=self.begin_step, end_step=self.end_step, power=self.power, frequency=self.frequency,
        )


@dataclass(frozen=True)
class ConstantSparsity:
    """The target sparsity at ``begin_step`` and every ``frequency`` steps after (tfmot.sparsity.keras.ConstantSparsity)."""

    target_sparsity: float
    begin_step: int
    end_step: int = -1
    frequency: int = DEFAULT_FREQUENCY
    kind: str = "constant"

    def __post_init__(self) -> None:
        _validate(self.begin_step, self.end_step, self.frequency, allow_forever=True)
        if not 0.0 <= self.target_sparsity < 1.0:
            raise UserError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")

    @property
    def final_sparsity(self) -> float:
        return self.target_sparsity

    def sparsity(self, step: int) -> float:
        return float(np.float32(self.target_sparsity))

    def __call__(self, step: int) -> tuple[bool, float]:
        return _should_prune(step, self.begin_step, self.end_step, self.frequency), self.sparsity(step)

    @property
    def target_reached_step(self) -> int:
        # The first update applies the target; steps count from 1, so begin_step 0 first fires at `frequency`.
        first = self.begin_step
        while first < 1:
            first += self.frequency
        return first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_tfmot(self, tfmot: Any) -> Any:
        return tfmot.sparsity.keras.ConstantSparsity(
            target_sparsity=self.target_sparsity, begin_step=self.begin_step,
            end_step=self.end_step, frequency=self.frequency,
        )


Schedule = PolynomialDecay | ConstantSparsity


def _should_prune(step: int, begin: int, end: int, frequency: int) -> bool:
    in_range = step >= begin and (step <= end or end < 0)
    return bool(in_range and (step - begin) % frequency == 0)


def _validate(begin: int, end: int, frequency: int, *, allow_forever: bool) -> None:
    if begin < 0:
        raise UserError(f"begin_step must be >= 0, got {begin}")
    if end == -1 and not allow_forever:
        raise UserError("end_step cannot be -1 for a polynomial schedule")
    if end != -1 and end < begin:
        raise UserError(f"end_step ({end}) must be >= begin_step ({begin})")
    if frequency <= 0:
        raise UserError(f"frequency must be > 0, got {frequency}")


def make_schedule(kind: str, sparsity: float, steps_per_epoch: int, epochs: int) -> Schedule:
    """The schedule deploykit uses for ``epochs`` epochs of ``steps_per_epoch`` batches.

    Polynomial: from 0 at step 0 to ``sparsity`` at ``end_step``: the end of epoch
    ``epochs - max(1, epochs // 3)`` (so with 2+ epochs at least the last one
    fine-tunes at the target; a single epoch reaches it after two thirds), rounded
    down to a multiple of ``frequency`` so that the last update really happens. ``frequency`` is
    tfmot's 100, or fewer on small data so that at least :data:`MASK_UPDATES` updates
    happen while the sparsity rises.

    Constant: the target from the first training step on (``begin_step`` 1: with 0, the first
    update came at step ``frequency``, on small data the last batch of epoch 1, which then trained
    dense and was reported and counted for patience as an epoch at the target), again every
    ``frequency`` steps (masks may move between weights, the count stays).

    Raises:
        UserError: unknown ``kind``.
    """
    if kind not in SCHEDULES:
        raise UserError(f"unknown pruning schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
    total = max(1, steps_per_epoch * epochs)
    if kind == "constant":
        frequency = max(1, min(DEFAULT_FREQUENCY, steps_per_epoch))
        return ConstantSparsity(target_sparsity=sparsity, begin_step=1, end_step=-1, frequency=frequency)
    ramp_epochs = epochs - max(1, epochs // 3) if epochs >= 2 else epochs
    ramp = max(1, steps_per_epoch * ramp_epochs)
    if epochs < 2:  # a single epoch: reach the target after ~2/3 of it
        ramp = max(1, math.floor(total * 2 / 3))
    frequency = max(1, min(DEFAULT_FREQUENCY, ramp // MASK_UPDATES))
    end_step = max(frequency, (ramp // frequency) * frequency)
    return PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step,
                           power=3, frequency=frequency)
