"""Unit tests for ingest_core.netguard: the SSRF guard. Nothing here touches the network."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import aiohttp
import pytest
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from ingest_core.errors import BlockedError, InvalidEventError
from ingest_core.netguard import (
    GuardedResolver,
    NetPolicy,
    check_bucket,
    check_url,
    classify_address,
    host_matches,
    parse_ip_literal,
)

STRICT = NetPolicy()
PERMISSIVE = NetPolicy(allow_private_networks=True)
# "127.0.0.1" with full-width digits: int() reads them, inet_aton and we must not.
FULLWIDTH_LOOPBACK = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in "127.0.0.1")


# --- parse_ip_literal --------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0X7F000001",
        "0x7f.0.0.1",
        "0x7f.0x0.0x0.0x1",
        "0177.0.0.1",
        "0177.0.0.01",
        "017700000001",
        "127.1",
        "127.0.1",
        "0x7f.1",
        "0177.0x0.1",
        "127.0.0.1.",
        "00000000177.0.0.1",
    ],
)
def test_every_inet_aton_spelling_of_loopback_is_recognised(spelling: str) -> None:
    # GIVEN a legacy spelling of 127.0.0.1
    # WHEN parsed THEN it is 127.0.0.1, exactly as the C library reads it
    assert parse_ip_literal(spelling) == IPv4Address("127.0.0.1")
    assert socket.inet_aton(spelling.removesuffix(".")) == bytes([127, 0, 0, 1])


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("10.1", "10.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_short_forms_fill_the_last_part(spelling: str, address: str) -> None:
    # GIVEN a short form WHEN parsed THEN the last part fills the remaining bytes
    assert parse_ip_literal(spelling) == IPv4Address(address)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "api.example.com",
        "1.2.3.4.example",
        "1.2.3.4.5",
        "08.0.0.1",
        "0x",
        "0x.0.0.1",
        "1..1",
        "",
        ".",
        "256.0.0.1",
        "1.256.0.1",
        "4294967296",
        "0x100000000",
        "1.0x1000000",
        "+1.2.3.4",
        "-1",
        FULLWIDTH_LOOPBACK,
        "1.2.3.4 ",  # glibc accepts trailing space; check_url refuses spaces anyway
        "[not-an-address]",
        "abc:def",
        "0x7g.0.0.1",
    ],
)
def test_host_names_and_invalid_spellings_are_not_literals(host: str) -> None:
    # GIVEN something that is not an address (or that inet_aton refuses)
    # WHEN parsed THEN None
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[2001:db8::1]", "2001:db8::1"),
    ],
)
def test_ipv6_literals_with_brackets_and_zones(host: str, address: str) -> None:
    # GIVEN an IPv6 literal as a URL or a resolver would spell it
    # WHEN parsed THEN the bare address (zone dropped)
    assert parse_ip_literal(host) == IPv6Address(address)


_U32 = st.integers(min_value=0, max_value=2**32 - 1)


def _dotted(value: int, parts: int, radix: str) -> str:
    """Spell ``value`` in ``parts`` inet_aton parts, each in the given radix."""
    chunks = [(value >> (8 * (3 - i))) & 0xFF for i in range(parts - 1)]
    chunks.append(value & ((1 << (8 * (5 - parts))) - 1))
    spellings = {
        "dec": [str(chunk) for chunk in chunks],
        "hex": [hex(chunk) for chunk in chunks],
        "oct": ["0" + format(chunk, "o") for chunk in chunks],
    }
    return ".".join(spellings[radix])


@given(
    value=_U32,
    parts=st.integers(min_value=1, max_value=4),
    radix=st.sampled_from(["dec", "hex", "oct"]),
)
def test_parse_agrees_with_inet_aton(value: int, parts: int, radix: str) -> None:
    # GIVEN a random address spelled in 1-4 parts, decimal, hex or octal
    spelling = _dotted(value, parts, radix)
    # WHEN parsed by us and by the C library (a pure conversion, no lookup)
    ours = parse_ip_literal(spelling)
    theirs = IPv4Address(socket.inet_aton(spelling))
    # THEN both read the same address, which is the one intended
    assert ours == theirs == IPv4Address(value)


@given(st.text(alphabet="0123456789abcdefxX.", max_size=24))
def test_parse_never_accepts_what_inet_aton_refuses(text: str) -> None:
    # GIVEN arbitrary digit soup WHEN parsed by us and by inet_aton
    # THEN we accept exactly what inet_aton accepts, with the same result
    try:
        theirs: IPv4Address | None = IPv4Address(socket.inet_aton(text))
    except OSError:
        theirs = None
    assert parse_ip_literal(text) == theirs or (text.endswith(".") and theirs is None)


# --- classify_address --------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this-network"),
        ("127.0.0.1", "loopback"),  # also the Lambda runtime API at 127.0.0.1:9001
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.255", "cgnat"),
        ("169.254.169.254", "link-local"),  # EC2/IMDS metadata
        ("169.254.170.2", "link-local"),  # ECS task metadata
        ("192.0.0.8", "ietf-protocol-assignment"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("192.88.99.1", "6to4-relay"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "ipv4-mapped loopback"),
        ("::ffff:169.254.169.254", "ipv4-mapped link-local"),
        ("::ffff:10.0.0.1", "ipv4-mapped private"),
        ("::127.0.0.1", "ipv4-compatible"),
        ("::8.8.8.8", "ipv4-compatible"),
        ("64:ff9b::127.0.0.1", "nat64 loopback"),
        ("64:ff9b::10.1.2.3", "nat64 private"),
        ("64:ff9b:1::a9fe:a9fe", "nat64 link-local"),
        ("64:ff9b:1:a00:1::808:808", "nat64 private"),  # 10.0.1.0 at the /48 position
        ("2002:7f00:1::1", "6to4 loopback"),
        ("2002:a9fe:a9fe::", "6to4 link-local"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:2::1", "benchmarking"),
        ("2001:10::1", "ietf-protocol-assignment"),
        ("100::1", "discard-only"),
        ("fc00::1", "unique-local"),
        ("fd00:ec2::254", "unique-local"),  # EC2 IPv6 metadata
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("5f00::1", "reserved"),
        ("4000::1", "reserved"),
        ("::ffff:0:808:808", "reserved"),
    ],
)
def test_non_global_addresses_are_refused_with_a_specific_reason(address: str, reason: str) -> None:
    # GIVEN an address in a refused range WHEN classified THEN the specific reason
    assert classify_address(ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "52.95.110.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.3.1",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a05:d018::1",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "64:ff9b:1::8.8.8.8",
        "2002:808:808::1",
    ],
)
def test_global_addresses_are_allowed(address: str) -> None:
    # GIVEN a globally routable address (or a wrapper around one)
    # WHEN classified THEN None
    assert classify_address(ip_address(address)) is None


@given(st.ip_addresses())
def test_nothing_python_calls_non_global_is_allowed(ip: IPv4Address | IPv6Address) -> None:
    # GIVEN any address WHEN classified as allowed
    # THEN Python agrees it is global, or it wraps an IPv4 address that is
    if classify_address(ip) is not None:
        return
    if isinstance(ip, IPv6Address) and not ip.is_global:
        embedded = IPv4Address(int(ip) & 0xFFFFFFFF)
        assert embedded.is_global
        return
    assert ip.is_global


# --- NetPolicy.from_env ------------------------------------------------------


def test_from_env_defaults_are_strict() -> None:
    # GIVEN no variables WHEN read THEN private networks off and no allow-lists
    assert NetPolicy.from_env({}) == NetPolicy(False, (), ())


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "YES", " true "])
def test_from_env_truthy_values(value: str) -> None:
    # GIVEN a truthy spelling WHEN read THEN private networks allowed
    assert NetPolicy.from_env({"FANOUT_ALLOW_PRIVATE_NETWORKS": value}).allow_private_networks


@pytest.mark.parametrize("value", ["", "false", "0", "no", "ture", "on", "y"])
def test_from_env_anything_else_is_off(value: str) -> None:
    # GIVEN any other value (a typo included) WHEN read THEN the safe default
    assert not NetPolicy.from_env({"FANOUT_ALLOW_PRIVATE_NETWORKS": value}).allow_private_networks


def test_from_env_splits_lists() -> None:
    # GIVEN comma lists with spaces and empties WHEN read THEN clean tuples
    policy = NetPolicy.from_env(
        {
            "FANOUT_ALLOWED_HOSTS": " api.example.com, *.example.org ,,",
            "FANOUT_ALLOWED_BUCKETS": "raw-a,raw-b",
        }
    )
    assert policy.allowed_hosts == ("api.example.com", "*.example.org")
    assert policy.allowed_buckets == ("raw-a", "raw-b")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the variables in the process environment WHEN read without a mapping THEN used
    monkeypatch.setenv("FANOUT_ALLOWED_HOSTS", "a.example")
    monkeypatch.setenv("FANOUT_ALLOW_PRIVATE_NETWORKS", "yes")
    assert NetPolicy.from_env() == NetPolicy(True, ("a.example",), ())


# --- host_matches ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("api.example.com", ["api.example.com"], True),
        ("API.Example.COM", ["api.example.com"], True),
        ("api.example.com.", ["api.example.com"], True),
        ("api.example.com", ["API.EXAMPLE.COM."], True),
        ("other.example.com", ["api.example.com"], False),
        ("a.example.org", ["*.example.org"], True),
        ("a.b.c.example.org", ["*.example.org"], True),
        ("example.org", ["*.example.org"], False),  # the apex is not a subdomain
        ("badexample.org", ["*.example.org"], False),
        ("example.org.evil.com", ["*.example.org"], False),
        ("xn--bcher-kva.de", ["bücher.de"], True),
        ("api.xn--bcher-kva.de", ["*.Bücher.de"], True),
        ("bücher.de", ["xn--bcher-kva.de"], True),
        ("anything.com", ["*"], False),
        ("", ["*.example.org", ""], False),
        ("x.example.org", ["*."], False),
        ("10.0.0.5", ["10.0.0.5"], True),
        ("::1", ["[::1]"], True),
    ],
)
def test_host_matches(host: str, patterns: list[str], expected: bool) -> None:
    # GIVEN a host and patterns WHEN matched THEN exact or subdomain-wildcard semantics
    assert host_matches(host, patterns) is expected


# --- check_url ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/data?date=2025-01-01",
        "https://API.example.com:8443/x",
        "https://8.8.8.8/",
        "https://[2606:4700:4700::1111]/",
        "https://bücher.de/",
    ],
)
def test_check_url_accepts_public_https(url: str) -> None:
    # GIVEN a public https URL WHEN checked THEN the parsed URL comes back
    assert check_url(url, STRICT) == yarl.URL(url)


def test_check_url_accepts_a_yarl_url() -> None:
    # GIVEN an already-parsed URL WHEN checked THEN the same object returns
    url = yarl.URL("https://api.example.com/")
    assert check_url(url, STRICT) is url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://api.example.com/", "scheme 'http' is not allowed"),
        ("ftp://api.example.com/", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("/relative/path", "scheme '' is not allowed"),
        ("https://good.com@evil.com/", "user info"),
        ("https://user:pw@api.example.com/", "user info"),
        ("https://:@api.example.com/", "user info"),
        ("https:///no-host", "no host"),
        ("https://ex%41mple.com/", "characters not allowed"),
        ("https://a b/", "characters not allowed"),
        ("https://127.0.0.1/", "loopback address 127.0.0.1"),
        ("https://127.0.0.1:9001/2018-06-01/runtime/invocation/next", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("https://0xa9fea9fe/", "link-local address 169.254.169.254"),
        ("https://2130706433/", "loopback address 127.0.0.1"),
        ("https://0177.0.0.1/", "loopback"),
        ("https://0x7f.1/", "loopback"),
        ("https://127.1/", "loopback"),
        ("https://127.0.0.1./", "loopback"),
        (f"https://{FULLWIDTH_LOOPBACK}/", "loopback"),
        ("https://10.0.0.1/", "private"),
        ("https://100.64.1.1/", "cgnat"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://[::1]/", "loopback"),
        ("https://[::ffff:127.0.0.1]/", "ipv4-mapped loopback"),
        ("https://[::ffff:a9fe:a9fe]/", "ipv4-mapped link-local"),
        ("https://[fd00:ec2::254]/", "unique-local"),
        ("https://[fe80::1%25eth0]/", "link-local"),
        ("https://[64:ff9b::7f00:1]/", "nat64 loopback"),
        ("https://localhost/", "loopback"),
        ("https://LOCALHOST./", "loopback"),
        ("https://api.localhost/", "loopback"),
        ("https://[::1/", "could not be parsed"),
    ],
)
def test_check_url_refuses(url: str, reason: str) -> None:
    # GIVEN a URL the strict policy forbids WHEN checked THEN BlockedError with the reason
    with pytest.raises(BlockedError, match=reason):
        check_url(url, STRICT)


def test_check_url_messages_never_show_user_info_path_or_query() -> None:
    # GIVEN a refused URL carrying secrets in user info, path and query
    url = "https://user:s3cret@127.0.0.1/token/abc?api_key=k3y"
    # WHEN checked THEN the message holds none of them
    with pytest.raises(BlockedError) as info:
        check_url(url, STRICT)
    for secret in ("s3cret", "abc", "k3y", "user:"):
        assert secret not in str(info.value)
    with pytest.raises(BlockedError) as info:
        check_url("https://10.0.0.1/path?api_key=k3y", STRICT)
    assert "k3y" not in str(info.value) and "path" not in str(info.value)


def test_blocked_error_is_not_retryable() -> None:
    # GIVEN a refusal WHEN raised THEN it is a PermissionError that is never retried
    with pytest.raises(BlockedError) as info:
        check_url("https://127.0.0.1/", STRICT)
    assert isinstance(info.value, PermissionError)
    assert info.value.retryable is False


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/", "https://10.0.0.1/", "http://localhost/", "https://[::1]:9000/x"],
)
def test_allow_private_networks_permits_http_and_private_literals(url: str) -> None:
    # GIVEN FANOUT_ALLOW_PRIVATE_NETWORKS=true WHEN a local URL is checked THEN allowed
    assert check_url(url, PERMISSIVE).raw_host is not None


def test_allow_private_networks_still_refuses_user_info_and_odd_schemes() -> None:
    # GIVEN the permissive policy WHEN user info or ftp appears THEN still refused
    with pytest.raises(BlockedError, match="user info"):
        check_url("http://a@127.0.0.1/", PERMISSIVE)
    with pytest.raises(BlockedError, match="scheme 'ftp'"):
        check_url("ftp://127.0.0.1/", PERMISSIVE)


def test_allowed_hosts_are_enforced() -> None:
    # GIVEN an allow-list WHEN hosts are checked THEN only matches pass
    policy = NetPolicy(allowed_hosts=("api.example.com", "*.example.org"))
    check_url("https://api.example.com/x", policy)
    check_url("https://eu.data.example.org/x", policy)
    for url in ("https://example.org/", "https://evil.com/", "https://api.example.com.evil.com/"):
        with pytest.raises(BlockedError, match="not in FANOUT_ALLOWED_HOSTS"):
            check_url(url, policy)


def test_allowed_hosts_do_not_override_the_address_check() -> None:
    # GIVEN a private IP listed as allowed, but private networks not allowed
    # WHEN checked THEN still refused for its range
    with pytest.raises(BlockedError, match="private"):
        check_url("https://10.0.0.5/", NetPolicy(allowed_hosts=("10.0.0.5",)))


# --- check_bucket ------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket", ["my-data-lake-raw", "abc", "a.b.c", "a" * 63, "raw-2025", "my-ap-abc123-s3alias"]
)
def test_check_bucket_accepts_valid_names(bucket: str) -> None:
    # GIVEN a valid bucket name and no allow-list WHEN checked THEN no error
    check_bucket(bucket, STRICT)


@pytest.mark.parametrize(
    ("bucket", "reason"),
    [
        ("ab", "3 to 63"),
        ("a" * 64, "3 to 63"),
        ("My-Bucket", "lowercase"),
        ("-bucket", "start and end"),
        ("bucket-", "start and end"),
        ("bucket.", "start and end"),
        ("my_bucket", "lowercase"),
        ("a..b", "adjacent dots"),
        ("192.168.1.1", "IP address"),
        ("xn--bucket", "xn--"),
        ("sthree-bucket", "sthree-"),
        ("bucket/key", "lowercase"),
    ],
)
def test_check_bucket_refuses_invalid_names(bucket: str, reason: str) -> None:
    # GIVEN an invalid name WHEN checked THEN InvalidEventError on api_config.raw_bucket
    with pytest.raises(InvalidEventError, match=reason) as info:
        check_bucket(bucket, STRICT)
    assert info.value.problems[0][0] == "api_config.raw_bucket"


def test_check_bucket_enforces_the_allow_list() -> None:
    # GIVEN an allow-list WHEN buckets are checked THEN only listed ones pass
    policy = NetPolicy(allowed_buckets=("raw-a", "raw-b"))
    check_bucket("raw-b", policy)
    with pytest.raises(InvalidEventError, match="not in FANOUT_ALLOWED_BUCKETS") as info:
        check_bucket("raw-c", policy)
    assert info.value.to_dict() == {
        "errors": [
            {
                "field": "api_config.raw_bucket",
                "reason": "bucket 'raw-c' is not in FANOUT_ALLOWED_BUCKETS",
            }
        ]
    }


# --- GuardedResolver ---------------------------------------------------------


class FakeResolver(AbstractResolver):
    """Answers every lookup with the addresses it was given; records calls."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.calls: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        return [_result(host, address, port) for address in self.addresses]

    async def close(self) -> None:
        self.closed = True


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=6, flags=0)


