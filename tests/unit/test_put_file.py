"""Manifests are stored a part at a time, never read whole."""

from __future__ import annotations

import os
from pathlib import Path

from ingest_core.writers import LocalDirWriter, ObjectMeta, put_file_in_parts
from tests.unit.test_transfer import MemoryWriter


async def test_large_file_goes_in_parts(tmp_path: Path) -> None:
    # GIVEN a 2.5-part file
    source = tmp_path / "manifest.jsonl"
    data = os.urandom(2_500_000)
    source.write_bytes(data)
    writer = MemoryWriter()
    # WHEN it is stored with 1 MB parts
    await put_file_in_parts(writer, "m", source, ObjectMeta(), part_size=1_000_000)
    # THEN it arrived whole, through a multipart upload, none left open
    assert writer.objects == {"m": data} and not writer.open_uploads


async def test_small_file_is_one_put_and_local_writes_match(tmp_path: Path) -> None:
    source = tmp_path / "m.jsonl"
    source.write_bytes(b'{"index": 0}\n')
    dest = LocalDirWriter(tmp_path / "out")
    await dest.put_file("src/_manifests/r.json", source, "application/x-ndjson")
    assert (tmp_path / "out/src/_manifests/r.json").read_bytes() == b'{"index": 0}\n'
