"""The body pipeline against an in-memory writer: parts, budget, validation, aborts."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest_core.config import MIB, Options
from ingest_core.errors import BodyTooLarge, InvalidBody, S3WriteError, TruncatedBody
from ingest_core.limits import ByteBudget
from ingest_core.transfer import BodyInfo, transfer
from ingest_core.writers import ObjectMeta

pytestmark = pytest.mark.timeout(30)


class MemoryUpload:
    def __init__(self, store: MemoryWriter, key: str) -> None:
        self.store, self.key = store, key
        self.parts: list[bytes] = []

    async def upload_part(self, data: bytes | memoryview) -> None:
        if self.store.fail_part is not None and len(self.parts) + 1 == self.store.fail_part:
            raise S3WriteError("injected part failure")
        self.parts.append(bytes(data))  # the caller reuses its buffer after the call

    async def complete(self) -> None:
        self.store.objects[self.key] = b"".join(self.parts)
        self.store.open_uploads.discard(self)

    async def abort(self) -> None:
        self.store.aborted.append(self.key)
        self.store.open_uploads.discard(self)


class MemoryWriter:
    def __init__(self, fail_part: int | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.open_uploads: set[MemoryUpload] = set()
        self.aborted: list[str] = []
        self.fail_part = fail_part
        self.part_sizes: list[int] = []

    def describe(self, key: str) -> str:
        return key

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        self.objects[key] = bytes(data)  # a view of the caller's buffer

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MemoryUpload:
        upload = MemoryUpload(self, key)
        self.open_uploads.add(upload)
        return upload

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        self.objects[key] = await asyncio.to_thread(path.read_bytes)


async def chunks_of(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(0)


def run(body: bytes, writer: MemoryWriter, *, length: int | None = -1, **options: object):  # type: ignore[no-untyped-def]
    opts = Options(**{"part_size_mb": 5, "memory_budget_mb": 16, **options})  # type: ignore[arg-type]
    info = BodyInfo(len(body) if length == -1 else length, "application/json", encoded=False)
    return transfer(
        chunks_of(body),
        info,
        writer=writer,
        key="k",
        meta=ObjectMeta(),
        options=opts,
        budget=ByteBudget(opts.memory_budget),
    )


def big_json(size: int) -> bytes:
    body = b"[" + b"0," * (size // 2)
    return body[: size - 2] + b"0]"


async def test_small_body_is_one_put_with_records() -> None:
    writer = MemoryWriter()
    stored = await run(b"[1,2,3]", writer)
    assert writer.objects == {"k": b"[1,2,3]"} and stored.records == 3 and not stored.multipart


async def test_large_body_goes_in_exact_parts() -> None:
    writer = MemoryWriter()
    body = big_json(12 * MIB + 123)
    stored = await run(body, writer, length=None)
    assert writer.objects["k"] == body and stored.multipart and stored.records is None
    assert not writer.open_uploads


async def test_short_body_against_content_length_is_truncated_and_aborted() -> None:
    writer = MemoryWriter()
    body = big_json(6 * MIB)
    with pytest.raises(TruncatedBody):
        await run(body, writer, length=len(body) + 10)
    assert writer.objects == {} and writer.aborted == ["k"]


async def test_failed_part_aborts_the_upload() -> None:
    writer = MemoryWriter(fail_part=2)
    with pytest.raises(S3WriteError):
        await run(big_json(12 * MIB), writer)
    assert writer.objects == {} and writer.aborted == ["k"]


async def test_too_large_body_is_refused() -> None:
    writer = MemoryWriter()
    with pytest.raises(BodyTooLarge):
        await run(big_json(1000), writer, max_body_bytes=500)
    assert writer.objects == {}


@pytest.mark.parametrize("body", [b"<html>down for maintenance</html>", b""])
async def test_non_json_body_is_invalid_unless_allowed(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        await run(body, MemoryWriter())
    writer = MemoryWriter()
    await run(body, writer, expect_json=False)
    assert writer.objects == {"k": body}


async def test_large_html_body_is_judged_by_its_first_bytes() -> None:
    writer = MemoryWriter()
    with pytest.raises(InvalidBody):
        await run(b"<!doctype html>" + b" " * (6 * MIB), writer)
    assert writer.objects == {} and not writer.open_uploads


async def test_compressed_body_round_trips() -> None:
    writer = MemoryWriter()
    body = big_json(7 * MIB)
    stored = await run(body, writer, compress=True)
    assert gzip.decompress(writer.objects["k"]) == body
    assert stored.stored < stored.received


async def test_cancellation_mid_upload_aborts() -> None:
    writer = MemoryWriter()

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield b"[" + b"0," * (3 * MIB)
        yield b"0," * (3 * MIB)
        await asyncio.sleep(30)
        yield b"0]"

    opts = Options(part_size_mb=5, memory_budget_mb=16)
    task = asyncio.create_task(
        transfer(
            slow_chunks(),
            BodyInfo(None, None, False),
            writer=writer,
            key="k",
            meta=ObjectMeta(),
            options=opts,
            budget=ByteBudget(opts.memory_budget),
        )
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert writer.aborted == ["k"] and writer.objects == {}


async def test_budget_bounds_concurrent_buffers() -> None:
    # GIVEN 8 concurrent 12 MiB bodies, 5 MiB parts, a 16 MiB budget shared by all
    writer = MemoryWriter()
    opts = Options(part_size_mb=5, memory_budget_mb=16)
    budget = ByteBudget(opts.memory_budget)
    body = big_json(12 * MIB)
    # WHEN they run at once
    await asyncio.gather(
        *(
            transfer(
                chunks_of(body),
                BodyInfo(None, None, False),
                writer=writer,
                key=f"k{i}",
                meta=ObjectMeta(),
                options=opts,
                budget=budget,
            )
            for i in range(8)
        )
    )
    # THEN no more than the budget was ever reserved, and all landed
    assert budget.peak_reserved <= 16 * MIB
    assert all(writer.objects[f"k{i}"] == body for i in range(8))