async def test_resolver_keeps_only_global_addresses() -> None:
    # GIVEN a name resolving to a mix of public and internal addresses
    inner = FakeResolver("10.0.0.1", "93.184.215.14", "::1", "2606:2800:21f:cb07::1")
    resolver = GuardedResolver(STRICT, inner)
    # WHEN resolved THEN only the public ones remain, in order
    results = await resolver.resolve("api.example.com", 443)
    assert [r["host"] for r in results] == ["93.184.215.14", "2606:2800:21f:cb07::1"]


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (("169.254.169.254",), "169.254.169.254, refused: link-local"),
        (("127.0.0.1", "10.0.0.1"), "127.0.0.1, refused: loopback"),
        (("fd00:ec2::254",), "unique-local"),
        (("::ffff:127.0.0.1",), "ipv4-mapped loopback"),
        (("fe80::1%eth0",), "link-local"),
        (("not-an-ip",), "not an IP address"),
    ],
)
async def test_resolver_refuses_names_that_resolve_only_inside(
    addresses: tuple[str, ...], reason: str
) -> None:
    # GIVEN a name that resolves only to refused addresses (DNS rebinding, say)
    resolver = GuardedResolver(STRICT, FakeResolver(*addresses))
    # WHEN resolved THEN BlockedError names the host and the first reason
    with pytest.raises(BlockedError, match=reason) as info:
        await resolver.resolve("rebind.example.com", 443)
    assert "rebind.example.com" in str(info.value)


