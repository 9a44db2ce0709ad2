"""Packing in memory (CONTRACT §16): peak RSS grows by at most the budget + 32 MiB.

Issue 17 measured 8 items of 1 MB under a 16 MiB budget growing RSS by 260 MiB
with ``unit: record`` (the lines a unit makes were never counted), and 3x the
budget with binary bodies (``expect_json: false``). Each run is
its own process measuring its own high-water mark, against moto.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from tests.conftest import RAW_BUCKET
from tests.support.memory_child import run_child
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("allow_private")]

MIB = 1024 * 1024
ALLOWED_GROWTH_MIB = 32  # CONTRACT §16: RSS growth <= memory_budget_mb + 32 MiB
ITEMS = 8
BUDGET_MIB = 16
LAMBDA_S = 200  # the child's Lambda budget


RECORDS = [1] * MIB  # 2 MB of JSON; as record lines ~40x that
BINARY = random.Random(17).randbytes(MIB)  # not UTF-8: base64 in its line


@pytest.mark.parametrize(
    ("unit", "body", "expect_json"),
    [
        ("record", orjson.dumps(RECORDS), True),
        ("response", orjson.dumps(RECORDS), True),
        ("response", BINARY, False),
    ],
    ids=["record", "response", "binary"],
)
def test_packed_megabyte_items_under_a_16_mib_budget_stay_within_budget(
    s3: MotoS3, api_server: Any, unit: str, body: bytes, expect_json: bool
) -> None:
    # GIVEN 8 bodies of 1-2 MB (as record lines ~40x that; binary ones as base64), a
    # 16 MiB budget, all fetched at once, and a one-item run for the baseline
    server = api_server(ScriptedAPI(default=Response(body=body, chunked=True)))
    api = {"endpoint": f"{server.url}/data", "raw_bucket": RAW_BUCKET, "source_id": "mem"}
    options = {
        "concurrency": ITEMS,
        "memory_budget_mb": BUDGET_MIB,
        "part_size_mb": 5,
        "expect_json": expect_json,
        "pack": {"unit": unit},
    }
    small = run_child(
        {"api_config": api, "query_params": {"d": "x"}, "options": options}, s3, lambda_s=LAMBDA_S
    )
    # WHEN the 8 are packed, each run in its own fresh process
    batch = [{"d": str(i)} for i in range(ITEMS)]
    many = run_child({"api_config": api, "batch": batch, "options": options}, s3, lambda_s=LAMBDA_S)
    # THEN every item landed and peak RSS grew by at most the budget plus 32 MiB
    assert many["status"] == "SUCCESS"
    if unit == "record":
        assert many["records"] == ITEMS * len(RECORDS)
    growth_mib = (many["peak_kib"] - small["peak_kib"]) / 1024
    print(f"{ITEMS} x {len(body) / MIB:.1f} MB, unit {unit}: growth {growth_mib:.1f} MiB")
    assert growth_mib <= BUDGET_MIB + ALLOWED_GROWTH_MIB
