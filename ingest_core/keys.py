"""Object keys: templates, params hashes and validation (CONTRACT §5).

A ``key_template`` is user input, so it is parsed once with
``string.Formatter().parse`` and rendered by plain substitution: ``str.format``
is never called on it, which rules out ``{source_id.__class__}``-style attribute
and index access. Every rendered key then goes through ``validate_key``, which is
what actually protects the bucket: ``source_id`` and ``request_id`` are
substituted raw, so a source id of ``../x`` is caught there.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

DEFAULT_KEY_TEMPLATE = "{source_id}/{request_id}-{index}.json"
PAGINATED_KEY_TEMPLATE = "{source_id}/{request_id}-{index}-{page}.json"
MAX_KEY_BYTES = 1024
# An incremental range's default keys name the step, not the run (CONTRACT §15).
INCREMENTAL_KEY_TEMPLATE = "{source_id}/{param.%s}.json"
INCREMENTAL_PAGINATED_KEY_TEMPLATE = "{source_id}/{param.%s}-{page}.json"
INCREMENTAL_PACK_KEY_TEMPLATES = {
    "gzip": "{source_id}/{step}.ndjson.gz",
    "none": "{source_id}/{step}.ndjson",
}

_FIXED_FIELDS = frozenset({"source_id", "request_id", "index", "page", "params_hash"})
_UNIQUE_FIELDS = frozenset({"index", "params_hash"})
_PARAM_PREFIX = "param."
# Dots and brackets would read as attribute or index access; whitespace and
# control characters are never part of a sensible param name.
_PARAM_NAME_RE = re.compile(r"[^.\[\]\s\x00-\x1f\x7f-\x9f]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_QUOTE_SAFE = "-_.~"
# Values orjson spells exactly as ``json.dumps`` does (not floats: 1e16 vs 1e+16).
_ORJSON_SAME_TYPES = frozenset({str, int, bool, type(None)})


def manifest_key(
    source_id: str,
    request_id: str,
    span: tuple[int, int] | None = None,
    prefix: str = "",
) -> str:
    """``{prefix}{source_id}/_manifests/{request_id}[-{first}-{last}].json``."""
    name = request_id if span is None else f"{request_id}-{span[0]}-{span[1]}"
    return f"{prefix}{source_id}/_manifests/{name}.json"


def incremental_key_template(param: str, *, paged: bool = False) -> str:
    """The default key of an incremental range: one object per step, named by it.

    A param name a placeholder cannot carry (dots, brackets) names the step by
    its params hash instead.
    """
    if not _PARAM_NAME_RE.fullmatch(param):
        return "{source_id}/{params_hash}" + ("-{page}.json" if paged else ".json")
    template = INCREMENTAL_PAGINATED_KEY_TEMPLATE if paged else INCREMENTAL_KEY_TEMPLATE
    return template % param


def params_hash(params: Mapping[str, Any]) -> str:
    """First 16 hex characters of the SHA-256 of the canonical JSON of ``params``.

    Canonical JSON is ``json.dumps(params, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)`` encoded as UTF-8. The standard library
    is used rather than orjson on purpose: anyone can recompute the hash with
    Python's ``json`` module, and floats are spelled as Python spells them.

    Args:
        params: One item's query params (JSON-serialisable values).

    Returns:
        16 lowercase hex characters.

    Raises:
        ValueError: a value is NaN or infinite (not JSON).
        TypeError: a value is not JSON-serialisable.
    """
    if _ORJSON_SAME_TYPES.issuperset(map(type, params.values())):
        # The common case (dates, ids, flags), about 4x cheaper: orjson writes the same
        # bytes for these types, keys sorted by code point like sort_keys=True. It
        # refuses what json would not write the same (non-str keys, lone surrogates,
        # ints beyond 64 bits): those fall through to the definition below.
        try:
            canonical_bytes = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass
        else:
            return hashlib.sha256(canonical_bytes).hexdigest()[:16]
    canonical = json.dumps(
        dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def validate_key(key: str) -> str:
    """Check that ``key`` is a safe S3 object key and return it unchanged.

    Args:
        key: The rendered key.

    Returns:
        ``key``.

    Raises:
        ValueError: empty, over 1,024 UTF-8 bytes, not encodable as UTF-8, starts
            with ``/``, has a ``.`` or ``..`` segment, or contains a control
            character (U+0000-U+001F, U+007F-U+009F).
    """
    if not key:
        raise ValueError("key is empty")
    _check_size(key)
    if key.startswith("/"):
        raise ValueError(f"key {_show(key)} starts with '/'")
    control = _CONTROL_RE.search(key)
    if control is not None:
        code = f"U+{ord(control.group()):04X}"
        raise ValueError(f"key {_show(key)} contains control character {code}")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError(f"key {_show(key)} has a '.' or '..' path segment")
    return key


def _check_size(key: str) -> None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"key {_show(key)} is not valid UTF-8 (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"key is {size} bytes in UTF-8, over the {MAX_KEY_BYTES}-byte limit")


def _show(key: str) -> str:
    # Keys can be 1 KiB; an error message needs only enough to recognise one.
    return repr(key if len(key) <= 80 else key[:77] + "...")


def find_collision(keys: Iterable[tuple[int, str]]) -> tuple[int, int, str] | None:
    """Find the first two items that map to the same key.

    Args:
        keys: ``(index, key)`` pairs, in plan order.

    Returns:
        ``(first_index, second_index, key)`` for the first repeated key, or None.
    """
    seen: dict[str, int] = {}
    for index, key in keys:
        first = seen.setdefault(key, index)
        if first != index:
            return first, index, key
    return None


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A validated ``key_template``; build it with ``KeyTemplate.parse``.

    ``parts`` holds ``(literal, field)`` pairs in order, where ``field`` is one of
    ``source_id``, ``request_id``, ``index``, ``params_hash``, ``param.NAME`` or
    None after the trailing literal.
    """

    template: str
    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, template: str) -> KeyTemplate:
        """Validate ``template`` once and return it ready to render.

        Args:
            template: E.g. ``"{source_id}/{param.date}/{request_id}-{index}.json"``.

        Returns:
            The parsed template.

        Raises:
            ValueError: an unknown placeholder, a format spec or conversion,
                attribute or index access, unbalanced braces, or literal text
                that can only produce invalid keys (names the culprit).
        """
        if not isinstance(template, str) or not template:
            raise ValueError("key_template must be a non-empty string")
        parsed = cls(template, _parse_parts(template))
        parsed._check_literals()
        return parsed

    @staticmethod
    def field_names(template: str) -> frozenset[str]:
        """The placeholder names of any key template; empty when it does not parse."""
        try:
            return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)
        except ValueError:
            return frozenset()  # reported where the template is validated

    @property
    def uses_unique_field(self) -> bool:
        """True when the template has ``{index}`` or ``{params_hash}``.

        Such templates cannot collide within one batch, except ``{params_hash}``
        for items whose params are identical. Templates built only from
        ``{param.NAME}`` (and constants) can collide, so the engine checks those.
        """
        return any(field in _UNIQUE_FIELDS for _, field in self.parts)

    @property
    def uses_page(self) -> bool:
        """True when the template has ``{page}`` (CONTRACT §11)."""
        return any(field == "page" for _, field in self.parts)

    @property
    def param_names(self) -> frozenset[str]:
        """The NAMEs of every ``{param.NAME}`` placeholder."""
        return frozenset(
            field.removeprefix(_PARAM_PREFIX)
            for _, field in self.parts
            if field is not None and field.startswith(_PARAM_PREFIX)
        )

    def render(
        self,
        *,
        source_id: str,
        request_id: str,
        index: int,
        params: Mapping[str, Any],
        suffix: str = "",
        page: int = 0,
    ) -> str:
        """Render one item's key and validate it.

        Args:
            source_id: Substituted as is (validation guards it).
            request_id: Substituted as is (validation guards it).
            index: The item's global index.
            params: The item's params, for ``{param.NAME}`` and ``{params_hash}``.
            suffix: Appended after rendering (the writer passes ``".gz"``).
            page: The 0-based page number within the item, for ``{page}``.

        Returns:
            The validated key.

        Raises:
            ValueError: a ``{param.NAME}`` is missing from ``params``, or the key
                fails ``validate_key``.
        """
        fixed = {
            "source_id": source_id,
            "request_id": request_id,
            "index": str(index),
            "page": str(page),
        }
        out: list[str] = []
        for literal, field in self.parts:
            out.append(literal)
            if field is not None:
                out.append(_field_value(field, fixed, params))
        out.append(suffix)
        return validate_key("".join(out))

    def _check_literals(self) -> None:
        """Reject templates whose constant text alone makes every key invalid."""
        sample = {name: "p" for name in self.param_names}
        try:
            self.render(source_id="s", request_id="r", index=0, params=sample)
        except ValueError as exc:
            raise ValueError(
                f"key_template {self.template!r} cannot produce a valid key: {exc}"
            ) from None


