"""``fanout-ingest demo``: a 90-day backfill against an embedded API and embedded S3.

Works offline with no configuration. The sample API (``sample_api``) and moto's
S3 server run on 127.0.0.1 inside this process; the engine reaches them because
the demo passes its own ``Settings``/``NetPolicy`` allowing private networks,
and writes with its own dummy credentials. Nothing in the user's environment is
read for this or changed.

The outcome is known in advance (89 days written, the 404 day failed with
``http_status``, the 503 days written after retries), so the demo checks it
and exits non-zero when it is anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import shlex
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from ingest_core.cli.common import (
    PROG,
    Command,
    UsageError,
    add_progress_flag,
    run_async,
)
from ingest_core.cli.display import ProgressDisplay, print_failures, print_summary
from ingest_core.engine import RunOutcome, limits_for
from ingest_core.events import Job, parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.settings import Settings
from ingest_core.writers import LocalDirWriter, ObjectWriter

START, END, DAYS = "2024-01-01", "2024-03-30", 90  # across the leap day
NOT_FOUND_DAY = "2024-02-14"
FLAKY_DAYS = ("2024-01-15", "2024-02-29", "2024-03-21")
SOURCE_ID = "demo-weather"
BUCKET = "fanout-demo-raw"
REQUEST_ID = "demo-20240101-20240330-1d"
RECORDS_PATH = "data.items"
OPTIONS = {"concurrency": 8, "max_attempts": 4}
LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
DEMO_CREDENTIAL = "demo"  # moto accepts any; never the user's
# Only the demo's own loopback servers are reached, so private networks are allowed
# for this run alone, through these objects rather than the environment.
POLICY = NetPolicy(allow_private_networks=True)
KEYS_SHOWN = 3
PACK_LINE_SHOWN = 160
# The paginated source: a week of /v1/readings, 3 pages a day, pages 1-2 in parallel.
PAGED_SOURCE_ID = "demo-readings"
PAGED_REQUEST_ID = "demo-readings-20240401-20240407-1d"
PAGED_DAYS = 7
PAGED_PAGES = 3
BODY_LINES_SHOWN = 14


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``demo`` flags."""
    parser.add_argument(
        "--dest",
        metavar="DIR",
        type=Path,
        help="write into this local folder (kept after the demo) instead of the embedded S3",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="after the run, keep the embedded S3 serving until Ctrl-C, to browse it",
    )
    parser.add_argument(
        "--pack",
        choices=("response", "record"),
        help="pack the days into one NDJSON object (docs/CONTRACT.md §13), not one object each",
    )
    add_progress_flag(parser)


def demo_event(endpoint: str, pack: str | None = None) -> dict[str, Any]:
    """The event the demo runs: 90 days, one request each (packed with ``pack``)."""
    options = {**OPTIONS, "pack": {"unit": pack}} if pack else OPTIONS
    return {
        "api_config": {
            "endpoint": endpoint,
            "raw_bucket": BUCKET,
            "source_id": SOURCE_ID,
            "records_path": RECORDS_PATH,
            "headers": {"Accept": "application/json"},
        },
        "options": options,
        "request_id": REQUEST_ID,
        "date_range": {"start": START, "end": END, "param": "date", "step": "1d"},
    }


def paged_event(endpoint: str) -> dict[str, Any]:
    """The demo's paginated source: a week, every day in pages (CONTRACT §11)."""
    return {
        "api_config": {
            "endpoint": endpoint,
            "raw_bucket": BUCKET,
            "source_id": PAGED_SOURCE_ID,
            "records_path": RECORDS_PATH,
            "pagination": {"type": "page_number", "total_pages_path": "meta.total_pages"},
        },
        "options": OPTIONS,
        "request_id": PAGED_REQUEST_ID,
        "date_range": {"start": "2024-04-01", "end": "2024-04-07"},
    }


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the outcome is exactly the expected one."""
    if args.serve and args.dest is not None:
        raise UsageError(("--serve", "serves the embedded S3, so it cannot go with --dest"))
    if args.dest is not None and args.dest.exists() and not args.dest.is_dir():
        raise UsageError(("--dest", f"{args.dest} exists and is not a folder"))
    with _embedded_s3_server(needed=args.dest is None) as endpoint:
        return run_async(lambda stop: _demo(args, endpoint, stop))


@contextmanager
def _embedded_s3_server(*, needed: bool) -> Iterator[str | None]:
    """moto's S3 server on a free port of 127.0.0.1; yields its endpoint."""
    if not needed:
        yield None
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UsageError(
            (
                "--dest",
                "the embedded S3 needs moto[server] (pip install 'fanout-ingest[cli]');"
                " or write to a local folder with --dest DIR",
            )
        ) from None
    # werkzeug logs every request at INFO on stderr, over the progress display.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    try:
        yield f"http://{LOOPBACK}:{server.get_host_and_port()[1]}"
    finally:
        server.stop()
        # stop() leaves the listening socket open.
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            wsgi.server_close()


