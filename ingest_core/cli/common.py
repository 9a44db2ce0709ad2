"""What every subcommand shares: the registry entry, argument types, option flags,
usage errors (exit 2) and Ctrl-C handling (the progress display and the summary table
are in ``display``).

Nothing here imports rich, aioboto3 or moto at module level: ``fanout-ingest plan``
and ``--help`` must start fast and work with only the runtime dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from ingest_core import loops
from ingest_core.cli.display import PLAIN_PROGRESS_INTERVAL_S
from ingest_core.config import DEFAULT_PACK_TARGET_MB, PACK_KEY_TEMPLATES, Options
from ingest_core.errors import InvalidEventError

PROG = "fanout-ingest"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

T = TypeVar("T")


# --------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: how it declares its flags and how it runs.

    Attributes:
        name: the subcommand word (``fanout-ingest NAME``).
        help: one line for ``fanout-ingest --help``.
        add_arguments: declares the subcommand's flags on its parser.
        run: does the work; returns the exit code. May raise ``UsageError``.
        description: the subcommand's own ``--help`` text (defaults to ``help``).
        epilog: shown after the flags in ``--help`` (examples).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None


# ----------------------------------------------------------------- usage errors


class UsageError(Exception):
    """Bad usage: exit 2 with one ``FLAG: reason`` line per problem."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{flag}: {reason}" for flag, reason in problems))


class CommandError(Exception):
    """The command could not do its work (AWS refused, say): exit 1 with the message."""


@contextlib.contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """Turn botocore/boto3 errors (no credentials, access denied, ...) into ``CommandError``."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise
        raise CommandError(f"{operation}: {type(exc).__name__}: {exc}") from exc


def report_usage_error(command: str, error: UsageError, stream: IO[str] | None = None) -> int:
    """Print every problem of ``error`` the way argparse prints its own; return 2."""
    out = stream or sys.stderr
    for flag, reason in error.problems:
        print(f"{PROG} {command}: error: {flag}: {reason}", file=out)
    print(f"(see {PROG} {command} --help)", file=out)
    return EXIT_USAGE


# Event fields (as InvalidEventError names them) -> the flag a user typed.
EVENT_FIELD_FLAGS: tuple[tuple[str, str], ...] = (
    ("api_config.endpoint", "--endpoint"),
    ("api_config.source_id", "--source-id"),
    ("api_config.raw_bucket", "--dest"),
    ("api_config.key_template", "--key-template"),
    ("api_config.records_path", "--records-path"),
    ("api_config.secret_headers", "--secret-header"),
    ("api_config.headers", "--header"),
    ("date_range.start", "--start"),
    ("date_range.end", "--end"),
    ("date_range.step", "--step"),
    ("date_range.format", "--format"),
    ("date_range.param", "--param"),
    ("date_range.extra_params", "--query"),
    ("date_range.state_key", "--state-key"),
    ("date_range.incremental", "--incremental"),
    ("request_id", "--request-id"),
    ("index_offset", "--index-offset"),
)
# How planner messages start -> the flag they are about.
DATE_REASON_FLAGS: tuple[tuple[str, str], ...] = (
    ("start ", "--start"),
    ("end ", "--end"),
    ("step ", "--step"),
    ("format ", "--format"),
    ("param ", "--param"),
)


def utc_now() -> datetime:
    """The clock relative dates (``--start today-7d``) resolve against; tests replace it."""
    return datetime.now(UTC)


def resolve_bounds(start: str, end: str, step: str, now: datetime) -> tuple[str, str]:
    """``--start``/``--end`` with relative forms resolved against one clock reading.

    Raises:
        UsageError: naming the flag of a bad relative form.
    """
    from ingest_core.planner import resolve_relative

    resolved = []
    for flag, text in (("--start", start), ("--end", end)):
        try:
            resolved.append(resolve_relative(text, step=step, now=now))
        except ValueError as exc:
            raise UsageError((flag, str(exc))) from None
    return resolved[0], resolved[1]


def flag_for_date_problem(reason: str) -> str:
    """The flag a planner ``ValueError`` message is about (``--start/--end/--step`` if unclear)."""
    for start, flag in DATE_REASON_FLAGS:
        if reason.startswith(start):
            return flag
    return "--start/--end/--step"


def flag_for_field(event_field: str, reason: str) -> str:
    """Translate an ``InvalidEventError`` field name to the flag that set it.

    Args:
        event_field: e.g. ``api_config.endpoint``, ``options.concurrency``,
            ``api_config.key_template (item 3)`` or ``date_range``.
        reason: the problem, used to tell ``--start`` from ``--end`` and ``--step``.

    Returns:
        The flag, or the field name itself when no flag sets it.
    """
    if event_field == "date_range":
        return flag_for_date_problem(reason)
    if event_field == "options":  # a check across fields (the memory budget)
        return "--memory-budget-mb/--part-size-mb"
    if event_field.startswith("options.pack"):
        return PACK_FLAGS.get(event_field.removeprefix("options.pack").lstrip("."), "--pack")
    if event_field.startswith("options."):
        name = event_field.split(".")[1]
        return option_flag(name) if name in Options.model_fields else event_field
    from ingest_core.cli.request_flags import OBJECT_FLAGS, REQUEST_FIELD_FLAGS

    for prefix, flag in REQUEST_FIELD_FLAGS:
        if event_field == prefix or event_field.startswith(prefix + "."):
            # The flag takes a whole object: say which part of it.
            rest = event_field.removeprefix(prefix).lstrip(".")
            return f"{flag} ({rest})" if rest and flag in OBJECT_FLAGS else flag
    for prefix, flag in EVENT_FIELD_FLAGS:
        if event_field == prefix or event_field.startswith(tuple(prefix + c for c in ". [")):
            return flag
    return event_field


def usage_error_from(exc: InvalidEventError) -> UsageError:
    """An ``InvalidEventError`` restated in flag names."""
    return UsageError(*[(flag_for_field(f, reason), reason) for f, reason in exc.problems])


# --------------------------------------------------------------- argument types


def key_value(text: str) -> tuple[str, str]:
    """``K=V`` (``--query``, ``--secret-header``): split at the first ``=``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NAME=VALUE")
    return name.strip(), value


