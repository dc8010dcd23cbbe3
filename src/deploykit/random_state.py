"""The caller's random streams (NumPy, Python, TensorFlow), put back after deploykit's own work.

A fine-tune seeds everything for repeatable runs, and rebuilding a model draws initializer seeds:
a notebook's own streams must not restart or move because deploykit ran.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def keeps_global_rng(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with the caller's NumPy, Python and TensorFlow random states put back afterwards.

    A fine-tune seeds everything (``keras.utils.set_random_seed``) for repeatable runs; without
    this, the notebook's own ``np.random``/``random``/``tf.random`` streams restarted from that
    seed after every prune.
    """
    import functools
    import random

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        np_state, py_state, tf_state = np.random.get_state(), random.getstate(), _tf_seed_state()
        try:
            return fn(*args, **kwargs)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            _set_tf_seed_state(tf_state)

    return wrapper


def _tf_seed_state() -> tuple[Any, Any] | None:
    """TensorFlow's eager global seed and the op-seed stream drawn from it. TensorFlow has no public
    getter: this reads the eager context's fields and gives up (None) if they are not there."""
    import sys

    if "tensorflow" not in sys.modules:  # nothing seeded yet; the fine-tune imports it
        return (None, None)
    try:
        from tensorflow.python.eager import context

        ctx = context.context()
        return (ctx._seed, ctx._rng.getstate() if ctx._rng is not None else None)
    except Exception:  # another TensorFlow's internals: leave its seed as the fine-tune set it
        return None


def _set_tf_seed_state(state: tuple[Any, Any] | None) -> None:
    if state is None:
        return
    try:
        from tensorflow.python.eager import context

        ctx = context.context()
        seed, stream = state
        if seed is None:  # no global seed: ops draw fresh seeds again
            ctx._seed, ctx._rng = None, None
        else:
            ctx._set_global_seed(seed)
            if stream is not None:
                ctx._rng.setstate(stream)
    except Exception:
        pass
