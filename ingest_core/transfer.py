"""One body, streamed from the API into a writer, within the memory budget.

A body that ends below the part size goes as one PUT, fully parsed first (for
``expect_json`` and the record count); a larger one goes as a multipart upload in
parts of exactly ``part_size`` bytes, completed only when every byte arrived (and
matches ``Content-Length`` when the server sent one), aborted on any error or
cancellation.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ingest_core.config import Options
from ingest_core.errors import BodyTooLarge, InvalidBody, TruncatedBody
from ingest_core.limits import ByteBudget
from ingest_core.records import NOT_ONE_VALUE, looks_like_json, read_records
from ingest_core.writers import MultipartUpload, ObjectMeta, ObjectWriter, abort_upload

# What a body of unknown length may buffer before it must reserve a whole part.
SMALL_RESERVATION = 256 * 1024
SNIFF_BYTES = 64
# zlib's deflate state at the default level: (1 << (wbits + 2)) + (1 << (memLevel + 9))
# bytes plus a few KiB of bookkeeping. Counted in the budget with each compressed body.
GZIP_STATE_BYTES = 260 * 1024
# What aiohttp may hold of a response before it pauses reading the socket (twice its
# 64 KiB stream limit). Counted with every body so that the memory held per request
# in flight stays inside the budget, however high the concurrency.
STREAM_BUFFER_BYTES = 128 * 1024


@dataclass(frozen=True, slots=True)
class BodyInfo:
    """What the response headers said about the body."""

    content_length: int | None
    content_type: str | None
    encoded: bool  # a Content-Encoding was decoded, so Content-Length is not the body's


@dataclass(frozen=True, slots=True)
class Stored:
    """What a successful transfer wrote."""

    received: int
    stored: int
    records: int | None
    multipart: bool
    # What ``keep`` took from the body parsed as one JSON value, when it went as
    # one PUT (pagination reads its cursor there); NOT_ONE_VALUE otherwise.
    value: Any = NOT_ONE_VALUE


class _PartBuffer:
    """A fixed-size buffer filled in place and reused for every part.

    Parts are sent straight from it (the writer reads a memoryview during the
    call), so a part exists once in memory: no growing ``bytearray`` reallocated
    along the way and no ``bytes`` copy per part, which fragmented the heap and
    held RSS far above the budget.
    """

    def __init__(self, capacity: int) -> None:
        self.data = bytearray(capacity)
        self.fill = 0

    @property
    def room(self) -> int:
        return len(self.data) - self.fill

    def write(self, chunk: memoryview) -> int:
        """Copy as much of ``chunk`` as fits; return how much that was."""
        n = min(len(chunk), self.room)
        self.data[self.fill : self.fill + n] = chunk[:n]
        self.fill += n
        return n

    def view(self) -> memoryview:
        return memoryview(self.data)[: self.fill]

    def grow(self, capacity: int) -> None:
        bigger = bytearray(capacity)
        bigger[: self.fill] = self.data[: self.fill]
        self.data = bigger


class _Transfer:
    """State of one transfer; ``run`` is the whole life cycle."""

    def __init__(
        self,
        writer: ObjectWriter,
        key: str,
        meta: ObjectMeta,
        options: Options,
        budget: ByteBudget,
        records_path: str | None,
        keep: Callable[[Any], Any] | None = None,
    ) -> None:
        self.writer, self.key, self.meta, self.options = writer, key, meta, options
        self.budget, self.records_path, self.keep = budget, records_path, keep
        self.part_size = options.part_size
        self.buf = _PartBuffer(0)
        self.received = 0
        self.stored = 0
        self.held = 0
        self.sniff = b""
        self.upload: MultipartUpload | None = None
        # Reserved beside the buffer: the response's stream buffer and the compressor's
        # state. Only compressed bytes are ever buffered (the uncompressed body is not
        # kept, see _records).
        self.overhead = STREAM_BUFFER_BYTES + (GZIP_STATE_BYTES if options.compress else 0)
        self.gzip = zlib.compressobj(wbits=31) if options.compress else None

    async def run(self, chunks: AsyncIterator[bytes], info: BodyInfo) -> Stored:
        first = (
            info.content_length if info.content_length is not None and not info.encoded else None
        )
        self.held = await self._reserve(min(self.part_size, first or SMALL_RESERVATION))
        self.buf = _PartBuffer(max(0, self.held - self.overhead))
        try:
            async for chunk in chunks:
                await self._take(chunk)
            self._check_length(info)
            return await self._finish()
        except BaseException:
            await self._abort()
            raise
        finally:
            self.budget.release(self.held)
            self.held = 0

    async def _take(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.options.max_body_bytes:
            raise BodyTooLarge(f"body exceeds max_body_bytes ({self.options.max_body_bytes})")
        if len(self.sniff) < SNIFF_BYTES:
            self.sniff += chunk[: SNIFF_BYTES - len(self.sniff)]
        await self._append(self.gzip.compress(chunk) if self.gzip is not None else chunk)

    async def _reserve(self, nbytes: int) -> int:
        """Reserve room for ``nbytes`` of buffer plus the compressor, clamped to the budget."""
        return await self.budget.reserve(nbytes + self.overhead)

    async def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not self.buf.room:
                await self._make_room()
            view = view[self.buf.write(view) :]

    async def _make_room(self) -> None:
        """The buffer is full: grow it to a whole part, or send it as the next part."""
        if len(self.buf.data) < self.part_size:
            # Give back before asking for more, so no request waits while holding.
            self.budget.release(self.held)
            self.held = 0
            self.held = await self._reserve(self.part_size)
            self.buf.grow(self.part_size)  # the budget is never below a part (Options)
            return
        await self._flush_part()

    async def _flush_part(self) -> None:
        if self.upload is None:
            self._judge_large_body()
            self.upload = await self.writer.start_multipart(self.key, self.meta)
        await self._send_part()

    async def _send_part(self) -> None:
        assert self.upload is not None
        with self.buf.view() as part:
            await self.upload.upload_part(part)
            self.stored += len(part)
        self.buf.fill = 0

    def _judge_large_body(self) -> None:
        if self.options.expect_json and not looks_like_json(self.sniff, self.meta.content_type):
            raise InvalidBody("body is not JSON or NDJSON (judged by content type and first bytes)")

    def _check_length(self, info: BodyInfo) -> None:
        if info.content_length is not None and not info.encoded:
            if self.received != info.content_length:
                raise TruncatedBody(
                    f"received {self.received} of {info.content_length} bytes (Content-Length)"
                )

    async def _finish(self) -> Stored:
        if self.gzip is not None:
            await self._append(self.gzip.flush())
        if self.upload is None:
            return await self._put_whole()
        if self.buf.fill:
            await self._send_part()
        await self.upload.complete()
        return Stored(self.received, self.stored, None, multipart=True)

    async def _put_whole(self) -> Stored:
        records, value = None, NOT_ONE_VALUE
        if self.received > self.part_size:  # compressed into one part, too big to parse
            self._judge_large_body()
        else:
            records, value = self._records()
            if self.options.expect_json and records is None:
                why = "body is not JSON or NDJSON" if self.received else "body is empty"
                raise InvalidBody(why)
        # Sent straight from the reserved buffer: a copy here was memory the budget
        # never saw (one body per PUT in flight).
        with self.buf.view() as body:
            await self.writer.put(self.key, body, self.meta)
            return Stored(self.received, len(body), records, multipart=False, value=value)

    def _records(self) -> tuple[int | None, Any]:
        """Count the records of a body held whole in the buffer, and its parsed value.

        A compressed body is inflated here, synchronously: no other item can run
        meanwhile, so at most one uncompressed part exists outside the budget at
        any moment, instead of one per item in flight. The parsed value (for a
        paginator to read its cursor) is reduced to what ``keep`` takes.
        """
        if not self.received:
            return None, NOT_ONE_VALUE
        with self.buf.view() as held:
            if self.gzip is None:
                records, value = read_records(held, self.records_path)
            else:
                records, value = read_records(zlib.decompress(held, wbits=31), self.records_path)
        # The whole parsed body may be many times its size: only what ``keep``
        # takes from it outlives this call (and nothing without ``keep``).
        if self.keep is None or value is NOT_ONE_VALUE:
            return records, NOT_ONE_VALUE
        return records, self.keep(value)

    async def _abort(self) -> None:
        if self.upload is not None:
            await abort_upload(self.upload, self.key)


async def transfer(
    chunks: AsyncIterator[bytes],
    info: BodyInfo,
    *,
    writer: ObjectWriter,
    key: str,
    meta: ObjectMeta,
    options: Options,
    budget: ByteBudget,
    records_path: str | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> Stored:
    """Stream ``chunks`` into ``writer`` under ``key``.

    Raises:
        FetchError: the body failed (truncated, too large, invalid); nothing kept.
        WriteError: storing failed; nothing kept.

    ``keep``: called with the body's parsed JSON value (when it went as one PUT);
    what it returns is ``Stored.value``.
    """
    job = _Transfer(writer, key, meta, options, budget, records_path, keep)
    return await job.run(chunks, info)
