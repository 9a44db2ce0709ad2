"""A list of query-parameter sets from a JSONL or CSV file, or stdin, read lazily.

JSONL: one JSON object per line, its fields the request's params (values: strings,
numbers, booleans or lists of those); blank lines are skipped. CSV: a header row
names the params, each further row is one request; an empty cell leaves that
param out. The format comes from ``--input-format``, else the file's suffix
(``.csv``; ``.jsonl``/``.ndjson``/``.json``), else the first character (``{``).

Every line is checked once, before any request, in one streaming pass that also
counts the items and hashes them (the default request id, so the same list gives
the same keys). The items are then read again lazily, one line at a time, so a
list of a million lines never exists in memory. Stdin cannot be read twice: it is
copied to a temporary file during the check, removed when the run ends.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal

import orjson
from pydantic import TypeAdapter, ValidationError

from ingest_core.cli.common import UsageError
from ingest_core.ranges import ParamsModel

InputFormat = Literal["jsonl", "csv"]
FORMATS: Final = ("jsonl", "csv")
SUFFIXES: Final[dict[str, InputFormat]] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
STDIN = "-"
STEM_RE = re.compile(r"[^A-Za-z0-9]+")
MAX_STEM = 40
_PARAMS: Final = TypeAdapter(ParamsModel)


@dataclass(frozen=True, slots=True)
class ParamsList:
    """A checked list: where it is, its format, how many items and their digest."""

    path: Path
    fmt: InputFormat
    count: int
    digest: str  # sha256 of the items as read, hex
    name: str  # what the user gave (a path, or "-" for stdin)
    flag: str  # how errors name it (ITEMS, --from)

    def rows(self) -> Generator[dict[str, Any], None, None]:
        """The items again, lazily, in file order (each call starts over)."""
        with self.path.open("rb") as source:
            for _, params in _parse(source, self.fmt, self.name, self.flag):
                yield params

    def stem(self) -> str:
        """A short, key-safe name of the list (``stdin`` for ``-``)."""
        if self.name == STDIN:
            return "stdin"
        stem = STEM_RE.sub("-", Path(self.name).stem).strip("-")
        return stem[:MAX_STEM] or "list"


@contextlib.contextmanager
def open_params(name: str, fmt: str | None, *, flag: str) -> Iterator[ParamsList]:
    """Check every line of ``name`` (a path, or ``-`` for stdin) and yield the list.

    Raises:
        UsageError: on ``flag``: the file cannot be read, or a line is not a
            params object (naming the line number and why), or there are no items.
    """
    if name == STDIN:
        with _spooled_stdin(flag) as path:
            yield _checked(path, name, fmt, flag)
        return
    path = Path(name)
    if not path.is_file():
        raise UsageError((flag, f"{name} is not a file"))
    yield _checked(path, name, fmt, flag)


@contextlib.contextmanager
def _spooled_stdin(flag: str) -> Iterator[Path]:
    handle, temp = tempfile.mkstemp(prefix="fanout-list-", suffix=".txt")
    path = Path(temp)
    try:
        with os.fdopen(handle, "wb") as out:
            source = sys.stdin.buffer
            while chunk := source.read(1 << 20):
                out.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _checked(path: Path, name: str, fmt: str | None, flag: str) -> ParamsList:
    chosen = _format(path, name, fmt, flag)
    digest = hashlib.sha256()
    count = 0
    try:
        with path.open("rb") as source:
            for _, params in _parse(source, chosen, name, flag):
                digest.update(orjson.dumps(params, option=orjson.OPT_SORT_KEYS) + b"\n")
                count += 1
    except OSError as exc:
        raise UsageError((flag, f"cannot read {name}: {exc.strerror or exc}")) from None
    if not count:
        raise UsageError((flag, f"{_shown(name)} holds no items"))
    return ParamsList(path, chosen, count, digest.hexdigest(), name, flag)


def _shown(name: str) -> str:
    return "stdin" if name == STDIN else name


def _format(path: Path, name: str, given: str | None, flag: str) -> InputFormat:
    if given is not None:
        return "csv" if given == "csv" else "jsonl"
    by_suffix = SUFFIXES.get(path.suffix.lower()) if name != STDIN else None
    if by_suffix is not None:
        return by_suffix
    with path.open("rb") as source:
        for line in source:
            text = line.lstrip(codecs.BOM_UTF8).strip()
            if text:
                return "jsonl" if text.startswith(b"{") else "csv"
    raise UsageError((flag, f"{_shown(name)} holds no items"))


def _parse(
    source: IO[bytes], fmt: InputFormat, name: str, flag: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = _jsonl(source, name, flag) if fmt == "jsonl" else _csv(source, name, flag)
    for number, params in lines:
        yield number, _valid(params, number, name, flag)


def _bad(name: str, flag: str, number: int, reason: str) -> UsageError:
    return UsageError((flag, f"{_shown(name)} line {number}: {reason}"))


def _jsonl(source: IO[bytes], name: str, flag: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(source, start=1):
        text = line.removeprefix(codecs.BOM_UTF8) if number == 1 else line
        if not text.strip():
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise _bad(name, flag, number, f"not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise _bad(name, flag, number, f"a JSON {type(value).__name__}, not an object")
        yield number, value


def _csv(source: IO[bytes], name: str, flag: str) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(_text_lines(source, name, flag))
    try:
        header = _header(reader, name, flag)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            number = reader.line_num
            if len(row) != len(header):
                reason = f"{len(row)} fields, the header has {len(header)}"
                raise _bad(name, flag, number, reason)
            yield number, {k: v for k, v in zip(header, row, strict=True) if v != ""}
    except csv.Error as exc:
        raise _bad(name, flag, reader.line_num, f"not valid CSV ({exc})") from None


def _text_lines(source: IO[bytes], name: str, flag: str) -> Iterator[str]:
    """Decoded one line at a time, so a bad byte is named by its line."""
    for number, raw in enumerate(source, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise _bad(name, flag, number, "not UTF-8 text") from None


def _header(reader: Any, name: str, flag: str) -> list[str]:
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            blank = [str(i + 1) for i, cell in enumerate(header) if not cell]
            if blank:
                reason = f"the header row has no name in column {', '.join(blank)}"
                raise _bad(name, flag, reader.line_num, reason)
            duplicated = sorted({cell for cell in header if header.count(cell) > 1})
            if duplicated:
                raise _bad(name, flag, reader.line_num, f"the header repeats {duplicated}")
            return header
    raise UsageError((flag, f"{_shown(name)} holds no items"))


def _plain(value: Any) -> bool:
    """A param value the event accepts as it is (the common case, checked without pydantic)."""
    if type(value) in (str, int, bool):
        return True
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is list and all(_plain(v) and type(v) is not list for v in value)


def _valid(params: Any, number: int, name: str, flag: str) -> dict[str, Any]:
    if all(type(k) is str for k in params) and all(_plain(v) for v in params.values()):
        return dict(params)
    # The event's own rules name what is wrong (and accept what the fast path did not).
    try:
        checked: dict[str, Any] = _PARAMS.validate_python(params)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise _bad(name, flag, number, f"param {where!r}: {message}") from None
    return checked
