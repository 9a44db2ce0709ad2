"""The servers every generative example shares (started once per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.property.harness import Servers
from tests.support.faults import S3FaultProxy
from tests.support.paged_api import PagedAPI
from tests.support.reliability import Canary
from tests.support.servers import MotoS3, ThreadedApp


@pytest.fixture(scope="module")
def servers(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The API, the S3 fault proxy and the canary, started once for every example."""
    api = PagedAPI()
    canary = Canary()
    try:
        with ThreadedApp(api.app) as app, S3FaultProxy(moto_s3) as proxy:
            yield Servers(
                api=api,
                api_url=app.url,
                moto=moto_s3,
                proxy=proxy,
                canary=canary,
                scratch=Path(tmp_path_factory.mktemp("property")) / "dest",
            )
    finally:
        canary.close()
        moto_s3.close_clients()
