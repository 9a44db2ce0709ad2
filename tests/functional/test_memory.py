"""Peak memory of a large streamed body stays within the budget (a subprocess measures itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RAW_BUCKET
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
MARGIN_MIB = 24  # interpreter noise, botocore's part checksum copy, aiohttp buffers
CHILD = """
import json, sys
from handler.app import lambda_handler
from tests.support.lambda_context import LocalContext
result = lambda_handler(json.loads(sys.argv[1]), LocalContext(150, "mem"))
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
status = open("/proc/self/status").read()
peak = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
print("RESULT " + json.dumps({"status": result["status"], "bytes": result["bytes_written"],
                               "peak_kib": peak}))
"""


def run_child(event: dict[str, Any], s3: MotoS3) -> dict[str, Any]:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        "FANOUT_ALLOW_PRIVATE_NETWORKS": "true",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(event)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))


def test_48_mib_body_peak_rss_within_budget(s3: MotoS3, api_server: Any) -> None:
    # GIVEN a 48 MiB chunked JSON body and a one-item small body for the baseline
    body = b"[" + b"1," * (24 * MIB - 1) + b"1]"
    server = api_server(ScriptedAPI({"big": Response(body=body, chunked=True)}))
    api = {"endpoint": f"{server.url}/data", "raw_bucket": RAW_BUCKET, "source_id": "mem"}
    options = {"part_size_mb": 8, "memory_budget_mb": 64}
    # WHEN each runs in its own fresh process
    small = run_child(
        {"api_config": api, "query_params": {"date": "small"}, "options": options}, s3
    )
    big = run_child({"api_config": api, "query_params": {"date": "big"}, "options": options}, s3)
    # THEN the big one landed whole and grew peak RSS by at most the budget plus a margin
    assert small["status"] == big["status"] == "SUCCESS"
    assert s3.get_bytes(RAW_BUCKET, "mem/mem-0.json") == body
    growth_mib = (big["peak_kib"] - small["peak_kib"]) / 1024
    print(
        f"peak RSS: one small item {small['peak_kib'] / 1024:.0f} MiB, "
        f"48 MiB body {big['peak_kib'] / 1024:.0f} MiB, growth {growth_mib:.1f} MiB"
    )
    assert growth_mib <= 64 + MARGIN_MIB


MANY_ITEMS = 24
MANY_SIZE = 7 * MIB
MANY_BUDGET_MIB = 64


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compress"])
def test_many_concurrent_bodies_under_a_part_stay_within_budget(
    s3: MotoS3, api_server: Any, compress: bool
) -> None:
    # GIVEN 24 chunked 7 MiB JSON bodies (each under the 8 MiB part: one PUT each), all
    # fetched at once, a 64 MiB budget, and a one-item run for the baseline
    body = b"[" + b"0," * (MANY_SIZE // 2 - 1) + b"0]"
    dates = [f"d{i}" for i in range(MANY_ITEMS)]
    server = api_server(ScriptedAPI(default=Response(body=body, chunked=True)))
    api = {"endpoint": f"{server.url}/data", "raw_bucket": RAW_BUCKET, "source_id": "many"}
    options = {
        "concurrency": MANY_ITEMS,
        "memory_budget_mb": MANY_BUDGET_MIB,
        "compress": compress,
    }
    # WHEN each runs in its own fresh process
    small = run_child(
        {"api_config": api, "query_params": {"date": "small"}, "options": options}, s3
    )
    many = run_child(
        {"api_config": api, "batch": [{"date": d} for d in dates], "options": options}, s3
    )
    # THEN every body landed, and peak RSS grew by at most the budget plus the margin
    # (the uncompressed part kept for counting records, and each single-PUT body, were
    # once held outside the budget: up to one 7 MiB body per item in flight)
    assert small["status"] == many["status"] == "SUCCESS"
    assert many["bytes"] > 0
    growth_mib = (many["peak_kib"] - small["peak_kib"]) / 1024
    print(f"{MANY_ITEMS} x 7 MiB, compress={compress}: growth {growth_mib:.1f} MiB")
    assert growth_mib <= MANY_BUDGET_MIB + MARGIN_MIB
