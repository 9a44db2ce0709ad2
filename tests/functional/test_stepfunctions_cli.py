"""The launch helpers (ingest_core.stepfunctions) against a moto server.

moto stands in for S3 and Step Functions. Its executions do nothing and stay RUNNING
unless its ASL interpreter is switched on (``execute_state_machine``), and it has no
map runs, so these tests cover what the helpers send and read; the Distributed Map
itself is checked structurally in tests/unit/test_template.py and for real by
tests/e2e/test_deployed_backfill.py.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from ingest_core import InvalidEventError, parse_event
from ingest_core.events import REQUEST_ID_RE
from ingest_core.stepfunctions import (
    default_execution_name,
    start_backfill,
    upload_plan,
    watch_execution,
)

pytestmark = pytest.mark.timeout(60)

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/fanout-backfill"
BUCKET = "raw-bucket"
ASL_PATH = Path(__file__).resolve().parents[2] / "statemachine" / "ingest.asl.json"
API_CONFIG = {
    "endpoint": "https://api.example.com/v1/data",
    "raw_bucket": BUCKET,
    "source_id": "api-source-1",
}
# Just enough to exist: moto never runs it unless execute_state_machine is on.
IDLE_DEFINITION = json.dumps(
    {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}}
)


@dataclass
class Aws:
    """The moto endpoint and a factory of boto3 clients pointed at it."""

    endpoint: str
    client: Callable[[str], Any]

    def create_state_machine(self, definition: str = IDLE_DEFINITION, name: str = "bf") -> str:
        sfn = self.client("stepfunctions")
        response = sfn.create_state_machine(name=name, definition=definition, roleArn=ROLE_ARN)
        return str(response["stateMachineArn"])

    def read(self, key: str) -> bytes:
        body = self.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"]
        with body:
            data: bytes = body.read()
        return data


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """One moto server (every service) on 127.0.0.1 and a free port."""
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        # stop() ends the serve loop but leaves the listening socket open (ResourceWarning).
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """A clean moto with bucket ``raw-bucket``; AWS_ENDPOINT_URL sends every client there."""
    _moto_api(moto_endpoint, "reset")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    clients: list[Any] = []

    def client(service: str) -> Any:
        made = boto3.client(
            service, endpoint_url=moto_endpoint, region_name=REGION, config=Config(proxies={})
        )
        clients.append(made)
        return made

    try:
        client("s3").create_bucket(Bucket=BUCKET)
        yield Aws(moto_endpoint, client)
    finally:
        for made in clients:
            made.close()


@pytest.fixture
def executing_moto(aws: Aws) -> Iterator[Aws]:
    """moto with its ASL interpreter on: executions really run (Pass and Choice states)."""
    _moto_api(aws.endpoint, "config", {"stepfunctions": {"execute_state_machine": True}})
    try:
        yield aws
    finally:
        _moto_api(aws.endpoint, "config", {"stepfunctions": {"execute_state_machine": False}})


def _moto_api(endpoint: str, action: str, body: dict[str, Any] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{endpoint}/moto-api/{action}", data=data, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        response.read()


def _plan(n: int) -> Iterator[dict[str, Any]]:
    return (
        {"index": i, "params": {"date": f"2024-01-{i % 28 + 1:02d}", "page": i}} for i in range(n)
    )


# ----------------------------------------------------------------------------- upload_plan


def test_upload_plan_writes_a_json_array(aws: Aws) -> None:
    # GIVEN three plan items
    items = list(_plan(3))

    # WHEN they are uploaded as a JSON array
    uri = upload_plan(items, f"s3://{BUCKET}/_plans/p.json", jsonl=False)

    # THEN the object is one JSON array of exactly those items
    assert uri == f"s3://{BUCKET}/_plans/p.json"
    assert json.loads(aws.read("_plans/p.json")) == items
    head = aws.client("s3").head_object(Bucket=BUCKET, Key="_plans/p.json")
    assert head["ContentType"] == "application/json"


def test_upload_plan_writes_json_lines(aws: Aws) -> None:
    # GIVEN three plan items
    items = list(_plan(3))

    # WHEN they are uploaded as JSON Lines
    upload_plan(items, f"s3://{BUCKET}/_plans/p.jsonl", jsonl=True)

    # THEN each line is one item, in order
    lines = aws.read("_plans/p.jsonl").decode().splitlines()
    assert [json.loads(line) for line in lines] == items


def test_upload_plan_writes_an_empty_plan(aws: Aws) -> None:
    # WHEN an empty plan is uploaded in either format
    upload_plan([], f"s3://{BUCKET}/_plans/empty.json", jsonl=False)
    upload_plan([], f"s3://{BUCKET}/_plans/empty.jsonl", jsonl=True)

    # THEN both parse as empty
    assert json.loads(aws.read("_plans/empty.json")) == []
    assert aws.read("_plans/empty.jsonl") == b""


def test_upload_plan_streams_a_plan_larger_than_one_part(aws: Aws) -> None:
    # GIVEN a lazy plan of ~12 MB, more than the 8 MiB multipart threshold
    count = 150_000

    # WHEN it is uploaded from a generator
    upload_plan(_plan(count), f"s3://{BUCKET}/_plans/big.json", jsonl=False)

    # THEN every item arrives, in order, in one valid JSON array
    data = aws.read("_plans/big.json")
    assert len(data) > 8 * 1024 * 1024
    decoded = json.loads(data)
    assert len(decoded) == count
    assert decoded[0] == next(_plan(1))
    assert decoded[-1]["index"] == count - 1


@pytest.mark.parametrize("bad_at", [0, 2, 150_000])
@pytest.mark.parametrize(
    "bad_item",
    [{"params": {"p": 1}}, {"p": 1}, {"index": -1, "params": {}}, {"index": "3", "params": {}}],
)
def test_upload_plan_refuses_items_without_a_plan_wide_index(
    aws: Aws, bad_at: int, bad_item: dict[str, Any]
) -> None:
    # GIVEN a plan with one item that has no usable index, met at once, or after the
    # first 8 MiB, once the upload has gone multipart
    def items() -> Iterator[dict[str, Any]]:
        yield from _plan(bad_at)
        yield bad_item

    # WHEN it is uploaded
    with pytest.raises(InvalidEventError) as caught:
        upload_plan(items(), f"s3://{BUCKET}/_plans/bad.jsonl", jsonl=True)

    # THEN the item is named and no plan object, complete or partial, is left behind
    assert caught.value.problems[0][0] == f"items[{bad_at}]"
    s3 = aws.client("s3")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="_plans/").get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


@pytest.mark.parametrize(
    ("dest", "jsonl"),
    [
        (f"s3://{BUCKET}/_plans/p.json", True),
        (f"s3://{BUCKET}/_plans/p", True),
        (f"s3://{BUCKET}/_plans/p.jsonl", False),
        (f"s3://{BUCKET}/_plans/p.ndjson", False),
        (f"{BUCKET}/_plans/p.json", False),
        (f"s3://{BUCKET}/", False),
        ("s3:///p.json", False),
    ],
)
def test_upload_plan_refuses_a_destination_the_state_machine_would_misread(
    dest: str, jsonl: bool
) -> None:
    # WHEN the key's extension contradicts the format, or the URI is not s3://bucket/key
    with pytest.raises(InvalidEventError) as caught:
        upload_plan(_plan(1), dest, jsonl=jsonl, s3_client=object())

    # THEN nothing is uploaded (the dummy client is never called) and dest is named
    assert caught.value.problems[0][0] == "dest"


# --------------------------------------------------------------------------- start_backfill


def test_start_backfill_starts_an_execution_with_the_plan_and_config(aws: Aws) -> None:
    # GIVEN a state machine
    arn = aws.create_state_machine()

    # WHEN a backfill is started with options and no name
    execution_arn = start_backfill(
        arn,
        plan_uri=f"s3://{BUCKET}/_plans/2024.jsonl",
        api_config=API_CONFIG,
        options={"concurrency": 16},
        name=None,
    )

    # THEN the execution got exactly the input the state machine expects
    described = aws.client("stepfunctions").describe_execution(executionArn=execution_arn)
    assert json.loads(described["input"]) == {
        "plan": {"bucket": BUCKET, "key": "_plans/2024.jsonl"},
        "api_config": API_CONFIG,
        "options": {"concurrency": 16},
    }
    # AND a readable default name that is also a valid request_id for the handler
    name = described["name"]
    assert re.fullmatch(r"backfill-api-source-1-\d{8}T\d{6}Z-[0-9a-f]{4}", name)
    assert REQUEST_ID_RE.match(name)


def test_start_backfill_uses_the_given_name_and_default_options(aws: Aws) -> None:
    # GIVEN a state machine
    arn = aws.create_state_machine()

    # WHEN a backfill is started with a name and without options
    execution_arn = start_backfill(
        arn,
        plan_uri=f"s3://{BUCKET}/_plans/p.json",
        api_config=API_CONFIG,
        options=None,
        name="backfill-2024-rerun",
    )

    # THEN that name is used and options is an empty object
    described = aws.client("stepfunctions").describe_execution(executionArn=execution_arn)
    assert described["name"] == "backfill-2024-rerun"
    assert json.loads(described["input"])["options"] == {}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "-leading-dash"}, "name"),
        ({"name": "x" * 81}, "name"),
        ({"name": "colon:is-not-allowed"}, "name"),
        ({"plan_uri": "https://example.com/plan.json"}, "plan_uri"),
        ({"api_config": {**API_CONFIG, "headers": {"X-Pad": "x" * 300_000}}}, "api_config"),
        ({"max_items_per_batch": 0}, "max_items_per_batch"),
        ({"max_items_per_batch": 100_001}, "max_items_per_batch"),
    ],
)
def test_start_backfill_refuses_bad_input_before_calling_aws(
    kwargs: dict[str, Any], field: str
) -> None:
    # GIVEN otherwise valid arguments
    arguments: dict[str, Any] = {
        "plan_uri": f"s3://{BUCKET}/_plans/p.json",
        "api_config": API_CONFIG,
        "options": None,
        "name": None,
        # Any call on this would fail: the refusal must come first.
        "sfn_client": object(),
    }

    # WHEN one of them is invalid
    with pytest.raises(InvalidEventError) as caught:
        start_backfill(
            "arn:aws:states:us-east-1:123456789012:stateMachine:bf", **{**arguments, **kwargs}
        )

    # THEN the error names it
    assert caught.value.problems[0][0] == field


@pytest.mark.parametrize(
    "source_id", [None, "", "api-source-1", "weird id/with:chars*", "x" * 200, "---"]
)
def test_default_execution_names_are_valid_for_step_functions_and_the_handler(
    source_id: object,
) -> None:
    # WHEN a default name is made from any source_id
    name = default_execution_name(source_id)

    # THEN it fits Step Functions' rules and the handler's request_id rule
    assert 1 <= len(name) <= 80
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)
    assert REQUEST_ID_RE.match(name)


# ------------------------------------------------------------------------- watch_execution


def test_watch_execution_returns_when_the_execution_ends(aws: Aws) -> None:
    # GIVEN a running execution (moto's never finish on their own)
    arn = aws.create_state_machine()
    execution_arn = start_backfill(
        arn, plan_uri=f"s3://{BUCKET}/_plans/p.json", api_config=API_CONFIG, options=None, name=None
    )
    updates: list[dict[str, Any]] = []

    def stop_after_first_update(status: dict[str, Any]) -> None:
        updates.append(status)
        if len(updates) == 1:
            aws.client("stepfunctions").stop_execution(executionArn=execution_arn)

    # WHEN it is watched and stopped after the first poll
    final = watch_execution(
        execution_arn, poll_s=0.0, on_update=stop_after_first_update, max_polls=10
    )

    # THEN watching ends at the first poll that sees the end, and reports it
    assert [u["status"] for u in updates] == ["RUNNING", "ABORTED"]
    assert final == updates[-1]
    assert final["execution_arn"] == execution_arn
    assert final["stop_date"] is not None
    # AND moto's missing map runs read as "no progress yet", not as an error
    assert final["map_runs"] == []
    assert final["item_counts"] == {
        "pending": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "timedOut": 0,
        "aborted": 0,
        "total": 0,
    }
    json.dumps(final)  # what the CLI prints must serialise


def test_watch_execution_gives_up_after_max_polls(aws: Aws) -> None:
    # GIVEN an execution that keeps running
    arn = aws.create_state_machine()
    execution_arn = start_backfill(
        arn, plan_uri=f"s3://{BUCKET}/_plans/p.json", api_config=API_CONFIG, options=None, name=None
    )
    updates: list[dict[str, Any]] = []

    # WHEN it is watched for at most three polls
    final = watch_execution(execution_arn, poll_s=0.0, on_update=updates.append, max_polls=3)

    # THEN exactly three polls happened and the last status says it still runs
    assert len(updates) == 3
    assert final["status"] == "RUNNING"


# ------------------------------------------------------ the state machine's side of the contract


def _probe_definition() -> str:
    """ingest.asl.json with each Map state replaced by a Pass state that shows what the Map
    would read and hand to each batch: the same ItemReader Parameters and BatchInput
    templates, evaluated by moto's interpreter (it cannot run a Distributed Map)."""
    text = ASL_PATH.read_text()
    # Values do not matter here except the batch sizes (the other placeholders sit inside
    # the replaced Map states).
    text = re.sub(r'"\$\{(\w+)\}"', r'"placeholder-\1"', text)
    numbers = {"MaxItemsPerBatch": "100", "MaxItemsPerPackedBatch": "2500"}
    definition = json.loads(re.sub(r"\$\{(\w+)\}", lambda m: numbers.get(m[1], "1"), text))
    states = definition["States"]
    for name, state in list(states.items()):
        if state["Type"] == "Map":
            states[name] = {
                "Type": "Pass",
                "Parameters": {
                    "map_state": name,
                    "input_type": state["ItemReader"]["ReaderConfig"]["InputType"],
                    "reader": state["ItemReader"]["Parameters"],
                    "batch_input": state["ItemBatcher"]["BatchInput"],
                    "max_items_per_batch.$": state["ItemBatcher"]["MaxItemsPerBatchPath"],
                },
                "End": True,
            }
    return json.dumps(definition)


