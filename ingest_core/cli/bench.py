"""``fanout-ingest bench``: measure your own API and bucket at several concurrencies.

Runs the real engine N times per concurrency level (one batch of N requests with
the same params each), and prints what a user needs to choose ``concurrency``
and ``rate_limit_per_s``: items/s, latency percentiles, errors by kind and this
process's CPU per item. ``--dest null`` discards bodies, to measure the API alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ingest_core import loops
from ingest_core.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    UsageError,
    header_pair,
    key_value,
    usage_error_from,
)
from ingest_core.cli.request_flags import add_request_flags, request_config
from ingest_core.errors import InvalidEventError
from ingest_core.events import Job, parse_event
from ingest_core.keys import DEFAULT_KEY_TEMPLATE, PAGINATED_KEY_TEMPLATE
from ingest_core.netguard import NetPolicy
from ingest_core.results import ItemResult
from ingest_core.settings import Settings
from ingest_core.writers import MultipartUpload, ObjectMeta

DEFAULT_REQUESTS = 200
DEFAULT_LEVELS = "8,32,64"
NULL_DEST = "null"
SOURCE_ID = "bench"

EPILOG = """\
examples:
  # the API alone, bodies discarded
  fanout-ingest bench --endpoint https://api.example.com/v1/data --query date=2024-01-01 \\
      --requests 300 --concurrency 8,32,128 --dest null
  # API and bucket together, as a backfill would run
  fanout-ingest bench --endpoint https://api.example.com/v1/data --query date=2024-01-01 \\
      --dest s3://my-raw-bucket/bench
"""


class NullWriter:
    """Discards every body: measures the API and the engine without storage."""

    def describe(self, key: str) -> str:
        return f"null://{key}"

    async def exists(self, key: str) -> bool:
        return False

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        return None

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        return _NullUpload()

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        return None


class _NullUpload:
    async def upload_part(self, data: bytes | memoryview) -> None:
        return None

    async def complete(self) -> None:
        return None

    async def abort(self) -> None:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench flags."""
    parser.add_argument("--endpoint", required=True, help="the API URL (https)")
    parser.add_argument(
        "--query",
        action="append",
        type=key_value,
        metavar="K=V",
        help="a parameter sent with every request (repeatable)",
    )
    parser.add_argument(
        "--header",
        action="append",
        type=header_pair,
        metavar="K:V",
        help="a request header (repeatable)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests per concurrency level (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--concurrency",
        default=DEFAULT_LEVELS,
        metavar="C1,C2,...",
        help=f"concurrency levels to try (default {DEFAULT_LEVELS})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="PER_S",
        help="rate_limit_per_s for every level (default 0: off)",
    )
    parser.add_argument(
        "--dest",
        default=NULL_DEST,
        help="null (discard, default), s3://bucket[/prefix] or a local folder",
    )
    parser.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="allow http and loopback/private addresses (local testing only)",
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    add_request_flags(parser)


@dataclasses.dataclass(frozen=True, slots=True)
class Level:
    """What one concurrency level measured."""

    concurrency: int
    requests: int
    succeeded: int
    wall_s: float
    cpu_us_per_item: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]

    @property
    def items_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0


def run(args: argparse.Namespace) -> int:
    """Run every level and print the table; exit 1 when any request failed."""
    levels = _levels(args.concurrency)
    if args.requests < 1:
        raise UsageError(("--requests", "must be at least 1"))
    results = [_run_level(args, level) for level in levels]
    _print(results, as_json=args.json)
    return EXIT_OK if all(r.succeeded == r.requests for r in results) else EXIT_FAILED


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(("--concurrency", f"{text!r} is not a list of integers")) from None
    if not levels or any(level < 1 for level in levels):
        raise UsageError(("--concurrency", "give one or more positive integers, e.g. 8,32,64"))
    return levels


