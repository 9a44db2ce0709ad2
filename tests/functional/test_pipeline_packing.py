"""Packing where it meets pagination, the budget, the deadline and the writer (CONTRACT §16).

Each test is one row of issue 17's table, against a real paged API on loopback and a
real local folder whose writes are made to fail, hang or throttle the way S3 and
disks do. Every run must return, with the counts adding up.
"""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from ingest_core import LocalDirWriter, parse_event, run_job
from ingest_core.engine import RunOutcome
from ingest_core.errors import S3WriteError
from ingest_core.netguard import NetPolicy
from ingest_core.s3retry import current as s3_retry
from ingest_core.settings import Settings
from ingest_core.writers import LocalUpload, MultipartUpload, ObjectMeta
from tests.conftest import StartServer
from tests.support.reliability import assert_counts, event_for

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

PERMISSIVE = NetPolicy(allow_private_networks=True)
KiB, MiB = 1 << 10, 1 << 20
RUN_LIMIT_S = 45  # a hang fails the test here instead of at the test timeout
CURSOR = {"type": "cursor", "cursor_path": "next", "cursor_param": "page"}


def paged_app(pages: int, page_bytes: int) -> web.Application:
    """Every item (``date``) has ``pages`` pages of about ``page_bytes`` of JSON each."""

    async def handle(request: web.Request) -> web.Response:
        page = int(request.query.get("page", "0"))
        pad = "x" * max(0, page_bytes - 64)
        more = page + 1 < pages
        body = {"date": request.query.get("date"), "page": page, "pad": pad}
        body["next"] = str(page + 1) if more else None
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/big", handle)
    return app


async def ingest(
    url: str,
    writer: LocalDirWriter,
    *,
    items: int,
    options: dict[str, Any],
    pagination: dict[str, Any] | None = CURSOR,
    deadline: float | None = None,
) -> RunOutcome:
    event = event_for(
        url,
        batch=[{"date": f"d{i}"} for i in range(items)],
        request_id="r",
        options={"pack": {"unit": "response", "compression": "none"}, **options},
        pagination=pagination,
    )
    job = parse_event(event, policy=PERMISSIVE)
    run = run_job(job, writer=writer, settings=Settings(policy=PERMISSIVE), deadline=deadline)
    outcome = await asyncio.wait_for(run, RUN_LIMIT_S)
    assert_counts(outcome.result)
    return outcome


@pytest.mark.parametrize(
    ("items", "pages", "page_bytes", "options"),
    [
        # the 64 x 3 x 2 MiB with default options, scaled to the test machine:
        # each item's first page holds 4 MiB of reservation, 16 of them fill 64 MiB
        (16, 3, 2 * MiB, {"concurrency": 16, "memory_budget_mb": 64, "part_size_mb": 8}),
        # one item of 20 x 300 KB pages with a 10 MB budget
        (1, 20, 300 * KiB, {"concurrency": 4, "memory_budget_mb": 10, "part_size_mb": 5}),
    ],
    ids=["many-chains", "one-long-chain"],
)
async def test_packed_chains_needing_more_than_the_budget_all_land(
    tmp_path: Path,
    api_server: StartServer,
    items: int,
    pages: int,
    page_bytes: int,
    options: dict[str, Any],
) -> None:
    # GIVEN packed chains whose pages together need more than the memory budget
    url = api_server(paged_app(pages, page_bytes)).url
    # WHEN they are ingested
    outcome = await ingest(f"{url}/big", LocalDirWriter(tmp_path), items=items, options=options)
    # THEN the run returns (no chain waits on itself) and every item landed, whole
    result = outcome.result
    assert result["status"] == "SUCCESS", result["failures"]
    assert result["pages_written"] == items * pages


class _HeldPack(LocalDirWriter):
    """The pack object's write never gets an answer; the manifest lands."""

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        if "_manifests" not in key:
            await asyncio.Event().wait()
        await super().put(key, data, meta)


