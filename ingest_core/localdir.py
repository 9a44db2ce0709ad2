"""Bodies written to a local folder, laid out exactly like the S3 keys (the CLI's ``--dest``).

The same promise as S3 (CONTRACT §7): a file exists under its key only when it
holds exactly the bytes received. Split from writers.py, which holds the
protocols this implements and re-exports it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from ingest_core.errors import LocalWriteError, S3WriteError
from ingest_core.writers import MultipartUpload, ObjectMeta, put_file_in_parts


class LocalDirWriter:
    """Writes keys as files under a folder, laid out exactly like the S3 keys.

    Every file is written to a hidden temporary name in its final folder and
    renamed into place, so an interrupted run leaves no partial file under a key.
    Object metadata is not kept locally. File system calls run on worker
    threads, never on the event loop (a write and fsync of a large body held
    the loop for 230 ms); their ``OSError`` becomes a ``LocalWriteError`` (kind
    ``s3_error``, the closed set's write failure) naming the operation and path.
    """

    TEMP_PREFIX = ".fanout-tmp-"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise S3WriteError(f"key {key!r} escapes the destination folder")
        return path

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        upload = LocalUpload(self._path(key))
        try:
            await upload.write_whole(data)  # one thread hop per small body, not three
        except BaseException:
            await upload.abort()
            raise

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        upload = LocalUpload(self._path(key))
        await upload.open()
        return upload

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await put_file_in_parts(self, key, path, ObjectMeta(content_type=content_type))


class LocalUpload:
    """A file being written under a temporary name, one worker-thread call at a time."""

    def __init__(self, final: Path) -> None:
        self._final = final
        self._temp = final.parent / f"{LocalDirWriter.TEMP_PREFIX}{uuid.uuid4().hex}"
        self._file: IO[bytes] | None = None
        self._step = "create"  # what the call in flight is doing, for its error message
        # The thread call in flight: a cancelled await leaves it running, and
        # abort must not close the file under it.
        self._pending: asyncio.Future[Any] | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def upload_part(self, data: bytes | memoryview) -> None:
        await self._run(self._write, data)

    async def complete(self) -> None:
        await self._run(self._finish)

    async def write_whole(self, data: bytes | memoryview) -> None:
        """Create, write and complete in one worker-thread call."""
        await self._run(self._whole, data)

    async def abort(self) -> None:
        if self._pending is not None and not self._pending.done():
            await asyncio.wait([self._pending])
        with suppress(OSError):
            await asyncio.to_thread(self._discard)

    async def _run(self, call: Callable[..., None], *args: Any) -> None:
        self._pending = asyncio.get_running_loop().run_in_executor(None, call, *args)
        try:
            await self._pending
        except OSError as exc:
            raise LocalWriteError(
                f"could not {self._step} {self._final}: {exc.strerror or type(exc).__name__}"
            ) from exc

    def _open(self) -> None:
        self._step = "create"
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._temp.open("wb")

    def _write(self, data: bytes | memoryview) -> None:
        assert self._file is not None, "open() first"
        self._step = "write"
        self._file.write(data)

    def _finish(self) -> None:
        assert self._file is not None, "open() first"
        self._step = "complete"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self._final)

    def _whole(self, data: bytes | memoryview) -> None:
        self._open()
        self._write(data)
        self._finish()

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._temp.unlink(missing_ok=True)
