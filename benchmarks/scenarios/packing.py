"""Packing (issue 10): S3 write requests, client CPU and RSS, packed against unpacked.

9 KB bodies at c=64: one object per item (unpacked) and response packs with gzip
levels 1, 3 and 6 (and none), in the same run, interleaved. S3 write requests
(PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload) are read
from the sink's counters around each worker, so they include the worker's warm-up
invocation (its own pack and manifest) and every run's manifest. RSS is sampled
every 50 ms across the measured items. Always on the sink S3 (it counts requests;
moto would keep every object in memory).
"""

from __future__ import annotations

import collections
import statistics
from typing import Any

from benchmarks import report
from benchmarks.measure import SMALL_BODY_BYTES, Bench, ratio, status_cell, summarize
from benchmarks.peers import DEFAULT_WARMUP_ITEMS
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, Servers, sink_stats, start_servers

CONCURRENCY = 64
# 100,000 items per run would take ~15 minutes for five series x three repeats on a
# 2-core machine; requests per million items is a ratio, so 10,000 items measure it too.
ITEMS = 10_000
QUICK_ITEMS = 3_000
PACK_TARGET_MB = 64
MEMORY_BUDGET_MB = 256
WRITE_COUNTERS = ("put_object", "create_mpu", "upload_part", "complete")
MAX_WRITES_PER_MILLION = 1_000
MAX_CPU_RATIO = 1.2
RSS_FLAT_TOLERANCE_MIB = 16
SERIES: dict[str, dict[str, Any] | None] = {
    "unpacked": None,
    "gzip-1": {"compression": "gzip", "gzip_level": 1},
    "gzip-3": {"compression": "gzip", "gzip_level": 3},
    "gzip-6": {"compression": "gzip", "gzip_level": 6},
    "none": {"compression": "none"},
}
CHOSEN = "gzip-1"  # the default level (config.DEFAULT_PACK_GZIP_LEVEL)


def run(bench: Bench) -> Section:
    """Packing: S3 write requests, client CPU and RSS, packed against unpacked."""
    items = bench.size(full=ITEMS, quick=QUICK_ITEMS)
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(moto_ok=False),
        log_dir=bench.log_dir / "servers-packing",
    ) as servers:
        if servers.s3_kind != "sink":
            raise RuntimeError("the packing scenario counts requests on the sink S3")
        for _ in range(bench.repeats):  # interleaved, so drift hits every series alike
            for name, pack in SERIES.items():
                records[name].append(_one(bench, servers, items, pack))
    series = {name: _summary(runs) for name, runs in records.items()}
    section = Section(
        "packing", "Packing: requests, CPU and memory (issue 10)", _setup(items, bench.repeats)
    )
    section.tables.append(_table(series))
    section.verdicts += _verdicts(series)
    section.raw = {"series": series, "runs": dict(records)}
    return section