async def test_a_held_pack_write_does_not_overrun_the_deadline_and_the_manifest_lands(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN packed items whose object's PUT never answers, a 3 s deadline (margin 1 s)
    url = api_server(paged_app(1, 1 * KiB)).url
    started = time.monotonic()
    deadline = started + 3.0
    # WHEN they are ingested
    outcome = await ingest(
        f"{url}/big",
        _HeldPack(tmp_path),
        items=6,
        options={
            "concurrency": 2,
            "memory_budget_mb": 10,
            "part_size_mb": 5,
            "deadline_margin_s": 1,
        },
        pagination=None,
        deadline=deadline,
    )
    # THEN the run returned before deadline - margin/8, with the manifest written
    assert time.monotonic() < deadline - 1 / 8, time.monotonic() - deadline
    result = outcome.result
    assert result["manifest_key"] is not None, result["manifest_error"]
    assert result["write_unknown"] == 6  # the PUT was in flight: the object may exist


class _FailingParts(LocalDirWriter):
    """Sending a part fails (S3 refuses it); aborting the upload never ends."""

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        upload = _StuckAbort(self._path(key))
        await upload.open()
        return upload


class _StuckAbort(LocalUpload):
    async def upload_part(self, data: bytes | memoryview) -> None:
        raise S3WriteError("UploadPart: AccessDenied", code="AccessDenied")

    async def abort(self) -> None:
        self._discard()  # the file is gone; the answer to the abort never comes
        await asyncio.Event().wait()


async def test_a_stop_while_a_failed_object_aborts_still_reports_every_item(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN 40 packed items of 200 KB: the first part (5 MiB) fails, its abort hangs
    url = api_server(paged_app(1, 200 * KiB)).url
    deadline = time.monotonic() + 4.0
    # WHEN the deadline stops the packer inside that abort
    outcome = await ingest(
        f"{url}/big",
        _FailingParts(tmp_path),
        items=40,
        options={
            "concurrency": 4,
            "memory_budget_mb": 16,
            "part_size_mb": 5,
            "deadline_margin_s": 1,
        },
        pagination=None,
        deadline=deadline,
    )
    # THEN every item is reported once (no AssertionError), none as written
    result = outcome.result
    assert result["succeeded"] == 0
    assert result["failed"] + result["not_attempted"] == 40


class _FullDisk(LocalDirWriter):
    """Every pack write fails as a full disk does (ENOSPC), as a real LocalUpload reports it."""

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        if "_manifests" in key:
            await super().put(key, data, meta)
            return
        upload = _NoSpace(self._path(key))
        try:
            await upload.write_whole(data)
        except BaseException:
            await upload.abort()
            raise

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        upload = _NoSpace(self._path(key))
        await upload.open()
        return upload


class _NoSpace(LocalUpload):
    def _write(self, data: bytes | memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_disk_fails_the_packed_items_and_the_run_returns(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN a folder whose disk is full, and more 1 MB items than the budget holds at once
    url = api_server(paged_app(1, 1 * MiB)).url
    # WHEN they are packed into it
    outcome = await ingest(
        f"{url}/big",
        _FullDisk(tmp_path),
        items=24,
        options={"concurrency": 4, "memory_budget_mb": 12, "part_size_mb": 5, "pack": {
            "unit": "response", "compression": "none", "target_mb": 1}},
        pagination=None,
    )  # fmt: skip
    # THEN the run returns with every item failed as a write error naming the disk's reason
    result = outcome.result
    assert result["failed"] == 24, result
    assert {f["kind"] for f in result["failures"]} == {"s3_error"}
    assert all("No space left on device" in f["error"] for f in result["failures"])


class _SlowDownOnce(LocalDirWriter):
    """S3 answers the first write of each pack object with SlowDown (through the retries)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.refused: set[str] = set()

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        async def once() -> None:
            if key not in self.refused and "_manifests" not in key:
                self.refused.add(key)
                raise S3WriteError("SlowDown", code="SlowDown", retryable=True, throttled=True)
            await LocalDirWriter.put(self, key, data, meta)

        await s3_retry().call(once)


async def test_a_pack_object_s_s3_retries_and_slowdowns_are_counted(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN a pack object whose PUT is answered SlowDown once
    url = api_server(paged_app(1, 1 * KiB)).url
    writer = _SlowDownOnce(tmp_path)
    # WHEN 5 items are packed into it
    outcome = await ingest(
        f"{url}/big",
        writer,
        items=5,
        options={"concurrency": 2, "memory_budget_mb": 10, "part_size_mb": 5},
        pagination=None,
    )
    # THEN the run counts that retry and that throttle once, on the object's first item
    result = outcome.result
    assert result["status"] == "SUCCESS", result["failures"]
    assert len(writer.refused) == 1
    assert result["throttled"] == 1
    assert result["retries"] == 1


async def test_a_packed_chain_whose_lines_exceed_max_body_bytes_fails_alone(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN items of 5 pages of 300 KB, each page within max_body_bytes (1 MB), the
    # chain's lines together beyond it
    url = api_server(paged_app(5, 300 * KiB)).url
    options = {"concurrency": 2, "memory_budget_mb": 16, "part_size_mb": 5}
    # WHEN they are packed
    outcome = await ingest(
        f"{url}/big", LocalDirWriter(tmp_path), items=2, options={**options, "max_body_bytes": MiB}
    )
    # THEN each fails body_too_large, naming the bound, and nothing of them is packed
    result = outcome.result
    assert result["failed"] == 2
    assert {f["kind"] for f in result["failures"]} == {"body_too_large"}
    assert all("max_body_bytes" in f["error"] for f in result["failures"])
    assert result["bytes_written"] == 0
