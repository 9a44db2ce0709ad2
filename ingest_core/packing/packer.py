"""Packing (CONTRACT §13): many pages become NDJSON lines in a few large objects.

The pack sink hands each fetched page to ``Packer.stage`` (which reads the body
within the memory budget and turns it into lines with the run's ``PackUnit``,
staging.py) and each finished item to ``Packer.submit``. One packer task appends
items, in the order they finish, to the open object: an item's lines are
contiguous and never span two objects. The object streams to the writer as a
multipart upload while it fills (parts of ``part_size``; an object that ends
smaller than a part goes as one PUT) and rotates when ``target_mb`` of stored
bytes is reached.

Accounting: every submitted item is reported exactly once. Written (with its key,
first line, line count and where its bytes are) once the object holding its lines
is complete; failed when the object could not be completed (kind ``s3_error`` for a
write error of S3 or the local folder, ``internal`` for a bug, ``deadline`` when
the run stopped first), after which its upload is aborted; ``write_unknown`` when
the object's Complete was still unanswered at the stop; not attempted when it was
still queued. The task reports what it still holds from its ``finally``, so no
cancellation can lose an item. Each object's S3 retries and throttles are counted
on its first item (every item carries the object's ``s3_attempts``).

Gzip objects are one gzip member with a full flush (Z_FULL_FLUSH) before an item
whenever ``FLUSH_EVERY`` uncompressed bytes were written since the last one.
Decompression can restart at a flush point, so the manifest gives per item the
compressed offset of its block and how many uncompressed bytes to skip there:
``show`` reads one item with a ranged GET of about one block, not the object.

::

    pack sink ──stage(page)──▶ Staged ──submit(item)──▶ queue ──▶ packer task
                                                                │ lines → gzip → part buffer
                                                                ▼
                                                 writer.start_multipart / upload_part / complete
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from ingest_core.clock import RunClock
from ingest_core.config import Options, PackOptions
from ingest_core.errors import FailureKind, TruncatedBody, WriteError
from ingest_core.keys import PackKeys
from ingest_core.limits import ByteBudget
from ingest_core.packing.staging import MakeRoom, Staged, keep_lines, read_body
from ingest_core.packing.units import Lines, PackUnit, Page
from ingest_core.results import ItemResult, ItemStatus, PackSpan
from ingest_core.s3retry import S3Retry, WriteStats, write_scope
from ingest_core.s3retry import current as current_s3_retry
from ingest_core.writers import MultipartUpload, ObjectMeta, ObjectWriter

log = logging.getLogger(__name__)

FLUSH_EVERY = 1024 * 1024  # uncompressed bytes between restart points in a gzip object
COMPLETE_GRACE_S = 1.0  # how long a stop from outside waits for a Complete in flight
PACK_CONTENT_TYPE = "application/x-ndjson"
GZIP_PACK_CONTENT_TYPE = "application/gzip"
ResultSink = Callable[[ItemResult], None]
Changes = Callable[[int], dict[str, Any]]  # position in the object -> its result's final fields


def _nothing_to_spill() -> None:
    return None


_second: tuple[int, str] = (-1, "")  # the last whole second seen, formatted


def fetched_at_now(now: float | None = None) -> str:
    """UTC now as ``2025-01-01T00:00:00.123Z`` (milliseconds, truncated).

    What ``datetime.now(UTC).isoformat(timespec="milliseconds")`` with a ``Z`` gives,
    for a third of its cost (5.7 -> 2.0 µs a page on the loaded machine): the text of the
    whole second is kept and only the milliseconds are formatted per page.
    """
    global _second
    now = time.time() if now is None else now
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


# ----------------------------------------------------------------------------- objects


@dataclasses.dataclass(slots=True)
class _Held:
    result: ItemResult
    span: PackSpan


class _Object:
    """One pack object being filled: its compressor, part buffer, items and S3 figures."""

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
        self.stats = WriteStats()  # every S3 call of this object

    @property
    def size(self) -> int:
        """Stored bytes so far (compressed, when compressing)."""
        return self.stored + len(self.buf)

    def place(self, staged: Staged, result: ItemResult) -> None:
        """Take the item: from here its fate is the object's (its lines follow in ``feed``)."""
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
            length=staged.size,
            gzip=self.gzip is not None,
        )
        self.lines += staged.lines
        self.items.append(_Held(result, span))

    def feed(self, chunk: bytes | memoryview) -> None:
        self.buf += self.gzip.compress(chunk) if self.gzip is not None else chunk
        self.raw += len(chunk)
        self.since_flush += len(chunk)

    def finish(self) -> None:
        if self.gzip is not None:
            self.buf += self.gzip.flush()

    def report(self, on_result: ResultSink, changes: Changes) -> None:
        """Every item the object holds ends once (``changes`` says how); it holds none after.

        The object's S3 retries and throttles are counted on its first item only, so
        the run's figures count each once. One ``dataclasses.replace`` per item: each
        costs ~5 µs on an 18-field frozen result, on the packed hot path.
        """
        items, self.items = self.items, []
        stats = self.stats
        for position, held in enumerate(items):
            result = held.result
            fields = changes(position)
            if position == 0:
                fields["s3_retries"] = stats.retries
                fields["throttled"] = result.throttled + stats.throttled
            on_result(
                dataclasses.replace(
                    result, key=self.key, s3_attempts=stats.attempts, pack=held.span, **fields
                )
            )


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
        self.max_item = options.max_body_bytes  # an item's lines, spilled or not
        self._queue: asyncio.Queue[tuple[Staged, ItemResult] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._retry = S3Retry()
        self._held = 0
        self._part = 0
        self._open: _Object | None = None
        self._completing: asyncio.Future[None] | None = None
        self._aborts: set[asyncio.Future[None]] = set()
        self._stopped: str | None = None  # why the packer stopped taking items
        self.objects_written = 0
        self.objects_failed = 0

    async def start(self) -> None:
        """Reserve the part buffer and start the packer task (S3 retries: the caller's)."""
        self._retry = current_s3_retry()
        self._held = await self.budget.reserve(self.part_size)
        self._task = asyncio.create_task(self._run(), name="packer")

    def new_item(self) -> Staged:
        """An empty staging area for one item's pages."""
        return Staged(self.budget)

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
        make_room: MakeRoom = _nothing_to_spill,
    ) -> Lines:
        """Read one page whole and add its lines to ``staged``; return them (and the value).

        ``make_room``: spills what the item holds elsewhere before a wait for budget.

        Raises:
            FetchError: the body is too large for memory, truncated or invalid.
        """
        fetched_at = fetched_at_now()
        body = await read_body(
            chunks, staged, limit=self.max_body, hint=content_length, make_room=make_room
        )
        if content_length is not None and len(body) != content_length:
            raise TruncatedBody(f"received {len(body)} of {content_length} bytes (Content-Length)")
        lines = self.unit.lines(Page(index, page, params, body, status, content_type, fetched_at))
        received = len(body)
        del body  # the lines are measured against the budget without it
        keep_lines(staged, lines, received)
        return lines

    def submit(self, staged: Staged, result: ItemResult) -> None:
        """Hand a fetched item to the packer; its result is reported when its object ends."""
        if self._stopped is None:
            self._queue.put_nowait((staged, result))
            return
        staged.release()
        self.on_result(_not_packed(result, self._stopped))

    async def close(self, clock: RunClock | None = None) -> None:
        """Complete the open object and report every item; give up at ``clock.complete_by``.

        Items in an object that could not be completed in time fail (kind
        ``deadline``, upload aborted); items not yet packed are reported as not
        attempted. Nothing here is waited for past the clock's bound.
        """
        if self._task is None:
            return
        self._queue.put_nowait(None)
        within = None if clock is None else clock.until(clock.complete_by)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), within)
        except TimeoutError:
            await self._stop("the pack could not be completed before the deadline", grace_s=0)
        finally:
            self._give_back_part()

    async def abort(self, why: str, clock: RunClock | None = None) -> None:
        """Stop now: every item still held is reported; a no-op once stopped or closed.

        A Complete already in flight gets ``COMPLETE_GRACE_S`` (within the clock's
        ``finish_by``) to answer before its items are reported as ``write_unknown``.
        """
        left = None if clock is None else clock.left()
        await self._stop(
            why, grace_s=COMPLETE_GRACE_S if left is None else min(COMPLETE_GRACE_S, left)
        )
        self._give_back_part()

    async def _stop(self, why: str, *, grace_s: float) -> None:
        if self._stopped is not None or self._task is None or self._task.done():
            self._stopped = self._stopped or why
            return
        self._stopped = why
        completing = self._completing
        if completing is not None and not completing.done() and grace_s > 0:
            await asyncio.wait([completing], timeout=grace_s)
        self._task.cancel()
        await asyncio.wait([self._task])  # its finally reports what it still held

    def _give_back_part(self) -> None:
        self.budget.release(self._held)
        self._held = 0

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        try:
            while (entry := await self._queue.get()) is not None:
                await self._take(*entry)
            if self._open is not None:
                await self._complete(self._open)
        finally:
            self._settle_rest(self._stopped or "the packer stopped")

    async def _take(self, staged: Staged, result: ItemResult) -> None:
        """Pack one item; a failure fails its object (and only it), never the task."""
        obj: _Object | None = None
        try:
            obj = self._open or self._new_object(result.params)
            obj.place(staged, result)
            for chunk in staged.chunks():
                obj.feed(chunk)
                while len(obj.buf) >= self.part_size:
                    await self._send_part(obj)
            # A {step} object holds its one step: complete, it is the step's only copy.
            if self.keys.per_step or obj.size >= self.pack.target_bytes:
                await self._complete(obj)
        except Exception as exc:  # a write error (S3, a full disk) or a bug: not the task's end
            if obj is None:
                self.on_result(_failed(result, FailureKind.INTERNAL, _why(exc)))
            else:
                await self._fail(obj, _why(exc), _kind(exc))
        finally:
            staged.release()

    def _new_object(self, params: Mapping[str, Any]) -> _Object:
        obj = _Object(self.keys.key(self._part, params), self.pack)
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

    def _scope(self, obj: _Object) -> AbstractContextManager[WriteStats]:
        """The run's S3 retries, counting into the object's figures."""
        return write_scope(dataclasses.replace(self._retry, stats=obj.stats))

    async def _send_part(self, obj: _Object) -> None:
        with self._scope(obj):
            if obj.upload is None:
                obj.upload = await self.writer.start_multipart(obj.key, self._meta())
            # The whole buffer is the part: at least part_size, at most one chunk more.
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
            with self._scope(obj):
                if obj.upload is None:
                    await self.writer.put(obj.key, bytes(obj.buf), self._meta())
                else:
                    if obj.buf:
                        with memoryview(obj.buf) as part:
                            await obj.upload.upload_part(part)
                    await obj.upload.complete()
        except Exception as exc:
            await self._fail(obj, _why(exc), _kind(exc))
            return
        obj.stored += len(obj.buf)
        obj.buf = bytearray()
        if self._open is obj:
            self._open = None
        self.objects_written += 1
        self._report_written(obj)

    def _report_written(self, obj: _Object) -> None:
        # Each item's share of the stored bytes, so bytes_written sums to the objects' sizes.
        shares = [obj.stored * held.span.length // max(1, obj.raw) for held in obj.items]
        if shares:
            shares[-1] = obj.stored - sum(shares[:-1])
        obj.report(self.on_result, lambda at: {"stored_bytes": shares[at]})

    async def _fail(self, obj: _Object, why: str, kind: FailureKind) -> None:
        """The object cannot be completed: fail exactly its items first, then abort it."""
        if self._open is obj:
            self._open = None
        self.objects_failed += 1
        obj.buf = bytearray()
        text = f"pack object {obj.key} not completed: {why}"
        obj.report(self.on_result, lambda _: _failure(kind, text))
        if obj.upload is not None:
            try:
                await asyncio.shield(obj.upload.abort())
            except Exception:
                log.warning("abort of pack upload failed", extra={"key": obj.key}, exc_info=True)

    def _settle_rest(self, why: str) -> None:
        """The task ends: report every item it still holds (no await: cancellation-proof)."""
        self._stopped = self._stopped or why
        obj, self._open = self._open, None
        if obj is not None and obj.items:
            completing = self._completing
            if completing is not None and not completing.done():
                text = f"{why} while S3 was completing pack object {obj.key}: it may exist"
                obj.report(self.on_result, lambda _: _unknown_fields(text))
            else:
                text = f"pack object {obj.key} not completed: {why}"
                obj.report(self.on_result, lambda _: _failure(FailureKind.DEADLINE, text))
                self._abort_later(obj)
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is not None:
                staged, result = entry
                staged.release()
                self.on_result(_not_packed(result, why))

    def _abort_later(self, obj: _Object) -> None:
        """Start the abort of an object's upload; a tracked writer follows it to the end."""
        if obj.upload is None:
            return
        task = asyncio.ensure_future(obj.upload.abort())
        self._aborts.add(task)
        task.add_done_callback(_log_abort_failure)
        task.add_done_callback(self._aborts.discard)


def _log_abort_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("abort of pack upload failed", exc_info=task.exception())


def _why(exc: Exception) -> str:
    if isinstance(exc, WriteError):
        return str(exc)
    log.error("packer: unexpected error", exc_info=exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def _kind(exc: Exception) -> FailureKind:
    return FailureKind.S3_ERROR if isinstance(exc, WriteError) else FailureKind.INTERNAL


def _failure(kind: FailureKind, text: str) -> dict[str, Any]:
    return {"status": ItemStatus.FAILED, "kind": kind, "error": text}


def _failed(result: ItemResult, kind: FailureKind, text: str) -> ItemResult:
    return dataclasses.replace(result, **_failure(kind, text))


def _unknown_fields(text: str) -> dict[str, Any]:
    return {"status": ItemStatus.WRITE_UNKNOWN, "kind": FailureKind.DEADLINE, "error": text}


def _not_packed(result: ItemResult, why: str) -> ItemResult:
    return dataclasses.replace(
        result,
        status=ItemStatus.NOT_ATTEMPTED,
        kind=FailureKind.DEADLINE,
        error=f"fetched but not packed: {why}",
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
