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

import re
from collections.abc import Callable

_MARK = "\ue000"  # a private-use character: never in a path, a value or a message of ours
_OPTION = re.compile(f"{_MARK}([^{_MARK}]+){_MARK}")


def option(name: str) -> str:
    """``name`` marked, inside an error message, as the name of a setting (``data``,
    ``shard_size_mb``, ``loss.lam``): ``str(error)`` says it as the Python API and config files
    do, and the command line as its flag (``--data``) through :meth:`LejepaRayError.worded`.
    Library code names its settings this way and never as flags."""
    return f"{_MARK}{name}{_MARK}"


class LejepaRayError(Exception):
    """A problem the user can fix; the message says how.

    The settings a message names are marked with :func:`option`, so that each front end words
    them its own way: ``str()`` as keyword arguments and config keys, :meth:`worded` with any
    other naming (the command line's ``--flag``). An error about one setting also carries it as
    data: ``field`` (its name), ``value`` and ``expected`` (a phrase: ``"> 0"``); they are None
    where no single setting is at fault."""

    def __init__(
        self,
        message: str = "",
        *,
        field: str | None = None,
        value: object = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field, self.value = field, value
        self.expected = None if expected is None else _OPTION.sub(r"\1", expected)
        """What was expected, as plain words (any :func:`option` mark taken off)."""

    def worded(self, name: Callable[[str], str] = str) -> str:
        """The message with each setting it names said as ``name(setting)``."""
        message = str(self.args[0]) if self.args else ""
        return _OPTION.sub(lambda m: name(m.group(1)), message)

    def __str__(self) -> str:
        return self.worded()

    def said_of(self, field: str) -> LejepaRayError:
        """The same error said of another setting that took the same value (``probe.data``
        for ``eval``'s ``data``): its ``field``, and each mention of it in the message, renamed.
        An error about no single setting comes back as it is."""
        if self.field is None:
            return self
        message = str(self.args[0]) if self.args else ""
        message = message.replace(option(self.field), option(field))
        return type(self)(message, field=field, value=self.value, expected=self.expected)


class ConfigError(LejepaRayError, ValueError):
    """A run configuration that cannot work; the message names the key and what to do."""


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
            f"{option(key)}={value!r} is invalid: expected {expected}.",
            field=key,
            value=value,
            expected=expected,
        )


def first_line(error: BaseException) -> str:
    """The first line of a library's exception message (pyarrow's, torch's), or its type's
    name when it has none: the part of a long foreign message that fits a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
