"""``fanout-ingest run EVENT.json``: the Lambda handler, invoked locally on an event file.

The handler is called exactly as Lambda calls it, with a local context that has
a real deadline (``--timeout``) and a fresh ``aws_request_id``; the result JSON
goes to stdout. Powertools writes its log lines and EMF metrics to stdout too,
so for the duration of the call stdout is pointed at stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ingest_core.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    Command,
    UsageError,
)
from ingest_core.errors import IngestError, InvalidEventError, PartialFailureError

DEFAULT_TIMEOUT_S = 900.0  # Lambda's maximum


class LocalContext:
    """What ``lambda_handler`` reads from a Lambda context, with a real deadline."""

    function_name = "fanout-ingest-local"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:fanout-ingest-local"
    memory_limit_in_mb = 1024
    log_group_name = "/aws/lambda/fanout-ingest-local"
    log_stream_name = "local"

    def __init__(self, timeout_s: float) -> None:
        """Args:
        timeout_s: seconds from now until the deadline.
        """
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left, counting down from ``timeout_s``; never negative."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``run`` flags."""
    parser.add_argument("event", metavar="EVENT.json", help="the event file (- for stdin)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"the invocation's deadline, like the Lambda timeout (default: {DEFAULT_TIMEOUT_S:g})",
    )


def read_event(path: str) -> Any:
    """The decoded event file (any JSON value: the handler judges its shape)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(("EVENT.json", f"cannot read {path}: {exc.strerror or exc}")) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(("EVENT.json", f"{path} is not valid JSON: {exc}")) from None


def run(args: argparse.Namespace) -> int:
    """Invoke the handler on the event; 0 all succeeded, 1 some did not, 2 bad event."""
    if args.timeout <= 0:
        raise UsageError(("--timeout", "must be more than 0 seconds"))
    event = read_event(args.event)
    context = LocalContext(args.timeout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = _invoke(event, context)
    except InvalidEventError as exc:
        print(f"{PROG} run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PartialFailureError as exc:  # options.fail_on_error
        _print_result(exc.result)
        return EXIT_FAILED
    except IngestError as exc:
        print(f"{PROG} run: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG} run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_result(result)
    return EXIT_OK if result.get("status") == "SUCCESS" else EXIT_FAILED


def _invoke(event: Any, context: LocalContext) -> dict[str, Any]:
    # Imported here, under the stdout redirect, so Powertools' Logger binds its
    # handler to stderr; importing it also costs the Lambda's cold start.
    from handler.app import lambda_handler

    result: dict[str, Any] = lambda_handler(event, context)
    return result


def _print_result(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


COMMAND = Command(
    name="run",
    help="invoke the Lambda handler locally on an event file",
    description=(
        "Invoke handler.app.lambda_handler on EVENT.json with a local context (a real"
        " deadline from --timeout, a fresh aws_request_id) and print the result JSON."
        " Exit 0 when every item succeeded, 1 otherwise, 2 for an invalid event."
    ),
    add_arguments=add_arguments,
    run=run,
)
