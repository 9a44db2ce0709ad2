"""Packing (CONTRACT §13): many pages become NDJSON lines in a few large objects.

The engine hands each fetched page to ``Packer.stage`` (which reads the body
within the memory budget and turns it into lines with the run's ``PackUnit``)
and each finished item to ``Packer.submit``. One packer task appends items, in
the order they finish, to the open object: an item's lines are contiguous and
never span two objects. The object streams to the writer as a multipart upload
while it fills (parts of ``part_size``; an object that ends smaller than a part
goes as one PUT) and rotates when ``target_mb`` of stored bytes is reached.

Accounting: an item is reported only when the object holding its lines is
complete: written (with its key, first line, line count and where its bytes
are) or, when the object could not be completed, failed with kind ``s3_error``
after the upload was aborted, so nothing is left under that key.

Gzip objects are one gzip member with a full flush (Z_FULL_FLUSH) before an item
whenever ``FLUSH_EVERY`` uncompressed bytes were written since the last one.
Decompression can restart at a flush point, so the manifest gives per item the
compressed offset of its block and how many uncompressed bytes to skip there:
``show`` reads one item with a ranged GET of about one block, not the object.

::

    engine worker ──stage(page)──▶ Staged ──submit(item)──▶ queue ──▶ packer task
                                                                   │ lines → gzip → part buffer
                                                                   ▼
                                                  writer.start_multipart / upload_part / complete
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest_core.clock import RunClock
from ingest_core.config import Options, PackOptions
from ingest_core.errors import BodyTooLarge, FailureKind, S3WriteError, TruncatedBody
from ingest_core.keys import PackKeys
from ingest_core.limits import ByteBudget
from ingest_core.packing.units import Lines, PackUnit, Page
from ingest_core.results import ItemResult, ItemStatus, PackSpan
from ingest_core.writers import MultipartUpload, ObjectMeta, ObjectWriter

log = logging.getLogger(__name__)

FLUSH_EVERY = 1024 * 1024  # uncompressed bytes between restart points in a gzip object
SMALL_RESERVATION = 256 * 1024
COMPLETE_GRACE_S = 1.0  # how long a stop waits for a Complete already in flight
PACK_CONTENT_TYPE = "application/x-ndjson"
GZIP_PACK_CONTENT_TYPE = "application/gzip"
ResultSink = Callable[[ItemResult], None]

# ----------------------------------------------------------------------------- staging


@dataclass(slots=True)
class Staged:
    """An item's lines, ready to pack, holding their memory budget reservation."""

    budget: ByteBudget
    reserved: int
    data: bytearray = field(default_factory=bytearray)
    lines: int = 0
    records: int | None = 0
    received: int = 0
    pages: int = 0

    def add(self, lines: Lines, received: int) -> None:
        self.data += lines.data
        self.lines += lines.count
        self.received += received
        self.pages += 1
        if self.records is not None:
            self.records = None if lines.records is None else self.records + lines.records

    def merge(self, other: Staged) -> None:
        """Append ``other``'s lines (the next page) and take over its reservation."""
        self.data += other.data
        self.lines += other.lines
        self.received += other.received
        self.pages += other.pages
        if self.records is not None:
            self.records = None if other.records is None else self.records + other.records
        self.reserved += other.reserved
        other.reserved, other.data = 0, bytearray()

    def release(self) -> None:
        """Give the reservation back; safe to call more than once."""
        self.budget.release(self.reserved)
        self.reserved = 0


async def _read_body(
    chunks: AsyncIterator[bytes],
    staged: Staged,
    *,
    limit: int,
    hint: int | None,
) -> bytes:
    """Read a whole body; ``staged`` holds twice its size (body and lines) beside its lines."""
    base = len(staged.data)
    body = bytearray()
    await _grow(staged, base + 2 * min(limit, hint or SMALL_RESERVATION))
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge(f"a packed body must fit in memory: at most {limit} bytes")
        body += chunk
        if base + 2 * len(body) > staged.reserved:
            await _grow(staged, base + min(2 * limit, 4 * len(body)))
    return bytes(body)


