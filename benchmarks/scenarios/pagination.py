"""Pagination (issue 9): client CPU per page, and parallel pages against page by page.

The fake API paginates when the endpoint asks it to (``?pages=N``: every answer
announces N pages' worth of records in ``X-Total-Count``), and the runs use
``page_number`` pagination with ``total_header``, so page 0 reveals the total.

- CPU: 50-page chains of 9 KB pages at c=64 against the same number of 9 KB
  bodies unpaginated, interleaved in the same run; client CPU per page against
  CPU per item. Target (issue 9): at most 1.1x.
- Parallel pages: 20 items of 25 pages, API latency 100 ms, c=64, with
  ``parallel: true`` and ``false``. Page by page, a chain takes 25 x 100 ms = 2.5 s;
  the ideal with parallel pages is ~0.9 s (the 20 first pages, then 480 pages 64 at
  a time: 1 + ceil(480 / 64) = 9 round trips). Target: at most 1.3x that ideal.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, Bench, ratio, status_cell, summarize
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, Servers, start_servers

CONCURRENCY = 64
CPU_PAGES = 50
CPU_ITEMS = 60  # x 50 pages = 3,000 pages per paginated run
QUICK_CPU_ITEMS = 20
MAX_CPU_RATIO = 1.1
PARALLEL_ITEMS = 20
PARALLEL_PAGES = 25
LATENCY_MS = 100
MAX_IDEAL_RATIO = 1.3
WARMUP_ITEMS = 2


def _ideal_s(items: int, pages: int) -> float:
    rounds = 1 + math.ceil(items * (pages - 1) / CONCURRENCY)
    return rounds * LATENCY_MS / 1000


def run(bench: Bench) -> Section:
    """Pagination: CPU per page against per item; parallel pages against page by page."""
    cpu_items = bench.size(full=CPU_ITEMS, quick=QUICK_CPU_ITEMS)
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(moto_ok=False),
        log_dir=bench.log_dir / "servers-pagination-cpu",
    ) as servers:
        for _ in range(bench.repeats):  # interleaved, so drift hits both alike
            records["paginated"].append(_paged(bench, servers, cpu_items, CPU_PAGES, True))
            records["unpaginated"].append(_flat(bench, servers, cpu_items * CPU_PAGES))
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES, latency_ms=LATENCY_MS),
        s3=bench.s3(moto_ok=False),
        log_dir=bench.log_dir / "servers-pagination-parallel",
    ) as servers:
        for _ in range(bench.repeats):
            for parallel in (True, False):
                name = "parallel" if parallel else "page by page"
                records[name].append(
                    _paged(bench, servers, PARALLEL_ITEMS, PARALLEL_PAGES, parallel)
                )
    series = {name: summarize(runs) for name, runs in records.items()}
    section = Section(
        "pagination", "Pagination: CPU per page, parallel pages (issue 9)", _setup(cpu_items)
    )
    section.tables += [_cpu_table(series, cpu_items), _parallel_table(series)]
    section.verdicts += _verdicts(series, cpu_items)
    section.raw = {"series": series, "runs": dict(records)}
    return section


def _paged(
    bench: Bench, servers: Servers, items: int, pages: int, parallel: bool
) -> dict[str, Any]:
    pagination = {
        "type": "page_number",
        "total_header": "X-Total-Count",
        "max_pages": pages,
        "parallel": parallel,
    }

    def check(record: dict[str, Any], objects: int, nbytes: int) -> str | None:
        want = (items * pages, items * pages * SMALL_BODY_BYTES)
        if (objects, nbytes) != want:
            return f"{objects} objects / {nbytes} bytes under the prefix; expected {want}"
        return None

    record = bench.run(
        servers,
        "fanout_ingest",
        items=items,
        concurrency=CONCURRENCY,
        body_bytes=SMALL_BODY_BYTES,
        warmup=WARMUP_ITEMS,
        check=check,
        api_config={"endpoint": f"{servers.api_url}?pages={pages}", "pagination": pagination},
    )
    record["pages"] = items * pages
    return record


def _flat(bench: Bench, servers: Servers, items: int) -> dict[str, Any]:
    record = bench.run(
        servers,
        "fanout_ingest",
        items=items,
        concurrency=CONCURRENCY,
        body_bytes=SMALL_BODY_BYTES,
        warmup=WARMUP_ITEMS * CPU_PAGES,
    )
    record["pages"] = items
    return record


def _per_page(runs_summary: dict[str, Any], pages_per_item: int) -> float | None:
    per_item = runs_summary.get("cpu_us_per_item")
    return None if per_item is None else per_item / pages_per_item


def _setup(cpu_items: int) -> str:
    return (
        f"API: 9,000-byte JSON bodies; page_number pagination with total_header "
        f"(X-Total-Count). S3: the sink. CPU: {cpu_items} items x {CPU_PAGES} pages "
        f"against {cpu_items * CPU_PAGES:,} unpaginated items, c={CONCURRENCY}, no latency, "
        f"interleaved. Parallel: {PARALLEL_ITEMS} items x {PARALLEL_PAGES} pages, "
        f"{LATENCY_MS} ms API latency, c={CONCURRENCY}; ideal "
        f"{_ideal_s(PARALLEL_ITEMS, PARALLEL_PAGES):.1f} s (first pages, then the rest "
        f"{CONCURRENCY} at a time)."
    )


def _cpu_table(series: dict[str, dict[str, Any]], cpu_items: int) -> Table:
    paged, flat = series.get("paginated", {}), series.get("unpaginated", {})
    per_page = _per_page(paged, CPU_PAGES)
    rows = [
        [
            "paginated",
            status_cell(paged),
            cpu_items * CPU_PAGES,
            per_page,
            ratio(per_page, flat.get("cpu_us_per_item")),
            paged.get("wall_s"),
        ],
        [
            "unpaginated",
            status_cell(flat),
            cpu_items * CPU_PAGES,
            flat.get("cpu_us_per_item"),
            1.0,
            flat.get("wall_s"),
        ],
    ]
    return Table(
        "Client CPU per page against per item, same bodies, same run (medians)",
        ["series", "runs", "pages (objects)", "CPU µs/page or item", "÷ unpaginated", "wall s"],
        rows,
    )


def _parallel_table(series: dict[str, dict[str, Any]]) -> Table:
    ideal = _ideal_s(PARALLEL_ITEMS, PARALLEL_PAGES)
    rows = []
    for name in ("parallel", "page by page"):
        s = series.get(name, {})
        rows.append([name, status_cell(s), s.get("wall_s"), ideal, ratio(s.get("wall_s"), ideal)])
    return Table(
        f"{PARALLEL_ITEMS} items x {PARALLEL_PAGES} pages at {LATENCY_MS} ms, c={CONCURRENCY}",
        ["series", "runs", "wall s", "ideal s", "÷ ideal"],
        rows,
    )


def _verdicts(series: dict[str, dict[str, Any]], cpu_items: int) -> list[Verdict]:
    paged, flat = series.get("paginated", {}), series.get("unpaginated", {})
    per_page = _per_page(paged, CPU_PAGES)
    cpu = ratio(per_page, flat.get("cpu_us_per_item"))
    verdicts = [
        Verdict(
            "G1",
            f"client CPU per page <= {MAX_CPU_RATIO}x CPU per unpaginated item",
            "n/a"
            if cpu is None
            else f"{cpu:.2f}x ({per_page:.0f} vs {flat['cpu_us_per_item']:.0f} µs)",
            "N/A" if cpu is None else ("PASS" if cpu <= MAX_CPU_RATIO else "FAIL"),
        )
    ]
    ideal = _ideal_s(PARALLEL_ITEMS, PARALLEL_PAGES)
    wall = series.get("parallel", {}).get("wall_s")
    serial = series.get("page by page", {}).get("wall_s")
    value = ratio(wall, ideal)
    verdicts.append(
        Verdict(
            "G2",
            f"parallel pages within {MAX_IDEAL_RATIO}x the ideal {ideal:.1f} s",
            "n/a"
            if value is None
            else f"{wall:.2f} s = {value:.2f}x ideal (page by page {serial or float('nan'):.2f} s)",
            "N/A" if value is None else ("PASS" if value <= MAX_IDEAL_RATIO else "FAIL"),
        )
    )
    return verdicts
