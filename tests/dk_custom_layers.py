"""A registered custom layer, importable by the test process only.

A model saved with it can be loaded where this module is imported, and must be
refused with a helpful "unknown custom object" error where it is not (the
``deploy`` command line, which never imports test code).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="dktest")
class TimesTwo(keras.layers.Layer):
    """Doubles its input."""

    def call(self, x):
        return x * 2.0
