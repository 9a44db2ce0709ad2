"""The events the Distributed Map hands the function, built from statemachine/ingest.asl.json.

moto cannot run a Distributed Map (tests/functional/test_stepfunctions_cli.py runs the
states before it), and tests/unit/test_template.py checks the definition's shape. This
module plays the missing part for real: a plan written by ``fanout-ingest plan --upload``
into moto S3; the execution input ``start_backfill`` (``fanout-ingest launch``) sends;
the states before the Map, its ItemReader and ItemBatcher, and the batch Task's
Parameters, ResultSelector, ResultPath and OutputPath, all read from the definition file
(with template.yaml's DefinitionSubstitutions filled in) and evaluated by the small
interpreter below; then ``lambda_handler`` on every batch against a local API and moto.

The interpreter implements only what the definition uses: JSONPath ``$``, ``$.a.b`` and
``$$.a.b``; the intrinsic ``States.JsonMerge(a, b, false)``; Pass (Parameters, Result,
ResultPath), Choice (IsPresent, StringEquals, StringMatches, And, Or, Not) and Fail
states; an S3 ItemReader of JSON or JSONL; an ItemBatcher with MaxItemsPerBatch (or
MaxItemsPerBatchPath), MaxInputBytesPerBatch and BatchInput; one ``lambda:invoke``
Task per batch. Anything else raises ``NotImplementedError`` naming it, so a change
to the definition cannot slip past unevaluated.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

from handler.app import lambda_handler
from ingest_core import PartialFailureError
from ingest_core.cli import main as cli_main
from ingest_core.stepfunctions import start_backfill
from tests.conftest import RAW_BUCKET, StartServer
from tests.support.lambda_context import LocalContext
from tests.support.servers import MotoS3, Response, ScriptedAPI, default_body

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("allow_private")]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
ASL_PATH = ROOT / "statemachine" / "ingest.asl.json"
PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:fanout-test-IngestFunction"
STATE_MACHINE_ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:fanout-test-backfill"
MAX_PAYLOAD_BYTES = 256 * 1024  # Step Functions' limit on a state's input and output

SOURCE = "api-source-1"
PLAN_KEY = "_plans/2024-daily.jsonl"
# 230 days, 2024-01-01 to 2024-08-17 inclusive: with the template's default
# MaxItemsPerBatch of 100, batches of 100, 100 and 30 items.
PLAN_FLAGS = ["--start", "2024-01-01", "--end", "2024-08-17", "--query", "region=eu"]
FAILING_INDEX = 150  # in the second batch; its date answers 404 every time
USER_OPTIONS = {"concurrency": 16, "max_attempts": 2, "fail_on_error": False}


# ------------------------------------------------------------------ the definition, filled in


def substitutions() -> dict[str, str]:
    """DefinitionSubstitutions of template.yaml: parameter defaults and stand-in names."""
    template: dict[str, Any] = yaml_parse(TEMPLATE_PATH.read_text())
    resources, parameters = template["Resources"], template["Parameters"]
    (machine,) = [r for r in resources.values() if r["Type"] == "AWS::Serverless::StateMachine"]
    values: dict[str, str] = {}
    for name, value in machine["Properties"]["DefinitionSubstitutions"].items():
        ref = value.get("Ref") if isinstance(value, dict) else None
        get_att = value.get("Fn::GetAtt") if isinstance(value, dict) else None
        if ref in parameters:
            values[name] = str(parameters[ref]["Default"])
        elif ref in resources and resources[ref]["Type"] == "AWS::S3::Bucket":
            values[name] = RAW_BUCKET
        elif (
            get_att
            and get_att[1] == "Arn"
            and resources[get_att[0]]["Type"] == "AWS::Serverless::Function"
        ):
            values[name] = FUNCTION_ARN
        else:
            raise NotImplementedError(f"no stand-in for DefinitionSubstitutions {name}: {value!r}")
    return values


def definition() -> dict[str, Any]:
    """ingest.asl.json as CloudFormation hands it to Step Functions (default parameters)."""
    values = substitutions()
    text = PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], ASL_PATH.read_text())
    parsed: dict[str, Any] = json.loads(text)
    return parsed


# --------------------------------------------------------------- a small, strict interpreter


class StatesRuntimeError(Exception):
    """What Step Functions reports as States.Runtime: a path that does not resolve, say."""


class ExecutionFailed(Exception):
    """A Fail state was reached."""

    def __init__(self, error: str, cause: str | None) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error


_PATH_RE = re.compile(r"\$\$?((?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
_INTRINSIC_RE = re.compile(r"States\.([A-Za-z]+)\((.*)\)")


def read_path(path: str, data: Any, context: dict[str, Any]) -> Any:
    """``$``, ``$.a.b`` on the data, ``$$.a.b`` on the context object."""
    match = _PATH_RE.fullmatch(path)
    if match is None:
        raise NotImplementedError(f"JSONPath {path!r}: only $, $.a.b and $$.a.b are implemented")
    node = context if path.startswith("$$") else data
    for name in match.group(1).split(".")[1:]:
        if not isinstance(node, dict) or name not in node:
            raise StatesRuntimeError(f"{path!r} does not resolve")
        node = node[name]
    return node


def is_present(path: str, data: Any, context: dict[str, Any]) -> bool:
    try:
        read_path(path, data, context)
    except StatesRuntimeError:
        return False
    return True


def evaluate(expression: str, data: Any, context: dict[str, Any]) -> Any:
    """The value of a ``.$`` field: a path or an intrinsic function."""
    intrinsic = _INTRINSIC_RE.fullmatch(expression)
    if intrinsic is None:
        return read_path(expression, data, context)
    name, raw_arguments = intrinsic.groups()
    arguments = [argument.strip() for argument in raw_arguments.split(",")]
    if name != "JsonMerge" or len(arguments) != 3:
        raise NotImplementedError(f"intrinsic {expression!r}: only States.JsonMerge(a, b, false)")
    first, second, deep = arguments
    if deep != "false":
        raise NotImplementedError(f"{expression!r}: Step Functions only merges shallowly")
    left, right = read_path(first, data, context), read_path(second, data, context)
    if not isinstance(left, dict) or not isinstance(right, dict):
        raise StatesRuntimeError(f"{expression!r}: both arguments must be JSON objects")
    return {**left, **right}


def apply_template(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """A payload template (Parameters, BatchInput, ResultSelector): ``.$`` fields evaluated."""
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key.endswith(".$"):
                if not isinstance(value, str):
                    raise StatesRuntimeError(f"{key!r} must name a path or intrinsic")
                out[key[:-2]] = evaluate(value, data, context)
            else:
                out[key] = apply_template(value, data, context)
        return out
    if isinstance(template, list):
        if any(isinstance(element, dict | list) for element in template):
            raise NotImplementedError("objects or arrays inside an array of a payload template")
        return list(template)
    return template


def put_result(result_path: str | None, data: Any, result: Any) -> Any:
    """ResultPath: where the result goes in (a copy of) the state's input."""
    if result_path is None:
        return data
    if result_path == "$":
        return result
    match = _PATH_RE.fullmatch(result_path)
    if match is None or result_path.startswith("$$"):
        raise NotImplementedError(f"ResultPath {result_path!r}: only $ and $.a.b")
    *parents, last = match.group(1).split(".")[1:]
    out = copy.deepcopy(data)
    node = out
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise StatesRuntimeError(f"ResultPath {result_path!r} crosses a non-object")
    node[last] = result
    return out


