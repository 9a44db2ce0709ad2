"""The writer seam: where an item's pages go (CONTRACT §7, §13).

``Sink.open(item)`` gives an ``ItemSink``; the attempt loop calls its ``page`` with
each page's response, and the engine calls its ``finish`` exactly once, from a
``finally``, with the item's settled result. ``finish`` is synchronous, so no
cancellation can cut it: the item is reported (now, or by the packer once its
object ends) whatever happened.

- ``ObjectSink``: one object per page (S3 lean PUT, S3 multipart, a local folder:
  the ``ObjectWriter`` decides), streamed by ``transfer``.
- ``PackSink``: pages become pack lines staged for the item; a written item's lines
  go to the ``Packer`` as one unit, which reports the item when its object ends.

The engine never branches on which one it has.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from ingest_core.clock import RunClock
from ingest_core.config import Options
from ingest_core.errors import BodyTooLarge
from ingest_core.events import Job, PlannedItem
from ingest_core.fetcher import iter_body, safe_content_type
from ingest_core.keys import PackKeys, params_hash
from ingest_core.limits import ByteBudget
from ingest_core.packing import Packer, Staged, first_index, make_unit
from ingest_core.packing.stale import StaleParts, part_store
from ingest_core.records import NOT_ONE_VALUE
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.transfer import BodyInfo, Stored, transfer
from ingest_core.writers import ObjectMeta, ObjectWriter

READ_CHUNK = 64 * 1024
Record = Callable[[ItemResult], None]
Keep = Callable[[Any], Any]


class ItemSink(Protocol):
    """One item's pages on their way to storage."""

    # Whether each page becomes an object under its own key (else the pages have no
    # key: they share the item's place in a pack).
    page_objects: bool

    async def page(self, number: int, key: str, response: aiohttp.ClientResponse) -> Stored:
        """Store (or stage) one page's body; an earlier attempt of the page is replaced.

        Raises:
            FetchError: the body failed (truncated, too large, invalid).
            WriteError: storing failed.
        """
        ...

    def finish(self, result: ItemResult) -> None:
        """Report the item exactly once (synchronous: safe in a cancelled ``finally``)."""
        ...


class Sink(Protocol):
    """Where a run's items go; one per run."""

    def open(self, item: PlannedItem) -> ItemSink:
        """The sink of one item's pages."""
        ...

    async def close(self, clock: RunClock) -> None:
        """End the run's writes within the clock's bounds; every item is reported after."""
        ...

    async def abort(self, why: str, clock: RunClock) -> None:
        """Stop now, within the clock; every item handed over and not reported is reported."""
        ...


def body_info(response: aiohttp.ClientResponse) -> BodyInfo:
    """What the response headers say about its body."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    return BodyInfo(
        content_length=response.content_length,
        content_type=safe_content_type(response.headers.get("Content-Type")),
        encoded=encoding not in ("", "identity"),
    )


# ------------------------------------------------------------------ an object a page


@dataclasses.dataclass(slots=True)
class ObjectSink:
    """One object per page, streamed into the writer within the byte budget."""

    writer: ObjectWriter
    options: Options
    budget: ByteBudget
    records_path: str | None
    source_id: str
    request_id: str
    record: Record
    keep: Keep | None = None  # what a paginator reads of a page's parsed body
    paginated: bool = False  # pages carry a ``page`` metadata entry

    @classmethod
    def for_job(
        cls, job: Job, writer: ObjectWriter, budget: ByteBudget, record: Record, keep: Keep | None
    ) -> ObjectSink:
        """The sink of a run of ``job`` that does not pack."""
        return cls(
            writer=writer,
            options=job.options,
            budget=budget,
            records_path=job.api.records_path,
            source_id=job.api.source_id,
            request_id=job.request_id,
            record=record,
            keep=keep,
            paginated=job.api.pagination is not None,
        )

    def open(self, item: PlannedItem) -> ItemSink:
        return _ObjectItem(self, item)

    async def close(self, clock: RunClock) -> None:
        return None  # every object ended with its page

    async def abort(self, why: str, clock: RunClock) -> None:
        return None  # uploads in flight are the UploadTracker's

    def meta(self, item: PlannedItem, info: BodyInfo, page: int) -> ObjectMeta:
        # Never a header value of the API request: those may be credentials.
        metadata = {
            "source-id": self.source_id,
            "request-id": self.request_id,
            "index": str(item.index),
            "params-hash": params_hash(item.params),
        }
        if self.paginated:
            metadata["page"] = str(page)
        return ObjectMeta(
            content_type=info.content_type or "application/json",
            content_encoding="gzip" if self.options.compress else None,
            metadata=metadata,
        )


@dataclasses.dataclass(slots=True)
class _ObjectItem:
    sink: ObjectSink
    item: PlannedItem
    page_objects: bool = True

    async def page(self, number: int, key: str, response: aiohttp.ClientResponse) -> Stored:
        sink = self.sink
        info = body_info(response)
        return await transfer(
            iter_body(response, READ_CHUNK),
            info,
            writer=sink.writer,
            key=key,
            meta=sink.meta(self.item, info, number),
            options=sink.options,
            budget=sink.budget,
            records_path=sink.records_path,
            keep=sink.keep,
        )

    def finish(self, result: ItemResult) -> None:
        self.sink.record(result)


# ------------------------------------------------------------------------ a pack


@dataclasses.dataclass(slots=True)
class PackSink:
    """Pages become pack lines; a written item's lines go to the packer as one unit."""

    packer: Packer
    record: Record
    keep: Keep | None = None
    stale: StaleParts | None = None  # an earlier run's parts this one did not write

    def open(self, item: PlannedItem) -> ItemSink:
        return _PackItem(self, item)

    async def close(self, clock: RunClock) -> None:
        await self.packer.close(clock)
        if self.stale is not None:
            await self.stale.remove(clock)

    async def abort(self, why: str, clock: RunClock) -> None:
        await self.packer.abort(why, clock)


