"""The state of incremental runs (CONTRACT §15), in S3 or in a local folder.

One small JSON object per range, ``{source_id}/_state/{state_key}.json``::

    {"watermark": "2025-03-31", "landed": ["2025-04-02", "2025-04-03"],
     "updated_at": "2025-04-05T06:00:12+00:00", "request_id": "..."}

``watermark`` is the last step (as the range's ``format`` renders it) up to which
every step has landed; ``landed`` lists, in order, the steps after it that have
landed too (at most ``MAX_LANDED``, the earliest kept: a step dropped from the
list is fetched again and overwrites its own key). A run fetches only the steps
after the watermark that are not listed, and the watermark moves only over
listed steps: never across one that has not landed.

Writes are conditional: the version read (S3's ETag, or a local file's content
hash) must still be current, or the object must not exist yet for a first write
(``If-Match`` / ``If-None-Match: *``). ``advance`` re-reads on a lost race and
merges what both runs proved, so racing runs never lose an advance nor move the
watermark backward. A state object that cannot be read is an error naming it: it
is never silently reset.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ingest_core.errors import StateConflict, StateError
from ingest_core.planner import parse_value
from ingest_core.redact import scrub_value
from ingest_core.writers import with_s3_retries

STATE_FOLDER = "_state"
STATE_KEY_HEX = 16
MAX_STATE_BYTES = 64 * 1024
# Steps after the watermark remembered as landed: enough for a failed day plus
# years of daily runs after it, and well inside MAX_STATE_BYTES for any format.
MAX_LANDED = 1000
MAX_WRITE_ATTEMPTS = 10
CONFLICT_BACKOFF_S = 0.05
# S3 answers a lost conditional write with 412, a concurrent one with 409, and an
# If-Match on an object deleted meanwhile with 404: each means "read again".
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})
_CONFLICT_STATUSES = frozenset({404, 409, 412})


@dataclass(frozen=True, slots=True)
class Watermark:
    """The content of a state object."""

    watermark: str | None  # None only before any step next to the range's start landed
    updated_at: str
    request_id: str
    landed: tuple[str, ...] = ()  # steps after the watermark that landed, in order

    def to_json(self) -> bytes:
        """The object's bytes."""
        body = {
            "watermark": self.watermark,
            "landed": list(self.landed),
            "updated_at": self.updated_at,
            "request_id": self.request_id,
        }
        return json.dumps(scrub_value(body), indent=2).encode() + b"\n"  # it leaves the process


@dataclass(frozen=True, slots=True)
class Versioned:
    """A state as read, with the version a conditional write must match."""

    state: Watermark
    version: str


class StateStore(Protocol):
    """Where one watermark lives; ``write`` is conditional on the version read."""

    def describe(self) -> str:
        """``s3://bucket/key`` or the file's path, for messages."""
        ...

    async def read(self) -> Versioned | None:
        """The current state, or None when there is none.

        Raises:
            StateError: the object exists but cannot be read or is malformed.
        """
        ...

    async def write(self, state: Watermark, *, version: str | None) -> None:
        """Store ``state`` if the current version is still ``version`` (None: absent).

        Raises:
            StateConflict: another writer got there first.
            StateError: the write failed otherwise.
        """
        ...

    async def delete(self) -> bool:
        """Remove the state; True if there was one."""
        ...


def default_state_key(endpoint: str, param: str, step: str, extra_params: Mapping[str, Any]) -> str:
    """The first 16 hex of the SHA-256 of what identifies a range's requests.

    ``extra_params`` values count as the text the API receives (``100`` and
    ``"100"`` are one query): an event's typed JSON and the CLI's ``--query
    limit=100`` strings find the same state object.
    """
    texts = {name: param_text(value) for name, value in extra_params.items()}
    canonical = json.dumps(
        {"endpoint": endpoint, "param": param, "step": step, "extra_params": texts},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:STATE_KEY_HEX]


def param_text(value: Any) -> str:
    """A param value as a query string carries it: JSON booleans, lists comma-joined."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(param_text(item) for item in value)
    return str(value)


def state_object_key(source_id: str, state_key: str, prefix: str = "") -> str:
    """``{prefix}{source_id}/_state/{state_key}.json``."""
    return f"{prefix}{source_id}/{STATE_FOLDER}/{state_key}.json"


def decode(raw: bytes, where: str, fmt: str | None = None) -> Watermark:
    """Parse and check a state object's bytes.

    Args:
        raw: the object's content.
        where: the object's name, for the error.
        fmt: when given, the watermark must be a date of this format.

    Raises:
        StateError: naming ``where`` and what is wrong.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"state object {where} is not JSON ({exc})") from None
    fields = ("updated_at", "request_id")
    if (
        not isinstance(body, dict)
        or not all(isinstance(body.get(f), str) for f in fields)
        or not isinstance(body.get("watermark"), str | None)
        or not _is_text_list(body.get("landed", []))
    ):
        raise StateError(
            f"state object {where} must be a JSON object with string fields"
            f" watermark, {', '.join(fields)} and a list of strings landed; fix it with"
            " 'fanout-ingest state set' or remove it with 'fanout-ingest state clear'"
        )
    state = Watermark(
        body["watermark"], body["updated_at"], body["request_id"], tuple(body.get("landed", []))
    )
    if fmt is not None:
        check_state(state, fmt, where)
    return state


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_state(state: Watermark, fmt: str, where: str) -> None:
    """Raise ``StateError`` naming ``where`` unless every date in ``state`` is of ``fmt``."""
    if state.watermark is not None:
        check_watermark(state.watermark, fmt, where)
    for value in state.landed:
        try:
            parse_value(value, fmt)
        except ValueError as exc:
            raise StateError(f"state object {where}: landed {exc}") from None