def header_pair(text: str) -> tuple[str, str]:
    """``Name: value`` (``--header``): split at the first ``:``, value stripped."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form Name:value")
    return name.strip(), value.strip()


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def load_json_object(path: str, flag: str) -> dict[str, Any]:
    """Read a JSON object from ``path`` (``-`` = stdin) or raise ``UsageError`` on ``flag``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError((flag, f"cannot read {path}: {exc.strerror or exc}")) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError((flag, f"{path} is not valid JSON: {exc}")) from None
    if not isinstance(value, dict):
        raise UsageError((flag, f"{path} must hold a JSON object, not {type(value).__name__}"))
    return value


# ----------------------------------------------------------------- option flags

OPTION_DEST_PREFIX = "option_"
# Names that do not read well when derived from the field name.
OPTION_FLAG_OVERRIDES = {"rate_limit_per_s": "--rate"}
OPTION_HELP = {
    "concurrency": "requests in flight; also sizes both connection pools",
    "max_attempts": "attempts per request, the first included",
    "connect_timeout_s": "connect timeout per attempt, seconds",
    "read_timeout_s": "read timeout per attempt, seconds",
    "attempt_timeout_s": "cap on one whole attempt, seconds",
    "rate_limit_per_s": "requests per second over the whole run (0 = no limit)",
    "max_body_bytes": "larger bodies fail with body_too_large, nothing kept",
    "part_size_mb": "multipart part size in MiB (>= 5); smaller bodies go as one PUT",
    "memory_budget_mb": "cap on body bytes buffered at once, MiB",
    "deadline_margin_s": "stop starting requests this long before a deadline, seconds",
    "compress": "gzip objects (Content-Encoding: gzip, keys get .gz)",
    "skip_existing": "skip items whose key already exists (resume a run)",
    "expect_json": "store bodies as received, even when they are not JSON/NDJSON",
    "fail_on_error": "treat any failed item as a failed run (the CLI exits 1 either way)",
    "s3_max_attempts": "attempts per S3 call (SlowDown, 5xx, dropped connection) within a deadline",
    "adaptive": "fixed concurrency: no adaptive limit, pause or pace per origin",
    "max_catch_up": "incremental runs: steps one run covers at most, oldest first",
    "max_retry_after_s": "longest Retry-After honoured; an item asked for more fails throttled",
}


def option_flag(name: str) -> str:
    """The flag of ``Options`` field ``name``: ``read_timeout_s`` -> ``--read-timeout``,
    ``expect_json`` (on by default) -> ``--no-expect-json``."""
    if name in OPTION_FLAG_OVERRIDES:
        return OPTION_FLAG_OVERRIDES[name]
    base = name.removesuffix("_s").replace("_", "-")
    info = Options.model_fields[name]
    return f"--no-{base}" if info.annotation is bool and info.default is True else f"--{base}"


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Options`` field (CONTRACT §4), generated so none is ever missing.

    Flags default to "not given", so only what the user typed lands in the event
    and ``Options`` supplies (and documents) every default.
    """
    group = parser.add_argument_group("run options (docs/CONTRACT.md §4)")
    for name, info in Options.model_fields.items():
        if name == "pack":
            _add_pack_flags(parser)
            continue
        dest = OPTION_DEST_PREFIX + name
        text = OPTION_HELP.get(name, f"options.{name}")
        if info.annotation is bool:
            group.add_argument(
                option_flag(name),
                dest=dest,
                action="store_const",
                const=not info.default,
                default=None,
                help=text,
            )
            continue
        kind: Callable[[str], Any] = float if info.annotation is float else int
        if info.annotation not in (int, float):
            kind = str
        metavar = "N" if kind is int else "X"
        group.add_argument(
            option_flag(name),
            dest=dest,
            type=kind,
            default=None,
            metavar=metavar,
            help=f"{text} (default: {info.default})",
        )


def options_from_args(
    args: argparse.Namespace, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``base`` (an options file) overlaid with every option flag the user gave."""
    options = dict(base or {})
    for name in Options.model_fields:
        value = getattr(args, OPTION_DEST_PREFIX + name, None)
        if value is not None:
            options[name] = value
    pack = _pack_from_args(args, options.get("pack"))
    if pack is not None:
        options["pack"] = pack
    return options


