"""The command line of packing (issue 10): --pack flags, plan's batch arithmetic."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_core.cli import main
from tests.support.servers import ScriptedAPI, default_body

pytestmark = [pytest.mark.timeout(60)]


def test_backfill_with_pack_record_writes_one_pack_under_the_dest_prefix(
    api_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an API answering 3 records a day
    url = api_server(ScriptedAPI()).url
    dest = tmp_path / "lake" / "landing"
    # WHEN ten days are backfilled with --pack record into a local folder (a prefix in it)
    code = main(
        [
            "backfill", "--endpoint", f"{url}/v1", "--allow-private-networks",
            "--source-id", "src", "--start", "2025-01-01", "--end", "2025-01-10",
            "--dest", str(dest), "--pack", "record", "--pack-compression", "gzip",
            "--pack-target-mb", "16", "--progress", "off", "--json",
        ]
    )  # fmt: skip
    # THEN one gzip pack under the prefix holds one line per record, in the API's order per day
    result = orjson.loads(capsys.readouterr().out)
    assert code == 0 and result["succeeded"] == 10
    [pack] = [p for p in dest.rglob("*.ndjson.gz")]
    assert pack.relative_to(dest).as_posix() == "src/backfill-20250101-20250110-1d-0-0.ndjson.gz"
    rows = [orjson.loads(line) for line in gzip.decompress(pack.read_bytes()).splitlines()]
    served = {
        day: orjson.loads(default_body({"date": f"2025-01-{day:02d}"})) for day in range(1, 11)
    }
    assert len(rows) == result["records_ingested"] == sum(map(len, served.values()))
    for row in rows:
        day = row["_fanout"]["index"] + 1
        assert {k: v for k, v in row.items() if k != "_fanout"} in served[day]
    # AND show finds day 4's records through the manifest
    manifest = dest / "src" / "_manifests" / "backfill-20250101-20250110-1d.json"
    assert main(["show", str(manifest), "--index", "3"]) == 0
    shown = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert shown == served[4]


def test_pack_flags_without_pack_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "backfill", "--endpoint", "https://api.example.com/v1", "--source-id", "s",
            "--start", "2025-01-01", "--end", "2025-01-02", "--dest", str(tmp_path),
            "--pack-target-mb", "8",
        ]
    )  # fmt: skip
    assert code == 2
    assert "--pack: the --pack-* flags need --pack response|record" in capsys.readouterr().err


def test_a_bad_pack_option_names_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "backfill", "--endpoint", "https://api.example.com/v1", "--source-id", "s",
            "--start", "2025-01-01", "--end", "2025-01-02", "--dest", str(tmp_path),
            "--pack", "response", "--pack-target-mb", "0",
        ]
    )  # fmt: skip
    assert code == 2
    assert "--pack-target-mb:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--pack"], "1,000 items in 1 batches of up to 2,500: ~1 pack objects and 1 manifests"),
        (
            ["--pack", "--max-items-per-batch", "300"],
            "1,000 items in 4 batches of up to 300: ~4 pack objects and 4 manifests",
        ),
        (["--max-items-per-batch", "100"], "1,000 items in 10 batches of up to 100: 1,000 objects"),
    ],
)
def test_plan_prints_the_batches_and_objects_a_backfill_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    out = tmp_path / "plan.jsonl"
    argv = ["plan", "--start", "2000-01-01", "--end", "2002-09-26", "--jsonl", "--out", str(out)]
    assert main([*argv, *extra]) == 0
    assert expected in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1000


def test_the_demo_packs_its_days_and_still_checks_its_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN the demo runs with --pack record into a folder
    code = main(["demo", "--pack", "record", "--dest", str(tmp_path), "--progress", "off"])
    out = capsys.readouterr().out
    # THEN the same outcome (89 written, the 404 day failed), in one pack of 2,136 records
    assert code == 0, out
    assert "89 days packed into 1 object(s)" in out
    [pack] = list(tmp_path.rglob("*.ndjson.gz"))
    lines = gzip.decompress(pack.read_bytes()).splitlines()
    assert len(lines) == 2136
    assert {orjson.loads(line)["_fanout"]["index"] for line in lines} == set(range(90)) - {44}
