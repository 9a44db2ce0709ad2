"""Run options (CONTRACT §4): frozen, keyword-only, validated once.

Defaults are named module constants so the CLI, the README and the tests quote
one source. Explicit values (event ``options``, CLI flags) beat the defaults;
nothing here reads the environment (that is ``netguard.NetPolicy.from_env`` and
``settings.Settings.from_env``).
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 1024
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_ATTEMPT_TIMEOUT_S = 300.0
DEFAULT_RATE_LIMIT_PER_S = 0.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024 * 1024
DEFAULT_PART_SIZE_MB = 8
MIN_PART_SIZE_MB = 5  # S3's floor for every part but the last
MAX_PART_SIZE_MB = 5 * 1024
DEFAULT_MEMORY_BUDGET_MB = 256
DEFAULT_DEADLINE_MARGIN_S = 5.0
# The hard stop comes at half the margin and aborts and the manifest must end by a
# quarter of it: below a second, that leaves S3 no time to answer before the deadline.
MIN_DEADLINE_MARGIN_S = 1.0
MAX_FAILURES_IN_RESULT = 1000
DEFAULT_S3_MAX_ATTEMPTS = 10  # botocore's standard mode gives up after 3 (CONTRACT §14)
MAX_S3_MAX_ATTEMPTS = 50
# CONTRACT §15: how many steps one incremental run covers at most, oldest first; the
# rest waits for the next run (the result says how many are still behind).
DEFAULT_MAX_CATCH_UP = 1000
MAX_MAX_CATCH_UP = 1_000_000
# The longest Retry-After honoured (CONTRACT §14): an item asked to wait longer fails
# ``throttled`` at once, and no origin pause lasts longer. 900 s is a Lambda's life.
DEFAULT_MAX_RETRY_AFTER_S = 60.0
MAX_MAX_RETRY_AFTER_S = 900.0

DEFAULT_PACK_TARGET_MB = 64
# Level 1: on 9 KB JSON bodies about a third of level 6's CPU for a 28% lower ratio
# (docs/PERFORMANCE.md, "Packing"): CPU per item is what the run pays for; S3 bytes are cheap.
DEFAULT_PACK_GZIP_LEVEL = 1
MAX_PACK_TARGET_MB = 5 * 1024
PACK_KEY_FIELDS = frozenset({"source_id", "request_id", "first_index", "part", "step"})
PACK_KEY_TEMPLATES = {
    "gzip": "{source_id}/{request_id}-{first_index}-{part}.ndjson.gz",
    "none": "{source_id}/{request_id}-{first_index}-{part}.ndjson",
}

MIB = 1024 * 1024


class PackOptions(BaseModel):
    """``options.pack`` (CONTRACT §13): many responses share one NDJSON object."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    unit: Literal["response", "record"] = "response"
    target_mb: int = Field(DEFAULT_PACK_TARGET_MB, ge=1, le=MAX_PACK_TARGET_MB)
    compression: Literal["gzip", "none"] = "gzip"
    gzip_level: int = Field(DEFAULT_PACK_GZIP_LEVEL, ge=1, le=9)
    key_template: str | None = None

    @field_validator("key_template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"does not parse: {exc}") from None
        unknown = sorted(fields - PACK_KEY_FIELDS)
        if unknown:
            allowed = ", ".join(f"{{{name}}}" for name in sorted(PACK_KEY_FIELDS))
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {allowed}")
        if "part" not in fields and "step" not in fields:
            # {step}: one object per step of a date_range, named by it (CONTRACT §15).
            raise ValueError(
                "must contain {part} (or {step}), or rotated objects would overwrite each other"
            )
        return value

    @property
    def template(self) -> str:
        """The key template, defaulting by compression."""
        return self.key_template or PACK_KEY_TEMPLATES[self.compression]

    @property
    def target_bytes(self) -> int:
        """Rotation threshold in (compressed) bytes."""
        return self.target_mb * MIB


class Options(BaseModel):
    """Per-run options; every field can be set per event and per CLI flag."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=20)
    connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=300)
    read_timeout_s: float = Field(DEFAULT_READ_TIMEOUT_S, gt=0, le=900)
    # Not in CONTRACT §4's table: without a cap per attempt, a server dripping one
    # byte a second never trips the read timeout and holds a slot until the deadline.
    attempt_timeout_s: float = Field(DEFAULT_ATTEMPT_TIMEOUT_S, gt=0, le=900)
    rate_limit_per_s: float = Field(DEFAULT_RATE_LIMIT_PER_S, ge=0)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    part_size_mb: int = Field(DEFAULT_PART_SIZE_MB, ge=MIN_PART_SIZE_MB, le=MAX_PART_SIZE_MB)
    memory_budget_mb: int = Field(DEFAULT_MEMORY_BUDGET_MB, ge=1)
    deadline_margin_s: float = Field(DEFAULT_DEADLINE_MARGIN_S, ge=MIN_DEADLINE_MARGIN_S)
    compress: bool = False
    skip_existing: bool = False
    expect_json: bool = True
    fail_on_error: bool = False
    pack: PackOptions | None = None
    # CONTRACT §14: S3 writes retry SlowDown, 5xx and dropped connections this many
    # times (within the deadline); with ``adaptive`` on, each origin's concurrency,
    # pause and pace adapt when its throttled share says it is over its limit.
    s3_max_attempts: int = Field(DEFAULT_S3_MAX_ATTEMPTS, ge=1, le=MAX_S3_MAX_ATTEMPTS)
    adaptive: bool = True
    max_catch_up: int = Field(DEFAULT_MAX_CATCH_UP, ge=1, le=MAX_MAX_CATCH_UP)
    max_retry_after_s: float = Field(DEFAULT_MAX_RETRY_AFTER_S, ge=0, le=MAX_MAX_RETRY_AFTER_S)

    @model_validator(mode="after")
    def _budget_holds_a_part(self) -> Options:
        # A budget smaller than one part could never let a multipart body through.
        if self.memory_budget_mb < self.part_size_mb:
            raise ValueError(
                f"memory_budget_mb ({self.memory_budget_mb}) must be at least"
                f" part_size_mb ({self.part_size_mb})"
            )
        return self

    @property
    def part_size(self) -> int:
        """Multipart part size in bytes."""
        return self.part_size_mb * MIB

    @property
    def memory_budget(self) -> int:
        """Memory budget in bytes."""
        return self.memory_budget_mb * MIB