async def _demo(args: argparse.Namespace, s3_endpoint: str | None, stop: asyncio.Event) -> int:
    # Imported here so that `python -m ingest_core.cli.sample_api` runs it fresh.
    from ingest_core.cli.sample_api import SampleAPI

    items: dict[int, ItemResult] = {}
    async with SampleAPI(not_found_days=[NOT_FOUND_DAY], flaky_days=FLAKY_DAYS) as api:
        job = parse_event(demo_event(api.url, args.pack), policy=POLICY)
        settings = Settings(policy=POLICY, s3_endpoint_url=s3_endpoint)
        async with _writer(args.dest, s3_endpoint, job) as (writer, client):
            print(f"{PROG} demo: {DAYS} days from the sample API at {api.url}")
            where = f" (embedded S3 at {s3_endpoint})" if s3_endpoint else ""
            print(f"  into {writer.describe('')}{where}\n")
            outcome = await _run(job, writer, settings, items, stop, args.progress)
            problems = check_outcome(outcome.result, items, api.hits, interrupted=stop.is_set())
            await _show(outcome, items, writer, client)
            if not stop.is_set():
                problems += await _paged(api.paged_url, writer, settings, stop)
            _how_to_look(args, s3_endpoint, outcome)
            if args.serve and s3_endpoint and not stop.is_set():
                await _serve(s3_endpoint, stop)
    return _verdict(problems)


@asynccontextmanager
async def _writer(
    folder: Path | None, s3_endpoint: str | None, job: Job
) -> AsyncIterator[tuple[ObjectWriter, Any]]:
    if folder is not None:
        yield LocalDirWriter(folder), None
        return
    assert s3_endpoint is not None
    async with _embedded_s3_writer(s3_endpoint, job.options.concurrency) as pair:
        yield pair


@asynccontextmanager
async def _embedded_s3_writer(
    endpoint: str, concurrency: int
) -> AsyncIterator[tuple[ObjectWriter, Any]]:
    """``runtime.s3_writer`` with the demo's own session and dummy credentials."""
    import aioboto3

    from ingest_core.runtime import s3_writer

    session = aioboto3.Session(
        aws_access_key_id=DEMO_CREDENTIAL,
        aws_secret_access_key=DEMO_CREDENTIAL,
        region_name=REGION,
    )
    settings = Settings(policy=POLICY, s3_endpoint_url=endpoint)
    async with s3_writer(
        BUCKET, concurrency=concurrency, settings=settings, session=session
    ) as writer:
        await writer.client.create_bucket(Bucket=BUCKET)
        yield writer, writer.client


async def _run(
    job: Job,
    writer: ObjectWriter,
    settings: Settings,
    items: dict[int, ItemResult],
    stop: asyncio.Event,
    mode: str,
) -> RunOutcome:
    from ingest_core.runtime import execute

    progress = ProgressDisplay(job.requested, label="demo backfill", mode=mode)

    def on_item(result: ItemResult) -> None:
        progress.on_item(result)
        items[result.index] = result

    async with progress:
        limits = progress.watch(limits_for(job))
        return await execute(
            job, settings=settings, writer=writer, on_item=on_item, stop=stop, limits=limits
        )


