"""AWS Signature Version 4 for the lean single-PUT path, and nothing else.

botocore's ``S3SigV4Auth`` builds the same signature through its generic
request and header classes (``email.message`` underneath); on 9 KB objects that
machinery cost more CPU than the PUT itself. This module signs one S3 PUT with
the same algorithm in a few string operations. ``tests/unit/test_sigv4.py``
checks that it produces exactly botocore's ``Authorization`` header for the
same request, credentials and clock.

The payload hash is ``UNSIGNED-PAYLOAD`` by default, as botocore sends over TLS
when the request carries a checksum: the writer always sends ``Content-MD5``,
which is a signed header, so S3 still rejects a body that is not exactly the
bytes sent (the MD5 cannot be changed without breaking the signature), and a
SHA-256 of every body (about a quarter of the signing cost on 9 KB bodies) buys
nothing more. Pass ``payload_sha256`` to sign the payload itself.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from yarl import URL

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


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
    payload_sha256: str = UNSIGNED_PAYLOAD,
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers for a signed S3 ``PUT`` (``headers`` plus the auth ones).

    Args:
        host: the Host header aiohttp will send (with ``:port`` when not default).
        path: the request path, already URI-encoded exactly as it will be sent.
        region: the bucket's region.
        credentials: access key, secret key and session token.
        headers: headers to send and sign (content type, MD5, metadata).
        payload_sha256: the hex SHA-256 of the body, or ``UNSIGNED-PAYLOAD``
            (the default; ``headers`` should then carry ``Content-MD5``).
        now: the signing time (UTC); defaults to the clock.
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ") if now is not None else _amz_date(int(time.time()))
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed["host"] = host
    signed["x-amz-date"] = stamp
    signed["x-amz-content-sha256"] = payload_sha256
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    signed_names = ";".join(names)
    lines = "\n".join([f"{name}:{signed[name]}" for name in names])
    canonical = f"PUT\n{path}\n\n{lines}\n\n{signed_names}\n{payload_sha256}"
    date = stamp[:8]
    scope = f"{date}/{region}/{SERVICE}/aws4_request"
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _signing_key(credentials.secret_key, date, region)
    signature = hmac.digest(key, to_sign.encode(), "sha256").hex()
    del signed["host"]
    signed["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return signed


def host_header(url: str) -> str:
    """The ``Host`` header aiohttp sends for ``url``, which the signature must cover.

    IPv6 literals keep their brackets (``[::1]:9000``); the port is left out
    when it is the scheme's default, as aiohttp and botocore both do.
    """
    host = URL(url).host_port_subcomponent
    if host is None:
        raise ValueError("the S3 endpoint URL has no host")
    return host


@lru_cache(maxsize=4)
def _amz_date(second: int) -> str:
    """``YYYYMMDDTHHMMSSZ`` for a Unix second; formatted once per second, not per request."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))


@lru_cache(maxsize=16)
def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    """The derived key changes once a day per region: derive it once."""
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, SERVICE, "aws4_request"):
        key = _hmac(key, part)
    return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")
