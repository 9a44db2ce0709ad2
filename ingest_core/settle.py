"""One item's settled result (CONTRACT §6): from its chain's outcome to one ``ItemResult``.

``ItemState`` follows an item while its chain runs (the outcome filled in place,
the S3 writes a cancellation may have left, the key of every page sent), so the
result is right however the item ended: written, failed (an exception outside the
tool's tree is kind ``internal``), cut by the clock, or never sent at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ingest_core.chain import ChainOutcome
from ingest_core.errors import FailureKind, HTTPStatusError, IngestError
from ingest_core.events import PlannedItem
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.s3retry import WriteStats
from ingest_core.uploads import ItemWrites

log = logging.getLogger(__name__)


def not_attempted(item: PlannedItem, key: str, why: str) -> ItemResult:
    """Never started (the deadline, a stop): kind ``deadline``, 0 attempts."""
    return ItemResult(
        index=item.index,
        params=item.params,
        key=key,
        status=ItemStatus.NOT_ATTEMPTED,
        kind=FailureKind.DEADLINE,
        error=why,
    )


class ItemState:
    """One item on its way: its chain's outcome and the S3 writes it may have left."""

    __slots__ = ("item", "key", "out", "paginated", "started", "tried", "writes")

    def __init__(self, item: PlannedItem, key: str, *, paginated: bool) -> None:
        self.item, self.key, self.paginated = item, key, paginated
        self.started = time.monotonic()
        self.out = ChainOutcome()
        self.writes = ItemWrites()
        self.tried: dict[int, str] = {}  # page number -> key, of every page sent

    def keys(self) -> tuple[str, ...]:
        """Page keys that may be in the sink, in page order: stored, or cut while committing."""
        maybe = {page.key for page in self.out.pages} | self.writes.uncertain
        return tuple(key for _, key in sorted(self.tried.items()) if key and key in maybe)

    def settled(self, s3: WriteStats, reason: str) -> ItemResult:
        """The result once the chain has run to its end."""
        if self.out.never_sent:
            return not_attempted(self.item, self.key, f"not started: {reason}")
        if self.out.error is not None:
            return self._unknown_if_cut(self.failed(self.out.error, s3))
        return self.written(s3)

    def written(self, s3: WriteStats) -> ItemResult:
        received = stored = 0
        for page in self.out.pages:  # one loop: this runs once per item written
            received += page.stored.received
            stored += page.stored.stored
        result = ItemResult(
            index=self.item.index,
            params=self.item.params,
            key=self.key,
            status=ItemStatus.WRITTEN,
            attempts=self.out.attempts,
            received_bytes=received,
            stored_bytes=stored,
            records=self.out.records,
            latency_ms=self._ms(),
            s3_attempts=s3.attempts,
            s3_retries=s3.retries,
            throttled=self.out.throttled + s3.throttled,
        )
        return self._paged(result)

    def failed(self, error: Exception, s3: WriteStats) -> ItemResult:
        """Failed with ``error``; one outside the tool's tree is a bug: kind ``internal``."""
        kind = getattr(error, "kind", None)
        text = str(error)
        if not isinstance(error, IngestError) or not isinstance(kind, FailureKind):
            log.error("unexpected error on item %s", self.item.index, exc_info=error)
            kind, text = FailureKind.INTERNAL, f"internal error: {type(error).__name__}: {error}"
        attempts = self.out.attempts
        if isinstance(error, HTTPStatusError):
            text = f"{text} after {attempts} attempt{'s' if attempts != 1 else ''}"
        result = ItemResult(
            index=self.item.index,
            params=self.item.params,
            key=self.key,
            status=ItemStatus.FAILED,
            attempts=attempts,
            latency_ms=self._ms(),
            kind=kind,
            http_status=getattr(error, "status", None),
            error=text,
            s3_attempts=s3.attempts,
            s3_retries=s3.retries,
            throttled=self.out.throttled + s3.throttled,
        )
        return self._paged(result)

    def cut(self, reason: str) -> ItemResult:
        """Cancelled in flight: not attempted, or failed with what may be in the sink."""
        keys = self.keys()
        unknown = self.writes.cut_committing
        if not unknown and not keys:
            return not_attempted(self.item, self.key, f"{reason}; any upload was aborted")
        if unknown:
            why = f"{reason} while S3 was storing the object: it may exist"
            why += " (a re-drive writes the same key again)"
        else:
            why = f"{reason} after {len(self.out.pages)} pages (listed in keys)"
        result = ItemResult(
            index=self.item.index,
            params=self.item.params,
            key=self.key,
            status=ItemStatus.WRITE_UNKNOWN if unknown else ItemStatus.FAILED,
            attempts=max(1, self.out.attempts),
            kind=FailureKind.DEADLINE,
            error=why,
        )
        return self._paged(result)

    def _paged(self, result: ItemResult) -> ItemResult:
        """With pagination, the pages stored and every key that may hold one (CONTRACT §11)."""
        if not self.paginated:
            return result
        return dataclasses.replace(result, pages=len(self.out.pages), page_keys=self.keys())

    def _unknown_if_cut(self, result: ItemResult) -> ItemResult:
        """A failed item one of whose attempts was cut mid-PUT (``attempt_timeout_s``)
        may have its object after all: say so rather than promise nothing is there."""
        if not self.writes.cut_committing:
            return result
        why = f"{result.error}; an attempt was cut while S3 was storing the object: it may exist"
        return dataclasses.replace(result, status=ItemStatus.WRITE_UNKNOWN, error=why)

    def _ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)
