"""The one place secret values are registered and scrubbed from text.

Register every secret value as soon as it is resolved::

    from ingest_core.redact import register_secret
    register_secret(token)          # secret_headers, secret_params, OAuth2 tokens, ...

From then on, for the life of the process:

- every log record (any logger, any level, its message, its ``extra`` fields and
  its traceback) has the value replaced by ``REDACTED``: a hook on
  ``logging.Logger.makeRecord`` is installed on the first registration;
- every item's error text is scrubbed by ``results.Tally`` before it reaches the
  manifest or the result, and ``PartialFailureError`` scrubs its own text;
- any other text can be passed through ``scrub``.

Why process-wide rather than per run: log records and late exceptions ("Task
exception was never retrieved", a connection closed after the run) are produced
outside the run's context, and a warm Lambda reuses the same secrets anyway.
Only ``MAX_SECRETS`` values are kept (the oldest forgotten first), so a process
that refreshes tokens for days does not grow without limit.

Common encodings of a value (percent-encoding as in a URL, the escaped form of
``repr(bytes)`` as in a parser's message) are registered with it. Values shorter
than ``MIN_SECRET_LENGTH`` are not scrubbed: they would turn every message into
noise, and are no secret anyway.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "***"
MIN_SECRET_LENGTH = 4
MAX_SECRETS = 1024
_MAX_DEPTH = 4

_lock = threading.Lock()
_values: OrderedDict[str, None] = OrderedDict()
_pattern: re.Pattern[str] | None = None
_hook_installed = False


def register_secret(value: str | bytes | None) -> None:
    """Scrub ``value`` (and its usual encodings) from all text from now on."""
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    forms: set[str] = set()
    # "Bearer abc": a server may echo the credentials without their scheme.
    for part in {value, value.partition(" ")[2].strip()}:
        forms |= {part, quote(part, safe=""), quote_plus(part, safe=""), _bytes_repr(part)}
    global _pattern
    with _lock:
        for form in forms:
            if len(form) >= MIN_SECRET_LENGTH:
                _values[form] = None
                _values.move_to_end(form)
        while len(_values) > MAX_SECRETS:
            _values.popitem(last=False)
        # Longest first, so a value containing another is replaced whole.
        ordered = sorted(_values, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
    _install_record_hook()


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``REDACTED``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def contains_secret(text: str) -> bool:
    """True when ``text`` holds a registered secret."""
    pattern = _pattern
    return pattern is not None and pattern.search(text) is not None


def scrub_value(value: Any, _depth: int = 0) -> Any:
    """``scrub`` applied to the strings inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, str):
        return scrub(value)
    if _depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: scrub_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v, _depth + 1) for v in value)
    return value


def forget_all() -> None:
    """Drop every registered value (tests only)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None


def _bytes_repr(value: str) -> str:
    # Parsers quote raw bytes as ``b'...'``: backslashes doubled, non-ASCII as \\xNN.
    return repr(value.encode("utf-8", "replace"))[2:-1]


class RedactedTraceback(Exception):
    """Stands in for a logged exception whose traceback held a secret."""


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def _scrub_record(record: logging.LogRecord) -> None:
    if _pattern is None:
        return
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to the formatter to report
        return
    if contains_secret(message):
        record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info))
        if contains_secret(text):
            stand_in = RedactedTraceback(scrub(text))
            record.exc_info = (RedactedTraceback, stand_in, None)
            record.exc_text = None
    for name, value in list(record.__dict__.items()):
        if name not in _STANDARD_ATTRS and isinstance(value, str | dict | list | tuple):
            record.__dict__[name] = scrub_value(value)


def _install_record_hook() -> None:
    """Scrub every record as it is made, by wrapping ``logging.Logger.makeRecord``.

    Not a record factory: ``makeRecord`` adds the ``extra`` fields after the
    factory returns, and those would escape. Not a handler filter: handlers come
    and go (Powertools', pytest's) and a filter on one misses the others.
    """
    global _hook_installed
    with _lock:
        if _hook_installed:
            return
        original = logging.Logger.makeRecord

        def make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = original(self, *args, **kwargs)
            _scrub_record(record)
            return record

        logging.Logger.makeRecord = make_record  # type: ignore[method-assign]
        _hook_installed = True
