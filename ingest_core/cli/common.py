"""What every subcommand shares: the registry entry, argument types, option flags,
usage errors (exit 2), Ctrl-C handling, the progress display and the summary table.

Nothing here imports rich, aioboto3 or moto at module level: ``fanout-ingest plan``
and ``--help`` must start fast and work with only the runtime dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from ingest_core.config import DEFAULT_PACK_TARGET_MB, PACK_KEY_TEMPLATES, Options
from ingest_core.errors import InvalidEventError
from ingest_core.limits import OriginLimits
from ingest_core.results import ItemResult

PROG = "fanout-ingest"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
PLAIN_PROGRESS_INTERVAL_S = 2.0
RICH_REFRESH_PER_S = 8
MAX_FAILURES_SHOWN = 5
# What "records" counts without --records-path (CONTRACT §6).
RECORDS_RULE = "array elements, NDJSON lines, 1 per other JSON body; see --records-path"

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

    return asyncio.run(wrapper())


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


# --------------------------------------------------------------------- progress


@dataclass(slots=True)
class Counts:
    """Items finished so far."""

    total: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: ItemResult) -> None:
        """Count one finished item."""
        self.done += 1
        if not result.succeeded:
            self.failed += 1

    def line(self, limits: OriginLimits | None = None) -> str:
        """``1234/100000 (1.2%), 3 failed, 456.7 items/s, 2.7 s elapsed``.

        With ``limits``, the adaptive limit follows: ``, limit 32/64 at 40/s, 12 throttled``.
        """
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} ({share:.1f}%), {self.failed} failed,"
            f" {rate:.1f} items/s, {elapsed:.1f} s elapsed"
            + (f", {limits.describe()}" if limits is not None else "")
        )


class ProgressDisplay:
    """Counts items as the engine reports them and shows progress on stderr.

    A rich progress bar when stderr is a terminal and rich is installed; plain
    lines at most every ``PLAIN_PROGRESS_INTERVAL_S`` otherwise (logs, CI, pipes).
    Use as ``async with ProgressDisplay(...) as progress`` and pass
    ``progress.on_item`` to the engine.
    """

    def __init__(
        self, total: int, *, label: str, mode: str = "auto", stream: IO[str] | None = None
    ) -> None:
        """Args:
        total: items the run will report.
        label: shown before the bar or at the start of each line.
        mode: ``auto``, ``bar``, ``plain`` or ``off``.
        stream: where to draw (default stderr).
        """
        self.counts = Counts(total)
        self.limits: OriginLimits | None = None
        self._label = label
        self._stream = stream or sys.stderr
        self._mode = _resolve_mode(mode, self._stream)
        self._bar: Any = None
        self._task_id: Any = None
        self._ticker: asyncio.Task[None] | None = None

    def set_total(self, total: int) -> None:
        """Change the number of items (an incremental run that skips what already landed)."""
        if total == self.counts.total:
            return
        self.counts.total = total
        if self._bar is not None:
            self._bar.update(self._task_id, total=total)
        elif self._mode == "plain":
            print(f"{self._label}: {total} items after the watermark", file=self._stream)

    def watch(self, limits: OriginLimits) -> OriginLimits:
        """Show ``limits`` (the run's adaptive limits) in the progress; returns them."""
        self.limits = limits
        return limits

    def on_item(self, result: ItemResult) -> None:
        """The engine's ``on_item`` callback."""
        self.counts.add(result)
        if self._bar is not None:
            self._bar.update(
                self._task_id,
                completed=self.counts.done,
                failed=self.counts.failed,
                limit=self.limits.describe() if self.limits is not None else "",
            )

    async def __aenter__(self) -> Self:
        if self._mode == "bar":
            self._start_bar()
        elif self._mode == "plain":
            print(f"{self._label}: {self.counts.total} items", file=self._stream, flush=True)
            self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            print(f"{self._label}: {self.counts.line(self.limits)}", file=self._stream, flush=True)
        if self._bar is not None:
            self._bar.stop()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[limit]}"),
            console=Console(file=self._stream),
            refresh_per_second=RICH_REFRESH_PER_S,
        )
        self._task_id = self._bar.add_task(self._label, total=self.counts.total, failed=0, limit="")
        self._bar.start()

    async def _tick(self) -> None:
        # Bounded by the run: cancelled in __aexit__.
        while True:
            await asyncio.sleep(PLAIN_PROGRESS_INTERVAL_S)
            print(f"{self._label}: {self.counts.line(self.limits)}", file=self._stream, flush=True)


def _resolve_mode(mode: str, stream: IO[str]) -> str:
    if mode != "auto":
        return "plain" if mode == "bar" and not rich_available() else mode
    interactive = stream.isatty() and os.environ.get("TERM", "") != "dumb"
    return "bar" if interactive and rich_available() else "plain"


