"""A three-item backfill through a deployed stack (template.yaml), end to end.

Off by default. To run it against a stack deployed with ``sam deploy``:

    FANOUT_E2E_STACK=fanout-ingest \\
    FANOUT_E2E_ENDPOINT=https://api.example.com/v1/data \\
    AWS_PROFILE=... AWS_REGION=... \\
    pytest -m e2e tests/e2e

The endpoint must be a public https API that answers JSON to a GET with query
parameters (the handler keeps only JSON bodies by default), and its host must pass the
stack's ``AllowedHosts``. The test removes the objects it wrote.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ingest_core.stepfunctions import start_backfill, upload_plan, watch_execution

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SOURCE_ID = "fanout-e2e"
ITEMS = 3
POLL_S = 5.0
# 10 minutes: three items take seconds; the rest is cold starts and Map run start-up.
MAX_POLLS = 120


@pytest.fixture(scope="module")
def deployed() -> Iterator[dict[str, Any]]:
    """Stack outputs plus ready clients, or a skip saying what is missing.

    Module-scoped on purpose: it runs before the suite's autouse fixture swaps every
    AWS_* variable for dummies, and the clients it makes keep the real credentials.
    """
    stack = os.environ.get("FANOUT_E2E_STACK")
    endpoint = os.environ.get("FANOUT_E2E_ENDPOINT")
    if not stack or not endpoint:
        pytest.skip("set FANOUT_E2E_STACK and FANOUT_E2E_ENDPOINT to run against a stack")
    import boto3

    session = boto3.session.Session()
    if session.get_credentials() is None:
        pytest.skip("no AWS credentials in the environment")
    cloudformation = session.client("cloudformation")
    s3 = session.client("s3")
    sfn = session.client("stepfunctions")
    try:
        (description,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}
        yield {"outputs": outputs, "endpoint": endpoint, "s3": s3, "sfn": sfn}
    finally:
        for client in (cloudformation, s3, sfn):
            client.close()


def test_a_three_item_plan_lands_in_the_raw_bucket(deployed: dict[str, Any]) -> None:
    outputs, s3, sfn = deployed["outputs"], deployed["s3"], deployed["sfn"]
    bucket = outputs["RawBucketName"]
    plan_uri = f"{outputs['PlanUriPrefix']}e2e/{uuid.uuid4().hex}.jsonl"
    written: list[str] = [plan_uri.removeprefix(f"s3://{bucket}/")]
    try:
        # GIVEN a three-item plan in the stack's plan prefix
        items = [{"index": i, "params": {"fanout_e2e": str(i)}} for i in range(ITEMS)]
        upload_plan(items, plan_uri, jsonl=True, s3_client=s3)

        # WHEN a backfill runs over it
        api_config = {
            "endpoint": deployed["endpoint"],
            "raw_bucket": bucket,
            "source_id": SOURCE_ID,
        }
        execution_arn = start_backfill(
            outputs["StateMachineArn"],
            plan_uri=plan_uri,
            api_config=api_config,
            options={"concurrency": 3},
            name=None,
            sfn_client=sfn,
        )
        final = watch_execution(execution_arn, sfn_client=sfn, poll_s=POLL_S, max_polls=MAX_POLLS)
        name = final["name"]
        written += _keys(s3, bucket, f"{SOURCE_ID}/{name}")
        written += _keys(s3, bucket, f"{SOURCE_ID}/_manifests/{name}")
        written += _result_writer_keys(s3, final)

        # THEN the execution succeeded, every item counted as succeeded
        assert final["status"] == "SUCCEEDED", final
        if final["map_runs"]:
            assert final["item_counts"]["succeeded"] == ITEMS, final["item_counts"]
            assert final["item_counts"]["failed"] == 0
        # AND each item's object is under the default key, request_id = execution name
        for index in range(ITEMS):
            head = s3.head_object(Bucket=bucket, Key=f"{SOURCE_ID}/{name}-{index}.json")
            assert head["ContentLength"] > 0
    finally:
        for key in written:
            s3.delete_object(Bucket=bucket, Key=key)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _result_writer_keys(s3: Any, final: dict[str, Any]) -> list[str]:
    """What the Map's ResultWriter left for this run (manifest.json and its results)."""
    details = ((final.get("output") or {}).get("map_run") or {}).get("ResultWriterDetails")
    if not details:
        return []
    folder = details["Key"].rpartition("/")[0]
    return _keys(s3, details["Bucket"], f"{folder}/")
