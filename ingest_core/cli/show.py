"""``fanout-ingest show MANIFEST --index N``: one item back out of the lake.

Every page of it: a paginated item stored unpacked is one object per page
(``keys`` in its manifest line), printed in page order, each page named on
stderr; ``--page N`` prints one.

The manifest line of item N names its object and, for a packed item, where its
lines are (CONTRACT §13). Only those bytes are read: a ranged GET of exactly the
item's bytes in an uncompressed pack, or from the restart point of its block in
a gzip pack (at most about ``packing.FLUSH_EVERY`` uncompressed bytes before
it). An unpacked item's object is read whole: it is the item.

MANIFEST is ``s3://bucket/key`` (``AWS_ENDPOINT_URL_S3`` is honoured) or a local
manifest file, whose objects are found in the folder the run wrote to.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import IO, Any

import orjson

from ingest_core.cli.common import Command, CommandError, UsageError, non_negative_int
from ingest_core.packing import read_item
from ingest_core.packing.units import decode_line
from ingest_core.results import PackSpan
from ingest_core.settings import Settings

READ_CHUNK = 64 * 1024
MANIFEST_FLAG = "MANIFEST"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar=MANIFEST_FLAG, help="s3://bucket/key or a local file")
    parser.add_argument("--index", type=non_negative_int, required=True, help="the item's index")
    parser.add_argument(
        "--page",
        type=non_negative_int,
        metavar="N",
        help="of an unpacked paginated item, only page N (default: every page, in order)",
    )
    parser.add_argument(
        "--lines",
        action="store_true",
        help="print the stored NDJSON lines as they are (provenance included)",
    )


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    try:
        return _show(args, out)
    except BrokenPipeError:
        # The reader went away (| head): keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0


def _show(args: argparse.Namespace, out: IO[str]) -> int:
    store = _store_for(args.manifest)
    entry = _manifest_entry(store.manifest_lines(), args.index, args.manifest)
    key = entry.get("key")
    if entry.get("status") not in ("written", "skipped") or not key:
        why = entry.get("error") or entry.get("status")
        raise CommandError(f"item {args.index} was not written ({why})")
    if entry.get("pack"):
        span = PackSpan.from_dict(entry["pack"])
        with store.read_from(key, span.offset, None if span.gzip else span.length) as chunks:
            data, consumed = read_item(chunks, span)
        print(f"{store.describe(key)}: read {consumed} bytes at {span.offset}", file=sys.stderr)
        _print_lines(data, raw=args.lines, out=out)
    else:
        _print_objects(store, _page_keys(entry, args.page), out)
    return 0


def _page_keys(entry: dict[str, Any], page: int | None) -> list[tuple[str, str]]:
    """``(key, label)`` of the objects to print: every page of a paginated item, in order.

    Each page of an unpacked paginated item is its own object (CONTRACT §11); the
    manifest line lists them all under ``keys``.
    """
    keys = entry.get("keys") or [entry["key"]]
    total = len(keys)
    labels = [f"page {n} of {total}" if total > 1 else "" for n in range(total)]
    pages = list(zip(keys, labels, strict=True))
    if page is None:
        return pages
    if not 0 <= page < total:
        raise UsageError(("--page", f"item {entry.get('index')} has pages 0 to {total - 1}"))
    return [pages[page]]


def _print_objects(
    store: _S3Store | _LocalStore, pages: list[tuple[str, str]], out: IO[str]
) -> None:
    for key, label in pages:
        with store.read_from(key, 0, None) as chunks:
            data = b"".join(chunks)
        if key.endswith(".gz"):
            data = gzip.decompress(data)
        if label:
            print(f"{store.describe(key)}: {label}", file=sys.stderr)
        _write_bytes(data.rstrip(b"\n") + b"\n", out)


def _print_lines(data: bytes, *, raw: bool, out: IO[str]) -> None:
    """The item's bodies (one per page) or records; with ``raw``, its lines as stored.

    Bodies come out as the API sent them (packing/units.py, ``decode_line``): JSON
    with every digit, text, or the exact bytes of a body that was not UTF-8.
    """
    lines = data.splitlines()
    _write_bytes(b"".join((line if raw else decode_line(line)) + b"\n" for line in lines), out)


def _write_bytes(data: bytes, out: IO[str]) -> None:
    """Bytes to a text stream: through its binary buffer when it has one (stdout)."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8", errors="backslashreplace"))
        return
    out.flush()
    buffer.write(data)
    buffer.flush()


def _manifest_entry(lines: Iterable[bytes], index: int, where: str) -> dict[str, Any]:
    for line in lines:
        if not line.strip():
            continue
        entry = orjson.loads(line)
        if entry.get("index") == index:
            result: dict[str, Any] = entry
            return result
    raise UsageError(("--index", f"no item {index} in {where}"))


# ---------------------------------------------------------------------------- stores


class _S3Store:
    def __init__(self, bucket: str, manifest_key: str) -> None:
        import boto3  # only when reading S3

        self.bucket, self.manifest_key = bucket, manifest_key
        self.client = boto3.client("s3", endpoint_url=Settings.from_env().s3_endpoint_url)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def manifest_lines(self) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.manifest_key)["Body"]
        except Exception as exc:
            raise CommandError(f"cannot read {self.describe(self.manifest_key)}: {exc}") from exc
        with closing(body):
            yield from body.iter_lines()

    def read_from(
        self, key: str, offset: int, length: int | None
    ) -> AbstractContextManager[Iterator[bytes]]:
        end = "" if length is None else str(offset + length - 1)
        answer = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{end}")
        body = answer["Body"]
        return _closing_iter(body.iter_chunks(READ_CHUNK), body)


class _LocalStore:
    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def manifest_lines(self) -> Iterator[bytes]:
        with self.manifest.open("rb") as source:
            yield from source

    def _path(self, key: str) -> Path:
        # The run's folder is an ancestor of the manifest: the one that holds the key.
        for folder in self.manifest.resolve().parents:
            if (folder / key).is_file():
                return folder / key
        raise CommandError(f"object {key!r} not found above {self.manifest}")

    def read_from(
        self, key: str, offset: int, length: int | None
    ) -> AbstractContextManager[Iterator[bytes]]:
        source = self._path(key).open("rb")
        source.seek(offset)
        return _closing_iter(_file_chunks(source, length), source)


def _file_chunks(source: IO[bytes], length: int | None) -> Iterator[bytes]:
    left = length
    while left is None or left > 0:
        chunk = source.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


class _closing_iter(AbstractContextManager[Iterator[bytes]]):
    """Yields ``chunks`` and closes ``resource`` on exit (a stream read only in part)."""

    def __init__(self, chunks: Iterator[bytes], resource: Any) -> None:
        self._chunks, self._resource = chunks, resource

    def __enter__(self) -> Iterator[bytes]:
        return self._chunks

    def __exit__(self, *exc: object) -> None:
        self._resource.close()


def _store_for(manifest: str) -> _S3Store | _LocalStore:
    if manifest.startswith("s3://"):
        bucket, _, key = manifest.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise UsageError((MANIFEST_FLAG, f"{manifest!r}: use s3://bucket/key"))
        return _S3Store(bucket, key)
    path = Path(manifest)
    if not path.is_file():
        raise UsageError((MANIFEST_FLAG, f"{manifest} is not a file"))
    return _LocalStore(path)


COMMAND = Command(
    name="show",
    help="print one item's bodies, every page (or its records), from a run's manifest,"
    " reading only its bytes",
    add_arguments=add_arguments,
    run=run,
)
