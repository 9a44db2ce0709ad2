"""The re-drive file: every item a run did not land, and what it takes to re-run them.

JSON Lines. The first line is the header, the context of the run::

    {"fanout_ingest_redrive": 1, "request_id": "...", "dest": "s3://bucket/prefix",
     "manifest_prefix": "prefix/", "api_config": {...}, "options": {...},
     "allow_private_networks": false}

and every further line is one item that failed or was not attempted::

    {"index": 7, "params": {"date": "2025-01-08"}, "status": "failed",
     "kind": "http_status", "http_status": 404, "error": "HTTP 404 after 1 attempt"}

It is built from the engine's ``on_item`` callback, not from ``result["failures"]``
(which is capped), and streamed to disk as items finish, so memory stays flat
however many fail. ``backfill --retry-from FILE`` runs exactly these items as an
``Items`` event with the same ``request_id``, so they land under the same keys.

The file holds ``api_config`` as given, ``--header`` values included, so it is
created with mode 0600; secrets belong in ``--secret-header`` references.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ingest_core.cli.common import UsageError
from ingest_core.redact import scrub_value
from ingest_core.results import ItemResult

REDRIVE_MARK = "fanout_ingest_redrive"
REDRIVE_VERSION = 1
RETRY_FLAG = "--retry-from"


@dataclass(frozen=True, slots=True)
class RedriveContext:
    """What a re-run needs besides the items."""

    request_id: str
    dest: str
    manifest_prefix: str
    api_config: dict[str, Any]
    options: dict[str, Any]
    allow_private_networks: bool = False  # --allow-private-networks, needed again to retry

    def header_line(self) -> bytes:
        """The first line of the file."""
        return orjson.dumps(scrub_value({REDRIVE_MARK: REDRIVE_VERSION, **asdict(self)})) + b"\n"

    @classmethod
    def from_header(cls, header: Any, path: Path) -> RedriveContext:
        """Parse the first line; raises ``UsageError`` on ``--retry-from``."""
        if not isinstance(header, dict) or header.get(REDRIVE_MARK) != REDRIVE_VERSION:
            raise UsageError((RETRY_FLAG, f"{path} is not a fanout-ingest re-drive file"))
        try:
            return cls(
                request_id=str(header["request_id"]),
                dest=str(header["dest"]),
                manifest_prefix=str(header.get("manifest_prefix", "")),
                api_config=dict(header["api_config"]),
                options=dict(header.get("options", {})),
                allow_private_networks=header.get("allow_private_networks") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError((RETRY_FLAG, f"{path}: header lacks {exc}")) from None


def default_redrive_path(request_id: str) -> Path:
    """``./fanout-redrive-<request_id>.jsonl``."""
    return Path.cwd() / f"fanout-redrive-{request_id}.jsonl"


class RedriveWriter:
    """Streams every item that did not succeed into the re-drive file.

    The file is written under a hidden temporary name and renamed into place by
    ``finish``, so an interrupted write never leaves a half file under the name
    a user would retry from.
    """

    def __init__(self, path: Path, context: RedriveContext) -> None:
        """Open the temporary file now, so an unwritable place fails before any request.

        Raises:
            UsageError: on ``--redrive-file`` when the file cannot be created.
        """
        self.path = path
        self.context = context
        self.count = 0
        self.removed_stale = False
        self._temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._file = _open_private(self._temp)
        self._file.write(context.header_line())

    def on_item(self, result: ItemResult) -> None:
        """The engine's ``on_item`` callback: keep the item unless it succeeded."""
        if result.succeeded:
            return
        line = {
            "index": result.index,
            "params": result.params,
            "status": result.status.value,
            "kind": result.kind.value if result.kind else None,
            "http_status": result.http_status,
            "error": result.error,
        }
        # The engine scrubbed the result already; the file is an edge of its own.
        self._file.write(orjson.dumps(scrub_value(line)) + b"\n")
        self.count += 1

    def finish(self) -> Path | None:
        """Put the file in place when some item did not succeed; return its path.

        With every item done, nothing is written, and an older re-drive file of
        the same request at ``path`` (say, the one just retried) is removed: the
        file always lists exactly what is still missing.
        """
        self._file.close()
        if self.count:
            os.replace(self._temp, self.path)
            return self.path
        self._temp.unlink(missing_ok=True)
        if _is_redrive_of(self.path, self.context.request_id):
            self.path.unlink()
            self.removed_stale = True
        return None

    def discard(self) -> None:
        """Drop the temporary file (the run never happened)."""
        self._file.close()
        self._temp.unlink(missing_ok=True)


def _open_private(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        reason = f"cannot write {path}: {exc.strerror or exc}"
        raise UsageError(("--redrive-file", reason)) from None
    return os.fdopen(fd, "wb")


def _is_redrive_of(path: Path, request_id: str) -> bool:
    with contextlib.suppress(OSError, orjson.JSONDecodeError), path.open("rb") as handle:
        header = orjson.loads(handle.readline())
        return (
            isinstance(header, dict)
            and header.get(REDRIVE_MARK) == REDRIVE_VERSION
            and (header.get("request_id") == request_id)
        )
    return False


def read_redrive(path: Path) -> tuple[RedriveContext, list[dict[str, Any]]]:
    """The context and the ``{"index", "params"}`` items of a re-drive file.

    Raises:
        UsageError: on ``--retry-from``, naming the file and what is wrong.
    """
    try:
        with path.open("rb") as handle:
            context = RedriveContext.from_header(_json_line(handle.readline(), path, 1), path)
            items = [_item(line, path, n) for n, line in enumerate(handle, start=2) if line.strip()]
    except OSError as exc:
        raise UsageError((RETRY_FLAG, f"cannot read {path}: {exc.strerror or exc}")) from None
    if not items:
        raise UsageError((RETRY_FLAG, f"{path} lists no items"))
    return context, items


def _json_line(line: bytes, path: Path, number: int) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        raise UsageError((RETRY_FLAG, f"{path} line {number} is not JSON")) from None


def _item(line: bytes, path: Path, number: int) -> dict[str, Any]:
    item = _json_line(line, path, number)
    if not isinstance(item, dict) or not isinstance(item.get("index"), int) or "params" not in item:
        raise UsageError((RETRY_FLAG, f"{path} line {number} is not an item"))
    return {"index": item["index"], "params": item["params"]}
