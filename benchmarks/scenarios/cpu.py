"""T1 and T2: client CPU per item for 9 KB bodies.

fanout-ingest and the raw aiohttp floor at concurrency 16/64/128, the SDK single-PUT
path at 64, the original function sequential and in a 32-thread pool; with the
default sink S3, a one-run cross-check of the floor and ours on moto.
"""

from __future__ import annotations

import collections
import statistics
from typing import Any

from benchmarks import report
from benchmarks.measure import (
    SMALL_BODY_BYTES,
    Bench,
    ratio,
    ratio_verdict,
    status_cell,
    summarize,
)
from benchmarks.peers import DEFAULT_WARMUP_ITEMS, ORIGINAL_THREADS
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

CPU_CONCURRENCY = (16, 64, 128)
QUICK_CPU_CONCURRENCY = (64,)  # T1's concurrency only, so make bench-quick fits in 3 minutes
T1_CONCURRENCY = 64  # the design's default concurrency; T1 and T2 compare there
T1_MAX_RATIO = 1.5  # issue 13 (was 2.0 in issue 5)
T1_MOONSHOT_RATIO = 1.3
T2_MIN_VS_SEQUENTIAL = 5.0
T2_MIN_VS_THREADPOOL = 4.0
ITEMS = 2_000  # per run, each implementation
QUICK_ITEMS = 300
MOTO_CHECK_ITEMS = 1_000  # one run each on moto, the S3 figure beside the sink's
QUICK_MOTO_CHECK_ITEMS = 200


def run(bench: Bench) -> Section:
    """T1 and T2: client CPU per item for 9 KB bodies."""
    items = bench.size(full=ITEMS, quick=QUICK_ITEMS)
    levels = bench.size(full=CPU_CONCURRENCY, quick=QUICK_CPU_CONCURRENCY)
    plan = (
        [("raw_floor", c, items) for c in levels]
        + [("fanout_ingest", c, items) for c in levels]
        # The single-PUT path decision (docs/PERFORMANCE.md): the SDK path, same run.
        + ([] if bench.quick else [("fanout_ingest_sdk", T1_CONCURRENCY, items)])
        + [
            ("original_sequential", 1, items),
            ("original_threadpool", ORIGINAL_THREADS, items),
        ]
    )
    records: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-cpu",
    ) as servers:
        for _ in range(bench.repeats):  # interleaved, so drift over time hits every series alike
            for impl, concurrency, n in plan:
                done = records[(impl, concurrency)]
                if done and done[-1]["status"] == "unavailable":
                    continue
                done.append(
                    bench.run(
                        servers,
                        impl,
                        items=n,
                        concurrency=concurrency,
                        body_bytes=SMALL_BODY_BYTES,
                    )
                )
        s3_kind = servers.s3_kind
    series: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for (impl, concurrency), runs in records.items():
        series[impl][concurrency] = summarize(runs)
    section = Section("cpu", "CPU per item (T1, T2)", _cpu_setup(items, bench.repeats, s3_kind))
    section.tables.append(_cpu_table(series))
    section.verdicts += _cpu_verdicts(series)
    section.verdicts.append(_pairs_verdict(records))
    moto_items = bench.size(full=MOTO_CHECK_ITEMS, quick=QUICK_MOTO_CHECK_ITEMS)
    if moto_items and s3_kind != "moto":
        section.tables.append(_moto_cross_check(bench, moto_items))
    section.plots += report.plot_cpu(bench.out, series)
    section.raw = {"series": series, "runs": {f"{k[0]}@{k[1]}": v for k, v in records.items()}}
    return section


def _cpu_setup(items: int, repeats: int, s3_kind: str) -> str:
    return (
        f"API: 9,000-byte JSON bodies, no latency. S3: {s3_kind}. {items} items per async "
        f"run, {items} per original run, one object per item, {repeats} "
        f"interleaved repeats, {DEFAULT_WARMUP_ITEMS} warm-up items per worker (not measured). "
        "The original function also parses the body (`len(response.json())`), as it did. "
        "Server CPU per item is read around the whole worker (warm-up included)."
    )