def string_matches(value: str, pattern: str) -> bool:
    """StringMatches: ``*`` is any run of characters, ``\\*`` a literal star."""
    regex = "".join(
        ".*" if part == "*" else re.escape(part.removeprefix("\\"))
        for part in re.findall(r"\\\*|\*|\\\\|[^*\\]+|\\", pattern)
    )
    return re.fullmatch(regex, value, re.DOTALL) is not None


def rule_matches(rule: dict[str, Any], data: Any, context: dict[str, Any]) -> bool:
    """One Choice rule (its Next aside)."""
    rule = {key: value for key, value in rule.items() if key != "Next"}
    if set(rule) == {"And"}:
        return all(rule_matches(r, data, context) for r in rule["And"])
    if set(rule) == {"Or"}:
        return any(rule_matches(r, data, context) for r in rule["Or"])
    if set(rule) == {"Not"}:
        return not rule_matches(rule["Not"], data, context)
    comparators = set(rule) - {"Variable"}
    if "Variable" not in rule or len(comparators) != 1:
        raise NotImplementedError(f"Choice rule {rule!r}")
    (comparator,) = comparators
    expected, variable = rule[comparator], rule["Variable"]
    if comparator == "IsPresent":
        return is_present(variable, data, context) is expected
    value = read_path(variable, data, context)  # a missing variable is a runtime error
    if comparator == "StringEquals":
        return isinstance(value, str) and value == expected
    if comparator == "StringMatches":
        return isinstance(value, str) and string_matches(value, expected)
    raise NotImplementedError(f"Choice comparator {comparator}")


