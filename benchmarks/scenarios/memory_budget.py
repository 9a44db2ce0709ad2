"""Issue 14: peak RSS with 64 x 7 MiB JSON bodies, with and without compress.

64 concurrent chunked 7 MiB JSON bodies (each under the 8 MiB part size: one PUT
each) with default options (``memory_budget_mb=256``), then the same with
``compress``, each against a one-item baseline with the same options. Before
issue 14 the uncompressed part kept for counting records (compress) and the
copy of each single-PUT body sat outside the budget: 653 and 410 MiB peaks.
Always on the sink S3 (moto would keep every object in memory).
"""

from __future__ import annotations

from typing import Any

from benchmarks.measure import Bench, status_cell, summarize
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

BODY_BYTES = 7 * 2**20
ITEMS = 64
QUICK_ITEMS = 32
MEMORY_BUDGET_MB = 256  # the default
QUICK_MEMORY_BUDGET_MB = 128
# The stated constant: allocator slack, aiohttp's read buffers and one body being
# parsed for its record count at a time (docs/PERFORMANCE.md, "Memory").
PEAK_MARGIN_MIB = 32


def run(bench: Bench) -> Section:
    """Issue 14: peak RSS with 64 x 7 MiB JSON bodies, with and without compress."""
    items = bench.size(full=ITEMS, quick=QUICK_ITEMS)
    budget = bench.size(full=MEMORY_BUDGET_MB, quick=QUICK_MEMORY_BUDGET_MB)
    runs: dict[str, list[dict[str, Any]]] = {}
    with start_servers(
        api=ApiOptions(body_bytes=BODY_BYTES, chunked=True),
        s3=bench.s3(moto_ok=False),
        log_dir=bench.log_dir / "servers-memory-budget",
    ) as servers:
        for compress in (False, True):
            options = {"memory_budget_mb": budget, "compress": compress}
            for label, count in (("baseline", 1), (f"fanout{items}", items)):
                name = f"{label}{'+gzip' if compress else ''}"
                runs[name] = [
                    bench.run(
                        servers,
                        "fanout_ingest",
                        items=count,
                        concurrency=count,
                        body_bytes=BODY_BYTES,
                        options=options,
                        warmup=1,
                        sample_rss=True,
                        check=_gzip_objects if compress else None,
                    )
                    for _ in range(bench.repeats)
                ]
        s3_kind = servers.s3_kind
    return _section(runs, items, budget, s3_kind)


def _gzip_objects(record: dict[str, Any], objects: int, size: int) -> str | None:
    """Gzip objects are smaller than the bodies: one object per item is the check."""
    if objects != record["items"] or size <= 0:
        return f"S3 holds {objects} objects / {size} bytes; expected {record['items']} objects"
    return None


def _section(
    runs: dict[str, list[dict[str, Any]]], items: int, budget: int, s3_kind: str
) -> Section:
    section = Section(
        "memory_budget",
        "Memory budget with many bodies under a part (issue 14)",
        f"S3: {s3_kind}. {items} items of 7 MiB (chunked JSON arrays) at concurrency "
        f"{items}, `memory_budget_mb={budget}`, default part size (8 MiB), without and "
        f"with `compress`; each against a one-item baseline with the same options. "
        f"Peak RSS is the worker's VmHWM over the measured items (reset after warm-up).",
    )
    summaries = {label: summarize(records) for label, records in runs.items()}
    section.tables.append(
        Table(
            "Peak RSS, 7 MiB bodies (medians)",
            ["run", "items", "runs", "peak RSS MiB (VmHWM)", "wall s"],
            [
                [
                    label,
                    records[0]["items"],
                    status_cell(summaries[label]),
                    summaries[label]["peak_rss_mib"],
                    summaries[label]["wall_s"],
                ]
                for label, records in runs.items()
            ],
        )
    )
    for suffix in ("", "+gzip"):
        base, main = summaries[f"baseline{suffix}"], summaries[f"fanout{items}{suffix}"]
        section.verdicts.append(_verdict(base, main, budget, compress=bool(suffix)))
    section.raw = {"runs": runs}
    return section


def _verdict(base: dict[str, Any], main: dict[str, Any], budget: int, *, compress: bool) -> Verdict:
    claim = (
        f"{'compress' if compress else 'no compress'}: peak <= baseline + "
        f"{budget} (memory_budget_mb) + {PEAK_MARGIN_MIB} MiB"
    )
    if base["status"] != "ok" or main["status"] != "ok":
        bad = main if base["status"] == "ok" else base
        why = f"{bad['status']}: {(bad.get('error') or '')[:120]}"
        return Verdict("issue 14", claim, why, "N/A")
    peak, floor = main["peak_rss_mib"], base["peak_rss_mib"]
    return Verdict(
        "issue 14",
        claim,
        f"peak {peak:.0f} MiB; baseline {floor:.0f} MiB; growth {peak - floor:.0f} MiB",
        "PASS" if peak - floor <= budget + PEAK_MARGIN_MIB else "FAIL",
    )
