"""The one error type of the content cache: content could not be fetched or verified."""

from __future__ import annotations


class ContentFetchError(Exception):
    """Fetching or verifying content failed; the message names the URL, reference or file.

    ``invalid`` is True when the bytes arrived but are not the ones promised (a digest
    mismatch): the scan ends ``ContentInvalid`` rather than ``ContentUnavailable``.
    ``retryable`` is True for failures a retry may get past (the server restarting).
    """

    def __init__(self, message: str, *, invalid: bool = False, retryable: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid
        #: a connection error, a timeout or a 500/503/504: worth asking again a little later
        self.retryable = retryable