def run_pass(state: dict[str, Any], data: Any, context: dict[str, Any]) -> Any:
    unknown = set(state) - {"Type", "Comment", "Parameters", "Result", "ResultPath", "Next"}
    if unknown:
        raise NotImplementedError(f"Pass state fields {sorted(unknown)}")
    effective = (
        apply_template(state["Parameters"], data, context) if "Parameters" in state else data
    )
    result = state["Result"] if "Result" in state else effective
    return put_result(state.get("ResultPath", "$"), data, result)


def run_to_map(
    states: dict[str, Any], start: str, data: Any, context: dict[str, Any]
) -> tuple[str, dict[str, Any], Any]:
    """Run the states from ``start`` to the first Map: its name, definition and input."""
    name = start
    for _ in range(len(states)):
        state = states[name]
        kind = state["Type"]
        if kind == "Map":
            return name, state, data
        if kind == "Fail":
            raise ExecutionFailed(state["Error"], state.get("Cause"))
        if kind == "Choice":
            chosen = [r["Next"] for r in state["Choices"] if rule_matches(r, data, context)]
            name = chosen[0] if chosen else state.get("Default", "")
            if not name:
                raise StatesRuntimeError("States.NoChoiceMatched")
        elif kind == "Pass":
            data = run_pass(state, data, context)
            name = state["Next"]
        else:
            raise NotImplementedError(f"{kind} state {name}")
    raise AssertionError("no Map state reached")


# Map and Task fields that do not change the events or outputs evaluated here.
_INERT_MAP_FIELDS = {
    "Type", "Comment", "Label", "MaxConcurrency", "ToleratedFailurePercentage",
    "ToleratedFailureCount", "ResultWriter", "ResultPath", "End", "Next",
}  # fmt: skip
_TASK_FIELDS = {
    "Type", "Comment", "Resource", "Parameters", "ResultSelector", "ResultPath",
    "OutputPath", "Retry", "Catch", "End", "TimeoutSeconds", "HeartbeatSeconds",
}  # fmt: skip


def read_items(map_state: dict[str, Any], data: Any, ctx: dict[str, Any], s3: MotoS3) -> list[Any]:
    """What the Map's ItemReader reads: the plan object, parsed as its InputType says."""
    unknown = set(map_state) - _INERT_MAP_FIELDS - {"ItemReader", "ItemBatcher", "ItemProcessor"}
    if unknown:
        raise NotImplementedError(f"Map fields {sorted(unknown)}")
    reader = map_state["ItemReader"]
    if reader["Resource"] != "arn:aws:states:::s3:getObject" or set(reader["ReaderConfig"]) != {
        "InputType"
    }:
        raise NotImplementedError(f"ItemReader {reader!r}")
    where = apply_template(reader["Parameters"], data, ctx)
    assert set(where) == {"Bucket", "Key"}, where
    body = s3.get_bytes(where["Bucket"], where["Key"])
    input_type = reader["ReaderConfig"]["InputType"]
    if input_type == "JSONL":
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    if input_type == "JSON":
        items = json.loads(body)
        assert isinstance(items, list)
        return items
    raise NotImplementedError(f"ReaderConfig.InputType {input_type}")


