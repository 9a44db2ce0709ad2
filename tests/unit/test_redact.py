"""The secret registry: one registration scrubs a value from results, logs and exceptions."""

from __future__ import annotations

import base64
import json
import logging
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from yarl import URL

from ingest_core.cli.redrive import RedriveContext, RedriveWriter
from ingest_core.errors import FailureKind, InvalidEventError, PartialFailureError
from ingest_core.observability import publish_metrics, summary
from ingest_core.redact import (
    REDACTED,
    register_secret,
    scrub,
    scrub_exception,
    scrub_value,
    scrubbed_stdio,
)
from ingest_core.results import MAX_ERROR_TEXT, ItemResult, ItemStatus, Tally


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


@pytest.mark.parametrize(
    "spell",
    [
        lambda s: s,
        lambda s: s.lower(),
        lambda s: s.upper(),
        lambda s: s.partition(" ")[2].casefold(),
        lambda s: quote(s, safe=""),
        lambda s: quote(s).lower(),
        lambda s: quote_plus(s),
        lambda s: URL("http://h/").with_query([("k", s)]).raw_query_string[2:],
        lambda s: URL("http://h/?k=" + s).raw_query_string[2:],
        lambda s: URL.build(scheme="http", host="h", path="/" + s).raw_path[1:],
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1].replace("/", "\\/"),
        lambda s: repr(s.encode())[2:-1],
        lambda s: base64.b64encode(s.partition(" ")[2].encode()).decode(),
    ],
    ids=[
        "raw", "lower", "upper", "bare-casefold", "quote", "quote-lower-hex", "quote_plus",
        "yarl-query", "yarl-requoted", "yarl-path", "json", "json-slash", "bytes-repr", "base64",
    ],
)  # fmt: skip
def test_every_spelling_of_a_registered_value_is_scrubbed(spell: Any) -> None:
    # GIVEN a registered credential with URL-special, mixed-case and non-ASCII characters
    secret = f"Bearer k9/aB+Zx== %@:Éß€-{uuid.uuid4().hex[:8]}"
    register_secret(secret)
    # WHEN a text quotes it in one spelling THEN the whole spelling is gone
    text = f"before {spell(secret)} after"
    assert scrub(text) in (f"before {REDACTED} after", f"before Bearer {REDACTED} after")


def test_a_secret_is_scrubbed_before_a_text_is_cut() -> None:
    # GIVEN a failed item whose 1,000-character error holds a secret across the cut
    token = canary()
    register_secret(token)
    error = "x" * (MAX_ERROR_TEXT - 10) + token + "y" * 1000
    failed = ItemResult(0, {}, None, ItemStatus.FAILED, 1, kind=FailureKind.TIMEOUT, error=error)
    # WHEN it becomes a failure entry (scrubbed upstream or not)
    # THEN not even the part before the cut is left
    assert token[:10] not in failed.scrubbed().failure_entry()["error"]
    assert token[:10] not in failed.failure_entry()["error"]
    # AND the same holds for a bad event's reason, cut at its own length
    reason = "x" * (InvalidEventError.MAX_REASON - 10) + token
    assert token[:10] not in str(InvalidEventError([("api_config.headers", reason)]))


def test_the_redrive_writer_scrubs_what_it_is_given(tmp_path: Path) -> None:
    # GIVEN a re-drive writer and a failed item whose error was not scrubbed upstream
    token = canary()
    register_secret(token)
    context = RedriveContext("r", "dest", "", {"endpoint": f"https://x/{token}"}, {})
    writer = RedriveWriter(tmp_path / "redrive.jsonl", context)
    error = f"echo {token.upper()}"
    # WHEN it is handed to on_item and the file is finished
    writer.on_item(ItemResult(0, {}, None, ItemStatus.FAILED, 1, FailureKind.TIMEOUT, error=error))
    path = writer.finish()
    # THEN neither the header nor the item line holds the token
    assert path is not None and token not in path.read_text().lower()
    assert REDACTED in path.read_text()


def test_cli_stdio_and_escaping_exceptions_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a registered token
    token = canary()
    register_secret(token)
    # WHEN text is printed to stdout and stderr inside scrubbed_stdio
    with scrubbed_stdio():
        print(f"summary {token}")
        print(orjson.dumps({"error": token.upper()}).decode(), file=sys.stderr)
    out, err = capsys.readouterr()
    # THEN neither stream shows it
    assert token not in out and token.upper() not in err and REDACTED in out + err
    # AND an exception about to escape has its text scrubbed and a leaking cause cut
    try:
        try:
            raise OSError(f"connect to https://x/?k={token}")
        except OSError as cause:
            raise RuntimeError(f"run failed: {token}") from cause
    except RuntimeError as exc:
        text = "".join(traceback.format_exception(scrub_exception(exc)))
    assert token not in text and "run failed" in text


def test_metrics_and_the_summary_line_are_scrubbed() -> None:
    # GIVEN a result whose source_id and failure kinds happen to spell a registered value
    token = canary()
    register_secret(token)
    result = {"source_id": token, "failures": [{"kind": token}], "status": "FAILED"}
    dimensions: dict[str, str] = {}

    class Metrics:
        def add_dimension(self, name: str, value: str) -> None:
            dimensions[name] = value

        def add_metric(self, **kwargs: Any) -> None:
            pass

    full = {**result, "succeeded": 0, "failed": 1, "not_attempted": 0, "retries": 0}
    full |= {"throttled": 0, "bytes_written": 0, "records_ingested": None}
    # WHEN they are published and summarised
    publish_metrics(Metrics(), full, [])
    line = summary(result)
    # THEN the token is in neither
    assert token not in dimensions["source_id"]
    assert token not in orjson.dumps(line).decode()
