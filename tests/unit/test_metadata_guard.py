"""Cloud metadata addresses stay refused with FANOUT_ALLOW_PRIVATE_NETWORKS=true (issue 9).

Tested at both layers (``check_url`` for literals and redirect targets, the
``GuardedResolver`` for names) with a fake resolver: no connection is ever opened.
"""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from yarl import URL

from ingest_core.errors import BlockedError
from ingest_core.fetcher import _redirect_target
from ingest_core.netguard import (
    METADATA_ADDRESSES,
    GuardedResolver,
    NetPolicy,
    check_url,
    metadata_service,
)

PERMISSIVE = NetPolicy(allow_private_networks=True)

# Every spelling must be refused: plain, inet_aton forms, and IPv6 forms embedding it.
METADATA_SPELLINGS = [
    "169.254.169.254",
    "0xa9fea9fe",
    "2852039166",
    "0251.0376.0251.0376",
    "169.254.43518",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::169.254.169.254]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:a9fe:a9fe::]",
    "169.254.170.2",
    "[::ffff:169.254.170.2]",
    "169.254.170.23",
    "100.100.100.200",
    "[fd00:ec2::254]",
    "[fd00:ec2::23]",
]


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_metadata_literals_are_refused_even_with_private_networks_allowed(host: str) -> None:
    # GIVEN the permissive policy of a laptop with a local API
    # WHEN an endpoint names a metadata address in any spelling
    # THEN check_url refuses it, naming the service
    with pytest.raises(BlockedError, match="cloud metadata address"):
        check_url(f"http://{host}/latest/meta-data/", PERMISSIVE)


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_a_redirect_to_a_metadata_address_is_blocked_with_private_networks_allowed(
    host: str,
) -> None:
    # GIVEN a local test API answering 302 to the metadata address (no network involved)
    response = type(
        "Redirect",
        (),
        {
            "status": 302,
            "url": URL("http://127.0.0.1:8080/v1/data"),
            "headers": CIMultiDict({"Location": f"http://{host}/latest/meta-data/iam/"}),
        },
    )()
    # WHEN the fetcher works out the next hop THEN it refuses it
    with pytest.raises(BlockedError, match="cloud metadata address"):
        _redirect_target(response, PERMISSIVE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/", "http://10.0.0.5/", "http://169.254.1.1/", "http://[::1]/"]
)
def test_other_private_addresses_stay_allowed_under_the_flag(url: str) -> None:
    assert check_url(url, PERMISSIVE) == URL(url)


class FakeDNS(AbstractResolver):
    """Answers every name with fixed addresses; records what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=6,
                flags=0,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "169.254.170.2"]
)
async def test_a_name_resolving_to_a_metadata_address_is_refused_under_the_flag(
    address: str,
) -> None:
    # GIVEN a name (metadata.google.internal, a rebinding name) resolving to metadata
    resolver = GuardedResolver(PERMISSIVE, FakeDNS(address))
    # WHEN the connector resolves it THEN the guarded resolver refuses it
    with pytest.raises(BlockedError, match="cloud metadata address"):
        await resolver.resolve("metadata.google.internal", 80)


async def test_metadata_answers_are_dropped_and_the_others_kept_under_the_flag() -> None:
    resolver = GuardedResolver(PERMISSIVE, FakeDNS("169.254.169.254", "127.0.0.1"))
    results = await resolver.resolve("mixed.example", 80)
    assert [r["host"] for r in results] == ["127.0.0.1"]


def test_every_listed_address_is_recognised() -> None:
    for address, service in METADATA_ADDRESSES:
        assert metadata_service(address) == service
    assert metadata_service(ip_address("2001:db8::a9fe:a9fe")) is None  # not an embedding
    assert metadata_service(ip_address("169.254.169.253")) is None