def make_batches(
    map_state: dict[str, Any], items: list[Any], data: Any, ctx: dict[str, Any]
) -> list[dict[str, Any]]:
    """What the ItemBatcher makes: ``{"BatchInput": ..., "Items": [...]}`` per batch."""
    batcher = map_state["ItemBatcher"]
    known = {"MaxItemsPerBatch", "MaxItemsPerBatchPath", "MaxInputBytesPerBatch", "BatchInput"}
    unknown = set(batcher) - known
    if unknown:
        raise NotImplementedError(f"ItemBatcher fields {sorted(unknown)}")
    if "MaxItemsPerBatchPath" in batcher:
        size = read_path(batcher["MaxItemsPerBatchPath"], data, ctx)
    else:
        size = batcher["MaxItemsPerBatch"]
    assert isinstance(size, int) and size >= 1, size
    max_bytes = batcher.get("MaxInputBytesPerBatch")
    batch_input = apply_template(batcher.get("BatchInput", {}), data, ctx)
    batches: list[list[Any]] = [[]]
    used = 0
    for item in items:
        # Approximated as the items' compact JSON; Step Functions cuts a batch short rather
        # than go over MaxInputBytesPerBatch.
        nbytes = len(json.dumps(item, separators=(",", ":"))) + 1
        full = len(batches[-1]) >= size or (max_bytes is not None and used + nbytes > max_bytes)
        if full and batches[-1]:
            batches.append([])
            used = 0
        batches[-1].append(item)
        used += nbytes
    return [
        {"BatchInput": copy.deepcopy(batch_input), "Items": batch} for batch in batches if batch
    ]


def batch_task(map_state: dict[str, Any]) -> dict[str, Any]:
    """The one Task each child execution runs on its batch."""
    processor = map_state["ItemProcessor"]
    if processor["ProcessorConfig"]["Mode"] != "DISTRIBUTED":
        raise NotImplementedError("only a Distributed Map")
    task: dict[str, Any] = processor["States"][processor["StartAt"]]
    unknown = set(task) - _TASK_FIELDS
    if task["Type"] != "Task" or task.get("End") is not True or unknown:
        raise NotImplementedError(f"item processor other than one ending Task ({sorted(unknown)})")
    if task["Resource"] != "arn:aws:states:::lambda:invoke":
        raise NotImplementedError(f"Task resource {task['Resource']}")
    return task


def handles(error_equals: list[str], error: str) -> bool:
    """Whether a Retry or Catch entry's ErrorEquals matches ``error``."""
    if error in error_equals or "States.ALL" in error_equals:
        return True
    return "States.TaskFailed" in error_equals and error != "States.Timeout"


# ---------------------------------------------------------------------------- the scenario


@dataclass
class Invocation:
    """One batch through the Task: the request it made, and its output or error."""

    request: dict[str, Any]
    result: dict[str, Any] | None = None
    output: Any = None
    error: PartialFailureError | None = None


@dataclass
class Backfill:
    """A launched backfill, up to the batch events the Map would hand out."""

    s3: MotoS3
    api: ScriptedAPI
    execution_name: str
    execution_input: dict[str, Any]
    map_name: str
    map_state: dict[str, Any]
    plan: list[dict[str, Any]]
    batches: list[dict[str, Any]]
    task: dict[str, Any]

    def invoke(self, batch: dict[str, Any]) -> Invocation:
        """The Task on one batch: its Parameters, the Lambda call, its output paths."""
        # Inside a child execution $$ describes the child, not the parent.
        child = execution_context(str(uuid.uuid4()), batch)
        request = apply_template(self.task["Parameters"], batch, child)
        assert request["FunctionName"] == FUNCTION_ARN
        wire = json.dumps(request["Payload"]).encode()
        assert len(wire) < MAX_PAYLOAD_BYTES
        invocation = Invocation(request=request)
        try:
            result = lambda_handler(json.loads(wire), LocalContext(timeout_s=60))
        except PartialFailureError as exc:
            invocation.error = exc
            return invocation
        invocation.result = json.loads(json.dumps(result))  # what Lambda would send back
        response = {
            "ExecutedVersion": "$LATEST",
            "Payload": invocation.result,
            "SdkHttpMetadata": {"HttpStatusCode": 200},
            "SdkResponseMetadata": {"RequestId": str(uuid.uuid4())},
            "StatusCode": 200,
        }
        if "ResultSelector" in self.task:
            response = apply_template(self.task["ResultSelector"], response, child)
        combined = put_result(self.task.get("ResultPath", "$"), batch, response)
        invocation.output = read_path(self.task.get("OutputPath", "$"), combined, child)
        return invocation

    def data_keys(self) -> set[str]:
        return {k for k in self.s3.list_keys(RAW_BUCKET, f"{SOURCE}/") if "/_manifests/" not in k}

    def expected_key(self, index: int) -> str:
        return f"{SOURCE}/{self.execution_name}-{index}.json"