async def _paged(
    endpoint: str, writer: ObjectWriter, settings: Settings, stop: asyncio.Event
) -> list[str]:
    """Run the paginated source and say what differs from the expected outcome."""
    from ingest_core.runtime import execute

    job = parse_event(paged_event(endpoint), policy=POLICY)
    print(f"\n{PROG} demo: a paginated source, {PAGED_DAYS} days of {endpoint}")
    outcome = await execute(job, settings=settings, writer=writer, stop=stop)
    result = outcome.result
    print(
        f"  {result['succeeded']} days in {result['pages_written']} pages"
        f" ({result['records_ingested']} records, {result['duration_ms'] / 1000:.2f} s):"
        " page 1 said how many pages there are, the other pages came in parallel"
    )
    print(f"  keys {PAGED_SOURCE_ID}/{PAGED_REQUEST_ID}-{{index}}-{{page}}.json")
    expected = {"succeeded": PAGED_DAYS, "pages_written": PAGED_DAYS * PAGED_PAGES}
    return [
        f"paginated source: {name} is {result[name]}, expected {value}"
        for name, value in expected.items()
        if result[name] != value
    ]


def check_outcome(
    result: Mapping[str, Any],
    items: Mapping[int, ItemResult],
    hits: Mapping[str, int],
    *,
    interrupted: bool = False,
) -> list[str]:
    """Every way the demo's outcome differs from the expected one (empty = as expected)."""
    problems = ["interrupted"] if interrupted else []
    expected = {"requested": DAYS, "succeeded": DAYS - 1, "failed": 1, "not_attempted": 0}
    problems += [
        f"{name} is {result[name]}, expected {value}"
        for name, value in expected.items()
        if result[name] != value
    ]
    by_day = {str(item.params.get("date")): item for item in items.values()}
    problems += _not_found_problems(by_day.get(NOT_FOUND_DAY), hits.get(NOT_FOUND_DAY, 0))
    for day in FLAKY_DAYS:
        item = by_day.get(day)
        if item is None or item.status is not ItemStatus.WRITTEN or item.attempts < 2:
            problems.append(f"{day} should have been written after a retry: {_describe(item)}")
    return problems


def _not_found_problems(item: ItemResult | None, hits: int) -> list[str]:
    if item is None or item.status is not ItemStatus.FAILED:
        return [f"{NOT_FOUND_DAY} should have failed: {_describe(item)}"]
    problems = []
    if item.kind is None or item.kind.value != "http_status" or item.http_status != 404:
        problems.append(f"{NOT_FOUND_DAY} should fail with http_status 404: {_describe(item)}")
    if hits != 1:
        problems.append(f"a 404 is not retried, but {NOT_FOUND_DAY} was requested {hits} times")
    return problems


def _describe(item: ItemResult | None) -> str:
    if item is None:
        return "no result"
    return (
        f"{item.status.value}, kind {item.kind}, HTTP {item.http_status}, {item.attempts} attempts"
    )


async def _show(
    outcome: RunOutcome, items: Mapping[int, ItemResult], writer: ObjectWriter, client: Any
) -> None:
    result = outcome.result
    print()
    print_summary(result, title=f"demo: {DAYS} days of observations")
    if result["failed"] or result["not_attempted"]:
        print("did not succeed (one 404 day is expected):")
        print_failures(result)
    retried = [i for i in items.values() if i.status is ItemStatus.WRITTEN and i.attempts > 1]
    if retried:
        days = ", ".join(f"{i.params['date']} ({i.attempts} attempts)" for i in _sorted(retried))
        print(f"answered 503 + Retry-After, then written: {days}")
    written = [i for i in _sorted(items.values()) if i.status is ItemStatus.WRITTEN and i.key]
    if written and written[0].pack is not None:
        packs = sorted({i.key or "" for i in written})
        print(f"\n{len(written)} days packed into {len(packs)} object(s):")
        for key in packs:
            print(f"  {writer.describe(key)}")
        print(f"manifest: {outcome.manifest_uri}")
        await _print_pack(writer, client, written[0])
        return
    print("\na few of the keys written:")
    for item in written[:KEYS_SHOWN]:
        print(f"  {writer.describe(item.key or '')}")
    print(f"  ... {len(written) - KEYS_SHOWN} more\nmanifest: {outcome.manifest_uri}")
    if written and written[0].key:
        await _print_object(writer, client, written[0].key)


