"""A reader of packed incremental runs sees each day exactly once (docs/LAKE.md).

Two incremental runs into a local folder, a day failing in the first and fetched
again by the second; then the DuckDB query of docs/LAKE.md over the folder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ingest_core import parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.runtime import execute
from tests.support.servers import DEFAULT_RECORDS, Response, ScriptedAPI

duckdb = pytest.importorskip("duckdb")

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("allow_private")]

# The query of docs/LAKE.md, "Incremental runs: one object per step", with the
# distinct objects counted too.
QUERY = r"""
    SELECT regexp_extract(filename, '(\d{4}-\d{2}-\d{2})\.ndjson\.gz$', 1) AS day,
           count(*) AS readings, count(DISTINCT filename) AS objects
    FROM read_json('{glob}', filename = true)
    GROUP BY day ORDER BY day
"""


def jan(day: int) -> str:
    return f"2024-01-{day:02d}"


def test_duckdb_reads_each_day_of_packed_incremental_runs_once(
    tmp_path: Path, api_server: Any
) -> None:
    # GIVEN ten days, the 4th failing once, packed incrementally into a folder
    server = api_server(ScriptedAPI({jan(4): [Response(status=500), Response()]}))
    event = {
        "api_config": {
            "endpoint": f"{server.url}/v1/data",
            "raw_bucket": "local-folder",
            "source_id": "weather-daily",
        },
        "options": {"max_attempts": 1, "pack": {"unit": "record"}},
        "date_range": {"start": jan(1), "end": jan(10), "incremental": True},
    }
    policy = NetPolicy(allow_private_networks=True)
    # WHEN two runs go (the second fetches the 4th again)
    for run in ("run-1", "run-2"):
        job = parse_event(event, default_request_id=run, policy=policy)
        asyncio.run(execute(job, local_dir=tmp_path))
    # THEN the documented query sees every day once: one object, one copy of its records
    glob = str(tmp_path / "weather-daily" / "*.ndjson.gz")
    rows = duckdb.connect().execute(QUERY.replace("{glob}", glob)).fetchall()
    assert rows == [(jan(d), DEFAULT_RECORDS, 1) for d in range(1, 11)]
