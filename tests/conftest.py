"""Fixtures shared by every test suite: a clean environment, moto S3, local API servers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.servers import HasApp, MotoS3, ThreadedApp

RAW_BUCKET = "raw-bucket"
_CLEARED_PREFIXES = ("AWS_", "FANOUT_")
# Loopback test traffic must never be routed through a proxy from the environment.
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

StartServer = Callable[[web.Application | HasApp], ThreadedApp]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real AWS config, credentials, endpoint or FANOUT_* setting leaks into a test."""
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES) or name in _PROXY_VARS:
            monkeypatch.delenv(name)
    empty = tmp_path / "empty-aws-config"
    empty.mkdir()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the whole session; use ``s3`` for a clean slate."""
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    """Empty moto S3 with bucket ``raw-bucket``; ``AWS_ENDPOINT_URL_S3`` points at it."""
    moto_s3.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)
    moto_s3.create_bucket(RAW_BUCKET)
    try:
        yield moto_s3
    finally:
        moto_s3.close_clients()


@pytest.fixture
def api_server() -> Iterator[StartServer]:
    """Factory: ``api_server(app)`` serves an aiohttp app (or ScriptedAPI/FaultyAPI).

    Every server started is stopped at teardown, newest first.
    """
    # ExitStack: every server gets stopped even when stopping another one fails.
    with contextlib.ExitStack() as stack:

        def start(app: web.Application | HasApp) -> ThreadedApp:
            server = ThreadedApp(app)
            stack.callback(server.stop)
            return server.start()

        yield start


@pytest.fixture
def allow_private(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the engine call the loopback servers (and plain http)."""
    monkeypatch.setenv("FANOUT_ALLOW_PRIVATE_NETWORKS", "true")
