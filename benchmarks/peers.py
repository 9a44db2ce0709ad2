"""Implementations under test, each run in its own worker process.

A worker runs one implementation over N items against the local servers, after
a warm-up of its own, and writes one JSON result: client CPU seconds for the
measured items only (``getrusage(RUSAGE_SELF)`` user + sys, all threads), wall
time, per-item latency percentiles where the implementation exposes them, and
peak RSS. Servers live in other processes, so their CPU is never counted here.

Implementations:

* ``original_sequential``: the original function's per-item work in a loop:
  ``requests.get(endpoint, headers, params)`` -> ``boto3 put_object(Body=response.text)``
  -> ``len(response.json())``; one boto3 client, created before measuring.
* ``original_threadpool``: the same per-item work in a ``ThreadPoolExecutor(32)``,
  plain ``requests.get`` per call, one shared boto3 client.
* ``raw_floor``: the least an async client can do: one aiohttp session, C
  coroutines pulling items, GET then an unsigned aiohttp PUT of the same bytes to
  ``{s3}/{bucket}/{key}``; no retries, no checks beyond the status codes.
* ``raw_put``: PUTs only (a fixed body), the S3 capacity check for the latency scenario.
* ``fanout_ingest``: ``handler.app.lambda_handler`` with a ``batch`` event (CONTRACT §3).
* ``fanout_warm``: repeated one-item invocations of the handler, for start-up overhead.

The harness side, ``run_worker``, launches a worker, optionally samples its RSS
from the parent, enforces a timeout and never raises for a failing worker: an
implementation that cannot run is reported as ``unavailable``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_THREADS = 32
DEFAULT_WARMUP_ITEMS = 50
SOURCE_ID = "bench"
API_HEADERS = {"Accept": "application/json"}
BASE_DATE = dt.date(2020, 1, 1)
DATE_CYCLE_DAYS = 3650
LAMBDA_BUDGET_MS = 15 * 60 * 1000  # the Lambda maximum; the handler never runs short of time
MAX_ERRORS_KEPT = 5
RSS_SAMPLE_S = 0.05
WARM_INVOCATIONS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process runs."""

    impl: str
    api_url: str
    s3_url: str
    bucket: str
    items: int
    concurrency: int
    run_id: str
    warmup_items: int = DEFAULT_WARMUP_ITEMS
    body_bytes: int = 9_000  # what the API serves; raw_put PUTs this many bytes
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra handler options
    api_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # over fanout's own
    repeats: int = WARM_INVOCATIONS  # fanout_warm only
    loop: str = "asyncio"  # "asyncio" or "uvloop": the event loop every async peer runs on


@dataclasses.dataclass(slots=True)
class Outcome:
    """Counts from one measured run, filled by an implementation."""

    succeeded: int = 0
    failed: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    latencies_s: array[float] | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fail(self, message: str) -> None:
        """Count one failed item and keep the first few messages."""
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)


class Unavailable(Exception):
    """The implementation cannot run here (for instance, the handler is not written yet)."""


def item_params(index: int) -> dict[str, Any]:
    """Query parameters of item ``index``; unique per index."""
    return {
        "date": (BASE_DATE + dt.timedelta(days=index % DATE_CYCLE_DAYS)).isoformat(),
        "i": index,
    }


def item_key(run_id: str, index: int) -> str:
    """The object key of item ``index``: CONTRACT §5's default scheme."""
    return f"{SOURCE_ID}/{run_id}-{index}.json"


def key_prefix(run_id: str) -> str:
    """The prefix under which every item of ``run_id`` (and nothing else) lands."""
    return f"{SOURCE_ID}/{run_id}-"


# ------------------------------------------------------------------ original


def _boto3_client(threads: int = 1) -> Any:
    import boto3
    from botocore.config import Config

    # botocore's pool of 10 would make 32 threads queue for connections; give the
    # peer the pool it needs so the comparison is not against a handicapped peer.
    config = Config(max_pool_connections=max(10, threads))
    return boto3.client("s3", config=config)  # endpoint from AWS_ENDPOINT_URL_S3


def _original_item(s3: Any, spec: WorkerSpec, run_id: str, index: int) -> float | str:
    """One item of the original function; returns its latency, or an error message."""
    import requests

    started = time.perf_counter()
    response = requests.get(spec.api_url, headers=API_HEADERS, params=item_params(index))
    put = s3.put_object(Bucket=spec.bucket, Key=item_key(run_id, index), Body=response.text)
    records = len(response.json())
    status = put["ResponseMetadata"]["HTTPStatusCode"]
    if response.status_code != 200 or status != 200 or records < 1:
        return f"GET {response.status_code}, PUT {status}, {records} records"
    return time.perf_counter() - started


