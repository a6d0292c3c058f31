"""zcwrap's exceptions: one base class, one subclass per error kind.

Every error the package raises is a :class:`zcwrap.Error`. Its ``kind`` and
``code`` are those of the C++ library's ``zcwrap::ErrorCode``, and ``code`` is
what the ``zcwrap`` command exits with for the same problem (see zcwrap(1)).
The message is one line: ``<file or object>: <what is wrong>``.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "InternalError",
    "UsageError",
    "InputError",
    "BadBlobError",
    "BadModelError",
    "WriteError",
    "DeviceError",
    "StaleError",
]


class Error(Exception):
    """Base class of every zcwrap error."""

    kind: str = "error"
    code: int = 1


class InternalError(Error):
    """A bug in zcwrap; please report it."""

    kind, code = "internal", 1


class UsageError(Error):
    """A bad argument: an unknown model name, a bad alignment, an object with no module in it."""

    kind, code = "usage", 2


class InputError(Error):
    """An input file is missing or cannot be read."""

    kind, code = "input", 3


class BadBlobError(Error):
    """A blob or actor config is malformed, truncated or of another version."""

    kind, code = "bad_blob", 4


class BadModelError(Error):
    """A model cannot be packed (it does not pickle, a tensor cannot be shared) or rebuilt."""

    kind, code = "bad_model", 5


class WriteError(Error):
    """An output (a blob in the store) could not be written."""

    kind, code = "write", 6


class DeviceError(Error):
    """The requested device does not exist or has no room."""

    kind, code = "device", 7


class StaleError(Error):
    """The blob a wrapper names was replaced or removed since the wrapper was made."""

    kind, code = "stale", 8


_BY_CODE = {cls.code: cls for cls in (InternalError, UsageError, InputError, BadBlobError, BadModelError,
                                      WriteError, DeviceError, StaleError)}


def _from_code(code: int, message: str) -> Error:
    """The exception for a C++ zcwrap::Error (called by zcwrap._C)."""
    return _BY_CODE.get(code, InternalError)(message)
