"""Hostile endpoints and redirects (issue #6), with private networks NOT allowed.

What may cross the network here is loopback only. Every refused target that could
be connected to points at ``Canary``, a listening socket on 127.0.0.1 that must see
no connection; every other range (private, link-local, CGNAT, NAT64, ...) is
tested without any network, through ``parse_event`` and the redirect check, as
pure functions. No test resolves a name through real DNS.

Two ways a target is refused:

- at parse time, the endpoint: ``InvalidEventError`` on ``api_config.endpoint``,
  before any request;
- at run time, a redirect or a DNS answer: the item fails with kind ``blocked``.

How the run-time tests reach an API at all. The API is on loopback, which the
strict policy refuses, so the first hop must get through without switching the
policy off (that would switch off the very checks under test). The API is served
over TLS under the name ``api.test``; the engine's session (its ``http=`` seam)
resolves that one name to 127.0.0.1, standing in for the public address a real
API's name would have, and sends every other name through the product's
``GuardedResolver`` with the strict policy, over a stub DNS table that never
touches the network. ``run_job`` gets ``Settings(policy=STRICT)``, so every
redirect target is judged by the product's own ``open_response``/``check_url``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict
from yarl import URL

from handler.app import lambda_handler
from ingest_core import BlockedError, InvalidEventError, LocalDirWriter, parse_event, run_job
from ingest_core.fetcher import _redirect_target
from ingest_core.netguard import GuardedResolver, NetPolicy
from ingest_core.settings import Settings
from tests.support.faults import FaultyAPI, expected_bytes
from tests.support.lambda_context import LocalContext
from tests.support.reliability import Canary, assert_counts, event_for, failures_by_index
from tests.support.servers import ThreadedApp

pytestmark = pytest.mark.timeout(30)
# The handler raising before any metric is recorded makes Powertools warn; expected here.
NO_METRICS = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

STRICT = NetPolicy()
API_HOST = "api.test"
INTERNAL_HOST = "internal.test"  # a name whose DNS answer is loopback (rebinding, say)
LAMBDA_RUNTIME_API = "127.0.0.1:9001"


# --------------------------------------------------------------------------- parse time


def strict_event(endpoint: str) -> dict[str, Any]:
    return event_for(endpoint, batch=[{"date": "2025-01-01"}], request_id="ssrf")


def endpoint_refusal(endpoint: str) -> str:
    """The reason parse_event gives for refusing ``endpoint``, under the strict policy."""
    with pytest.raises(InvalidEventError) as caught:
        parse_event(strict_event(endpoint), policy=STRICT)
    [(field, reason)] = caught.value.problems
    assert field == "api_config.endpoint"
    return reason


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("https://10.0.0.1/v1", "private address 10.0.0.1"),
        ("https://10.1/v1", "private address 10.0.0.1"),
        ("https://172.16.0.1/v1", "private address"),
        ("https://192.168.1.1/v1", "private address"),
        ("https://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("https://169.254.170.2/v2/credentials", "link-local"),  # ECS task credentials
        ("https://100.64.0.1/v1", "cgnat address 100.64.0.1"),
        ("https://240.0.0.1/v1", "reserved address 240.0.0.1"),
        ("https://198.18.0.1/v1", "benchmarking"),
        ("https://0.0.0.0/v1", "unspecified"),
        ("https://224.0.0.1/v1", "multicast"),
        ("https://255.255.255.255/v1", "broadcast"),
        ("https://2852039166/", "link-local address 169.254.169.254"),  # decimal
        ("https://0xa9fea9fe/", "link-local address 169.254.169.254"),  # hex
        ("https://0251.0376.0251.0376/", "link-local address 169.254.169.254"),  # octal
        ("https://0xa9.254.0251.0376/", "link-local address 169.254.169.254"),  # mixed
        ("https://169.254.43518/", "link-local address 169.254.169.254"),  # short form
        ("https://[::ffff:169.254.169.254]/", "ipv4-mapped link-local"),
        ("https://[::ffff:a9fe:a9fe]/", "ipv4-mapped link-local"),
        ("https://[::ffff:10.0.0.1]/", "ipv4-mapped private"),
        ("https://[64:ff9b::a9fe:a9fe]/", "nat64 link-local"),
        ("https://[64:ff9b::10.0.0.1]/", "nat64 private"),
        ("https://[2002:a9fe:a9fe::1]/", "6to4 link-local"),
        ("https://[fd00:ec2::254]/latest/meta-data/", "unique-local"),  # EC2 IPv6 IMDS
        ("https://[fe80::1%25eth0]/", "link-local"),
        ("https://api.example.com@10.0.0.1/", "user info"),
        ("https://api.example.com:pw@169.254.169.254/", "user info"),
        ("http://api.example.com/v1", "scheme 'http' is not allowed"),
        ("gopher://api.example.com/", "scheme 'gopher' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("ftp://api.example.com/", "scheme 'ftp' is not allowed"),
    ],
)
def test_an_endpoint_in_a_refused_range_is_an_invalid_event(endpoint: str, reason: str) -> None:
    # GIVEN an event whose endpoint is in a refused range or form (no network used)
    # WHEN parsed under the strict policy
    # THEN InvalidEventError names api_config.endpoint with a reason a person understands
    assert reason in endpoint_refusal(endpoint)


def loopback_endpoints(port: int) -> list[tuple[str, str]]:
    return [
        (f"https://127.0.0.1:{port}/v1", "loopback address 127.0.0.1"),
        (f"https://127.0.0.2:{port}/v1", "loopback"),
        (f"https://2130706433:{port}/v1", "loopback address 127.0.0.1"),
        (f"https://0x7f000001:{port}/v1", "loopback address 127.0.0.1"),
        (f"https://0x7f.0.0.1:{port}/v1", "loopback address 127.0.0.1"),
        (f"https://0177.0.0.1:{port}/v1", "loopback address 127.0.0.1"),
        (f"https://127.1:{port}/v1", "loopback address 127.0.0.1"),
        (f"https://127.0.0.1.:{port}/v1", "loopback"),
        (f"https://localhost:{port}/v1", "loopback"),
        (f"https://LocalHost.:{port}/v1", "loopback"),
        (f"https://api.localhost:{port}/v1", "loopback"),
        (f"https://[::1]:{port}/v1", "loopback"),
        (f"https://[::ffff:127.0.0.1]:{port}/v1", "ipv4-mapped loopback"),
        (f"https://[::ffff:7f00:1]:{port}/v1", "ipv4-mapped loopback"),
        (f"https://{API_HOST}@127.0.0.1:{port}/v1", "user info"),
        (f"https://{API_HOST}:x@127.0.0.1:{port}/v1", "user info"),
        (f"http://127.0.0.1:{port}/v1", "scheme 'http' is not allowed"),
        (f"ftp://127.0.0.1:{port}/v1", "scheme 'ftp' is not allowed"),
        (f"ws://127.0.0.1:{port}/v1", "scheme 'ws' is not allowed"),
    ]


@NO_METRICS
def test_loopback_endpoints_are_refused_by_the_handler_before_any_connection(
    canary: Canary,
) -> None:
    # GIVEN the handler with FANOUT_ALLOW_PRIVATE_NETWORKS unset, and every loopback
    # spelling of a listening socket that must see no connection
    for endpoint, reason in loopback_endpoints(canary.port):
        # WHEN an event names it as the endpoint
        with pytest.raises(InvalidEventError) as caught:
            lambda_handler(strict_event(endpoint), LocalContext(timeout_s=10))
        # THEN the event is refused with the reason, on api_config.endpoint
        [(field, message)] = caught.value.problems
        assert field == "api_config.endpoint", endpoint
        assert reason in message, (endpoint, message)
    # AND nothing ever connected (the canary fixture checks again at teardown)
    assert canary.connections() == 0


@NO_METRICS
def test_the_lambda_runtime_api_is_refused_as_an_endpoint() -> None:
    # GIVEN the Lambda runtime API, which answers on loopback inside every Lambda
    # (a listener on its port, when the port is free here, must see no connection)
    try:
        listener: Canary | None = Canary(port=9001)
    except OSError:
        listener = None
    try:
        for scheme in ("https", "http"):
            endpoint = f"{scheme}://{LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next"
            # WHEN an event names it THEN it is refused before any request
            with pytest.raises(InvalidEventError, match=r"api_config\.endpoint"):
                lambda_handler(strict_event(endpoint), LocalContext(timeout_s=10))
        if listener is not None:
            assert listener.connections() == 0
    finally:
        if listener is not None:
            listener.close()


# --------------------------------------------------------------------------- redirects, pure


def redirect_from_public_api(location: str) -> URL:
    """What the fetcher does with a 302 from https://api.example.com/v1/data."""
    response = SimpleNamespace(
        status=302,
        url=URL("https://api.example.com/v1/data?date=1"),
        headers=CIMultiDict({"Location": location}),
    )
    return _redirect_target(response, STRICT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("https://169.254.169.254/latest/meta-data/iam/", "link-local"),
        ("//169.254.169.254/latest/meta-data/", "link-local"),  # scheme-relative
        ("https://0xa9fea9fe/", "link-local"),
        ("https://[::ffff:a9fe:a9fe]/", "ipv4-mapped link-local"),
        ("https://[64:ff9b::a00:1]/", "nat64 private"),
        ("https://10.0.0.1/internal", "private"),
        ("https://100.100.100.200/latest/meta-data/", "cgnat"),  # Alibaba metadata
        ("https://[fd00:ec2::254]/", "unique-local"),
        ("http://api.example.com/v1/data", "scheme 'http'"),  # downgrade
        ("file:///etc/passwd", "scheme 'file'"),
        ("https://api.example.com@10.0.0.1/", "user info"),
    ],
)
def test_a_redirect_to_a_refused_range_is_blocked(location: str, reason: str) -> None:
    # GIVEN a public API answering 302 with a Location in a refused range (no network)
    # WHEN the fetcher works out where to go next
    # THEN it refuses with BlockedError naming the reason
    with pytest.raises(BlockedError, match=reason):
        redirect_from_public_api(location)


