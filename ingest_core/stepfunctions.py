"""Write plans, start backfills and watch them on the deployed Distributed Map (CONTRACT §10).

Library code behind the CLI's ``plan --upload`` and ``launch`` subcommands. It is
synchronous boto3 on purpose: a launch makes a handful of sequential calls, so an event
loop buys nothing. boto3 is imported inside the functions, so importing ``ingest_core``
stays cheap and the Lambda, which never launches anything, never pays for it.

The contract with ``statemachine/ingest.asl.json``:

* the execution input is ``{"plan": {"bucket", "key"}, "api_config", "options"}``;
* the state machine reads a plan whose key ends in ``.jsonl`` or ``.ndjson`` as JSON
  Lines and any other key as one JSON array, so :func:`upload_plan` refuses a
  destination whose extension contradicts the format it writes;
* the execution name becomes the ``request_id`` of every batch, so object keys stay
  the same when a batch is retried or redriven: it must be a valid key fragment.
"""

from __future__ import annotations

import io
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ingest_core.errors import InvalidEventError

# Step Functions accepts more characters in an execution name, but the name becomes the
# request_id of every batch: inside object keys (CONTRACT §5), checked by the handler's
# REQUEST_ID_RE, and a CloudWatch dimension. This pattern is safe for all three.
EXECUTION_NAME_MAX_LEN: Final = 80
_EXECUTION_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_UNSAFE_NAME_CHARS_RE: Final = re.compile(r"[^A-Za-z0-9_-]+")

MAX_EXECUTION_INPUT_BYTES: Final = 256 * 1024
MAX_ITEMS_PER_BATCH: Final = 100_000  # the template parameters' MaxValue
# template.yaml's defaults of MaxItemsPerBatch and MaxItemsPerPackedBatch
DEFAULT_ITEMS_PER_BATCH: Final = 100
DEFAULT_ITEMS_PER_PACKED_BATCH: Final = 2500
JSONL_SUFFIXES: Final = (".jsonl", ".ndjson")
DEFAULT_POLL_S: Final = 5.0

# Executions in these states may still change; every other status is final.
_ACTIVE_STATUSES: Final = frozenset({"RUNNING", "PENDING_REDRIVE"})
# The DescribeMapRun counters the CLI shows, under the names the API uses.
ITEM_COUNT_FIELDS: Final = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "timedOut",
    "aborted",
    "total",
)

_STREAM_CHUNK_BYTES: Final = 1024 * 1024


