"""template.yaml and statemachine/ingest.asl.json, checked without AWS.

* cfn-lint on the SAM template (errors fail, warnings are printed);
* the SAM transform, as CloudFormation would run it, and cfn-lint on its output;
* the definition, with its DefinitionSubstitutions filled in, through the real
  asl-validator (tools/asl, installed by ``npm ci --prefix tools/asl``);
* the facts the handler and the failure policy rely on, read from the parsed files.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint import api as cfnlint_api
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
ASL_PATH = ROOT / "statemachine" / "ingest.asl.json"
ASL_TOOLS = ROOT / "tools" / "asl"
ASL_VALIDATOR = ASL_TOOLS / "node_modules" / ".bin" / "asl-validator"
INSTALL_HINT = "npm ci --prefix tools/asl"

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "fanout-test"
PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
LAMBDA_RETRY_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
# Plausible physical names for what DefinitionSubstitutions refers to, by resource type.
FAKE_ARNS = {
    "AWS::Serverless::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STACK}-Ingest",
}
FAKE_NAMES = {"AWS::S3::Bucket": f"{STACK}-rawbucket-1a2b3c4d5e6f"}
# A parameter override set, as `sam deploy --parameter-overrides` would pass.
PARAMETER_OVERRIDES = {
    "AllowedHosts": "api.example.com,*.example.org",
    "MaxItemsPerBatch": "250",
    "MaxConcurrency": "40",
    "ToleratedFailurePercentage": "10",
}


class _NoManagedPolicies:
    """A managed-policy loader that never calls IAM (SAM asks only for names it cannot map)."""

    def load(self) -> dict[str, str]:
        return {}


def _template_text() -> str:
    return TEMPLATE_PATH.read_text()


def load_template() -> dict[str, Any]:
    """template.yaml as a fresh dict, with CloudFormation short tags (!Ref ...) expanded."""
    parsed: dict[str, Any] = yaml_parse(_template_text())
    return parsed


def _state_machine(template: dict[str, Any]) -> dict[str, Any]:
    machines: list[dict[str, Any]] = [
        resource
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Serverless::StateMachine"
    ]
    (machine,) = machines
    return machine


def _substitution_value(value: Any, template: dict[str, Any]) -> str:
    """What CloudFormation would put in place of one DefinitionSubstitutions value."""
    resources, parameters = template["Resources"], template["Parameters"]
    if isinstance(value, str):
        return value
    if "Ref" in value:
        name = value["Ref"]
        if name in parameters:
            return str(parameters[name]["Default"])
        return FAKE_NAMES[resources[name]["Type"]]
    if "Fn::GetAtt" in value:
        name, attribute = value["Fn::GetAtt"]
        assert attribute == "Arn", f"no fake for {name}.{attribute}"
        return FAKE_ARNS[resources[name]["Type"]]
    raise AssertionError(f"no fake for substitution {value!r}")


def substitutions() -> dict[str, str]:
    """DefinitionSubstitutions from template.yaml, resolved to plausible values."""
    template = load_template()
    raw = _state_machine(template)["Properties"]["DefinitionSubstitutions"]
    return {key: _substitution_value(value, template) for key, value in raw.items()}


def substituted_definition_text() -> str:
    """ingest.asl.json as CloudFormation would hand it to Step Functions."""
    values = substitutions()
    return PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], ASL_PATH.read_text())


def definition() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(substituted_definition_text())
    return parsed


def _all_states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        yield name, state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from _all_states(processor["States"])
        for branch in state.get("Branches", []):
            yield from _all_states(branch["States"])


def _map_states() -> dict[str, dict[str, Any]]:
    return {
        name: state for name, state in _all_states(definition()["States"]) if state["Type"] == "Map"
    }


def _packaged(template: dict[str, Any]) -> dict[str, Any]:
    """The template as `sam package` leaves it: local code and definition paths on S3."""
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            properties["CodeUri"] = "s3://sam-artifacts/fanout/code.zip"
        if resource["Type"] == "AWS::Serverless::StateMachine":
            properties["DefinitionUri"] = "s3://sam-artifacts/fanout/ingest.asl.json"
    return template


@pytest.fixture
def transformed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The CloudFormation template the SAM transform makes, with no AWS calls."""
    # SAM reads the region from a boto3 session; nothing else touches AWS.
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    parameters = {
        **PARAMETER_OVERRIDES,
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::Partition": "aws",
        "AWS::StackName": STACK,
    }
    output: dict[str, Any] = transform(_packaged(load_template()), parameters, _NoManagedPolicies())
    return output