def test_a_redirect_to_a_public_https_url_is_followed() -> None:
    # GIVEN the control: a relative and an absolute public https Location
    # WHEN resolved THEN both are accepted against the base URL
    assert redirect_from_public_api("/v2/data") == URL("https://api.example.com/v2/data")
    assert redirect_from_public_api("https://cdn.example.net/x") == URL("https://cdn.example.net/x")


# --------------------------------------------------------------------------- run time


class StubDNS(AbstractResolver):
    """Answers names from a fixed table; never touches the network."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"stub DNS has no entry for {host!r}")
        return [
            ResolveResult(
                hostname=host,
                host=self.table[host],
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


class FirstHopResolver(AbstractResolver):
    """``api.test`` unguarded (it stands for a public name); any other name guarded."""

    def __init__(self, dns: StubDNS) -> None:
        self._dns = dns
        self._guarded = GuardedResolver(STRICT, inner=dns)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host == API_HOST:
            return await self._dns.resolve(host, port, family)
        return await self._guarded.resolve(host, port, family)

    async def close(self) -> None:
        await self._guarded.close()


class TLSApp(ThreadedApp):
    """``ThreadedApp`` listening with TLS."""

    def __init__(self, app: Any, context: ssl.SSLContext) -> None:
        super().__init__(app)
        self._tls = context

    async def _listen(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._tls).start()


def make_certificates(folder: Path, host: str) -> tuple[Path, Path, bytes]:
    """A throwaway CA and a leaf for ``host``: (leaf cert file, key file, CA PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fanout-ingest test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = folder / "leaf.pem", folder / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM)