@pytest.mark.parametrize(
    ("plan_uri", "map_state", "input_type"),
    [
        (f"s3://{BUCKET}/_plans/2024.jsonl", "IngestJsonlPlan", "JSONL"),
        (f"s3://{BUCKET}/_plans/2024.ndjson", "IngestJsonlPlan", "JSONL"),
        (f"s3://{BUCKET}/_plans/2024.json", "IngestJsonPlan", "JSON"),
    ],
)
def test_each_batch_gets_an_event_the_handler_accepts(
    executing_moto: Aws, plan_uri: str, map_state: str, input_type: str
) -> None:
    # GIVEN the real state machine definition, up to its Map states
    arn = executing_moto.create_state_machine(_probe_definition())

    # WHEN a backfill is launched with the user's options (fail_on_error deliberately off)
    execution_arn = start_backfill(
        arn,
        plan_uri=plan_uri,
        api_config=API_CONFIG,
        options={"concurrency": 8, "fail_on_error": False},
        name=None,
    )
    final = watch_execution(execution_arn, poll_s=0.05, max_polls=200)

    # THEN the Map chosen by the plan's extension reads the uploaded plan
    assert final["status"] == "SUCCEEDED", final
    probe = final["output"]
    assert probe["map_state"] == map_state
    assert probe["input_type"] == input_type
    bucket, _, key = plan_uri.removeprefix("s3://").partition("/")
    assert probe["reader"] == {"Bucket": bucket, "Key": key}
    # AND each batch carries api_config, the user's options with fail_on_error forced on,
    # and the execution name as request_id
    batch_input = probe["batch_input"]
    assert batch_input == {
        "api_config": API_CONFIG,
        "options": {"concurrency": 8, "fail_on_error": True},
        "request_id": final["name"],
    }
    # AND the handler's parser turns BatchInput + Items into a job with stable keys
    job = parse_event({"BatchInput": batch_input, "Items": [{"index": 17, "params": {"p": 1}}]})
    assert job.request_id == final["name"]
    assert job.options.fail_on_error is True
    assert [item.index for item in job.items()] == [17]