def parse_s3_uri(uri: str, *, field: str = "uri") -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key.

    Args:
        uri: The URI to split; the key must not be empty.
        field: The field name to report in the error.

    Returns:
        ``(bucket, key)``.

    Raises:
        InvalidEventError: When ``uri`` is not ``s3://bucket/key``.
    """
    bucket, sep, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not sep or not key:
        raise InvalidEventError([(field, f"must look like s3://bucket/key, got {uri!r}")])
    return bucket, key


def upload_plan(
    items: Iterable[Mapping[str, Any]],
    dest: str,
    *,
    jsonl: bool,
    s3_client: Any = None,
) -> str:
    """Stream plan items into one S3 object that the Distributed Map can read.

    Items are encoded one at a time while the upload runs (multipart above 8 MiB), so a
    plan of millions of items never sits in memory whole.

    Every item must be ``{"index": i, "params": {...}}`` with a plan-wide index: all
    batches of one execution share its name as ``request_id``, so a bare params object
    (numbered from 0 within its batch) would overwrite another batch's object.

    Args:
        items: Plan items ``{"index": i, "params": {...}}`` (CONTRACT §3), e.g. from the
            planner; any iterable, consumed once.
        dest: ``s3://bucket/key``. A JSON Lines plan needs a ``.jsonl`` or ``.ndjson``
            key and a JSON-array plan any other key, because that is how the state
            machine picks its reader.
        jsonl: Write JSON Lines (one item per line) instead of one JSON array.
        s3_client: A boto3 S3 client; by default one is made from the environment.

    Returns:
        The ``s3://`` URI written.

    Raises:
        InvalidEventError: When ``dest`` is malformed or its extension contradicts
            ``jsonl``, or an item lacks its index or params (then nothing is kept: the
            upload is abandoned before it completes).
    """
    bucket, key = parse_s3_uri(dest, field="dest")
    if key.lower().endswith(JSONL_SUFFIXES) != jsonl:
        wanted = "ends in .jsonl or .ndjson" if jsonl else "does not end in .jsonl or .ndjson"
        raise InvalidEventError(
            [("dest", f"for a {'JSON Lines' if jsonl else 'JSON array'} plan the key {wanted}")]
        )
    checked = _checked_items(items)
    chunks = _encode_jsonl(checked) if jsonl else _encode_json_array(checked)
    content_type = "application/x-ndjson" if jsonl else "application/json"
    with _client("s3", s3_client) as s3:
        s3.upload_fileobj(
            io.BufferedReader(_ChunkStream(chunks), buffer_size=_STREAM_CHUNK_BYTES),
            bucket,
            key,
            ExtraArgs={"ContentType": content_type},
        )
    return f"s3://{bucket}/{key}"


def start_backfill(
    state_machine_arn: str,
    *,
    plan_uri: str,
    api_config: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
    max_items_per_batch: int | None = None,
    sfn_client: Any = None,
) -> str:
    """Start one execution of the backfill state machine over an uploaded plan.

    The state machine forces ``options.fail_on_error`` on for every batch, so there is
    no need to set it here.

    Args:
        state_machine_arn: The ``StateMachineArn`` output of the stack.
        plan_uri: ``s3://bucket/key`` of a plan written by :func:`upload_plan`.
        api_config: The event's ``api_config`` (CONTRACT §3); references only, no secrets.
        options: The event's ``options`` (CONTRACT §4); ``None`` means the defaults.
        name: Execution name, which also becomes every batch's ``request_id``; by
            default ``backfill-<source_id>-<UTC timestamp>-<4 hex>``.
        max_items_per_batch: Plan items per Lambda invocation; by default the stack's
            ``MaxItemsPerPackedBatch`` when ``options`` has ``pack``, else ``MaxItemsPerBatch``.
        sfn_client: A boto3 Step Functions client; by default one is made for the
            state machine's region.

    Returns:
        The execution ARN.

    Raises:
        InvalidEventError: When the plan URI or the name is invalid, or the input is
            over the 256 KiB Step Functions limit.
    """
    bucket, key = parse_s3_uri(plan_uri, field="plan_uri")
    name = default_execution_name(api_config.get("source_id")) if name is None else name
    if not _EXECUTION_NAME_RE.fullmatch(name):
        raise InvalidEventError(
            [("name", "must be 1-80 of A-Z a-z 0-9 _ . -, starting with a letter or digit")]
        )
    if max_items_per_batch is not None and not 1 <= max_items_per_batch <= MAX_ITEMS_PER_BATCH:
        raise InvalidEventError([("max_items_per_batch", f"must be 1 to {MAX_ITEMS_PER_BATCH}")])
    execution_input: dict[str, Any] = {
        "plan": {"bucket": bucket, "key": key},
        "api_config": api_config,
        "options": options or {},
    }
    if max_items_per_batch is not None:
        execution_input["max_items_per_batch"] = max_items_per_batch
    payload = _dumps(execution_input)
    if len(payload) > MAX_EXECUTION_INPUT_BYTES:
        raise InvalidEventError([("api_config", "execution input is over 256 KiB")])
    with _client("stepfunctions", sfn_client, region=_arn_region(state_machine_arn)) as sfn:
        response = sfn.start_execution(
            stateMachineArn=state_machine_arn, name=name, input=payload.decode()
        )
    return str(response["executionArn"])


def default_execution_name(source_id: object = None, *, now: datetime | None = None) -> str:
    """A readable, unique execution name: ``backfill-<source_id>-<UTC timestamp>-<4 hex>``.

    Characters outside ``A-Z a-z 0-9 _ -`` in ``source_id`` become ``-`` and it is
    shortened so that the whole name fits Step Functions' 80 characters. The random
    suffix keeps two launches in the same second apart.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"{stamp}-{secrets.token_hex(2)}"
    source = _UNSAFE_NAME_CHARS_RE.sub("-", str(source_id or "")).strip("-")
    room = EXECUTION_NAME_MAX_LEN - len("backfill-") - len(suffix) - 1
    source = source[:room].rstrip("-")
    return f"backfill-{source}-{suffix}" if source else f"backfill-{suffix}"


def watch_execution(
    execution_arn: str,
    *,
    sfn_client: Any = None,
    poll_s: float = DEFAULT_POLL_S,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    max_polls: int | None = None,
) -> dict[str, Any]:
    """Poll an execution and its Map runs until it ends.

    Each poll builds a status dict (see :func:`describe_backfill`) and hands it to
    ``on_update``; the CLI draws its progress bar from ``item_counts``.

    Args:
        execution_arn: The ARN :func:`start_backfill` returned.
        sfn_client: A boto3 Step Functions client; by default one is made for the
            execution's region.
        poll_s: Seconds between polls.
        on_update: Called with every status dict, the last one included.
        max_polls: Stop after this many polls even if the execution still runs;
            ``None`` waits for the end.

    Returns:
        The last status dict: final unless ``max_polls`` ran out first, in which case
        its ``status`` is still ``RUNNING`` (or ``PENDING_REDRIVE``).
    """
    with _client("stepfunctions", sfn_client, region=_arn_region(execution_arn)) as sfn:
        polls = 0
        while True:
            status = describe_backfill(execution_arn, sfn_client=sfn)
            polls += 1
            if on_update is not None:
                on_update(status)
            if status["status"] not in _ACTIVE_STATUSES:
                return status
            if max_polls is not None and polls >= max_polls:
                return status
            time.sleep(poll_s)


