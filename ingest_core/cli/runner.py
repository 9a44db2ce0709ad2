"""What ``backfill`` and ``list`` share: their flags, the event built from them, the run.

Both commands fetch a plan of items (dates, or the lines of a file) with the same
destination, request shape, pagination, packing, options, re-drive file and
progress. The flags are declared here once, so the two can never drift apart;
each command adds only what says *which* items to fetch, and hands ``prepare``
a ``Build`` that turns its own flags into an event.

The run goes through ``runtime.execute`` like any invocation, with progress from
``on_item``, the re-drive file streamed as items finish, and a clean stop on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_core.cli import autopage
from ingest_core.cli.common import (
    PROG,
    UsageError,
    add_option_flags,
    add_progress_flag,
    exit_code_for,
    header_pair,
    key_value,
    load_json_object,
    options_from_args,
    run_async,
    usage_error_from,
)
from ingest_core.cli.display import ProgressDisplay, print_failures, print_summary
from ingest_core.cli.redrive import (
    RedriveContext,
    RedriveWriter,
    read_redrive,
    redrive_event,
)
from ingest_core.cli.request_flags import add_request_flags, request_config
from ingest_core.config import PACK_KEY_TEMPLATES
from ingest_core.engine import RunOutcome
from ingest_core.errors import InvalidEventError, SecretResolutionError
from ingest_core.events import Job, parse_event
from ingest_core.keys import DEFAULT_KEY_TEMPLATE, PAGINATED_KEY_TEMPLATE
from ingest_core.netguard import ENV_ALLOW_PRIVATE_NETWORKS, NetPolicy
from ingest_core.results import ItemResult
from ingest_core.settings import Settings

# parse_event wants a raw_bucket; a local folder has none, so this stands in.
LOCAL_BUCKET = "local-folder"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Flags every command's re-drive refuses: the file carries what they would set.
SHARED_EVENT_FLAGS = (
    "endpoint",
    "source_id",
    "query",
    "header",
    "secret_header",
    "key_template",
    "records_path",
    "request_id",
    "dest",
)


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


# ----------------------------------------------------------------------- flags


def add_source_flags(group: argparse._ArgumentGroup) -> None:
    """The endpoint, the source, fixed params, headers and records: what every item shares."""
    group.add_argument("--endpoint", metavar="URL", help="the API endpoint (https)")
    group.add_argument("--source-id", metavar="ID", help="names the source (first key segment)")
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
        help="dotted path of the records array in each body, e.g. data.items (without it,"
        " a top-level array counts its elements, NDJSON its lines, any other body 1)",
    )
    group.add_argument(
        "--allow-private-networks",
        action="store_true",
        help=f"let the endpoint be http or a private address"
        f" (as {ENV_ALLOW_PRIVATE_NETWORKS}=true does)",
    )


def add_dest_flags(parser: argparse.ArgumentParser, *, request_id_help: str) -> None:
    """``--dest``, ``--key-template`` and ``--request-id``."""
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
        f" {PAGINATED_KEY_TEMPLATE} with pagination; with backfill --incremental"
        " {source_id}/{param.date}.json); an s3 prefix is put before it",
    )
    where.add_argument("--request-id", metavar="ID", help=request_id_help)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Request shape, pagination, re-drive and output, progress and every run option."""
    add_request_flags(parser)
    _add_runs(parser.add_argument_group("re-drive and output"))
    add_progress_flag(parser)
    add_option_flags(parser)


