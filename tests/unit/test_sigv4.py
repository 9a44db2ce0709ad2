"""The lean signer must agree with botocore's S3SigV4Auth byte for byte."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from urllib.parse import quote

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_core.sigv4 import Credentials, sign_put

NOW = datetime(2025, 2, 23, 12, 34, 56, tzinfo=UTC)


def botocore_headers(
    url: str,
    headers: dict[str, str],
    payload: bytes,
    creds: Credentials,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method="PUT", url=url, data=payload, headers=dict(headers))
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
