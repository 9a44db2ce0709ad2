"""``fanout-ingest launch``: start the Step Functions backfill over a plan in S3.

The work is ``ingest_core.stepfunctions`` (``start_backfill``, ``watch_execution``;
imported lazily, as only they need boto3). This module first checks the files with
the Lambda's own validation (``parse_event``), so a bad ``api_config`` fails here
rather than in ten thousand child executions, and turns the library's
``InvalidEventError`` fields into flag names. The execution name becomes every
batch's ``request_id`` (CONTRACT §3), so objects keep their keys across retries and
redrives.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from ingest_core.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    Command,
    UsageError,
    aws_errors,
    load_json_object,
)
from ingest_core.errors import InvalidEventError
from ingest_core.events import parse_event

SUCCEEDED = "SUCCEEDED"
# Fields the stepfunctions library names -> the flag that set them.
LIBRARY_FIELD_FLAGS = {
    "name": "--name",
    "plan_uri": "--plan",
    "api_config": "--api-config",
    "options": "--options",
    "max_items_per_batch": "--max-items-per-batch",
}
COUNT_FIELDS = ("succeeded", "failed", "running", "pending", "timedOut", "aborted", "total")

EPILOG = """\
example:
  fanout-ingest plan --start 2020-01-01 --end 2024-12-31 --jsonl --upload s3://my-plans/daily.jsonl
  fanout-ingest launch \\
      --state-machine arn:aws:states:eu-west-1:123456789012:stateMachine:fanout-backfill \\
      --plan s3://my-plans/daily.jsonl --api-config api.json --name daily-2020-2024 --wait
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``launch`` flags."""
    parser.add_argument(
        "--state-machine", required=True, metavar="ARN", help="the backfill state machine's ARN"
    )
    parser.add_argument(
        "--plan",
        required=True,
        metavar="s3://BUCKET/KEY",
        help="the plan (fanout-ingest plan --upload)",
    )
    parser.add_argument(
        "--api-config",
        required=True,
        metavar="FILE",
        help="a JSON file holding the event's api_config",
    )
    parser.add_argument("--options", metavar="FILE", help="a JSON file holding the event's options")
    parser.add_argument(
        "--max-items-per-batch",
        type=int,
        metavar="N",
        help="plan items per Lambda invocation (default: the stack's MaxItemsPerPackedBatch"
        " when the options pack, else MaxItemsPerBatch); with packing it decides how many"
        " objects the backfill writes",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="the execution name, also the request_id in every key (1-80 of A-Z a-z 0-9 _ . -;"
        " default: backfill-<source_id>-<UTC time>-<4 hex>)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the execution, printing item counts, to its end"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between polls with --wait (default: 5)",
    )


def checked_input(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(api_config, options)`` from their files, validated as the Lambda would.

    Raises:
        UsageError: naming the flag (and the field inside its file) and the reason.
    """
    api_config = load_json_object(args.api_config, "--api-config")
    options = load_json_object(args.options, "--options") if args.options else {}
    probe: dict[str, Any] = {
        "api_config": api_config,
        "options": options,
        "request_id": "launch-check",
        "batch": [{}],
    }
    try:
        parse_event(probe)
    except InvalidEventError as exc:
        problems = [(_file_flag(name), f"{name}: {reason}") for name, reason in exc.problems]
        raise UsageError(*problems) from None
    return api_config, options


def _file_flag(field: str) -> str:
    return "--options" if field.startswith("options") else "--api-config"


def _library_usage_error(exc: InvalidEventError) -> UsageError:
    return UsageError(
        *[
            (LIBRARY_FIELD_FLAGS.get(name.split(".")[0], name), reason)
            for name, reason in exc.problems
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Start the execution, print its ARN, and with ``--wait`` follow it to the end."""
    if args.poll_interval <= 0:
        raise UsageError(("--poll-interval", "must be more than 0 seconds"))
    api_config, options = checked_input(args)
    from ingest_core.stepfunctions import start_backfill  # boto3: only when launching

    try:
        with aws_errors("StartExecution"):
            execution_arn = start_backfill(
                args.state_machine,
                plan_uri=args.plan,
                api_config=api_config,
                options=options,
                name=args.name,
                max_items_per_batch=args.max_items_per_batch,
            )
    except InvalidEventError as exc:
        raise _library_usage_error(exc) from None
    print(execution_arn, flush=True)
    if not args.wait:
        return EXIT_OK
    return _wait(execution_arn, args.poll_interval)


def _wait(execution_arn: str, poll_s: float) -> int:
    from ingest_core.stepfunctions import watch_execution

    shown: list[str] = []

    def on_update(status: dict[str, Any]) -> None:
        line = format_status(status)
        if not shown or shown[-1] != line:  # one line per change, not per poll
            print(line, file=sys.stderr, flush=True)
            shown.append(line)

    try:
        with aws_errors("DescribeExecution"):
            final = watch_execution(execution_arn, poll_s=poll_s, on_update=on_update)
    except KeyboardInterrupt:
        print(
            f"{PROG} launch: stopped watching; the execution keeps running: {execution_arn}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if final.get("error") or final.get("cause"):
        print(f"{final.get('error')}: {final.get('cause')}", file=sys.stderr)
    return EXIT_OK if final.get("status") == SUCCEEDED else EXIT_FAILED


def format_status(status: Mapping[str, Any]) -> str:
    """``RUNNING  succeeded=120 failed=0 running=40 pending=9840 ... total=10000``."""
    counts = status.get("item_counts") or {}
    shown = " ".join(f"{name}={counts[name]}" for name in COUNT_FIELDS if name in counts)
    return f"{status.get('status', '?')}  {shown}".rstrip()


COMMAND = Command(
    name="launch",
    help="start the Step Functions Distributed Map backfill over a plan in S3",
    description=(
        "Start an execution of the backfill state machine over a plan in S3 (see"
        " 'fanout-ingest plan --upload'); print the execution ARN and, with --wait, item"
        " counts until it ends. Exit 0 when it succeeded."
    ),
    add_arguments=add_arguments,
    run=run,
    epilog=EPILOG,
)
