"""``fanout-ingest plan``: a date range, or a list, as Distributed Map items, streamed.

Each item is ``{"index": i, "params": {...}}`` (CONTRACT §3): a global index, so a
batch's keys stay the same however Step Functions batches and retries it. The
plan is written one item at a time as the range expands: a 100,000-item plan
never exists as a list. ``--upload`` streams the same lazy items to S3 through
``ingest_core.stepfunctions.upload_plan``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from ingest_core.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    PROG,
    Command,
    UsageError,
    aws_errors,
    flag_for_date_problem,
    key_value,
    non_negative_int,
    positive_int,
    resolve_bounds,
    utc_now,
)
from ingest_core.cli.params_input import FORMATS, ParamsList, open_params
from ingest_core.errors import InvalidEventError
from ingest_core.planner import count_date_range, expand_date_range

JSONL_SUFFIXES = (".jsonl", ".ndjson")  # how the state machine recognises JSON Lines

EPILOG = """\
examples:
  fanout-ingest plan --start 2024-01-01 --end 2024-12-31 > plan.json
  fanout-ingest plan --start 2024-01-31 --end 2024-12-31 --step 1mo --jsonl
  fanout-ingest plan --start today-7d --end yesterday           # dates in UTC
  fanout-ingest plan --start 2000-01-01 --end 2024-12-31 --jsonl --upload s3://my-plans/daily.jsonl
  fanout-ingest plan --from ids.jsonl --jsonl --upload s3://my-plans/ids.jsonl
      # the lines of a list (JSONL or CSV, as 'list' reads them) instead of dates
"""

PlanItems = Callable[[], Iterator[dict[str, Any]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``plan`` flags."""
    parser.add_argument(
        "--start",
        metavar="DATE",
        help="first date: ISO, today, yesterday, today-Nd or now-Nh (UTC)",
    )
    parser.add_argument("--end", metavar="DATE", help="last date (inclusive; as --start)")
    parser.add_argument(
        "--from",
        dest="from_list",
        metavar="FILE",
        help="instead of dates, the params sets of a JSONL or CSV file (- for stdin),"
        " read as 'fanout-ingest list' reads them",
    )
    parser.add_argument(
        "--input-format",
        choices=FORMATS,
        help="how to read --from (default: by its suffix, else by its first character)",
    )
    parser.add_argument(
        "--param",
        default="date",
        metavar="NAME",
        help="parameter carrying the date (default: date)",
    )
    parser.add_argument(
        "--step", default="1d", help="Nh, Nd, Nw or Nmo (default: 1d); Nh needs ISO date-times"
    )
    parser.add_argument(
        "--format",
        default="%Y-%m-%d",
        metavar="FMT",
        help="strftime format of each date (default: %%Y-%%m-%%d)",
    )
    parser.add_argument(
        "--query",
        metavar="K=V",
        type=key_value,
        action="append",
        help="a fixed parameter added to every item (repeatable)",
    )
    parser.add_argument(
        "--index-offset",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="index of the first item (default: 0)",
    )
    parser.add_argument(
        "--jsonl", action="store_true", help="JSON Lines, one item per line, not one JSON array"
    )
    parser.add_argument(
        "--out", metavar="FILE", type=Path, help="write here (atomically) instead of stdout"
    )
    parser.add_argument(
        "--upload",
        metavar="s3://BUCKET/KEY",
        help="upload the plan to S3 for the state machine's ItemReader",
    )
    parser.add_argument(
        "--max-items-per-batch",
        type=positive_int,
        metavar="N",
        help="print (on stderr) the batches and objects a backfill in batches of N makes",
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="... for a packed backfill (default batch size: the stack's MaxItemsPerPackedBatch)",
    )


