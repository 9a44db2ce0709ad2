"""``fanout-ingest backfill``: a date range, or a re-drive file, into S3 or a local folder.

The flags become an event (``date_range``, or ``Items`` for ``--retry-from``)
that goes through ``parse_event``, so validation is the Lambda's, and the job
runs through ``runtime.execute`` like any invocation: lazily over the range,
with progress from ``on_item`` and a clean stop on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_core.cli.common import (
    PROG,
    Command,
    ProgressDisplay,
    UsageError,
    add_option_flags,
    add_progress_flag,
    exit_code_for,
    header_pair,
    key_value,
    load_json_object,
    options_from_args,
    print_failures,
    print_summary,
    resolve_bounds,
    run_async,
    usage_error_from,
    utc_now,
)
from ingest_core.cli.redrive import (
    RedriveContext,
    RedriveWriter,
    default_redrive_path,
    read_redrive,
)
from ingest_core.cli.request_flags import add_request_flags, request_config
from ingest_core.config import PACK_KEY_TEMPLATES
from ingest_core.engine import RunOutcome
from ingest_core.errors import InvalidEventError, SecretResolutionError
from ingest_core.events import Job, parse_event
from ingest_core.keys import (
    DEFAULT_KEY_TEMPLATE,
    PAGINATED_KEY_TEMPLATE,
    incremental_key_template,
)
from ingest_core.netguard import ENV_ALLOW_PRIVATE_NETWORKS, NetPolicy
from ingest_core.results import ItemResult
from ingest_core.settings import Settings

DEFAULT_PARAM = "date"
DEFAULT_STEP = "1d"
DEFAULT_FORMAT = "%Y-%m-%d"
REQUEST_ID_PREFIX = "backfill"
MAX_REQUEST_ID = 128
# parse_event wants a raw_bucket; a local folder has none, so this stands in.
LOCAL_BUCKET = "local-folder"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Flags a re-drive file replaces: it carries what they would set.
_EVENT_FLAGS = (
    "endpoint",
    "source_id",
    "start",
    "end",
    "param",
    "step",
    "format",
    "query",
    "header",
    "secret_header",
    "key_template",
    "records_path",
    "request_id",
    "dest",
    "state_key",
)

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


# ------------------------------------------------------------------------ dest


@dataclass(frozen=True, slots=True)
class Dest:
    """Where objects go: an S3 bucket and key prefix, or a local folder."""

    text: str
    bucket: str | None = None
    prefix: str = ""
    folder: Path | None = None


def parse_dest(text: str) -> Dest:
    """``s3://bucket[/prefix]``, ``file:///path`` or a local folder.

    Raises:
        UsageError: on ``--dest``: an unknown scheme, no bucket, or a file where
            a folder should be.
    """
    match = _SCHEME_RE.match(text)
    scheme = match.group(1).lower() if match else None
    if scheme == "s3":
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(("--dest", f"{text!r} names no bucket: use s3://bucket[/prefix]"))
        prefix = "/".join(part for part in prefix.split("/") if part)
        prefix = f"{prefix}/" if prefix else ""
        return Dest(text=f"s3://{bucket}/{prefix}", bucket=bucket, prefix=prefix)
    if scheme not in (None, "file"):
        raise UsageError(
            (
                "--dest",
                f"unknown scheme {scheme + '://'!r}: use s3://bucket[/prefix] or a local folder",
            )
        )
    folder = Path(text.removeprefix("file://") if scheme else text).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise UsageError(("--dest", f"{folder} exists and is not a folder"))
    return Dest(text=str(folder), folder=folder)


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
    """Declare the ``backfill`` flags."""
    _add_what(parser.add_argument_group("what to fetch"))
    where = parser.add_argument_group("where it goes")
    where.add_argument(
        "--dest",
        metavar="DEST",
        help="s3://bucket[/prefix] (AWS_ENDPOINT_URL_S3 for S3-compatible servers)"
        " or a local folder, laid out like the keys",
    )
    where.add_argument(
        "--key-template",
        metavar="T",
        help=f"object key template (default: {DEFAULT_KEY_TEMPLATE}, or"
        f" {PAGINATED_KEY_TEMPLATE} with pagination); an s3 prefix is put before it",
    )
    where.add_argument(
        "--request-id",
        metavar="ID",
        help="the {request_id} in keys; default: derived from the range and step"
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
    add_request_flags(parser)
    _add_runs(parser.add_argument_group("re-drive and output"))
    add_progress_flag(parser)
    add_option_flags(parser)


def _add_what(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--endpoint", metavar="URL", help="the API endpoint (https)")
    group.add_argument("--source-id", metavar="ID", help="names the source (first key segment)")
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
    group.add_argument(
        "--query",
        metavar="K=V",
        type=key_value,
        action="append",
        help="a fixed parameter added to every request (repeatable)",
    )
    group.add_argument(
        "--header",
        metavar="K:V",
        type=header_pair,
        action="append",
        help="a request header (repeatable; kept in the re-drive file, so use"
        " --secret-header for credentials)",
    )
    group.add_argument(
        "--secret-header",
        metavar="K=REF",
        type=key_value,
        action="append",
        help="a header whose value is read at run time from secretsmanager:NAME[#key]"
        " or ssm:/name (repeatable)",
    )
    group.add_argument(
        "--records-path",
        metavar="PATH",
        help="dotted path of the records array in each body, e.g. data.items",
    )
    group.add_argument(
        "--allow-private-networks",
        action="store_true",
        help=f"let the endpoint be http or a private address"
        f" (as {ENV_ALLOW_PRIVATE_NETWORKS}=true does)",
    )


def _add_runs(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--retry-from",
        metavar="FILE",
        type=Path,
        help="re-run exactly the items of a re-drive file, onto the same keys",
    )
    group.add_argument(
        "--redrive-file",
        metavar="FILE",
        type=Path,
        help="where to list the items that did not succeed (default:"
        " ./fanout-redrive-<request_id>.jsonl, or the --retry-from file)",
    )
    group.add_argument(
        "--options", metavar="FILE", help="a JSON object of options; option flags override it"
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout instead of the summary table",
    )


# ------------------------------------------------------------------- the event


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated job and everything around it."""

    job: Job
    event: dict[str, Any]
    dest: Dest
    policy: NetPolicy
    redrive_path: Path
    allow_private_networks: bool


