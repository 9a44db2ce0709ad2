"""Peer: dlt (REST API source, parallelized, filesystem destination) beside fanout-ingest.

2,000 dates, one GET each, against the same fake API (9,000-byte JSON arrays of 49
records) and the same S3 server. The sink cannot serve the reads and listings
dlt's filesystem destination makes, so this scenario uses moto unless ``--s3``
names another server. dlt needs the ``bench`` extra (``make bench`` installs it);
without it the peer is reported as unavailable.
"""

from __future__ import annotations

import collections
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, Bench, ratio, status_cell, summarize
from benchmarks.peer_dlt import DLT_PREFIX, dataset_name
from benchmarks.peers import key_prefix
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, Servers, body_layout, count_objects, start_servers

DATES = 2_000
QUICK_DATES = 300
CONCURRENCY = 64  # ours: options.concurrency; dlt: EXTRACT__WORKERS and LOAD__WORKERS
WARMUP = 20
IMPLS = ("fanout_ingest", "dlt_rest_api")
WRITES = {
    "fanout_ingest": "each raw response as one object (bytes as received) + one manifest "
    "line per item",
    "dlt_rest_api": "every record parsed and normalised into rows of gzip'd jsonl load "
    "files, plus dlt's schema, state and load markers; the responses themselves are not kept",
}


def run(bench: Bench) -> Section:
    """Both tools over the same dates, API and S3, back to back, ``bench.repeats`` times."""
    dates = bench.size(full=DATES, quick=QUICK_DATES)
    s3 = "moto" if bench.s3() == "sink" else bench.s3()
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES), s3=s3, log_dir=bench.log_dir / "servers-dlt"
    ) as servers:
        for _ in range(bench.repeats):
            for impl in IMPLS:
                if records[impl] and records[impl][-1]["status"] == "unavailable":
                    continue
                record = bench.run(
                    servers,
                    impl,
                    items=dates,
                    concurrency=CONCURRENCY,
                    body_bytes=SMALL_BODY_BYTES,
                    warmup=WARMUP,
                    verify=impl != "dlt_rest_api",
                )
                _account(servers, record, dates)
                records[impl].append(record)
        s3_kind = servers.s3_kind
    summaries = {impl: _summary(runs) for impl, runs in records.items()}
    section = Section(
        "dlt",
        "Peer: dlt (issue 13)",
        f"{dates} dates, one GET each, 9,000-byte JSON arrays of "
        f"{body_layout(SMALL_BODY_BYTES, 'x').count} records; S3: {s3_kind} for both. "
        f"fanout-ingest: the handler with concurrency {CONCURRENCY}. dlt: "
        f"`rest_api_source(parallelized=True)` with a parent resource of dates and a "
        f"dependent resource (`parallelized: True`) resolving the `date` query parameter, "
        f"`EXTRACT__WORKERS={CONCURRENCY}`, `LOAD__WORKERS={CONCURRENCY}`, `filesystem` "
        f"destination (s3fs) on the same server. CPU is the worker's own plus any child "
        f"processes it waited for; {WARMUP} warm-up dates each; {bench.repeats} repeats, "
        f"back to back. dlt's rows are checked against dates x records per body.",
    )
    section.tables.append(_table(summaries))
    section.verdicts.append(_verdict(summaries))
    section.raw = {"summaries": summaries, "runs": records}
    return section


def _account(servers: Servers, record: dict[str, Any], dates: int) -> None:
    """What the run left in S3, and dlt's own check: every record became a row."""
    if record["status"] != "ok":
        return
    if record["impl"] == "dlt_rest_api":
        prefix = f"{DLT_PREFIX}/{dataset_name(record['run_id'])}/"
        expected_rows = dates * body_layout(SMALL_BODY_BYTES, "x").count
        rows = (record.get("detail") or {}).get("rows")
        if rows != expected_rows:
            record["status"] = "failed"
            record.setdefault("errors", []).append(f"dlt loaded {rows} rows of {expected_rows}")
        record["cpu_s"] += (record.get("detail") or {}).get("children_cpu_s") or 0.0
    else:
        prefix = key_prefix(record["run_id"])
    record["objects"], record["object_bytes"] = count_objects(servers, prefix)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(runs)
    ok = [r for r in runs if r["status"] == "ok" and "objects" in r]
    summary["objects"] = ok[-1]["objects"] if ok else None
    summary["object_bytes"] = ok[-1]["object_bytes"] if ok else None
    return summary


def _table(summaries: dict[str, dict[str, Any]]) -> Table:
    ours = summaries.get("fanout_ingest", {}).get("cpu_us_per_item")
    rows = [
        [
            impl,
            status_cell(s),
            s["cpu_us_per_item"],
            ratio(s["cpu_us_per_item"], ours) if impl != "fanout_ingest" else None,
            s["wall_s"],
            s["items_per_s"],
            s["peak_rss_mib"],
            s["objects"],
            s["object_bytes"],
            WRITES[impl],
        ]
        for impl, s in summaries.items()
    ]
    return Table(
        "Per date (medians)",
        [
            "implementation",
            "runs",
            "client CPU µs/date",
            "÷ fanout-ingest",
            "wall s",
            "dates/s",
            "peak RSS MiB",
            "objects written",
            "bytes written",
            "what it writes",
        ],
        rows,
    )


def _verdict(summaries: dict[str, dict[str, Any]]) -> Verdict:
    claim = "dlt beside fanout-ingest: CPU per date, wall time, dates/s (reported, no target)"
    ours, peer = summaries.get("fanout_ingest"), summaries.get("dlt_rest_api")
    if not ours or not peer or ours["status"] != "ok" or peer["status"] != "ok":
        bad = peer if ours and ours["status"] == "ok" else ours
        detail = f"{(bad or {}).get('status', 'not run')}: {((bad or {}).get('error') or '')[:140]}"
        return Verdict("peer", claim, detail, "N/A")
    return Verdict(
        "peer",
        claim,
        f"dlt {peer['cpu_us_per_item']:.0f} µs/date, {peer['wall_s']:.1f} s, "
        f"{peer['items_per_s']:.0f}/s; fanout-ingest {ours['cpu_us_per_item']:.0f} µs/date, "
        f"{ours['wall_s']:.1f} s, {ours['items_per_s']:.0f}/s "
        f"({peer['cpu_us_per_item'] / ours['cpu_us_per_item']:.1f}x the CPU)",
        "REPORT",
    )