def _tally(outcome: Outcome, result: float | str | BaseException) -> None:
    if isinstance(result, float):
        outcome.succeeded += 1
        assert outcome.latencies_s is not None
        outcome.latencies_s.append(result)
    elif isinstance(result, BaseException):
        outcome.fail(f"{type(result).__name__}: {result}")
    else:
        outcome.fail(result)


def _guarded(s3: Any, spec: WorkerSpec, run_id: str, index: int) -> float | str | BaseException:
    try:
        return _original_item(s3, spec, run_id, index)
    except Exception as exc:  # the original had no error handling; the harness must count it
        return exc


def _original_sequential(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    s3 = _boto3_client()

    def run(run_id: str, count: int) -> Outcome:
        outcome = Outcome(latencies_s=array("d"))
        for index in range(count):
            _tally(outcome, _guarded(s3, spec, run_id, index))
        return outcome

    return run


def _original_threadpool(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    s3 = _boto3_client(ORIGINAL_THREADS)

    def run(run_id: str, count: int) -> Outcome:
        outcome = Outcome(latencies_s=array("d"))
        with ThreadPoolExecutor(ORIGINAL_THREADS) as pool:
            for result in pool.map(lambda i: _guarded(s3, spec, run_id, i), range(count)):
                _tally(outcome, result)
        return outcome

    return run


# ----------------------------------------------------------------- raw floor


async def _raw_item(
    session: Any, spec: WorkerSpec, run_id: str, index: int, outcome: Outcome
) -> None:
    started = time.perf_counter()
    async with session.get(spec.api_url, params=item_params(index), headers=API_HEADERS) as got:
        body = await got.read()
        get_status = got.status
    async with session.put(
        f"{spec.s3_url}/{spec.bucket}/{item_key(run_id, index)}", data=body
    ) as put:
        await put.read()
        put_status = put.status
    if get_status == 200 and put_status == 200:
        outcome.succeeded += 1
        assert outcome.latencies_s is not None
        outcome.latencies_s.append(time.perf_counter() - started)
    else:
        outcome.fail(f"GET {get_status}, PUT {put_status}")


async def _raw_put_item(
    session: Any, spec: WorkerSpec, run_id: str, index: int, outcome: Outcome, body: bytes
) -> None:
    started = time.perf_counter()
    async with session.put(
        f"{spec.s3_url}/{spec.bucket}/{item_key(run_id, index)}", data=body
    ) as put:
        await put.read()
    if put.status == 200:
        outcome.succeeded += 1
        assert outcome.latencies_s is not None
        outcome.latencies_s.append(time.perf_counter() - started)
    else:
        outcome.fail(f"PUT {put.status}")


async def _pool(spec: WorkerSpec, count: int, one: Callable[[Any, int, Outcome], Any]) -> Outcome:
    """C coroutines pulling item indexes from one iterator: a semaphore without N tasks."""
    import aiohttp

    outcome = Outcome(latencies_s=array("d"))
    indexes = iter(range(count))

    async def worker(session: Any) -> None:
        for index in indexes:
            try:
                await one(session, index, outcome)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                outcome.fail(f"{type(exc).__name__}: {exc}")

    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(spec.concurrency, count))))
    return outcome


