"""Every S3 write of one run, followed until it is known to have ended.

The engine wraps its writer in ``UploadTracker.wrap`` so that nothing a
cancellation interrupts is lost track of:

- CreateMultipartUpload runs in a task of its own: when the item is cancelled
  after S3 created the upload but before its id came back, the upload is
  aborted as soon as the id arrives.
- AbortMultipartUpload runs in a task the tracker owns: a stop, the deadline or
  ``attempt_timeout_s`` landing while an item is aborting no longer strands the
  abort, and its failure is logged with the key and upload id.
- A PUT or CompleteMultipartUpload cut by a cancellation may have been applied
  by S3: the item being written (``ItemWrites``, set per item with ``watching``,
  so pages fetched in tasks of their own count too) remembers it, and the engine
  reports the item's write as unknown rather than not attempted.

``settle`` ends the run's S3 business: it aborts every upload still open and
waits for the aborts (and late creates) until a given time; whatever has not
ended by then is returned, and logged, as possibly left open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest_core.redact import clip
from ingest_core.writers import (
    MultipartUpload,
    ObjectMeta,
    ObjectWriter,
    S3Writer,
    put_file_in_parts,
)

log = logging.getLogger(__name__)

MAX_REPORTED = 100  # uploads named in a result; the log names every one


@dataclass(slots=True)
class ItemWrites:
    """What one item's S3 writes came to, as far as cancellations go."""

    cut_committing: bool = False  # a PUT or Complete was cancelled in flight
    uncertain: set[str] = field(default_factory=set)  # keys those cut writes were for


_ITEM: ContextVar[ItemWrites | None] = ContextVar("fanout_item_writes", default=None)


class watching:  # lower case: used as a function, ``with watching(writes):``
    """Record in ``writes`` what the tracked writers do for this task (and its children).

    A class, not a ``contextmanager``: every item enters one, and the generator
    version cost a generator and contextlib's frames per item (docs/PERFORMANCE.md).
    """

    __slots__ = ("token", "writes")

    def __init__(self, writes: ItemWrites) -> None:
        self.writes = writes

    def __enter__(self) -> ItemWrites:
        self.token = _ITEM.set(self.writes)
        return self.writes

    def __exit__(self, *exc: object) -> None:
        _ITEM.reset(self.token)


def _cut_committing(key: str) -> None:
    writes = _ITEM.get()
    if writes is not None:
        writes.cut_committing = True
        writes.uncertain.add(key)


@dataclass(frozen=True, slots=True)
class OpenUpload:
    """A multipart upload that may still be open in S3 when the run returns."""

    key: str
    upload_id: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "upload_id": self.upload_id, "reason": self.reason}