def check_watermark(watermark: str, fmt: str, where: str) -> None:
    """Raise ``StateError`` naming ``where`` unless ``watermark`` is a date of ``fmt``."""
    try:
        parse_value(watermark, fmt)
    except ValueError as exc:
        raise StateError(f"state object {where}: watermark {exc}") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Progress:
    """What one run proved: the steps it covered, in order, and which of them landed."""

    anchor: str | None  # the watermark its steps follow (None: they start the range)
    steps: Callable[[], Iterable[str]]  # its steps in order, lazily
    landed: Collection[str]


def merge(
    current: Watermark | None, progress: Progress, fmt: str
) -> tuple[str | None, tuple[str, ...]]:
    """The watermark and landed list after ``progress``, given the state now stored.

    The watermark walks the run's steps while each has landed (now or before); it
    walks only from a watermark at or after the run's anchor, since a state moved
    back meanwhile (``state set``) leaves steps between them that nobody fetched.
    """
    mark = current.watermark if current is not None else progress.anchor
    known = set(progress.landed).union(current.landed if current is not None else ())
    if _walks_from(mark, progress.anchor, fmt):
        floor = None if mark is None else parse_value(mark, fmt)
        for value in progress.steps():
            if floor is not None and parse_value(value, fmt) <= floor:
                continue
            if value not in known:
                break
            mark = value
    floor = None if mark is None else parse_value(mark, fmt)
    after = {value: parse_value(value, fmt) for value in known}
    rest = sorted(
        (v for v, at in after.items() if floor is None or at > floor), key=after.__getitem__
    )
    return mark, tuple(rest[:MAX_LANDED])


def _walks_from(mark: str | None, anchor: str | None, fmt: str) -> bool:
    if anchor is None or mark is None:
        return mark is None and anchor is None
    return parse_value(mark, fmt) >= parse_value(anchor, fmt)


async def advance(
    store: StateStore, progress: Progress, *, fmt: str, request_id: str
) -> tuple[Watermark | None, bool]:
    """Record what a run proved: the watermark moves forward only, landed steps are kept.

    A lost race re-reads and merges again, so the result holds what this run and
    any concurrent one proved.

    Returns:
        The state now stored (None: there is none and nothing landed), and whether
        this call wrote it.

    Raises:
        StateError: the object is unreadable, or the race was lost too often.
    """
    for attempt in range(MAX_WRITE_ATTEMPTS):
        current = await store.read()
        stored = None if current is None else current.state
        if stored is not None:
            check_state(stored, fmt, store.describe())
        mark, landed = merge(stored, progress, fmt)
        if stored is None and not progress.landed:
            return None, False  # nothing proved: no state object claiming anything
        if stored is not None and (mark, landed) == (stored.watermark, stored.landed):
            return stored, False
        state = Watermark(mark, _now(), request_id, landed)
        try:
            await store.write(state, version=None if current is None else current.version)
        except StateConflict:
            await asyncio.sleep(CONFLICT_BACKOFF_S * (attempt + 1))
            continue
        return state, True
    raise StateError(
        f"state object {store.describe()}: lost {MAX_WRITE_ATTEMPTS} write races in a row"
    )


async def overwrite(store: StateStore, watermark: str, *, fmt: str, request_id: str) -> Watermark:
    """Set the watermark to ``watermark`` (forward or back), still conditionally.

    Listed steps after the new watermark stay listed (they did land); those at or
    before it are dropped. To fetch landed steps again, clear the state first.
    """
    mark = parse_value(watermark, fmt)
    for attempt in range(MAX_WRITE_ATTEMPTS):
        try:
            current = await store.read()
        except StateError:
            current = None  # replacing a malformed object is what 'set' is for
            await store.delete()
        landed = () if current is None else _after(current.state.landed, mark, fmt)
        state = Watermark(watermark, _now(), request_id, landed)
        try:
            await store.write(state, version=current.version if current else None)
        except StateConflict:
            await asyncio.sleep(CONFLICT_BACKOFF_S * (attempt + 1))
            continue
        return state
    raise StateError(
        f"state object {store.describe()}: lost {MAX_WRITE_ATTEMPTS} write races in a row"
    )