def _cpu_table(series: dict[str, dict[int, dict[str, Any]]]) -> Table:
    floor = series.get("raw_floor", {})
    rows = []
    for impl, by_conc in series.items():
        for concurrency, s in sorted(by_conc.items()):
            vs_floor = ratio(
                s["cpu_us_per_item"], floor.get(concurrency, {}).get("cpu_us_per_item")
            )
            rows.append(
                [
                    impl,
                    concurrency,
                    status_cell(s),
                    s["cpu_us_per_item"],
                    s["cpu_us_range"],
                    vs_floor if impl.startswith("fanout_ingest") else None,
                    s["items_per_s"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["api_cpu_us_per_item"],
                    s["s3_cpu_us_per_item"],
                    s["background_cores"],
                ]
            )
    return Table(
        "Client CPU per item (medians)",
        [
            "implementation",
            "concurrency",
            "runs",
            "CPU µs/item",
            "range",
            "÷ raw floor",
            "items/s",
            "p50 ms",
            "p99 ms",
            "API server CPU µs/item",
            "S3 server CPU µs/item",
            "other load, cores",
        ],
        rows,
    )


def _pairs_verdict(records: dict[tuple[str, int], list[dict[str, Any]]]) -> Verdict:
    """T1 again, as the median of per-repeat ratios: each repeat's pair ran back to back."""
    ours, floor = (
        records.get(("fanout_ingest", T1_CONCURRENCY)),
        records.get(("raw_floor", T1_CONCURRENCY)),
    )
    pairs = [
        (o["cpu_s"] / o["items"]) / (f["cpu_s"] / f["items"])
        for o, f in zip(ours or [], floor or [], strict=False)
        if o["status"] == f["status"] == "ok"
    ]
    claim = f"moonshot: fanout CPU/item <= {T1_MOONSHOT_RATIO}x raw floor (median of pairs)"
    if not pairs:
        return Verdict("T1", claim, "no repeat where both ran", "N/A")
    median = statistics.median(pairs)
    return Verdict(
        "T1",
        claim,
        f"{median:.2f}x; per repeat {', '.join(f'{p:.2f}' for p in pairs)}",
        "PASS" if median <= T1_MOONSHOT_RATIO else "REPORT",
    )


def _cpu_verdicts(series: dict[str, dict[int, dict[str, Any]]]) -> list[Verdict]:
    ours = series.get("fanout_ingest", {}).get(T1_CONCURRENCY, {"status": "not run"})
    floor = series.get("raw_floor", {}).get(T1_CONCURRENCY, {"status": "not run"})
    seq = series.get("original_sequential", {}).get(1, {"status": "not run"})
    pool = series.get("original_threadpool", {}).get(ORIGINAL_THREADS, {"status": "not run"})
    verdicts = [
        ratio_verdict(
            "T1",
            f"fanout CPU/item <= {T1_MAX_RATIO}x raw floor at c={T1_CONCURRENCY}",
            ours,
            floor,
            lambda r: r <= T1_MAX_RATIO,
            "{:.2f}x ({:.0f} vs {:.0f} µs)",
            invert=False,
        )
    ]
    for label, peer, floor_ratio in (
        ("sequential", seq, T2_MIN_VS_SEQUENTIAL),
        ("32-thread pool", pool, T2_MIN_VS_THREADPOOL),
    ):
        verdicts.append(
            ratio_verdict(
                "T2",
                f">= {floor_ratio:g}x fewer CPU/item than the original, {label}",
                ours,
                peer,
                lambda r, f=floor_ratio: r >= f,
                "{:.1f}x ({:.0f} vs {:.0f} µs)",
                invert=True,
            )
        )
    return verdicts


def _moto_cross_check(bench: Bench, items: int) -> Table:
    rows = []
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3="moto",
        log_dir=bench.log_dir / "servers-moto",
    ) as servers:
        runs = {
            impl: summarize(
                [
                    bench.run(
                        servers,
                        impl,
                        items=items,
                        concurrency=T1_CONCURRENCY,
                        body_bytes=SMALL_BODY_BYTES,
                    )
                ]
            )
            for impl in ("raw_floor", "raw_put", "fanout_ingest")
        }
    floor = runs["raw_floor"]["cpu_us_per_item"]
    for impl, s in runs.items():
        rows.append(
            [
                impl,
                T1_CONCURRENCY,
                status_cell(s),
                s["cpu_us_per_item"],
                ratio(s["cpu_us_per_item"], floor) if impl == "fanout_ingest" else None,
                s["items_per_s"],
                s["s3_cpu_us_per_item"],
            ]
        )
    return Table(
        f"Cross-check on moto (one run, {items} items; raw_put = PUTs only, moto's ceiling)",
        [
            "implementation",
            "concurrency",
            "runs",
            "CPU µs/item",
            "÷ raw floor",
            "items/s",
            "S3 server CPU µs/item",
        ],
        rows,
    )