async def _grow(staged: Staged, total: int) -> None:
    """Hold ``total`` bytes; give back first, so no one waits while holding (ByteBudget)."""
    if total <= staged.reserved:
        return
    staged.release()
    staged.reserved = await staged.budget.reserve(total)


# ----------------------------------------------------------------------------- objects


@dataclass(slots=True)
class _Held:
    result: ItemResult
    span: PackSpan


class _Object:
    """One pack object being filled: its compressor, part buffer and items."""

    def __init__(self, key: str, pack: PackOptions) -> None:
        self.key = key
        self.gzip = (
            zlib.compressobj(pack.gzip_level, zlib.DEFLATED, 31)
            if pack.compression == "gzip"
            else None
        )
        self.buf = bytearray()
        self.upload: MultipartUpload | None = None
        self.stored = 0  # bytes sent as parts
        self.lines = 0
        self.raw = 0  # uncompressed bytes
        self.since_flush = 0
        self.block_start = 0  # compressed offset of the current restart point
        self.items: list[_Held] = []

    @property
    def size(self) -> int:
        """Stored bytes so far (compressed, when compressing)."""
        return self.stored + len(self.buf)

    def append(self, staged: Staged, result: ItemResult) -> None:
        """Add one item's lines; no await, so an item is never half in an object."""
        if self.gzip is not None and self.since_flush >= FLUSH_EVERY:
            # A restart point: decompression can begin here (raw deflate, no history).
            self.buf += self.gzip.flush(zlib.Z_FULL_FLUSH)
            self.since_flush = 0
            self.block_start = self.size
        if self.gzip is None:
            offset, skip = self.size, 0
        else:
            offset, skip = self.block_start, self.since_flush
        span = PackSpan(
            first_line=self.lines,
            line_count=staged.lines,
            offset=offset,
            skip=skip,
            length=len(staged.data),
            gzip=self.gzip is not None,
        )
        self.buf += self.gzip.compress(staged.data) if self.gzip is not None else staged.data
        self.lines += staged.lines
        self.raw += len(staged.data)
        self.since_flush += len(staged.data)
        self.items.append(_Held(result, span))

    def finish(self) -> None:
        if self.gzip is not None:
            self.buf += self.gzip.flush()


# ----------------------------------------------------------------------------- packer