def execution_context(name: str, execution_input: Any) -> dict[str, Any]:
    """The context object ($$) of an execution, as far as Step Functions fills it in here."""
    machine = STATE_MACHINE_ARN.rpartition(":")[2]
    return {
        "Execution": {
            "Id": f"{STATE_MACHINE_ARN.replace(':stateMachine:', ':execution:')}:{name}",
            "Name": name,
            "Input": execution_input,
            "StartTime": "2024-09-01T12:00:00.000Z",
            "RoleArn": "arn:aws:iam::123456789012:role/fanout-test-backfill-role",
        },
        "StateMachine": {"Id": STATE_MACHINE_ARN, "Name": machine},
    }


class _RecordingStepFunctions:
    """Stands in for the boto3 client: records what start_backfill would start."""

    def __init__(self) -> None:
        self.started: dict[str, Any] = {}

    def start_execution(self, **kwargs: Any) -> dict[str, str]:
        self.started = kwargs
        return {"executionArn": execution_context(kwargs["name"], None)["Execution"]["Id"]}


@pytest.fixture
def backfill(s3: MotoS3, api_server: StartServer) -> Iterator[Backfill]:
    # A plan with global indexes, written and uploaded by `fanout-ingest plan --upload`
    uri = f"s3://{RAW_BUCKET}/{PLAN_KEY}"
    assert cli_main(["plan", *PLAN_FLAGS, "--jsonl", "--upload", uri]) == 0
    plan = [json.loads(line) for line in s3.get_bytes(RAW_BUCKET, PLAN_KEY).splitlines()]
    failing_date = plan[FAILING_INDEX]["params"]["date"]
    # An API that answers every date with its records, but one date with 404, always
    api = ScriptedAPI({failing_date: Response(status=404)})
    server = api_server(api)
    api_config = {
        "endpoint": f"{server.url}/v1/data",
        "raw_bucket": RAW_BUCKET,
        "source_id": SOURCE,
    }
    # The execution `fanout-ingest launch` starts (name and input as it sends them)
    sfn = _RecordingStepFunctions()
    start_backfill(
        STATE_MACHINE_ARN,
        plan_uri=uri,
        api_config=api_config,
        options=USER_OPTIONS,
        name=None,
        sfn_client=sfn,
    )
    name, execution_input = sfn.started["name"], json.loads(sfn.started["input"])
    # The definition, run from StartAt to its Map, which reads and batches the plan
    asl = definition()
    context = execution_context(name, execution_input)
    map_name, map_state, map_input = run_to_map(
        asl["States"], asl["StartAt"], execution_input, context
    )
    items = read_items(map_state, map_input, context, s3)
    batches = make_batches(map_state, items, map_input, context)
    yield Backfill(
        s3=s3,
        api=api,
        execution_name=name,
        execution_input=execution_input,
        map_name=map_name,
        map_state=map_state,
        plan=plan,
        batches=batches,
        task=batch_task(map_state),
    )


# ------------------------------------------------------------------------------------ tests


