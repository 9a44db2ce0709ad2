"""Unit tests for ingest_core.keys: templates, params hashes, key validation."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_core.keys import (
    DEFAULT_KEY_TEMPLATE,
    MAX_KEY_BYTES,
    KeyTemplate,
    find_collision,
    params_hash,
    validate_key,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _render(template: str, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "source_id": "api-source-1",
        "request_id": "req-1",
        "index": 7,
        "params": {"date": "2025-02-23"},
    }
    values.update(overrides)
    return KeyTemplate.parse(template).render(**values)


# --- params_hash -------------------------------------------------------------


def test_params_hash_is_sha256_of_canonical_json() -> None:
    # GIVEN params in some key order
    params = {"b": 1, "a": "é", "c": [True, 1.5]}
    # WHEN hashed THEN it is the first 16 hex of SHA-256 of sorted, compact, UTF-8 JSON
    canonical = '{"a":"é","b":1,"c":[true,1.5]}'.encode()
    assert params_hash(params) == hashlib.sha256(canonical).hexdigest()[:16]


def test_params_hash_ignores_key_order() -> None:
    # GIVEN the same params in two orders WHEN hashed THEN equal
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1})


def test_params_hash_distinguishes_types() -> None:
    # GIVEN values that print alike but differ in JSON type WHEN hashed THEN they differ
    hashes = {params_hash({"a": v}) for v in ("1", 1, 1.0, True)}
    assert len(hashes) == 4


def test_params_hash_refuses_nan() -> None:
    # GIVEN a NaN (not JSON) WHEN hashed THEN ValueError rather than a silent "NaN"
    with pytest.raises(ValueError):
        params_hash({"a": float("nan")})


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.booleans())))
def test_params_hash_is_16_lowercase_hex(params: dict[str, Any]) -> None:
    # GIVEN any params WHEN hashed THEN 16 lowercase hex characters
    assert re.fullmatch(r"[0-9a-f]{16}", params_hash(params))


# --- parsing templates -------------------------------------------------------


def test_default_template_renders_the_original_scheme() -> None:
    # GIVEN the default template WHEN rendered THEN source/request-index.json
    assert _render(DEFAULT_KEY_TEMPLATE) == "api-source-1/req-1-7.json"


def test_every_placeholder_renders() -> None:
    # GIVEN a template using every placeholder
    template = "{source_id}/{param.date}/{params_hash}/{request_id}-{index}.json"
    # WHEN rendered THEN each is substituted
    expected_hash = params_hash({"date": "2025-02-23"})
    assert _render(template) == f"api-source-1/2025-02-23/{expected_hash}/req-1-7.json"


def test_escaped_braces_are_literal() -> None:
    # GIVEN doubled braces WHEN rendered THEN single literal braces
    assert _render("{source_id}/{{x}}-{index}") == "api-source-1/{x}-7"


@pytest.mark.parametrize(
    ("template", "culprit"),
    [
        ("{source}/{index}", "{source}"),
        ("{source_id.__class__}/{index}", "{source_id.__class__}"),
        ("{source_id[0]}/{index}", "{source_id[0]}"),
        ("{param.a.b}/{index}", "{param.a.b}"),
        ("{param.a[0]}/{index}", "{param.a[0]}"),
        ("{param.}/{index}", "{param.}"),
        ("{param}/{index}", "{param}"),
        ("{index:05d}", "{index:05d}"),
        ("{index!r}", "{index!r}"),
        ("{source_id!s:>10}", "{source_id!s:>10}"),
        ("{}/{index}", "{}"),
        ("{0}/{index}", "{0}"),
        ("{Index}", "{Index}"),
    ],
)
def test_parse_rejects_unknown_or_fancy_placeholders(template: str, culprit: str) -> None:
    # GIVEN a template with a placeholder that is not exactly an allowed one
    # WHEN parsed THEN ValueError names the placeholder
    with pytest.raises(ValueError, match=re.escape(culprit)):
        KeyTemplate.parse(template)


@pytest.mark.parametrize("template", ["{source_id", "source_id}", "{index}}", "{{index}", "}{"])
def test_parse_rejects_unbalanced_braces(template: str) -> None:
    # GIVEN unbalanced braces WHEN parsed THEN ValueError says so
    with pytest.raises(ValueError, match="unbalanced braces"):
        KeyTemplate.parse(template)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("/{source_id}/{index}", "starts with '/'"),
        ("{source_id}/../{index}", r"'\.' or '\.\.'"),
        ("{source_id}/./{index}", r"'\.' or '\.\.'"),
        ("{source_id}/\n{index}", "U\\+000A"),
        ("", "non-empty"),
        ("x" * 1100 + "{index}", "1024-byte"),
    ],
)
def test_parse_rejects_literals_that_can_only_make_bad_keys(template: str, reason: str) -> None:
    # GIVEN constant text that no substitution can rescue
    # WHEN parsed THEN ValueError up front, not at the first item
    with pytest.raises(ValueError, match=reason):
        KeyTemplate.parse(template)


def test_param_names_may_hold_odata_and_dash_characters() -> None:
    # GIVEN API param names such as "$filter" and "page-size"
    # WHEN used in a template THEN they render
    key = _render("{param.$filter}/{param.page-size}", params={"$filter": "a b", "page-size": 5})
    assert key == "a%20b/5"


@pytest.mark.parametrize(
    ("template", "unique"),
    [
        (DEFAULT_KEY_TEMPLATE, True),
        ("{source_id}/{params_hash}.json", True),
        ("{source_id}/{param.date}.json", False),
        ("{source_id}/{request_id}.json", False),
    ],
)
def test_uses_unique_field(template: str, unique: bool) -> None:
    # GIVEN a template WHEN asked THEN True only with {index} or {params_hash}
    assert KeyTemplate.parse(template).uses_unique_field is unique


def test_param_names_lists_every_param_placeholder() -> None:
    # GIVEN a template with two param placeholders WHEN asked THEN both names
    template = KeyTemplate.parse("{param.a}/{param.b}/{param.a}-{index}")
    assert template.param_names == frozenset({"a", "b"})


# --- rendering params --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("2025-02-23", "2025-02-23"),
        ("a/b", "a%2Fb"),
        ("..", ".."),
        ("x y&z=1", "x%20y%26z%3D1"),
        ("é", "%C3%A9"),
        ("~_-.", "~_-."),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (1.5, "1.5"),
        (["a", "b/c", 3, True], "a%2Cb%2Fc%2C3%2Ctrue"),
        ([], ""),
    ],
)
def test_param_values_are_url_safe(value: Any, rendered: str) -> None:
    # GIVEN a param value WHEN rendered in a key segment THEN it is percent-encoded
    assert _render("d/{param.v}-{index}", params={"v": value}) == f"d/{rendered}-7"


def test_missing_param_names_it() -> None:
    # GIVEN a template using a param the item lacks WHEN rendered THEN ValueError names it
    with pytest.raises(ValueError, match=r"no param 'region'"):
        _render("{source_id}/{param.region}/{index}", params={"date": "2025-01-01"})


def test_suffix_is_appended() -> None:
    # GIVEN a suffix (the writer's ".gz") WHEN rendered THEN it ends the key
    assert _render(DEFAULT_KEY_TEMPLATE, suffix=".gz") == "api-source-1/req-1-7.json.gz"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"source_id": "../x"}, r"'\.' or '\.\.'"),
        ({"source_id": ".."}, r"'\.' or '\.\.'"),
        ({"source_id": "/abs"}, "starts with '/'"),
        ({"source_id": ""}, "starts with '/'"),
        ({"request_id": "a\x00b"}, "U\\+0000"),
        ({"request_id": "a\x85b"}, "U\\+0085"),
        ({"request_id": "a\x7fb"}, "U\\+007F"),
        ({"source_id": "x" * 1020}, "1024-byte"),
    ],
)
def test_raw_ids_are_caught_by_validation(overrides: dict[str, Any], reason: str) -> None:
    # GIVEN a source or request id that would make a dangerous key
    # WHEN rendered THEN validation refuses it
    with pytest.raises(ValueError, match=reason):
        _render(DEFAULT_KEY_TEMPLATE, **overrides)


def test_param_value_dot_dot_segment_is_caught() -> None:
    # GIVEN a param value of ".." filling a whole segment WHEN rendered THEN refused
    with pytest.raises(ValueError, match=r"'\.' or '\.\.'"):
        _render("{source_id}/{param.v}/{index}", params={"v": ".."})


def test_render_never_evaluates_format_fields_in_values() -> None:
    # GIVEN values that look like format fields WHEN rendered THEN they stay literal text
    key = _render(
        "{source_id}/{request_id}-{index}", source_id="{index}", request_id="{0.__class__}"
    )
    assert key == "{index}/{0.__class__}-7"


# --- validate_key ------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a/b/c.json",
        "a..b/c",
        "..a/b",
        "a/b./c",
        "a/.b",
        "a//b",
        "日本/データ.json",
        "x" * 1024,
    ],
)
def test_validate_key_accepts_ordinary_keys(key: str) -> None:
    # GIVEN a key without traversal segments or control characters
    # WHEN validated THEN it comes back unchanged
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("/a", "starts with '/'"),
        ("..", r"'\.' or '\.\.'"),
        (".", r"'\.' or '\.\.'"),
        ("a/../b", r"'\.' or '\.\.'"),
        ("a/./b", r"'\.' or '\.\.'"),
        ("a/..", r"'\.' or '\.\.'"),
        ("a\tb", "U\\+0009"),
        ("a\x9fb", "U\\+009F"),
        ("x" * 1025, "1025 bytes"),
        ("é" * 513, "1026 bytes"),
        ("a\ud800", "UTF-8"),
    ],
)
def test_validate_key_refuses_unsafe_keys(key: str, reason: str) -> None:
    # GIVEN an unsafe key WHEN validated THEN ValueError with the reason
    with pytest.raises(ValueError, match=reason):
        validate_key(key)


def test_long_keys_are_shortened_in_messages() -> None:
    # GIVEN a long bad key WHEN refused THEN the message does not quote all of it
    with pytest.raises(ValueError) as info:
        validate_key("/" + "x" * 900)
    assert len(str(info.value)) < 200


# --- find_collision ----------------------------------------------------------


def test_find_collision_returns_the_first_pair() -> None:
    # GIVEN keys where items 1 and 3 collide first, and 2 and 4 later
    keys = [(0, "a"), (1, "b"), (2, "c"), (3, "b"), (4, "c")]
    # WHEN searched THEN the first repeated key with both indices
    assert find_collision(keys) == (1, 3, "b")


def test_find_collision_none_when_unique() -> None:
    # GIVEN distinct keys (consumed lazily) WHEN searched THEN None
    assert find_collision((i, f"k{i}") for i in range(1000)) is None


def test_param_only_template_collides_on_equal_params() -> None:
    # GIVEN a param-only template and two items with the same date
    template = KeyTemplate.parse("{source_id}/{param.date}.json")
    items = [{"date": "2025-01-01"}, {"date": "2025-01-02"}, {"date": "2025-01-01"}]
    # WHEN rendered and searched THEN items 0 and 2 collide
    keys = (
        (i, template.render(source_id="s", request_id="r", index=i, params=p))
        for i, p in enumerate(items)
    )
    assert find_collision(keys) == (0, 2, "s/2025-01-01.json")


# --- properties --------------------------------------------------------------


def _is_safe(key: str) -> bool:
    segments = key.split("/")
    return (
        0 < len(key.encode("utf-8")) <= MAX_KEY_BYTES
        and not key.startswith("/")
        and not _CONTROL.search(key)
        and "." not in segments
        and ".." not in segments
    )


_IDS = st.text(alphabet=st.characters(codec="utf-8"), max_size=600) | st.sampled_from(
    ["..", ".", "../x", "/", "", "a/..", "\x00"]
)
_PARAM_VALUES = st.one_of(
    st.text(max_size=300), st.integers(), st.booleans(), st.lists(st.text(max_size=20), max_size=5)
)


@settings(max_examples=300, deadline=None)
@given(
    source_id=_IDS,
    request_id=_IDS,
    index=st.integers(min_value=0, max_value=10**9),
    value=_PARAM_VALUES,
    template=st.sampled_from(
        [
            DEFAULT_KEY_TEMPLATE,
            "{source_id}/{param.v}/{request_id}-{index}",
            "{param.v}",
            "{source_id}",
        ]
    ),
)
def test_rendered_keys_are_safe_or_refused(
    source_id: str, request_id: str, index: int, value: Any, template: str
) -> None:
    # GIVEN arbitrary ids and param values
    parsed = KeyTemplate.parse(template)
    # WHEN rendered
    try:
        key = parsed.render(
            source_id=source_id, request_id=request_id, index=index, params={"v": value}
        )
    except ValueError:
        return  # THEN either refused ...
    # ... or safe: bounded, no traversal, no control characters
    assert _is_safe(key)


@given(st.text(max_size=1100))
def test_validate_key_agrees_with_the_rules(key: str) -> None:
    # GIVEN any text WHEN validated THEN accepted exactly when it is safe
    try:
        accepted = validate_key(key) == key
    except ValueError:
        accepted = False
    assert accepted == _is_safe(key)


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5))
def test_params_hash_matches_stdlib_json(params: dict[str, str]) -> None:
    # GIVEN string params WHEN hashed THEN it equals the documented recipe
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert params_hash(params) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
