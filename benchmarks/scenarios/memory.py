"""T4: peak RSS with 16 x 64 MiB bodies, and RSS across a long small-body batch.

16 concurrent 64 MiB bodies under ``memory_budget_mb=128`` against a one-item
baseline, and RSS over a 100,000-item batch sampled every 50 ms. Always on the
sink S3 (moto would keep every object in memory).
"""

from __future__ import annotations

import collections
import statistics
from typing import Any

from benchmarks import report
from benchmarks.measure import SMALL_BODY_BYTES, Bench, status_cell, summarize
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

BIG_BODY_BYTES = 64 * 2**20
BIG_ITEMS = 16
MEMORY_BUDGET_MB = 128
PART_SIZE_MB = 8
PEAK_MARGIN_MIB = 32  # T4's "small margin": allocator slack, aiohttp/botocore buffers
FLAT_ITEMS = 100_000
QUICK_FLAT_ITEMS = 5_000
FLAT_CONCURRENCY = 64
FLAT_TOLERANCE_MIB = 16  # growth allowed between the early and late windows of the batch
FLAT_EARLY = (0.10, 0.20)  # fractions of the measured window; skips pool and cache fill
FLAT_LATE = (0.90, 1.00)


def run(bench: Bench) -> Section:
    """T4: peak RSS with 16 x 64 MiB bodies, and RSS across a long small-body batch."""
    options = {"memory_budget_mb": MEMORY_BUDGET_MB, "part_size_mb": PART_SIZE_MB}
    big: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=BIG_BODY_BYTES),
        s3=bench.s3(moto_ok=False),
        log_dir=bench.log_dir / "servers-memory",
    ) as servers:
        for _ in range(bench.repeats):
            for label, items in (("baseline", 1), ("fanout16", BIG_ITEMS)):
                if big[label] and big[label][-1]["status"] == "unavailable":
                    continue
                big[label].append(
                    bench.run(
                        servers,
                        "fanout_ingest",
                        items=items,
                        concurrency=items,
                        body_bytes=BIG_BODY_BYTES,
                        options=options,
                        warmup=1,
                        sample_rss=True,
                    )
                )
        if not bench.quick:  # the raw floor on the same bodies, for contrast
            big["raw16"].append(
                bench.run(
                    servers,
                    "raw_floor",
                    items=BIG_ITEMS,
                    concurrency=BIG_ITEMS,
                    body_bytes=BIG_BODY_BYTES,
                    warmup=1,
                    sample_rss=True,
                )
            )
        s3_kind = servers.s3_kind
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(moto_ok=False),
        log_dir=bench.log_dir / "servers-flat",
    ) as servers:
        flat = bench.run(
            servers,
            "fanout_ingest",
            items=bench.size(full=FLAT_ITEMS, quick=QUICK_FLAT_ITEMS),
            concurrency=FLAT_CONCURRENCY,
            body_bytes=SMALL_BODY_BYTES,
            sample_rss=True,
        )
    return _memory_section(bench, big, flat, s3_kind)


def _memory_section(
    bench: Bench, big: dict[str, list[dict[str, Any]]], flat: dict[str, Any], s3_kind: str
) -> Section:
    section = Section(
        "memory",
        "Memory (T4)",
        f"S3: {s3_kind}. (a) {BIG_ITEMS} items of 64 MiB streamed by the API "
        f"(Content-Length, 1 MiB writes) at concurrency {BIG_ITEMS} with "
        f"`memory_budget_mb={MEMORY_BUDGET_MB}`, `part_size_mb={PART_SIZE_MB}`; the "
        f"baseline is a one-item run with the same options. Peak RSS is the worker's "
        f"VmHWM over the measured items (reset after warm-up), cross-checked by "
        f"sampling RSS from the parent every 50 ms. (b) {flat['items']:,} items of "
        f"9,000 bytes at concurrency {FLAT_CONCURRENCY}, default options, RSS "
        f"sampled every 50 ms.",
    )
    summaries = {label: summarize(runs) for label, runs in big.items()}
    section.tables.append(
        Table(
            "Peak RSS, 64 MiB bodies (medians)",
            ["run", "items", "runs", "peak RSS MiB (VmHWM)", "max sampled MiB", "wall s"],
            [
                [
                    label,
                    runs[0]["items"],
                    status_cell(summaries[label]),
                    summaries[label]["peak_rss_mib"],
                    _max_sampled(runs),
                    summaries[label]["wall_s"],
                ]
                for label, runs in big.items()
            ],
        )
    )
    limit = _peak_verdict(section, summaries)
    flat_stats = _flatness(flat)
    section.tables.append(_flat_table(flat, flat_stats))
    section.verdicts.append(_flat_verdict(flat, flat_stats))
    panels: list[tuple[str, list[tuple[str, dict[str, Any]]], float | None]] = [
        (
            f"{BIG_ITEMS} x 64 MiB, memory_budget_mb={MEMORY_BUDGET_MB} (last repeat)",
            [(label, runs[-1]) for label, runs in big.items()],
            limit,
        ),
        (f"{flat['items']:,} x 9 KB at c={FLAT_CONCURRENCY}", [("fanout_ingest", flat)], None),
    ]
    section.plots.append(report.plot_rss(bench.out, panels))
    section.raw = {"big": big, "flat": flat, "flat_stats": flat_stats}
    return section


