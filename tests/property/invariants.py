"""The invariants every run must keep, whatever the configuration and the faults.

Checked against the reference model (``model.expected``) and what the API recorded
as served (``PagedAPI.served``): see ``check`` for the list.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson

from tests.property.harness import (
    RSS_SLACK_MIB,
    Run,
    Servers,
    Store,
    decoded,
    named_keys,
    run_world,
    served_records,
)
from tests.property.model import (
    API_FAULTS,
    REQUEST_ID,
    S3_COUNTED_RETRIES,
    S3_FATAL,
    SOURCE,
    THROTTLE_STATUSES,
    World,
    expected,
    page_start,
)
from tests.support.reliability import assert_counts

# Kinds any item may fail with when work is cut (a tight deadline, a stop): cut, not
# started, or the last error of a page whose retries the cut ended.
DEADLINE_KINDS = frozenset({"deadline", "throttled"})


def check_world(world: World, servers: Servers) -> None:
    """One example: reset the servers, run the world, check every invariant."""
    servers.prepare(world)
    check(world, run_world(world, servers), servers)


def check(world: World, run: Run, servers: Servers, *, rerun: bool = False) -> None:
    """Every invariant of the module docstring of test_pipeline, or an AssertionError.

    ``rerun``: the store holds an earlier run of the same batch; unpacked, its pages
    beyond an item's new chain may stay (CONTRACT §11: read pages by the manifest).
    """
    assert run.result is not None, f"the run did not return {HANG_NOTE}"
    result = run.result
    assert run.returned_at < run.deadline, (
        f"returned {run.returned_at - run.deadline:+.2f}s past its deadline"
    )
    assert_counts(result)
    assert servers.canary.connections() == 0, "a next link to another origin was followed"
    fired = [fault for _, fault in servers.proxy.fired]
    store = Store(world, servers)
    assert store.open_uploads() == [], "a multipart upload was left open"
    entries = _manifest(world, result, store, fired)
    _check_kinds(world, result, fired)
    if not world.cut:  # when work is cut, a cut attempt's answer may go uncounted
        _check_throttle_counts(result, servers, fired)
    if entries is not None:
        _check_not_attempted(entries)
        _check_stored(world, result, entries, store, servers, rerun=rerun)
    budget = world.memory_budget_mb + RSS_SLACK_MIB
    if world.sink == "local":  # S3 sinks: moto and the proxy share this process's RSS
        assert run.rss_growth_mib <= budget, (
            f"RSS grew {run.rss_growth_mib:.0f} MiB, more than budget + {RSS_SLACK_MIB} MiB"
        )


HANG_NOTE = "(still running long after its deadline: a hang)"


def _manifest(
    world: World, result: dict[str, Any], store: Store, fired: list[str]
) -> dict[int, dict[str, Any]] | None:
    """The manifest, or None when the run could not write it (and had a reason not to)."""
    key = result.get("manifest_key")
    if key is None:
        excused = world.cut or any(f in S3_FATAL for f in fired)
        assert excused, f"no manifest: {result.get('manifest_error')}"
        return None
    entries = store.manifest(key)
    assert sorted(entries) == list(range(world.items)), "the manifest must hold every item"
    return entries


def _allowed(world: World, item: int, fired: list[str]) -> frozenset[str]:
    verdict = expected(world, item)
    kinds = set(verdict.kinds)
    if any(f in S3_FATAL for f in fired) or world.disk_fault:
        kinds.add("s3_error")
    if world.cut:
        kinds |= DEADLINE_KINDS
        kinds |= {k for f in world.api_faults if f.item == item for k in _kinds_of(f.fault)}
        if "hang" in fired:
            kinds.add("s3_error")
    return frozenset(kinds)


def _kinds_of(fault: str) -> frozenset[str]:
    return API_FAULTS[fault][1]


def _check_kinds(world: World, result: dict[str, Any], fired: list[str]) -> None:
    """Items the model says must fail did, with a kind it allows; the rest succeeded."""
    failures = {failure["index"]: failure for failure in result["failures"]}
    for item in range(world.items):
        verdict = expected(world, item)
        failure = failures.get(item)
        if failure is None:
            assert not verdict.must_fail, f"item {item} succeeded; expected {set(verdict.kinds)}"
            continue
        allowed = _allowed(world, item, fired)
        assert failure["kind"] in allowed, (
            f"item {item} failed {failure['kind']!r} ({failure['error']}); allowed {set(allowed)}"
        )


def _check_throttle_counts(result: dict[str, Any], servers: Servers, fired: list[str]) -> None:
    """Every 429/503 the API sent and every SlowDown S3 sent is counted (CONTRACT §14)."""
    api_throttles = sum(s in THROTTLE_STATUSES for s in servers.api.fault_statuses)
    slowdowns = fired.count("slowdown")
    assert result["throttled"] == api_throttles + slowdowns, (
        f"throttled {result['throttled']}; the API sent {api_throttles} 429/503,"
        f" S3 {slowdowns} SlowDown"
    )
    counted = sum(f in S3_COUNTED_RETRIES for f in fired)
    assert result["retries"] >= counted, f"retries {result['retries']} < {counted} S3 faults"


def _check_not_attempted(entries: dict[int, dict[str, Any]]) -> None:
    """An item that never started took no attempt (CONTRACT §16)."""
    for index, entry in entries.items():
        if entry["status"] == "not_attempted":
            assert entry["attempts"] == 0, f"item {index} not attempted with attempts > 0"


def _check_stored(
    world: World,
    result: dict[str, Any],
    entries: dict[int, dict[str, Any]],
    store: Store,
    servers: Servers,
    *,
    rerun: bool = False,
) -> None:
    """Succeeded items' bytes are stored exactly once where the manifest says; no stray key."""
    written = {i for i, e in entries.items() if e["status"] in ("written", "skipped")}
    assert len(written) == result["succeeded"]
    stray = store.keys() - named_keys(entries) - {result["manifest_key"]}
    if rerun and world.pack is None and world.pagination is not None:
        stray = {key for key in stray if not _beyond_the_chain(key, entries)}
    assert not stray, f"objects the manifest does not name: {sorted(stray)}"
    served = servers.api.served
    for item in sorted(written):
        pages = [
            served[(f"/{world.route}", world.date(item), page_start(world, page))]
            for page in range(expected(world, item).pages)
        ]
        assert entries[item]["records"] in (None, sum(len(served_records(world, p)) for p in pages))
        if world.pack is None:
            _check_objects(world, entries[item], pages, store)
    if world.pack is not None:
        _check_packs(world, entries, written, store, served)


