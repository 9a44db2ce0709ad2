"""The one place secret values are registered and scrubbed from text.

Register every secret value as soon as it is resolved::

    from ingest_core.redact import register_secret
    register_secret(token)          # secret_headers, secret_params, OAuth2 tokens, ...

From then on, for the life of the process, ``scrub`` replaces the value, in
every spelling it can take on its way back to us, by ``REDACTED``. Text is
scrubbed where it leaves the process, not where it is made (docs/RELIABILITY.md,
"Security model"): a hook on ``logging.Logger.makeRecord`` (installed on the
first registration) scrubs every log record, its ``extra`` fields and its
traceback; the engine scrubs each item's result once, before the tally, the
manifest, the result and any ``on_item`` consumer (the CLI, the re-drive file)
see it; ``PartialFailureError``, the CLI's output and the EMF metrics pass
through ``scrub``/``scrub_value`` too.

Spellings. A secret comes back from a hostile or careless API, or from a
library's message, in forms other than the one we sent: percent-encoded by yarl
(which keeps ``/ : @`` and encodes ``+ = space``), by ``quote`` or by
``quote_plus``, in any mix of those, with upper- or lower-case hex; case-folded
(host names are normalised); without its auth scheme (``Bearer ``); as base64
(basic auth); JSON-escaped (``\\u00e9``, ``\\/``); quoted as ``repr(bytes)`` by a
parser (``\\xc3\\xa9``); as IDNA when it was echoed into a host name. Rather
than list every combination, each registered value becomes one pattern in
which every character matches any of its spellings, matched case-insensitively.

Why process-wide rather than per run: log records and late exceptions ("Task
exception was never retrieved", a connection closed after the run) are produced
outside the run's context, and a warm Lambda reuses the same secrets anyway.
Only ``MAX_SECRETS`` values are kept (the oldest forgotten first), so a process
that refreshes tokens for days does not grow without limit. Values shorter
than ``MIN_SECRET_LENGTH`` are not scrubbed: they would turn every message into
noise, and are no secret anyway.

Text must be scrubbed before it is cut to a length: a secret straddling the cut
would no longer match.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar, cast

import idna

REDACTED = "***"
MIN_SECRET_LENGTH = 4
MAX_SECRETS = 256
_MAX_DEPTH = 16  # a result's failures[].params[...] lists sit 5 deep
# "Bearer abc", "Basic abc", "Token abc": a server may echo the credentials alone.
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]* +(?=\S)")
_T = TypeVar("_T")
_ALNUM_RUN_RE = re.compile(r"[A-Za-z0-9]+")
# How JSON and Python's reprs spell these characters besides \\uXXXX / \\xNN.
_ESCAPES = {
    '"': ('\\"',),
    "\\": ("\\\\",),
    "/": ("\\/",),
    "'": ("\\'",),
    "\n": ("\\n",),
    "\r": ("\\r",),
    "\t": ("\\t",),
    "\b": ("\\b",),
    "\f": ("\\f",),
}

_lock = threading.Lock()
_values: OrderedDict[str, None] = OrderedDict()
_forms: list[_Form] = []
_hook_installed = False


def register_secret(value: str | bytes | None) -> None:
    """Scrub ``value`` (in every spelling, see the module docstring) from all text from now on."""
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if len(value) < MIN_SECRET_LENGTH:
        return
    global _forms
    with _lock:
        _values[value] = None
        _values.move_to_end(value)
        while len(_values) > MAX_SECRETS:
            _values.popitem(last=False)
        _forms = _compile(_values)
    _install_record_hook()


def spellings(value: str) -> list[str]:
    """The whole-value forms of ``value`` worth matching, each then matched char by char.

    The value itself, without an auth scheme, and their base64 (basic auth) and
    IDNA (a host name) forms; the per-character spellings cover the rest.
    """
    bare = _SCHEME_RE.sub("", value, count=1) if _SCHEME_RE.match(value) else value
    forms: dict[str, None] = {}
    for part in (value, bare):
        forms[part] = None
        raw = part.encode("utf-8", "replace")
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            # Unpadded: the padding depends on what follows in a longer credential.
            forms[encoded.decode("ascii").rstrip("=")] = None
        forms[_idna(part)] = None
    return [form for form in forms if len(form) >= MIN_SECRET_LENGTH]


def _idna(value: str) -> str:
    try:
        return idna.encode(value.lower(), uts46=True).decode("ascii")
    except (UnicodeError, ValueError):  # most secrets are no host name
        return ""


def _compile(values: OrderedDict[str, None]) -> list[_Form]:
    known = {form.text: form for form in _forms}
    forms = {form: known.get(form) or _Form.of(form) for v in values for form in spellings(v)}
    # Longest first, so a value containing another is replaced whole.
    return sorted(forms.values(), key=lambda form: len(form.text), reverse=True)


@dataclass(frozen=True, slots=True)
class _Form:
    """One spelling pattern, and a plain substring every match contains, case-folded.

    Python's ``re`` has no fast path for alternations of character groups: the
    anchor (the form's longest run of ASCII letters and digits, which have no
    spelling but their case) keeps ``scrub`` a few substring tests on text that
    holds no secret, however many values are registered.
    """

    text: str
    anchor: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, text: str) -> _Form:
        runs = _ALNUM_RUN_RE.findall(text)
        anchor = max(runs, key=len).casefold() if runs else ""
        return cls(text, anchor, re.compile(_form_pattern(text), re.IGNORECASE))


def _form_pattern(form: str) -> str:
    return "".join(_char_pattern(char) for char in form)


def _char_pattern(char: str) -> str:
    spelled = _char_spellings(char)
    if len(spelled) == 1:
        return re.escape(char)
    return "(?:" + "|".join(map(re.escape, sorted(spelled, key=len, reverse=True))) + ")"


def _char_spellings(char: str) -> set[str]:
    """Every way ``char`` is written in a URL, JSON, a repr or a case-folded copy."""
    spelled = {char, char.lower(), char.upper(), char.casefold()}
    if char.isascii() and char.isalnum():
        return spelled  # no encoder we meet escapes these, and yarl decodes them
    utf8 = char.encode("utf-8", "surrogatepass")
    percent = "".join(f"%{byte:02X}" for byte in utf8)
    spelled |= {percent, percent.replace("%", "%25")}  # encoded once, or twice
    if char == " ":
        spelled |= {"+"}  # quote_plus and forms
    if char == "+":
        spelled |= {" "}  # a "+" a server decoded as a form-encoded space
    spelled |= set(_ESCAPES.get(char, ()))
    code = ord(char)
    if code > 0x7E or code < 0x20:
        spelled |= _escaped(char, code, utf8)
    return {form for form in spelled if form}


def _escaped(char: str, code: int, utf8: bytes) -> set[str]:
    """``\\u00e9`` (JSON, repr), ``\\xc3\\xa9`` (repr of bytes), mojibake and Latin-1 forms."""
    forms = {"".join(f"\\x{byte:02x}" for byte in utf8), utf8.decode("latin-1")}
    if code <= 0xFF:
        forms |= {f"\\x{code:02x}", f"%{code:02X}"}
    if code <= 0xFFFF:
        forms.add(f"\\u{code:04x}")
    else:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms |= {f"\\U{code:08x}", f"\\u{high:04x}\\u{low:04x}"}
    return forms


def scrub(text: str) -> str:
    """``text`` with every registered secret, in any spelling, replaced by ``REDACTED``."""
    forms = _forms
    if not forms or not text:
        return text
    folded = text.casefold()
    for form in forms:
        if form.anchor in folded:
            text = form.pattern.sub(REDACTED, text)
    return text


def clip(text: str, limit: int) -> str:
    """``text`` scrubbed, then cut to ``limit`` characters: the only safe order.

    Cut first, a secret across the cut would no longer match, and its first
    characters would be left.
    """
    return scrub(text)[:limit]


def contains_secret(text: str) -> bool:
    """True when ``text`` holds a registered secret, in any spelling."""
    forms = _forms
    if not forms or not text:
        return False
    folded = text.casefold()
    return any(form.anchor in folded and form.pattern.search(text) for form in forms)


def scrub_value(value: _T, _depth: int = 0) -> _T:
    """``scrub`` applied to the strings inside ``value`` (dicts, their keys, lists, tuples)."""
    return cast(_T, _scrubbed(value, _depth))


def _scrubbed(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {
            scrub(k) if isinstance(k, str) else k: _scrubbed(v, depth + 1) for k, v in value.items()
        }
    if type(value) in (list, tuple):  # not a named tuple: its constructor differs
        return type(value)(_scrubbed(v, depth + 1) for v in value)
    return value


def forget_all() -> None:
    """Drop every registered value (tests only)."""
    global _forms
    with _lock:
        _values.clear()
        _forms = []


class RedactedTraceback(Exception):
    """Stands in for a logged exception whose traceback held a secret."""


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def _scrub_record(record: logging.LogRecord) -> None:
    if not _forms:
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


def scrub_exception(exc: BaseException) -> BaseException:
    """``exc`` made safe to leave the process: its text scrubbed, a chain holding a secret cut.

    For an exception about to escape (a handler, the CLI): its type is kept, so
    callers that catch by type (Step Functions' ``Catch``) still can; its args
    are scrubbed in place, and when what caused it quotes a secret (an aiohttp
    error quoting the request URL), the cause is dropped from the chain.
    """
    exc.args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in exc.args)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and contains_secret("".join(traceback.format_exception(cause))):
        exc.__cause__ = None
        exc.__suppress_context__ = True
    return exc


class ScrubbingStream(io.TextIOBase):
    """A text stream that scrubs every write before passing it on (the CLI's stdout, stderr).

    Each ``write`` is scrubbed whole: ``print`` and rich write a line or a
    table at a time, so a secret is never split across two writes.
    """

    def __init__(self, inner: IO[str]) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.contextmanager
def scrubbed_stdio() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` scrubbed for the duration (restored after)."""
    saved = sys.stdout, sys.stderr
    sys.stdout = ScrubbingStream(saved[0])
    sys.stderr = ScrubbingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
