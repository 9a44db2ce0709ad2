"""Re-runs of one batch onto the same keys, as a stateful test (CONTRACT §13, §16).

A Distributed Map batch that is retried, or a re-drive, runs the same request id
again over what the last run left. Hypothesis's ``RuleBasedStateMachine`` draws a
batch, then a sequence of re-runs in which the source data and the faults change
(items grow or shrink, fail or recover), and after every run checks the generative
test's invariants on the store as it is, never reset: in particular, no object
under the run's prefix that the latest manifest does not name, and no pack line of
an item the latest manifest calls failed (a re-run must remove its own stale parts).
Unpacked, pages an earlier run wrote beyond an item's new chain may stay (CONTRACT
§11: read pages by the manifest's keys); nothing else may.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from tests.property import profiles
from tests.property.harness import Servers, run_world
from tests.property.invariants import check
from tests.property.model import AMPLE_DEADLINE_S, World, faults_for

pytestmark = [pytest.mark.usefixtures("allow_private"), pytest.mark.timeout(600)]

ITEMS = 4
# Packed runs rotate objects at 1 MB; items of ~1 MB of uncompressed records make one
# object per item or so, so a re-run with fewer or smaller items writes fewer parts.
BIG_PAD = 250_000


@st.composite
def batches(draw: st.DrawFn) -> World:
    """The configuration every run of the machine shares (sizes and faults vary)."""
    pack = draw(st.sampled_from([None, "response", "record"]))
    pagination = None if pack else draw(st.sampled_from([None, "cursor", "offset"]))
    return World(
        pagination=pagination,
        page_size=4,
        totals=(0,) * ITEMS,
        parallel=draw(st.booleans()),
        total_source="total_header" if pagination == "offset" else None,
        max_pages=None,
        pack=pack,
        gzip=False if pack else draw(st.booleans()),
        sink=draw(st.sampled_from(["lean", "sdk", "local"])),
        concurrency=draw(st.integers(1, 4)),
        memory_budget_mb=24,
        deadline_s=AMPLE_DEADLINE_S,
        max_attempts=2,
        pad=BIG_PAD if pack else 0,
        pack_target_mb=1 if pack else None,
    )


class Reruns(RuleBasedStateMachine):
    """One batch, run again and again with the same request id (see the module docstring)."""

    servers: ClassVar[Servers]

    def __init__(self) -> None:
        super().__init__()
        self.base: World | None = None
        self.runs = 0

    @initialize(base=batches())
    def start_clean(self, base: World) -> None:
        self.base = base
        self.servers.prepare(base)  # the store starts empty once, then is kept

    @rule(data=st.data(), totals=st.lists(st.integers(0, 9), min_size=ITEMS, max_size=ITEMS))
    def rerun(self, data: st.DataObject, totals: list[int]) -> None:
        assert self.base is not None
        fields: dict[str, Any] = {n: getattr(self.base, n) for n in World.__dataclass_fields__}
        world = data.draw(faults_for(World(**{**fields, "totals": tuple(totals)})))
        # A folder planted in a kept store would outlive its run: no disk faults here.
        world = World(**{**{n: getattr(world, n) for n in fields}, "disk_fault": False})
        self.servers.prepare(world, keep_store=True)
        check(world, run_world(world, self.servers), self.servers, rerun=True)
        self.runs += 1


def test_reruns_of_one_batch_leave_only_what_the_latest_manifest_names(servers: Servers) -> None:
    Reruns.servers = servers
    run_state_machine_as_test(Reruns, settings=profiles.RERUNS)