def test_the_map_batches_the_uploaded_plan_as_the_definition_says(backfill: Backfill) -> None:
    # GIVEN the launched backfill, run up to its Map and through its ItemReader and ItemBatcher
    batches, plan = backfill.batches, backfill.plan
    size = int(substitutions()["MaxItemsPerBatch"])

    # THEN the Map for JSON Lines read the whole plan, in order, with its global indexes
    assert backfill.map_state["ItemReader"]["ReaderConfig"]["InputType"] == "JSONL"
    assert [item for batch in batches for item in batch["Items"]] == plan
    assert [item["index"] for item in plan] == list(range(len(plan)))
    assert plan[0]["params"] == {"date": "2024-01-01", "region": "eu"}
    # AND cut it into batches of MaxItemsPerBatch (the template's default), the last shorter
    assert [len(batch["Items"]) for batch in batches] == [size, size, len(plan) - 2 * size]
    # AND every batch carries the api_config, the user's options with fail_on_error forced
    # on, and the execution name as request_id
    for batch in batches:
        assert set(batch) == {"BatchInput", "Items"}
        assert batch["BatchInput"] == {
            "api_config": backfill.execution_input["api_config"],
            "options": {**USER_OPTIONS, "fail_on_error": True},
            "request_id": backfill.execution_name,
        }
        # AND the Task sends the batch itself as the Lambda payload
        child = {"Execution": {"Name": "child"}}
        request = apply_template(backfill.task["Parameters"], batch, child)
        assert request == {"FunctionName": FUNCTION_ARN, "Payload": batch}
    assert re.fullmatch(r"backfill-api-source-1-\d{8}T\d{6}Z-[0-9a-f]{4}", backfill.execution_name)


def test_each_batch_lands_at_plan_wide_keys_and_a_failed_item_fails_its_batch(
    backfill: Backfill,
) -> None:
    # WHEN every batch runs through the Task
    invocations = [backfill.invoke(batch) for batch in backfill.batches]

    # THEN every item but the failing one is at {source_id}/{execution name}-{index}.json,
    # with exactly the bytes the API served, and no two batches share a key
    wanted = {i for i in range(len(backfill.plan)) if i != FAILING_INDEX}
    assert backfill.data_keys() == {backfill.expected_key(i) for i in wanted}
    for index in wanted:
        written = backfill.s3.get_bytes(RAW_BUCKET, backfill.expected_key(index))
        assert written == default_body(backfill.plan[index]["params"])
    assert backfill.s3.incomplete_uploads(RAW_BUCKET) == []

    # AND each batch wrote its own manifest, named by its index range, one line per item
    first, failed, last = invocations
    results = [first.result, failed.error.result if failed.error else None, last.result]
    manifests = []
    for batch, result in zip(backfill.batches, results, strict=True):
        assert result is not None
        indexes = [item["index"] for item in batch["Items"]]
        key = f"{SOURCE}/_manifests/{backfill.execution_name}-{indexes[0]}-{indexes[-1]}.json"
        assert result["manifest_key"] == key
        lines = [json.loads(line) for line in backfill.s3.get_bytes(RAW_BUCKET, key).splitlines()]
        assert sorted(line["index"] for line in lines) == indexes  # in completion order
        assert {line["key"] for line in lines} == {backfill.expected_key(i) for i in indexes}
        failed_lines = [line["index"] for line in lines if line["status"] != "written"]
        assert failed_lines == ([FAILING_INDEX] if FAILING_INDEX in indexes else [])
        manifests.append(key)
    assert len(set(manifests)) == len(backfill.batches)

    # AND a successful batch's Task output (after ResultSelector, ResultPath, OutputPath)
    # is the handler's result, with every field of CONTRACT §6, small enough for the Map
    for invocation in (first, last):
        output = invocation.output
        assert output == invocation.result
        assert {
            "status", "request_id", "source_id", "requested", "succeeded", "failed",
            "not_attempted", "records_ingested", "bytes_written", "duration_ms",
            "failures", "failures_truncated", "manifest_key",
        } <= set(output)  # fmt: skip
        assert output["status"] == "SUCCESS" and output["failures"] == []
        assert output["request_id"] == backfill.execution_name
        assert output["source_id"] == SOURCE
        assert (
            output["succeeded"]
            == output["requested"]
            == len(invocation.request["Payload"]["Items"])
        )
        assert len(json.dumps(output).encode()) < MAX_PAYLOAD_BYTES

    # AND the batch with the failed item raised PartialFailureError after finishing the
    # rest, with a message that names its counts and manifest
    error = failed.error
    assert error is not None and failed.result is None
    assert error.result["status"] == "PARTIAL_SUCCESS"
    assert (error.result["failed"], error.result["not_attempted"]) == (1, 0)
    assert error.result["succeeded"] == len(backfill.batches[1]["Items"]) - 1
    [failure] = error.result["failures"]
    assert (failure["index"], failure["kind"], failure["status"]) == (
        FAILING_INDEX,
        "http_status",
        404,
    )
    assert "1 failed" in str(error) and error.result["manifest_key"] in str(error)
    # AND that error (Lambda reports the exception's class name) is neither retried nor
    # caught by the Task, so the child execution fails and counts against the tolerance
    name = type(error).__name__
    assert name == "PartialFailureError"
    assert not any(handles(r["ErrorEquals"], name) for r in backfill.task.get("Retry", []))
    assert not any(handles(c["ErrorEquals"], name) for c in backfill.task.get("Catch", []))