# The pack's fields and their flags; "" is the unit (``--pack response|record``).
PACK_FLAGS = {
    "": "--pack",
    "unit": "--pack",
    "target_mb": "--pack-target-mb",
    "compression": "--pack-compression",
    "key_template": "--pack-key-template",
}


def _add_pack_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("packing (docs/CONTRACT.md §13; off unless --pack is given)")
    group.add_argument(
        "--pack",
        dest="pack_unit",
        choices=("response", "record"),
        default=None,
        help="write NDJSON pack objects: one line per response, or one per record",
    )
    group.add_argument(
        "--pack-target-mb",
        dest="pack_target_mb",
        type=int,
        default=None,
        metavar="N",
        help=f"rotate pack objects at N MiB of stored bytes (default: {DEFAULT_PACK_TARGET_MB})",
    )
    group.add_argument(
        "--pack-compression",
        dest="pack_compression",
        choices=("gzip", "none"),
        default=None,
        help="compression of pack objects (default: gzip)",
    )
    group.add_argument(
        "--pack-key-template",
        dest="pack_key_template",
        default=None,
        metavar="T",
        help="pack key with {source_id} {request_id} {first_index} {part}, or {step}"
        f" (one object per date; default: {PACK_KEY_TEMPLATES['gzip']}, with"
        " backfill --incremental {source_id}/{step}.ndjson.gz)",
    )


def _pack_from_args(args: argparse.Namespace, base: Any) -> dict[str, Any] | None:
    """``options.pack`` from the flags over the options file's; None when packing is off."""
    pack = dict(base) if isinstance(base, dict) else {}
    given = {
        "unit": getattr(args, "pack_unit", None),
        "target_mb": getattr(args, "pack_target_mb", None),
        "compression": getattr(args, "pack_compression", None),
        "key_template": getattr(args, "pack_key_template", None),
    }
    pack.update({name: value for name, value in given.items() if value is not None})
    if not pack:
        return None
    if given["unit"] is None and "unit" not in pack and base is None:
        raise UsageError(("--pack", "the --pack-* flags need --pack response|record"))
    return pack


def add_progress_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--progress auto|bar|plain|off``."""
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "plain", "off"),
        default="auto",
        help="progress display on stderr: a bar on a terminal (auto), plain lines every"
        f" {PLAIN_PROGRESS_INTERVAL_S:g} s otherwise, or none",
    )


# ----------------------------------------------------------------------- Ctrl-C


STOP_MESSAGE = (
    "stopping: no new requests, uploads in flight are aborted (Ctrl-C again to quit at once)"
)


def run_async(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, T]], *, message: str = STOP_MESSAGE
) -> T:
    """Run ``main(stop)`` on a fresh event loop; SIGINT/SIGTERM set ``stop``.

    The first Ctrl-C asks the engine to stop cleanly (nothing new starts,
    uploads in flight are aborted, the summary and re-drive file are still
    written) and prints ``message``; a second one raises ``KeyboardInterrupt``.
    """

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = _install_stop_handlers(loop, stop, message)
        try:
            return await main(stop)
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    return loops.run(wrapper())


def _install_stop_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, message: str
) -> list[int]:
    installed: list[int] = []

    def on_signal(signum: int) -> None:
        first = not stop.is_set()
        stop.set()
        # Back to the default handler: a second Ctrl-C raises KeyboardInterrupt.
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signum)
            installed.remove(signum)
        if first:
            with contextlib.suppress(OSError):  # stderr may be a closed pipe by now
                print(f"\n{message}", file=sys.stderr, flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            continue
        installed.append(signum)
    return installed


def exit_code_for(result: Mapping[str, Any], *, interrupted: bool) -> int:
    """0 when every item succeeded (even if Ctrl-C came last), 130 after Ctrl-C, 1 otherwise."""
    if result["status"] == "SUCCESS":
        return EXIT_OK
    return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
