"""What every scenario shares: running a checked worker, CPU snapshots, medians, ratios.

A scenario module (``benchmarks/scenarios/<name>.py``) gets a :class:`Bench` and
returns a :class:`benchmarks.report.Section`; it picks its own sizes with
``bench.size(full=..., quick=...)`` and repeats its runs ``bench.repeats`` times.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.peers import DEFAULT_WARMUP_ITEMS, WorkerSpec, key_prefix, run_worker
from benchmarks.report import Verdict
from benchmarks.servers import Servers, count_objects

SMALL_BODY_BYTES = 9_000  # the API body most scenarios use
FULL_REPEATS = 3
QUICK_REPEATS = 1

LOAD_PROBE_S = 1.0
QUIET_WAIT_MAX_S = 120  # --quiet-below waits at most this long before each run
SECONDS_PER_ITEM_CAP = 0.006  # a worker's timeout: 60 s + this per item (6x the slowest peer)
WORKER_BASE_TIMEOUT_S = 60

T = TypeVar("T")


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

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick: bool = args.quick
        self.repeats = QUICK_REPEATS if self.quick else FULL_REPEATS
        self.out: Path = args.out
        self.s3_choice: str = args.s3
        self.quiet_below: float | None = args.quiet_below
        self.stamp = time.strftime("%Y%m%d%H%M%S")
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        self.scenario = ""
        self._count = 0

    def size(self, *, full: T, quick: T) -> T:
        """A scenario's size for this run: ``quick`` under ``--quick``, else ``full``."""
        return quick if self.quick else full

    def s3(self, *, moto_ok: bool = True) -> str:
        """The S3 server to start; with ``moto_ok=False`` the sink replaces moto."""
        return "sink" if not moto_ok and self.s3_choice == "moto" else self.s3_choice

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
        verify: bool = True,
        check: Callable[[dict[str, Any], int, int], str | None] | None = None,
        api_config: dict[str, Any] | None = None,
        loop: str = "asyncio",
    ) -> dict[str, Any]:
        """Run one worker, check what landed in S3 and return its record.

        ``verify=False``: the implementation writes something other than one object
        per item (a peer such as dlt); the scenario checks it instead.
        By default the run's prefix must hold one object of ``body_bytes`` per item;
        ``check(record, objects, bytes)`` replaces that test (packed runs), returning
        what is wrong or None.
        """
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
            api_config=api_config or {},
            loop=loop,
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
        if record["status"] == "ok" and verify:
            self._verify(servers, record, items * body_bytes, check)
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

    def _verify(
        self,
        servers: Servers,
        record: dict[str, Any],
        expected_bytes: int,
        check: Callable[[dict[str, Any], int, int], str | None] | None,
    ) -> None:
        count, size = count_objects(servers, key_prefix(record["run_id"]))
        record["objects"], record["object_bytes"] = count, size
        if check is not None:
            problem = check(record, count, size)
        elif (count, size) != (record["items"], expected_bytes):
            problem = (
                f"S3 holds {count} objects / {size} bytes under the run's prefix; expected "
                f"{record['items']} / {expected_bytes}"
            )
        else:
            problem = None
        record["verified"] = problem is None
        if problem is not None:
            record["status"] = "failed"
            record.setdefault("errors", []).append(problem)

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


def status_cell(summary: dict[str, Any]) -> str:
    """A table cell: "ok (3/3)", or the status and the first error."""
    if summary["status"] == "ok":
        return f"ok ({summary['ok_runs']}/{summary['runs']})"
    error = (summary["error"] or "")[:160]
    return f"{summary['status'].upper()} ({summary['ok_runs']}/{summary['runs']}): {error}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing (or the denominator is 0)."""
    return None if numerator is None or not denominator else numerator / denominator


def ratio_verdict(
    target: str,
    claim: str,
    ours: dict[str, Any],
    other: dict[str, Any],
    passes: Callable[[float], bool],
    fmt: str,
    *,
    invert: bool,
) -> Verdict:
    """A CPU-per-item ratio of ``ours`` to ``other`` (``invert``: other / ours) as a verdict."""
    for name, s in (("fanout_ingest", ours), ("peer", other)):
        if s["status"] != "ok":
            return Verdict(
                target, claim, f"{name} {s['status']}: {(s.get('error') or '')[:120]}", "N/A"
            )
    a, b = ours["cpu_us_per_item"], other["cpu_us_per_item"]
    value = b / a if invert else a / b
    return Verdict(
        target,
        claim,
        fmt.format(value, *((b, a) if invert else (a, b))),
        "PASS" if passes(value) else "FAIL",
    )


def background_load(seconds: float = LOAD_PROBE_S) -> float:
    """Cores kept busy by other processes while the harness idles for ``seconds``."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100 * (os.cpu_count() or 1)
