"""Configurations the generative test found broken, kept as named regression tests.

Each is the shrunk ``World`` of a finding (numbered as in the generative test's
findings log, dated in the test's docstring), run through the same harness and
invariants as tests/property/test_pipeline.py.
"""

from __future__ import annotations

import pytest

from tests.property.harness import Servers
from tests.property.invariants import check_world
from tests.property.model import AMPLE_DEADLINE_S, ApiFault, S3Fault, World

pytestmark = [pytest.mark.usefixtures("allow_private"), pytest.mark.timeout(120)]

QUIET = World(
    pagination="offset",
    page_size=3,
    totals=(2,),
    parallel=True,
    total_source="total_header",
    max_pages=None,
    pack=None,
    gzip=False,
    sink="lean",
    concurrency=2,
    memory_budget_mb=8,
    deadline_s=AMPLE_DEADLINE_S,
    max_attempts=3,
    pad=0,
)


def world(**changes: object) -> World:
    fields = {name: getattr(QUIET, name) for name in World.__dataclass_fields__}
    return World(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"total_source": "total_path"},
        {"pagination": "page_number", "total_source": "total_pages_path"},
        {"pagination": "page_number", "total_source": "total_header", "totals": (3, 1)},
        {"pack": "response", "memory_budget_mb": 10},
    ],
)
def test_finding_1_a_known_total_that_fits_on_page_0_succeeds(
    servers: Servers, shape: dict[str, object]
) -> None:
    """Finding 1 (2026-12-06): the item failed `connection` ("Set of Tasks/Futures is
    empty.") with page 0 in S3 but not in the manifest; fixed by the one-pipeline change."""
    check_world(world(**shape), servers)


@pytest.mark.parametrize("pagination", [None, "link_header"])
def test_finding_6_a_chain_that_fails_on_429s_counts_them(
    servers: Servers, pagination: str | None
) -> None:
    """Finding 6 (2026-12-06): a page failing after two 429s reported throttled 0."""
    check_world(
        world(
            pagination=pagination,
            page_size=1,
            totals=(0,),
            total_source=None,
            parallel=False,
            sink="local",
            concurrency=1,
            memory_budget_mb=5,
            max_attempts=2,
            api_faults=(ApiFault(item=0, page=0, fault="429", times=2, retry_after="0"),),
        ),
        servers,
    )


def test_finding_2_a_packed_run_with_a_hung_put_returns_before_its_deadline(
    servers: Servers,
) -> None:
    """Finding 2 (2026-12-06): the pack object's PUT never answered and the run returned
    +1.76 s past its 2.5 s deadline (close, then abort, then abort again, each waited)."""
    check_world(
        world(
            pagination="cursor",
            page_size=1,
            totals=(3,) * 6,
            total_source=None,
            pack="response",
            memory_budget_mb=10,
            deadline_s=2.5,
            s3_faults=(S3Fault("PutObject", "hang", 1),),
        ),
        servers,
    )


def test_finding_5_packed_chains_of_large_pages_do_not_wait_on_the_budget(
    servers: Servers,
) -> None:
    """Finding 5 (2026-12-06): two packed chains of ~750 KB pages each stopped after two
    pages, waiting for budget their own staged pages held, until the hard stop."""
    check_world(
        world(
            pagination="offset",
            page_size=3,
            totals=(10, 6),
            parallel=False,
            total_source=None,
            max_pages=3,
            pack="record",
            sink="local",
            concurrency=6,
            memory_budget_mb=11,
            max_attempts=2,
            pad=250_000,
        ),
        servers,
    )
