"""Run the benchmark scenarios of issue #5 and write RESULTS.md and plots.

    python -m benchmarks.run [--quick] [--scenarios cpu,latency,memory,startup]
                             [--s3 sink|moto|URL] [--out benchmarks/results]

Scenarios (targets from issue #5):

* ``cpu``: 9 KB bodies; fanout-ingest and the raw aiohttp floor at concurrency
  16/64/128, the original function sequential and in a 32-thread pool. T1, T2.
* ``latency``: the API answers after 100 ms; 2,000 items at concurrency 200
  against ideal = items x latency / concurrency, with the S3 endpoint's PUT
  capacity measured in the same run. T3.
* ``memory``: 16 concurrent 64 MiB bodies under ``memory_budget_mb=128`` against a
  one-item baseline, and RSS over a 100,000-item batch, sampled every 50 ms. T4.
* ``startup``: fresh-process import time and warm one-item invocation overhead. T5.

Every measurement runs in its own worker process (``benchmarks.peers``), is
checked (all items succeeded, and the S3 server holds exactly the expected
objects and bytes) and is repeated; tables show medians.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.peers import (
    DEFAULT_WARMUP_ITEMS,
    ORIGINAL_THREADS,
    REPO_ROOT,
    WorkerSpec,
    key_prefix,
    run_worker,
    worker_env,
)
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, Servers, count_objects, start_servers

SCENARIOS_ALL = ("cpu", "latency", "memory", "startup")
SMALL_BODY_BYTES = 9_000
BIG_BODY_BYTES = 64 * 2**20

CPU_CONCURRENCY = (16, 64, 128)
T1_CONCURRENCY = 64  # the design's default concurrency; T1 and T2 compare there
T1_MAX_RATIO = 2.0
T2_MIN_VS_SEQUENTIAL = 5.0
T2_MIN_VS_THREADPOOL = 4.0

LATENCY_MS = 100
LATENCY_ITEMS = 2_000
LATENCY_CONCURRENCY = 200
T3_MAX_RATIO = 1.2

BIG_ITEMS = 16
MEMORY_BUDGET_MB = 128
PART_SIZE_MB = 8
PEAK_MARGIN_MIB = 32  # T4's "small margin": allocator slack, aiohttp/botocore buffers
FLAT_CONCURRENCY = 64
FLAT_TOLERANCE_MIB = 16  # growth allowed between the early and late windows of the batch
FLAT_EARLY = (0.10, 0.20)  # fractions of the measured window; skips pool and cache fill
FLAT_LATE = (0.90, 1.00)

LOAD_PROBE_S = 1.0
QUIET_WAIT_MAX_S = 120  # --quiet-below waits at most this long before each run
SECONDS_PER_ITEM_CAP = 0.006  # a worker's timeout: 60 s + this per item (6x the slowest peer)
WORKER_BASE_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """How much each scenario runs; ``--quick`` trades repeats and sizes for time."""

    repeats: int
    cpu_items: int
    original_items: int
    latency_items: int
    flat_items: int
    import_runs: int
    warm_invocations: int
    moto_check_items: int  # 0: no cross-check of the cpu scenario on moto
    big_contrast: bool  # also run the raw floor on the 16 x 64 MiB bodies


FULL = Profile(
    repeats=3,
    cpu_items=2_000,
    original_items=2_000,
    latency_items=LATENCY_ITEMS,
    flat_items=100_000,
    import_runs=5,
    warm_invocations=20,
    moto_check_items=1_000,
    big_contrast=True,
)
QUICK = Profile(
    repeats=1,
    cpu_items=500,
    original_items=500,
    latency_items=LATENCY_ITEMS,
    flat_items=20_000,
    import_runs=3,
    warm_invocations=10,
    moto_check_items=0,
    big_contrast=False,
)


# ------------------------------------------------------------------- runs


def _server_cpu(pid: int | None) -> float | None:
    import psutil

    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


@dataclasses.dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds used so far: the whole machine, this harness, its reaped children, servers."""

    wall: float
    machine_busy: float
    harness: float
    reaped_children: float  # a worker's whole CPU lands here once it has been waited for
    servers: float | None

    @classmethod
    def take(cls, servers: Servers) -> CpuSnapshot:
        """Read every counter now."""
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        own, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        server_cpu = [_server_cpu(pid) for pid in (servers.api_pid, servers.s3_pid) if pid]
        return cls(
            wall=time.perf_counter(),
            machine_busy=busy,
            harness=own.ru_utime + own.ru_stime,
            reaped_children=kids.ru_utime + kids.ru_stime,
            servers=None if None in server_cpu else sum(c for c in server_cpu if c is not None),
        )

    def background_cores(self, later: CpuSnapshot) -> float | None:
        """Cores kept busy by processes other than the benchmark's own between two snapshots."""
        if self.servers is None or later.servers is None or later.wall <= self.wall:
            return None
        ours = (
            (later.harness - self.harness)
            + (later.reaped_children - self.reaped_children)
            + (later.servers - self.servers)
        )
        return max(0.0, (later.machine_busy - self.machine_busy - ours) / (later.wall - self.wall))


