"""Import tensorflow-model-optimization without flipping the process to legacy Keras.

tfmot 0.8.x decides which Keras to use in ``tensorflow_model_optimization/python/
core/keras/compat.py``: it *sets* ``os.environ["TF_USE_LEGACY_KERAS"] = "1"``
at import time, then reads ``tf.keras.version()`` and uses ``tf_keras`` when
``tf.keras`` is Keras 3 (else ``tf.keras`` itself, which with the variable set
is tf_keras too). Left alone, that import has two global side effects:

* ``tf.keras`` is resolved lazily on first attribute access; when tfmot's
  import is that first access, the user's ``tf.keras`` becomes tf_keras for
  the rest of the process;
* the variable stays set, so every child process (and any lazy loader resolved
  later, e.g. ``tf.losses``) switches to tf_keras.

So we resolve ``tf.keras`` under the user's own setting first, import tfmot,
and restore the variable. tfmot still binds its own ``keras`` to tf_keras
(``tf.keras.version()`` is 3.x, so it imports ``tf_keras`` directly) — exactly
what it needs — and nothing else in the process notices.
"""

from __future__ import annotations

import os
from typing import Any

_ENV = "TF_USE_LEGACY_KERAS"


def import_tfmot() -> Any:
    """Return ``tensorflow_model_optimization``, imported without global side effects."""
    from deploykit._quiet import import_tensorflow, native_stderr_captured

    tf = import_tensorflow()
    saved = os.environ.get(_ENV)
    # Resolve tf.keras now, under the user's setting, before tfmot flips the switch.
    getattr(tf.keras, "version", None)
    try:
        with native_stderr_captured():
            import tensorflow_model_optimization as tfmot  # noqa: PLC0415
    finally:
        if saved is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = saved
    return tfmot
