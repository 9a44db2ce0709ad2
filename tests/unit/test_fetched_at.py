"""A pack line's ``fetched_at`` is datetime's ISO text, to the millisecond, from a cache."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import assume, given
from hypothesis import strategies as st

from ingest_core.packing.packer import fetched_at_now

YEAR_2100 = 4_102_444_800.0


def _datetime_text(now: float) -> str:
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@given(st.lists(st.floats(min_value=0, max_value=YEAR_2100), min_size=1, max_size=20))
def test_the_same_text_as_datetime_whatever_second_the_cache_holds(times: list[float]) -> None:
    for now in times:
        # datetime rounds to the microsecond first: within 1 µs of a millisecond
        # boundary the two may differ in the last digit, which no reader can tell.
        assume(abs(now * 1000 - round(now * 1000)) > 1e-3)
        assert fetched_at_now(now) == _datetime_text(now)


def test_now_by_default() -> None:
    before = datetime.now(UTC).isoformat(timespec="seconds")[:19]
    text = fetched_at_now()
    after = datetime.now(UTC).isoformat(timespec="seconds")[:19]
    assert before <= text[:19] <= after and text.endswith("Z") and len(text) == 24
