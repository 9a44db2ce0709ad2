"""Packing (issue 10, CONTRACT §13) against a local API and moto, over the network.

Every test checks the account as well as the bytes: each succeeded item's lines are
exactly where its manifest line says, in an object that exists; a failed item's
object does not exist; no multipart upload is left open; the counts add up.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from handler.app import lambda_handler
from ingest_core import LocalDirWriter, parse_event, run_job
from ingest_core.cli import main
from ingest_core.netguard import NetPolicy
from ingest_core.settings import Settings
from tests.conftest import RAW_BUCKET
from tests.support.faults import S3FaultProxy
from tests.support.lambda_context import LocalContext
from tests.support.paged_api import PagedAPI
from tests.support.reliability import SOURCE, assert_counts, event_for, served_body
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

MiB = 1024 * 1024
S3_MAX_ATTEMPTS = 3  # options.s3_max_attempts for the failing-part test (default 10)


def run(event: dict[str, Any], timeout_s: float = 60) -> tuple[dict[str, Any], LocalContext]:
    context = LocalContext(timeout_s=timeout_s)
    return lambda_handler(event, context), context


def manifest(s3: MotoS3, result: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    raw = s3.get_bytes(RAW_BUCKET, result["manifest_key"])
    return {line["index"]: line for line in map(orjson.loads, raw.splitlines())}


def object_lines(s3: MotoS3, key: str) -> list[bytes]:
    data = s3.get_bytes(RAW_BUCKET, key)
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    return data.splitlines()


def lines_of(s3: MotoS3, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The item's lines, by first line and line count, from its object."""
    lines = object_lines(s3, entry["key"])
    span = entry["pack"]
    return [
        orjson.loads(line)
        for line in lines[span["first_line"] : span["first_line"] + span["line_count"]]
    ]