class TLSApi:
    """FaultyAPI over TLS, reachable as https://api.test:<port>, plus a client context."""

    def __init__(self, folder: Path) -> None:
        cert, key, ca = make_certificates(folder, API_HOST)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        self.client_context = ssl.create_default_context(cadata=ca.decode())
        self.api = FaultyAPI()
        self.server = TLSApp(self.api, server_context)

    @property
    def base(self) -> str:
        return f"https://{API_HOST}:{self.server.port}"


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[TLSApi]:
    api = TLSApi(tmp_path)
    api.server.start()
    try:
        yield api
    finally:
        api.server.stop()


@pytest.fixture
def dns(canary: Canary) -> StubDNS:
    return StubDNS({API_HOST: "127.0.0.1", INTERNAL_HOST: "127.0.0.1"})


@pytest.fixture
async def guarded_http(tls_api: TLSApi, dns: StubDNS) -> AsyncIterator[aiohttp.ClientSession]:
    """The engine's API session, but resolving through FirstHopResolver (module docstring)."""
    connector = aiohttp.TCPConnector(
        resolver=FirstHopResolver(dns), ssl=tls_api.client_context, use_dns_cache=False
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=5)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as session:
        yield session


async def run_strict(
    endpoint: str, batch: list[dict[str, Any]], http: aiohttp.ClientSession, folder: Path
) -> dict[str, Any]:
    """Parse and run under the strict policy, writing to a local folder."""
    event = event_for(endpoint, batch=batch, options={"expect_json": False}, request_id="r")
    job = parse_event(event, policy=STRICT)
    outcome = await run_job(
        job, writer=LocalDirWriter(folder), http=http, settings=Settings(policy=STRICT)
    )
    return outcome.result


