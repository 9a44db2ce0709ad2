"""What a run shows a person: the progress display on stderr and the summary table.

Nothing here imports rich at module level: ``--help`` and ``plan`` must start fast
and work with only the runtime dependencies; the bar and the table use rich when it
is installed and the stream is a terminal, plain aligned text otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

from ingest_core.limits import OriginLimits
from ingest_core.results import ItemResult

PLAIN_PROGRESS_INTERVAL_S = 2.0
RICH_REFRESH_PER_S = 8
MAX_FAILURES_SHOWN = 5
# What "records" counts without --records-path (CONTRACT §6).
RECORDS_RULE = "array elements, NDJSON lines, 1 per other JSON body; see --records-path"


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