def _raw_floor(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    def run(run_id: str, count: int) -> Outcome:
        return asyncio.run(_pool(spec, count, lambda s, i, o: _raw_item(s, spec, run_id, i, o)))

    return run


def _raw_put(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    body = b"x" * spec.body_bytes

    def run(run_id: str, count: int) -> Outcome:
        return asyncio.run(
            _pool(spec, count, lambda s, i, o: _raw_put_item(s, spec, run_id, i, o, body))
        )

    return run


# ------------------------------------------------------- the lean floors (round 3)
# What the leanest honest client spends: no latency samples, no per-item dates, no
# checks beyond the status codes (docs/PERFORMANCE.md, "Round three").


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``name``; None is asyncio's default loop."""
    if name == "uvloop":
        import uvloop  # an ImportError here makes the worker report "failed"

        return uvloop.new_event_loop
    if name != "asyncio":
        raise ValueError(f"unknown loop {name!r}")
    return None


def _lean_params(index: int) -> dict[str, Any]:
    return {"date": LEAN_DATES[index % len(LEAN_DATES)], "i": index}


LEAN_DATES = [(BASE_DATE + dt.timedelta(days=d)).isoformat() for d in range(DATE_CYCLE_DAYS)]


async def _get_only_item(session: Any, spec: WorkerSpec, index: int) -> bool:
    async with session.get(spec.api_url, params=_lean_params(index), headers=API_HEADERS) as got:
        await got.read()
        return bool(got.status == 200)


async def _lean_item(session: Any, spec: WorkerSpec, run_id: str, index: int) -> bool:
    async with session.get(spec.api_url, params=_lean_params(index), headers=API_HEADERS) as got:
        body = await got.read()
        ok = got.status == 200
    async with session.put(
        f"{spec.s3_url}/{spec.bucket}/{item_key(run_id, index)}", data=body
    ) as put:
        await put.read()
        return ok and bool(put.status == 200)


async def _lean_pool(spec: WorkerSpec, count: int, one: Callable[[Any, int], Any]) -> Outcome:
    import aiohttp

    outcome = Outcome()
    indexes = iter(range(count))

    async def worker(session: Any) -> None:
        for index in indexes:
            try:
                if await one(session, index):
                    outcome.succeeded += 1
                else:
                    outcome.fail(f"item {index}: a status other than 200")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                outcome.fail(f"{type(exc).__name__}: {exc}")

    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(spec.concurrency, count))))
    return outcome


def _on_loop(spec: WorkerSpec, make: Callable[[], Any]) -> Outcome:
    with asyncio.Runner(loop_factory=loop_factory(spec.loop)) as runner:
        return runner.run(make())  # type: ignore[no-any-return]


