"""Converters, one module per artifact format, registered by format name.

Each module exposes ``SUFFIX`` (file suffix) and
``convert(model, target, calibration, out_path) -> dict`` which writes the
artifact to ``out_path`` and returns the settings it used. Adding a format means
adding a module and one registry line here; nothing else branches on format.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from deploykit.errors import TargetError

CONVERTERS: dict[str, str] = {
    "tflite": "deploykit.converters.tflite",
}


def get_converter(fmt: str) -> ModuleType:
    """The converter module for ``fmt``."""
    if fmt not in CONVERTERS:
        raise TargetError(f"no converter for format {fmt!r}; known formats: {', '.join(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[fmt])
