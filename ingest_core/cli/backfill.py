"""``fanout-ingest backfill``: a date range, or a re-drive file, into S3 or a local folder.

The flags become an event (``date_range``, or ``Items`` for ``--retry-from``)
that goes through ``parse_event``, so validation is the Lambda's, and the job
runs through ``runtime.execute`` like any invocation: lazily over the range,
with progress from ``on_item`` and a clean stop on Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from typing import Any

from ingest_core.cli import runner
from ingest_core.cli.common import Command, UsageError, resolve_bounds, utc_now
from ingest_core.cli.redrive import default_redrive_path
from ingest_core.cli.runner import Built, Dest, given, parse_dest
from ingest_core.config import PACK_KEY_TEMPLATES
from ingest_core.events import Job
from ingest_core.keys import INCREMENTAL_PACK_KEY_TEMPLATES, incremental_key_template

__all__ = ["COMMAND", "Dest", "parse_dest"]

DEFAULT_PARAM = "date"
DEFAULT_STEP = "1d"
DEFAULT_FORMAT = "%Y-%m-%d"
REQUEST_ID_PREFIX = "backfill"
MAX_REQUEST_ID = 128
# backfill's own flags a re-drive file replaces: it carries what they would set.
_EVENT_FLAGS = ("start", "end", "param", "step", "format", "state_key", "incremental")

EPILOG = """\
examples:
  fanout-ingest backfill --endpoint https://api.example.com/v1/data --source-id api-1 \\
      --start 2025-01-01 --end 2025-03-31 --dest s3://my-raw-bucket/landing
  fanout-ingest backfill ... --dest ./data --skip-existing      # resume onto the same keys
  fanout-ingest backfill --retry-from fanout-redrive-backfill-20250101-20250331-1d.jsonl
  fanout-ingest backfill ... --start 2025-01-01 --end yesterday --incremental
      # only the dates after the watermark; it then advances over those that landed

exit status: 0 every item succeeded; 1 some failed or were not attempted (a re-drive
file lists exactly those); 2 bad usage; 130 stopped by Ctrl-C (re-drive file written).
"""


# ------------------------------------------------------------------ request id


def default_request_id(
    start: str, end: str, step: str, *, param: str, fmt: str, extra: dict[str, str]
) -> str:
    """``backfill-20250101-20250331-1d``: the same flags always give the same id.

    So a re-run with ``--skip-existing`` resumes onto the same keys. A non-default
    ``--param``, ``--format`` or ``--query`` adds a short hash of them, so that two
    different queries over one range never share keys.
    """
    parts = [REQUEST_ID_PREFIX, _alnum(start), _alnum(end), _alnum(step)]
    if param != DEFAULT_PARAM or fmt != DEFAULT_FORMAT or extra:
        canonical = json.dumps([param, fmt, extra], sort_keys=True)
        parts.append(hashlib.sha256(canonical.encode()).hexdigest()[:8])
    return "-".join(parts)[:MAX_REQUEST_ID]


def _alnum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


# ----------------------------------------------------------------------- flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``backfill`` flags: the dates, and everything ``runner`` shares."""
    what = parser.add_argument_group("what to fetch")
    runner.add_source_flags(what)
    _add_dates(what)
    runner.add_dest_flags(
        parser,
        request_id_help="the {request_id} in keys; default: derived from the range and step"
        " (backfill-20250101-20250331-1d), so a re-run with --skip-existing resumes"
        " onto the same keys",
    )
    incremental = parser.add_argument_group("incremental runs")
    incremental.add_argument(
        "--incremental",
        action="store_true",
        help="start after the watermark kept beside the objects ({source_id}/_state/),"
        " and advance it to the last date up to which every item succeeded",
    )
    incremental.add_argument(
        "--state-key",
        metavar="KEY",
        help="name of the watermark (default: a hash of endpoint, param, step and --query)",
    )
    runner.add_run_flags(parser)


