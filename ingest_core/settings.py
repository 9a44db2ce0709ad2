"""The process environment (CONTRACT §8), read in this one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ingest_core.netguard import NetPolicy

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class Settings:
    """What the operator configured for this process."""

    policy: NetPolicy = field(default_factory=NetPolicy)
    s3_endpoint_url: str | None = None
    lean_put: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``FANOUT_*`` and the S3 endpoint variables."""
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        lean = env.get("FANOUT_LEAN_PUT", "true").strip().lower() in TRUE_WORDS
        return cls(policy=NetPolicy.from_env(env), s3_endpoint_url=endpoint, lean_put=lean)