def test_a_rerun_or_redrive_of_a_failed_batch_writes_the_same_keys(backfill: Backfill) -> None:
    # GIVEN the batch with the failing item, run once
    batch = backfill.batches[1]
    indexes = [item["index"] for item in batch["Items"]]
    first = backfill.invoke(batch)
    assert first.error is not None
    keys = backfill.data_keys()
    contents = {key: backfill.s3.get_bytes(RAW_BUCKET, key) for key in keys}
    manifest_key = first.error.result["manifest_key"]

    # WHEN Step Functions runs the same batch again (another invocation, new aws_request_id)
    again = backfill.invoke(batch)

    # THEN it fails the same way and writes the same keys with the same bytes
    assert again.error is not None
    assert again.error.result["failures"] == first.error.result["failures"]
    assert again.error.result["manifest_key"] == manifest_key
    assert backfill.data_keys() == keys
    assert {key: backfill.s3.get_bytes(RAW_BUCKET, key) for key in keys} == contents

    # WHEN the API is fixed and the batch is redriven with its original input
    failing_date = backfill.plan[FAILING_INDEX]["params"]["date"]
    backfill.api.set_script(failing_date, Response())
    redriven = backfill.invoke(batch)

    # THEN it succeeds, filling exactly the missing key and overwriting its manifest
    assert redriven.error is None and redriven.output is not None
    assert redriven.output["status"] == "SUCCESS"
    assert redriven.output["manifest_key"] == manifest_key
    assert backfill.data_keys() == keys | {backfill.expected_key(FAILING_INDEX)}
    assert {backfill.expected_key(i) for i in indexes} <= backfill.data_keys()
    assert backfill.s3.get_bytes(RAW_BUCKET, backfill.expected_key(FAILING_INDEX)) == default_body(
        backfill.plan[FAILING_INDEX]["params"]
    )


# ------------------------------------------------------------- the interpreter refuses, loudly


@pytest.mark.parametrize(
    "template",
    [
        {"x.$": "$.items[0]"},
        {"x.$": "$..name"},
        {"x.$": "States.Format('{}', $.a)"},
        {"x.$": "States.JsonMerge($.a, $.b, true)"},
    ],
)
def test_the_interpreter_refuses_what_it_does_not_implement(template: dict[str, str]) -> None:
    # WHEN a template uses JSONPath or an intrinsic beyond what the definition uses
    # THEN it is refused rather than half-evaluated
    with pytest.raises(NotImplementedError):
        apply_template(template, {"a": {}, "b": {}, "items": [1]}, {})


def test_the_interpreter_fails_a_missing_path_as_step_functions_does() -> None:
    with pytest.raises(StatesRuntimeError):
        apply_template({"x.$": "$.api_config.endpoint"}, {"api_config": {}}, {})
    with pytest.raises(StatesRuntimeError):
        apply_template({"x.$": "$$.Execution.Name"}, {}, {"Execution": {}})
