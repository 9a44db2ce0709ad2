"""``fanout-ingest show``: one item back out of a pack, reading only its bytes (issue 10)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from handler.app import lambda_handler
from ingest_core import LocalDirWriter, parse_event, run_job
from ingest_core.cli import main
from ingest_core.netguard import NetPolicy
from ingest_core.settings import Settings
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.reliability import event_for
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

ITEMS = 60


def body(n: int) -> bytes:
    # ~60 KB each, so 60 of them span several 1 MiB restart blocks of a gzip pack
    return orjson.dumps({"n": n, "rows": [{"k": i, "v": f"{n}-{i}" * 3} for i in range(1500)]})


def api_script() -> ScriptedAPI:
    return ScriptedAPI({str(n): Response(body=body(n)) for n in range(ITEMS)})


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the run before printed (the handler's log line)
    code = main(["show", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def consumed(err: str) -> int:
    return int(err.split(": read ")[1].split(" bytes")[0])


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_show_reads_one_item_from_an_s3_pack_with_a_ranged_get(
    s3: MotoS3, api_server: Any, capsys: pytest.CaptureFixture[str], compression: str
) -> None:
    # GIVEN a packed run into moto
    url = api_server(api_script()).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(ITEMS)],
        request_id=f"show-{compression}",
        options={"pack": {"compression": compression}},
    )
    result = lambda_handler(event, LocalContext(timeout_s=60))
    assert result["status"] == "SUCCESS", result["failures"]
    [key] = [k for k in s3.list_keys(RAW_BUCKET) if "_manifests" not in k]
    size = s3.head(RAW_BUCKET, key)["ContentLength"]
    manifest = f"s3://{RAW_BUCKET}/{result['manifest_key']}"
    for index in (0, 31, ITEMS - 1):
        # WHEN show prints item `index`
        code, out, err = show(capsys, manifest, "--index", str(index))
        # THEN it is the body the API served, read with far fewer bytes than the object
        assert code == 0, err
        assert orjson.loads(out) == orjson.loads(body(index))
        assert consumed(err) < size / 3, (consumed(err), size)
    # AND --lines prints the stored line, provenance included
    code, out, _ = show(capsys, manifest, "--index", "7", "--lines")
    line = orjson.loads(out)
    assert (line["index"], line["params"], line["status"]) == (7, {"date": "7"}, 200)


def test_show_reads_records_from_a_local_folder_pack(
    tmp_path: Path, api_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a record-unit pack written to a local folder (as the CLI's --dest ./folder does)
    url = api_server(api_script()).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": str(n)} for n in range(ITEMS)],
        request_id="show-local",
        records_path="rows",
        options={"pack": {"unit": "record"}},
    )
    job = parse_event(event, policy=NetPolicy(allow_private_networks=True))
    settings = Settings(policy=NetPolicy(allow_private_networks=True))
    outcome = asyncio.run(run_job(job, writer=LocalDirWriter(tmp_path), settings=settings))
    assert outcome.result["status"] == "SUCCESS"
    manifest = tmp_path / outcome.result["manifest_key"]
    # WHEN show prints item 42
    code, out, err = show(capsys, str(manifest), "--index", "42")
    # THEN its 1,500 records, as the API served them
    assert code == 0, err
    assert [orjson.loads(x) for x in out.splitlines()] == orjson.loads(body(42))["rows"]


def test_show_names_a_missing_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_bytes(b'{"index": 1, "status": "written", "key": "x"}\n')
    code, _, err = show(capsys, str(manifest), "--index", "2")
    assert code == 2 and "--index: no item 2" in err
