"""Result shaping: statuses, the counts invariant, capping under 256 KiB."""

from __future__ import annotations

import orjson

from ingest_core.errors import FailureKind
from ingest_core.results import ItemResult, ItemStatus, Tally


def failed(i: int, params: dict[str, object] | None = None) -> ItemResult:
    return ItemResult(
        index=i,
        params=params or {"date": f"2025-01-{i % 28 + 1:02d}", "page": i},
        key=f"k/{i}",
        status=ItemStatus.FAILED,
        attempts=4,
        kind=FailureKind.HTTP_STATUS,
        http_status=503,
        error="HTTP 503 after 4 attempts",
    )


def written(i: int, records: int | None = 2) -> ItemResult:
    return ItemResult(
        i,
        {"i": i},
        f"k/{i}",
        ItemStatus.WRITTEN,
        attempts=1,
        received_bytes=10,
        stored_bytes=10,
        records=records,
    )


def result_of(tally: Tally) -> dict[str, object]:
    try:
        return tally.to_result(request_id="r", source_id="s", duration_ms=1, manifest_key="m")
    finally:
        tally.close()


def test_statuses() -> None:
    empty = Tally(requested=0)
    assert result_of(empty)["status"] == "SUCCESS"
    tally = Tally(requested=2)
    tally.add(written(0))
    tally.add(failed(1))
    assert result_of(tally)["status"] == "PARTIAL_SUCCESS"
    none = Tally(requested=1)
    none.add(failed(0))
    assert result_of(none)["status"] == "FAILED"


def test_unknown_record_count_makes_the_total_null_not_a_guess() -> None:
    tally = Tally(requested=2)
    tally.add(written(0, records=5))
    tally.add(written(1, records=None))
    assert result_of(tally)["records_ingested"] is None


def test_ten_thousand_failures_stay_under_256_kib() -> None:
    # GIVEN 10,000 failed items
    tally = Tally(requested=10_000)
    for i in range(10_000):
        tally.add(failed(i))
    # THEN the result is capped, says so, and still counts every item
    result = result_of(tally)
    assert len(orjson.dumps(result)) < 256 * 1024
    assert result["failures_truncated"] is True
    assert result["failed"] == 10_000


def test_huge_params_are_left_to_the_manifest() -> None:
    tally = Tally(requested=1)
    tally.add(failed(0, {"q": "x" * 10_000}))
    [entry] = result_of(tally)["failures"]  # type: ignore[misc]
    assert entry["params"] is None and entry["params_truncated"] is True


def test_manifest_has_one_line_per_item() -> None:
    tally = Tally(requested=3)
    for result in (written(0), failed(1), written(2)):
        tally.add(result)
    lines = tally.manifest_path().read_bytes().splitlines()
    assert [orjson.loads(line)["status"] for line in lines] == ["written", "failed", "written"]
    assert orjson.loads(lines[1])["kind"] == "http_status"
    tally.close()