def lines_by_range(s3: MotoS3, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The item's lines read the way ``show`` does: from its offset, skip, length."""
    data = s3.get_bytes(RAW_BUCKET, entry["key"])
    span = entry["pack"]
    tail = data[span["offset"] :]
    if entry["key"].endswith(".gz"):
        tail = zlib.decompressobj(31 if span["offset"] == 0 else -15).decompress(tail)
    piece = tail[span["skip"] : span["skip"] + span["length"]]
    return [orjson.loads(line) for line in piece.splitlines()]


def assert_pack_account(s3: MotoS3, result: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Counts add up, failed items name no existing object, none left open; the manifest."""
    assert_counts(result)
    entries = manifest(s3, result)
    assert len(entries) == result["requested"]
    keys = set(s3.list_keys(RAW_BUCKET))
    for index, entry in entries.items():
        if entry["status"] == "written":
            assert entry["key"] in keys, entry
        elif entry["key"] is not None and entry.get("kind") == "s3_error":
            assert entry["key"] not in keys, f"item {index} failed but its object exists"
    assert s3.incomplete_uploads(RAW_BUCKET) == []
    return entries


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_response_unit_packs_every_page_once_with_its_body_unchanged(
    s3: MotoS3, api_server: Any, compression: str
) -> None:
    # GIVEN 40 items of a JSON API and a pack of unit response
    url = api_server(ScriptedAPI()).url
    batch = [{"date": f"2025-01-{day:02d}", "n": day} for day in range(40)]
    event = event_for(
        f"{url}/v1/data",
        batch=batch,
        request_id="pack-resp",
        options={"pack": {"unit": "response", "compression": compression}},
    )
    # WHEN the handler runs it
    result, _ = run(event)
    # THEN every item is in one object, its line holds the body as JSON and its provenance
    assert result["status"] == "SUCCESS", result["failures"]
    entries = assert_pack_account(s3, result)
    suffix = ".ndjson.gz" if compression == "gzip" else ".ndjson"
    packs = [k for k in s3.list_keys(RAW_BUCKET) if "_manifests" not in k]
    assert packs == [f"{SOURCE}/pack-resp-0-0{suffix}"]
    assert len(object_lines(s3, packs[0])) == 40
    for index, params in enumerate(batch):
        [line] = lines_of(s3, entries[index])
        assert lines_by_range(s3, entries[index]) == [line]
        assert line["index"] == index and line["page"] == 0
        assert line["params"] == params
        assert line["status"] == 200
        assert line["content_type"].startswith("application/json")
        assert line["body"] == orjson.loads(served_body(params))
        assert line["fetched_at"].endswith("Z")
        assert entries[index]["records"] == len(line["body"])
    assert result["records_ingested"] == sum(e["records"] for e in entries.values())
    assert result["bytes_written"] == s3.head(RAW_BUCKET, packs[0])["ContentLength"]


def test_record_unit_writes_one_line_per_record_with_provenance(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN bodies {"data": {"items": [...]}} and a pack of unit record at that path
    def body(n: int) -> bytes:
        return orjson.dumps({"data": {"items": [{"id": n, "k": i} for i in range(n)]}})

    script = {str(n): Response(body=body(n)) for n in range(6)}
    url = api_server(ScriptedAPI(script)).url
    batch = [{"date": str(n)} for n in range(6)]
    event = event_for(
        f"{url}/v1/data",
        batch=batch,
        request_id="pack-rec",
        records_path="data.items",
        options={"pack": {"unit": "record"}},
    )
    # WHEN it runs
    result, _ = run(event)
    # THEN item n has n lines, each a record plus _fanout, and 0 + 1 + ... + 5 records in all
    assert result["status"] == "SUCCESS", result["failures"]
    entries = assert_pack_account(s3, result)
    assert result["records_ingested"] == 15
    for n in range(6):
        lines = lines_of(s3, entries[n])
        assert entries[n]["pack"]["line_count"] == n
        assert [{k: v for k, v in line.items() if k != "_fanout"} for line in lines] == [
            {"id": n, "k": i} for i in range(n)
        ]
        assert all(line["_fanout"]["index"] == n for line in lines)
        assert all(line["_fanout"]["page"] == 0 for line in lines)


def test_rotation_at_target_and_multipart_parts_while_filling(s3: MotoS3, api_server: Any) -> None:
    # GIVEN 24 bodies of ~1 MiB, uncompressed packs, 5 MiB parts and a 6 MiB target
    big = {str(n): Response(body=orjson.dumps({"n": n, "pad": "x" * MiB})) for n in range(24)}
    url = api_server(ScriptedAPI(big)).url
    batch = [{"date": str(n)} for n in range(24)]
    event = event_for(
        f"{url}/v1/data",
        batch=batch,
        request_id="pack-rot",
        options={
            "concurrency": 4,
            "part_size_mb": 5,
            "memory_budget_mb": 24,
            "pack": {"compression": "none", "target_mb": 6},
        },
    )
    # WHEN it runs
    result, _ = run(event)
    # THEN objects rotate after about 6 MiB (so 4 objects), each item wholly in one
    assert result["status"] == "SUCCESS", result["failures"]
    entries = assert_pack_account(s3, result)
    packs = sorted({e["key"] for e in entries.values()})
    assert packs == [f"{SOURCE}/pack-rot-0-{part}.ndjson" for part in range(4)]
    for n in range(24):
        [line] = lines_by_range(s3, entries[n])
        assert line["body"]["n"] == n


def test_a_part_that_fails_for_good_fails_exactly_the_items_of_its_object(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN ~1 MiB bodies, 5 MiB parts, 6 MiB objects, and the first UploadPart failing
    # on every attempt the SDK makes (then S3 recovers)
    big = {str(n): Response(body=orjson.dumps({"n": n, "pad": "y" * MiB})) for n in range(12)}
    url = api_server(ScriptedAPI(big)).url
    s3_proxy.inject("UploadPart", "internal_error", times=S3_MAX_ATTEMPTS)
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(12)],
        request_id="pack-partfail",
        options={
            "concurrency": 1,
            "part_size_mb": 5,
            "memory_budget_mb": 24,
            "pack": {"compression": "none", "target_mb": 6},
            "s3_max_attempts": S3_MAX_ATTEMPTS,
        },
    )
    # WHEN it runs
    result, _ = run(event)
    # THEN the items of that object failed as s3_error, the others landed
    entries = assert_pack_account(s3, result)
    failed = {i for i, e in entries.items() if e["status"] == "failed"}
    assert failed, result
    assert all(entries[i]["kind"] == "s3_error" for i in failed)
    failed_keys = {entries[i]["key"] for i in failed}
    assert len(failed_keys) == 1
    held = [i for i, e in entries.items() if e["key"] in failed_keys]
    assert sorted(held) == sorted(failed)
    assert s3_proxy.pending() == {}
    for index, entry in entries.items():
        if entry["status"] == "written":
            [line] = lines_by_range(s3, entry)
            assert line["body"]["n"] == index


def test_a_complete_answering_200_with_an_error_fails_its_items(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN one multipart object whose CompleteMultipartUpload answers 200 with an error
    # inside on every attempt
    big = {str(n): Response(body=orjson.dumps({"n": n, "pad": "z" * MiB})) for n in range(7)}
    url = api_server(ScriptedAPI(big)).url
    s3_proxy.inject("CompleteMultipartUpload", "error_in_200", times=S3_MAX_ATTEMPTS)
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(7)],
        request_id="pack-complete200",
        options={
            "concurrency": 2,
            "part_size_mb": 5,
            "memory_budget_mb": 24,
            "pack": {"compression": "none"},
            "s3_max_attempts": S3_MAX_ATTEMPTS,
        },
    )
    # WHEN it runs
    result, _ = run(event)
    # THEN every item held by the object failed as s3_error and nothing is under its key
    assert result["status"] == "FAILED", result
    entries = assert_pack_account(s3, result)
    assert {e["kind"] for e in entries.values()} == {"s3_error"}
    assert "CompleteMultipartUpload" in result["failures"][0]["error"]
    assert [k for k in s3.list_keys(RAW_BUCKET) if "_manifests" not in k] == []


def test_the_deadline_mid_object_completes_the_open_object(s3: MotoS3, api_server: Any) -> None:
    # GIVEN 6 fast ~1 MiB items (one 5 MiB part goes up while the object fills) and
    # 4 items that stall past the deadline
    script: dict[str, Any] = {
        str(n): Response(body=orjson.dumps({"n": n, "pad": "d" * MiB})) for n in range(6)
    }
    script.update({str(n): Response(delay_s=60) for n in range(6, 10)})
    url = api_server(ScriptedAPI(script)).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(10)],
        request_id="pack-deadline",
        options={
            "concurrency": 10,
            "part_size_mb": 5,
            "memory_budget_mb": 24,
            "deadline_margin_s": 4,
            "pack": {"compression": "none"},
        },
    )
    # WHEN the Lambda has 10 s
    result, context = run(event, timeout_s=10)
    # THEN the fast items are in a completed object, the stalled ones not attempted
    assert context.get_remaining_time_in_millis() > 0
    entries = assert_pack_account(s3, result)
    assert result["succeeded"] == 6 and result["not_attempted"] == 4, result
    [key] = {entries[n]["key"] for n in range(6)}
    assert s3.head(RAW_BUCKET, key)["ETag"].strip('"').endswith("-2")  # a multipart object
    for n in range(6):
        [line] = lines_by_range(s3, entries[n])
        assert line["body"]["n"] == n
    assert all(entries[n]["kind"] == "deadline" for n in range(6, 10))


def test_a_retried_map_batch_overwrites_its_own_objects(s3: MotoS3, api_server: Any) -> None:
    # GIVEN one Distributed Map batch (global indexes 100-109), run twice
    url = api_server(ScriptedAPI()).url
    event = {
        "BatchInput": {
            "api_config": {
                "endpoint": f"{url}/v1/data",
                "raw_bucket": RAW_BUCKET,
                "source_id": SOURCE,
            },
            "options": {"pack": {"unit": "response"}},
            "request_id": "exec-1",
        },
        "Items": [{"index": 100 + n, "params": {"date": str(n)}} for n in range(10)],
    }
    # WHEN it runs twice
    first, _ = run(event)
    second, _ = run(event)
    # THEN both runs wrote the same object key: the retry replaced, not added
    assert first["status"] == second["status"] == "SUCCESS"
    packs = [k for k in s3.list_keys(RAW_BUCKET) if "_manifests" not in k]
    assert packs == [f"{SOURCE}/exec-1-100-0.ndjson.gz"]
    assert len(object_lines(s3, packs[0])) == 10


# ------------------------------------------------------------- lossless packs (issue 17)

# 2**64 + 1 (a double reads it as 2**64), a 17-digit fraction, and 1.10 as written
EXACT = b'{"id":18446744073709551617,"p":0.12345678901234567,"f":1.10}'
FIDELITY_BODIES = {
    "0": Response(body=b'{"items":[' + EXACT + b',{"value":5},5]}'),
    # NDJSON whose lines are arrays (it packed as 0 records)
    "1": Response(body=b'[1,"a"]\n[2,"b"]\n', headers={"Content-Type": "application/x-ndjson"}),
}


def show_item(capsysbinary: pytest.CaptureFixture[bytes], manifest: str, index: int) -> bytes:
    capsysbinary.readouterr()
    assert main(["show", manifest, "--index", str(index)]) == 0
    return capsysbinary.readouterr().out


@pytest.mark.parametrize("unit", ["response", "record"])
def test_packs_keep_numbers_scalars_and_ndjson_arrays_as_the_api_sent_them(
    s3: MotoS3, api_server: Any, capsysbinary: pytest.CaptureFixture[bytes], unit: str
) -> None:
    # GIVEN a body with 2**64 + 1, a 17-digit fraction, {"value": 5} beside 5, and an
    # NDJSON body of arrays
    url = api_server(ScriptedAPI(FIDELITY_BODIES)).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": "0"}, {"date": "1"}],
        request_id=f"exact-{unit}",
        records_path="items",
        options={"pack": {"unit": unit}},
    )
    # WHEN they are packed into S3
    result, _ = run(event)
    assert result["status"] == "SUCCESS", result["failures"]
    entries = assert_pack_account(s3, result)
    stored = [b"\n".join(object_lines(s3, entries[i]["key"])) for i in (0, 1)]
    manifest = f"s3://{RAW_BUCKET}/{result['manifest_key']}"
    # THEN the stored lines hold every digit as sent (not 1.8446744073709552e+19)
    assert b"18446744073709551617" in stored[0] and b"0.12345678901234567" in stored[0]
    assert b"1.8446744073709552e" not in stored[0]
    # AND the NDJSON arrays are 2 records, and show gives back what the API sent
    assert entries[1]["records"] == 2
    if unit == "response":
        assert show_item(capsysbinary, manifest, 0) == b'{"items":[' + EXACT + b',{"value":5},5]}\n'
        assert show_item(capsysbinary, manifest, 1) == b'[[1,"a"],[2,"b"]]\n'
    else:
        assert entries[1]["pack"]["line_count"] == 2
        assert show_item(capsysbinary, manifest, 0) == EXACT + b'\n{"value":5}\n5\n'
        assert show_item(capsysbinary, manifest, 1) == b'[1,"a"]\n[2,"b"]\n'


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_body_that_is_not_utf8_is_packed_as_base64_and_shown_byte_for_byte(
    s3: MotoS3, api_server: Any, capsysbinary: pytest.CaptureFixture[bytes], compression: str
) -> None:
    # GIVEN an API answering bytes that are not UTF-8, and expect_json off
    raw = bytes(range(256)) + b"\xff\xfe caf\xe9"
    script = {"0": Response(body=raw, headers={"Content-Type": "application/octet-stream"})}
    url = api_server(ScriptedAPI(script)).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": "0"}],
        request_id=f"bin-{compression}",
        options={"expect_json": False, "pack": {"compression": compression}},
    )
    # WHEN it is packed
    result, _ = run(event)
    assert result["status"] == "SUCCESS", result["failures"]
    entries = assert_pack_account(s3, result)
    # THEN its line says base64 and holds every byte (not U+FFFD in their place)
    [line] = lines_of(s3, entries[0])
    assert line["body_encoding"] == "base64"
    assert base64.b64decode(line["body"]) == raw
    # AND show prints the exact bytes the API sent
    manifest = f"s3://{RAW_BUCKET}/{result['manifest_key']}"
    assert show_item(capsysbinary, manifest, 0) == raw + b"\n"


# ----------------------------------------------------------------------- with pagination


@pytest.mark.parametrize(
    ("route", "pagination", "unit"),
    [
        (
            "cursor",
            {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"},
            "record",
        ),
        ("offset", {"type": "offset", "limit": 10, "total_header": "X-Total-Count"}, "response"),
        ("pages", {"type": "page_number", "total_pages_path": "total_pages"}, "record"),
    ],
    ids=["cursor-record", "offset-parallel-response", "pages-parallel-record"],
)
def test_paginated_items_pack_their_pages_as_lines_in_page_order(
    s3: MotoS3, api_server: Any, route: str, pagination: dict[str, Any], unit: str
) -> None:
    # GIVEN 4 items of 25 records each, served 10 to a page (3 pages per item)
    api = PagedAPI()
    url = api_server(api.app).url
    dates = ["d1", "d2", "d3", "d4"]
    event = event_for(
        f"{url}/{route}",
        batch=[{"date": d} for d in dates],
        request_id=f"pk-pg-{route}",
        pagination=pagination,
        records_path="items",
        options={"pack": {"unit": unit}},
    )
    # WHEN the handler ingests them packed
    result, _ = run(event)
    # THEN every page is in one pack, each item's lines contiguous and in page order
    assert result["status"] == "SUCCESS", result["failures"]
    assert result["records_ingested"] == 100
    assert result["pages_written"] == 12
    entries = assert_pack_account(s3, result)
    packs = [k for k in s3.list_keys(RAW_BUCKET) if "_manifests" not in k]
    assert packs == [f"{SOURCE}/pk-pg-{route}-0-0.ndjson.gz"]
    for index, date in enumerate(dates):
        entry = entries[index]
        assert entry["pages"] == 3 and entry["records"] == 25
        lines = lines_of(s3, entry)
        assert lines == lines_by_range(s3, entry)
        if unit == "record":
            assert [line["_fanout"]["page"] for line in lines] == [0] * 10 + [1] * 10 + [2] * 5
            assert [(line["date"], line["n"]) for line in lines] == [(date, n) for n in range(25)]
        else:
            assert [line["page"] for line in lines] == [0, 1, 2]
            records = [r for line in lines for r in line["body"]["items"]]
            assert [(r["date"], r["n"]) for r in records] == [(date, n) for n in range(25)]


def test_a_chain_that_fails_mid_way_packs_nothing_of_its_item(s3: MotoS3, api_server: Any) -> None:
    # GIVEN the first second page asked for answering 404 (not retried): one item fails
    api = PagedAPI(faults={("/cursor", 10): [404]})
    url = api_server(api.app).url
    event = event_for(
        f"{url}/cursor",
        batch=[{"date": d} for d in ("d1", "d2", "d3")],
        request_id="pk-pg-fail",
        pagination={"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"},
        records_path="items",
        options={"pack": {"unit": "record"}},
    )
    # WHEN it runs
    result, _ = run(event)
    # THEN the failed item's pages are nowhere in the pack; the counts add up
    entries = assert_pack_account(s3, result)
    failed = {i for i, e in entries.items() if e["status"] == "failed"}
    assert len(failed) == 1 and all(entries[i]["kind"] == "http_status" for i in failed)
    [pack] = [k for k in s3.list_keys(RAW_BUCKET) if "_manifests" not in k]
    packed = [orjson.loads(line)["_fanout"]["index"] for line in object_lines(s3, pack)]
    assert set(packed) == set(entries) - failed
    assert len(packed) == 25 * 2


def test_a_body_too_large_for_memory_fails_alone_and_memory_stays_in_budget(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN a 16 MiB budget with 5 MiB parts: a packed body may hold (16 - 5) / 2 MiB
    big = orjson.dumps({"pad": "b" * (6 * MiB)})
    url = api_server(ScriptedAPI({"big": Response(body=big)})).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": d} for d in ("a", "big", "c")],
        request_id="pack-too-big",
        options={"part_size_mb": 5, "memory_budget_mb": 16, "pack": {}},
    )
    # WHEN it runs
    result, _ = run(event)
    # THEN the 6 MiB body fails as body_too_large; the others are packed
    entries = assert_pack_account(s3, result)
    assert entries[1]["status"] == "failed" and entries[1]["kind"] == "body_too_large"
    assert "fit in memory" in entries[1]["error"]
    assert entries[0]["status"] == entries[2]["status"] == "written"


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_pack_objects_carry_no_content_encoding_so_http_downloads_stay_readable(
    s3: MotoS3, api_server: Any, compression: str
) -> None:
    # GIVEN a packed run
    url = api_server(ScriptedAPI()).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(5)],
        request_id=f"enc-{compression}",
        options={"pack": {"compression": compression}},
    )
    result, _ = run(event)
    assert result["status"] == "SUCCESS", result["failures"]
    [key] = [k for k in s3.list_keys(RAW_BUCKET, f"{SOURCE}/enc-") if "_manifests" not in k]
    # WHEN its object is downloaded by an HTTP client that honours Content-Encoding
    head = s3.head(RAW_BUCKET, key)
    signed = s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": RAW_BUCKET, "Key": key}, ExpiresIn=60
    )
    download = requests.get(signed, timeout=10)
    download.raise_for_status()
    # THEN the .gz file arrives as gzip and reads (with Content-Encoding: gzip the client
    # inflated it on the way, and gunzip then failed: "Not a gzipped file")
    gzipped = compression == "gzip"
    data = gzip.decompress(download.content) if gzipped else download.content
    # AND gzip is the object's format, not an encoding
    assert "ContentEncoding" not in head
    assert head["ContentType"] == ("application/gzip" if gzipped else "application/x-ndjson")
    # (every item once, in the order the items finished: CONTRACT §13)
    assert sorted(orjson.loads(line)["index"] for line in data.splitlines()) == list(range(5))


# --------------------------------------------------------- re-runs and stale parts (issue 17)

STALE_ITEMS = 12


def stale_api(pad: int) -> ScriptedAPI:
    """Item n's body: its number and ``pad`` bytes, so the pack's part count follows ``pad``."""
    return ScriptedAPI(
        {
            str(n): Response(body=orjson.dumps({"n": n, "pad": "z" * pad}))
            for n in range(STALE_ITEMS)
        }
    )


def stale_event(url: str, **options: Any) -> dict[str, Any]:
    return event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(STALE_ITEMS)],
        request_id="rerun",
        options={"concurrency": 1, "pack": {"compression": "none", "target_mb": 1}, **options},
    )


def packs(s3: MotoS3) -> list[str]:
    return sorted(k for k in s3.list_keys(RAW_BUCKET, f"{SOURCE}/rerun-") if "_manifests" not in k)


def test_a_rerun_in_fewer_parts_removes_the_earlier_runs_stale_parts(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN a packed run of 12 items of ~300 KB: 1 MiB objects make 3 parts
    first, _ = run(stale_event(api_server(stale_api(300_000)).url))
    assert first["status"] == "SUCCESS", first["failures"]
    assert packs(s3) == [f"{SOURCE}/rerun-0-{part}.ndjson" for part in range(3)]
    # WHEN the same batch runs again and its smaller bodies fit in 1 part
    again, _ = run(stale_event(api_server(stale_api(100)).url))
    # THEN parts 1 and 2 of the first run are gone: every line under the prefix is the re-run's
    assert again["status"] == "SUCCESS", again["failures"]
    assert packs(s3) == [f"{SOURCE}/rerun-0-0.ndjson"]
    entries = assert_pack_account(s3, again)
    lines = [orjson.loads(x) for x in object_lines(s3, packs(s3)[0])]
    assert sorted(line["index"] for line in lines) == list(range(STALE_ITEMS))
    assert all(len(line["body"]["pad"]) == 100 for line in lines)
    assert {e["key"] for e in entries.values()} == {f"{SOURCE}/rerun-0-0.ndjson"}


def test_a_rerun_whose_object_fails_leaves_no_line_of_the_earlier_run(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN a first run that wrote part 0 with every item
    first, _ = run(stale_event(api_server(stale_api(100)).url))
    assert first["status"] == "SUCCESS" and packs(s3) == [f"{SOURCE}/rerun-0-0.ndjson"]
    # WHEN the re-run's one object fails on every attempt (its items fail s3_error)
    s3_proxy.inject("PutObject", "internal_error", times=S3_MAX_ATTEMPTS)
    again, _ = run(stale_event(api_server(stale_api(100)).url, s3_max_attempts=S3_MAX_ATTEMPTS))
    assert again["failed"] == STALE_ITEMS
    assert {f["kind"] for f in again["failures"]} == {"s3_error"}
    # THEN the first run's part 0 is gone too: no reader counts lines of items that
    # the new manifest calls failed (and "nothing is left under its key" holds)
    assert packs(s3) == []
    assert_pack_account(s3, again)


def test_a_rerun_into_a_local_folder_removes_its_stale_parts(
    api_server: Any, tmp_path: Path
) -> None:
    # GIVEN a packed run into a local folder in 3 parts, then a re-run that fits in 1
    def run_local(pad: int) -> dict[str, Any]:
        event = stale_event(api_server(stale_api(pad)).url)
        job = parse_event(event, policy=NetPolicy(allow_private_networks=True))
        settings = Settings(policy=NetPolicy(allow_private_networks=True))
        outcome = asyncio.run(run_job(job, writer=LocalDirWriter(tmp_path), settings=settings))
        assert outcome.result["status"] == "SUCCESS"
        return outcome.result

    def parts() -> list[str]:
        return sorted(p.name for p in (tmp_path / SOURCE).glob("rerun-*"))

    run_local(300_000)
    assert parts() == [f"rerun-0-{part}.ndjson" for part in range(3)]
    # WHEN it runs again
    run_local(100)
    # THEN only the re-run's part is in the folder, holding every item once
    assert parts() == ["rerun-0-0.ndjson"]
    lines = (tmp_path / SOURCE / "rerun-0-0.ndjson").read_bytes().splitlines()
    assert sorted(orjson.loads(x)["index"] for x in lines) == list(range(STALE_ITEMS))