async def pack_sink(
    job: Job, writer: ObjectWriter, budget: ByteBudget, record: Record, keep: Keep | None
) -> PackSink:
    """The sink of a run of ``job`` with ``options.pack``, its packer started."""
    pack = job.options.pack
    assert pack is not None
    first = first_index(job.items(), ascending=not job.is_map_batch)
    unit = make_unit(pack, records_path=job.api.records_path, expect_json=job.options.expect_json)
    keys = PackKeys(pack.template, job.api.source_id, job.request_id, first, _step_param(job))
    stale = StaleParts(keys, part_store(writer))
    packer = Packer(
        writer=writer,
        options=job.options,
        keys=keys,
        unit=unit,
        budget=budget,
        on_result=stale.recording(record),
    )
    await packer.start()
    return PackSink(packer=packer, record=record, keep=keep, stale=stale)


def _step_param(job: Job) -> str | None:
    return job.date_range.param if job.date_range is not None else None


@dataclasses.dataclass(slots=True)
class _PackItem:
    sink: PackSink
    item: PlannedItem
    staged: dict[int, Staged] = dataclasses.field(default_factory=dict)
    page_objects: bool = False

    async def page(self, number: int, key: str, response: aiohttp.ClientResponse) -> Stored:
        packer = self.sink.packer
        info = body_info(response)
        self._drop(number)  # an earlier attempt of this page
        staged = self.staged[number] = packer.new_item()
        try:
            lines = await packer.stage(
                staged,
                iter_body(response, READ_CHUNK),
                make_room=functools.partial(self._spill_others, number),
                index=self.item.index,
                page=number,
                params=self.item.params,
                status=response.status,
                content_type=info.content_type,
                content_length=None if info.encoded else info.content_length,
            )
            self._bound()
        except BaseException:
            self._drop(number)  # a failed attempt holds nothing while the next one waits
            raise
        keep = self.sink.keep
        value = NOT_ONE_VALUE if lines.value is NOT_ONE_VALUE or keep is None else keep(lines.value)
        return Stored(staged.received, 0, lines.records, multipart=False, value=value)

    def finish(self, result: ItemResult) -> None:
        # No page has an object of its own. One replace at most: each costs ~5 µs.
        if result.status is not ItemStatus.WRITTEN:
            for number in list(self.staged):
                self._drop(number)
            self.sink.record(
                dataclasses.replace(result, page_keys=()) if result.page_keys else result
            )
            return
        merged = self.sink.packer.new_item()
        for number in sorted(self.staged):
            merged.merge(self.staged.pop(number))
        # The pack's object is the item's key, known once the packer places it.
        pending = dataclasses.replace(
            result, key=None, page_keys=(), stored_bytes=0, received_bytes=merged.received
        )
        self.sink.packer.submit(merged, pending)

    def _spill_others(self, number: int) -> None:
        """Before this page waits for budget, its item's other pages go to disk."""
        for other, staged in self.staged.items():
            if other != number:
                staged.spill()

    def _bound(self) -> None:
        """A packed chain's lines together stay within ``max_body_bytes`` (memory or disk)."""
        limit = self.sink.packer.max_item
        if sum(staged.size for staged in self.staged.values()) > limit:
            raise BodyTooLarge(f"a packed item's lines exceed max_body_bytes ({limit})")

    def _drop(self, number: int) -> None:
        previous = self.staged.pop(number, None)
        if previous is not None:
            previous.release()
