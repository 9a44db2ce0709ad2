"""Every spelling of a secret a test must not find (issue 20), independent of the scrubber.

The oracle of the no-leak tests: written from what encoders do, not from
``ingest_core.redact``, so a spelling the scrubber forgets is a failing test.
Matching is case-insensitive (host names come back lower-cased).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

import idna
from yarl import URL

MIN_FORM = 4  # shorter forms are no secret (ingest_core.redact.MIN_SECRET_LENGTH)


def spellings(secret: str) -> set[str]:
    """``secret`` and its forms: without an auth scheme, URL-encoded, JSON, repr, base64, IDNA."""
    parts = {secret}
    scheme, _, rest = secret.partition(" ")
    if rest.strip() and scheme.isalpha():
        parts.add(rest.lstrip(" "))  # "Bearer abc" echoed as "abc"
    forms: set[str] = set()
    for part in parts:
        forms |= _encodings(part)
    return {form for form in forms if len(form) >= MIN_FORM}


def _encodings(value: str) -> set[str]:
    raw = value.encode("utf-8", "surrogatepass")
    forms = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        quote_plus(value, safe="/:@"),
        _yarl_query(value),
        _yarl_path(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value)[1:-1].replace("/", "\\/"),
        repr(raw)[2:-1],
        repr(value)[1:-1],
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        _idna(value),
    }
    return {form for form in forms if form}


def _yarl_query(value: str) -> str:
    try:
        return URL("http://h/").with_query([("k", value)]).raw_query_string[2:]
    except ValueError:
        return ""


def _yarl_path(value: str) -> str:
    try:
        return URL.build(scheme="http", host="h", path="/" + value).raw_path[1:]
    except ValueError:
        return ""


def _idna(value: str) -> str:
    try:
        return idna.encode(value.lower(), uts46=True).decode("ascii")
    except (UnicodeError, ValueError):
        return ""


def leaks(secrets: Iterable[str], text: str) -> list[str]:
    """The spellings of ``secrets`` found in ``text``, compared case-insensitively."""
    folded = text.casefold()
    return sorted({form for s in secrets for form in spellings(s) if form.casefold() in folded})
