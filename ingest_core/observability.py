"""Logs and metrics of one invocation (CONTRACT §9), from its result.

No header value ever reaches these: the result carries none, by construction.
Both pass registered secrets through the scrubber anyway: EMF metrics are
printed to stdout by Powertools, past the logging hook of ``ingest_core.redact``.
"""

from __future__ import annotations

import statistics
from typing import Any

from ingest_core.redact import scrub, scrub_value

SUMMARY_FIELDS = (
    "status",
    "requested",
    "succeeded",
    "failed",
    "not_attempted",
    "skipped_existing",
    "records_ingested",
    "bytes_written",
    "retries",
    "throttled",
    "adaptive",
    "duration_ms",
    "manifest_key",
    "failures_truncated",
)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The one summary log line's fields: counts and a histogram of failure kinds."""
    line = {name: result.get(name) for name in SUMMARY_FIELDS}
    kinds: dict[str, int] = {}
    for failure in result.get("failures", []):
        kinds[failure["kind"]] = kinds.get(failure["kind"], 0) + 1
    line["failure_kinds"] = kinds
    return scrub_value(line)


def publish_metrics(metrics: Any, result: dict[str, Any], latencies_ms: list[int]) -> None:
    """Record EMF metrics on a Powertools ``Metrics`` (dimension ``source_id``)."""
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_dimension(name="source_id", value=scrub(str(result["source_id"])))
    for name in ("succeeded", "failed", "not_attempted", "retries", "throttled"):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=result[name])
    metrics.add_metric(name="bytes", unit=MetricUnit.Bytes, value=result["bytes_written"])
    if result["records_ingested"] is not None:
        metrics.add_metric(name="records", unit=MetricUnit.Count, value=result["records_ingested"])
    if latencies_ms:
        metrics.add_metric(
            name="fetch_latency_p50",
            unit=MetricUnit.Milliseconds,
            value=statistics.median(latencies_ms),
        )
        metrics.add_metric(
            name="fetch_latency_max", unit=MetricUnit.Milliseconds, value=max(latencies_ms)
        )