def _event(args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    bucket, prefix = _bucket_and_prefix(args.dest)
    params = dict(args.query or [])
    shape = request_config(args)
    if shape.get("pagination", {}).get("type") == "auto":
        # A measurement must not depend on a guess: name the paginator.
        raise UsageError(("--paginate", "auto is for backfill and list; name the type here"))
    paged = "pagination" in shape
    return {
        "api_config": {
            "endpoint": args.endpoint,
            "headers": dict(args.header or []),
            "raw_bucket": bucket,
            "source_id": SOURCE_ID,
            **shape,
            "key_template": prefix + (PAGINATED_KEY_TEMPLATE if paged else DEFAULT_KEY_TEMPLATE),
        },
        "batch": [params] * args.requests,
        "options": {"concurrency": concurrency, "rate_limit_per_s": args.rate},
        "request_id": f"bench-{int(time.time())}-c{concurrency}",
    }


def _bucket_and_prefix(dest: str) -> tuple[str, str]:
    if dest.startswith("s3://"):
        bucket, _, prefix = dest[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        return bucket, f"{prefix}/" if prefix else ""
    return "bench-local", ""


def _job(args: argparse.Namespace, concurrency: int, policy: NetPolicy) -> Job:
    try:
        return parse_event(_event(args, concurrency), policy=policy)
    except InvalidEventError as exc:
        raise usage_error_from(exc) from None


def _run_level(args: argparse.Namespace, concurrency: int) -> Level:
    settings = Settings.from_env()
    policy = settings.policy
    if args.allow_private_networks:
        policy = dataclasses.replace(policy, allow_private_networks=True)
    if not args.dest.startswith("s3://"):
        policy = dataclasses.replace(policy, allowed_buckets=())
    settings = dataclasses.replace(settings, policy=policy)
    job = _job(args, concurrency, policy)
    latencies: list[int] = []
    errors: Counter[str] = Counter()

    def on_item(result: ItemResult) -> None:
        if result.succeeded:
            latencies.append(result.latency_ms)
        else:
            errors[result.kind.value if result.kind else "unknown"] += 1

    cpu0, wall0 = _cpu_s(), time.perf_counter()
    outcome = loops.run(_execute(job, settings, args.dest, on_item))
    wall, cpu = time.perf_counter() - wall0, _cpu_s() - cpu0
    return Level(
        concurrency=concurrency,
        requests=job.requested,
        succeeded=int(outcome["succeeded"]),
        wall_s=wall,
        cpu_us_per_item=cpu / job.requested * 1e6,
        p50_ms=_percentile(latencies, 50),
        p90_ms=_percentile(latencies, 90),
        p99_ms=_percentile(latencies, 99),
        errors=dict(errors),
    )


async def _execute(job: Job, settings: Settings, dest: str, on_item: Any) -> dict[str, Any]:
    from ingest_core.runtime import execute

    writer = NullWriter() if dest == NULL_DEST else None
    local = None if dest.startswith("s3://") or dest == NULL_DEST else Path(dest)
    outcome = await execute(
        job,
        settings=settings,
        on_item=on_item,
        writer=writer,
        local_dir=local,
    )
    return outcome.result


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[int], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


def _print(results: list[Level], *, as_json: bool) -> None:
    if as_json:
        rows = [{**dataclasses.asdict(r), "items_per_s": r.items_per_s} for r in results]
        print(json.dumps(rows, indent=2))
        return
    header = ("concurrency", "items/s", "p50 ms", "p90 ms", "p99 ms", "CPU µs/item", "errors")
    print("  ".join(f"{h:>12}" for h in header))
    for r in results:
        errors = ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())) or "0"
        cells = (
            str(r.concurrency),
            f"{r.items_per_s:,.0f}",
            _ms(r.p50_ms),
            _ms(r.p90_ms),
            _ms(r.p99_ms),
            f"{r.cpu_us_per_item:,.0f}",
            errors,
        )
        print("  ".join(f"{c:>12}" for c in cells))
    print(
        "choose the smallest concurrency whose items/s is near the best and whose p99 and"
        " errors are acceptable; use --rate to stay under the API's limit."
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


COMMAND = Command(
    name="bench",
    help="measure your API (and bucket) at several concurrencies",
    add_arguments=add_arguments,
    run=run,
    description=__doc__,
    epilog=EPILOG,
)
