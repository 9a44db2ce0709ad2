"""S3's answers translated to ``S3WriteError``: the one place (STYLE §4).

Whether an error may be retried and whether S3 was throttling, as botocore's
``standard`` retry mode has it, for both paths: the lean PUT (an HTTP status and
an XML body) and aioboto3 (botocore's exceptions).
"""

from __future__ import annotations

from xml.etree import ElementTree

import aiohttp

from ingest_core.errors import S3WriteError
from ingest_core.redact import clip

S3_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
S3_THROTTLED_STATUSES = frozenset({429, 503})
S3_RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
    }
)
S3_THROTTLING_CODES = S3_RETRYABLE_CODES - {
    "TransactionInProgressException",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
}
# Answers that mean "this bucket lives elsewhere": botocore's redirector handles them.
S3_WRONG_REGION_CODES = frozenset(
    {
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
        "TemporaryRedirect",
    }
)


class _WrongRegion(Exception):
    """The lean path reached the wrong regional endpoint."""


def _lean_error(status: int, body: bytes) -> Exception:
    code, message = _parse_s3_error(body)
    if code in S3_WRONG_REGION_CODES or status == 301:
        return _WrongRegion(code)
    return S3WriteError(
        f"PutObject: HTTP {status} {code or ''} {message or ''}".strip(),
        code=code,
        retryable=status in S3_RETRYABLE_STATUSES or code in S3_RETRYABLE_CODES,
        throttled=status in S3_THROTTLED_STATUSES or code in S3_THROTTLING_CODES,
    )


def _parse_s3_error(body: bytes) -> tuple[str | None, str | None]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, None
    return root.findtext("Code"), root.findtext("Message")


def _error_status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _s3_error(operation: str, exc: Exception) -> S3WriteError:
    """Translate a botocore (or transport) error to ``S3WriteError``: the one place.

    Retryable, as botocore's ``standard`` mode has it: throttling and transient
    codes, 5xx (a 200 carrying an ``<Error>`` arrives here as botocore's
    ClientError with that code), and connection-level failures.
    """
    response = getattr(exc, "response", None)
    code = None
    status = _error_status(exc)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
    retryable = (
        code in S3_RETRYABLE_CODES
        or status in S3_RETRYABLE_STATUSES
        or (response is None and _is_transport_error(exc))
    )
    throttled = code in S3_THROTTLING_CODES or status in S3_THROTTLED_STATUSES
    return S3WriteError(
        clip(f"{operation}: {type(exc).__name__}: {exc}", 500),
        code=code,
        retryable=retryable,
        throttled=throttled,
    )


def _is_transport_error(exc: Exception) -> bool:
    """A connection dropped, refused or timed out (no answer from S3 at all)."""
    # botocore is loaded by then (its client raised this); imported here so that a
    # run on the lean path alone never loads it.
    from botocore.exceptions import ConnectionError as BotocoreConnectionError
    from botocore.exceptions import HTTPClientError

    transport = (BotocoreConnectionError, HTTPClientError, aiohttp.ClientError, OSError)
    return isinstance(exc, (*transport, TimeoutError))