PAGE_KEY = re.compile(rf"{re.escape(SOURCE)}/{re.escape(REQUEST_ID)}-(\d+)-(\d+)\.json(\.gz)?")


def _beyond_the_chain(key: str, entries: dict[int, dict[str, Any]]) -> bool:
    """An earlier run's page of an item, beyond the pages its latest chain wrote."""
    match = PAGE_KEY.fullmatch(key)
    if match is None or int(match[1]) not in entries:
        return False
    return int(match[2]) >= len(entries[int(match[1])].get("keys") or ())


def _check_objects(world: World, entry: dict[str, Any], pages: list[bytes], store: Store) -> None:
    keys = entry["keys"] if world.pagination is not None else [entry["key"]]
    assert len(keys) == len(pages), f"item {entry['index']}: {len(keys)} keys, {len(pages)} pages"
    for key, body in zip(keys, pages, strict=True):
        stored = decoded(key, store.get(key), world.gzip)
        assert stored == body, f"{key}: stored bytes differ from the served page"


def _check_packs(
    world: World,
    entries: dict[int, dict[str, Any]],
    written: set[int],
    store: Store,
    served: dict[tuple[str, str, int], bytes],
) -> None:
    """Each succeeded item's lines sit at its span and nowhere else; no failed item's lines."""
    objects = {entries[i]["key"] for i in written} | {
        key for key in store.keys() if ".ndjson" in key
    }
    seen: Counter[tuple[Any, ...]] = Counter()
    contents = {key: store.lines(key) for key in objects}
    for lines in contents.values():
        for line in map(orjson.loads, lines):
            seen[_identity(world, line)] += 1
    for item in sorted(written):
        entry = entries[item]
        span = entry["pack"]
        lines = contents[entry["key"]][span["first_line"] : span["first_line"] + span["line_count"]]
        want = _expected_lines(world, item, served)
        got = [_comparable(world, orjson.loads(line)) for line in lines]
        assert got == want, f"item {item}: its pack lines differ from what was served"
    expected_ids = Counter(
        _identity(world, line)
        for item in written
        for line in _expected_lines(world, item, served, provenance=True)
    )
    assert seen == expected_ids, "pack objects hold lines of failed items, or a line twice"


def _expected_lines(
    world: World,
    item: int,
    served: dict[tuple[str, str, int], bytes],
    *,
    provenance: bool = False,
) -> list[Any]:
    out: list[Any] = []
    for page in range(expected(world, item).pages):
        body = served[(f"/{world.route}", world.date(item), page_start(world, page))]
        if world.pack == "response":
            out.append({"index": item, "page": page, "body": orjson.loads(body)})
        else:
            for record in served_records(world, body):
                line = {**record, "_fanout": {"index": item, "page": page}}
                out.append(line if provenance else _comparable(world, line))
    return out


def _comparable(world: World, line: dict[str, Any]) -> Any:
    """The part of a pack line the API determined (not fetched_at, status, params)."""
    if world.pack == "response":
        return {"index": line["index"], "page": line["page"], "body": line["body"]}
    fanout = line["_fanout"]
    record = {k: v for k, v in line.items() if k != "_fanout"}
    return {**record, "_fanout": {"index": fanout["index"], "page": fanout["page"]}}


def _identity(world: World, line: dict[str, Any]) -> tuple[Any, ...]:
    if world.pack == "response":
        return (line["index"], line["page"])
    fanout = line["_fanout"]
    return (fanout["index"], fanout["page"], line.get("date"), line.get("n"))
