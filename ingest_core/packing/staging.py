"""An item's pack lines between its fetch and its pack object (CONTRACT §13, §16).

Every staged byte is reserved in the run's ``ByteBudget``: the body while it is
read (twice its size: the body and the lines made of it), then the lines
themselves, measured (a record unit's lines can be twenty times the body).
Nothing waits for budget while holding staged bytes of an unfinished chain: a
page that cannot grow its reservation at once first spills its item's other
pages to a temporary file and gives their reservation back (``make_room``), and
lines the budget cannot hold at once go straight to a temporary file.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from ingest_core.errors import BodyTooLarge
from ingest_core.limits import ByteBudget
from ingest_core.packing.units import Lines

SMALL_RESERVATION = 256 * 1024
FEED_CHUNK = 1024 * 1024  # how much of an item goes into a pack object at a time
MakeRoom = Callable[[], None]


def _nothing_to_spill() -> None:
    return None


@dataclass(slots=True)
class Staged:
    """Lines ready to pack (one page's, or an item's merged), reserved or spilled.

    ``segments`` keep the lines in order: each is bytes in memory (under
    ``reserved``) or a temporary file (under no reservation).
    """

    budget: ByteBudget
    reserved: int = 0
    segments: list[bytearray | IO[bytes]] = field(default_factory=list)
    size: int = 0  # bytes of lines, in memory and spilled
    lines: int = 0
    records: int | None = 0
    received: int = 0
    pages: int = 0

    @property
    def in_memory(self) -> int:
        """Bytes of lines held in memory."""
        return sum(len(s) for s in self.segments if isinstance(s, bytearray))

    def add(self, lines: Lines, received: int) -> None:
        """Append one page's lines (in memory; the caller reserved them)."""
        self.segments.append(bytearray(lines.data))
        self.size += len(lines.data)
        self.lines += lines.count
        self.received += received
        self.pages += 1
        if self.records is not None:
            self.records = None if lines.records is None else self.records + lines.records

    def merge(self, other: Staged) -> None:
        """Append ``other``'s lines (the next page) and take over its reservation."""
        self.segments += other.segments
        self.size += other.size
        self.lines += other.lines
        self.received += other.received
        self.pages += other.pages
        if self.records is not None:
            self.records = None if other.records is None else self.records + other.records
        self.reserved += other.reserved
        other.reserved, other.segments, other.size = 0, [], 0

    def spill(self) -> None:
        """Move the lines held in memory to temporary files and give their reservation back."""
        freed = 0
        for position, segment in enumerate(self.segments):
            if isinstance(segment, bytearray):
                spilled = tempfile.TemporaryFile()
                spilled.write(segment)
                self.segments[position] = spilled
                freed += len(segment)
        given = min(freed, self.reserved)
        self.budget.release(given)
        self.reserved -= given

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The lines in order, at most ``FEED_CHUNK`` at a time."""
        for segment in self.segments:
            if isinstance(segment, bytearray):
                with memoryview(segment) as view:
                    for start in range(0, len(view), FEED_CHUNK):
                        yield view[start : start + FEED_CHUNK]
                continue
            segment.seek(0)
            while piece := segment.read(FEED_CHUNK):
                yield piece

    def give_back(self) -> None:
        """Give the reservation back, keeping the lines (the caller reserves anew)."""
        self.budget.release(self.reserved)
        self.reserved = 0

    def release(self) -> None:
        """Drop the lines and give the reservation back; safe to call more than once."""
        self.give_back()
        for segment in self.segments:
            if not isinstance(segment, bytearray):
                segment.close()
        self.segments, self.size = [], 0


async def read_body(
    chunks: AsyncIterator[bytes],
    staged: Staged,
    *,
    limit: int,
    hint: int | None,
    make_room: MakeRoom = _nothing_to_spill,
) -> bytes:
    """Read a whole body; ``staged`` holds twice its size (body and lines) beside its lines."""
    base = staged.in_memory
    body = bytearray()
    await grow(staged, base + 2 * min(limit, hint or SMALL_RESERVATION), make_room)
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge(f"a packed body must fit in memory: at most {limit} bytes")
        body += chunk
        if base + 2 * len(body) > staged.reserved:
            await grow(staged, base + min(2 * limit, 4 * len(body)), make_room)
    return bytes(body)


async def grow(staged: Staged, total: int, make_room: MakeRoom = _nothing_to_spill) -> None:
    """Hold ``total`` bytes for ``staged``; never wait while holding.

    Taken at once when free; otherwise ``make_room`` spills what the item holds
    elsewhere and ``staged`` gives its own reservation back before waiting.
    """
    if total <= staged.reserved:
        return
    if staged.budget.try_reserve(total - staged.reserved):
        staged.reserved = total
        return
    make_room()
    staged.give_back()
    staged.reserved = await staged.budget.reserve(total)


def keep_lines(staged: Staged, lines: Lines, received: int) -> None:
    """Add a page's measured lines: reserved when the budget has room now, else spilled.

    The body they were made from is gone by now, so the reservation shrinks or
    grows to exactly what stays in memory.
    """
    need = staged.in_memory + len(lines.data)
    if need <= staged.reserved or staged.budget.try_reserve(need - staged.reserved):
        staged.reserved = max(staged.reserved, need)
        staged.add(lines, received)
        excess = staged.reserved - need
        staged.budget.release(excess)
        staged.reserved -= excess
        return
    staged.add(lines, received)
    staged.spill()
    staged.give_back()  # nothing of it stays in memory
