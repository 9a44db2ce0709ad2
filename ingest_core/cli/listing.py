"""``fanout-ingest list ITEMS``: one request per line of a JSONL or CSV file, or stdin.

The list fans out like a backfill's dates do, with every flag ``backfill`` has
(they are declared once, in ``runner``): destination, request shape, pagination,
packing, options, re-drive file and progress. Item *i* is the *i*-th params set
of the list (0-based, blank lines skipped), so its key is stable for the same
list; ``--query`` params are added to every item (a line's own value wins).

The file is checked whole before the first request (``params_input``) and then
read lazily as the workers take items: memory stays flat however long the list.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterator

import orjson

from ingest_core.cli import runner
from ingest_core.cli.common import Command, UsageError, usage_error_from
from ingest_core.cli.params_input import FORMATS, ParamsList, open_params
from ingest_core.cli.redrive import RETRY_FLAG, default_redrive_path
from ingest_core.cli.runner import Built, parse_dest
from ingest_core.errors import InvalidEventError
from ingest_core.events import Job, PlannedItem, with_plan

NAME = "list"
ITEMS = "ITEMS"
REQUEST_ID_PREFIX = "list"
DIGEST_CHARS = 12
# list's own flags a re-drive file replaces (ITEMS is checked on its own).
_EVENT_FLAGS = ("input_format",)

EPILOG = """\
examples:
  fanout-ingest list ids.jsonl --endpoint https://api.example.com/v1/items \\
      --source-id items --dest s3://my-raw-bucket/landing
  fanout-ingest list stations.csv --endpoint ... --source-id weather --dest ./data \\
      --paginate auto --records-path rows
  printf '{"id": 1}\\n{"id": 2}\\n' | fanout-ingest list - --endpoint ... --dest ./data
  fanout-ingest list --retry-from fanout-redrive-list-ids-0123456789ab.jsonl

input: JSONL (one JSON object of params per line) or CSV (a header row of param
names; an empty cell leaves that param out), by suffix (.jsonl, .ndjson, .json,
.csv), by --input-format, or by the first character ('{' is JSONL).

exit status: 0 every item succeeded; 1 some failed or were not attempted (a re-drive
file lists exactly those); 2 bad usage or a bad line (named by its number); 130
stopped by Ctrl-C (re-drive file written).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``list`` flags: the list, and everything ``runner`` shares."""
    parser.add_argument(
        "items",
        metavar=ITEMS,
        nargs="?",
        help="a .jsonl or .csv file of query-parameter sets, or - for stdin",
    )
    what = parser.add_argument_group("what to fetch")
    runner.add_source_flags(what)
    what.add_argument(
        "--input-format",
        choices=FORMATS,
        help="how to read ITEMS (default: by its suffix, else by its first character)",
    )
    runner.add_dest_flags(
        parser,
        request_id_help="the {request_id} in keys; default: list-<file name>-<hash of the"
        " items and --query>, so the same list resumes onto the same keys (--skip-existing)",
    )
    runner.add_run_flags(parser)


def default_request_id(params: ParamsList, query: dict[str, str]) -> str:
    """``list-ids-0123456789ab``: the same items and ``--query`` always give the same id."""
    digest = hashlib.sha256(params.digest.encode())
    digest.update(orjson.dumps(query, option=orjson.OPT_SORT_KEYS))
    return f"{REQUEST_ID_PREFIX}-{params.stem()}-{digest.hexdigest()[:DIGEST_CHARS]}"


def _builder(params: ParamsList) -> Callable[[argparse.Namespace], Built]:
    def build(args: argparse.Namespace) -> Built:
        runner.require(args, "endpoint", "source_id", "dest")
        dest = parse_dest(args.dest)
        query = dict(args.query or [])
        with contextlib.closing(params.rows()) as rows:
            first = {**query, **next(rows)}
        request_id = args.request_id or default_request_id(params, query)
        # The event carries the first item, so parse_event judges the params and keys
        # the Lambda would; the job then takes the whole list, read lazily.
        event = {**runner.base_event(args, dest), "request_id": request_id, "batch": [first]}
        return Built(event, dest, finish=lambda job: _whole_list(job, params, query))

    return build


def _whole_list(job: Job, params: ParamsList, query: dict[str, str]) -> Job:
    def plan() -> Iterator[PlannedItem]:
        for index, row in zip(itertools.count(), params.rows(), strict=False):
            yield PlannedItem(index, {**query, **row})

    try:
        return with_plan(job, plan, params.count)
    except InvalidEventError as exc:
        raise usage_error_from(exc) from None


def _prepare(args: argparse.Namespace, params: ParamsList | None) -> runner.Prepared:
    def no_list(args: argparse.Namespace) -> Built:
        raise AssertionError("only a re-drive runs without a list")

    return runner.prepare(
        args,
        _builder(params) if params is not None else no_list,
        event_flags=_EVENT_FLAGS,
        redrive_path=default_redrive_path,
        command=NAME,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``list``; returns the exit code."""
    if args.retry_from is not None:
        if args.items is not None:
            reason = f"cannot be combined with {RETRY_FLAG}: the re-drive file lists the items"
            raise UsageError((ITEMS, reason))
        return _run(args, _prepare(args, None), None)
    if args.items is None:
        raise UsageError((ITEMS, "required: a .jsonl or .csv file, or - for stdin"))
    with open_params(args.items, args.input_format, flag=ITEMS) as params:
        return _run(args, _prepare(args, params), params)


def _run(args: argparse.Namespace, prepared: runner.Prepared, params: ParamsList | None) -> int:
    source = f"{params.name if params.name != '-' else 'stdin'} " if params is not None else ""
    title = f"list {source}{prepared.job.request_id} -> {prepared.dest.text}"
    return runner.run_prepared(args, prepared, command=NAME, title=title)


COMMAND = Command(
    name=NAME,
    help="fetch one request per line of a JSONL or CSV file (or stdin) into S3 or a folder",
    description=(
        "Fetch one request per query-parameter set of a JSONL or CSV file (or stdin) and"
        " stream each body into S3 or a local folder, with every flag backfill has; the"
        " same engine as the Lambda handler. The list is checked whole before the first"
        " request and read lazily, so a million lines stay in bounded memory."
    ),
    add_arguments=add_arguments,
    run=run,
    epilog=EPILOG,
)
