"""Exceptions raised by Esper.

Every failure inside the Go core arrives as an :class:`EsperError` subclass chosen
by the stable status code (the table lives in ``core/errcode/codes.go``; a test
checks that this module agrees with it) and carries Go's message.
"""

from __future__ import annotations

__all__ = [
    "EsperError",
    "InvalidArgumentError",
    "HandleError",
    "StateError",
    "NotFoundError",
    "CorruptError",
    "StorageError",
    "BudgetError",
    "CancelledError",
    "InternalError",
    "BufferError_",
    "UnavailableError",
    "LibraryError",
    "ForkError",
    "error_for_code",
]


class EsperError(Exception):
    """Base class of every error Esper raises.

    Attributes:
        code: the stable status code from the Go core (0 for Python-side errors).
    """

    code: int = 0

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgumentError(EsperError, ValueError):
    """An argument or input document is malformed (ESPER_EINVALID)."""

    code = 1


class HandleError(EsperError):
    """A handle is unknown, freed or of the wrong kind (ESPER_EHANDLE)."""

    code = 2


class StateError(EsperError):
    """The operation is illegal in the current state (ESPER_ESTATE)."""

    code = 3


class NotFoundError(EsperError, LookupError):
    """The named object does not exist (ESPER_ENOTFOUND)."""

    code = 4


class CorruptError(EsperError):
    """Stored data failed verification (ESPER_ECORRUPT)."""

    code = 5


class StorageError(EsperError, OSError):
    """A file operation failed (ESPER_EIO)."""

    code = 6


class BudgetError(EsperError):
    """A constraint or budget refused the operation (ESPER_EBUDGET)."""

    code = 7


class CancelledError(EsperError):
    """The operation was cancelled (ESPER_ECANCELLED)."""

    code = 8


class InternalError(EsperError):
    """An internal error or a recovered Go panic (ESPER_EINTERNAL)."""

    code = 9


class BufferError_(EsperError):
    """A caller buffer is too small (ESPER_EBUFFER)."""

    code = 10


class UnavailableError(EsperError):
    """A component is unavailable (ESPER_EUNAVAILABLE)."""

    code = 11


class LibraryError(EsperError):
    """The Go library could not be found or loaded, or its ABI does not match."""


class ForkError(EsperError):
    """Esper was called in a child created by fork after the Go runtime started."""


_BY_CODE: dict[int, type[EsperError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        HandleError,
        StateError,
        NotFoundError,
        CorruptError,
        StorageError,
        BudgetError,
        CancelledError,
        InternalError,
        BufferError_,
        UnavailableError,
    )
}


def error_for_code(code: int) -> type[EsperError]:
    """Return the exception class for a Go status code (InternalError if unknown)."""
    return _BY_CODE.get(code, InternalError)