def _max_sampled(runs: list[dict[str, Any]]) -> float | None:
    peaks = [
        max(m for t, m in r["rss_samples"] if r["t_start"] <= t <= r["t_end"] + 0.1)
        for r in runs
        if r["status"] == "ok"
        and r.get("rss_samples")
        and any(r["t_start"] <= t <= r["t_end"] + 0.1 for t, _ in r["rss_samples"])
    ]
    return statistics.median(peaks) if peaks else None


def _peak_verdict(section: Section, summaries: dict[str, dict[str, Any]]) -> float | None:
    claim = (
        f"{BIG_ITEMS} x 64 MiB, budget {MEMORY_BUDGET_MB} MiB: peak <= baseline + "
        f"{MEMORY_BUDGET_MB} + {PEAK_MARGIN_MIB} MiB"
    )
    base, main = summaries.get("baseline"), summaries.get("fanout16")
    if not base or not main or base["status"] != "ok" or main["status"] != "ok":
        bad = main if base and base["status"] == "ok" else base
        detail = f"{(bad or {}).get('status', 'not run')}: {((bad or {}).get('error') or '')[:120]}"
        section.verdicts.append(Verdict("T4", claim, detail, "N/A"))
        return None
    limit = base["peak_rss_mib"] + MEMORY_BUDGET_MB + PEAK_MARGIN_MIB
    peak = main["peak_rss_mib"]
    section.verdicts.append(
        Verdict(
            "T4",
            claim,
            f"peak {peak:.0f} MiB; baseline {base['peak_rss_mib']:.0f} MiB; limit {limit:.0f} MiB",
            "PASS" if peak <= limit else "FAIL",
        )
    )
    return float(limit)


def _window(record: dict[str, Any], lo: float, hi: float) -> list[float]:
    span = record["t_end"] - record["t_start"]
    start, end = record["t_start"] + lo * span, record["t_start"] + hi * span
    return [m for t, m in record.get("rss_samples", []) if start <= t <= end]


def _flatness(record: dict[str, Any]) -> dict[str, Any]:
    if record["status"] != "ok":
        return {}
    early, late, whole = (
        _window(record, *FLAT_EARLY),
        _window(record, *FLAT_LATE),
        _window(record, 0, 1),
    )
    if len(early) < 3 or len(late) < 3:
        return {"note": "too few RSS samples in the measured window"}
    times = [t for t, _ in record["rss_samples"] if record["t_start"] <= t <= record["t_end"]]
    slope = statistics.linear_regression(times, whole).slope if len(set(times)) > 1 else 0.0
    items_per_s = record["items"] / record["wall_s"]
    return {
        "early_mib": statistics.median(early),
        "late_mib": statistics.median(late),
        "growth_mib": statistics.median(late) - statistics.median(early),
        "min_mib": min(whole),
        "max_mib": max(whole),
        "samples": len(whole),
        "slope_mib_per_10k_items": slope / items_per_s * 10_000,
        # VmHWM catches what 50 ms sampling can miss, such as work done once at the end
        "peak_mib": record.get("peak_rss_mib") or max(whole),
        "peak_over_early_mib": (record.get("peak_rss_mib") or max(whole))
        - statistics.median(early),
    }


def _flat_table(record: dict[str, Any], stats: dict[str, Any]) -> Table:
    ok = record["status"] == "ok"
    status = (
        "ok" if ok else f"{record['status'].upper()}: {'; '.join(record.get('errors', []))[:160]}"
    )
    return Table(
        "RSS across the long batch",
        [
            "items",
            "status",
            "wall s",
            "items/s",
            "CPU µs/item",
            "RSS early MiB (10-20%)",
            "RSS late MiB (90-100%)",
            "growth MiB",
            "min/max sampled MiB",
            "peak MiB (VmHWM)",
            "slope MiB per 10k items",
        ],
        [
            [
                record["items"],
                status,
                record.get("wall_s"),
                record["items"] / record["wall_s"] if ok else None,
                record["cpu_s"] / record["items"] * 1e6 if ok else None,
                stats.get("early_mib"),
                stats.get("late_mib"),
                stats.get("growth_mib"),
                f"{stats['min_mib']:.0f} / {stats['max_mib']:.0f}" if "min_mib" in stats else None,
                stats.get("peak_mib"),
                stats.get("slope_mib_per_10k_items"),
            ]
        ],
    )


def _flat_verdict(record: dict[str, Any], stats: dict[str, Any]) -> Verdict:
    claim = (
        f"RSS flat across {record['items']:,} items "
        f"(late vs early, and peak vs early, each <= +{FLAT_TOLERANCE_MIB} MiB)"
    )
    if "growth_mib" not in stats:
        why = (
            stats.get("note") or f"{record['status']}: {'; '.join(record.get('errors', []))[:120]}"
        )
        return Verdict("T4", claim, why, "N/A")
    growth, spike = stats["growth_mib"], stats["peak_over_early_mib"]
    flat = growth <= FLAT_TOLERANCE_MIB and spike <= FLAT_TOLERANCE_MIB
    return Verdict(
        "T4",
        claim,
        f"{stats['early_mib']:.0f} -> {stats['late_mib']:.0f} MiB ({growth:+.1f}); "
        f"peak {stats['peak_mib']:.0f} MiB ({spike:+.1f})",
        "PASS" if flat else "FAIL",
    )
