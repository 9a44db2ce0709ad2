"""The secret registry: one registration scrubs a value from results, logs and exceptions."""

from __future__ import annotations

import logging
import traceback
import uuid

import orjson
import pytest

from ingest_core.errors import FailureKind, PartialFailureError
from ingest_core.redact import REDACTED, register_secret, scrub, scrub_value
from ingest_core.results import ItemResult, ItemStatus, Tally


def canary() -> str:
    return f"sk-live-{uuid.uuid4().hex}"


def test_scrub_replaces_the_value_and_its_encodings() -> None:
    # GIVEN a registered bearer token
    token = canary() + "/+="
    register_secret(f"Bearer {token}")
    # WHEN texts quote it raw, without its scheme, percent-encoded and as bytes
    texts = [
        f"Authorization: Bearer {token}",
        f"echo {token}!",
        f"https://x/?k={token.replace('/', '%2F').replace('+', '%2B').replace('=', '%3D')}",
        repr(f"Bearer {token}".encode()),
    ]
    # THEN none of them holds it any more
    for text in texts:
        assert token not in scrub(text)
        assert token.replace("/", "%2F") not in scrub(text)
        assert REDACTED in scrub(text)


def test_short_values_are_not_scrubbed() -> None:
    register_secret("abc")
    assert scrub("abcdef") == "abcdef"


def test_scrub_value_walks_nested_containers() -> None:
    token = canary()
    register_secret(token)
    value = {"failures": [{"error": f"x {token}"}], "n": 1, "t": (token,)}
    assert token not in orjson.dumps(scrub_value(value)).decode()


def test_tally_scrubs_errors_before_the_manifest_and_the_result() -> None:
    # GIVEN an item whose error text quotes a registered secret
    token = canary()
    register_secret(token)
    tally = Tally(requested=1)
    failed = ItemResult(
        0, {"d": 1}, "k/0", ItemStatus.FAILED, 1, kind=FailureKind.CONNECTION, error=token
    )
    try:
        # WHEN it is recorded
        tally.add(failed)
        result = tally.to_result(request_id="r", source_id="s", duration_ms=1, manifest_key="m")
        manifest = tally.manifest_path().read_text()
    finally:
        tally.close()
    # THEN neither the result nor the manifest holds the token
    assert token not in orjson.dumps(result).decode()
    assert token not in manifest
    assert REDACTED in manifest


def test_partial_failure_error_scrubs_its_text_and_result() -> None:
    token = canary()
    register_secret(token)
    error = PartialFailureError(
        {"failed": 1, "requested": 1, "manifest_key": token, "failures": [{"error": token}]}
    )
    assert token not in str(error)
    assert token not in orjson.dumps(error.result).decode()


def test_log_records_are_scrubbed_at_every_level(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a registered secret and a logger at DEBUG
    token = canary()
    register_secret(token)
    logger = logging.getLogger("some.library")
    caplog.set_level(logging.DEBUG)
    # WHEN it is logged as an argument, in extra fields and in a traceback
    logger.debug("sent %s", token)
    logger.warning("x", extra={"detail": {"header": token}, "plain": token})
    try:
        raise ValueError(f"bad value {token}")
    except ValueError:
        logger.exception("failed")
    # THEN no record holds it, however it is rendered
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.__dict__)]
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    assert not [text for text in texts if token in text]
    assert "bad value" in caplog.text  # the traceback itself is kept, scrubbed
