"""The one error type raised when an object's spec cannot be understood."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec field is missing or invalid; ``field`` is its dotted path (``spec.failOn``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
