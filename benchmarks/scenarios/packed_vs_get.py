"""P1, P2: packed CPU per item against fetching alone (GET-only) and the unpacked floor.

9 KB varied JSON bodies from a static raw-asyncio API (``benchmarks/nullserver.py``),
c=64, 2,000 items, 5 interleaved repeats (1 with ``--quick``), on asyncio and on
uvloop where it imports: the GET-only floor (aiohttp GET and read, nothing
written), fanout-ingest packed (``unit: response``, gzip level 1, one multipart
object on the aiohttp S3 sink) and the lean unpacked floor (GET + unsigned PUT to
the null sink). Ratios are medians of per-repeat pairs on the same loop.
"""

from __future__ import annotations

from typing import Any

from benchmarks.floors import (
    PACK,
    Series,
    lean_servers,
    loops,
    pair_ratios,
    pairs_text,
    run_interleaved,
    section,
)
from benchmarks.measure import Bench, status_cell, summarize
from benchmarks.report import Section, Table, Verdict
from benchmarks.scenarios.packing import _packed_check

P1_MAX = 1.5
P1_MOONSHOT = 1.3
P2_MIN = 1.5
GET = "GET-only floor"
PACKED = "ours packed"
LEAN = "lean floor"


def run(bench: Bench) -> Section:
    """GET-only, packed and the unpacked lean floor, interleaved, on each loop."""
    with lean_servers(bench.log_dir / "servers-packed-vs-get", packs=True) as lean:
        assert lean.packs is not None
        series = [
            s
            for loop in loops()
            for s in (
                Series(f"{GET} {loop}", "get_only", lean.null, loop, verify=False),
                Series(
                    f"{PACKED} {loop}",
                    "fanout_ingest",
                    lean.packs,
                    loop,
                    options={"pack": PACK},
                    check=_packed_check,
                ),
                Series(f"{LEAN} {loop}", "lean_floor", lean.null, loop),
            )
        ]
        records = run_interleaved(bench, series)
    return section(
        bench,
        "packed_vs_get",
        "Packed against fetching alone (P1, P2, issue 21)",
        records,
        setup=f"pack {PACK}; ",
        ratios="medians of the per-repeat pairs on the same loop",
        table=_table(records),
        verdicts=_verdicts(records),
    )


def _table(records: dict[str, list[dict[str, Any]]]) -> Table:
    rows = []
    for label, runs in records.items():
        s = summarize(runs)
        loop = label.rsplit(" ", 1)[-1]
        median, pairs = pair_ratios(records, label, f"{GET} {loop}")
        rows.append(
            [
                label,
                status_cell(s),
                s["cpu_us_per_item"],
                s["cpu_us_range"],
                pairs_text(median, pairs),
                1e6 / s["cpu_us_per_item"] if s["cpu_us_per_item"] else None,
                s["items_per_s"],
                s["background_cores"],
            ]
        )
    return Table(
        "Client CPU per item (medians)",
        [
            "series",
            "runs",
            "CPU µs/item",
            "range",
            "÷ GET-only, same loop",
            "items per CPU-s",
            "items/s",
            "other load",
        ],
        rows,
    )


def _verdicts(records: dict[str, list[dict[str, Any]]]) -> list[Verdict]:
    verdicts = []
    for loop in loops():
        p1, p1_pairs = pair_ratios(records, f"{PACKED} {loop}", f"{GET} {loop}")
        # Items per CPU-second, packed over the lean floor = the floor's CPU/item over ours.
        p2, p2_pairs = pair_ratios(records, f"{LEAN} {loop}", f"{PACKED} {loop}")
        verdicts += [
            Verdict(
                "21-P1",
                f"packed CPU/item <= {P1_MAX}x GET-only ({loop}); moonshot {P1_MOONSHOT}x",
                pairs_text(p1, p1_pairs),
                "N/A" if p1 is None else ("PASS" if p1 <= P1_MAX else "FAIL"),
            ),
            Verdict(
                "21-P2",
                f"packed items per CPU-s >= {P2_MIN}x the lean unpacked floor's ({loop})",
                pairs_text(p2, p2_pairs),
                "N/A" if p2 is None else ("PASS" if p2 >= P2_MIN else "FAIL"),
            ),
        ]
    return verdicts
