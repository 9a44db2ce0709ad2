"""Assertions shared by the reliability suite (issue #6): what must hold after any fault.

After every run, whatever went wrong:

- ``succeeded + failed + not_attempted == requested``;
- every succeeded item's object holds exactly the bytes the API served;
- nothing is stored under the key of an item that did not succeed;
- no multipart upload is left incomplete;
- every failure carries a kind from the closed set (CONTRACT §6) and an error text;
- the result is JSON and under Step Functions' 256 KiB;
- the handler returned before its deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import orjson

from ingest_core import FailureKind
from ingest_core.fetcher import encode_params
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.servers import MotoS3, default_body

SOURCE = "rel-src"
FAILURE_KINDS = frozenset(kind.value for kind in FailureKind)
RESULT_LIMIT_BYTES = 256 * 1024


def key_for(result: Mapping[str, Any], index: int, source: str = SOURCE) -> str:
    """The default key of item ``index``: ``{source_id}/{request_id}-{index}.json``."""
    return f"{source}/{result['request_id']}-{index}.json"


def served_body(params: Mapping[str, Any]) -> bytes:
    """What ScriptedAPI and FaultyAPI answer with 200: the query as the server saw it."""
    return default_body(dict(encode_params(params)))


def event_for(
    endpoint: str,
    *,
    batch: list[dict[str, Any]] | None = None,
    options: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    **api_config: Any,
) -> dict[str, Any]:
    """A batch event against ``endpoint`` writing to the test bucket."""
    event: dict[str, Any] = {
        "api_config": {
            "endpoint": endpoint,
            "raw_bucket": RAW_BUCKET,
            "source_id": SOURCE,
            **api_config,
        },
        "options": {"concurrency": 8, **(options or {})},
    }
    if batch is not None:
        event["batch"] = batch
    if request_id is not None:
        event["request_id"] = request_id
    return event


def assert_counts(result: Mapping[str, Any]) -> None:
    """The counts invariant, closed failure kinds, and the size limit of the result."""
    total = result["succeeded"] + result["failed"] + result["not_attempted"]
    assert total == result["requested"], result
    for failure in result["failures"]:
        assert failure["kind"] in FAILURE_KINDS, failure
        assert failure["error"], failure
    if not result["failures_truncated"]:
        assert len(result["failures"]) == result["failed"] + result["not_attempted"]
    assert len(orjson.dumps(result)) < RESULT_LIMIT_BYTES


def assert_s3_outcome(
    s3: MotoS3,
    result: Mapping[str, Any],
    bodies: Mapping[int, bytes],
    *,
    context: LocalContext | None = None,
) -> None:
    """Everything the module docstring lists, against moto.

    Args:
        s3: the moto server (read directly, never through a fault proxy).
        result: the handler's result.
        bodies: for every requested index, the bytes its object must hold if it succeeded.
        context: the Lambda context, whose deadline must not have passed.
    """
    assert_counts(result)
    assert len(bodies) == result["requested"]
    failed = {failure["index"] for failure in result["failures"]}
    keys = set(s3.list_keys(RAW_BUCKET))
    for index in failed:
        assert key_for(result, index) not in keys, f"item {index} failed but its key exists"
    succeeded = set(bodies) - failed
    assert len(succeeded) == result["succeeded"]
    for index in succeeded:
        stored = s3.get_bytes(RAW_BUCKET, key_for(result, index))
        assert stored == bodies[index], f"item {index}: stored bytes differ from the served ones"
    assert s3.incomplete_uploads(RAW_BUCKET) == []
    if context is not None:
        assert context.get_remaining_time_in_millis() > 0, "returned after the deadline"


def failures_by_index(result: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``result["failures"]`` keyed by item index."""
    return {failure["index"]: failure for failure in result["failures"]}


class Canary:
    """A listening socket on 127.0.0.1 that must never see a connection.

    The kernel completes the TCP handshake for a listening socket even if nobody
    calls ``accept``, so any connection attempt, however brief, shows up as a
    pending connection.
    """

    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.bind(("127.0.0.1", port))
            self._sock.listen(16)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]

    def connections(self) -> int:
        """Accept (and close) every pending connection; return how many there were."""
        count = 0
        for _ in range(1000):  # bounded: a listen backlog is far smaller
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                break
            conn.close()
            count += 1
        return count

    def close(self) -> None:
        self._sock.close()