def _get_only(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    def run(run_id: str, count: int) -> Outcome:
        return _on_loop(
            spec, lambda: _lean_pool(spec, count, lambda s, i: _get_only_item(s, spec, i))
        )

    return run


def _lean_floor(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    def run(run_id: str, count: int) -> Outcome:
        return _on_loop(
            spec, lambda: _lean_pool(spec, count, lambda s, i: _lean_item(s, spec, run_id, i))
        )

    return run


# ------------------------------------------------------------- fanout-ingest


class LocalContext:
    """A stand-in for the Lambda context object, with a 15-minute budget."""

    function_name = "fanout-ingest-bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:fanout-ingest-bench"
    log_group_name = "/aws/lambda/fanout-ingest-bench"
    log_stream_name = "bench"

    def __init__(self, aws_request_id: str) -> None:
        self.aws_request_id = aws_request_id
        self._deadline = time.monotonic() + LAMBDA_BUDGET_MS / 1000

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left, as the Lambda runtime reports them."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def fanout_event(spec: WorkerSpec, run_id: str, count: int) -> dict[str, Any]:
    """A CONTRACT §3 ``batch`` event for ``count`` items keyed ``bench/<run_id>-<i>.json``."""
    return {
        "api_config": {
            "endpoint": spec.api_url,
            "headers": dict(API_HEADERS),
            "raw_bucket": spec.bucket,
            "source_id": SOURCE_ID,
            **spec.api_config,
        },
        "batch": [item_params(index) for index in range(count)],
        "options": {"concurrency": spec.concurrency, **spec.options},
        "request_id": run_id,
    }


def _load_handler() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    try:
        from handler.app import lambda_handler
    except ImportError as exc:
        raise Unavailable(f"cannot import handler.app.lambda_handler: {exc}") from exc
    return lambda_handler  # type: ignore[no-any-return]


def _invoke(
    handler: Callable[..., dict[str, Any]], spec: WorkerSpec, run_id: str, count: int
) -> Outcome:
    result = handler(fanout_event(spec, run_id, count), LocalContext(f"ctx-{run_id}"))
    outcome = Outcome(succeeded=int(result.get("succeeded", 0)))
    outcome.detail = {
        k: result.get(k)
        for k in (
            "status",
            "requested",
            "succeeded",
            "failed",
            "not_attempted",
            "records_ingested",
            "bytes_written",
            "retries",
            "throttled",
            "duration_ms",
            "manifest_key",
            "failures_truncated",
            "adaptive",
        )
    }
    missing = count - outcome.succeeded
    for failure in result.get("failures", [])[:MAX_ERRORS_KEPT]:
        outcome.errors.append(json.dumps(failure, default=str)[:300])
    outcome.failed = missing
    if result.get("status") != "SUCCESS" and not outcome.errors:
        outcome.errors.append(f"status {result.get('status')}")
    return outcome


def _fanout_ingest(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    # The handler runs on the loop FANOUT_EVENT_LOOP names (ingest_core/loops.py; uvloop
    # by default): each series says which, so ours and a floor share their loop.
    os.environ["FANOUT_EVENT_LOOP"] = spec.loop
    handler = _load_handler()
    return lambda run_id, count: _invoke(handler, spec, run_id, count)


def _fanout_ingest_sdk(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    """The same handler with single PUTs through aioboto3's put_object (the lean path off)."""
    os.environ["FANOUT_LEAN_PUT"] = "false"
    return _fanout_ingest(spec)


def _dlt_rest_api(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    """dlt's REST API source into its filesystem destination (``benchmarks/peer_dlt.py``)."""
    from benchmarks.peer_dlt import dlt_rest_api

    return dlt_rest_api(spec)


# ------------------------------------------------------------------- measure

IMPLEMENTATIONS: dict[str, Callable[[WorkerSpec], Callable[[str, int], Outcome]]] = {
    "original_sequential": _original_sequential,
    "original_threadpool": _original_threadpool,
    "raw_floor": _raw_floor,
    "raw_put": _raw_put,
    "get_only": _get_only,
    "lean_floor": _lean_floor,
    "fanout_ingest": _fanout_ingest,
    "fanout_ingest_sdk": _fanout_ingest_sdk,
    "dlt_rest_api": _dlt_rest_api,
}


def _cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _percentiles(values: array[float] | None) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": pick(1.0)}


def _peak_rss_mib() -> float | None:
    """This process's RSS high-water mark (VmHWM).

    Not ``ru_maxrss``: Linux carries that across ``execve`` from the parent, so a
    worker would inherit the harness's peak.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _reset_peak_rss() -> bool:
    """Restart the high-water mark at the current RSS (Linux >= 4.0), so it covers one phase."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(spec: WorkerSpec) -> dict[str, Any]:
    """Warm up, then run the measured items and return the result record."""
    run = IMPLEMENTATIONS[spec.impl](spec)
    warm = run(f"warm-{spec.run_id}", spec.warmup_items) if spec.warmup_items else Outcome()
    if warm.failed:
        return {
            "status": "failed",
            "phase": "warm-up",
            "errors": warm.errors,
            "detail": warm.detail,
        }
    rss_before = _peak_rss_mib()
    peak_reset = _reset_peak_rss()
    user0, sys0 = _cpu_seconds()
    t_start, wall0 = time.time(), time.perf_counter()
    outcome = run(spec.run_id, spec.items)
    wall = time.perf_counter() - wall0
    user1, sys1 = _cpu_seconds()
    ok = outcome.failed == 0 and outcome.succeeded == spec.items
    return {
        "status": "ok" if ok else "failed",
        "items": spec.items,
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "errors": outcome.errors,
        "detail": outcome.detail,
        "cpu_s": (user1 - user0) + (sys1 - sys0),
        "user_s": user1 - user0,
        "sys_s": sys1 - sys0,
        "wall_s": wall,
        "t_start": t_start,
        "t_end": t_start + wall,
        "latency_ms": _percentiles(outcome.latencies_s),
        "peak_rss_before_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_scope": "measured items" if peak_reset else "whole process",
    }


# --------------------------------------------------------- warm invocations


async def _one_raw(spec: WorkerSpec, run_id: str) -> None:
    outcome = await _pool(
        dataclasses.replace(spec, concurrency=1),
        1,
        lambda s, i, o: _raw_item(s, spec, run_id, i, o),
    )
    if outcome.failed:
        raise RuntimeError(f"raw one-item fetch+write failed: {outcome.errors}")


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return (time.perf_counter() - started) * 1000, value


def warm_invocations(spec: WorkerSpec) -> dict[str, Any]:
    """Import the handler, invoke it cold once, then ``repeats`` warm one-item invocations.

    Each warm invocation is paired with a raw one-item fetch+write (new aiohttp
    session, GET, PUT) so overhead = handler wall time - raw fetch+write time.
    """
    import_ms, handler = _timed(_load_handler)
    one = dataclasses.replace(spec, concurrency=1)
    cold_ms, cold = _timed(lambda: _invoke(handler, one, f"{spec.run_id}-cold", 1))
    samples: dict[str, list[float]] = {"handler_ms": [], "duration_ms": [], "raw_ms": []}
    for n in range(spec.repeats):
        wall_ms, outcome = _timed(lambda n=n: _invoke(handler, one, f"{spec.run_id}-w{n}", 1))
        if outcome.failed:
            return {"status": "failed", "errors": outcome.errors, "detail": outcome.detail}
        raw_ms, _ = _timed(lambda n=n: asyncio.run(_one_raw(spec, f"{spec.run_id}-raw{n}")))
        samples["handler_ms"].append(wall_ms)
        samples["duration_ms"].append(float(outcome.detail.get("duration_ms") or "nan"))
        samples["raw_ms"].append(raw_ms)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "status": "ok" if not cold.failed else "failed",
        "import_ms": import_ms,
        "cold_ms": cold_ms,
        "samples": samples,
        "medians": medians,
        "overhead_ms": medians["handler_ms"] - medians["raw_ms"],
        "errors": cold.errors,
    }


# -------------------------------------------------------------- the harness


@dataclasses.dataclass(slots=True)
class RssSampler:
    """Samples a process's RSS every ``interval_s`` from a thread of the parent."""

    pid: int
    interval_s: float = RSS_SAMPLE_S
    samples: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (time, MiB)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def run(self) -> None:
        """Sample until stopped or the process is gone."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self._stop.is_set():
                self.samples.append((time.time(), proc.memory_info().rss / 2**20))
                self._stop.wait(self.interval_s)
        except psutil.Error:
            return  # the worker exited between two samples

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        """Sample in a background thread for the duration of the block."""
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def worker_env(s3_url: str) -> dict[str, str]:
    """Environment of a worker: local servers allowed, S3 calls pointed at ``s3_url``."""
    from benchmarks.servers import BENCH_CREDENTIALS

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FANOUT_"))}
    return {
        **env,
        **BENCH_CREDENTIALS,
        "AWS_ENDPOINT_URL_S3": s3_url,
        "FANOUT_ALLOW_PRIVATE_NETWORKS": "true",
        "POWERTOOLS_SERVICE_NAME": "fanout-bench",
        "POWERTOOLS_METRICS_NAMESPACE": "FanoutBench",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def run_worker(
    spec: WorkerSpec, *, timeout_s: float, sample_rss: bool = False, log_dir: Path | None = None
) -> dict[str, Any]:
    """Run one worker process; never raises for a failing implementation.

    Returns the worker's result record, with ``status`` one of ``ok``, ``failed``
    or ``unavailable``, plus ``rss_samples`` when ``sample_rss`` is set.
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench-worker-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = log_dir / f"{spec.run_id}.json", log_dir / f"{spec.run_id}.log"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.peers",
        "--spec",
        json.dumps(dataclasses.asdict(spec)),
        "--result",
        str(result_path),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=worker_env(spec.s3_url)
        )
    sampler = RssSampler(proc.pid)
    with sampler.running() if sample_rss else contextlib.nullcontext():
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {
                "status": "failed",
                "errors": [f"worker timed out after {timeout_s:.0f}s"],
                "log_tail": _tail(log_path),
            }
    record = _read_result(result_path, proc.returncode, log_path)
    if sample_rss:
        record["rss_samples"] = sampler.samples
    return record


def _read_result(path: Path, returncode: int, log_path: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {
            "status": "failed",
            "errors": [f"worker exited {returncode} without a result"],
            "log_tail": _tail(log_path),
        }
    if record.get("status") != "ok":
        record["log_tail"] = _tail(log_path)
    return record


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("--spec", required=True, help="WorkerSpec as JSON")
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = WorkerSpec(**json.loads(args.spec))
    try:
        record = warm_invocations(spec) if spec.impl == "fanout_warm" else measure(spec)
    except Unavailable as exc:
        record = {"status": "unavailable", "errors": [str(exc)]}
    except Exception as exc:  # report, do not crash the harness
        record = {
            "status": "failed",
            "errors": [f"{type(exc).__name__}: {exc}"],
            "traceback": traceback.format_exc()[-3000:],
        }
    record["impl"] = spec.impl
    args.result.write_text(json.dumps(record))
    return 0 if record["status"] == "ok" else 2


if __name__ == "__main__":
    sys.exit(_worker_main())
