"""A real lake engine reads packed output (issue 10): DuckDB over both pack units.

The packs are written by the Lambda handler into moto and downloaded, and by the
engine into a local folder (as ``backfill --dest ./lake`` does); DuckDB then runs the
queries docs/LAKE.md shows, and the answers are checked against the API's bodies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from handler.app import lambda_handler
from ingest_core import LocalDirWriter, parse_event, run_job
from ingest_core.netguard import NetPolicy
from ingest_core.settings import Settings
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.reliability import SOURCE, event_for
from tests.support.servers import MotoS3, Response, ScriptedAPI

duckdb = pytest.importorskip("duckdb", reason="duckdb is in the dev extra")

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

DAYS = 30


def body(day: int) -> dict[str, Any]:
    """Day ``day``'s answer: ``day % 7 + 1`` readings under data.items."""
    readings = [
        {"station": f"S{j}", "temp_c": round(day * 0.5 + j, 1), "ok": j % 2 == 0}
        for j in range(day % 7 + 1)
    ]
    return {"date": f"2025-01-{day + 1:02d}", "data": {"items": readings}}


def api() -> ScriptedAPI:
    return ScriptedAPI({str(d): Response(body=orjson.dumps(body(d))) for d in range(DAYS)})


def packed_event(url: str, unit: str, request_id: str) -> dict[str, Any]:
    return event_for(
        f"{url}/v1/data",
        batch=[{"date": str(d)} for d in range(DAYS)],
        request_id=request_id,
        records_path="data.items",
        options={"pack": {"unit": unit, "target_mb": 1}},
    )


def expected_readings() -> list[dict[str, Any]]:
    return [r for d in range(DAYS) for r in body(d)["data"]["items"]]


def download(s3: MotoS3, prefix: str, into: Path) -> None:
    for key in s3.list_keys(RAW_BUCKET, prefix):
        path = into / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_bytes(RAW_BUCKET, key))


def test_duckdb_reads_response_packs_from_s3_as_the_api_answered(
    s3: MotoS3, api_server: Any, tmp_path: Path
) -> None:
    # GIVEN a response-unit pack written to S3 (moto) and downloaded
    url = api_server(api()).url
    result = lambda_handler(packed_event(url, "response", "lake-resp"), LocalContext(timeout_s=60))
    assert result["status"] == "SUCCESS", result["failures"]
    download(s3, f"{SOURCE}/lake-resp-", tmp_path)
    files = str(tmp_path / SOURCE / "lake-resp-*.ndjson.gz")
    con = duckdb.connect()
    # WHEN DuckDB counts pages and the records inside their bodies (LAKE.md's queries)
    pages = con.execute(f"SELECT count(*) FROM read_json('{files}')").fetchone()
    readings = con.execute(
        f"SELECT count(*), round(sum(r.temp_c), 1) FROM"
        f" (SELECT unnest(body.data.items) AS r FROM read_json('{files}'))"
    ).fetchone()
    day_12 = con.execute(
        f"SELECT params.date, status, CAST(body.date AS VARCHAR), len(body.data.items)"
        f" FROM read_json('{files}') WHERE index = 12"
    ).fetchall()
    # THEN one row per page, every record of every body, and the values the API served
    expected = expected_readings()
    assert pages == (DAYS,)
    assert readings == (len(expected), round(sum(r["temp_c"] for r in expected), 1))
    assert readings[0] == result["records_ingested"]
    assert day_12 == [("12", 200, body(12)["date"], len(body(12)["data"]["items"]))]


def test_duckdb_reads_record_packs_from_a_local_folder_one_row_per_record(
    api_server: Any, tmp_path: Path
) -> None:
    # GIVEN a record-unit pack written into a local folder by the engine
    url = api_server(api()).url
    job = parse_event(
        packed_event(url, "record", "lake-rec"), policy=NetPolicy(allow_private_networks=True)
    )
    settings = Settings(policy=NetPolicy(allow_private_networks=True))
    outcome = asyncio.run(run_job(job, writer=LocalDirWriter(tmp_path), settings=settings))
    assert outcome.result["status"] == "SUCCESS"
    files = str(tmp_path / SOURCE / "lake-rec-*.ndjson.gz")
    con = duckdb.connect()
    # WHEN DuckDB reads the records, grouping by the item each came from
    total = con.execute(
        f"SELECT count(*), count(DISTINCT _fanout.index) FROM read_json('{files}')"
    ).fetchone()
    per_item = con.execute(
        "SELECT _fanout.index AS i, count(*) AS n,"
        " bool_and(ok = (station IN ('S0', 'S2', 'S4', 'S6')))"
        f" FROM read_json('{files}') GROUP BY i ORDER BY i"
    ).fetchall()
    warmest = con.execute(
        f"SELECT station, temp_c, _fanout.index FROM read_json('{files}')"
        f" ORDER BY temp_c DESC, station LIMIT 1"
    ).fetchone()
    # THEN one row per record, each item's records, and the values the API served
    expected = expected_readings()
    assert total == (len(expected), DAYS)
    assert per_item == [(d, d % 7 + 1, True) for d in range(DAYS)]
    best = max(
        ((r["temp_c"], r["station"], d) for d in range(DAYS) for r in body(d)["data"]["items"]),
        key=lambda t: (t[0], [-ord(c) for c in t[1]]),
    )
    assert warmest == (best[1], best[0], best[2])