def _resources_of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def _role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement granted to a role, inline or by a managed policy (connectors)."""
    resources = template["Resources"]
    documents = [p["PolicyDocument"] for p in resources[role]["Properties"].get("Policies", [])]
    documents += [
        r["Properties"]["PolicyDocument"]
        for r in _resources_of_type(template, "AWS::IAM::ManagedPolicy").values()
        if {"Ref": role} in r["Properties"].get("Roles", [])
    ]
    return [statement for document in documents for statement in document["Statement"]]


def _actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


# ---------------------------------------------------------------------------------- cfn-lint


def test_cfn_lint_reports_no_errors() -> None:
    # WHEN cfn-lint checks the SAM template
    matches = cfnlint_api.lint(_template_text())

    # THEN there is no error; anything else is shown, not fatal
    for match in matches:
        print(f"cfn-lint {match.rule.id}: {match}")
    errors = [str(match) for match in matches if match.rule.id.startswith("E")]
    assert errors == []


# ----------------------------------------------------------------------------- SAM transform


def test_sam_transform_succeeds_and_its_output_lints_clean(transformed: dict[str, Any]) -> None:
    # THEN the transform made the function, the state machine and their roles
    types = {resource["Type"] for resource in transformed["Resources"].values()}
    assert {
        "AWS::Lambda::Function",
        "AWS::StepFunctions::StateMachine",
        "AWS::IAM::Role",
        "AWS::S3::Bucket",
        "AWS::CloudWatch::Alarm",
    } <= types
    # AND plain CloudFormation lint finds no error in what it made
    matches = cfnlint_api.lint(json.dumps(transformed))
    for match in matches:
        print(f"cfn-lint (transformed) {match.rule.id}: {match}")
    assert [str(m) for m in matches if m.rule.id.startswith("E")] == []


def test_the_state_machine_is_wired_from_its_own_file(transformed: dict[str, Any]) -> None:
    # GIVEN the state machine resource the transform made
    (machine,) = _resources_of_type(transformed, "AWS::StepFunctions::StateMachine").values()
    properties = machine["Properties"]

    # THEN its definition comes from the packaged file, not inline
    assert "DefinitionS3Location" in properties
    assert "Definition" not in properties and "DefinitionString" not in properties
    # AND every placeholder in the file has a substitution, and every substitution is used
    placeholders = set(PLACEHOLDER_RE.findall(ASL_PATH.read_text()))
    assert placeholders == set(properties["DefinitionSubstitutions"])
    # AND execution logging is on without execution data
    logging = properties["LoggingConfiguration"]
    assert logging["Level"] in {"ERROR", "ALL"}
    assert logging["IncludeExecutionData"] is False
    assert logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]


def test_the_function_is_configured_as_the_handler_expects(transformed: dict[str, Any]) -> None:
    # GIVEN the function the transform made
    (function,) = _resources_of_type(transformed, "AWS::Lambda::Function").values()
    properties = function["Properties"]

    # THEN it runs handler.app.lambda_handler on a current Python, arm64, traced
    assert properties["Handler"] == "handler.app.lambda_handler"
    assert properties["Runtime"] in {"python3.12", "python3.13"}
    assert properties["Architectures"] == ["arm64"]
    assert properties["TracingConfig"] == {"Mode": "Active"}
    assert properties["MemorySize"] == {"Ref": "FunctionMemorySize"}
    assert properties["Timeout"] == {"Ref": "FunctionTimeout"}
    # AND its environment names the raw bucket, the host allow-list and Powertools' settings
    variables = properties["Environment"]["Variables"]
    assert variables["FANOUT_ALLOWED_BUCKETS"] == {"Ref": "RawBucket"}
    assert variables["FANOUT_ALLOWED_HOSTS"] == {"Ref": "AllowedHosts"}
    assert {
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
    } <= set(variables)


def test_the_function_gets_least_privilege(transformed: dict[str, Any]) -> None:
    # GIVEN every statement the function's role holds
    (function,) = _resources_of_type(transformed, "AWS::Lambda::Function").values()
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = _role_statements(transformed, role)
    granted = set().union(*(_actions(s) for s in statements))

    # THEN on S3 it can write, abort and resume uploads, and read/HEAD for skip_existing
    s3_actions = {a for a in granted if a.startswith("s3:")}
    assert s3_actions == {
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:GetObject",
        "s3:ListBucket",  # so HEAD on a missing key answers 404, not 403
        "s3:DeleteObject",  # a packed re-run removes its earlier run's stale parts
    }
    # AND nothing that deletes versions or buckets, changes ACLs or bucket configuration
    assert not any(
        a.startswith(("s3:Delete", "s3:PutObjectAcl", "s3:PutLifecycle"))
        for a in granted - {"s3:DeleteObject"}
    )
    # AND secrets only under the prefixes the parameters name
    (secrets,) = [s for s in statements if "secretsmanager:GetSecretValue" in _actions(s)]
    assert "${SecretNamePrefix}*" in json.dumps(secrets["Resource"])
    (ssm,) = [s for s in statements if "ssm:GetParameter" in _actions(s)]
    assert "${SsmParameterPrefix}*" in json.dumps(ssm["Resource"])
    assert all(s["Resource"] != "*" for s in statements if _actions(s) & s3_actions)


def test_the_state_machine_role_can_run_the_distributed_map(transformed: dict[str, Any]) -> None:
    # GIVEN every statement the state machine's role holds
    (machine,) = _resources_of_type(transformed, "AWS::StepFunctions::StateMachine").values()
    role = machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = _role_statements(transformed, role)
    granted = set().union(*(_actions(s) for s in statements))

    # THEN it can invoke the function, start and manage child executions, read plans,
    # write results and deliver logs
    assert {
        "lambda:InvokeFunction",
        "states:StartExecution",
        "states:DescribeExecution",
        "states:StopExecution",
        "states:RedriveExecution",
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "logs:CreateLogDelivery",
    } <= granted
    (invoke,) = [s for s in statements if "lambda:InvokeFunction" in _actions(s)]
    assert invoke["Resource"] == [{"Fn::GetAtt": ["IngestFunction", "Arn"]}]


def test_the_raw_bucket_is_private_encrypted_tls_only_and_aborts_stale_uploads() -> None:
    # GIVEN the raw bucket and its policy
    template = load_template()
    (bucket,) = _resources_of_type(template, "AWS::S3::Bucket").values()
    properties = bucket["Properties"]
    (policy,) = _resources_of_type(template, "AWS::S3::BucketPolicy").values()

    # THEN objects are encrypted at rest and no public access is possible
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    # AND plain-HTTP requests are denied
    (deny,) = [
        s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"
    ]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Principal"] == "*"
    # AND incomplete multipart uploads are aborted after one day
    rules = properties["LifecycleConfiguration"]["Rules"]
    assert any(
        r["Status"] == "Enabled" and r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
        for r in rules
    )


def test_alarms_watch_function_errors_and_failed_executions() -> None:
    # GIVEN the alarms
    alarms = _resources_of_type(load_template(), "AWS::CloudWatch::Alarm").values()
    watched = {(a["Properties"]["Namespace"], a["Properties"]["MetricName"]) for a in alarms}

    # THEN function errors and failed executions are both alarmed
    assert {("AWS/Lambda", "Errors"), ("AWS/States", "ExecutionsFailed")} <= watched


def test_outputs_name_what_the_cli_and_the_e2e_test_need() -> None:
    outputs = load_template()["Outputs"]
    assert {
        "IngestFunctionArn",
        "IngestFunctionName",
        "RawBucketName",
        "StateMachineArn",
        "StateMachineLogGroupName",
        "PlanUriPrefix",
    } <= set(outputs)


def test_numeric_substitutions_come_from_bounded_parameters() -> None:
    # GIVEN the parameters the Map's numbers come from
    parameters = load_template()["Parameters"]

    # THEN each is a Number whose bounds Step Functions accepts
    bounds = {
        "MaxItemsPerBatch": (1, None),
        "MaxItemsPerPackedBatch": (1, None),
        "MaxInputBytesPerBatch": (1, 256 * 1024),
        "MaxConcurrency": (1, 10_000),
        "ToleratedFailurePercentage": (0, 100),
    }
    for name, (low, high) in bounds.items():
        parameter = parameters[name]
        assert parameter["Type"] == "Number"
        assert parameter["MinValue"] >= low
        assert high is None or parameter["MaxValue"] <= high


# ----------------------------------------------------------------------------- asl-validator


def test_the_definition_passes_asl_validator() -> None:
    # GIVEN the pinned asl-validator (and node to run it)
    node = shutil.which("node")
    if not ASL_VALIDATOR.exists() or node is None:
        missing = "node" if node is None else str(ASL_VALIDATOR.relative_to(ROOT))
        reason = f"{missing} is missing; run `{INSTALL_HINT}`"
        if _ci():
            pytest.fail(f"CI is set and {reason}")
        pytest.skip(reason)

    # WHEN it validates the definition with its substitutions filled in; the text goes in
    # --json-definition, because a path there is "unable to parse" and still exits 0
    completed = subprocess.run(
        [str(ASL_VALIDATOR), "--json-definition", substituted_definition_text()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # THEN it is valid
    print(completed.stdout, completed.stderr)
    assert completed.returncode == 0
    assert "is valid" in completed.stdout


def test_the_raw_definition_is_a_template_only_for_numbers() -> None:
    # GIVEN the file as stored
    text = ASL_PATH.read_text()

    # THEN only the numeric placeholders stand unquoted (the rest are JSON strings)
    unquoted = set(re.findall(r'(?<!")\$\{([A-Za-z0-9_]+)\}(?!")', text))
    assert unquoted == {
        "MaxItemsPerBatch",
        "MaxItemsPerPackedBatch",
        "MaxInputBytesPerBatch",
        "MaxConcurrency",
        "ToleratedFailurePercentage",
    }


# ------------------------------------------------------------------- the Distributed Map itself


def test_plans_are_read_from_s3_by_distributed_maps_for_json_and_jsonl() -> None:
    maps = _map_states()

    # THEN there is one Distributed Map per plan format, each reading the plan named in
    # the execution input
    assert {m["ItemReader"]["ReaderConfig"]["InputType"] for m in maps.values()} == {
        "JSON",
        "JSONL",
    }
    for state in maps.values():
        assert state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
        assert state["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] in {
            "STANDARD",
            "EXPRESS",
        }
        reader = state["ItemReader"]
        assert reader["Resource"] == "arn:aws:states:::s3:getObject"
        assert reader["Parameters"] == {"Bucket.$": "$.plan.bucket", "Key.$": "$.plan.key"}


def test_the_two_maps_differ_only_in_what_they_must() -> None:
    # GIVEN both Map states
    maps = _map_states()

    # WHEN the fields that must differ are blanked
    def normalised(state: dict[str, Any]) -> str:
        state = copy.deepcopy(state)
        for field in ("Comment", "Label"):
            state.pop(field, None)
        state["ItemReader"]["ReaderConfig"].pop("InputType")
        processor = state["ItemProcessor"]
        (inner,) = processor["States"]
        processor["States"] = {"<batch>": processor["States"][inner]}
        processor["StartAt"] = "<batch>"
        return json.dumps(state, sort_keys=True)

    # THEN they are the same: a change to one Map was made to the other
    assert len({normalised(state) for state in maps.values()}) == 1


def test_batches_carry_the_config_and_a_stable_request_id() -> None:
    for state in _map_states().values():
        batcher = state["ItemBatcher"]
        # The batch size comes from the Map's input (below); the bytes cap is a parameter
        assert batcher["MaxItemsPerBatchPath"] == "$.max_items_per_batch"
        assert batcher["MaxInputBytesPerBatch"] == int(substitutions()["MaxInputBytesPerBatch"])
        assert batcher["MaxInputBytesPerBatch"] <= 256 * 1024
        # request_id is the execution name: unchanged when a batch is retried or redriven
        assert batcher["BatchInput"] == {
            "api_config.$": "$.api_config",
            "options.$": "$.options",
            "request_id.$": "$$.Execution.Name",
        }


def test_the_failure_policy_lives_in_the_map() -> None:
    for state in _map_states().values():
        # THEN concurrency and tolerated failures are bounded by parameters
        assert state["MaxConcurrency"] == int(substitutions()["MaxConcurrency"])
        assert state["ToleratedFailurePercentage"] == int(
            substitutions()["ToleratedFailurePercentage"]
        )
        # AND results go to the raw bucket under the results prefix
        writer = state["ResultWriter"]
        assert writer["Resource"] == "arn:aws:states:::s3:putObject"
        assert writer["Parameters"] == {
            "Bucket": substitutions()["ResultBucket"],
            "Prefix": substitutions()["ResultPrefix"],
        }


def test_each_batch_invokes_the_function_and_retries_only_transient_lambda_errors() -> None:
    for state in _map_states().values():
        processor = state["ItemProcessor"]
        (task,) = processor["States"].values()
        assert processor["StartAt"] in processor["States"]

        # THEN the task hands the batch event to the function and returns its result
        assert task["Type"] == "Task"
        assert task["Resource"] == "arn:aws:states:::lambda:invoke"
        assert task["Parameters"] == {
            "FunctionName": substitutions()["IngestFunctionArn"],
            "Payload.$": "$",
        }
        assert task.get("OutputPath") == "$.Payload" or "ResultSelector" in task
        # AND retries the four transient Lambda errors with jittered exponential backoff
        (retry,) = task["Retry"]
        assert set(retry["ErrorEquals"]) == LAMBDA_RETRY_ERRORS
        assert retry["JitterStrategy"] == "FULL"
        assert retry["BackoffRate"] > 1
        assert retry["IntervalSeconds"] >= 1
        assert retry["MaxAttempts"] >= 2
        # AND nothing retries or catches PartialFailureError: that batch must fail, count
        # against ToleratedFailurePercentage and wait for a redrive
        assert "Catch" not in task
        caught_all = {"States.ALL", "States.TaskFailed", "PartialFailureError"}
        assert not caught_all & set(retry["ErrorEquals"])


def test_every_batch_runs_with_fail_on_error_forced_on() -> None:
    states = definition()["States"]

    # THEN the input to the Maps merges {"fail_on_error": true} over the user's options,
    # last, so it wins (run for real by tests/functional/test_stepfunctions_cli.py)
    assert states["ForceFailOnError"]["Result"] == {"fail_on_error": True}
    merged = states["BuildMapInput"]["Parameters"]["options.$"]
    assert merged == "States.JsonMerge($.options, $.forced_options, false)"
    assert states["ForceFailOnError"]["ResultPath"] == "$.forced_options"


# ------------------------------------------------------------------- incremental schedule


def test_the_schedule_is_off_unless_its_expression_is_set() -> None:
    template = load_template()
    parameters, conditions = template["Parameters"], template["Conditions"]
    # THEN no expression by default, and everything scheduling depends on that condition
    assert parameters["ScheduleExpression"]["Default"] == ""
    assert conditions["HasSchedule"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ScheduleExpression"}, ""]}]
    }
    scheduling = {
        name
        for name, resource in template["Resources"].items()
        if "Schedule" in resource["Type"] or name.startswith("IngestSchedule")
    }
    assert scheduling == {"IngestSchedule", "IngestScheduleRole"}
    for name in scheduling:
        assert template["Resources"][name]["Condition"] == "HasSchedule"
    assert template["Outputs"]["IngestScheduleName"]["Condition"] == "HasSchedule"
    # AND a schedule without an event is refused before anything is created
    rule = template["Rules"]["ScheduleNeedsAnEvent"]
    assert rule["RuleCondition"] == conditions["HasSchedule"]


def test_the_schedule_invokes_the_function_with_the_event_in_utc(
    transformed: dict[str, Any],
) -> None:
    schedule = transformed["Resources"]["IngestSchedule"]["Properties"]
    assert schedule["Target"]["Arn"] == {"Fn::GetAtt": ["IngestFunction", "Arn"]}
    assert schedule["Target"]["Input"] == {"Ref": "ScheduleEvent"}
    assert schedule["ScheduleExpression"] == {"Ref": "ScheduleExpression"}
    assert schedule["ScheduleExpressionTimezone"] == "UTC"  # as relative dates are
    assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": ["IngestScheduleRole", "Arn"]}


def test_the_schedule_role_may_only_invoke_the_ingest_function(
    transformed: dict[str, Any],
) -> None:
    role = transformed["Resources"]["IngestScheduleRole"]["Properties"]
    # THEN only EventBridge Scheduler of this account assumes it
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    # AND its one permission is lambda:InvokeFunction on exactly that function
    statements = _role_statements(transformed, "IngestScheduleRole")
    assert [(_actions(s), s["Resource"]) for s in statements] == [
        ({"lambda:InvokeFunction"}, {"Fn::GetAtt": ["IngestFunction", "Arn"]})
    ]


def test_an_incremental_event_for_the_schedule_parses() -> None:
    # GIVEN the kind of event docs/SCALE_OUT.md shows for ScheduleEvent
    from ingest_core import parse_event
    from ingest_core.netguard import NetPolicy

    event = json.loads((ROOT / "docs" / "examples" / "incremental-event.json").read_text())
    job = parse_event(event, default_request_id="scheduled-1", policy=NetPolicy())
    # THEN it is an incremental range with relative bounds, resolved, and no fixed request id
    assert "request_id" not in event
    assert job.date_range is not None and job.date_range.incremental
    assert job.request_id == "scheduled-1"


def test_the_batch_size_is_given_or_defaults_by_whether_the_run_packs() -> None:
    # GIVEN the states between the input check and the Map input
    states = definition()["States"]
    values = substitutions()
    choice = states["ChooseBatchSize"]
    # THEN an explicit max_items_per_batch wins, a packed run takes the packed default,
    # and any other run the plain one; the Map input carries the choice
    given, packed = choice["Choices"]
    assert given == {
        "Variable": "$.max_items_per_batch",
        "IsPresent": True,
        "Next": "BuildMapInput",
    }
    assert packed["Variable"] == "$.options.pack" and packed["IsPresent"] is True
    assert states[packed["Next"]]["Result"] == int(values["MaxItemsPerPackedBatch"])
    assert states[choice["Default"]]["Result"] == int(values["MaxItemsPerBatch"])
    for name in (packed["Next"], choice["Default"]):
        assert states[name]["ResultPath"] == "$.max_items_per_batch"
        assert states[name]["Next"] == "BuildMapInput"
    assert states["ForceFailOnError"]["Next"] == "ChooseBatchSize"
    parameters = states["BuildMapInput"]["Parameters"]
    assert parameters["max_items_per_batch.$"] == "$.max_items_per_batch"
    # AND the packed default is larger: it decides how many objects a backfill writes
    assert int(values["MaxItemsPerPackedBatch"]) > int(values["MaxItemsPerBatch"])