async def test_resolver_allows_everything_with_private_networks_allowed() -> None:
    # GIVEN the permissive policy WHEN a name resolves to loopback THEN it is kept
    resolver = GuardedResolver(PERMISSIVE, FakeResolver("127.0.0.1"))
    results = await resolver.resolve("localhost", 8080)
    assert [(r["host"], r["port"]) for r in results] == [("127.0.0.1", 8080)]


async def test_resolver_checks_the_allow_list_before_any_lookup() -> None:
    # GIVEN an allow-list and a host outside it (say a redirect target)
    inner = FakeResolver("93.184.215.14")
    resolver = GuardedResolver(NetPolicy(allowed_hosts=("api.example.com",)), inner)
    # WHEN resolved THEN refused without asking DNS
    with pytest.raises(BlockedError, match="not in FANOUT_ALLOWED_HOSTS"):
        await resolver.resolve("elsewhere.example.net", 443)
    assert inner.calls == []
    # AND a listed host is looked up as usual
    assert len(await resolver.resolve("api.example.com", 443)) == 1


async def test_resolver_passes_an_empty_answer_through() -> None:
    # GIVEN an inner resolver with no addresses WHEN resolved THEN empty, not a policy error
    assert await GuardedResolver(STRICT, FakeResolver()).resolve("x.example", 443) == []


async def test_resolver_close_closes_the_inner_resolver() -> None:
    # GIVEN a wrapped resolver WHEN closed THEN the inner one is closed too
    inner = FakeResolver()
    await GuardedResolver(STRICT, inner).close()
    assert inner.closed


async def test_resolver_defaults_to_aiohttp_default_resolver() -> None:
    # GIVEN no inner resolver, inside a running loop
    resolver = GuardedResolver(STRICT)
    # WHEN built THEN it wraps aiohttp's DefaultResolver (no lookup is made)
    assert isinstance(resolver._inner, aiohttp.resolver.DefaultResolver)
    await resolver.close()


async def test_aiohttp_wraps_the_refusal_in_a_dns_error_keeping_the_cause() -> None:
    # GIVEN a session whose connector resolves a name to the metadata address
    resolver = GuardedResolver(STRICT, FakeResolver("169.254.169.254"))
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    # WHEN a request is attempted (refused at resolution, before any socket)
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await session.get("https://metadata.example.com/")
    # THEN the BlockedError is reachable as os_error and as the cause
    assert isinstance(info.value.os_error, BlockedError)
    assert isinstance(info.value.__cause__, BlockedError)
