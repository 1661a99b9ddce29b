"""Fixtures shared by the unit tests."""

from tests.httpupstream import upstream

__all__ = ["upstream"]