def rich_available() -> bool:
    """Whether the optional ``rich`` package is installed (the ``cli`` extra)."""
    try:
        return importlib.util.find_spec("rich") is not None
    except (ImportError, ValueError):  # ValueError: a stubbed-out sys.modules entry
        return False


# ---------------------------------------------------------------------- summary


def human_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def summary_rows(
    result: Mapping[str, Any], records_path: str | None = None
) -> list[tuple[str, str]]:
    """The summary table's rows from a result dict (CONTRACT §6)."""
    duration_s = max(result["duration_ms"], 1) / 1000
    finished = result["succeeded"] + result["failed"]
    succeeded = f"{result['succeeded']:,}"
    if result.get("skipped_existing"):
        succeeded += f" ({result['skipped_existing']:,} already there)"
    return [
        ("requested", f"{result['requested']:,}"),
        ("succeeded", succeeded),
        ("failed", f"{result['failed']:,}"),
        ("not attempted", f"{result['not_attempted']:,}"),
        ("records", _records_text(result.get("records_ingested"), records_path)),
        *_body_bytes_row(result),
        (
            "stored bytes",
            _bytes_text(result["bytes_written"], "as written (gzip counted compressed)"),
        ),
        *_pages_row(result),
        ("retries", f"{result.get('retries', 0):,}"),
        *_throttled_row(result),
        ("duration", f"{duration_s:.2f} s"),
        ("items/s", f"{finished / duration_s:.1f}"),
    ]


def _records_text(records: int | None, records_path: str | None) -> str:
    """The count and the rule that counted it: "records" alone says nothing."""
    if records is None:
        return "unknown (a body was neither JSON nor NDJSON, or --records-path was not an array)"
    if records_path:
        return f"{records:,} (elements of {records_path})"
    return f"{records:,} ({RECORDS_RULE})"


def _body_bytes_row(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    received = result.get("bytes_received")
    if received is None:
        return []
    return [("body bytes", _bytes_text(received, "as the API sent them"))]


def _bytes_text(count: int, rule: str) -> str:
    return f"{human_bytes(count)} ({count:,}) {rule}"


def _throttled_row(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``throttled  24 (API limit down to 32, paced down to 28/s)``, when anything was."""
    if not result.get("throttled"):
        return []
    adaptive = result.get("adaptive") or {}
    text = f"{result['throttled']:,}"
    if adaptive.get("enabled") and adaptive.get("api_lowest") is not None:
        text += f" (API limit down to {adaptive['api_lowest']}"
        pace = adaptive.get("api_pace_lowest_per_s") or adaptive.get("api_pace_per_s")
        text += f", paced down to {pace:g}/s)" if pace is not None else ")"
    return [("throttled", text)]


def _pages_row(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    # Shown only when items spanned pages: otherwise it repeats "succeeded".
    pages = result.get("pages_written")
    written = result["succeeded"] - result.get("skipped_existing", 0)
    return [] if pages is None or pages == written else [("pages", f"{pages:,}")]


def print_summary(
    result: Mapping[str, Any],
    *,
    title: str,
    stream: IO[str] | None = None,
    fancy: bool | None = None,
    records_path: str | None = None,
) -> None:
    """The summary table (rich on a terminal, aligned plain text otherwise), then warnings."""
    out = stream or sys.stdout
    rows = summary_rows(result, records_path)
    if fancy is None:
        fancy = out.isatty() and rich_available()
    if fancy:
        _print_rich_table(title, rows, out)
    else:
        width = max(len(name) for name, _ in rows)
        print(title, file=out)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}", file=out)
    for warning in result.get("warnings") or []:
        print(f"warning: {warning['message']}", file=out)


def _print_rich_table(title: str, rows: Sequence[tuple[str, str]], out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console(file=out).print(table)


def print_failures(result: Mapping[str, Any], stream: IO[str] | None = None) -> None:
    """A few failed items, one line each (the manifest and re-drive file have them all)."""
    out = stream or sys.stdout
    failures = result.get("failures") or []
    for failure in failures[:MAX_FAILURES_SHOWN]:
        params = json.dumps(failure.get("params"), sort_keys=True)
        print(
            f"  item {failure['index']} {params}: {failure['kind']}: {failure['error']}",
            file=out,
        )
    hidden = result["failed"] + result["not_attempted"] - min(len(failures), MAX_FAILURES_SHOWN)
    if hidden > 0:
        print(f"  ... and {hidden:,} more", file=out)


def exit_code_for(result: Mapping[str, Any], *, interrupted: bool) -> int:
    """0 when every item succeeded (even if Ctrl-C came last), 130 after Ctrl-C, 1 otherwise."""
    if result["status"] == "SUCCESS":
        return EXIT_OK
    return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
