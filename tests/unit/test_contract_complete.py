"""docs/CONTRACT.md names every option, failure kind, result field and manifest field.

The page is the user contract: a field the code emits or accepts but the page does
not name is a field users cannot rely on (or find). Each name must appear, in
backticks, in the section that describes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from ingest_core.config import Options, PackOptions
from ingest_core.errors import FailureKind
from ingest_core.events import parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.results import ItemResult, ItemStatus, PackSpan
from ingest_core.runtime import execute
from ingest_core.state import Watermark

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "CONTRACT.md"
HINTS = ROOT / "ingest_core" / "hints.py"


def section(n: int) -> str:
    """The text of ``## §n ...`` up to the next ``## `` heading."""
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(rf"^## §{n} .*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/CONTRACT.md has no section §{n}"
    return match.group()


def unnamed(names: set[str], text: str) -> list[str]:
    return sorted(name for name in names if f"`{name}`" not in text)


def test_every_option_is_in_section_4() -> None:
    names = set(Options.model_fields) | set(PackOptions.model_fields)
    assert not unnamed(names, section(4))


def test_every_failure_kind_is_in_section_6() -> None:
    assert not unnamed({kind.value for kind in FailureKind}, section(6))


def test_every_manifest_line_field_is_in_section_6() -> None:
    item = ItemResult(
        index=0,
        params={},
        key="k",
        status=ItemStatus.FAILED,
        kind=FailureKind.HTTP_STATUS,
        pack=PackSpan(first_line=0, line_count=1, offset=0, skip=0, length=1),
        pages=1,
        page_keys=("k",),
    )
    line = orjson.loads(item.manifest_line())
    names = set(line) | set(line["pack"])
    assert not unnamed(names, section(6))
    assert not unnamed({status.value for status in ItemStatus}, section(6))


def test_every_failure_entry_field_is_in_section_6() -> None:
    entry = ItemResult(index=0, params={}, key=None, status=ItemStatus.FAILED).failure_entry()
    assert not unnamed(set(entry), section(6))


async def test_every_result_field_is_in_section_6(tmp_path: Path) -> None:
    """Every key of a real run's result (an empty batch: no request is made)."""
    job = parse_event(
        {
            "api_config": {
                "endpoint": "https://api.example.com/v1",
                "raw_bucket": "unused-bucket",
                "source_id": "contract",
            },
            "batch": [],
            "request_id": "contract-check",
        },
        policy=NetPolicy(),
    )
    outcome = await execute(job, local_dir=tmp_path)
    result = outcome.result
    assert result["requested"] == 0 and result["status"] == "SUCCESS"
    assert not unnamed(set(result), section(6))


def test_every_warning_code_is_in_section_6() -> None:
    codes = set(re.findall(r'"code": "(\w+)"', HINTS.read_text(encoding="utf-8")))
    assert codes, "hints.py names no warning code: this test reads it wrong"
    assert not unnamed(codes, section(6))


async def test_every_incremental_and_state_field_is_in_section_15(tmp_path: Path) -> None:
    """The ``incremental`` block of a real run whose state covers its range (no request)."""
    state = tmp_path / "contract" / "_state" / "daily.json"
    state.parent.mkdir(parents=True)
    stored = Watermark(
        watermark="2024-01-03", updated_at="2024-01-04T00:00:00+00:00", request_id="r"
    )
    state.write_bytes(stored.to_json())
    job = parse_event(
        {
            "api_config": {
                "endpoint": "https://api.example.com/v1",
                "raw_bucket": "unused-bucket",
                "source_id": "contract",
            },
            "date_range": {
                "start": "2024-01-01",
                "end": "2024-01-03",
                "incremental": True,
                "state_key": "daily",
            },
            "request_id": "contract-check",
        },
        policy=NetPolicy(),
    )
    outcome = await execute(job, local_dir=tmp_path)
    block = outcome.result["incremental"]
    assert block["nothing_new"] is True and block["watermark_before"] == "2024-01-03"
    names = set(block) | set(orjson.loads(stored.to_json()))
    assert not unnamed(names, section(15))
