"""Datasette, a real third-party JSON API, serving a generated SQLite table on 127.0.0.1.

Datasette pages a table by keyset: each page carries ``next`` (a cursor),
``next_url`` and a ``Link: <...>; rel="next"`` header, and filters rows by query
params (``?grp=a``). Unknown ``_`` params are ignored and a filter that matches
nothing answers 200 with 0 rows: the silent empty successes the warnings catch.

``start_datasette`` runs ``datasette serve`` in a subprocess on a free port and
stops it on exit; tests skip when the ``datasette`` package is not installed.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 20.0
POLL_S = 0.1
STOP_TIMEOUT_S = 5.0
PAGE_SIZE = 100
GROUPS = ("a", "b", "c")


@dataclass(frozen=True)
class Datasette:
    """A running Datasette: the table's JSON endpoint and its rows per group."""

    url: str
    rows: int

    @property
    def table(self) -> str:
        """The table's JSON endpoint (rows as objects, filters as query params)."""
        return f"{self.url}/data/rows.json"

    def ids_of(self, group: str) -> set[int]:
        """The ids of ``group``'s rows, as the table was generated."""
        return {i for i in range(1, self.rows + 1) if GROUPS[i % len(GROUPS)] == group}


def make_table(path: Path, rows: int) -> None:
    """``rows`` rows ``(id, grp, value)``, the groups taking turns."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("create table rows (id integer primary key, grp text, value text)")
        db.executemany(
            "insert into rows values (?, ?, ?)",
            ((i, GROUPS[i % len(GROUPS)], f"v{i}") for i in range(1, rows + 1)),
        )
        db.commit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"datasette exited with {process.returncode}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            with urllib.request.urlopen(f"{url}/-/versions.json", timeout=1):
                return
        time.sleep(POLL_S)
    raise RuntimeError(f"datasette did not answer within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def start_datasette(folder: Path, rows: int) -> Iterator[Datasette]:
    """Serve a generated ``data.db`` of ``rows`` rows, ``PAGE_SIZE`` to a page."""
    database = folder / "data.db"
    make_table(database, rows)
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "datasette",
        "serve",
        str(database),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--setting",
        "default_page_size",
        str(PAGE_SIZE),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{LOOPBACK}:{port}"
    try:
        _wait_until_up(url, process)
        yield Datasette(url, rows)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
