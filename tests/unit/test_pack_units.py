"""Pack units, pack keys, option validation and restart points: pure, no network."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_core import InvalidBody, InvalidEventError, LocalDirWriter, parse_event
from ingest_core.clock import RunClock
from ingest_core.config import Options, PackOptions
from ingest_core.keys import PackKeys
from ingest_core.limits import ByteBudget
from ingest_core.netguard import NetPolicy
from ingest_core.packing import FLUSH_EVERY, Packer, Page, RecordUnit, ResponseUnit, make_unit
from ingest_core.packing.stale import PartPattern, StaleParts
from ingest_core.packing.units import decode_line, exact_loads
from ingest_core.results import ItemResult, ItemStatus

POLICY = NetPolicy(allow_private_networks=True)


def page(body: bytes, **kw: Any) -> Page:
    fields: dict[str, Any] = dict(
        index=3,
        page=0,
        params={"date": "2025-01-01"},
        body=body,
        status=200,
        content_type="application/json",
        fetched_at="2025-01-01T00:00:00.000Z",
    )
    fields.update(kw)
    return Page(**fields)


def event(**options: Any) -> dict[str, Any]:
    return {
        "api_config": {
            "endpoint": "https://api.example.com/v1",
            "raw_bucket": "raw-bucket",
            "source_id": "src",
        },
        "options": options,
        "batch": [{"d": 1}, {"d": 2}],
        "request_id": "r1",
    }


def problems_of(evt: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidEventError) as info:
        parse_event(evt, policy=POLICY)
    return dict(info.value.problems)


# ----------------------------------------------------------------------------- units


def test_response_unit_keeps_the_body_as_its_json_value() -> None:
    # GIVEN a pretty-printed JSON body (newlines inside)
    body = b'{\n  "data": {"items": [1, 2, 3]},\n  "x": "\\u00e9"\n}'
    # WHEN the response unit makes its line
    lines = ResponseUnit("data.items", expect_json=True).lines(page(body))
    # THEN one line, with the body's value and the page's provenance
    assert lines.count == 1 and lines.data.count(b"\n") == 1
    line = orjson.loads(lines.data)
    assert line["body"] == orjson.loads(body)
    assert (line["index"], line["page"], line["status"]) == (3, 0, 200)
    assert line["params"] == {"date": "2025-01-01"}
    assert lines.records == 3


def test_response_unit_stores_non_json_as_a_string_only_without_expect_json() -> None:
    html = b"<html>down</html>"
    with pytest.raises(InvalidBody):
        ResponseUnit(None, expect_json=True).lines(page(html))
    line = orjson.loads(ResponseUnit(None, expect_json=False).lines(page(html)).data)
    assert line["body"] == "<html>down</html>"


def test_record_unit_one_line_per_record_with_fanout() -> None:
    body = orjson.dumps({"data": {"items": [{"a": 1}, {"a": 2}, 7]}})
    lines = RecordUnit("data.items").lines(page(body, page=2))
    rows = [orjson.loads(x) for x in lines.data.splitlines()]
    prov = {"index": 3, "page": 2, "fetched_at": "2025-01-01T00:00:00.000Z"}
    assert rows == [
        {"a": 1, "_fanout": prov},
        {"a": 2, "_fanout": prov},
        {"value": 7, "_fanout": {**prov, "wrapped": True}},
    ]
    assert lines.count == lines.records == 3


@pytest.mark.parametrize(
    ("body", "path", "count"),
    [
        (b"[1,2]", None, 2),
        (b'{"a":1}', None, 1),
        (b'{"a":1}\n{"a":2}\n{"a":3}\n', None, 3),
        (b'{"data":null}', "data", 0),
        (b"{}", "data.items", 0),
    ],
    ids=["array", "object", "ndjson", "null-at-path", "absent-path"],
)
def test_record_unit_counts(body: bytes, path: str | None, count: int) -> None:
    assert RecordUnit(path).lines(page(body)).count == count


def test_record_unit_refuses_a_non_array_at_records_path() -> None:
    with pytest.raises(InvalidBody, match="not an array"):
        RecordUnit("data").lines(page(b'{"data": 5}'))


# ------------------------------------------------------------ lossless packs (issue 17)

BIG = b"18446744073709551616"  # 2**64: one beyond what orjson keeps as an integer
NUMBERS = (
    b'{"id":18446744073709551616,"neg":-9223372036854775809,'
    b'"p":0.12345678901234567,"f":1.10,"e":1E2}'
)


def test_response_unit_embeds_a_compact_json_body_byte_for_byte() -> None:
    # GIVEN a compact JSON body holding numbers no double or 64-bit integer keeps
    # WHEN the response unit makes its line
    line = ResponseUnit(None, expect_json=True).lines(page(NUMBERS)).data
    # THEN the body is in the line exactly as sent: not parsed and written again
    assert line.endswith(b',"body":' + NUMBERS + b"}\n")
    assert decode_line(line.rstrip(b"\n")) == NUMBERS


def test_response_unit_keeps_a_pretty_body_on_one_line_with_its_digits() -> None:
    # GIVEN a pretty-printed body (CRLF and LF between tokens, a \n escape in a string)
    body = b'{\r\n  "id": 18446744073709551616,\n  "s": "a\\nb"\n}\n'
    # WHEN it is packed
    lines = ResponseUnit(None, expect_json=True).lines(page(body))
    # THEN one line; only the line breaks between tokens became spaces
    assert lines.data.count(b"\n") == 1 and b"\r" not in lines.data
    assert b'"id": 18446744073709551616' in lines.data and b'"a\\nb"' in lines.data
    assert exact_loads(lines.data)["body"]["s"] == "a\nb"


def test_record_unit_keeps_numbers_exactly_as_the_api_sent_them() -> None:
    # GIVEN records holding 2**64, -2**63 - 1, a 17-digit fraction, 1.10 and 1E2
    body = b'{"items":[' + NUMBERS + b',{"small":3,"x":2.5}]}'
    # WHEN the record unit makes their lines
    lines = RecordUnit("items").lines(page(body))
    first, second = lines.data.splitlines()
    # THEN every number is the text the API sent, not a float's nearest value
    for number in (BIG, b"-9223372036854775809", b"0.12345678901234567", b"1.10", b"1E2"):
        assert number in first, number
    assert second.startswith(b'{"small":3,"x":2.5,"_fanout":')
    assert decode_line(first) == NUMBERS


def test_a_body_that_is_not_utf8_is_stored_as_base64_and_read_back_byte_for_byte() -> None:
    # GIVEN a body that is not UTF-8, with expect_json off
    body = b"\xff\xfe\x00caf\xe9 \x80\n"
    # WHEN it is packed
    line = ResponseUnit(None, expect_json=False).lines(page(body, content_type=None)).data
    # THEN the line flags it base64, and reading it gives back every byte (no U+FFFD)
    stored = orjson.loads(line)
    assert stored["body_encoding"] == "base64"
    assert decode_line(line.rstrip(b"\n")) == body


def test_a_text_body_is_flagged_so_it_differs_from_a_json_string_body() -> None:
    unit = ResponseUnit(None, expect_json=False)
    text = orjson.loads(unit.lines(page(b"caf\xc3\xa9 <b>")).data)
    json_string = orjson.loads(unit.lines(page(b'"caf\xc3\xa9 <b>"')).data)
    assert (text["body"], text["body_encoding"]) == ("café <b>", "text")
    assert json_string["body"] == "café <b>" and "body_encoding" not in json_string


def test_record_unit_wraps_scalars_so_they_differ_from_value_objects() -> None:
    # GIVEN a page of records {"value": 42}, 42, [1, 2] and {}
    body = b'[{"value":42},42,[1,2],{}]'
    # WHEN they are packed
    lines = RecordUnit(None).lines(page(body)).data.splitlines()
    # THEN the object and the scalar make different lines, and each reads back as it came
    assert lines[0] != lines[1]
    assert orjson.loads(lines[1])["_fanout"]["wrapped"] is True
    assert "wrapped" not in orjson.loads(lines[0])["_fanout"]
    assert [decode_line(line) for line in lines] == [b'{"value":42}', b"42", b"[1,2]", b"{}"]


def test_a_record_with_a_fanout_key_of_its_own_gets_ours() -> None:
    line = RecordUnit(None).lines(page(b'[{"_fanout":"theirs","a":1}]')).data
    assert orjson.loads(line) == {
        "_fanout": {"index": 3, "page": 0, "fetched_at": "2025-01-01T00:00:00.000Z"},
        "a": 1,
    }


@pytest.mark.parametrize("path", [None, "items"])
def test_ndjson_lines_that_are_arrays_are_records(path: str | None) -> None:
    # GIVEN an NDJSON body whose lines are arrays (with records_path set or not)
    body = b'[1,"a"]\r\n[2,"b"]\n\n[3,"c"]\n'
    # WHEN the record unit packs it
    lines = RecordUnit(path).lines(page(body))
    # THEN each line is one record (it packed 0 records when records_path was set)
    assert lines.count == lines.records == 3
    assert [decode_line(x) for x in lines.data.splitlines()] == [b'[1,"a"]', b'[2,"b"]', b'[3,"c"]']
    # AND the response unit stores the body as the array of its lines, counted the same
    response = ResponseUnit(path, expect_json=True).lines(page(body))
    assert orjson.loads(response.data)["body"] == [[1, "a"], [2, "b"], [3, "c"]]
    assert response.records == 3


def test_make_unit_picks_the_class_from_the_options() -> None:
    assert isinstance(
        make_unit(PackOptions(unit="record"), records_path=None, expect_json=True), RecordUnit
    )
    assert isinstance(make_unit(PackOptions(), records_path=None, expect_json=True), ResponseUnit)


# ----------------------------------------------------------------------------- keys + options


def test_pack_keys_are_deterministic_and_validated() -> None:
    keys = PackKeys("{source_id}/{request_id}-{first_index}-{part}.ndjson.gz", "s", "r", 17)
    assert keys.key(0) == "s/r-17-0.ndjson.gz"
    assert keys.key(3) == keys.key(3)
    with pytest.raises(ValueError):
        PackKeys("/{part}", "s", "r", 0).key(0)


@pytest.mark.parametrize(
    ("pack", "field", "reason"),
    [
        ({"unit": "rows"}, "options.pack.unit", "response"),
        ({"compression": "zstd"}, "options.pack.compression", "gzip"),
        ({"target_mb": 0}, "options.pack.target_mb", "greater than or equal to 1"),
        ({"key_template": "{source_id}/x.ndjson"}, "options.pack.key_template", "{part}"),
        ({"key_template": "{index}-{part}"}, "options.pack.key_template", "unknown placeholder"),
        ({"key_template": "/{part}"}, "options.pack.key_template", "'/'"),
        ({"size": 1}, "options.pack.size", "unknown field"),
    ],
)
def test_bad_pack_options_name_the_field(pack: dict[str, Any], field: str, reason: str) -> None:
    problems = problems_of(event(pack=pack))
    assert field in problems, problems
    assert reason in problems[field]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"pack": {"unit": "record"}, "expect_json": False}, "options.pack.unit"),
        ({"pack": {}, "skip_existing": True}, "options.skip_existing"),
        ({"pack": {}, "compress": True}, "options.compress"),
        ({"pack": {}, "part_size_mb": 8, "memory_budget_mb": 12}, "options.memory_budget_mb"),
    ],
)
def test_pack_conflicts_name_the_field(options: dict[str, Any], field: str) -> None:
    assert field in problems_of(event(**options))


def test_a_map_batch_needs_first_index_in_the_pack_key() -> None:
    evt = {
        "BatchInput": {**event(pack={"key_template": "{source_id}/{request_id}-{part}"})},
        "Items": [{"index": 5, "params": {"d": 1}}],
    }
    del evt["BatchInput"]["batch"]
    assert "BatchInput.options.pack.key_template" in problems_of(evt)


def test_pack_defaults() -> None:
    pack = PackOptions()
    assert (pack.unit, pack.compression, pack.target_mb) == ("response", "gzip", 64)
    assert pack.template.endswith(".ndjson.gz")
    assert PackOptions(compression="none").template.endswith(".ndjson")


# ----------------------------------------------------------------------------- the packer


def run_packer(tmp_path: Path, bodies: list[bytes], **pack: Any) -> list[ItemResult]:
    """Pack ``bodies`` (one item each) into a local folder; return the reported results."""
    options = Options(part_size_mb=5, memory_budget_mb=16, pack=PackOptions(**pack))
    results: list[ItemResult] = []

    async def main() -> None:
        packer = Packer(
            writer=LocalDirWriter(tmp_path),
            options=options,
            keys=PackKeys(options.pack.template, "s", "r", 0),  # type: ignore[union-attr]
            unit=ResponseUnit(None, expect_json=True),
            budget=ByteBudget(options.memory_budget),
            on_result=results.append,
        )
        await packer.start()
        for index, body in enumerate(bodies):
            staged = packer.new_item()

            async def chunks(data: bytes = body) -> Any:
                yield data

            await packer.stage(
                staged,
                chunks(),
                index=index,
                page=0,
                params={},
                status=200,
                content_type="application/json",
                content_length=len(body),
            )
            packer.submit(staged, ItemResult(index, {}, None, ItemStatus.WRITTEN))
        await packer.close()
        assert packer.budget.capacity == options.memory_budget

    asyncio.run(main())
    return sorted(results, key=lambda r: r.index)


def test_gzip_restart_points_let_one_item_be_read_from_its_offset(tmp_path: Path) -> None:
    # GIVEN items adding up to several FLUSH_EVERY blocks, packed with gzip
    bodies = [orjson.dumps({"i": i, "pad": "abc" * (i * 997 % 30_000)}) for i in range(120)]
    assert sum(map(len, bodies)) > 3 * FLUSH_EVERY
    results = run_packer(tmp_path, bodies)
    # THEN the object is one valid gzip file, and every item can be read from its offset alone
    [key] = {r.key for r in results}
    data = (tmp_path / str(key)).read_bytes()
    assert len(gzip.decompress(data).splitlines()) == 120
    assert len({r.pack.offset for r in results if r.pack}) > 3  # several restart points
    for result in results:
        span = result.pack
        assert span is not None and result.status is ItemStatus.WRITTEN
        inflate = zlib.decompressobj(31 if span.offset == 0 else -15)
        piece = inflate.decompress(data[span.offset :])[span.skip : span.skip + span.length]
        assert orjson.loads(piece)["body"] == orjson.loads(bodies[result.index])
    assert sum(r.stored_bytes for r in results) == len(data)


def test_uncompressed_offsets_are_exact_byte_ranges(tmp_path: Path) -> None:
    bodies = [orjson.dumps({"i": i}) for i in range(10)]
    results = run_packer(tmp_path, bodies, compression="none")
    data = (tmp_path / str(results[0].key)).read_bytes()
    for result in results:
        assert result.pack is not None
        piece = data[result.pack.offset : result.pack.offset + result.pack.length]
        assert orjson.loads(piece)["body"] == {"i": result.index}
        assert result.pack.first_line == result.index  # submitted in order, one line each


def test_pagination_with_pack_parses_and_needs_no_page_in_the_item_key() -> None:
    # GIVEN a paginated event whose item key template has no {page}, packed
    evt = event(pack={"unit": "record"})
    evt["api_config"]["pagination"] = {"type": "cursor", "cursor_path": "next", "cursor_param": "c"}
    evt["api_config"]["key_template"] = "{source_id}/{request_id}-{index}.json"
    # THEN it is valid: pages are lines of the pack, not objects of their own
    job = parse_event(evt, policy=POLICY)
    assert job.options.pack is not None and job.api.pagination is not None
    # AND without pack the same event is refused for want of {page}
    del evt["options"]["pack"]
    assert "api_config.key_template" in problems_of(evt)


class _StuckWriter(LocalDirWriter):
    """A writer whose PUT never gets an answer (S3 completing the object at the deadline)."""

    async def put(self, key: str, data: bytes, meta: Any) -> None:
        await asyncio.Event().wait()


def test_a_put_in_flight_at_the_deadline_reports_its_items_as_write_unknown(
    tmp_path: Path,
) -> None:
    options = Options(part_size_mb=5, memory_budget_mb=16, pack=PackOptions())
    results: list[ItemResult] = []

    async def main() -> None:
        packer = Packer(
            writer=_StuckWriter(tmp_path),
            options=options,
            keys=PackKeys(PackOptions().template, "s", "r", 0),
            unit=ResponseUnit(None, expect_json=True),
            budget=ByteBudget(options.memory_budget),
            on_result=results.append,
        )
        await packer.start()
        for index in range(3):
            staged = packer.new_item()

            async def chunks() -> Any:
                yield b'{"a": 1}'

            await packer.stage(
                staged, chunks(), index=index, page=0, params={}, status=200,
                content_type="application/json", content_length=None,
            )  # fmt: skip
            packer.submit(staged, ItemResult(index, {}, None, ItemStatus.WRITTEN))
        # WHEN the run must stop while the object's PUT has no answer
        # (a clock whose pack completion bound, deadline - margin/4, is 0.2 s away)
        await packer.close(RunClock.for_deadline(time.monotonic() + 0.8, 2.4))

    asyncio.run(main())
    # THEN every item it held is reported once, as "may exist", kind deadline
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert {r.status for r in results} == {ItemStatus.WRITE_UNKNOWN}
    assert all(r.kind is not None and r.kind.value == "deadline" for r in results)


def test_first_index_is_the_lowest_of_a_map_batch_and_the_first_otherwise() -> None:
    from ingest_core.events import PlannedItem
    from ingest_core.packing import first_index

    items = [PlannedItem(i, {}) for i in (40, 17, 99)]
    assert first_index(items, ascending=False) == 17
    assert first_index(iter([PlannedItem(5, {}), PlannedItem(6, {})]), ascending=True) == 5
    assert first_index([], ascending=True) == first_index([], ascending=False) == 0
    map_batch = {
        "BatchInput": {k: v for k, v in event(pack={}).items() if k != "batch"},
        "Items": [{"index": 40, "params": {}}, {"index": 17, "params": {}}],
    }
    job = parse_event(map_batch, policy=POLICY)
    assert first_index(job.items(), ascending=not job.is_map_batch) == 17


# ------------------------------------------------------------------------- stale parts


def test_a_part_pattern_matches_only_keys_its_template_renders() -> None:
    keys = PackKeys("{source_id}/{request_id}-{first_index}-{part}.ndjson.gz", "s", "r", 1)
    pattern = PartPattern.of(keys)
    assert pattern == PartPattern("s/r-1-", ".ndjson.gz")
    assert [pattern.part_of(keys.key(n)) for n in (0, 7, 12)] == [0, 7, 12]
    for other in (
        "s/r-10-0.ndjson.gz",
        "s/r-1-01.ndjson.gz",
        "s/r-1-1.ndjson",
        "s/r-1-².ndjson.gz",
    ):
        assert pattern.part_of(other) is None, other


@pytest.mark.parametrize(
    "template",
    ["{source_id}/{request_id}{first_index}{part}.ndjson", "{source_id}/{part}{first_index}"],
)
def test_a_part_not_delimited_by_non_digits_is_never_removed(template: str) -> None:
    # part 10 of batch 1 and part 0 of batch 11 render alike: no pattern, no removal
    assert PartPattern.of(PackKeys(template, "s", "r", 1)) is None


def test_parts_of_a_template_without_request_id_are_not_the_runs_to_remove() -> None:
    # every run writes these keys (an incremental range's packs): never "stale" to one run
    assert PartPattern.of(PackKeys("{source_id}/daily-{part}.ndjson.gz", "s", "r", 0)) is None


def test_parts_named_by_step_are_not_parts_to_remove() -> None:
    keys = PackKeys("{source_id}/{request_id}/{step}-{part}.ndjson", "s", "r", 0, "date")
    assert PartPattern.of(keys) is None


class _Parts:
    """A PartStore in memory: the keys a destination holds."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys

    async def list_keys(self, prefix: str) -> list[str]:
        return [k for k in self.keys if k.startswith(prefix)]

    async def delete(self, key: str) -> None:
        self.keys.discard(key)


def test_stale_parts_keeps_what_the_run_wrote_or_may_have_and_deletes_the_rest() -> None:
    # GIVEN an earlier run's parts 0-3, another batch's part, and this run's results:
    # part 0 written, part 1 failed (aborted over the old object), part 2 cut (unknown)
    keys = PackKeys("{source_id}/{request_id}-{first_index}-{part}.ndjson.gz", "s", "r", 0)
    other = "s/r-10-0.ndjson.gz"
    store = _Parts({keys.key(n) for n in range(4)} | {other, "s/_manifests/r.json"})
    stale = StaleParts(keys, store)
    record = stale.recording(lambda result: None)
    for part, status in enumerate(
        [ItemStatus.WRITTEN, ItemStatus.FAILED, ItemStatus.WRITE_UNKNOWN]
    ):
        record(ItemResult(index=part, params={}, key=keys.key(part), status=status))
    # WHEN the run ends
    asyncio.run(stale.remove(RunClock.for_deadline(None, 5)))
    # THEN the failed part and the earlier run's part 3 are gone; the rest stays
    assert store.keys == {keys.key(0), keys.key(2), other, "s/_manifests/r.json"}
    assert sorted(stale.removed) == [keys.key(1), keys.key(3)]