def describe_backfill(execution_arn: str, *, sfn_client: Any) -> dict[str, Any]:
    """One JSON-serialisable snapshot of an execution and its Map runs.

    Returns:
        ``{"execution_arn", "name", "status", "start_date", "stop_date", "error",
        "cause", "redrive_count", "output", "map_runs": [...], "item_counts": {...}}``.
        ``item_counts`` sums the Map runs' ``itemCounts`` (plan items, not batches);
        it is all zeros while no Map run has started or where map runs are not
        available (moto, for one).
    """
    execution = sfn_client.describe_execution(executionArn=execution_arn)
    map_runs = _describe_map_runs(sfn_client, execution_arn)
    output = execution.get("output")
    return {
        "execution_arn": execution_arn,
        "name": execution.get("name"),
        "status": execution["status"],
        "start_date": _iso(execution.get("startDate")),
        "stop_date": _iso(execution.get("stopDate")),
        "error": execution.get("error"),
        "cause": execution.get("cause"),
        "redrive_count": execution.get("redriveCount", 0),
        "output": orjson.loads(output) if output else None,
        "map_runs": map_runs,
        "item_counts": _sum_item_counts(run["item_counts"] for run in map_runs),
    }


def _describe_map_runs(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    """The execution's Map runs; empty where the API is missing or refuses."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        listed = sfn.list_map_runs(executionArn=execution_arn).get("mapRuns") or []
        runs = [sfn.describe_map_run(mapRunArn=run["mapRunArn"]) for run in listed]
    except (BotoCoreError, ClientError, KeyError, TypeError, AttributeError):
        # moto answers list_map_runs with a bare list and describe_map_run with {};
        # an older deployment may lack states:ListMapRuns. Progress is a nicety, so
        # the execution status alone must still come through.
        return []
    return [_map_run_summary(run) for run in runs if isinstance(run, Mapping)]


def _map_run_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    counts = run.get("itemCounts") or {}
    return {
        "map_run_arn": run.get("mapRunArn"),
        "status": run.get("status"),
        "start_date": _iso(run.get("startDate")),
        "stop_date": _iso(run.get("stopDate")),
        "item_counts": {field: int(counts.get(field, 0)) for field in ITEM_COUNT_FIELDS},
    }


def _sum_item_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total = dict.fromkeys(ITEM_COUNT_FIELDS, 0)
    for one in counts:
        for field in ITEM_COUNT_FIELDS:
            total[field] += one[field]
    return total


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _arn_region(arn: str) -> str | None:
    """The region field of an ARN, so a launch needs no configured default region."""
    parts = arn.split(":")
    if len(parts) > 3 and parts[0] == "arn" and parts[3]:
        return parts[3]
    return None


@contextmanager
def _client(service: str, given: Any, *, region: str | None = None) -> Iterator[Any]:
    """Yield the given boto3 client, or make one and close its connections afterwards."""
    if given is not None:
        yield given
        return
    import boto3
    from botocore.config import Config

    client = boto3.client(service, region_name=region, config=Config(retries={"mode": "standard"}))
    try:
        yield client
    finally:
        client.close()


def _checked_items(items: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for position, item in enumerate(items):
        index = item.get("index") if isinstance(item, Mapping) else None
        valid_index = isinstance(index, int) and not isinstance(index, bool) and index >= 0
        if not valid_index or not isinstance(item.get("params"), Mapping):
            raise InvalidEventError(
                [(f"items[{position}]", 'must be {"index": <int >= 0>, "params": {...}}')]
            )
        yield item


def _encode_json_array(items: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    yield b"["
    separator = b"\n"
    for item in items:
        yield separator + _dumps(item)
        separator = b",\n"
    yield b"\n]\n"


def _encode_jsonl(items: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    for item in items:
        yield _dumps(item) + b"\n"


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, default=_plain)


def _plain(value: object) -> object:
    """orjson serialises dicts only; accept any Mapping the caller hands in."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _ChunkStream(io.RawIOBase):
    """A read-only, unseekable file over an iterator of byte chunks.

    ``upload_fileobj`` reads it one part at a time, so memory holds a part, not the plan.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            size = min(len(view) - filled, len(self._pending))
            view[filled : filled + size] = self._pending[:size]
            self._pending = self._pending[size:]
            filled += size
        return filled