def _sorted(items: Any) -> list[ItemResult]:
    return sorted(items, key=lambda item: item.index)


async def _read(writer: ObjectWriter, client: Any, key: str) -> bytes:
    if client is None:
        return await asyncio.to_thread(Path(writer.describe(key)).read_bytes)
    response = await client.get_object(Bucket=BUCKET, Key=key)
    async with response["Body"] as body:
        data: bytes = await body.read()
    return data


async def _print_pack(writer: ObjectWriter, client: Any, item: ItemResult) -> None:
    """The pack's size and line count, and the first line, cut short."""
    assert item.key is not None and item.pack is not None
    stored = await _read(writer, client, item.key)
    lines = (gzip.decompress(stored) if item.pack.gzip else stored).splitlines()
    print(f"\n{writer.describe(item.key)} ({len(stored):,} bytes, {len(lines):,} lines) begins:")
    for line in lines[:2]:
        text = line.decode()
        print(f"  {text[:PACK_LINE_SHOWN]}{' ...' if len(text) > PACK_LINE_SHOWN else ''}")


async def _print_object(writer: ObjectWriter, client: Any, key: str) -> None:
    data = await _read(writer, client, key)
    lines = json.dumps(json.loads(data), indent=2).splitlines()
    print(f"\n{writer.describe(key)} ({len(data):,} bytes) begins:")
    for line in lines[:BODY_LINES_SHOWN]:
        print(f"  {line}")
    print("  ...")


def _how_to_look(args: argparse.Namespace, s3_endpoint: str | None, outcome: RunOutcome) -> None:
    print("\nhow to look at them:")
    if args.dest is not None and args.pack:
        manifest = shlex.quote(outcome.manifest_uri or "")
        print(f"  {PROG} show {manifest} --index 45 | head -3   # one day, read from the pack")
        return
    if args.dest is not None:
        folder = shlex.quote(str(args.dest.resolve()))
        print(f"  ls {folder}/{SOURCE_ID} | head")
        print(f"  python -m json.tool {folder}/{SOURCE_ID}/{REQUEST_ID}-0.json | head -20")
        manifest = shlex.quote(outcome.manifest_uri or "")
        print(f"  head -3 {manifest}   # the manifest: one line per item")
        return
    if args.serve:
        return  # _serve prints the commands while S3 is up
    print("  the embedded S3 lives only as long as this command; to keep the objects, run")
    print(f"    {PROG} demo --dest ./fanout-demo")
    print("  or keep the embedded S3 up and browse it with the AWS CLI:")
    print(f"    {PROG} demo --serve")


async def _serve(endpoint: str, stop: asyncio.Event) -> None:
    creds = f"AWS_ACCESS_KEY_ID={DEMO_CREDENTIAL} AWS_SECRET_ACCESS_KEY={DEMO_CREDENTIAL}"
    aws = f"{creds} aws --region {REGION} --endpoint-url {endpoint} s3"
    print(f"\nthe embedded S3 is serving at {endpoint} until Ctrl-C; in another terminal:")
    print(f"  {aws} ls s3://{BUCKET}/{SOURCE_ID}/")
    print(f"  {aws} cp s3://{BUCKET}/{SOURCE_ID}/{REQUEST_ID}-0.json -")
    await stop.wait()  # Ctrl-C


def _verdict(problems: list[str]) -> int:
    if not problems:
        print(
            "\nthe outcome is exactly the expected one: 89 days written, 3 after a 503,"
            f" and {NOT_FOUND_DAY} failed with http_status 404."
        )
        return 0
    print("\nthe outcome is NOT the expected one:")
    for problem in problems:
        print(f"  - {problem}")
    return 1


COMMAND = Command(
    name="demo",
    help="a 90-day backfill against an embedded sample API and embedded S3 (offline)",
    description=(
        "Start a sample API and an S3 server on 127.0.0.1, backfill 90 days into it with"
        " the real engine, show the summary and a few objects, and check the outcome:"
        " 89 days written (three after 503 + Retry-After) and one permanent 404."
    ),
    add_arguments=add_arguments,
    run=run,
)
