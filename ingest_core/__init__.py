"""fanout-ingest: fetch many HTTP API requests concurrently and stream them into S3."""

from ingest_core.config import Options
from ingest_core.engine import RunOutcome, run_job
from ingest_core.errors import (
    BlockedError,
    BodyTooLarge,
    DeadlineExceeded,
    FailureKind,
    FetchConnectionError,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    IngestError,
    InvalidBody,
    InvalidEventError,
    LocalWriteError,
    PaginationError,
    PartialFailureError,
    S3WriteError,
    SecretResolutionError,
    StateConflict,
    StateError,
    TruncatedBody,
    WriteError,
)
from ingest_core.events import Job, PlannedItem, parse_event
from ingest_core.pagination import PaginationConfig
from ingest_core.redact import register_secret, scrub
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.secrets import resolve_secret_headers
from ingest_core.settings import Settings
from ingest_core.writers import LocalDirWriter, ObjectWriter, S3Writer

__all__ = [
    "BlockedError",
    "BodyTooLarge",
    "DeadlineExceeded",
    "FailureKind",
    "FetchConnectionError",
    "FetchError",
    "FetchTimeout",
    "HTTPStatusError",
    "IngestError",
    "InvalidBody",
    "InvalidEventError",
    "ItemResult",
    "ItemStatus",
    "Job",
    "LocalDirWriter",
    "LocalWriteError",
    "ObjectWriter",
    "Options",
    "PaginationConfig",
    "PaginationError",
    "PartialFailureError",
    "PlannedItem",
    "RunOutcome",
    "S3WriteError",
    "S3Writer",
    "SecretResolutionError",
    "Settings",
    "StateConflict",
    "StateError",
    "TruncatedBody",
    "WriteError",
    "parse_event",
    "register_secret",
    "resolve_secret_headers",
    "run_job",
    "scrub",
]