class Bench:
    """Runs workers against servers, checks them and prints progress."""

    def __init__(self, args: argparse.Namespace, profile: Profile) -> None:
        self.profile = profile
        self.out: Path = args.out
        self.s3_choice: str = args.s3
        self.quiet_below: float | None = args.quiet_below
        self.stamp = time.strftime("%Y%m%d%H%M%S")
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        self.scenario = ""
        self._count = 0

    def s3(self) -> str:
        """The S3 server for the current scenario (memory always uses the sink)."""
        return "sink" if self.scenario == "memory" and self.s3_choice == "moto" else self.s3_choice

    def run(
        self,
        servers: Servers,
        impl: str,
        *,
        items: int,
        concurrency: int,
        body_bytes: int,
        options: dict[str, Any] | None = None,
        warmup: int = DEFAULT_WARMUP_ITEMS,
        sample_rss: bool = False,
    ) -> dict[str, Any]:
        """Run one worker, check what landed in S3 and return its record."""
        self._count += 1
        run_id = f"bench-{self.stamp}-{self._count:03d}-{impl.replace('_', '')}"
        spec = WorkerSpec(
            impl=impl,
            api_url=servers.api_url,
            s3_url=servers.s3_url,
            bucket=servers.bucket,
            items=items,
            concurrency=concurrency,
            run_id=run_id,
            warmup_items=warmup,
            body_bytes=body_bytes,
            options=options or {},
        )
        waited = self._wait_quiet()
        before = (_server_cpu(servers.api_pid), _server_cpu(servers.s3_pid))
        snapshot = CpuSnapshot.take(servers)
        timeout = WORKER_BASE_TIMEOUT_S + SECONDS_PER_ITEM_CAP * (items + warmup) * (
            body_bytes // 2**20 + 1
        )
        record = run_worker(spec, timeout_s=timeout, sample_rss=sample_rss, log_dir=self.log_dir)
        record["background_cores"] = snapshot.background_cores(CpuSnapshot.take(servers))
        record["waited_for_quiet_s"] = waited
        record.update(
            impl=impl,
            concurrency=concurrency,
            items=items,
            run_id=run_id,
            warmup=warmup,
            api_cpu_s=_delta(_server_cpu(servers.api_pid), before[0]),
            s3_cpu_s=_delta(_server_cpu(servers.s3_pid), before[1]),
            s3=servers.s3_kind,
        )
        if record["status"] == "ok":
            self._verify(servers, record, items * body_bytes)
        self._progress(record)
        return record

    def _wait_quiet(self) -> float:
        """With ``--quiet-below``, wait (bounded) until other processes leave the CPUs alone."""
        if self.quiet_below is None:
            return 0.0
        started = time.monotonic()
        while time.monotonic() - started < QUIET_WAIT_MAX_S:
            if background_load(LOAD_PROBE_S / 2) <= self.quiet_below:
                break
        return time.monotonic() - started

    def _verify(self, servers: Servers, record: dict[str, Any], expected_bytes: int) -> None:
        count, size = count_objects(servers, key_prefix(record["run_id"]))
        record["verified"] = (count, size) == (record["items"], expected_bytes)
        if not record["verified"]:
            record["status"] = "failed"
            record.setdefault("errors", []).append(
                f"S3 holds {count} objects / {size} bytes under the run's prefix; expected "
                f"{record['items']} / {expected_bytes}"
            )

    def _progress(self, record: dict[str, Any]) -> None:
        impl, concurrency, items = record["impl"], record["concurrency"], record["items"]
        head = f"[{self.scenario}] {impl:<20} c={concurrency:<4} n={items:<7}"
        if record["status"] != "ok":
            print(
                f"{head} {record['status'].upper()}: {'; '.join(record.get('errors', []))[:300]}",
                file=sys.stderr,
                flush=True,
            )
            return
        cpu_us, rate = record["cpu_s"] / items * 1e6, items / record["wall_s"]
        other = record.get("background_cores")
        print(
            f"{head} ok  cpu {cpu_us:8.0f} µs/item  {rate:8.0f} items/s"
            f"  wall {record['wall_s']:6.2f}s  peak {record.get('peak_rss_mib') or 0:6.0f} MiB"
            f"  other load {'?' if other is None else f'{other:.2f}'} cores"
            + (
                f" (waited {record['waited_for_quiet_s']:.0f}s)"
                if record["waited_for_quiet_s"]
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the ok runs of one (implementation, concurrency) series."""
    ok = [r for r in records if r["status"] == "ok"]
    if not records:
        status = "not run"
    elif len(ok) == len(records):
        status = "ok"
    else:
        status = "unavailable" if all(r["status"] == "unavailable" for r in records) else "failed"

    def med(get: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in (get(r) for r in ok) if v is not None]
        return statistics.median(values) if values else None

    errors = [e for r in records if r["status"] != "ok" for e in r.get("errors", [])]
    return {
        "status": status,
        "runs": len(records),
        "ok_runs": len(ok),
        "cpu_us_per_item": med(lambda r: r["cpu_s"] / r["items"] * 1e6),
        "items_per_s": med(lambda r: r["items"] / r["wall_s"]),
        "wall_s": med(lambda r: r["wall_s"]),
        "p50_ms": med(lambda r: (r.get("latency_ms") or {}).get("p50")),
        "p99_ms": med(lambda r: (r.get("latency_ms") or {}).get("p99")),
        "api_cpu_us_per_item": med(lambda r: _per_item(r, "api_cpu_s")),
        "s3_cpu_us_per_item": med(lambda r: _per_item(r, "s3_cpu_s")),
        "peak_rss_mib": med(lambda r: r.get("peak_rss_mib")),
        "cpu_us_range": _spread([r["cpu_s"] / r["items"] * 1e6 for r in ok]),
        "background_cores": med(lambda r: r.get("background_cores")),
        "error": errors[0] if errors else None,
    }


def _spread(values: list[float]) -> str | None:
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else None


def _per_item(record: dict[str, Any], field: str) -> float | None:
    # Server CPU is read around the whole worker, so it includes the warm-up items.
    value = record.get(field)
    return (
        None
        if value is None
        else value / (record["items"] + record.get("warmup", DEFAULT_WARMUP_ITEMS)) * 1e6
    )


def _status_cell(summary: dict[str, Any]) -> str:
    if summary["status"] == "ok":
        return f"ok ({summary['ok_runs']}/{summary['runs']})"
    error = (summary["error"] or "")[:160]
    return f"{summary['status'].upper()} ({summary['ok_runs']}/{summary['runs']}): {error}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


# -------------------------------------------------------------------- cpu


def scenario_cpu(bench: Bench) -> Section:
    """T1 and T2: client CPU per item for 9 KB bodies."""
    p = bench.profile
    plan = (
        [("raw_floor", c, p.cpu_items) for c in CPU_CONCURRENCY]
        + [("fanout_ingest", c, p.cpu_items) for c in CPU_CONCURRENCY]
        # The single-PUT path decision (docs/PERFORMANCE.md): the SDK path, same run.
        + [("fanout_ingest_sdk", T1_CONCURRENCY, p.cpu_items)]
        + [
            ("original_sequential", 1, p.original_items),
            ("original_threadpool", ORIGINAL_THREADS, p.original_items),
        ]
    )
    records: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-cpu",
    ) as servers:
        for _ in range(p.repeats):  # interleaved, so drift over time hits every series alike
            for impl, concurrency, items in plan:
                done = records[(impl, concurrency)]
                if done and done[-1]["status"] == "unavailable":
                    continue
                done.append(
                    bench.run(
                        servers,
                        impl,
                        items=items,
                        concurrency=concurrency,
                        body_bytes=SMALL_BODY_BYTES,
                    )
                )
        s3_kind = servers.s3_kind
    series: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for (impl, concurrency), runs in records.items():
        series[impl][concurrency] = summarize(runs)
    section = Section("cpu", "CPU per item (T1, T2)", _cpu_setup(p, s3_kind))
    section.tables.append(_cpu_table(series))
    section.verdicts += _cpu_verdicts(series)
    if p.moto_check_items and s3_kind != "moto":
        section.tables.append(_moto_cross_check(bench, p.moto_check_items))
    section.plots += report.plot_cpu(bench.out, series)
    section.raw = {"series": series, "runs": {f"{k[0]}@{k[1]}": v for k, v in records.items()}}
    return section


def _cpu_setup(p: Profile, s3_kind: str) -> str:
    return (
        f"API: 9,000-byte JSON bodies, no latency. S3: {s3_kind}. {p.cpu_items} items per async "
        f"run, {p.original_items} per original run, one object per item, {p.repeats} "
        f"interleaved repeats, {DEFAULT_WARMUP_ITEMS} warm-up items per worker (not measured). "
        "The original function also parses the body (`len(response.json())`), as it did. "
        "Server CPU per item is read around the whole worker (warm-up included)."
    )


def _cpu_table(series: dict[str, dict[int, dict[str, Any]]]) -> Table:
    floor = series.get("raw_floor", {})
    rows = []
    for impl, by_conc in series.items():
        for concurrency, s in sorted(by_conc.items()):
            vs_floor = _ratio(
                s["cpu_us_per_item"], floor.get(concurrency, {}).get("cpu_us_per_item")
            )
            rows.append(
                [
                    impl,
                    concurrency,
                    _status_cell(s),
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


def _cpu_verdicts(series: dict[str, dict[int, dict[str, Any]]]) -> list[Verdict]:
    ours = series.get("fanout_ingest", {}).get(T1_CONCURRENCY, {"status": "not run"})
    floor = series.get("raw_floor", {}).get(T1_CONCURRENCY, {"status": "not run"})
    seq = series.get("original_sequential", {}).get(1, {"status": "not run"})
    pool = series.get("original_threadpool", {}).get(ORIGINAL_THREADS, {"status": "not run"})
    verdicts = [
        _ratio_verdict(
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
            _ratio_verdict(
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


def _ratio_verdict(
    target: str,
    claim: str,
    ours: dict[str, Any],
    other: dict[str, Any],
    passes: Callable[[float], bool],
    fmt: str,
    *,
    invert: bool,
) -> Verdict:
    for name, s in (("fanout_ingest", ours), ("peer", other)):
        if s["status"] != "ok":
            return Verdict(
                target, claim, f"{name} {s['status']}: {(s.get('error') or '')[:120]}", "N/A"
            )
    a, b = ours["cpu_us_per_item"], other["cpu_us_per_item"]
    ratio = b / a if invert else a / b
    return Verdict(
        target,
        claim,
        fmt.format(ratio, *((b, a) if invert else (a, b))),
        "PASS" if passes(ratio) else "FAIL",
    )


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
                _status_cell(s),
                s["cpu_us_per_item"],
                _ratio(s["cpu_us_per_item"], floor) if impl == "fanout_ingest" else None,
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


# ---------------------------------------------------------------- latency


def scenario_latency(bench: Bench) -> Section:
    """T3: 100 ms API latency, 2,000 items at concurrency 200 against the ideal time."""
    p = bench.profile
    items, c = p.latency_items, LATENCY_CONCURRENCY
    ideal_s = items * LATENCY_MS / 1000 / c
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(latency_ms=LATENCY_MS, body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-latency",
    ) as servers:
        for _ in range(p.repeats):
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
        f"`lambda_handler` call). {p.repeats} repeats.",
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
                _status_cell(s),
                s["wall_s"],
                _ratio(s["wall_s"], ideal_s) if impl != "raw_put" else None,
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


# ----------------------------------------------------------------- memory


def scenario_memory(bench: Bench) -> Section:
    """T4: peak RSS with 16 x 64 MiB bodies, and RSS across a long small-body batch."""
    p = bench.profile
    options = {"memory_budget_mb": MEMORY_BUDGET_MB, "part_size_mb": PART_SIZE_MB}
    big: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with start_servers(
        api=ApiOptions(body_bytes=BIG_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-memory",
    ) as servers:
        for _ in range(p.repeats):
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
        if p.big_contrast:
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
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-flat",
    ) as servers:
        flat = bench.run(
            servers,
            "fanout_ingest",
            items=p.flat_items,
            concurrency=FLAT_CONCURRENCY,
            body_bytes=SMALL_BODY_BYTES,
            sample_rss=True,
        )
    return _memory_section(bench, big, flat, s3_kind)


def _memory_section(
    bench: Bench, big: dict[str, list[dict[str, Any]]], flat: dict[str, Any], s3_kind: str
) -> Section:
    p = bench.profile
    section = Section(
        "memory",
        "Memory (T4)",
        f"S3: {s3_kind}. (a) {BIG_ITEMS} items of 64 MiB streamed by the API "
        f"(Content-Length, 1 MiB writes) at concurrency {BIG_ITEMS} with "
        f"`memory_budget_mb={MEMORY_BUDGET_MB}`, `part_size_mb={PART_SIZE_MB}`; the "
        f"baseline is a one-item run with the same options. Peak RSS is the worker's "
        f"VmHWM over the measured items (reset after warm-up), cross-checked by "
        f"sampling RSS from the parent every 50 ms. (b) {p.flat_items:,} items of "
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
                    _status_cell(summaries[label]),
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
        (f"{p.flat_items:,} x 9 KB at c={FLAT_CONCURRENCY}", [("fanout_ingest", flat)], None),
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


# ---------------------------------------------------------------- startup

# (label, statement, bytecode mode). "source": the project's own modules are
# compiled from source on every import, whatever .pyc files exist, as on Lambda
# (read-only /var/task) unless .pyc files are shipped; dependencies use the .pyc
# pip wrote. "cached": every module's .pyc in a private prefix, primed first.
IMPORT_PROBES = (
    ("fanout-ingest: import handler.app", "import handler.app", "source"),
    ("fanout-ingest: import handler.app, all .pyc cached", "import handler.app", "cached"),
    ("original: import requests, boto3", "import requests, boto3", "source"),
    ("interpreter only", "pass", "source"),
)
PROJECT_PACKAGES = ("handler", "ingest_core")
# Prepended to a "source" probe: bypasses .pyc files for the project's packages only.
COMPILE_PROJECT_FROM_SOURCE = f"""
import importlib.machinery as _m
_get_code = _m.SourceFileLoader.get_code
def _from_source(self, name):
    if name.partition(".")[0] in {PROJECT_PACKAGES!r}:
        return self.source_to_code(self.get_data(self.path), self.path)
    return _get_code(self, name)
_m.SourceFileLoader.get_code = _from_source
"""


def _probe_code(statement: str, mode: str, *, timed: bool = True) -> str:
    prelude = COMPILE_PROJECT_FROM_SOURCE if mode == "source" else ""
    if not timed:
        return f"{prelude}\n{statement}"
    timing = f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    return f"{prelude}\n{timing}"


def _probe_env(s3_url: str, mode: str, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in worker_env(s3_url).items() if not k.startswith("PYTHONPYCACHE")}
    if mode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir)  # keeps .pyc files out of the repository
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _import_once(code: str, env: dict[str, str]) -> tuple[float, float] | str:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    wall_ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"
    return float(done.stdout.strip().splitlines()[-1]) * 1000, wall_ms


def _import_rows(runs: int, s3_url: str, cache_dir: Path) -> list[list[Any]]:
    rows = []
    for label, statement, mode in IMPORT_PROBES:
        env, code = _probe_env(s3_url, mode, cache_dir), _probe_code(statement, mode)
        _import_once(code, env)  # discarded: fills the page cache (and the .pyc prefix)
        samples = [_import_once(code, env) for _ in range(runs)]
        failures = [s for s in samples if isinstance(s, str)]
        if failures:
            rows.append([label, f"FAILED: {failures[0][:160]}", None, None])
            continue
        good = [s for s in samples if isinstance(s, tuple)]
        rows.append(
            [
                label,
                f"ok ({runs} fresh processes)",
                statistics.median(g[0] for g in good),
                statistics.median(g[1] for g in good),
            ]
        )
    return rows


def _importtime_breakdown(s3_url: str, cache_dir: Path, top: int = 10) -> Table | None:
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            _probe_code("import handler.app", "source", timed=False),
        ],
        cwd=REPO_ROOT,
        env=_probe_env(s3_url, "source", cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return None
    by_package: dict[str, int] = collections.Counter()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            by_package[match.group(2).split(".")[0]] += int(match.group(1))
    total = sum(by_package.values())
    rows = [
        [name, us / 1000, us / total * 100]
        for name, us in collections.Counter(by_package).most_common(top)
    ]
    return Table(
        f"`python -X importtime -c 'import handler.app'`: self time by top-level package "
        f"(total {total / 1000:.0f} ms, one run)",
        ["package", "ms", "% of total"],
        rows,
    )


def scenario_startup(bench: Bench) -> Section:
    """T5: import time in fresh processes and warm one-item invocation overhead."""
    p = bench.profile
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-startup",
    ) as servers:
        import_rows = _import_rows(p.import_runs, servers.s3_url, bench.log_dir / "pycache")
        breakdown = _importtime_breakdown(servers.s3_url, bench.log_dir / "pycache")
        spec = WorkerSpec(
            impl="fanout_warm",
            api_url=servers.api_url,
            s3_url=servers.s3_url,
            bucket=servers.bucket,
            items=1,
            concurrency=1,
            run_id=f"bench-{bench.stamp}-warm",
            repeats=p.warm_invocations,
        )
        warm = run_worker(spec, timeout_s=WORKER_BASE_TIMEOUT_S * 3, log_dir=bench.log_dir)
        print(f"[startup] imports and warm invocations: {warm.get('status')}", file=sys.stderr)
        s3_kind = servers.s3_kind
    section = Section(
        "startup",
        "Start-up (T5)",
        f"Import: `import <modules>` timed inside {p.import_runs} fresh interpreters "
        f"(after one discarded run), and the whole process wall time. The first row compiles "
        f"the project's own modules from source whatever .pyc files exist, as on Lambda "
        f"(read-only /var/task) unless .pyc files are shipped; dependencies use pip's .pyc. "
        f"The `-X importtime` breakdown is of that first case. Warm invocation: "
        f"one cold one-item invocation, then {p.warm_invocations} warm one-item "
        f"invocations in the same process, each paired with a raw one-item fetch+write "
        f"(new aiohttp session, GET, unsigned PUT); overhead = median handler wall "
        f"time - median raw fetch+write time. S3: {s3_kind}.",
    )
    section.tables.append(
        Table(
            "Import time (medians)", ["what", "runs", "import ms", "process wall ms"], import_rows
        )
    )
    if breakdown:
        section.tables.append(breakdown)
    section.tables.append(_warm_table(warm))
    section.verdicts += _startup_verdicts(import_rows, warm)
    section.raw = {"imports": import_rows, "warm": warm}
    return section


def _warm_table(warm: dict[str, Any]) -> Table:
    if warm.get("status") != "ok":
        return Table(
            "Warm invocations",
            ["status"],
            [
                [
                    f"{warm.get('status', 'failed').upper()}: "
                    + "; ".join(warm.get("errors", []))[:200]
                ]
            ],
        )
    m = warm["medians"]
    return Table(
        "Warm invocations (one item, medians)",
        [
            "import in worker ms",
            "cold first invocation ms",
            "warm handler ms",
            "raw fetch+write ms",
            "overhead ms",
            "handler-reported duration ms",
            "handler - reported ms",
        ],
        [
            [
                warm["import_ms"],
                warm["cold_ms"],
                m["handler_ms"],
                m["raw_ms"],
                warm["overhead_ms"],
                m["duration_ms"],
                m["handler_ms"] - m["duration_ms"],
            ]
        ],
    )


def _startup_verdicts(import_rows: list[list[Any]], warm: dict[str, Any]) -> list[Verdict]:
    ours, cached, original = import_rows[0], import_rows[1], import_rows[2]
    imported = (
        f"{ours[2]:.0f} ms in a fresh process, {cached[2]:.0f} ms with all .pyc cached "
        f"(original's imports: {original[2]:.0f} ms)"
        if None not in (ours[2], cached[2], original[2])
        else str(ours[1])
    )
    verdicts = [
        Verdict("T5", "handler import time", imported, "REPORT" if ours[2] is not None else "N/A")
    ]
    if warm.get("status") == "ok":
        text = (
            f"{warm['overhead_ms']:.1f} ms over a raw one-item fetch+write "
            f"({warm['medians']['handler_ms']:.1f} vs {warm['medians']['raw_ms']:.1f} ms)"
        )
        verdicts.append(Verdict("T5", "warm one-item invocation overhead", text, "REPORT"))
    else:
        verdicts.append(
            Verdict(
                "T5",
                "warm one-item invocation overhead",
                f"{warm.get('status')}: {'; '.join(warm.get('errors', []))[:120]}",
                "N/A",
            )
        )
    return verdicts


# -------------------------------------------------------------------- main

SCENARIOS: dict[str, Callable[[Bench], Section]] = {
    "cpu": scenario_cpu,
    "latency": scenario_latency,
    "memory": scenario_memory,
    "startup": scenario_startup,
}


def background_load(seconds: float = LOAD_PROBE_S) -> float:
    """Cores kept busy by other processes while the harness idles for ``seconds``."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100 * (os.cpu_count() or 1)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats (< 2 min)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS_ALL),
        help=f"comma-separated subset of {','.join(SCENARIOS_ALL)}",
    )
    parser.add_argument(
        "--s3",
        default="sink",
        help="sink (default), moto, or the URL of a running S3-compatible server; "
        "the memory scenario uses the sink instead of moto",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--quiet-below",
        type=float,
        metavar="CORES",
        help=f"before each run, wait (up to {QUIET_WAIT_MAX_S} s) until other processes keep "
        "fewer than CORES cores busy; off by default",
    )
    args = parser.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenario_list) - set(SCENARIOS_ALL)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def _crashed(name: str, exc: BaseException) -> Section:
    detail = "".join(traceback.format_exception(exc))[-1500:]
    return Section(
        name,
        f"{name} (harness error)",
        f"The scenario crashed:\n\n```\n{detail}\n```",
        verdicts=[Verdict("-", f"{name} scenario", f"{type(exc).__name__}: {exc}"[:160], "N/A")],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; exit 1 when a scenario itself crashed (not when a target fails)."""
    args = _parse_args(argv)
    bench = Bench(args, QUICK if args.quick else FULL)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = report.machine_line()
    print(f"machine: {machine}\nworker and server logs: {bench.log_dir}", file=sys.stderr)
    started, sections, crashed = time.perf_counter(), [], False
    for name in args.scenario_list:
        bench.scenario = name
        load = background_load()
        print(f"[{name}] background load: {load:.2f} cores busy", file=sys.stderr, flush=True)
        try:
            sections.append(SCENARIOS[name](bench))
            sections[-1].notes.append(
                f"Background CPU load just before this scenario: {load:.2f} of "
                f"{os.cpu_count()} cores busy with other processes (the machine is shared)."
            )
        except Exception as exc:  # report the crash in RESULTS.md; run the other scenarios
            traceback.print_exc()
            sections.append(_crashed(name, exc))
            crashed = True
    elapsed = time.perf_counter() - started
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    report.write_markdown(
        args.out / "RESULTS.md",
        sections,
        machine=machine,
        command=command.strip(),
        elapsed_s=elapsed,
    )
    report.write_json(args.out / "results.json", sections, machine=machine)
    for verdict in (v for s in sections for v in s.verdicts):
        print(f"{verdict.target:<3} {verdict.result:<12} {verdict.claim}: {verdict.measured}")
    print(f"wrote {args.out / 'RESULTS.md'} in {elapsed:.0f} s")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
