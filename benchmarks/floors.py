"""What the round-three scenarios share: lean servers, interleaved runs, ratios of pairs.

``honest_floor`` (P3) and ``packed_vs_get`` (P1, P2) both compare fanout-ingest with
the least a client can spend on the same work, on the same servers and the same
event loop, repeat by repeat. This module is not a scenario (it lives outside
``benchmarks/scenarios``): it starts the servers and runs the interleaved series.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, Bench
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import HOST, Servers, _launch, _stop, free_port, start_servers

BUCKET = "bench-raw"
CONCURRENCY = 64
ITEMS = 2_000
QUICK_ITEMS = 300
REPEATS = 5  # pairs of a ratio; 1 with --quick
PACK = {"unit": "response", "compression": "gzip", "gzip_level": 1, "target_mb": 64}


def loops() -> tuple[str, ...]:
    """The event loops to measure on: asyncio always, uvloop where it imports."""
    return ("asyncio", "uvloop") if importlib.util.find_spec("uvloop") else ("asyncio",)


@dataclasses.dataclass(frozen=True, slots=True)
class Lean:
    """The lean API and null sink (``benchmarks/nullserver.py``), and an S3 sink for packs."""

    null: Servers  # GETs from the static API, PUTs to the null sink
    packs: Servers | None  # GETs from the same static API, packs to the aiohttp S3 sink


def _null(port: int, log: Path) -> Any:
    argv = [sys.executable, "-m", "benchmarks.nullserver", "--port", str(port)]
    return _launch([*argv, "--body-bytes", str(SMALL_BODY_BYTES)], port, log)


@contextlib.contextmanager
def lean_servers(logs: Path, *, packs: bool, s3: str = "sink") -> Iterator[Lean]:
    """A null API and a null sink in two processes, logging under ``logs``; with
    ``packs``, an S3 for the packs too (``s3``: as ``start_servers`` takes it)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        api_port, sink_port = free_port(), free_port()
        procs.append(_null(api_port, logs / "null-api.log"))
        procs.append(_null(sink_port, logs / "null-sink.log"))
        api_url = f"http://{HOST}:{api_port}/v1/data"
        null = Servers(
            api_url, f"http://{HOST}:{sink_port}", "null", BUCKET, procs[0].pid, procs[1].pid, logs
        )
        with (
            start_servers(s3=s3, bucket=BUCKET, log_dir=logs / "s3")
            if packs
            else contextlib.nullcontext()
        ) as s3:
            pack_servers = (
                dataclasses.replace(s3, api_url=api_url, api_pid=procs[0].pid) if s3 else None
            )
            yield Lean(null, pack_servers)
    finally:
        for proc in reversed(procs):
            _stop(proc)


@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """One line of a table: an implementation on a loop, its servers and options."""

    label: str
    impl: str
    servers: Servers
    loop: str = "asyncio"
    options: dict[str, Any] | None = None
    check: Any = None  # replaces the one-object-per-item check (packs)
    verify: bool = True


def run_interleaved(bench: Bench, series: list[Series]) -> dict[str, list[dict[str, Any]]]:
    """Every series once per repeat, in turn, so drift on the shared machine hits all alike."""
    items = bench.size(full=ITEMS, quick=QUICK_ITEMS)
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for _ in range(bench.size(full=REPEATS, quick=1)):
        for s in series:
            record = bench.run(
                s.servers,
                s.impl,
                items=items,
                concurrency=CONCURRENCY,
                body_bytes=SMALL_BODY_BYTES,
                options=s.options,
                loop=s.loop,
                check=s.check,
                verify=s.verify,
            )
            record["loop"] = s.loop
            records[s.label].append(record)
    return records


def cpu_us(record: dict[str, Any]) -> float | None:
    """Client CPU µs per item of one ok run."""
    return record["cpu_s"] / record["items"] * 1e6 if record["status"] == "ok" else None


def pair_ratios(
    records: dict[str, list[dict[str, Any]]], num: str, den: str
) -> tuple[float | None, list[float]]:
    """CPU/item of ``num`` over ``den`` in each repeat where both ran ok, and their median."""
    pairs = []
    for a, b in zip(records.get(num, []), records.get(den, []), strict=False):
        x, y = cpu_us(a), cpu_us(b)
        if x is not None and y:
            pairs.append(x / y)
    return (statistics.median(pairs) if pairs else None), pairs


def pairs_text(median: float | None, pairs: list[float]) -> str:
    """ "1.42x (median of 5 pairs: 1.38-1.51)"."""
    if median is None:
        return "no pair ran cleanly"
    return f"{median:.2f}x (median of {len(pairs)} pairs: {min(pairs):.2f}-{max(pairs):.2f})"


def section(
    bench: Bench,
    name: str,
    title: str,
    records: dict[str, list[dict[str, Any]]],
    *,
    setup: str,
    ratios: str,
    table: Table,
    verdicts: list[Verdict],
) -> Section:
    """A round-three scenario's part of RESULTS.md: its sizes, one table, its verdicts."""
    items = bench.size(full=ITEMS, quick=QUICK_ITEMS)
    repeats = len(next(iter(records.values()), []))
    out = Section(
        name,
        title,
        f"{items} items of 9,000 bytes (varied JSON) per run at c={CONCURRENCY}; {setup}"
        f"series interleaved, {repeats} repeats; ratios are {ratios}.",
    )
    out.tables.append(table)
    out.verdicts += verdicts
    out.raw = {"runs": dict(records)}
    return out
