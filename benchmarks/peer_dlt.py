"""dlt as a benchmark peer: the tool a user might pick instead (issue 13).

One request per date the way dlt's docs describe it for the REST API source: a
parent resource yields the dates, a dependent ``rest_api`` resource resolves its
``date`` query parameter from each, with ``parallelized`` on (each parent item's
request runs in dlt's extract thread pool, ``EXTRACT__WORKERS`` threads), and
``rest_api_source(..., parallelized=True)``. Destination: dlt's ``filesystem``
on the same S3 server as fanout-ingest (s3fs underneath), jsonl files.

What it writes is not what fanout-ingest writes: dlt parses every response,
normalises each record into rows of its own jsonl load files (gzip), and adds
its schema, state and load markers; fanout-ingest keeps each raw response as one
object and one manifest line. Installed only with the ``bench`` extra.
"""

from __future__ import annotations

import os
import resource
import tempfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from benchmarks.peers import API_HEADERS, Outcome, Unavailable, WorkerSpec, item_params

DLT_PREFIX = "dlt"  # bucket prefix of every dlt dataset; datasets are named by run id
TABLE = "days"
DATES_PAGE = 100


def dataset_name(run_id: str) -> str:
    """dlt's dataset (a folder under ``dlt/``) for one run; dlt wants snake_case."""
    return "r_" + "".join(ch if ch.isalnum() else "_" for ch in run_id.lower())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dlt_rest_api(spec: WorkerSpec) -> Callable[[str, int], Outcome]:
    """A runner: ``run(run_id, count)`` loads ``count`` dates through dlt into S3."""
    try:
        import dlt
        from dlt.destinations import filesystem
        from dlt.sources.rest_api import rest_api_source
    except ImportError as exc:
        raise Unavailable(f"dlt is not installed (pip install -e '.[bench]'): {exc}") from exc

    workers = str(spec.concurrency)
    os.environ.setdefault("EXTRACT__WORKERS", workers)  # threads for parallelized resources
    os.environ.setdefault("LOAD__WORKERS", workers)  # parallel file uploads
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    parts = urlsplit(spec.api_url)
    base_url, path = f"{parts.scheme}://{parts.netloc}/", parts.path.lstrip("/")
    credentials = {
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": os.environ.get("AWS_SESSION_TOKEN"),
        "region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "endpoint_url": spec.s3_url,
    }
    pipelines_dir = tempfile.mkdtemp(prefix="bench-dlt-")

    def run(run_id: str, count: int) -> Outcome:
        @dlt.resource(name="dates", selected=False)
        def dates() -> Iterator[list[dict[str, Any]]]:
            # In pages, as rest_api parents yield them: a dependent resource iterates each.
            for start in range(0, count, DATES_PAGE):
                stop = min(count, start + DATES_PAGE)
                yield [{"date": item_params(index)["date"]} for index in range(start, stop)]

        source = rest_api_source(
            {
                "client": {"base_url": base_url, "headers": dict(API_HEADERS)},
                "resource_defaults": {"write_disposition": "append"},
                "resources": [
                    dates,
                    {
                        "name": TABLE,
                        "parallelized": True,
                        "endpoint": {
                            "path": path,
                            "params": {"date": "{resources.dates.date}"},
                            "paginator": "single_page",
                        },
                    },
                ],
            },
            parallelized=True,
        )
        pipeline = dlt.pipeline(
            pipeline_name=dataset_name(run_id),
            destination=filesystem(
                bucket_url=f"s3://{spec.bucket}/{DLT_PREFIX}", credentials=credentials
            ),
            dataset_name=dataset_name(run_id),
            pipelines_dir=pipelines_dir,
        )
        children_before = _children_cpu()
        info = pipeline.run(source)
        outcome = Outcome()
        rows = pipeline.last_trace.last_normalize_info.row_counts.get(TABLE, 0)
        outcome.detail = {
            "rows": rows,
            "children_cpu_s": _children_cpu() - children_before,
            "loads": len(info.loads_ids),
            "failed_jobs": info.has_failed_jobs,
        }
        if info.has_failed_jobs:
            outcome.fail(f"dlt load has failed jobs: {info}"[:300])
        else:
            outcome.succeeded = count
        return outcome

    return run
