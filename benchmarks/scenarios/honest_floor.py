"""P3: unpacked CPU per item against the leanest GET + unsigned PUT, on a null sink.

9 KB varied JSON bodies from a static raw-asyncio API, PUTs to a null sink that
answers an empty 200 (``benchmarks/nullserver.py``: nothing an nginx ``return 200``
would not do), c=64, 2,000 items, 5 interleaved repeats (1 with ``--quick``),
on asyncio and on uvloop where it imports. The ratio is the median of the
per-repeat pairs of ours over the lean floor on the same loop.

Reconciliation with T1's 1.46x (``cpu`` scenario): the old floor (``raw_floor``:
per-item latency samples and dates) on the lean servers, and the old floor and ours
on the old servers (the aiohttp fake API and S3 sink), asyncio only.
"""

from __future__ import annotations

from typing import Any

from benchmarks.floors import (
    Series,
    lean_servers,
    loops,
    pair_ratios,
    pairs_text,
    run_interleaved,
    section,
)
from benchmarks.measure import SMALL_BODY_BYTES, Bench, status_cell, summarize
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

P3_MAX = 1.5
LEAN = "lean floor"
OURS = "ours unpacked"
OLD_FLOOR_LEAN = "old raw_floor, lean servers"
OLD_FLOOR = "old raw_floor, old servers"
OURS_OLD = "ours unpacked, old servers"


def run(bench: Bench) -> Section:
    """The lean floor and ours on both loops; the old floor and servers beside them."""
    with (
        lean_servers(bench.log_dir / "servers-honest-floor", packs=False) as lean,
        start_servers(
            api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
            s3="sink",
            log_dir=bench.log_dir / "servers-honest-floor-old",
        ) as old,
    ):
        series = [
            s
            for loop in loops()
            for s in (
                Series(f"{LEAN} {loop}", "lean_floor", lean.null, loop),
                Series(f"{OURS} {loop}", "fanout_ingest", lean.null, loop),
            )
        ]
        series += [
            Series(OLD_FLOOR_LEAN, "raw_floor", lean.null),
            Series(OLD_FLOOR, "raw_floor", old),
            Series(OURS_OLD, "fanout_ingest", old),
        ]
        records = run_interleaved(bench, series)
    return section(
        bench,
        "honest_floor",
        "Unpacked against an honest floor (P3, issue 21)",
        records,
        setup="",
        ratios="medians of the per-repeat pairs, each loop against its own floor",
        table=_table(records),
        verdicts=_verdicts(records),
    )


def _reference(label: str) -> str:
    loop = label.rsplit(" ", 1)[-1]
    return f"{LEAN} {loop}" if loop in ("asyncio", "uvloop") else f"{LEAN} asyncio"


def _table(records: dict[str, list[dict[str, Any]]]) -> Table:
    rows = []
    for label, runs in records.items():
        s = summarize(runs)
        ref = OLD_FLOOR if label == OURS_OLD else _reference(label)
        median, pairs = pair_ratios(records, label, ref)
        rows.append(
            [
                label,
                status_cell(s),
                s["cpu_us_per_item"],
                s["cpu_us_range"],
                f"{pairs_text(median, pairs)} of {ref}" if label != ref else "1.00",
                s["items_per_s"],
                s["background_cores"],
            ]
        )
    return Table(
        "Client CPU per item (medians)",
        ["series", "runs", "CPU µs/item", "range", "÷ reference", "items/s", "other load"],
        rows,
    )


def _verdicts(records: dict[str, list[dict[str, Any]]]) -> list[Verdict]:
    verdicts = []
    for loop in loops():
        median, pairs = pair_ratios(records, f"{OURS} {loop}", f"{LEAN} {loop}")
        verdicts.append(
            Verdict(
                "21-P3",
                f"unpacked CPU/item <= {P3_MAX}x the lean floor, same null sink, {loop}",
                pairs_text(median, pairs),
                "N/A" if median is None else ("PASS" if median <= P3_MAX else "FAIL"),
            )
        )
    old, old_pairs = pair_ratios(records, OURS_OLD, OLD_FLOOR)
    verdicts.append(
        Verdict(
            "21-P3", "the same on T1's old floor and servers", pairs_text(old, old_pairs), "REPORT"
        )
    )
    floor_cost, floor_pairs = pair_ratios(records, OLD_FLOOR_LEAN, f"{LEAN} asyncio")
    verdicts.append(
        Verdict(
            "21-P3",
            "old floor code / lean floor code, both on the lean servers",
            pairs_text(floor_cost, floor_pairs),
            "REPORT",
        )
    )
    return verdicts
