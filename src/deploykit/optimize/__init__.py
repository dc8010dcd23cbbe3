"""Keras-level optimization before conversion: pruning-aware fine-tuning (:mod:`.prune`).

``prune`` and the sparsity proof helpers import TensorFlow only when called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["prune", "PruneResult", "count_zeros", "check_sparsity_survived"]


def __getattr__(name: str) -> Any:  # lazy: `import deploykit.optimize` stays cheap
    if name in ("prune", "PruneResult"):
        from deploykit.optimize import prune as _prune

        return getattr(_prune, name)
    if name in ("count_zeros", "check_sparsity_survived"):
        from deploykit.optimize import sparsity as _sparsity

        return getattr(_sparsity, name)
    raise AttributeError(name)
