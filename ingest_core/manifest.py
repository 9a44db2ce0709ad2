"""The run's manifest, stored within what the clock leaves (CONTRACT §6, §7).

The manifest is stored after every item is reported; its PUT (or multipart
upload) is bounded by the run's clock and its S3 retries stop where the clock
does. Its S3 retries and throttles are counted in the run's figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ingest_core.clock import RunClock
from ingest_core.events import Job
from ingest_core.keys import manifest_key
from ingest_core.redact import clip
from ingest_core.s3retry import S3Retry, WriteStats, write_scope
from ingest_core.writers import ObjectWriter

log = logging.getLogger(__name__)

MANIFEST_CONTENT_TYPE = "application/x-ndjson"
MAX_ERROR_TEXT = 300


async def store_manifest(
    writer: ObjectWriter, key: str, path: Path, *, clock: RunClock, retry: S3Retry
) -> tuple[str | None, str | None, WriteStats]:
    """Store the manifest at ``key``: (its key, None, stats) or (None, why not, stats).

    Never raises for a failed write: the objects are written, and a lost manifest
    must not turn success into an error.
    """
    left = clock.left()
    with write_scope(retry) as stats:
        try:
            await clock.bound(writer.put_file(key, path, MANIFEST_CONTENT_TYPE))
        except TimeoutError:
            error = f"not written: S3 did not answer in the {left:.1f}s left before the deadline"
            log.error("could not write the manifest", extra={"manifest_key": key, "error": error})
            return None, error, stats
        except Exception as exc:
            log.exception("could not write the manifest", extra={"manifest_key": key})
            return None, clip(f"not written: {exc}", MAX_ERROR_TEXT), stats
    return key, None, stats


def manifest_key_for(
    job: Job, first_index: int | None, last_index: int | None, prefix: str = ""
) -> str:
    """``{source_id}/_manifests/{request_id}.json``; Map batches add their index range.

    Every batch of one Distributed Map execution shares the execution name as
    its request id, so without the range their manifests would overwrite each other.
    """
    span = None
    if job.is_map_batch and first_index is not None and last_index is not None:
        span = (first_index, last_index)
    return manifest_key(job.api.source_id, job.request_id, span, prefix)
