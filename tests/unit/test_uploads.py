"""The upload tracker against in-memory writers: cuts, late creates, failed and slow aborts."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from ingest_core.errors import S3WriteError
from ingest_core.uploads import ItemWrites, UploadTracker, watching
from ingest_core.writers import ObjectMeta

pytestmark = pytest.mark.timeout(30)


class Upload:
    def __init__(self, writer: Writer, key: str) -> None:
        self.writer, self.key, self.upload_id = writer, key, f"id-{key}"

    async def upload_part(self, data: bytes | memoryview) -> None:
        return None

    async def complete(self) -> None:
        await asyncio.sleep(self.writer.complete_s)
        self.writer.open.discard(self.key)

    async def abort(self) -> None:
        self.writer.aborts += 1
        await asyncio.sleep(self.writer.abort_s)
        if self.writer.abort_fails:
            raise S3WriteError("AbortMultipartUpload: AccessDenied")
        self.writer.open.discard(self.key)


class Writer:
    def __init__(
        self, *, create_s: float = 0, abort_s: float = 0, complete_s: float = 0, put_s: float = 0
    ) -> None:
        self.create_s, self.abort_s, self.complete_s, self.put_s = (
            create_s,
            abort_s,
            complete_s,
            put_s,
        )
        self.abort_fails = False
        self.aborts = 0
        self.open: set[str] = set()

    def describe(self, key: str) -> str:
        return key

    async def exists(self, key: str) -> bool:
        return False

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        await asyncio.sleep(self.put_s)

    async def start_multipart(self, key: str, meta: ObjectMeta) -> Upload:
        self.open.add(key)  # "S3" creates it at once; the answer comes create_s later
        await asyncio.sleep(self.create_s)
        return Upload(self, key)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        return None


async def test_a_put_cut_in_a_child_task_marks_the_item_as_cut_while_committing() -> None:
    # GIVEN an item whose PUT runs in a task of its own (a page fetched in parallel)
    tracker, writes = UploadTracker(), ItemWrites()
    writer = tracker.wrap(Writer(put_s=10))
    with watching(writes):
        task = asyncio.create_task(writer.put("k", b"x", ObjectMeta()))
    await asyncio.sleep(0.05)
    # WHEN it is cancelled in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # THEN the item knows S3 may have stored it
    assert writes.cut_committing


async def test_a_put_that_finished_leaves_the_item_clean() -> None:
    tracker, writes = UploadTracker(), ItemWrites()
    with watching(writes):
        await tracker.wrap(Writer()).put("k", b"x", ObjectMeta())
    assert not writes.cut_committing


async def test_an_upload_created_after_its_caller_was_cancelled_is_aborted() -> None:
    # GIVEN a CreateMultipartUpload whose answer comes 0.2 s after its caller is cancelled
    inner = Writer(create_s=0.3)
    tracker = UploadTracker()
    task = asyncio.create_task(tracker.wrap(inner).start_multipart("k", ObjectMeta()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # WHEN the run settles
    left = await tracker.settle(until=None)
    # THEN the upload was aborted once its id arrived, and nothing is left open
    assert left == [] and inner.open == set() and inner.aborts == 1


async def test_an_abort_that_fails_is_named_and_logged_with_key_and_upload_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN an open upload whose abort S3 refuses
    inner = Writer()
    inner.abort_fails = True
    tracker = UploadTracker()
    await tracker.wrap(inner).start_multipart("k", ObjectMeta())
    # WHEN the run settles
    with caplog.at_level(logging.ERROR, logger="ingest_core.uploads"):
        [left] = await tracker.settle(until=None)
    # THEN it is reported as possibly open, with what identifies it
    assert (left.key, left.upload_id) == ("k", "id-k")
    assert left.reason.startswith("abort failed: AbortMultipartUpload: AccessDenied")
    [record] = [r for r in caplog.records if "possibly left open" in r.getMessage()]
    assert (record.key, record.upload_id) == ("k", "id-k")  # type: ignore[attr-defined]


async def test_settle_gives_up_on_a_slow_abort_at_its_time_limit() -> None:
    # GIVEN an open upload whose abort takes 2 s
    inner = Writer(abort_s=2)
    tracker = UploadTracker()
    await tracker.wrap(inner).start_multipart("k", ObjectMeta())
    # WHEN the run settles with 0.2 s left
    started = time.monotonic()
    [left] = await tracker.settle(until=started + 0.2)
    # THEN it returned at the limit, naming the upload
    assert time.monotonic() - started < 1.0
    assert left.reason == "abort unanswered at the deadline"
    await tracker.settle(until=None)  # let the abort finish before the loop closes


async def test_a_completed_upload_is_not_aborted() -> None:
    inner = Writer()
    tracker = UploadTracker()
    upload = await tracker.wrap(inner).start_multipart("k", ObjectMeta())
    await upload.complete()
    assert await tracker.settle(until=None) == [] and inner.aborts == 0