# ------------------------------------------------------------- lossless packs (issue 17)

BIG_IDS = [18446744073709551617 + n for n in range(3)]  # beyond 64 bits; a double rounds them


def test_duckdb_reads_big_integers_and_wrapped_scalars_of_a_record_pack_exactly(
    api_server: Any, tmp_path: Path
) -> None:
    # GIVEN record packs of ids beyond 64 bits, beside a record {"value": 5} and a scalar 5
    body = b'{"items":[' + b",".join(b'{"id":%d}' % n for n in BIG_IDS) + b',{"value":5},5]}'
    url = api_server(ScriptedAPI({"0": Response(body=body)})).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": "0"}],
        request_id="lake-exact",
        records_path="items",
        options={"pack": {"unit": "record"}},
    )
    job = parse_event(event, policy=NetPolicy(allow_private_networks=True))
    settings = Settings(policy=NetPolicy(allow_private_networks=True))
    outcome = asyncio.run(run_job(job, writer=LocalDirWriter(tmp_path), settings=settings))
    assert outcome.result["status"] == "SUCCESS"
    files = str(tmp_path / SOURCE / "lake-exact-*.ndjson.gz")
    con = duckdb.connect()
    # WHEN DuckDB reads the ids as declared columns (LAKE.md: "Numbers")
    ids = con.execute(
        f"SELECT CAST(id AS VARCHAR) FROM read_json('{files}', columns={{id: 'HUGEINT'}})"
        " WHERE id IS NOT NULL ORDER BY id"
    ).fetchall()
    # AND tells wrapped scalars from records that were {"value": ...}
    values = con.execute(
        f"SELECT value, coalesce(_fanout.wrapped, false) FROM read_json('{files}',"
        " columns={value: 'BIGINT', _fanout: 'STRUCT(index BIGINT, wrapped BOOLEAN)'})"
        " WHERE value IS NOT NULL ORDER BY 2"
    ).fetchall()
    # THEN every digit is the API's, and the two 5s are told apart
    assert ids == [(str(n),) for n in BIG_IDS]
    assert values == [(5, False), (5, True)]


def test_duckdb_decodes_a_base64_body_from_s3_to_the_bytes_the_api_sent(
    s3: MotoS3, api_server: Any, tmp_path: Path
) -> None:
    # GIVEN a response pack in S3 of a body that is not UTF-8 (expect_json off)
    raw = b"\xff\xd8\xff\xe0 not text \x00\x80"
    script = {"0": Response(body=raw, headers={"Content-Type": "image/jpeg"})}
    url = api_server(ScriptedAPI(script)).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": "0"}],
        request_id="lake-bin",
        options={"expect_json": False, "pack": {"unit": "response"}},
    )
    result = lambda_handler(event, LocalContext(timeout_s=60))
    assert result["status"] == "SUCCESS", result["failures"]
    download(s3, f"{SOURCE}/lake-bin-", tmp_path)
    files = str(tmp_path / SOURCE / "lake-bin-*.ndjson.gz")
    # WHEN DuckDB decodes the bodies flagged base64 (LAKE.md: "Bodies that are not JSON")
    rows = (
        duckdb.connect()
        .execute(
            "SELECT from_base64(body) FROM read_json("
            f"'{files}', columns={{body_encoding: 'VARCHAR', body: 'VARCHAR'}})"
            " WHERE body_encoding = 'base64'"
        )
        .fetchall()
    )
    # THEN it has the API's bytes, every one
    assert rows == [(raw,)]


def test_duckdb_counts_each_item_once_after_a_rerun_in_fewer_parts(
    api_server: Any, tmp_path: Path
) -> None:
    # GIVEN a response pack of 12 items of ~300 KB in 3 parts, then the same batch again
    # with small bodies that fit in 1 part (a re-run under the same request id)
    def run_once(pad: int) -> None:
        script = {
            str(n): Response(body=orjson.dumps({"n": n, "pad": "p" * pad})) for n in range(12)
        }
        url = api_server(ScriptedAPI(script)).url
        event = event_for(
            f"{url}/v1/data",
            batch=[{"date": str(n)} for n in range(12)],
            request_id="lake-rerun",
            options={"concurrency": 1, "pack": {"target_mb": 1, "compression": "none"}},
        )
        job = parse_event(event, policy=NetPolicy(allow_private_networks=True))
        settings = Settings(policy=NetPolicy(allow_private_networks=True))
        outcome = asyncio.run(run_job(job, writer=LocalDirWriter(tmp_path), settings=settings))
        assert outcome.result["status"] == "SUCCESS"

    run_once(300_000)
    assert len(list((tmp_path / SOURCE).glob("lake-rerun-*"))) == 3
    run_once(10)
    # WHEN DuckDB reads every pack under the prefix (LAKE.md, "Re-runs and stale parts")
    files = str(tmp_path / SOURCE / "lake-rerun-*.ndjson")
    counted = (
        duckdb.connect()
        .execute(
            "SELECT count(*), count(DISTINCT index), max(length(body.pad))"
            f" FROM read_json('{files}')"
        )
        .fetchone()
    )
    # THEN each item is counted once, with the re-run's body (not the earlier run's too)
    assert counted == (12, 12, 10)
