"""Stale pack parts (CONTRACT §13): a re-run leaves no part a reader could count.

Pack keys are deterministic, so a re-run of a batch (a retried Distributed Map
batch, a backfill run again under its request id) writes the same keys. Parts
that the earlier run wrote and this one does not (it packed into fewer objects,
or one of its objects failed and was aborted) would stay beside the new ones: a
lake reading the prefix would count their items twice, and read lines of items
the new manifest calls failed.

So once the packer is done, the run lists the objects that its key template
renders for its source, request id and first index, and deletes every one it did
not complete itself (objects whose completion is unknown are kept: they may be
this run's). One ListObjectsV2 per packed run when nothing is stale. See
docs/LAKE.md, "Re-runs and stale parts".

::

    PackSink ── StaleParts.recording(record) ──▶ notes each written item's key
            └── close: packer.close ──▶ StaleParts.remove(clock) ──▶ list, delete the rest
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ingest_core.clock import RunClock
from ingest_core.errors import LocalWriteError, WriteError
from ingest_core.keys import PackKeys
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.s3errors import _s3_error
from ingest_core.s3retry import current as s3_retry
from ingest_core.writers import LocalDirWriter, S3Writer

log = logging.getLogger(__name__)

Record = Callable[[ItemResult], None]
# Items in these states may be in their object: it is this run's, not stale.
_HELD = frozenset({ItemStatus.WRITTEN, ItemStatus.WRITE_UNKNOWN})


class PartStore(Protocol):
    """Listing and deleting keys: what removing stale parts needs of a destination."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``."""
        ...

    async def delete(self, key: str) -> None:
        """Delete ``key``; raises ``WriteError``."""
        ...


@dataclass(frozen=True, slots=True)
class S3Parts:
    """An S3 bucket's keys, through the writer's client and its patient retries."""

    writer: S3Writer

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            page = await s3_retry().call(functools.partial(self._list, prefix, token))
            keys += [entry["Key"] for entry in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return keys

    async def _list(self, prefix: str, token: str | None) -> Any:
        more = {"ContinuationToken": token} if token else {}
        try:
            return await self.writer.client.list_objects_v2(
                Bucket=self.writer.bucket, Prefix=prefix, **more
            )
        except Exception as exc:
            raise _s3_error("ListObjectsV2", exc) from exc

    async def delete(self, key: str) -> None:
        await s3_retry().call(lambda: self._delete(key))

    async def _delete(self, key: str) -> None:
        try:
            await self.writer.client.delete_object(Bucket=self.writer.bucket, Key=key)
        except Exception as exc:
            raise _s3_error("DeleteObject", exc) from exc


@dataclass(frozen=True, slots=True)
class LocalParts:
    """A local destination folder's files, as keys (file system calls on a thread)."""

    root: Path

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[str]:
        # Only the folder the prefix names (and below) can hold matching keys.
        top = self.root / prefix.rpartition("/")[0]
        keys = []
        for folder, _, files in os.walk(top):
            for name in files:
                key = (Path(folder) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and not name.startswith(LocalDirWriter.TEMP_PREFIX):
                    keys.append(key)
        return keys

    async def delete(self, key: str) -> None:
        path = self.root / key
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise LocalWriteError(f"could not delete {path}: {exc.strerror}") from exc


def part_store(writer: object) -> PartStore | None:
    """How to list and delete under ``writer``'s destination; None for other writers.

    A writer that wraps another (``uploads._TrackedWriter``) names it ``inner``.
    """
    while (inner := getattr(writer, "inner", None)) is not None:
        writer = inner
    if isinstance(writer, S3Writer):
        return S3Parts(writer)
    if isinstance(writer, LocalDirWriter):
        return LocalParts(writer.root)
    return None


@dataclass(frozen=True, slots=True)
class PartPattern:
    """The keys a run's pack template renders, whatever the part: prefix, digits, suffix."""

    prefix: str
    suffix: str

    @classmethod
    def of(cls, keys: PackKeys) -> PartPattern | None:
        """The pattern, or None when the keys are not the run's own to clean up.

        That is when the template does not name ``{request_id}`` (every run writes
        the same keys, as an incremental range's packs do: the parts are not this
        run's alone), or when the part's digits are not set off by non-digits
        (``{first_index}{part}``: part 10 of batch 1 and part 0 of batch 11 render
        alike, and removing one run's stale parts could remove another's).
        """
        if "{request_id}" not in keys.template:
            return None
        values = {
            "source_id": keys.source_id,
            "request_id": keys.request_id,
            "first_index": str(keys.first_index),
        }
        before: list[str] = []
        after: list[str] | None = None
        for literal, name, _, _ in string.Formatter().parse(keys.template):
            (before if after is None else after).append(literal)
            if name == "part":
                after = []
            elif name in values:
                (before if after is None else after).append(values[name])
            elif name is not None:  # {step}: one object per step, named by it, not by part
                return None
        if after is None:
            return None
        prefix, suffix = "".join(before), "".join(after)
        if prefix[-1:].isdigit() or suffix[:1].isdigit():
            return None
        return cls(prefix, suffix)

    def part_of(self, key: str) -> int | None:
        """The part number ``key`` was rendered with, or None when it is not one of ours."""
        if not key.startswith(self.prefix) or not key.endswith(self.suffix):
            return None
        digits = key[len(self.prefix) : len(key) - len(self.suffix)]
        if not digits.isascii() or not digits.isdigit() or str(int(digits)) != digits:
            return None
        return int(digits)


@dataclass(slots=True)
class StaleParts:
    """Notes the objects a run completed; removes the run's other parts when it ends.

    Args:
        keys: the run's pack keys.
        store: where to list and delete (``part_store(writer)``); None skips removal.
    """

    keys: PackKeys
    store: PartStore | None
    kept: set[str] = field(default_factory=set)
    removed: list[str] = field(default_factory=list)

    def recording(self, record: Record) -> Record:
        """``record``, noting first which object each item that may be written is in."""

        def note(result: ItemResult) -> None:
            if result.status in _HELD and result.key:
                self.kept.add(result.key)
            record(result)

        return note

    async def remove(self, clock: RunClock) -> None:
        """Delete the run's parts it did not complete, by ``clock.complete_by``.

        Never raises for S3 or the disk: a part that could not be removed is named
        in a WARNING (the next re-run removes it); items are not affected.
        """
        if self.keys.per_step:
            return  # one object per step, named by it: no numbered parts to go stale
        pattern = PartPattern.of(self.keys)
        if self.store is None or pattern is None:
            if self.store is not None:
                log.warning(
                    "pack parts not checked for stale ones: the key template does not name"
                    " {request_id}, or {part} touches digits",
                    extra={"key_template": self.keys.template},
                )
            return
        try:
            await clock.bound(self._remove(self.store, pattern), until=clock.complete_by)
        except (TimeoutError, WriteError) as exc:
            log.warning(
                "stale pack parts may remain",
                extra={"prefix": pattern.prefix, "removed": self.removed, "why": str(exc)},
            )

    async def _remove(self, store: PartStore, pattern: PartPattern) -> None:
        for key in sorted(await store.list_keys(pattern.prefix)):
            if pattern.part_of(key) is None or key in self.kept:
                continue
            await store.delete(key)
            self.removed.append(key)
        if self.removed:
            log.info("removed stale pack parts of an earlier run", extra={"keys": self.removed})
