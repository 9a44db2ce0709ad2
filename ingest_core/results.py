"""Per-item outcomes (values, not exceptions), the manifest and the result (CONTRACT §6)."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from ingest_core.config import MAX_FAILURES_IN_RESULT
from ingest_core.errors import FailureKind
from ingest_core.redact import clip, contains_secret, scrub

RESULT_FAILURES_BUDGET_BYTES = 192 * 1024  # leaves room under Step Functions' 256 KiB
MAX_FAILURE_PARAMS_BYTES = 2048
MAX_ERROR_TEXT = 300
LATENCY_SAMPLES = 10_000


class ItemStatus(StrEnum):
    """How an item ended."""

    WRITTEN = "written"
    SKIPPED = "skipped"  # skip_existing found the key already written
    FAILED = "failed"
    NOT_ATTEMPTED = "not_attempted"
    # Cut at the deadline while S3 was storing it (a PUT or CompleteMultipartUpload
    # in flight): the object may or may not exist. Counted as failed, kind deadline.
    WRITE_UNKNOWN = "write_unknown"


@dataclass(frozen=True, slots=True)
class PackSpan:
    """Where a packed item's lines are in its object (CONTRACT §13).

    ``first_line`` and ``line_count`` count NDJSON lines from 0. ``offset`` is the
    byte offset in the stored object to start reading at: the item's first byte
    when uncompressed; in a gzip object, the restart point of its block (the
    gzip header at 0, raw deflate after it), where ``skip`` uncompressed bytes
    come before the item's ``length`` bytes.
    """

    first_line: int
    line_count: int
    offset: int
    skip: int
    length: int
    gzip: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``pack`` entry."""
        return {
            "first_line": self.first_line,
            "line_count": self.line_count,
            "offset": self.offset,
            "skip": self.skip,
            "length": self.length,
            "gzip": self.gzip,
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> PackSpan:
        """The inverse of ``to_dict`` (a manifest's ``pack`` entry)."""
        return cls(
            first_line=int(entry["first_line"]),
            line_count=int(entry["line_count"]),
            offset=int(entry["offset"]),
            skip=int(entry["skip"]),
            length=int(entry["length"]),
            gzip=bool(entry.get("gzip", False)),
        )


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome of one item; the fan-out records these, it never raises for them."""

    index: int
    params: Mapping[str, Any]
    key: str | None
    status: ItemStatus
    attempts: int = 0
    received_bytes: int = 0
    stored_bytes: int = 0
    records: int | None = None
    latency_ms: int = 0
    kind: FailureKind | None = None
    http_status: int | None = None
    error: str | None = None
    pack: PackSpan | None = None  # set when the item's lines are in a pack object
    s3_attempts: int = 0  # the most attempts one S3 call of the item needed
    s3_retries: int = 0  # S3 attempts beyond the first, over all its calls
    throttled: int = 0  # 429/503 from the API and SlowDown from S3 this item met
    # With pagination (CONTRACT §11): pages written and their keys, in page order.
    pages: int | None = None
    page_keys: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        """Written now or already there."""
        return self.status in (ItemStatus.WRITTEN, ItemStatus.SKIPPED)

    @property
    def side(self) -> str | None:
        """Which side failed: ``s3`` (storing) or ``api`` (fetching); None otherwise."""
        if self.status is not ItemStatus.FAILED:
            return None
        return "s3" if self.kind is FailureKind.S3_ERROR else "api"

    def scrubbed(self) -> ItemResult:
        """This result with every registered secret scrubbed from its error text."""
        if self.error and contains_secret(self.error):
            return replace(self, error=scrub(self.error))
        return self

    def manifest_line(self) -> bytes:
        """One JSON line of the manifest."""
        line: dict[str, Any] = {
            "index": self.index,
            "params": self.params,
            "key": self.key,
            "status": self.status.value,
            "bytes": self.received_bytes,
            "stored_bytes": self.stored_bytes,
            "records": self.records,
            "attempts": self.attempts,
            "s3_attempts": self.s3_attempts,
            "latency_ms": self.latency_ms,
        }
        if self.pack is not None:
            line["pack"] = self.pack.to_dict()
        if self.pages is not None:
            line.update(pages=self.pages, keys=list(self.page_keys))
        if self.kind is not None:
            line.update(kind=self.kind.value, http_status=self.http_status, error=self.error)
        return orjson.dumps(line) + b"\n"

    def failure_entry(self) -> dict[str, Any]:
        """The entry in the result's ``failures`` list, enough to re-drive the item."""
        entry: dict[str, Any] = {
            "index": self.index,
            "params": self.params,
            "kind": self.kind.value if self.kind else None,
            "status": self.http_status,
            "side": self.side,
            "attempts": self.attempts,
            "s3_attempts": self.s3_attempts,
            "error": clip(self.error or "", MAX_ERROR_TEXT),
        }
        if len(orjson.dumps(self.params)) > MAX_FAILURE_PARAMS_BYTES:
            entry["params"] = None
            entry["params_truncated"] = True  # the manifest has them whole
        return entry


@dataclass(slots=True)
class Tally:
    """Running counts of a run, with the manifest spooled to a temporary file."""

    requested: int
    succeeded: int = 0
    failed: int = 0
    not_attempted: int = 0
    write_unknown: int = 0  # of ``failed``: cut while S3 may have stored the object
    skipped: int = 0
    records: int | None = 0
    bytes_written: int = 0
    bytes_received: int = 0  # response bodies as the API sent them, of the items written
    pages_written: int = 0
    retries: int = 0
    throttled: int = 0
    latencies_ms: list[int] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_bytes: int = 0
    failures_truncated: bool = False
    manifest: IO[bytes] = field(
        default_factory=lambda: tempfile.NamedTemporaryFile("w+b", suffix=".jsonl", delete=False)
    )
    _seen_latencies: int = 0

    def add(self, result: ItemResult) -> None:
        """Count one item and append its manifest line.

        The engine hands it scrubbed results; scrubbing again keeps the manifest
        and the result safe for any other caller.
        """
        result = result.scrubbed()
        self.manifest.write(result.manifest_line())
        self.retries += max(0, result.attempts - 1) + result.s3_retries
        self.throttled += result.throttled
        if result.succeeded:
            self._add_success(result)
        else:
            self._add_failure(result)

    def _add_success(self, result: ItemResult) -> None:
        self.succeeded += 1
        if result.status is ItemStatus.SKIPPED:
            self.skipped += 1
            return
        self.bytes_written += result.stored_bytes
        self.bytes_received += result.received_bytes
        self.pages_written += 1 if result.pages is None else result.pages
        self._sample_latency(result.latency_ms)
        if self.records is not None:
            self.records = None if result.records is None else self.records + result.records

    def _sample_latency(self, latency_ms: int) -> None:
        # A bounded reservoir keeps memory flat over a 100,000-item run.
        self._seen_latencies += 1
        if len(self.latencies_ms) < LATENCY_SAMPLES:
            self.latencies_ms.append(latency_ms)
            return
        slot = random.randrange(self._seen_latencies)
        if slot < LATENCY_SAMPLES:
            self.latencies_ms[slot] = latency_ms

    def _add_failure(self, result: ItemResult) -> None:
        if result.status is ItemStatus.NOT_ATTEMPTED:
            self.not_attempted += 1
        else:
            self.failed += 1
            self.write_unknown += result.status is ItemStatus.WRITE_UNKNOWN
        entry = result.failure_entry()
        size = len(orjson.dumps(entry))
        full = len(self.failures) >= MAX_FAILURES_IN_RESULT
        if full or self.failures_bytes + size > RESULT_FAILURES_BUDGET_BYTES:
            self.failures_truncated = True
            return
        self.failures.append(entry)
        self.failures_bytes += size

    def count_writes(self, retries: int, throttled: int) -> None:
        """S3 retries and throttles no item's result carries (the manifest's own)."""
        self.retries += retries
        self.throttled += throttled

    @property
    def status(self) -> str:
        """SUCCESS when all succeeded (an empty batch too), FAILED when none did."""
        if self.succeeded == self.requested:
            return "SUCCESS"
        return "FAILED" if self.succeeded == 0 else "PARTIAL_SUCCESS"

    def manifest_path(self) -> Path:
        """The spooled manifest, flushed, as a file path."""
        self.manifest.flush()
        return Path(self.manifest.name)

    def close(self) -> None:
        """Drop the spooled manifest."""
        self.manifest.close()
        Path(self.manifest.name).unlink(missing_ok=True)

    def to_result(
        self, *, request_id: str, source_id: str, duration_ms: int, manifest_key: str | None
    ) -> dict[str, Any]:
        """The JSON-serialisable result of CONTRACT §6."""
        assert self.succeeded + self.failed + self.not_attempted == self.requested, (
            "counts invariant broken"
        )
        return {
            "status": self.status,
            "request_id": request_id,
            "source_id": source_id,
            "requested": self.requested,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "not_attempted": self.not_attempted,
            "write_unknown": self.write_unknown,
            "skipped_existing": self.skipped,
            "records_ingested": self.records,
            "bytes_written": self.bytes_written,
            "bytes_received": self.bytes_received,
            "pages_written": self.pages_written,
            "retries": self.retries,
            "throttled": self.throttled,
            "duration_ms": duration_ms,
            "failures": sorted(self.failures, key=lambda f: f["index"]),
            "failures_truncated": self.failures_truncated,
            "manifest_key": manifest_key,
        }
