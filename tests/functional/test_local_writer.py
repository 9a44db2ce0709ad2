"""The local-folder writer (the CLI's --dest): clear write failures, no blocked event loop.

Issue 14: an ``OSError`` from mkdir or open was reported as kind ``connection``
with a traceback, and file writes and fsync ran on the event loop (230 ms of
loop lag measured). Against a real folder, no mocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from ingest_core import LocalDirWriter, LocalWriteError, parse_event, run_job
from ingest_core.netguard import NetPolicy
from ingest_core.settings import Settings
from ingest_core.writers import ObjectMeta
from tests.conftest import StartServer
from tests.support.reliability import assert_counts, event_for
from tests.support.servers import ScriptedAPI

pytestmark = [pytest.mark.timeout(60)]

MiB = 1 << 20
BODY_MB = 64
BODIES = 3
TICK_S = 0.005
# Writing and syncing 3 x 64 MiB on the loop held it for 1.4-2.3 s here; off the
# loop the worst tick is a few ms on a quiet machine. Slack for a loaded 2-core CI.
MAX_LOOP_LAG_S = 0.25

PERMISSIVE = NetPolicy(allow_private_networks=True)


async def test_writes_and_fsync_run_off_the_event_loop(tmp_path: Path) -> None:
    # GIVEN large bodies (made before timing starts) and a ticker measuring loop lag
    data = b"x" * (BODY_MB * MiB)
    writer = LocalDirWriter(tmp_path / "dest")
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        while running:
            started = time.monotonic()
            await asyncio.sleep(TICK_S)
            worst = max(worst, time.monotonic() - started - TICK_S)

    task = asyncio.create_task(ticker())
    try:
        # WHEN they are written, one single put and one in parts
        for index in range(BODIES - 1):
            await writer.put(f"src/{index}.json", data, ObjectMeta())
        upload = await writer.start_multipart(f"src/{BODIES - 1}.json", ObjectMeta())
        for offset in range(0, len(data), 16 * MiB):
            await upload.upload_part(memoryview(data)[offset : offset + 16 * MiB])
        await upload.complete()
    finally:
        running = False
        await task
    # THEN the files are complete and the loop never stalled
    for index in range(BODIES):
        assert (tmp_path / f"dest/src/{index}.json").stat().st_size == len(data)
    assert worst < MAX_LOOP_LAG_S, f"the event loop stalled {worst * 1000:.0f} ms"


@pytest.mark.usefixtures("allow_private")
async def test_a_folder_that_cannot_be_created_fails_the_items_as_write_errors(
    tmp_path: Path, api_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a destination where the key's folder is taken by a file
    (tmp_path / "rel-src").write_text("not a folder")
    api = ScriptedAPI()
    url = api_server(api).url
    caplog.set_level(logging.DEBUG)
    event = event_for(f"{url}/v1", batch=[{"date": "a"}, {"date": "b"}], request_id="r")
    job = parse_event(event, policy=PERMISSIVE)
    # WHEN the job runs into that folder (without a manifest, which would fail alike)
    outcome = await run_job(
        job,
        writer=LocalDirWriter(tmp_path),
        settings=Settings(policy=PERMISSIVE),
        write_manifest=False,
    )
    # THEN both items failed as write errors naming what could not be done, once each
    result = outcome.result
    assert_counts(result)
    assert {(f["kind"], f["attempts"]) for f in result["failures"]} == {("s3_error", 1)}
    for failure in result["failures"]:
        assert failure["error"].startswith(f"could not create {tmp_path / 'rel-src'}/"), failure
    # AND nothing logged a traceback
    assert not [r for r in caplog.records if r.exc_info]


def test_the_write_error_is_an_ingest_write_error(tmp_path: Path) -> None:
    # GIVEN a key whose folder is taken by a file
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "taken").write_text("x")
    writer = LocalDirWriter(dest)
    # WHEN it is written THEN LocalWriteError (an IngestError) names it, and nothing is left
    with pytest.raises(LocalWriteError, match="could not create"):
        asyncio.run(writer.put("taken/k.json", b"{}", ObjectMeta()))
    assert [p.name for p in dest.iterdir()] == ["taken"]
