"""Errors that are part of the interface: each carries a message a user can act on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ExportError(Exception):
    """An export failure whose message is safe and useful to show the requester."""


class RequestInvalid(ExportError):
    """The request (run conf) is invalid; ``errors`` names each bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("invalid request: " + "; ".join(str(e) for e in errors))


class TooManyRows(ExportError):
    pass


class IntegrityError(ExportError):
    """The data did not add up (e.g. merged rows differ from the batches' rows)."""


class TransactionClosed(ExportError):
    """The transaction already ended (e.g. cancelled): the step has nothing left to do."""
