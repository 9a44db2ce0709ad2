"""AWS Lambda adapter: event -> job -> engine -> response. Deliberately thin.

Event loop: the Lambda runtime calls this function synchronously, one event at a
time. One ``asyncio.Runner`` lives for the whole process, so warm invocations
reuse its loop; the aioboto3 session (costly to build) is module state in
``ingest_core.runtime``, while clients and pools are made per run because their
size follows the event's ``concurrency``.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

from ingest_core import (
    InvalidEventError,
    PartialFailureError,
    StateError,
    parse_event,
    resolve_secret_headers,
)
from ingest_core.loops import loop_factory
from ingest_core.observability import publish_metrics, summary
from ingest_core.redact import scrub_exception, scrub_value
from ingest_core.runtime import S3ClientPool, execute

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "fanout-ingest")
logger = Logger(service=SERVICE)
# The engine logs through stdlib loggers; give them the same JSON format and keys.
copy_config_to_registered_loggers(
    source_logger=logger,
    include={name for name in logging.root.manager.loggerDict if name.startswith("ingest_core")},
)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "FanoutIngest"))
_runner = asyncio.Runner(loop_factory=loop_factory())  # uvloop where it imports (loops.py)
_pool = S3ClientPool()  # lives as long as _runner's loop

# Garbage collection (docs/PERFORMANCE.md, "Decision: garbage collection"): the
# modules imported above are ~45,000 objects that live as long as the process;
# frozen, no collection walks them again (no gc.collect() first: it cost 40-80 ms
# of cold start, for a few KB of import-time garbage). A run allocates a few dozen
# short-lived containers per item, so at the default gen-0 threshold (700) a
# collection ran every ~20 items; at this threshold one runs every ~500 items.
GC_GEN0_THRESHOLD = 10_000
gc.freeze()
gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


@atexit.register
def _close() -> None:  # pragma: no cover - runs at interpreter exit
    """Close pooled clients cleanly when a local process (CLI, tests) exits."""
    _runner.run(_pool.aclose())
    _runner.close()


@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Ingest one event; returns the result of CONTRACT §6 or raises ``IngestError``."""
    try:
        return _ingest(event, context)
    except Exception as exc:
        scrub_exception(exc)  # the runtime prints it and Step Functions keeps it
        raise


def _ingest(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        job = parse_event(event, default_request_id=getattr(context, "aws_request_id", None))
    except InvalidEventError:
        metrics.add_metric(name="invalid_events", unit=MetricUnit.Count, value=1)
        raise
    logger.append_keys(request_id=job.request_id, source_id=job.api.source_id)
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
    headers = {**job.api.headers, **resolve_secret_headers(job.api.secret_headers)}
    try:
        outcome = _runner.run(execute(job, headers=headers, deadline=deadline, pool=_pool))
    except StateError:  # an incremental run's watermark is unusable: say so, never reset it
        metrics.add_metric(name="state_errors", unit=MetricUnit.Count, value=1)
        raise
    result = scrub_value(outcome.result)  # what leaves for Step Functions (and below)
    publish_metrics(metrics, result, outcome.latencies_ms)
    logger.info("ingest summary", extra=summary(result))
    if job.options.fail_on_error and result["status"] != "SUCCESS":
        raise PartialFailureError(result)
    return result
