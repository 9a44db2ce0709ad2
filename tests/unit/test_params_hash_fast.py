"""params_hash's orjson fast path writes exactly the bytes of its json.dumps definition."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_core.keys import params_hash


def by_definition(params: dict[str, Any]) -> str:
    canonical = json.dumps(
        params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


SCALARS = st.one_of(
    st.text(),  # any code point but surrogates (hypothesis leaves those out)
    st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits too
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), SCALARS, max_size=6))
def test_fast_path_equals_the_definition(params: dict[str, Any]) -> None:
    try:
        expected = by_definition(params)
    except UnicodeEncodeError:
        return  # not UTF-8 encodable: no definition to compare with
    assert params_hash(params) == expected


def test_floats_and_lists_still_take_the_definition() -> None:
    # 1e16 is "1e+16" to json and "1e16" to orjson: floats must not take the fast path
    for params in ({"x": 1e16}, {"x": [1, "a", True]}, {"x": 0.1}):
        assert params_hash(params) == by_definition(params)
