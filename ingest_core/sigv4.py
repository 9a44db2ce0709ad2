"""AWS Signature Version 4 for the lean single-PUT path, and nothing else.

botocore's ``S3SigV4Auth`` builds the same signature through its generic
request and header classes (``email.message`` underneath); on 9 KB objects that
machinery cost more CPU than the PUT itself. This module signs one S3 PUT with
the same algorithm in a few string operations. ``tests/unit/test_sigv4.py``
checks that it produces exactly botocore's ``Authorization`` header for the
same request, credentials and clock. The payload is always signed
(``x-amz-content-sha256`` is the body's SHA-256), so S3 rejects a body altered
in transit even on plain http.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A frozen set of AWS credentials (botocore's ``ReadOnlyCredentials`` fits)."""

    access_key: str
    secret_key: str
    token: str | None = None


def sign_put(
    *,
    host: str,
    path: str,
    region: str,
    credentials: Credentials,
    headers: Mapping[str, str],
    payload_sha256: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers for a signed S3 ``PUT`` (``headers`` plus the auth ones).

    Args:
        host: the Host header aiohttp will send (with ``:port`` when not default).
        path: the request path, already URI-encoded exactly as it will be sent.
        region: the bucket's region.
        credentials: access key, secret key and session token.
        headers: headers to send and sign (content type, MD5, metadata).
        payload_sha256: the hex SHA-256 of the body (signed, so S3 verifies the body).
        now: the signing time (UTC); defaults to the clock.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed["host"] = host
    signed["x-amz-date"] = stamp
    signed["x-amz-content-sha256"] = payload_sha256
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical = "\n".join(
        [
            "PUT",
            path,
            "",
            *(f"{name}:{signed[name]}" for name in names),
            "",
            ";".join(names),
            signed["x-amz-content-sha256"],
        ]
    )
    scope = f"{stamp[:8]}/{region}/{SERVICE}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _signing_key(credentials.secret_key, stamp[:8], region)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {name: value for name, value in signed.items() if name != "host"}
    out["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


@lru_cache(maxsize=16)
def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    """The derived key changes once a day per region: derive it once."""
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, SERVICE, "aws4_request"):
        key = _hmac(key, part)
    return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
