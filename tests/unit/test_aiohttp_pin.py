"""aiohttp is pinned to the version the SSRF guard is tested with (issue 14).

aiohttp's connector skips the resolver for any host it takes for an IP address
(``helpers.is_ip_address``: digits and dots only). With 3.13.3 a digit-only host
name that is no valid IPv4 address (``1234567890123``) therefore went straight to
the system resolver, past ``GuardedResolver``; 3.14.5 refuses such a host. These
tests run that path through the engine's own session, with every lookup recorded.
"""

from __future__ import annotations

import asyncio
import socket
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from ingest_core.errors import BlockedError
from ingest_core.fetcher import FetchRequest, make_http_session, open_response
from ingest_core.netguard import NetPolicy

ROOT = Path(__file__).resolve().parents[2]
DIGIT_HOSTS = ["1234567890123", "99999999999", "4294967296", "12345.6789.1.2.3"]


def pinned_aiohttp() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == "aiohttp":
            [spec] = requirement.specifier
            assert spec.operator == "==", "aiohttp must be pinned exactly"
            return spec.version
    raise AssertionError("aiohttp is not a dependency")


def test_the_installed_aiohttp_is_the_pinned_one() -> None:
    assert version("aiohttp") == pinned_aiohttp()


@pytest.mark.parametrize("policy", [NetPolicy(), NetPolicy(allow_private_networks=True)])
@pytest.mark.parametrize("host", DIGIT_HOSTS)
async def test_a_digit_only_host_name_never_reaches_any_resolver(
    monkeypatch: pytest.MonkeyPatch, host: str, policy: NetPolicy
) -> None:
    # GIVEN the engine's session, with every lookup (guarded or system) recorded
    asked: list[Any] = []

    def system_lookup(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[0] if args else kwargs.get("host"))
        raise OSError("no lookups in this test")

    async def loop_lookup(*args: Any, **kwargs: Any) -> Any:
        return system_lookup(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", system_lookup)
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", loop_lookup)
    session = make_http_session(concurrency=1, policy=policy, connect_timeout_s=1, read_timeout_s=1)
    request = FetchRequest(url=f"https://{host}:8443/v1", params=[], headers={})
    # WHEN a request goes to a host name made of digits (and dots)
    try:
        with pytest.raises(BlockedError) as refused:
            async with open_response(session, request, policy):
                pass
    finally:
        await session.close()
    # THEN it is refused as blocked, and no resolver was ever asked
    assert asked == []
    assert "URL refused by the HTTP client" in str(refused.value)  # not by check_url
    assert host not in str(refused.value)
