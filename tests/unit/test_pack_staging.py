"""Staged pack lines and the byte budget (CONTRACT §13, §16): every staged byte reserved.

A record unit's lines can be many times the body they come from (each record line
carries its ``_fanout`` envelope); issue 17 measured 20.7x staged beyond the
reservation. The lines are measured now: reserved when the budget has room, else
spilled to a temporary file, and read back in order either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from ingest_core.config import Options, PackOptions
from ingest_core.keys import PackKeys
from ingest_core.limits import ByteBudget
from ingest_core.packing import Packer, RecordUnit, Staged
from ingest_core.results import ItemResult

MiB = 1 << 20
RECORDS = 40_000  # "[1,1,...]": 2 bytes a record in the body, ~100 as a record line


def packer_for(budget_mb: int) -> Packer:
    options = Options(part_size_mb=5, memory_budget_mb=budget_mb, pack=PackOptions(unit="record"))
    results: list[ItemResult] = []
    return Packer(
        writer=None,  # type: ignore[arg-type]  # staging never writes
        options=options,
        keys=PackKeys(PackOptions().template, "s", "r", 0),
        unit=RecordUnit(None),
        budget=ByteBudget(options.memory_budget),
        on_result=results.append,
    )


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def stage(packer: Packer, body: bytes) -> tuple[Staged, int]:
    staged = packer.new_item()
    lines = await packer.stage(
        staged, one_chunk(body), index=0, page=0, params={}, status=200,
        content_type="application/json", content_length=len(body),
    )  # fmt: skip
    return staged, len(lines.data)


def test_record_lines_many_times_the_body_are_reserved_in_full() -> None:
    # GIVEN a body whose record lines are ~50x its size, and a budget with room for them
    body = orjson.dumps([1] * RECORDS)
    packer = packer_for(budget_mb=64)
    # WHEN it is staged
    staged, made = asyncio.run(stage(packer, body))
    # THEN the lines are far larger than the body, and every byte of them is reserved
    assert made > 20 * len(body)
    assert staged.in_memory == made
    assert staged.reserved >= made
    assert packer.budget.peak_reserved >= made
    staged.release()


def test_lines_the_budget_cannot_hold_are_spilled_and_read_back_in_order() -> None:
    # GIVEN a budget smaller than the lines a body makes
    body = orjson.dumps(list(range(RECORDS * 3)))
    packer = packer_for(budget_mb=7)  # a packed body may be up to (7 - 5) / 2 MiB
    # WHEN it is staged
    staged, made = asyncio.run(stage(packer, body))
    # THEN nothing of it is held in memory or reserved, and the lines read back whole
    assert made > packer.budget.capacity
    assert staged.in_memory == 0 and staged.reserved == 0
    back = b"".join(bytes(chunk) for chunk in staged.chunks())
    assert len(back) == made == staged.size
    numbers = [orjson.loads(line)["value"] for line in back.splitlines()]
    assert numbers == list(range(RECORDS * 3))
    staged.release()
