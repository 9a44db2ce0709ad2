"""Peak memory of a large streamed body stays within the budget (a subprocess measures itself)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RAW_BUCKET
from tests.support.memory_child import run_child
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024
MARGIN_MIB = 24  # interpreter noise, botocore's part checksum copy, aiohttp buffers
LAMBDA_S = 150  # the child's Lambda budget


def test_48_mib_body_peak_rss_within_budget(s3: MotoS3, api_server: Any) -> None:
    # GIVEN a 48 MiB chunked JSON body and a one-item small body for the baseline
    body = b"[" + b"1," * (24 * MIB - 1) + b"1]"
    server = api_server(ScriptedAPI({"big": Response(body=body, chunked=True)}))
    api = {"endpoint": f"{server.url}/data", "raw_bucket": RAW_BUCKET, "source_id": "mem"}
    options = {"part_size_mb": 8, "memory_budget_mb": 64}
    # WHEN each runs in its own fresh process
    small = run_child(
        {"api_config": api, "query_params": {"date": "small"}, "options": options},
        s3,
        lambda_s=LAMBDA_S,
    )
    big = run_child(
        {"api_config": api, "query_params": {"date": "big"}, "options": options},
        s3,
        lambda_s=LAMBDA_S,
    )
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
        {"api_config": api, "query_params": {"date": "small"}, "options": options},
        s3,
        lambda_s=LAMBDA_S,
    )
    many = run_child(
        {"api_config": api, "batch": [{"date": d} for d in dates], "options": options},
        s3,
        lambda_s=LAMBDA_S,
    )
    # THEN every body landed, and peak RSS grew by at most the budget plus the margin
    # (the uncompressed part kept for counting records, and each single-PUT body, were
    # once held outside the budget: up to one 7 MiB body per item in flight)
    assert small["status"] == many["status"] == "SUCCESS"
    assert many["bytes"] > 0
    growth_mib = (many["peak_kib"] - small["peak_kib"]) / 1024
    print(f"{MANY_ITEMS} x 7 MiB, compress={compress}: growth {growth_mib:.1f} MiB")
    assert growth_mib <= MANY_BUDGET_MIB + MARGIN_MIB
