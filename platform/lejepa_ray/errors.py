"""The errors a user can act on, under one base class.

Everything raised as a :class:`LejepaRayError` carries a message that says what was wrong, what
was expected and what to do; the command line prints it as one line and exits with status 2 (1
for :class:`TrainingStopped`). Anything else is a bug and keeps its traceback.

Each class also derives from the built-in exception it refines (``ValueError`` for bad input,
``RuntimeError`` for a state met at run time), so ``except ValueError`` keeps catching
configuration errors. They live at the bottom of the package so that every layer can raise them
and the command line can catch them without importing Ray, torch or the modules that raise.
"""

from __future__ import annotations


class LejepaRayError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(LejepaRayError, ValueError):
    """A run configuration that cannot work; the message names the key and what to do.

    Raised by :func:`check_field`, it also carries the offending setting as data: ``field``
    (the dotted config key, ``loss.lam``), ``value`` and ``expected`` (a phrase: ``"> 0"``), so
    that a front end can word it its own way (a flag, a keyword argument). They are None where
    no single field is at fault."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: object = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field, self.value, self.expected = field, value, expected


class SourceError(LejepaRayError, ValueError):
    """The configured source cannot be read: a missing path, no images, a wrong schema."""


class ClusterFitError(LejepaRayError, ValueError):
    """A run that the cluster's node types can never hold; the message says what to change."""


class BenchError(LejepaRayError, ValueError):
    """The benchmark cannot measure what was asked (a dataset too small for it)."""


class CheckpointError(LejepaRayError, RuntimeError):
    """A checkpoint that cannot be used here: missing, incomplete, corrupt, or of another
    model. The message says which file and what to do."""


class ExportError(LejepaRayError, RuntimeError):
    """An export that cannot be written as asked (a model torch's ONNX exporter cannot take, or
    whose ONNX outputs differ from PyTorch's)."""


class DataQualityError(LejepaRayError, RuntimeError):
    """Too many samples had to be skipped, or none could be used at all."""


class TrainingStopped(LejepaRayError, RuntimeError):
    """The run stopped before its planned steps (non-finite losses); the message says why and
    which checkpoint is the last good one."""


def check_field(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` (dotted: ``loss.lam``), its ``value`` and what
    was ``expected`` unless ``ok``: every component config's range check goes through here."""
    if not ok:
        raise ConfigError(
            f"{key}={value!r} is invalid: expected {expected}.",
            field=key,
            value=value,
            expected=expected,
        )


def first_line(error: BaseException) -> str:
    """The first line of a library's exception message (pyarrow's, torch's), or its type's
    name when it has none: the part of a long foreign message that fits a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