def _parse_parts(template: str) -> tuple[tuple[str, str | None], ...]:
    try:
        raw = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"key_template {template!r} has unbalanced braces: {exc}") from None
    return tuple((literal, _check_field(field, spec, conv)) for literal, field, spec, conv in raw)


def _check_field(field: str | None, spec: str | None, conversion: str | None) -> str | None:
    if field is None:
        return None
    shown = (
        "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    )
    if conversion is not None or spec:
        raise ValueError(f"placeholder {shown} may not have a conversion or format spec")
    if field in _FIXED_FIELDS:
        return field
    name = field.removeprefix(_PARAM_PREFIX)
    if field.startswith(_PARAM_PREFIX) and _PARAM_NAME_RE.fullmatch(name):
        return field
    raise ValueError(
        f"placeholder {shown} is not one of {{source_id}}, {{request_id}}, {{index}},"
        " {page}, {params_hash} or {param.NAME}"
    )


def _field_value(field: str, fixed: Mapping[str, str], params: Mapping[str, Any]) -> str:
    if field in fixed:
        return fixed[field]
    if field == "params_hash":
        return params_hash(params)
    name = field.removeprefix(_PARAM_PREFIX)
    if name not in params:
        raise ValueError(f"key_template uses {{{field}}} but the item has no param {name!r}")
    return quote(_param_text(params[name]), safe=_QUOTE_SAFE)


def _param_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_scalar_text(item) for item in value)
    return _scalar_text(value)