def _add_runs(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--retry-from",
        metavar="FILE",
        type=Path,
        help="re-run exactly the items of a re-drive file, onto the same keys; it carries"
        " the request shape, so flags that would change it are refused, while flags of"
        " how the run goes (concurrency, timeouts, a higher --max-pages...) apply",
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


DefaultKey = Callable[[bool], str]


def base_event(
    args: argparse.Namespace,
    dest: Dest,
    *,
    default_key: DefaultKey | None = None,
    pack_defaults: Mapping[str, str] = PACK_KEY_TEMPLATES,
) -> dict[str, Any]:
    """``api_config`` and ``options`` from the shared flags; the command adds the plan.

    ``default_key(paged)`` gives the key template when ``--key-template`` is not
    given (default: CONTRACT §5's, or §11's with pagination); ``pack_defaults``
    the pack key template by compression (an incremental run's names the step).
    """
    return {
        "api_config": _api_config(args, dest, default_key),
        "options": _with_pack_prefix(command_options(args), dest.prefix, pack_defaults),
    }


def given(value: str | None, default: str) -> str:
    """``value`` unless the flag was not given; "" is a value (and a bad one, for the
    validation to name), not "not given"."""
    return default if value is None else value


def _with_pack_prefix(
    options: dict[str, Any], prefix: str, defaults: Mapping[str, str]
) -> dict[str, Any]:
    """The ``--dest`` prefix goes in front of pack keys too, as in front of item keys."""
    pack = options.get("pack")
    if not prefix or not isinstance(pack, dict):
        return options
    compression = pack.get("compression", "gzip")
    template = pack.get("key_template") or defaults.get(compression, "")
    return {**options, "pack": {**pack, "key_template": prefix + template}}


def _api_config(
    args: argparse.Namespace, dest: Dest, default_key: DefaultKey | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "endpoint": args.endpoint,
        "source_id": args.source_id,
        "raw_bucket": dest.bucket or LOCAL_BUCKET,
        "headers": dict(args.header or []),
        "secret_headers": dict(args.secret_header or []),
        **request_config(args),
    }
    # With pagination, the default key names the page (CONTRACT §11).
    paged = "pagination" in config
    fallback = PAGINATED_KEY_TEMPLATE if paged else DEFAULT_KEY_TEMPLATE
    key = default_key(paged) if default_key is not None else fallback
    config["key_template"] = dest.prefix + given(args.key_template, key)
    if args.records_path is not None:
        config["records_path"] = args.records_path
    return config


def command_options(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` overlaid with ``--options FILE`` and then every option flag given."""
    from_file = load_json_object(args.options, "--options") if args.options else {}
    return options_from_args(args, {**(base or {}), **from_file})


def require(args: argparse.Namespace, *names: str) -> None:
    """Refuse the run, naming every flag of ``names`` that was not given."""
    missing = ["--" + name.replace("_", "-") for name in names if getattr(args, name) is None]
    if missing:
        raise UsageError(*[(flag, "required (or --retry-from FILE)") for flag in missing])


@dataclass(frozen=True, slots=True)
class Built:
    """What a command's flags say: the event, where it goes, and a last step on the job.

    ``finish`` lets a command give the job a plan no event can carry (the lines of
    a file, read lazily); it may raise ``UsageError``.
    """

    event: dict[str, Any]
    dest: Dest
    finish: Callable[[Job], Job] | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated job and everything around it."""

    job: Job
    event: dict[str, Any]
    dest: Dest
    policy: NetPolicy
    redrive_path: Path
    allow_private_networks: bool
    applied: tuple[str, ...] = ()  # re-drive: the flags applied on top of the file


def prepare(
    args: argparse.Namespace,
    build: Callable[[argparse.Namespace], Built],
    *,
    event_flags: tuple[str, ...],
    redrive_path: Callable[[str], Path],
    command: str,
) -> Prepared:
    """Flags (or a re-drive file) -> a validated job.

    Args:
        args: the parsed flags.
        build: the command's flags -> ``Built``.
        event_flags: the command's own flags a re-drive file replaces (refused with it).
        redrive_path: the default re-drive file of a request id.
        command: the command's name, for what it prints.

    Raises:
        UsageError: naming the flag and the reason, for anything ``parse_event``
            or the flag parsing refuses.
    """
    allow_private = bool(args.allow_private_networks)
    applied: tuple[str, ...] = ()
    if args.retry_from is not None:
        context, items = read_redrive(args.retry_from)
        event, applied = redrive_event(args, context, items, SHARED_EVENT_FLAGS + event_flags)
        built = Built(event, parse_dest(context.dest))
        default_path = args.retry_from
        allow_private = allow_private or context.allow_private_networks
    else:
        built = _built(args, build, command, allow_private=allow_private)
        default_path = redrive_path(built.event["request_id"])
    policy = _policy(built.dest, allow_private=allow_private)
    try:
        job = parse_event(built.event, policy=policy)
    except InvalidEventError as exc:
        raise _with_hints(usage_error_from(exc)) from None
    if built.finish is not None:
        job = built.finish(job)
    path = args.redrive_file or default_path
    return Prepared(
        job,
        built.event,
        built.dest,
        policy,
        path,
        allow_private_networks=allow_private,
        applied=applied,
    )


def _built(
    args: argparse.Namespace,
    build: Callable[[argparse.Namespace], Built],
    command: str,
    *,
    allow_private: bool,
) -> Built:
    built = build(args)
    if not autopage.is_auto(built.event):
        return built
    policy = _policy(built.dest, allow_private=allow_private)
    chosen = autopage.resolve(
        args, built.event, policy, command=command, headers_for=request_headers
    )
    return build(chosen)


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


def request_headers(job: Job) -> dict[str, str] | None:
    """``api_config.headers`` with the secret headers resolved (None: no secret headers)."""
    if not job.api.secret_headers:
        return None  # the engine uses api_config.headers
    from ingest_core.secrets import resolve_secret_headers

    try:
        return {**job.api.headers, **resolve_secret_headers(job.api.secret_headers)}
    except SecretResolutionError as exc:
        raise UsageError(("--secret-header", str(exc))) from None


# ------------------------------------------------------------------------- run

Report = Callable[[dict[str, Any], Job], None]


def run_prepared(
    args: argparse.Namespace,
    prepared: Prepared,
    *,
    command: str,
    title: str,
    extra_report: Report | None = None,
) -> int:
    """Run a prepared job with progress and the re-drive file; print the report.

    Returns:
        The exit code (``common.exit_code_for``).
    """
    headers = request_headers(prepared.job)
    context = RedriveContext(
        request_id=prepared.job.request_id,
        dest=prepared.dest.text,
        manifest_prefix=prepared.dest.prefix,
        api_config=prepared.event["api_config"],
        options=prepared.event["options"],
        allow_private_networks=prepared.allow_private_networks,
    )
    redrive = RedriveWriter(prepared.redrive_path, context)
    progress = ProgressDisplay(prepared.job.requested, label=command, mode=args.progress)
    for flag in prepared.applied:
        print(f"{PROG} {command}: applied on top of the re-drive file: {flag}", file=sys.stderr)
    try:
        outcome, interrupted = run_async(
            lambda stop: _execute(prepared, headers, progress, redrive.on_item, stop)
        )
    except BaseException:
        redrive.discard()
        raise
    redrive_path = redrive.finish()
    report = _Report(command, title, prepared, outcome, redrive, redrive_path, interrupted)
    report.show(args, extra_report)
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


@dataclass(frozen=True, slots=True)
class _Report:
    command: str
    title: str
    prepared: Prepared
    outcome: RunOutcome
    redrive: RedriveWriter
    redrive_path: Path | None
    interrupted: bool

    def show(self, args: argparse.Namespace, extra: Report | None) -> None:
        result = self.outcome.result
        if args.json:
            added = {
                "manifest_uri": self.outcome.manifest_uri,
                "redrive_file": str(self.redrive_path) if self.redrive_path else None,
                "interrupted": self.interrupted,
            }
            print(json.dumps({**result, **added}, indent=2, default=str))
            return
        job = self.prepared.job
        print_summary(result, title=self.title, records_path=job.api.records_path)
        if extra is not None:
            extra(result, job)
        if result["failed"] or result["not_attempted"]:
            print("did not succeed:")
            print_failures(result)
        self._where()

    def _where(self) -> None:
        print(f"objects under: {self.prepared.dest.text}")
        print(f"manifest: {self.outcome.manifest_uri or '(not written)'}")
        if self.redrive_path is not None:
            items = "item" if self.redrive.count == 1 else "items"
            print(
                f"re-drive file: {self.redrive_path} ({self.redrive.count:,} {items}); retry with:"
            )
            path = shlex.quote(str(self.redrive_path))
            print(f"  {PROG} {self.command} --retry-from {path}")
        elif self.redrive.removed_stale:
            print(f"every item is in: removed the re-drive file {self.redrive.path}")
        if self.interrupted:
            print("interrupted: items not started are listed as not attempted", file=sys.stderr)
