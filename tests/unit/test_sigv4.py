"""The lean signer must agree with botocore's S3SigV4Auth byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
import botocore.auth
import botocore.config
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from ingest_core.sigv4 import UNSIGNED_PAYLOAD, Credentials, host_header, sign_put

NOW = datetime(2025, 2, 23, 12, 34, 56, tzinfo=UTC)


def botocore_headers(
    url: str,
    headers: dict[str, str],
    payload: bytes,
    creds: Credentials,
    monkeypatch: pytest.MonkeyPatch,
    *,
    sign_payload: bool = True,
) -> dict[str, str]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method="PUT", url=url, data=payload, headers=dict(headers))
    if not sign_payload:  # what botocore does over TLS when the request carries a checksum
        request.context["client_config"] = botocore.config.Config(
            s3={"payload_signing_enabled": False}
        )
    boto = BotoCredentials(creds.access_key, creds.secret_key, creds.token)
    botocore.auth.S3SigV4Auth(boto, "s3", "eu-west-1").add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
@pytest.mark.parametrize(
    ("base", "host"),
    [
        ("http://127.0.0.1:9000/raw-bucket", "127.0.0.1:9000"),
        ("https://raw-bucket.s3.eu-west-1.amazonaws.com", "raw-bucket.s3.eu-west-1.amazonaws.com"),
    ],
)
def test_same_authorization_as_botocore(
    monkeypatch: pytest.MonkeyPatch, token: str | None, base: str, host: str
) -> None:
    # GIVEN one PUT with metadata, an odd key and a content type with extra spaces
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = "/" + quote("src/2025 02/a=b&c~d-é.json", safe="/~")
    if base.startswith("http://"):
        path = "/raw-bucket" + path
    headers = {
        "Content-Type": "application/json;  charset=utf-8",
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "x-amz-meta-source-id": "src",
        "x-amz-meta-index": "7",
    }
    payload = b'[{"a": 1}]' * 100
    url = base.split("/raw-bucket")[0] + path if base.startswith("http://") else base + path
    # WHEN both sign it
    ours = sign_put(
        host=host,
        path=path,
        region="eu-west-1",
        credentials=creds,
        headers=headers,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        now=NOW,
    )
    theirs = botocore_headers(url, headers, payload, creds, monkeypatch)
    # THEN the signatures and the signed headers are identical
    assert ours["authorization"] == theirs["authorization"]
    assert ours["x-amz-content-sha256"] == theirs["x-amz-content-sha256"]


@settings(max_examples=50, deadline=None)
@given(
    key=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60),
    payload=st.binary(max_size=2048),
    meta=st.from_regex(r"[A-Za-z0-9 ._-]{0,40}", fullmatch=True),
)
def test_same_signature_for_any_key_and_body(key: str, payload: bytes, meta: str) -> None:
    creds = Credentials("AKID", "secret")
    path = "/bucket/" + quote(key, safe="/~")
    headers = {"Content-Type": "application/json", "x-amz-meta-params-hash": meta}
    ours = sign_put(
        host="127.0.0.1:9000",
        path=path,
        region="eu-west-1",
        credentials=creds,
        headers=headers,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        now=NOW,
    )
    with pytest.MonkeyPatch.context() as mp:
        theirs = botocore_headers("http://127.0.0.1:9000" + path, headers, payload, creds, mp)
    assert ours["authorization"] == theirs["authorization"]


@pytest.mark.parametrize("token", [None, "session-token"])
def test_unsigned_payload_matches_botocore(
    monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    # GIVEN the lean path's PUT: Content-MD5 signed, the payload hash left out
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    headers = {"Content-Type": "application/json", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}
    host = "raw-bucket.s3.eu-west-1.amazonaws.com"
    path = "/src/2025-02-23/r-1.json"
    # WHEN ours signs it with the default payload hash and botocore with payload signing off
    ours = sign_put(
        host=host, path=path, region="eu-west-1", credentials=creds, headers=headers, now=NOW
    )
    theirs = botocore_headers(
        f"https://{host}{path}", headers, b"[1]", creds, monkeypatch, sign_payload=False
    )
    # THEN both say UNSIGNED-PAYLOAD and sign the MD5 header identically
    assert ours["x-amz-content-sha256"] == theirs["x-amz-content-sha256"] == UNSIGNED_PAYLOAD
    assert "content-md5" in ours["authorization"].split("SignedHeaders=")[1]
    assert ours["authorization"] == theirs["authorization"]


def test_clock_stamp_is_the_current_utc_second() -> None:
    # The per-second cache must give the same stamp as formatting the clock directly.
    before = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = sign_put(
        host="h", path="/b/k", region="us-east-1", credentials=Credentials("a", "b"), headers={}
    )
    after = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    assert before <= headers["x-amz-date"] <= after


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://[::1]:9000",
        "http://[::1]",
        "https://[2001:db8::5]:8443",
        "http://127.0.0.1:9000",
        "https://s3.eu-west-1.amazonaws.com",
    ],
)
async def test_the_signed_host_is_the_host_aiohttp_sends(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    # GIVEN a PUT under an S3 endpoint, an IPv6 literal among them
    url = f"{endpoint}/raw-bucket/src/k.json"
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    headers = {"Content-Type": "application/json", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}
    # WHEN the lean path picks the host to sign
    host = host_header(url)
    # THEN it is the Host header aiohttp sends ([::1]:9000, not ::1:9000)
    sent = aiohttp.ClientRequest("PUT", URL(url), loop=asyncio.get_running_loop())
    assert host == sent.headers["Host"]
    # AND the signature is botocore's for the same URL
    ours = sign_put(
        host=host,
        path="/raw-bucket/src/k.json",
        region="eu-west-1",
        credentials=creds,
        headers=headers,
        now=NOW,
    )
    theirs = botocore_headers(url, headers, b"[1]", creds, monkeypatch, sign_payload=False)
    assert ours["authorization"] == theirs["authorization"]
