"""``fanout-ingest bench`` as a subprocess against a local API (and a local folder)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_cli import CLI
from tests.support.servers import Response, ScriptedAPI

pytestmark = pytest.mark.timeout(90)


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path)}
    return subprocess.run(
        [*CLI, "bench", "--allow-private-networks", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )


def test_bench_reports_each_level(tmp_path: Path, api_server: Any) -> None:
    # GIVEN an API answering in ~20 ms
    api = ScriptedAPI(default=Response(delay_s=0.02))
    server = api_server(api)
    # WHEN bench runs 60 requests at two levels, discarding bodies
    done = bench(
        tmp_path,
        "--endpoint",
        f"{server.url}/v1",
        "--query",
        "date=2025-01-01",
        "--requests",
        "60",
        "--concurrency",
        "2,16",
        "--json",
    )
    # THEN both levels are reported, every request succeeded, and more concurrency was faster
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["concurrency"] for r in rows] == [2, 16]
    assert all(r["succeeded"] == 60 and r["errors"] == {} for r in rows)
    assert rows[1]["items_per_s"] > rows[0]["items_per_s"]
    assert all(r["p50_ms"] >= 20 and r["cpu_us_per_item"] > 0 for r in rows)
    assert sum(api.hits.values()) == 120


def test_bench_counts_errors_and_writes_to_a_folder(tmp_path: Path, api_server: Any) -> None:
    # GIVEN an API that always answers 503
    server = api_server(ScriptedAPI(default=Response(status=503)))
    # WHEN bench runs into a local folder with one attempt per request
    done = bench(
        tmp_path,
        "--endpoint",
        f"{server.url}/v1",
        "--requests",
        "10",
        "--concurrency",
        "4",
        "--dest",
        str(tmp_path / "out"),
    )
    # THEN it exits 1 and the table shows the errors by kind
    assert done.returncode == 1
    assert "http_status:10" in done.stdout


def test_bench_bad_levels_exit_2(tmp_path: Path) -> None:
    done = bench(tmp_path, "--endpoint", "https://api.example.com", "--concurrency", "8,x")
    assert done.returncode == 2 and "--concurrency" in done.stderr