def _after(landed: tuple[str, ...], mark: datetime, fmt: str) -> tuple[str, ...]:
    kept = []
    for value in landed:
        try:
            if parse_value(value, fmt) > mark:
                kept.append(value)
        except ValueError:
            continue  # not a date of this format: nothing a run could use
    return tuple(kept)


# --------------------------------------------------------------------------- S3


class S3StateStore:
    """A state object in S3, written with ``If-Match`` / ``If-None-Match: *``."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        """Args:
        client: an open aiobotocore S3 client (the writer's: its botocore retries
            are off, so every call goes through ``writers.with_s3_retries``).
        bucket: the bucket of the state object.
        key: its key (``state_object_key``).
        """
        self._client = client
        self.bucket = bucket
        self.key = key

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    async def read(self) -> Versioned | None:
        try:
            response = await with_s3_retries(
                "GetObject", lambda: self._client.get_object(Bucket=self.bucket, Key=self.key)
            )
            async with response["Body"] as body:
                # Checked before reading: a huge object at this key is not read whole.
                if response.get("ContentLength", 0) > MAX_STATE_BYTES:
                    raise StateError(
                        f"state object {self.describe()} is over {MAX_STATE_BYTES} bytes"
                    )
                raw = await body.read()
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            if not _is_aws(exc):
                raise  # a bug, not a state problem
            raise self._failed("read", exc) from exc
        return Versioned(decode(raw, self.describe()), response["ETag"])

    async def write(self, state: Watermark, *, version: str | None) -> None:
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
        try:
            await with_s3_retries(
                "PutObject",
                lambda: self._client.put_object(
                    Bucket=self.bucket,
                    Key=self.key,
                    Body=state.to_json(),
                    ContentType="application/json",
                    **condition,
                ),
            )
        except Exception as exc:
            if _is_conflict(exc):
                raise StateConflict(f"state object {self.describe()} changed") from exc
            if not _is_aws(exc):
                raise  # a bug, not a state problem
            raise self._failed("write", exc) from exc

    async def delete(self) -> bool:
        existed = await self._exists()
        try:
            await with_s3_retries(
                "DeleteObject",
                lambda: self._client.delete_object(Bucket=self.bucket, Key=self.key),
            )
        except Exception as exc:
            if not _is_aws(exc):
                raise  # a bug, not a state problem
            raise self._failed("delete", exc) from exc
        return existed

    async def _exists(self) -> bool:
        try:
            await with_s3_retries(
                "HeadObject", lambda: self._client.head_object(Bucket=self.bucket, Key=self.key)
            )
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            if not _is_aws(exc):
                raise  # a bug, not a state problem
            raise self._failed("read", exc) from exc
        return True

    def _failed(self, verb: str, exc: Exception) -> StateError:
        return StateError(f"could not {verb} state object {self.describe()}: {exc}")


def _is_aws(exc: Exception) -> bool:
    return type(exc).__module__.startswith(("botocore", "aiobotocore"))


def _error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


def _is_conflict(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) in _CONFLICT_CODES or status in _CONFLICT_STATUSES


# ------------------------------------------------------------------ local folder


class LocalStateStore:
    """A state file in a local folder: replaced atomically, under a lock file.

    The version is a hash of the file's bytes; a write compares it under an
    exclusive ``flock``, so two processes on one machine behave like two S3
    writers with ``If-Match``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    async def read(self) -> Versioned | None:
        return await asyncio.to_thread(self._read)

    async def write(self, state: Watermark, *, version: str | None) -> None:
        await asyncio.to_thread(self._write, state, version)

    async def delete(self) -> bool:
        return await asyncio.to_thread(self._delete)

    def _read(self) -> Versioned | None:
        raw = self._raw()
        if raw is None:
            return None
        return Versioned(decode(raw, self.describe()), _digest(raw))

    def _raw(self) -> bytes | None:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state file {self.path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"state file {self.path} is over {MAX_STATE_BYTES} bytes")
        return raw

    def _write(self, state: Watermark, version: str | None) -> None:
        with self._locked():
            raw = self._raw()
            if (None if raw is None else _digest(raw)) != version:
                raise StateConflict(f"state file {self.path} changed")
            temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                with temp.open("wb") as file:
                    file.write(state.to_json())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, self.path)
            except OSError as exc:
                temp.unlink(missing_ok=True)
                raise StateError(f"cannot write state file {self.path}: {exc.strerror}") from None

    def _delete(self) -> bool:
        with self._locked():
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = self.path.with_name(f".{self.path.name}.lock").open("a")
        except OSError as exc:
            raise StateError(f"cannot lock state file {self.path}: {exc.strerror}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()
