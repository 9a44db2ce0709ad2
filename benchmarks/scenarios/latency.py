"""T3: latency-bound throughput against the ideal wall time.

The API answers after 100 ms; 2,000 items at concurrency 200 against
ideal = items x latency / concurrency, with the S3 endpoint's PUT capacity
(``raw_put``) and the raw floor measured in the same run.
"""

from __future__ import annotations

import collections
from typing import Any

from benchmarks import report
from benchmarks.measure import SMALL_BODY_BYTES, Bench, ratio, status_cell, summarize
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

LATENCY_MS = 100
ITEMS = 2_000
QUICK_ITEMS = 2_000
LATENCY_CONCURRENCY = 200
T3_MAX_RATIO = 1.2


def run(bench: Bench) -> Section:
    """T3: 100 ms API latency, 2,000 items at concurrency 200 against the ideal time."""
    items, c = bench.size(full=ITEMS, quick=QUICK_ITEMS), LATENCY_CONCURRENCY
    ideal_s = items * LATENCY_MS / 1000 / c
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(latency_ms=LATENCY_MS, body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-latency",
    ) as servers:
        for _ in range(bench.repeats):
            for impl in ("raw_put", "raw_floor", "fanout_ingest"):
                if records[impl] and records[impl][-1]["status"] == "unavailable":
                    continue
                records[impl].append(
                    bench.run(
                        servers, impl, items=items, concurrency=c, body_bytes=SMALL_BODY_BYTES
                    )
                )
        s3_kind = servers.s3_kind
    summaries = {impl: summarize(runs) for impl, runs in records.items()}
    section = Section(
        "latency",
        "Latency-bound throughput (T3)",
        f"API answers after {LATENCY_MS} ms with 9,000-byte bodies; {items} items at "
        f"concurrency {c}; ideal = items x latency / concurrency = {ideal_s:.2f} s. "
        f"S3: {s3_kind}. `raw_put` PUTs the same number of 9,000-byte objects at the "
        f"same concurrency with no API, to show the S3 endpoint is not the limit. "
        f"Wall time is the whole measured call (for fanout-ingest: the "
        f"`lambda_handler` call). {bench.repeats} repeats.",
    )
    section.tables.append(_latency_table(summaries, records, ideal_s, items))
    section.notes.append(
        "Client, API server and S3 server share this machine's cores with any other load; "
        "client CPU s (one event loop, so a floor on wall time) plus server CPU s (warm-up "
        "included) against cores x wall shows how much of the wall time is CPU, not waiting."
    )
    section.verdicts.append(_latency_verdict(summaries, items, ideal_s))
    section.raw = {"summaries": summaries, "runs": records, "ideal_s": ideal_s}
    return section


def _latency_table(
    summaries: dict[str, dict[str, Any]],
    records: dict[str, list[dict[str, Any]]],
    ideal_s: float,
    items: int,
) -> Table:
    rows = []
    for impl, s in summaries.items():
        ok = [r for r in records[impl] if r["status"] == "ok"]
        durations = [
            r["detail"]["duration_ms"] / 1000 for r in ok if r["detail"].get("duration_ms")
        ]
        servers = [r["api_cpu_s"] + r["s3_cpu_s"] for r in ok if r.get("s3_cpu_s") is not None]
        rows.append(
            [
                impl,
                status_cell(s),
                s["wall_s"],
                ratio(s["wall_s"], ideal_s) if impl != "raw_put" else None,
                s["items_per_s"],
                s["p50_ms"],
                s["p99_ms"],
                s["cpu_us_per_item"],
                s["cpu_us_per_item"] * items / 1e6 if s["cpu_us_per_item"] else None,
                report.median_or_none(servers),
                s["background_cores"],
                report.median_or_none(durations),
            ]
        )
    return Table(
        "Wall time against the ideal (medians)",
        [
            "implementation",
            "runs",
            "wall s",
            "÷ ideal",
            "items/s",
            "p50 ms",
            "p99 ms",
            "client CPU µs/item",
            "client CPU s",
            "API+S3 server CPU s",
            "other load, cores",
            "handler-reported duration s",
        ],
        rows,
    )


def _latency_verdict(summaries: dict[str, dict[str, Any]], items: int, ideal_s: float) -> Verdict:
    limit_s = ideal_s * T3_MAX_RATIO
    claim = (
        f"{items} items at c={LATENCY_CONCURRENCY} within {T3_MAX_RATIO}x ideal ({limit_s:.2f} s)"
    )
    put, ours = summaries.get("raw_put"), summaries.get("fanout_ingest")
    needed = items / (ideal_s * T3_MAX_RATIO)  # the rate fanout-ingest must sustain to pass
    s3_ok = bool(put and put["status"] == "ok" and put["items_per_s"] >= needed)
    s3_note = (
        f"S3 capacity {put['items_per_s']:.0f} PUT/s vs {needed:.0f}/s needed"
        if put and put["items_per_s"]
        else "S3 capacity not measured"
    )
    if not ours or ours["status"] != "ok":
        status = ours["status"] if ours else "not run"
        return Verdict("T3", claim, f"fanout_ingest {status}; {s3_note}", "N/A")
    ratio = ours["wall_s"] / ideal_s
    floor = summaries.get("raw_floor") or {}
    floor_note = (
        f"raw floor {floor['wall_s'] / ideal_s:.2f}x; " if floor.get("wall_s") is not None else ""
    )
    measured = f"{ours['wall_s']:.2f} s = {ratio:.2f}x ideal; {floor_note}{s3_note}"
    if ratio <= T3_MAX_RATIO:
        return Verdict("T3", claim, measured, "PASS")
    return Verdict("T3", claim, measured, "FAIL" if s3_ok else "INCONCLUSIVE")