def _from_flags(args: argparse.Namespace) -> tuple[dict[str, Any], Dest]:
    required = {
        "--endpoint": args.endpoint,
        "--source-id": args.source_id,
        "--start": args.start,
        "--end": args.end,
        "--dest": args.dest,
    }
    missing = [flag for flag, value in required.items() if value is None]
    if missing:
        raise UsageError(*[(flag, "required (or --retry-from FILE)") for flag in missing])
    dest = parse_dest(args.dest)
    step = _given(args.step, DEFAULT_STEP)
    # Resolved here, not in parse_event, so the default request id names real dates:
    # "today" must not give every day's run the same keys.
    start, end = resolve_bounds(args.start, args.end, step, utc_now())
    date_range: dict[str, Any] = {
        "start": start,
        "end": end,
        "param": _given(args.param, DEFAULT_PARAM),
        "step": step,
        "format": _given(args.format, DEFAULT_FORMAT),
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
    event = {
        "api_config": _api_config(args, dest),
        "options": _with_pack_prefix(_options(args), dest.prefix),
        "request_id": request_id,
        "date_range": date_range,
    }
    return event, dest


def _with_pack_prefix(options: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The ``--dest`` prefix goes in front of pack keys too, as in front of item keys."""
    pack = options.get("pack")
    if not prefix or not isinstance(pack, dict):
        return options
    compression = pack.get("compression", "gzip")
    template = pack.get("key_template") or PACK_KEY_TEMPLATES.get(compression, "")
    return {**options, "pack": {**pack, "key_template": prefix + template}}


def _given(value: str | None, default: str) -> str:
    # "" is a value (and a bad one, for the validation to name), not "not given".
    return default if value is None else value


def _api_config(args: argparse.Namespace, dest: Dest) -> dict[str, Any]:
    config: dict[str, Any] = {
        "endpoint": args.endpoint,
        "source_id": args.source_id,
        "raw_bucket": dest.bucket or LOCAL_BUCKET,
        "headers": dict(args.header or []),
        "secret_headers": dict(args.secret_header or []),
        **request_config(args),
    }
    # With pagination, the default key names the page (CONTRACT §11); an incremental
    # run's names the step, so a day fetched again overwrites itself (CONTRACT §15).
    paged = "pagination" in config
    default_key = PAGINATED_KEY_TEMPLATE if paged else DEFAULT_KEY_TEMPLATE
    if args.incremental:
        default_key = incremental_key_template(_given(args.param, DEFAULT_PARAM), paged=paged)
    config["key_template"] = dest.prefix + _given(args.key_template, default_key)
    if args.records_path is not None:
        config["records_path"] = args.records_path
    return config


def _options(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    from_file = load_json_object(args.options, "--options") if args.options else {}
    return options_from_args(args, {**(base or {}), **from_file})


def _from_retry_file(args: argparse.Namespace) -> tuple[dict[str, Any], Dest, RedriveContext]:
    given = [name for name in _EVENT_FLAGS if getattr(args, name) is not None]
    given += ["incremental"] if args.incremental else []
    if given:
        reason = "cannot be combined with --retry-from (the file carries it)"
        raise UsageError(*[("--" + name.replace("_", "-"), reason) for name in given])
    context, items = read_redrive(args.retry_from)
    event = {
        "api_config": context.api_config,
        "options": _options(args, context.options),
        "request_id": context.request_id,
        "Items": items,
    }
    return event, parse_dest(context.dest), context


def prepare(args: argparse.Namespace) -> Prepared:
    """Flags (or a re-drive file) -> a validated job.

    Raises:
        UsageError: naming the flag and the reason, for anything ``parse_event``
            or the flag parsing refuses.
    """
    allow_private = bool(args.allow_private_networks)
    if args.retry_from is not None:
        event, dest, context = _from_retry_file(args)
        default_path = args.retry_from
        allow_private = allow_private or context.allow_private_networks
    else:
        event, dest = _from_flags(args)
        default_path = default_redrive_path(event["request_id"])
    policy = _policy(dest, allow_private=allow_private)
    try:
        job = parse_event(event, policy=policy)
    except InvalidEventError as exc:
        raise _with_hints(usage_error_from(exc)) from None
    path = args.redrive_file or default_path
    return Prepared(job, event, dest, policy, path, allow_private_networks=allow_private)


def _policy(dest: Dest, *, allow_private: bool) -> NetPolicy:
    policy = NetPolicy.from_env()
    if allow_private:
        policy = dataclasses.replace(policy, allow_private_networks=True)
    if dest.folder is not None:  # no bucket is written, so the bucket allow-list is moot
        policy = dataclasses.replace(policy, allowed_buckets=())
    return policy


def _with_hints(error: UsageError) -> UsageError:
    problems = []
    for flag, reason in error.problems:
        if flag == "--endpoint" and ENV_ALLOW_PRIVATE_NETWORKS in reason:
            reason += " (or pass --allow-private-networks)"
        problems.append((flag, reason))
    return UsageError(*problems)


def _request_headers(job: Job) -> dict[str, str] | None:
    if not job.api.secret_headers:
        return None  # the engine uses api_config.headers
    from ingest_core.secrets import resolve_secret_headers

    try:
        return {**job.api.headers, **resolve_secret_headers(job.api.secret_headers)}
    except SecretResolutionError as exc:
        raise UsageError(("--secret-header", str(exc))) from None


# ------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Run ``backfill``; returns the exit code."""
    prepared = prepare(args)
    headers = _request_headers(prepared.job)
    context = RedriveContext(
        request_id=prepared.job.request_id,
        dest=prepared.dest.text,
        manifest_prefix=prepared.dest.prefix,
        api_config=prepared.event["api_config"],
        options=prepared.event["options"],
        allow_private_networks=prepared.allow_private_networks,
    )
    redrive = RedriveWriter(prepared.redrive_path, context)
    progress = ProgressDisplay(prepared.job.requested, label="backfill", mode=args.progress)
    try:
        outcome, interrupted = run_async(
            lambda stop: _execute(prepared, headers, progress, redrive.on_item, stop)
        )
    except BaseException:
        redrive.discard()
        raise
    redrive_path = redrive.finish()
    _report(args, prepared, outcome, redrive, redrive_path, interrupted)
    return exit_code_for(outcome.result, interrupted=interrupted)


async def _execute(
    prepared: Prepared,
    headers: dict[str, str] | None,
    progress: ProgressDisplay,
    keep: Callable[[ItemResult], None],
    stop: asyncio.Event,
) -> tuple[RunOutcome, bool]:
    from ingest_core.engine import limits_for
    from ingest_core.runtime import execute

    def on_item(result: ItemResult) -> None:
        progress.on_item(result)
        keep(result)

    settings = dataclasses.replace(Settings.from_env(), policy=prepared.policy)
    async with progress:
        outcome = await execute(
            prepared.job,
            settings=settings,
            headers=headers,
            on_item=on_item,
            stop=stop,
            local_dir=prepared.dest.folder,
            manifest_prefix=prepared.dest.prefix,
            on_plan=lambda todo: progress.set_total(todo.requested),
            limits=progress.watch(limits_for(prepared.job)),
        )
    return outcome, stop.is_set()


def _report(
    args: argparse.Namespace,
    prepared: Prepared,
    outcome: RunOutcome,
    redrive: RedriveWriter,
    redrive_path: Path | None,
    interrupted: bool,
) -> None:
    result = outcome.result
    if args.json:
        extra = {
            "manifest_uri": outcome.manifest_uri,
            "redrive_file": str(redrive_path) if redrive_path else None,
            "interrupted": interrupted,
        }
        print(json.dumps({**result, **extra}, indent=2, default=str))
        return
    title = f"backfill {prepared.job.request_id} -> {prepared.dest.text}"
    print_summary(result, title=title)
    if "incremental" in result:
        _report_incremental(result["incremental"], prepared.job)
    if result["failed"] or result["not_attempted"]:
        print("did not succeed:")
        print_failures(result)
    print(f"objects under: {prepared.dest.text}")
    print(f"manifest: {outcome.manifest_uri or '(not written)'}")
    if redrive_path is not None:
        items = "item" if redrive.count == 1 else "items"
        print(f"re-drive file: {redrive_path} ({redrive.count:,} {items}); retry with:")
        print(f"  {PROG} backfill --retry-from {shlex.quote(str(redrive_path))}")
    elif redrive.removed_stale:
        print(f"every item is in: removed the re-drive file {redrive.path}")
    if interrupted:
        print("interrupted: items not started are listed as not attempted", file=sys.stderr)


def _report_incremental(info: dict[str, Any], job: Job) -> None:
    before, after = info["watermark_before"], info["watermark_after"]
    if info["nothing_new"]:
        end = job.date_range.end if job.date_range else "?"
        print(f"nothing new: every step up to {end} has landed (watermark {before})")
    elif info["state_error"] is not None:
        print(f"watermark: stays at {before or '(none)'}: the state was {info['state_error']}")
    elif after == before:
        print(f"watermark: stays at {before or '(none)'} (the first date fetched did not land)")
    else:
        print(f"watermark: {before or '(none)'} -> {after}")
    if info["already_landed"]:
        print(f"already landed, not fetched again: {info['already_landed']:,} steps")
    if info["steps_behind"]:
        print(f"still behind: {info['steps_behind']:,} steps (the next run fetches them)")
    print(f"state: {info['state']}")


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