@pytest.mark.parametrize(
    ("options", "given", "expected"),
    [
        ({"concurrency": 8}, None, 100),
        ({"pack": {"unit": "record"}}, None, 2500),
        ({"pack": {"unit": "record"}}, 700, 700),
    ],
    ids=["plain-default", "packed-default", "given"],
)
def test_the_batch_size_is_given_or_defaults_by_whether_the_run_packs(
    executing_moto: Aws, options: dict[str, Any], given: int | None, expected: int
) -> None:
    # GIVEN the real definition (MaxItemsPerBatch 100, MaxItemsPerPackedBatch 2500)
    arn = executing_moto.create_state_machine(_probe_definition())
    # WHEN a backfill is launched with or without packing and --max-items-per-batch
    execution_arn = start_backfill(
        arn,
        plan_uri=f"s3://{BUCKET}/_plans/p.jsonl",
        api_config=API_CONFIG,
        options=options,
        max_items_per_batch=given,
    )
    final = watch_execution(execution_arn, poll_s=0.05, max_polls=200)
    # THEN the Map batches by the given size, else by the packed or the plain default
    assert final["status"] == "SUCCEEDED", final
    assert final["output"]["max_items_per_batch"] == expected


@pytest.mark.parametrize(
    ("execution_input", "expected"),
    [
        ({"api_config": API_CONFIG}, ("FAILED", None)),
        ({"plan": {"bucket": BUCKET}, "api_config": API_CONFIG}, ("FAILED", None)),
        (
            {"plan": {"bucket": BUCKET, "key": "p.jsonl", "format": "json"}, "api_config": {}},
            ("SUCCEEDED", "IngestJsonPlan"),
        ),
        (
            {"plan": {"bucket": BUCKET, "key": "p", "format": "jsonl"}, "api_config": {}},
            ("SUCCEEDED", "IngestJsonlPlan"),
        ),
        (
            {"plan": {"bucket": BUCKET, "key": "p", "format": "csv"}, "api_config": {}},
            ("FAILED", None),
        ),
        (
            {"plan": {"bucket": BUCKET, "key": "p.json"}, "api_config": {}},
            ("SUCCEEDED", "IngestJsonPlan"),
        ),
    ],
)
def test_the_state_machine_checks_its_input_and_honours_a_declared_format(
    executing_moto: Aws, execution_input: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    # GIVEN the real definition up to its Map states
    arn = executing_moto.create_state_machine(_probe_definition())
    sfn = executing_moto.client("stepfunctions")

    # WHEN it is started by hand (the console, the AWS CLI) with this input
    started = sfn.start_execution(
        stateMachineArn=arn, name="by-hand", input=json.dumps(execution_input)
    )
    final = watch_execution(started["executionArn"], poll_s=0.05, max_polls=200)

    # THEN a bad input fails before any Map, and plan.format overrides the extension
    status, map_state = expected
    assert final["status"] == status, final
    if status == "FAILED":
        assert final["error"] == "InvalidExecutionInput"
    else:
        assert final["output"]["map_state"] == map_state
        assert final["output"]["batch_input"]["options"] == {"fail_on_error": True}
