"""The one exception tree of fanout-ingest.

::

    IngestError
     ├── InvalidEventError (ValueError)     bad event, options or flags; names every field
     ├── SecretResolutionError               a secret_headers reference could not be resolved
     ├── FetchError                          one HTTP attempt failed
     │    ├── FetchTimeout (TimeoutError)    connect or read timeout
     │    ├── FetchConnectionError (ConnectionError)
     │    ├── HTTPStatusError                a non-2xx answer
     │    │    └── RetryAfterTooLong         its Retry-After is beyond what the run allows
     │    ├── TruncatedBody                  fewer bytes than Content-Length, or a reset mid-body
     │    ├── BodyTooLarge                   more than max_body_bytes
     │    ├── InvalidBody                    expect_json and the body is not JSON/NDJSON
     │    ├── BlockedError (PermissionError) SSRF guard, scheme or allow-list refusal
     │    └── PaginationError                a chain of pages loops or exceeds max_pages
     ├── WriteError                          storing a body failed
     │    ├── LocalWriteError                a file under the local destination folder
     │    └── S3WriteError                   an S3 call failed, after the patient retries
     ├── DeadlineExceeded (TimeoutError)     the invocation ran out of time
     ├── StateError                          an incremental run's state object is unusable
     │    └── StateConflict                  a conditional state write lost a race
     └── PartialFailureError                 fail_on_error and some item failed

Per-item failures never escape the engine as exceptions: each becomes an
``ItemResult`` carrying a ``FailureKind``. The tree exists so that the fetcher
and writers can say *why* an attempt failed in one vocabulary, and so that
callers can catch ``IngestError`` for everything the tool itself raises.
Programming errors (``TypeError``, ``AssertionError``) stay outside the tree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from ingest_core.redact import clip, scrub, scrub_value


class FailureKind(StrEnum):
    """The closed set of reasons an item did not land (CONTRACT §6)."""

    HTTP_STATUS = "http_status"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TRUNCATED = "truncated"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_BODY = "invalid_body"
    BLOCKED = "blocked"
    S3_ERROR = "s3_error"
    DEADLINE = "deadline"
    PAGINATION = "pagination"
    INTERNAL = "internal"  # a bug: an exception outside this tree (its type is in the error)
    THROTTLED = "throttled"  # the API asked to wait longer than the run allows (CONTRACT §14)


class IngestError(Exception):
    """Base of every error fanout-ingest raises on purpose."""


class InvalidEventError(IngestError, ValueError):
    """The event (or options, or CLI flags) is invalid; lists every offending field."""

    MAX_PROBLEMS = 50  # a 200,000-item batch with one bad field each: 16.5 MB of text
    MAX_REASON = 500

    def __init__(self, problems: list[tuple[str, str]] | str) -> None:
        if isinstance(problems, str):
            problems = [("event", problems)]
        self.problems: list[tuple[str, str]] = self._capped(problems)
        super().__init__(self._render(self.problems))

    @classmethod
    def _capped(cls, problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The first ``MAX_PROBLEMS`` problems, each reason cut, and a count of the rest."""
        kept = [
            (field, clip(reason, cls.MAX_REASON)) for field, reason in problems[: cls.MAX_PROBLEMS]
        ]
        rest = len(problems) - len(kept)
        if rest > 0:
            kept.append(("event", f"{rest} more problems not shown"))
        return kept

    @staticmethod
    def _render(problems: list[tuple[str, str]]) -> str:
        lines = [f"{field}: {reason}" for field, reason in problems]
        return "invalid event: " + "; ".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The problems as a JSON-friendly list, for CLI and Lambda error payloads."""
        return {"errors": [{"field": f, "reason": r} for f, r in self.problems]}


class SecretResolutionError(IngestError):
    """A ``secret_headers`` reference could not be resolved (the value is never shown)."""


class FetchError(IngestError):
    """One HTTP attempt failed."""

    kind: FailureKind = FailureKind.CONNECTION
    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FetchTimeout(FetchError, TimeoutError):
    """A connect or read timeout expired."""

    kind = FailureKind.TIMEOUT


class FetchConnectionError(FetchError, ConnectionError):
    """The connection could not be made or was lost."""

    kind = FailureKind.CONNECTION


class HTTPStatusError(FetchError):
    """The API answered with a status that is not a success."""

    kind = FailureKind.HTTP_STATUS

    def __init__(
        self, message: str, *, status: int, retryable: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class RetryAfterTooLong(HTTPStatusError):
    """Its ``Retry-After`` is longer than the time left or ``max_retry_after_s``: not retried."""

    kind = FailureKind.THROTTLED


class TruncatedBody(FetchError):
    """The body ended before ``Content-Length`` bytes, or the connection broke mid-body."""

    kind = FailureKind.TRUNCATED


class BodyTooLarge(FetchError):
    """The body is larger than ``max_body_bytes``."""

    kind = FailureKind.BODY_TOO_LARGE
    retryable = False


class InvalidBody(FetchError):
    """``expect_json`` is on and a 2xx body is neither JSON nor NDJSON."""

    kind = FailureKind.INVALID_BODY
    retryable = False


class BlockedError(FetchError, PermissionError):
    """The URL or the address it resolves to is refused by the security policy."""

    kind = FailureKind.BLOCKED
    retryable = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        # The refusal without the host or scheme: what an error about a URL the
        # API chose (a redirect, a next link) may say, since the API wrote its host.
        self.reason = reason or message


class PaginationError(FetchError):
    """A chain of pages cannot go on: a loop, ``max_pages``, or a cursor it cannot read."""

    kind = FailureKind.PAGINATION
    retryable = False


class WriteError(IngestError):
    """Storing a body failed."""

    kind: FailureKind = FailureKind.S3_ERROR
    retryable: bool = False


class LocalWriteError(WriteError):
    """Writing to the local destination folder failed (kind ``s3_error``, like any write)."""


class S3WriteError(WriteError):
    """An S3 call failed (after the patient retries of ``s3retry``, once they ran)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        throttled: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.throttled = throttled  # SlowDown or another throttling answer
        self.attempts = 1

    def after(self, attempts: int, why: str | None) -> S3WriteError:
        """The same error, saying after how many attempts (and why retries stopped)."""
        text = f"{self} after {attempts} attempt{'s' if attempts != 1 else ''}"
        error = S3WriteError(
            f"{text} ({why})" if why else text,
            code=self.code,
            retryable=self.retryable,
            throttled=self.throttled,
        )
        error.attempts = attempts
        error.__cause__ = self.__cause__
        return error


class DeadlineExceeded(IngestError, TimeoutError):
    """The invocation's deadline arrived before the item could finish."""

    kind = FailureKind.DEADLINE


class StateError(IngestError):
    """A watermark state object is unreadable, malformed or could not be written."""


class StateConflict(StateError):
    """A conditional write of the state lost to another writer; read again and retry."""


class PartialFailureError(IngestError):
    """``fail_on_error`` is set and at least one item failed; carries the result."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = scrub_value(result)
        super().__init__(
            scrub(
                f"{result.get('failed', 0)} failed, {result.get('not_attempted', 0)} not attempted"
                f" of {result.get('requested', 0)} (manifest: {result.get('manifest_key')})"
            )
        )
