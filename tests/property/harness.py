"""Running one ``World`` against the shared servers, and reading back what it stored.

The servers (the paged API, moto behind the S3 fault proxy, a canary for next links
to another origin) start once per module; ``Servers.prepare`` resets them between
examples, so an example costs one run, not three server start-ups.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from ingest_core import parse_event
from ingest_core.loops import LOOP_ENV, loop_factory
from ingest_core.netguard import NetPolicy
from ingest_core.runtime import execute
from ingest_core.settings import Settings
from tests.conftest import RAW_BUCKET
from tests.property.model import HELD_S, SOURCE, World, page_start
from tests.support.faults import S3FaultProxy
from tests.support.paged_api import PagedAPI
from tests.support.reliability import Canary
from tests.support.servers import MotoS3

MIB = 1024 * 1024
RSS_SLACK_MIB = 32  # CONTRACT §16: RSS growth within memory_budget_mb + 32 MiB
RSS_TICK_S = 0.01
# How long past its deadline a run may take before the harness gives up on it (a
# hang is reported as a failed invariant, not a test stuck until pytest's timeout).
HANG_GRACE_S = 15.0


@dataclass(repr=False)  # Hypothesis prints the arguments of a failing example
class Servers:
    """The module's servers and a scratch folder for the local sink."""

    api: PagedAPI
    api_url: str
    moto: MotoS3
    proxy: S3FaultProxy
    canary: Canary
    scratch: Path

    def __repr__(self) -> str:
        return f"<Servers api={self.api_url} s3={self.proxy.endpoint}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis's printer would list every field

    def prepare(self, world: World, *, keep_store: bool = False) -> None:
        """Reset every server to serve ``world`` and nothing else.

        ``keep_store`` keeps what earlier runs stored (a re-run of the same batch).
        """
        self.api.reset(
            page_size=world.page_size,
            totals={world.date(i): total for i, total in enumerate(world.totals)},
            pad=world.pad,
            away_origin=f"http://127.0.0.1:{self.canary.port}",
            away_after={
                world.date(item): page_start(world, page + 1)
                for item, page in world.away_after_page.items()
            },
            item_faults={
                (f"/{world.route}", world.date(f.item), page_start(world, f.page)): [f.response()]
                * f.times
                for f in world.api_faults
            },
        )
        self.proxy.clear()
        if not keep_store:
            self.moto.close_clients()
            self.moto.reset()
            self.moto.create_bucket(RAW_BUCKET)
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch.mkdir(parents=True)
        if world.disk_fault:
            (self.scratch / world.blocked_key()).mkdir(parents=True)
        self.canary.connections()  # forget anything from before this example
        for fault in world.s3_faults:
            self.proxy.inject(fault.operation, fault.fault, fault.times, delay_s=HELD_S)


@dataclass
class Run:
    """What one run returned, and when."""

    result: dict[str, Any] | None  # None: it did not return (hung past its deadline)
    deadline: float
    returned_at: float
    rss_growth_mib: float


def run_world(world: World, servers: Servers) -> Run:
    """Run ``world``'s event through ``runtime.execute`` on a fresh loop of its kind."""
    job = parse_event(world.event(servers.api_url))
    settings = Settings(
        policy=NetPolicy(allow_private_networks=True),
        s3_endpoint_url=servers.proxy.endpoint,
        lean_put=world.sink == "lean",
    )
    local_dir = servers.scratch if world.sink == "local" else None

    async def ingest(deadline: float) -> dict[str, Any] | None:
        stop = asyncio.Event()
        if world.stop_after_s is not None:
            asyncio.get_running_loop().call_later(world.stop_after_s, stop.set)
        run = execute(job, settings=settings, deadline=deadline, local_dir=local_dir, stop=stop)
        try:
            outcome = await asyncio.wait_for(run, deadline - time.monotonic() + HANG_GRACE_S)
        except TimeoutError:
            return None
        return outcome.result

    with rss_peak() as peak:
        deadline = time.monotonic() + world.deadline_s
        # The loop the world drew: asyncio's, or uvloop (the CLI's; loops.loop_factory)
        with asyncio.Runner(loop_factory=loop_factory({LOOP_ENV: world.loop})) as runner:
            result = runner.run(ingest(deadline))
        returned_at = time.monotonic()
    return Run(result, deadline, returned_at, peak())


@contextmanager
def rss_peak() -> Iterator[Any]:
    """Sample RSS while the block runs; yields a callable giving the growth in MiB."""
    gc.collect()
    process = psutil.Process()
    baseline = process.memory_info().rss
    highest = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_TICK_S):
            highest[0] = max(highest[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield lambda: (highest[0] - baseline) / MIB
    finally:
        done.set()
        sampler.join()


# ------------------------------------------------------------------ reading back


class Store:
    """The run's destination, read directly (never through the fault proxy)."""

    def __init__(self, world: World, servers: Servers) -> None:
        self._local = servers.scratch if world.sink == "local" else None
        self._moto = servers.moto

    def keys(self, prefix: str = f"{SOURCE}/") -> set[str]:
        """Every stored key under ``prefix`` (temporary local files included)."""
        if self._local is None:
            return set(self._moto.list_keys(RAW_BUCKET, prefix))
        root = self._local
        found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        return {key for key in found if key.startswith(prefix)}

    def get(self, key: str) -> bytes:
        if self._local is None:
            return self._moto.get_bytes(RAW_BUCKET, key)
        return (self._local / key).read_bytes()

    def open_uploads(self) -> list[Any]:
        """Multipart uploads neither completed nor aborted (S3 only)."""
        if self._local is None:
            return self._moto.incomplete_uploads(RAW_BUCKET)
        return []

    def manifest(self, key: str) -> dict[int, dict[str, Any]]:
        return {line["index"]: line for line in map(orjson.loads, self.get(key).splitlines())}

    def lines(self, key: str) -> list[bytes]:
        """The NDJSON lines of a pack object (every gzip member)."""
        data = self.get(key)
        if key.endswith(".gz"):
            data = gzip.decompress(data)
        return data.splitlines()


def served_records(world: World, body: bytes) -> list[Any]:
    """The records of one served page."""
    value = orjson.loads(body)
    if world.records_path is None:
        return list(value)
    records: list[Any] = value[world.records_path]
    return records


def decoded(key: str, data: bytes, compressed: bool) -> bytes:
    """An unpacked object's bytes as served (``compress`` gzips them)."""
    return gzip.decompress(data) if compressed and key.endswith(".gz") else data


def named_keys(entries: Mapping[int, Mapping[str, Any]]) -> set[str]:
    """Every key the manifest names."""
    named: set[str] = set()
    for entry in entries.values():
        if entry.get("key"):
            named.add(entry["key"])
        named.update(entry.get("keys") or ())
    return named