def batches_line(count: int, batch_size: int | None, *, pack: bool) -> str:
    """How many batches and S3 objects a backfill of ``count`` items makes."""
    from ingest_core.stepfunctions import DEFAULT_ITEMS_PER_BATCH, DEFAULT_ITEMS_PER_PACKED_BATCH

    size = batch_size or (DEFAULT_ITEMS_PER_PACKED_BATCH if pack else DEFAULT_ITEMS_PER_BATCH)
    batches = -(-count // size)
    objects = f"~{batches:,} pack objects" if pack else f"{count:,} objects"
    return (
        f"{PROG} plan: {count:,} items in {batches:,} batches of up to {size:,}:"
        f" {objects} and {batches:,} manifests"
        f" (launch --max-items-per-batch {size})"
    )


def list_items(args: argparse.Namespace, params: ParamsList) -> tuple[PlanItems, int]:
    """The items of ``--from``: item *i* is the list's *i*-th params set, ``--query`` added."""
    extra = dict(args.query or [])

    def items() -> Iterator[dict[str, Any]]:
        for offset, row in enumerate(params.rows(), start=args.index_offset):
            yield {"index": offset, "params": {**extra, **row}}

    return items, params.count


def plan_items(args: argparse.Namespace) -> tuple[PlanItems, int]:
    """A factory of the plan's items (each call starts over) and their count.

    Raises:
        UsageError: bad dates, step or format, or the end before the start.
    """
    extra = dict(args.query or [])
    start, end = resolve_bounds(args.start, args.end, args.step, utc_now())
    try:
        count = count_date_range(start, end, step=args.step)
        expand_date_range(
            start,
            end,
            param=args.param,
            step=args.step,
            fmt=args.format,
            extra_params=extra,
        )
    except ValueError as exc:
        raise UsageError((flag_for_date_problem(str(exc)), str(exc))) from None

    def items() -> Iterator[dict[str, Any]]:
        params = expand_date_range(
            start,
            end,
            param=args.param,
            step=args.step,
            fmt=args.format,
            extra_params=extra,
        )
        for offset, item in enumerate(params, start=args.index_offset):
            yield {"index": offset, "params": item}

    return items, count


def write_plan(items: Iterator[dict[str, Any]], out: IO[bytes], *, jsonl: bool) -> int:
    """Write items as JSON Lines or as one JSON array, one item at a time.

    Returns:
        How many items were written.
    """
    written = 0
    if not jsonl:
        out.write(b"[")
    for item in items:
        if jsonl:
            out.write(orjson.dumps(item) + b"\n")
        else:
            out.write((b"\n" if not written else b",\n") + orjson.dumps(item))
        written += 1
    if not jsonl:
        out.write(b"\n]\n")
    return written


def write_plan_file(path: Path, items: Iterator[dict[str, Any]], *, jsonl: bool) -> int:
    """``write_plan`` into ``path`` through a temporary file, renamed when complete."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") as out:
            written = write_plan(items, out, jsonl=jsonl)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise UsageError(("--out", f"cannot write {path}: {exc.strerror or exc}")) from None
    return written


def upload_target(uri: str, *, jsonl: bool) -> tuple[str, bool]:
    """Check ``--upload`` and decide its format: ``(uri, jsonl)``.

    The state machine reads ``.jsonl``/``.ndjson`` keys as JSON Lines and any
    other key as one JSON array, so the key's extension decides the format, and
    ``--jsonl`` with another extension is refused rather than uploaded unreadable.
    """
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key or key.endswith("/"):
        raise UsageError(("--upload", f"{uri!r} is not of the form s3://bucket/key"))
    by_name = key.lower().endswith(JSONL_SUFFIXES)
    if jsonl and not by_name:
        raise UsageError(("--upload", "a JSON Lines plan needs a key ending in .jsonl or .ndjson"))
    return uri, by_name


def run(args: argparse.Namespace) -> int:
    """Write (and/or upload) the plan; returns the exit code."""
    if args.from_list is None:
        missing = [flag for flag in ("--start", "--end") if getattr(args, flag[2:]) is None]
        if missing:
            raise UsageError(*[(flag, "required (or --from FILE)") for flag in missing])
        return _write(args, *plan_items(args))
    given = [flag for flag in ("--start", "--end") if getattr(args, flag[2:]) is not None]
    if given:
        raise UsageError(*[(flag, "cannot be combined with --from") for flag in given])
    with open_params(args.from_list, args.input_format, flag="--from") as params:
        return _write(args, *list_items(args, params))


def _write(args: argparse.Namespace, items: PlanItems, count: int) -> int:
    if args.max_items_per_batch is not None or args.pack:
        print(batches_line(count, args.max_items_per_batch, pack=args.pack), file=sys.stderr)
    upload = upload_target(args.upload, jsonl=args.jsonl) if args.upload else None
    if args.out is not None:
        write_plan_file(args.out, items(), jsonl=args.jsonl)
        print(f"{PROG} plan: {count:,} items -> {args.out}", file=sys.stderr)
    elif upload is None:
        return _to_stdout(items(), jsonl=args.jsonl)
    if upload is not None:
        uri, jsonl = upload
        _upload(items(), uri, jsonl=jsonl)
        print(f"{PROG} plan: {count:,} items uploaded to {uri}", file=sys.stderr)
    return EXIT_OK


def _upload(items: Iterator[dict[str, Any]], uri: str, *, jsonl: bool) -> None:
    from ingest_core.stepfunctions import upload_plan  # boto3: only when uploading

    try:
        with aws_errors("upload"):
            upload_plan(items, uri, jsonl=jsonl)
    except InvalidEventError as exc:
        raise UsageError(*[("--upload", f"{name}: {why}") for name, why in exc.problems]) from None


def _to_stdout(items: Iterator[dict[str, Any]], *, jsonl: bool) -> int:
    try:
        write_plan(items, sys.stdout.buffer, jsonl=jsonl)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The reader went away (| head): keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return EXIT_OK


COMMAND = Command(
    name="plan",
    help="expand a date range, or a JSONL/CSV list, into Distributed Map items",
    description=(
        "Expand a date range (inclusive of both ends), or the lines of a JSONL or CSV"
        ' list (--from), into Distributed Map items {"index": i, "params": {...}},'
        " streamed to stdout, a file or S3."
    ),
    add_arguments=add_arguments,
    run=run,
    epilog=EPILOG,
)
