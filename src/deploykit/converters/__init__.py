"""Converters, one module per artifact format, registered by format name.

Each module exposes ``SUFFIX`` (file suffix) and
``convert(model, target, calibration, out_path) -> dict`` which writes the
artifact to ``out_path`` and returns the settings it used. Adding a format means
adding a module and one registry line here; nothing else branches on format.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from deploykit.errors import TargetError

CONVERTERS: dict[str, str] = {
    "tflite": "deploykit.converters.tflite",
    "onnx": "deploykit.converters.onnx",
    "tflm": "deploykit.converters.tflm",
    "tfjs": "deploykit.converters.tfjs",
}


@dataclass(frozen=True)
class OptionSpec:
    """One format-specific converter setting a target may carry in ``options``."""

    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    type: type | None = None
    minimum: float | None = None
    maximum: float | None = None
    # A text setting's form (a regular expression the whole value must match) and how to say it.
    pattern: str | None = None
    pattern_says: str = ""
    # A setting that makes a different kind of target (ONNX quant_format: QDQ vs QOperator), which an
    # -auto target's candidates are told apart by: the auto target cannot set it on all of them.
    variant: bool = False


def get_converter(fmt: str) -> ModuleType:
    """The converter module for ``fmt``."""
    if fmt not in CONVERTERS:
        raise TargetError(f"no converter for format {fmt!r}; known formats: {', '.join(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[fmt])


def option_specs(fmt: str) -> dict[str, OptionSpec]:
    """The ``OPTIONS`` schema a converter declares (empty when it takes none)."""
    return dict(getattr(get_converter(fmt), "OPTIONS", {}))


FLOAT16_MAX = 65504.0


def is_vector(shape: Any) -> bool:
    """At most one dimension above 1: a bias, a scale, a Normalization mean (shape (1, features)).

    Reduced storage (float16, uint8) is for kernels only: vectors are a small share of the bytes,
    and an offset such as a Normalization mean of year-like features (2000.28, std 3) lands on
    float16's step of 1 there, 0.09 of a standard deviation off in every input."""
    shape = [int(d) for d in shape]
    size = 1
    for d in shape:
        size *= d
    return size == max(shape, default=1)


def fits_float16(value: Any) -> bool:
    """True when every value is within float16's range: beyond it, storage would give inf (a
    Normalization mean of house prices, 3e5), so such a tensor stays float32."""
    import numpy as np

    value = np.asarray(value)
    return not value.size or bool(np.nanmax(np.abs(value)) <= FLOAT16_MAX)