def _one(bench: Bench, servers: Servers, items: int, pack: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {"memory_budget_mb": MEMORY_BUDGET_MB}
    if pack is not None:
        options["pack"] = {"unit": "response", "target_mb": PACK_TARGET_MB, **pack}
    before = _writes(servers)
    record = bench.run(
        servers,
        "fanout_ingest",
        items=items,
        concurrency=CONCURRENCY,
        body_bytes=SMALL_BODY_BYTES,
        options=options,
        sample_rss=True,
        check=_packed_check if pack is not None else None,
    )
    record["s3_writes"] = _writes(servers) - before
    return record


def _packed_check(record: dict[str, Any], objects: int, nbytes: int) -> str | None:
    """A packed run's prefix holds its packs: at least one, exactly the bytes reported."""
    written = (record.get("detail") or {}).get("bytes_written")
    if objects < 1 or nbytes != written:
        return (
            f"{objects} pack objects / {nbytes} bytes under the prefix; the result says {written}"
        )
    return None


def _writes(servers: Servers) -> int:
    stats = sink_stats(servers.s3_url)
    return sum(int(stats[name]) for name in WRITE_COUNTERS)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    s = summarize(runs)
    ok = [r for r in runs if r["status"] == "ok"]
    per_million = [r["s3_writes"] / r["items"] * 1e6 for r in ok]
    s["s3_writes"] = statistics.median([r["s3_writes"] for r in ok]) if ok else None
    s["writes_per_million"] = statistics.median(per_million) if per_million else None
    s["objects"] = statistics.median([r["objects"] for r in ok]) if ok else None
    s["stored_bytes_per_item"] = (
        statistics.median([r["object_bytes"] / r["items"] for r in ok]) if ok else None
    )
    s.update(_rss(ok[-1]) if ok else {})
    return s


def _rss(record: dict[str, Any]) -> dict[str, Any]:
    """Median RSS early (10-20%) and late (90-100%) in the measured items of one run."""
    span = record["t_end"] - record["t_start"]

    def window(lo: float, hi: float) -> list[float]:
        start, end = record["t_start"] + lo * span, record["t_start"] + hi * span
        return [m for t, m in record.get("rss_samples", []) if start <= t <= end]

    early, late = window(0.10, 0.20), window(0.90, 1.00)
    if len(early) < 2 or len(late) < 2:
        return {"rss_note": "too few RSS samples"}
    return {
        "rss_early_mib": statistics.median(early),
        "rss_late_mib": statistics.median(late),
        "rss_growth_mib": statistics.median(late) - statistics.median(early),
        "rss_max_mib": max(window(0, 1)),
    }


def _setup(items: int, repeats: int) -> str:
    return (
        f"API: 9,000-byte JSON bodies, no latency. S3: the sink. {items:,} items per run at "
        f"c={CONCURRENCY}, {repeats} interleaved repeats, memory_budget_mb {MEMORY_BUDGET_MB}; "
        f"packs: unit response, target_mb {PACK_TARGET_MB}. Write requests include the "
        f"worker's warm-up invocation ({DEFAULT_WARMUP_ITEMS} items: one more pack or "
        f"{DEFAULT_WARMUP_ITEMS} more objects, and one more manifest) and every manifest. "
        f"The full run uses {ITEMS:,} items, not 100,000, to stay near 3 minutes; requests "
        "per million items is a ratio, and RSS is judged on its slope across the run."
    )


def _table(series: dict[str, dict[str, Any]]) -> Table:
    unpacked = series.get("unpacked", {}).get("cpu_us_per_item")
    rows = [
        [
            name,
            status_cell(s),
            s.get("s3_writes"),
            s.get("writes_per_million"),
            s.get("objects"),
            s.get("stored_bytes_per_item"),
            s["cpu_us_per_item"],
            ratio(s["cpu_us_per_item"], unpacked),
            s["items_per_s"],
            s.get("rss_early_mib"),
            s.get("rss_late_mib"),
            s.get("rss_max_mib"),
        ]
        for name, s in series.items()
    ]
    return Table(
        "Unpacked and packed, same run (medians)",
        [
            "series",
            "runs",
            "S3 write requests",
            "per million items",
            "objects",
            "stored bytes/item",
            "CPU µs/item",
            "÷ unpacked",
            "items/s",
            "RSS early MiB",
            "RSS late MiB",
            "RSS max MiB",
        ],
        rows,
    )


def _verdicts(series: dict[str, dict[str, Any]]) -> list[Verdict]:
    chosen = series.get(CHOSEN, {"status": "not run"})
    unpacked = series.get("unpacked", {"status": "not run"})
    if chosen.get("status") != "ok" or unpacked.get("status") != "ok":
        return [Verdict("P1", "packed runs measured", "a series failed", "N/A")]
    verdicts = [
        Verdict(
            "P1",
            f"S3 write requests per million items <= {MAX_WRITES_PER_MILLION:,} ({CHOSEN})",
            f"{chosen['writes_per_million']:,.0f} (unpacked {unpacked['writes_per_million']:,.0f})",
            "PASS" if chosen["writes_per_million"] <= MAX_WRITES_PER_MILLION else "FAIL",
        )
    ]
    for name in ("gzip-1", "gzip-3", "gzip-6"):
        s = series.get(name, {})
        value = ratio(s.get("cpu_us_per_item"), unpacked["cpu_us_per_item"])
        verdicts.append(
            Verdict(
                "P2",
                f"CPU/item packed ({name}) <= {MAX_CPU_RATIO}x unpacked",
                "n/a"
                if value is None
                else f"{value:.2f}x ({s['cpu_us_per_item']:.0f} vs "
                f"{unpacked['cpu_us_per_item']:.0f} µs)",
                "N/A" if value is None else ("PASS" if value <= MAX_CPU_RATIO else "FAIL"),
            )
        )
    growth, peak = chosen.get("rss_growth_mib"), chosen.get("rss_max_mib")
    verdicts.append(
        Verdict(
            "P3",
            f"RSS flat (growth <= {RSS_FLAT_TOLERANCE_MIB} MiB) and within the "
            f"{MEMORY_BUDGET_MB} MiB budget ({CHOSEN})",
            "n/a" if growth is None else f"growth {growth:+.1f} MiB, max {peak:.0f} MiB",
            "N/A"
            if growth is None
            else (
                "PASS" if growth <= RSS_FLAT_TOLERANCE_MIB and peak <= MEMORY_BUDGET_MB else "FAIL"
            ),
        )
    )
    return verdicts


__all__ = ["report", "run"]