class UploadTracker:
    """The multipart uploads of one run and the S3 calls that end them."""

    def __init__(self, until: float | None = None) -> None:
        """Args:
        until: ``time.monotonic()`` after which nobody waits for an abort any more
            (the run's cleanup deadline); the abort goes on, and ``settle`` reports
            it if it has not ended. None: wait as long as it takes.
        """
        self.until = until
        self._open: dict[int, _Entry] = {}  # created, neither completed nor aborted
        self._creating: dict[asyncio.Task[Any], str] = {}  # CreateMultipartUpload in flight
        self._aborting: set[asyncio.Task[None]] = set()
        self._failed: list[OpenUpload] = []

    def wrap(self, writer: ObjectWriter) -> ObjectWriter:
        """``writer`` with every multipart upload and commit tracked here."""
        return _TrackedWriter(writer, self)

    async def settle(self, until: float | None) -> list[OpenUpload]:
        """Abort what is still open and wait for every create and abort until ``until``.

        Args:
            until: a ``time.monotonic()`` value, or None to wait as long as it takes
                (each S3 call is still bounded by the client's own timeouts).

        Returns:
            The uploads that may still be open in S3, each also logged.
        """
        while True:
            for entry in list(self._open.values()):
                if entry.abort is None:
                    self.abort(entry.upload, entry.key)
            pending = [*self._creating, *self._aborting]
            timeout = None if until is None else until - time.monotonic()
            if not pending or (timeout is not None and timeout <= 0):
                break
            done, _ = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            await asyncio.sleep(0)  # let the done callbacks (a late create's abort) run
        left = [*self._failed, *(self._still_open(entry) for entry in self._open.values())]
        left += [
            OpenUpload(key, None, "CreateMultipartUpload unanswered at the deadline")
            for key in self._creating.values()
        ]
        for upload in left:
            log.error(
                "multipart upload possibly left open (the bucket's lifecycle rule reaps it)",
                extra=upload.to_dict(),
            )
        return left

    def abort(self, upload: MultipartUpload, key: str) -> asyncio.Task[None]:
        """Start (once) the abort of ``upload``, in a task this tracker owns."""
        entry = self._open.get(id(upload))
        if entry is not None and entry.abort is not None:
            return entry.abort
        task = asyncio.ensure_future(self._abort(upload, key))
        if entry is not None:
            entry.abort = task
        self._aborting.add(task)
        task.add_done_callback(self._aborting.discard)
        return task

    async def _abort(self, upload: MultipartUpload, key: str) -> None:
        try:
            await upload.abort()
        except Exception as exc:  # logged with what identifies the upload, never lost
            error = clip(f"abort failed: {exc}", 300)
            self._failed.append(OpenUpload(key, _upload_id(upload), error))
        finally:
            self._open.pop(id(upload), None)

    def _still_open(self, entry: _Entry) -> OpenUpload:
        why = "abort unanswered at the deadline" if entry.abort else "never completed"
        return OpenUpload(entry.key, _upload_id(entry.upload), why)

    async def _create(self, writer: ObjectWriter, key: str, meta: ObjectMeta) -> MultipartUpload:
        task = asyncio.ensure_future(writer.start_multipart(key, meta))
        self._creating[task] = key
        task.add_done_callback(self._created)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller is gone; S3 may have created the upload all the same.
            task.add_done_callback(lambda t: self._abort_orphan(t, key))
            raise

    def _created(self, task: asyncio.Task[MultipartUpload]) -> None:
        key = self._creating.pop(task)
        if not task.cancelled() and task.exception() is None:
            upload = task.result()
            self._open[id(upload)] = _Entry(upload, key)

    def _abort_orphan(self, task: asyncio.Task[MultipartUpload], key: str) -> None:
        if not task.cancelled() and task.exception() is None:
            self.abort(task.result(), key)

    def _finished(self, upload: MultipartUpload) -> None:
        self._open.pop(id(upload), None)


@dataclass(slots=True)
class _Entry:
    upload: MultipartUpload
    key: str
    abort: asyncio.Task[None] | None = None


def _upload_id(upload: MultipartUpload) -> str | None:
    return getattr(upload, "upload_id", None)


class _TrackedWriter:
    """An ``ObjectWriter`` whose uploads and commits an ``UploadTracker`` follows."""

    def __init__(self, inner: ObjectWriter, tracker: UploadTracker) -> None:
        self._inner, self._tracker = inner, tracker

    @property
    def inner(self) -> ObjectWriter:
        """The writer this one tracks (packing/stale.py lists and deletes through it)."""
        return self._inner

    def describe(self, key: str) -> str:
        return self._inner.describe(key)

    async def exists(self, key: str) -> bool:
        return await self._inner.exists(key)

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        try:
            await self._inner.put(key, data, meta)
        except asyncio.CancelledError:
            _cut_committing(key)
            raise

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        upload = await self._tracker._create(self._inner, key, meta)
        return _TrackedUpload(upload, key, self._tracker)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        if isinstance(self._inner, S3Writer) and not self._inner.lean:
            # In parts through this wrapper, so a manifest cut at the deadline has its
            # upload tracked (aborted, or named as left open) like any other.
            await put_file_in_parts(self, key, path, ObjectMeta(content_type=content_type))
            return
        await self._inner.put_file(key, path, content_type)


class _TrackedUpload:
    def __init__(self, inner: MultipartUpload, key: str, tracker: UploadTracker) -> None:
        self._inner, self._key, self._tracker = inner, key, tracker

    @property
    def upload_id(self) -> str | None:
        return _upload_id(self._inner)

    async def upload_part(self, data: bytes | memoryview) -> None:
        await self._inner.upload_part(data)

    async def complete(self) -> None:
        try:
            await self._inner.complete()
        except asyncio.CancelledError:
            _cut_committing(self._key)
            raise
        self._tracker._finished(self._inner)

    async def abort(self) -> None:
        task = self._tracker.abort(self._inner, self._key)
        until = self._tracker.until
        if until is None:
            await asyncio.shield(task)
            return
        # Whoever waits (an item, the packer, a manifest) waits no later than the
        # cleanup deadline; what is still running then, settle reports.
        await asyncio.wait([task], timeout=max(0.0, until - time.monotonic()))
