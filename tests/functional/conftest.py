"""Fixtures of the reliability suite: an S3 fault proxy, the faulty API, both PUT paths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aws_lambda_powertools.utilities import parameters

from tests.conftest import StartServer
from tests.support.faults import FaultyAPI, S3FaultProxy
from tests.support.reliability import Canary
from tests.support.servers import MotoS3


@pytest.fixture
def s3_proxy(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3FaultProxy]:
    """An ``S3FaultProxy`` in front of moto; ``AWS_ENDPOINT_URL_S3`` points at the proxy.

    Assertions read moto through ``s3`` directly, so they never meet an injected fault.
    """
    with S3FaultProxy(s3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        yield proxy


@pytest.fixture
def faulty_api(api_server: StartServer) -> tuple[FaultyAPI, str]:
    """A started ``FaultyAPI`` and its base URL."""
    api = FaultyAPI()
    return api, api_server(api).url


@pytest.fixture(params=["lean", "sdk"])
def put_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Single PUTs on the lean SigV4 path and on aioboto3's ``put_object``."""
    monkeypatch.setenv("FANOUT_LEAN_PUT", "true" if request.param == "lean" else "false")
    return str(request.param)


@pytest.fixture
def canary() -> Iterator[Canary]:
    """A loopback listener that must see no connection; checked at teardown too."""
    listener = Canary()
    try:
        yield listener
        assert listener.connections() == 0, "something connected to the canary"
    finally:
        listener.close()


@pytest.fixture
def fresh_secrets() -> Iterator[None]:
    """Powertools caches secrets (and its boto3 clients) for 300 s in-process: start clean."""
    parameters.clear_caches()
    try:
        yield
    finally:
        parameters.clear_caches()