def _add_dates(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--start",
        metavar="DATE",
        help="first date (inclusive): ISO, today, yesterday, today-Nd or now-Nh (UTC)",
    )
    group.add_argument("--end", metavar="DATE", help="last date (inclusive; as --start)")
    group.add_argument(
        "--param",
        metavar="NAME",
        help=f"query parameter carrying the date (default: {DEFAULT_PARAM})",
    )
    group.add_argument(
        "--step", help=f"Nh, Nd, Nw or Nmo (default: {DEFAULT_STEP}); Nh needs ISO date-times"
    )
    group.add_argument(
        "--format", metavar="FMT", help="strftime format of each date (default: %%Y-%%m-%%d)"
    )


# ------------------------------------------------------------------- the event


def _build(args: argparse.Namespace) -> Built:
    runner.require(args, "endpoint", "source_id", "start", "end", "dest")
    dest = parse_dest(args.dest)
    step = given(args.step, DEFAULT_STEP)
    # Resolved here, not in parse_event, so the default request id names real dates:
    # "today" must not give every day's run the same keys.
    start, end = resolve_bounds(args.start, args.end, step, utc_now())
    date_range: dict[str, Any] = {
        "start": start,
        "end": end,
        "param": given(args.param, DEFAULT_PARAM),
        "step": step,
        "format": given(args.format, DEFAULT_FORMAT),
        "extra_params": dict(args.query or []),
    }
    if args.incremental:
        date_range["incremental"] = True
    if args.state_key is not None:
        if not args.incremental:
            raise UsageError(("--state-key", "only means something with --incremental"))
        date_range["state_key"] = args.state_key
    request_id = args.request_id or default_request_id(
        date_range["start"],
        date_range["end"],
        date_range["step"],
        param=date_range["param"],
        fmt=date_range["format"],
        extra=date_range["extra_params"],
    )
    # An incremental run's default key names the step, so a day fetched again
    # overwrites itself (CONTRACT §15).
    default_key = (
        (lambda paged: incremental_key_template(date_range["param"], paged=paged))
        if args.incremental
        else None
    )
    # Packed, one object per step, named by it (CONTRACT §15).
    packs = INCREMENTAL_PACK_KEY_TEMPLATES if args.incremental else PACK_KEY_TEMPLATES
    base = runner.base_event(args, dest, default_key=default_key, pack_defaults=packs)
    event = {**base, "request_id": request_id, "date_range": date_range}
    return Built(event, dest)


def prepare(args: argparse.Namespace) -> runner.Prepared:
    """Flags (or a re-drive file) -> a validated job.

    Raises:
        UsageError: naming the flag and the reason.
    """
    return runner.prepare(
        args,
        _build,
        event_flags=_EVENT_FLAGS,
        redrive_path=default_redrive_path,
        command="backfill",
    )


# ------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Run ``backfill``; returns the exit code."""
    prepared = prepare(args)
    title = f"backfill {prepared.job.request_id} -> {prepared.dest.text}"
    return runner.run_prepared(
        args, prepared, command="backfill", title=title, extra_report=_report_incremental
    )


def _report_incremental(result: dict[str, Any], job: Job) -> None:
    if "incremental" not in result:
        return
    info = result["incremental"]
    before, after = info["watermark_before"], info["watermark_after"]
    if info["state_error"] is not None:
        print(f"watermark: stays at {before or '(none)'}: the state was {info['state_error']}")
    elif after != before:
        print(f"watermark: {before or '(none)'} -> {after}")
    elif not info["nothing_new"]:
        print(f"watermark: stays at {before or '(none)'} (the first date fetched did not land)")
    if info["nothing_new"]:
        end = job.date_range.end if job.date_range else "?"
        print(f"nothing new: every step up to {end} has landed (watermark {after})")
    if info["already_landed"]:
        print(f"already landed, not fetched again: {_steps(info['already_landed'])}")
    if info["steps_behind"]:
        print(f"still behind: {_steps(info['steps_behind'])} (the next run fetches them)")
    print(f"state: {info['state']}")


def _steps(count: int) -> str:
    return f"{count:,} step{'' if count == 1 else 's'}"


COMMAND = Command(
    name="backfill",
    help="fetch one request per date of a range into S3 or a local folder",
    description=(
        "Fetch one request per step of a date range (inclusive of both ends) and stream"
        " each body into S3 or a local folder; the same engine as the Lambda handler."
    ),
    add_arguments=add_arguments,
    run=run,
    epilog=EPILOG,
)