class Packer:
    """Packs a run's items into objects; see the module docstring.

    Args:
        writer: where objects go (S3 or a local folder).
        options: the run's options (``options.pack`` must be set).
        keys: renders object keys.
        unit: turns pages into lines.
        budget: the run's memory budget, shared with the fetches.
        on_result: called once per submitted item when its object completes or fails.
    """

    def __init__(
        self,
        *,
        writer: ObjectWriter,
        options: Options,
        keys: PackKeys,
        unit: PackUnit,
        budget: ByteBudget,
        on_result: ResultSink,
    ) -> None:
        assert options.pack is not None
        self.writer, self.keys, self.unit, self.budget = writer, keys, unit, budget
        self.pack: PackOptions = options.pack
        self.part_size = options.part_size
        self.on_result = on_result
        # The packer's own buffer takes a part; a staged body and its lines the rest.
        self.max_body = min(options.max_body_bytes, (options.memory_budget - self.part_size) // 2)
        self._queue: asyncio.Queue[tuple[Staged, ItemResult] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._held = 0
        self._part = 0
        self._open: _Object | None = None
        self._completing: asyncio.Future[None] | None = None
        self.objects_written = 0
        self.objects_failed = 0

    async def start(self) -> None:
        """Reserve the part buffer and start the packer task."""
        self._held = await self.budget.reserve(self.part_size)
        self._task = asyncio.create_task(self._run(), name="packer")

    def new_item(self) -> Staged:
        """An empty staging area for one item's pages."""
        return Staged(self.budget, 0)

    async def stage(
        self,
        staged: Staged,
        chunks: AsyncIterator[bytes],
        *,
        index: int,
        page: int,
        params: Mapping[str, Any],
        status: int,
        content_type: str | None,
        content_length: int | None,
    ) -> Lines:
        """Read one page whole and add its lines to ``staged``; return them (and the value).

        Raises:
            FetchError: the body is too large for memory, truncated or invalid.
        """
        fetched_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = await _read_body(chunks, staged, limit=self.max_body, hint=content_length)
        if content_length is not None and len(body) != content_length:
            raise TruncatedBody(f"received {len(body)} of {content_length} bytes (Content-Length)")
        lines = self.unit.lines(Page(index, page, params, body, status, content_type, fetched_at))
        staged.add(lines, received=len(body))
        return lines

    def submit(self, staged: Staged, result: ItemResult) -> None:
        """Hand a fetched item to the packer; its result is reported when its object ends."""
        self._queue.put_nowait((staged, result))

    async def close(self, clock: RunClock | None = None) -> None:
        """Complete the open object and report every item; give up at ``clock.complete_by``.

        Items in an object that could not be completed in time fail (``s3_error``,
        upload aborted); items not yet packed are reported as not attempted.
        """
        if self._task is None:
            return
        self._queue.put_nowait(None)
        try:
            within = None if clock is None else clock.until(clock.complete_by)
            await asyncio.wait_for(asyncio.shield(self._task), within)
        except TimeoutError:
            await self.abort("the pack could not be completed before the deadline")
        except Exception as exc:  # a bug in the packer must not lose items: report them
            log.exception("packer failed")
            await self.abort(f"packer failed: {type(exc).__name__}")
        finally:
            self.budget.release(self._held)
            self._held = 0

    async def abort(self, why: str) -> None:
        """Stop now: abort the open object, fail its items, report queued ones."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        completing = self._completing
        if completing is not None and not completing.done():
            try:  # it reports its items itself, written or failed, once S3 answers
                await asyncio.wait_for(asyncio.shield(completing), COMPLETE_GRACE_S)
            except TimeoutError:
                self._unknown(why)
        if self._open is not None:
            await self._fail(self._open, why)
        self._drain(why)

    def _unknown(self, why: str) -> None:
        """The open object's Complete (or PUT) is still in flight: it may or may not land."""
        obj, self._open = self._open, None
        if obj is None:
            return
        text = f"{why} while S3 was completing pack object {obj.key}: it may exist"
        self._report(obj, ItemStatus.WRITE_UNKNOWN, FailureKind.DEADLINE, text)

    async def _run(self) -> None:
        while (entry := await self._queue.get()) is not None:
            staged, result = entry
            try:
                await self._append(staged, result)
            finally:
                staged.release()
        if self._open is not None:
            await self._complete(self._open)

    async def _append(self, staged: Staged, result: ItemResult) -> None:
        obj = self._open or self._new_object()
        obj.append(staged, result)
        staged.data = bytearray()  # compressed into the object: let it go now
        try:
            while len(obj.buf) >= self.part_size:
                await self._send_part(obj)
        except S3WriteError as exc:
            await self._fail(obj, str(exc))
            return
        if obj.size >= self.pack.target_bytes:
            await self._complete(obj)

    def _new_object(self) -> _Object:
        obj = _Object(self.keys.key(self._part), self.pack)
        self._part += 1
        self._open = obj
        return obj

    def _meta(self) -> ObjectMeta:
        # gzip is the file's format (.ndjson.gz), not a Content-Encoding: with that header
        # HTTP clients inflate on download and readers then fail on a .gz that is not
        # (docs/LAKE.md, "Content-Type, not Content-Encoding").
        gzip = self.pack.compression == "gzip"
        return ObjectMeta(
            content_type=GZIP_PACK_CONTENT_TYPE if gzip else PACK_CONTENT_TYPE,
            metadata={"source-id": self.keys.source_id, "request-id": self.keys.request_id},
        )

    async def _send_part(self, obj: _Object) -> None:
        if obj.upload is None:
            obj.upload = await self.writer.start_multipart(obj.key, self._meta())
        # The whole buffer is the part: at least part_size, at most one item more.
        with memoryview(obj.buf) as part:
            await obj.upload.upload_part(part)
        obj.stored += len(obj.buf)
        obj.buf = bytearray()

    async def _complete(self, obj: _Object) -> None:
        obj.finish()
        # Shielded: cancelling the packer (the deadline) must not cut a Complete in
        # flight, after which nobody could say whether the object exists.
        self._completing = asyncio.ensure_future(self._store(obj))
        await asyncio.shield(self._completing)

    async def _store(self, obj: _Object) -> None:
        try:
            if obj.upload is None:
                await self.writer.put(obj.key, bytes(obj.buf), self._meta())
            else:
                if obj.buf:
                    with memoryview(obj.buf) as part:
                        await obj.upload.upload_part(part)
                await obj.upload.complete()
        except S3WriteError as exc:
            await self._fail(obj, str(exc))
            return
        obj.stored += len(obj.buf)
        obj.buf = bytearray()
        self._open = None
        self.objects_written += 1
        self._report_written(obj)

    def _report_written(self, obj: _Object) -> None:
        # Each item's share of the stored bytes, so bytes_written sums to the objects' sizes.
        left = obj.stored
        last = len(obj.items) - 1
        for position, held in enumerate(obj.items):
            share = obj.stored * held.span.length // max(1, obj.raw)
            share = left if position == last else share
            left -= share
            self.on_result(
                dataclasses.replace(held.result, key=obj.key, stored_bytes=share, pack=held.span)
            )

    async def _fail(self, obj: _Object, why: str) -> None:
        """The object cannot be completed: abort it and fail exactly its items."""
        if self._open is obj:
            self._open = None
        self.objects_failed += 1
        obj.buf = bytearray()
        if obj.upload is not None:
            try:
                await asyncio.shield(obj.upload.abort())
            except Exception:
                log.warning("abort of pack upload failed", extra={"key": obj.key}, exc_info=True)
        text = f"pack object {obj.key} not completed: {why}"
        self._report(obj, ItemStatus.FAILED, FailureKind.S3_ERROR, text)

    def _report(self, obj: _Object, status: ItemStatus, kind: FailureKind, text: str) -> None:
        """Every item the object held ends with the object's fate, and it holds none after."""
        for held in obj.items:
            self.on_result(
                dataclasses.replace(held.result, key=obj.key, status=status, kind=kind, error=text)
            )
        obj.items = []

    def _drain(self, why: str) -> None:
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is None:
                continue
            staged, result = entry
            staged.release()
            self.on_result(
                dataclasses.replace(
                    result,
                    status=ItemStatus.NOT_ATTEMPTED,
                    kind=FailureKind.DEADLINE,
                    error=f"fetched but not packed: {why}",
                )
            )


def read_item(chunks: Iterable[bytes], span: PackSpan) -> tuple[bytes, int]:
    """An item's lines from its object's bytes starting at ``span.offset``.

    Args:
        chunks: the object's bytes from ``span.offset`` on (a ranged read), in pieces;
            iteration stops as soon as the item is complete.
        span: the item's manifest ``pack`` entry.

    Returns:
        The item's NDJSON lines and how many stored bytes were consumed.
    """
    need = span.skip + span.length
    out = bytearray()
    consumed = 0
    inflate = zlib.decompressobj(31 if span.offset == 0 else -15) if span.gzip else None
    for chunk in chunks:
        consumed += len(chunk)
        out += inflate.decompress(chunk) if inflate is not None else chunk
        if len(out) >= need:
            break
    if len(out) < need:
        raise ValueError(f"the object ended {need - len(out)} bytes before the item did")
    return bytes(out[span.skip : need]), consumed


def first_index(items: Iterable[Any], *, ascending: bool) -> int:
    """The lowest index of a run's plan (``{first_index}``); 0 for an empty plan.

    ``ascending``: the plan numbers its items upward from the first (every shape but a
    Map batch, whose items carry their own indexes), so a million-item range is not
    walked just for this.
    """
    if ascending:
        return next((item.index for item in items), 0)
    return min((item.index for item in items), default=0)