def _scalar_text(value: Any) -> str:
    # JSON spelling for booleans: "true" reads better in a key than Python's "True".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class PackKeys:
    """Renders ``pack.key_template``; deterministic for a request id and plan.

    With ``{step}`` (a ``date_range``'s param value, URL-safe) each object holds
    one step and is named by it, so a step packed again overwrites its object.
    """

    template: str
    source_id: str
    request_id: str
    first_index: int
    step_param: str | None = None  # the date_range's param, for {step}

    @property
    def per_step(self) -> bool:
        """True when every object holds one step (the template has ``{step}``)."""
        return "step" in KeyTemplate.field_names(self.template)

    def key(self, part: int, params: Mapping[str, Any] | None = None) -> str:
        """The key of object ``part``; ``params`` are its (one) item's, for ``{step}``.

        Raises:
            ValueError: ``{step}`` without a step value, or an invalid key.
        """
        values = {
            "source_id": self.source_id,
            "request_id": self.request_id,
            "first_index": str(self.first_index),
            "part": str(part),
        }
        if self.per_step:
            values["step"] = self._step(params)
        out = []
        for literal, name, _, _ in string.Formatter().parse(self.template):
            out.append(literal)
            if name is not None:
                out.append(values[name])
        return validate_key("".join(out))

    def _step(self, params: Mapping[str, Any] | None) -> str:
        if self.step_param is None or params is None or self.step_param not in params:
            raise ValueError("{step} names a date_range's step: it needs a date_range")
        return quote(_param_text(params[self.step_param]), safe=_QUOTE_SAFE)
