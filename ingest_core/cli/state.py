"""``fanout-ingest state show|set|clear``: the watermark of incremental runs.

The state object is found the way ``backfill --incremental`` finds it: beside
the objects under ``--dest`` (an S3 bucket and prefix, or a local folder), at
``{source_id}/_state/{state_key}.json``. The key is given (``--state-key``) or
derived like a run derives it (``--endpoint`` plus ``--param``, ``--step`` and
``--query`` when they differ from the defaults).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ingest_core import loops
from ingest_core.cli.backfill import DEFAULT_FORMAT, DEFAULT_PARAM, DEFAULT_STEP, parse_dest
from ingest_core.cli.common import EXIT_OK, PROG, Command, CommandError, UsageError, key_value
from ingest_core.errors import StateError
from ingest_core.events import SOURCE_ID_RE
from ingest_core.planner import parse_value
from ingest_core.ranges import STATE_KEY_RE
from ingest_core.settings import Settings
from ingest_core.state import (
    LocalStateStore,
    S3StateStore,
    StateStore,
    check_state,
    default_state_key,
    overwrite,
    state_object_key,
)

SET_REQUEST_ID = "fanout-ingest-state-set"

EPILOG = """\
examples:
  fanout-ingest state show --dest ./data --source-id api-1 --endpoint https://api.example.com/v1/data
  fanout-ingest state set 2025-03-31 --dest s3://my-raw-bucket/landing --source-id api-1 \\
      --state-key daily
  fanout-ingest state clear --dest ./data --source-id api-1 --state-key daily

'set' may move the watermark back (the next incremental run then fetches again
from the day after it); 'clear' makes the next run start at its --start.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``show``, ``set`` and ``clear`` with their shared flags."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (
        ("show", "print the state object as JSON"),
        ("set", "write a watermark (forward or back)"),
        ("clear", "remove the state object"),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        if name == "set":
            sub.add_argument("watermark", metavar="DATE", help="the last date that landed")
        _add_location(sub)


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dest", required=True, metavar="DEST", help="s3://bucket[/prefix] or a local folder"
    )
    parser.add_argument("--source-id", required=True, metavar="ID", help="the runs' --source-id")
    parser.add_argument("--state-key", metavar="KEY", help="the runs' --state-key")
    derive = parser.add_argument_group("or derive the key like a run does")
    derive.add_argument("--endpoint", metavar="URL", help="the runs' --endpoint")
    derive.add_argument("--param", default=DEFAULT_PARAM, metavar="NAME")
    derive.add_argument("--step", default=DEFAULT_STEP)
    derive.add_argument("--query", metavar="K=V", type=key_value, action="append")
    parser.add_argument(
        "--format",
        default=DEFAULT_FORMAT,
        metavar="FMT",
        help="the runs' date format; the watermark must be a date of it (default: %%Y-%%m-%%d)",
    )


def _state_key(args: argparse.Namespace) -> str:
    if args.state_key is not None:
        if args.endpoint is not None:
            raise UsageError(("--state-key", "give --state-key or --endpoint, not both"))
        if not STATE_KEY_RE.match(args.state_key):
            raise UsageError(("--state-key", "must be 1-64 letters, digits and ._-"))
        return str(args.state_key)
    if args.endpoint is None:
        raise UsageError(("--state-key", "required (or --endpoint to derive it)"))
    return default_state_key(args.endpoint, args.param, args.step, dict(args.query or []))


def _location(args: argparse.Namespace) -> tuple[Any, str]:
    if not SOURCE_ID_RE.match(args.source_id) or ".." in args.source_id.split("/"):
        raise UsageError(("--source-id", f"{args.source_id!r} is not a safe source id"))
    dest = parse_dest(args.dest)
    return dest, state_object_key(args.source_id, _state_key(args), dest.prefix)


@asynccontextmanager
async def _store(args: argparse.Namespace) -> AsyncIterator[StateStore]:
    dest, key = _location(args)
    if dest.folder is not None:
        yield LocalStateStore(dest.folder / key)
        return
    from ingest_core.runtime import aws_session

    endpoint = Settings.from_env().s3_endpoint_url
    async with aws_session().client("s3", endpoint_url=endpoint) as client:
        yield S3StateStore(client, dest.bucket, key)


async def _act(args: argparse.Namespace) -> dict[str, Any]:
    async with _store(args) as store:
        where = store.describe()
        if args.action == "set":
            state = await overwrite(
                store, args.watermark, fmt=args.format, request_id=SET_REQUEST_ID
            )
            return {
                "state": where,
                "watermark": state.watermark,
                "landed": list(state.landed),
                "updated_at": state.updated_at,
            }
        if args.action == "clear":
            return {"state": where, "removed": await store.delete()}
        current = await store.read()
        if current is None:
            return {"state": where, "watermark": None}
        check_state(current.state, args.format, where)
        return {
            "state": where,
            "watermark": current.state.watermark,
            "landed": list(current.state.landed),
            "updated_at": current.state.updated_at,
            "request_id": current.state.request_id,
        }


def run(args: argparse.Namespace) -> int:
    """Show, set or clear the watermark; returns the exit code."""
    if args.action == "set":
        try:
            parse_value(args.watermark, args.format)
        except ValueError as exc:
            raise UsageError(("DATE", str(exc))) from None
    try:
        body = loops.run(_act(args))
    except StateError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:
        if not type(exc).__module__.startswith(("botocore", "aiobotocore", "boto3")):
            raise
        raise CommandError(f"{args.action}: {type(exc).__name__}: {exc}") from exc
    print(json.dumps(body, indent=2))
    return EXIT_OK


COMMAND = Command(
    name="state",
    help="show, set or clear the watermark of incremental runs",
    description=(
        "Show, set or clear the watermark that backfill --incremental (and incremental"
        f" Lambda events) keep at {{source_id}}/_state/{{state_key}}.json. See {PROG}"
        " state ACTION --help."
    ),
    add_arguments=add_arguments,
    run=run,
    epilog=EPILOG,
)
