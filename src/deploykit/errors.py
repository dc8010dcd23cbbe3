"""The deploykit error family.

Every error deploykit raises on purpose is a :class:`DeployError`. Mistakes in
what the user handed us (a bad model file, unfit data, an unknown target name,
an output directory that would be overwritten) subclass :class:`ValueError` as
well, so plain Python callers can catch them the usual way. The CLI maps every
``DeployError`` to one line on stderr and exit code 2.

Messages name the bad value, what would have been valid, and how to fix it.
"""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error deploykit raises on purpose."""


class UserError(DeployError, ValueError):
    """Something the user handed us is wrong; the message says how to fix it."""


class ModelLoadError(UserError):
    """The model file is missing, corrupt, or refused (untrusted code)."""


class UntrustedModelError(ModelLoadError):
    """The model carries code (Lambda, TFSMLayer, custom objects) and was not trusted."""


class DataError(UserError):
    """Data is empty, non-finite, or does not fit the model's inputs."""


class TargetError(UserError):
    """Unknown target name or an impossible target setting."""


class OutputExistsError(UserError):
    """The output directory exists and is not empty, and ``force`` was not given."""


class ConversionError(DeployError):
    """A converter could not produce an artifact for one target.

    Not a user error: the run records the target as failed and goes on with
    the other targets.
    """


class RuntimeLoadError(DeployError):
    """A runtime could not load or run an artifact."""
