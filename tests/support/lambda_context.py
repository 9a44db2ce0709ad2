"""A local stand-in for the Lambda context object, with a real deadline."""

from __future__ import annotations

import time
import uuid


class LocalContext:
    """What ``lambda_handler`` reads from its context."""

    function_name = "fanout-ingest-local"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:fanout-ingest-local"
    memory_limit_in_mb = 1024

    def __init__(self, timeout_s: float = 60.0, request_id: str | None = None) -> None:
        self.aws_request_id = request_id or str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the deadline, never negative."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))