def redirect_targets(port: int) -> list[tuple[str, str]]:
    """Loopback Locations (all pointing at the canary) and the refusal each must get."""
    return [
        (f"https://127.0.0.1:{port}/", "loopback address 127.0.0.1"),
        (f"https://2130706433:{port}/", "loopback address 127.0.0.1"),
        (f"https://0x7f000001:{port}/", "loopback address 127.0.0.1"),
        (f"https://0177.0.0.1:{port}/", "loopback address 127.0.0.1"),
        (f"https://127.1:{port}/", "loopback address 127.0.0.1"),
        (f"https://localhost:{port}/", "loopback"),
        (f"https://[::ffff:127.0.0.1]:{port}/", "ipv4-mapped loopback"),
        (f"https://[::1]:{port}/", "loopback"),
        (f"//127.0.0.1:{port}/scheme-relative", "loopback"),
        (f"https://{INTERNAL_HOST}:{port}/", "resolves to 127.0.0.1, refused: loopback"),
        (f"https://{API_HOST}@127.0.0.1:{port}/", "user info"),
        (f"http://127.0.0.1:{port}/", "scheme 'http' is not allowed"),
        (f"http://{API_HOST}:{port}/", "scheme 'http' is not allowed"),
        (f"ftp://127.0.0.1:{port}/", "scheme 'ftp' is not allowed"),
        (f"https://{LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next", "loopback"),
    ]


async def test_redirects_to_loopback_are_blocked_at_run_time_without_a_connection(
    tls_api: TLSApi,
    guarded_http: aiohttp.ClientSession,
    canary: Canary,
    dns: StubDNS,
    tmp_path: Path,
) -> None:
    # GIVEN an https API that redirects each item to another loopback target, and one
    # item redirected to a harmless same-origin URL (the control)
    targets = redirect_targets(canary.port)
    control = f"{tls_api.base}/bytes?size=1000&seed=1"
    batch = [{"key": f"t{i}", "url": location} for i, (location, _) in enumerate(targets)]
    batch.append({"key": "control", "url": control})
    # WHEN the engine runs them under the strict policy
    result = await run_strict(f"{tls_api.base}/redirect-to", batch, guarded_http, tmp_path)
    # THEN every loopback redirect failed as blocked, first attempt, with its reason
    assert_counts(result)
    assert (result["succeeded"], result["failed"]) == (1, len(targets))
    failures = failures_by_index(result)
    for index, (location, reason) in enumerate(targets):
        failure = failures[index]
        assert (failure["kind"], failure["attempts"]) == ("blocked", 1), location
        assert reason in failure["error"], (location, failure["error"])
        assert not (tmp_path / f"rel-src/r-{index}.json").exists()
    # AND the control followed its redirect and landed; the API saw each item once
    assert (tmp_path / f"rel-src/r-{len(targets)}.json").read_bytes() == expected_bytes(1000, 1)
    hits = tls_api.api.hits
    assert all(hits[item["key"]] == 1 for item in batch) and hits["/bytes"] == 1
    # AND the canary saw no connection; the stub DNS was asked only for names, never
    # for a refused IP literal (those are stopped before any lookup)
    assert canary.connections() == 0
    assert set(dns.asked) == {API_HOST, INTERNAL_HOST}


async def test_an_endpoint_name_that_resolves_to_loopback_is_blocked_at_run_time(
    guarded_http: aiohttp.ClientSession, canary: Canary, dns: StubDNS, tmp_path: Path
) -> None:
    # GIVEN an endpoint whose name looks public but whose DNS answer is 127.0.0.1
    endpoint = f"https://{INTERNAL_HOST}:{canary.port}/v1/data"
    # WHEN it is run under the strict policy (it passes parse time: it is a name)
    result = await run_strict(endpoint, [{"date": "2025-01-01"}], guarded_http, tmp_path)
    # THEN the item failed as blocked once, naming the address, and nothing connected
    assert_counts(result)
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("blocked", 1)
    assert "resolves to 127.0.0.1, refused: loopback" in failure["error"]
    assert canary.connections() == 0
    assert dns.asked == [INTERNAL_HOST]


def test_the_canary_notices_a_connection() -> None:
    # GIVEN the canary WHEN something connects THEN it is counted (so its silence means something)
    listener = Canary()
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
            pass
        assert listener.connections() == 1
    finally:
        listener.close()


def test_stub_addresses_are_loopback_only() -> None:
    # GIVEN the stub DNS table of these tests THEN it can only ever point at loopback
    for address in StubDNS({API_HOST: "127.0.0.1", INTERNAL_HOST: "127.0.0.1"}).table.values():
        assert ipaddress.ip_address(address).is_loopback
