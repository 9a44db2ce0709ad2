"""The SSRF guard: which URLs, addresses and buckets the API side may touch.

CONTRACT §7 and §8. Two layers, because neither is enough alone:

* ``check_url`` runs before any request (and on every redirect target): https
  only, no user info, the host allow-list, and IP literals in every spelling.
* ``GuardedResolver`` sits in the aiohttp connector and drops resolved addresses
  that are not globally routable, so a friendly-looking name that resolves to
  ``169.254.169.254`` or ``127.0.0.1`` is refused too.

aiohttp's ``TCPConnector`` never calls the resolver for a host it considers an
IP address (``helpers.is_ip_address``: anything with a ``:``, or only digits and
dots), so IP literals would slip past ``GuardedResolver``; that is why
``check_url`` must check them. Spellings such as ``0x7f.0.0.1`` are not
"IP addresses" to aiohttp and do reach the resolver, where ``getaddrinfo`` turns
them into ``127.0.0.1``; both layers refuse them.

Cloud metadata addresses (``METADATA_ADDRESSES``) are refused by both layers
even when ``FANOUT_ALLOW_PRIVATE_NETWORKS`` is on.

These checks guard the API side only: the S3 endpoint the operator configured
is trusted and never passes through here. ``NetPolicy.from_env`` is the one
place that reads ``FANOUT_ALLOW_PRIVATE_NETWORKS``, ``FANOUT_ALLOWED_HOSTS`` and
``FANOUT_ALLOWED_BUCKETS``.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

import idna
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ingest_core.errors import BlockedError, InvalidEventError

IPAddress: TypeAlias = IPv4Address | IPv6Address

ENV_ALLOW_PRIVATE_NETWORKS = "FANOUT_ALLOW_PRIVATE_NETWORKS"
ENV_ALLOWED_HOSTS = "FANOUT_ALLOWED_HOSTS"
ENV_ALLOWED_BUCKETS = "FANOUT_ALLOWED_BUCKETS"
_TRUTHY = frozenset({"true", "1", "yes"})

# One inet_aton part: hex with at least one digit, octal (leading 0), or decimal.
# Explicit ASCII classes: int() would also accept full-width digits and "+1".
_IPV4_PART_RE = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_HOSTNAME_RE = re.compile(r"[a-z0-9_.-]+")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")
_DOTTED_QUAD_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")

_V4 = IPv4Network
_V6 = IPv6Network

# First match wins, so the single addresses come before the blocks holding them.
_IPV4_RULES: tuple[tuple[IPv4Network, str], ...] = (
    (_V4("0.0.0.0/32"), "unspecified"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("0.0.0.0/8"), "this-network"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "cgnat"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),  # 169.254.169.254: cloud metadata
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "ietf-protocol-assignment"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "6to4-relay"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
)

# IPv6 blocks that carry an IPv4 address: (block, label, RFC 6052 offsets of the
# embedded address). The local-use NAT64 prefix may be used with any prefix
# length from /48 to /96 (RFC 8215), so the position is ambiguous: see
# _embedding_offsets.
_EMBEDDING_RULES: tuple[tuple[IPv6Network, str, tuple[int, ...]], ...] = (
    (_V6("::ffff:0:0/96"), "ipv4-mapped", (96,)),
    (_V6("64:ff9b::/96"), "nat64", (96,)),
    (_V6("64:ff9b:1::/48"), "nat64", (48, 56, 64, 96)),
    (_V6("2002::/16"), "6to4", (16,)),
)

_NAT64_LOCAL_USE = _V6("64:ff9b:1::/48")
_NAT64_LOCAL_MIDDLE = ((1 << 48) - 1) << 32  # bits 48-95

_IPV6_RULES: tuple[tuple[IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "ipv4-compatible"),  # deprecated ::a.b.c.d (RFC 4291 §2.5.5.1)
    (_V6("100::/64"), "discard-only"),
    (_V6("2001::/32"), "teredo"),  # the client address is obfuscated: refuse outright
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001::/23"), "ietf-protocol-assignment"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("fc00::/7"), "unique-local"),  # fd00:ec2::254: the EC2 IPv6 metadata service
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
)
# Global unicast is allocated from 2000::/3 only; everything else is refused.
_IPV6_GLOBAL_UNICAST = _V6("2000::/3")

# Cloud metadata and credential services: refused even with
# FANOUT_ALLOW_PRIVATE_NETWORKS=true, which is for a local API on a laptop, never
# for the credentials of the machine itself. IPv6 spellings that embed one of the
# IPv4 addresses (::ffff:169.254.169.254, 64:ff9b::a9fe:a9fe, ...) count too.
METADATA_ADDRESSES: tuple[tuple[IPAddress, str], ...] = (
    (IPv4Address("169.254.169.254"), "EC2/GCP/Azure/OCI/OpenStack/DigitalOcean instance metadata"),
    (IPv4Address("169.254.170.2"), "ECS task metadata and credentials"),
    (IPv4Address("169.254.170.23"), "EKS Pod Identity credentials"),
    (IPv4Address("169.254.0.23"), "Tencent Cloud metadata"),
    (IPv4Address("100.100.100.200"), "Alibaba Cloud metadata"),
    (IPv4Address("192.0.0.192"), "Oracle Cloud Classic metadata"),
    (IPv6Address("fd00:ec2::254"), "EC2 instance metadata (IPv6)"),
    (IPv6Address("fd00:ec2::23"), "EKS Pod Identity credentials (IPv6)"),
)
_METADATA = dict(METADATA_ADDRESSES)
_IPV4_COMPATIBLE = _V6("::/96")


@dataclass(frozen=True, slots=True)
class NetPolicy:
    """What the API side may reach; ``from_env`` builds it from the environment."""

    allow_private_networks: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_buckets: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NetPolicy:
        """Read the policy from ``environ`` (default ``os.environ``).

        ``FANOUT_ALLOW_PRIVATE_NETWORKS`` is on for ``true``, ``1`` or ``yes`` in
        any case; any other value, including a typo, leaves it off. The two lists
        are comma-separated, with whitespace stripped and empty entries dropped.

        Args:
            environ: The variables to read.

        Returns:
            The policy.
        """
        env = os.environ if environ is None else environ
        return cls(
            allow_private_networks=env.get(ENV_ALLOW_PRIVATE_NETWORKS, "").strip().lower()
            in _TRUTHY,
            allowed_hosts=_split_list(env.get(ENV_ALLOWED_HOSTS, "")),
            allowed_buckets=_split_list(env.get(ENV_ALLOWED_BUCKETS, "")),
        )


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# --- IP literals ------------------------------------------------------------


def parse_ip_literal(host: str) -> IPAddress | None:
    """Recognise ``host`` as an IP address in any spelling a socket would accept.

    IPv6 with or without brackets (a ``%zone`` is dropped); IPv4 in every form
    ``inet_aton`` takes: dotted quad, one to three parts (``127.1``, ``10.1.2``),
    decimal (``2130706433``), hex (``0x7f000001``, ``0x7f.0.0.1``), octal
    (``0177.0.0.1``) and mixtures. A single trailing dot is ignored, as browsers
    do, so ``127.0.0.1.`` counts as loopback.

    Args:
        host: A URL host or a resolved address.

    Returns:
        The address, or None for a host name.
    """
    if host.startswith("[") and host.endswith("]"):
        return _parse_ipv6(host[1:-1])
    if ":" in host:
        return _parse_ipv6(host)
    return _parse_ipv4(host.removesuffix("."))


def _parse_ipv6(text: str) -> IPv6Address | None:
    # Zones are local interface names (fe80::1%eth0, or %25eth0 in a URL); the
    # address without one is what classification needs.
    try:
        return IPv6Address(text.partition("%")[0])
    except ValueError:
        return None


def _parse_ipv4(text: str) -> IPv4Address | None:
    parts = text.split(".")
    if len(parts) > 4 or not all(_IPV4_PART_RE.fullmatch(part) for part in parts):
        return None
    *head, last = [_ipv4_part_value(part) for part in parts]
    # inet_aton: the leading parts are one byte each, the last fills the rest.
    last_bits = 8 * (4 - len(head))
    if any(value > 0xFF for value in head) or last >= 1 << last_bits:
        return None
    value = 0
    for byte in head:
        value = value << 8 | byte
    return IPv4Address(value << last_bits | last)


def _ipv4_part_value(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        return int(part, 16)
    if part.startswith("0"):
        return int(part, 8)
    return int(part, 10)


# --- classification ---------------------------------------------------------


def classify_address(ip: IPAddress) -> str | None:
    """Say why ``ip`` may not be reached, or None when it is globally routable.

    Conservative: anything Python does not consider global is refused, and a
    few ranges Python does consider global are refused too (IPv4-compatible,
    documentation, NAT64 and 6to4 wrapping a refused IPv4 address). IPv6 forms
    that embed an IPv4 address are judged by that address, e.g.
    ``"ipv4-mapped loopback"`` or ``"nat64 private"``.

    Args:
        ip: The address.

    Returns:
        A short reason such as ``"loopback"`` or ``"link-local"``, or None.
    """
    if isinstance(ip, IPv4Address):
        return _classify_ipv4(ip)
    return _classify_ipv6(ip)


def _classify_ipv4(ip: IPv4Address) -> str | None:
    for network, reason in _IPV4_RULES:
        if ip in network:
            return reason
    return None if ip.is_global else "reserved"


def _classify_ipv6(ip: IPv6Address) -> str | None:
    for network, label, offsets in _EMBEDDING_RULES:
        if ip in network:
            return _classify_embedded(ip, label, _embedding_offsets(ip, network, offsets))
    for network, reason in _IPV6_RULES:
        if ip in network:
            return reason
    if ip not in _IPV6_GLOBAL_UNICAST or not ip.is_global:
        return "reserved"
    return None


def _embedding_offsets(
    ip: IPv6Address, network: IPv6Network, offsets: tuple[int, ...]
) -> tuple[int, ...]:
    # In 64:ff9b:1::/48 with bits 48-95 zero the address is the usual /96 form,
    # 64:ff9b:1::a.b.c.d. Otherwise the operator's prefix length is unknown, so
    # the address must be acceptable at every position a translator could use.
    if network == _NAT64_LOCAL_USE and not int(ip) & _NAT64_LOCAL_MIDDLE:
        return (96,)
    return offsets


def _classify_embedded(ip: IPv6Address, label: str, offsets: tuple[int, ...]) -> str | None:
    for offset in offsets:
        reason = _classify_ipv4(_embedded_ipv4(ip, offset))
        if reason is not None:
            return f"{label} {reason}"
    return None


def _embedded_ipv4(ip: IPv6Address, offset: int) -> IPv4Address:
    """The 32 bits at ``offset`` (RFC 6052 §2.2: bits 64-71 are skipped below /96)."""
    value = int(ip)
    if offset >= 96:
        return IPv4Address(value & 0xFFFFFFFF)
    squeezed = (value >> 64) << 56 | (value & ((1 << 56) - 1))
    return IPv4Address((squeezed >> (120 - offset - 32)) & 0xFFFFFFFF)


# --- hosts and URLs ---------------------------------------------------------


def host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` matches one of ``patterns``.

    Names are compared case-insensitively, without a trailing dot and in IDNA
    (punycode) form, the way yarl hands hosts to aiohttp. ``*.example.org``
    matches any name under ``example.org`` at any depth but not ``example.org``
    itself: a wildcard for subdomains should not silently grant the apex, which
    is often a different service; list both when both are meant. Only a leading
    ``*.`` is special; any other pattern is an exact name.

    Args:
        host: The host to test.
        patterns: Exact names and ``*.`` wildcards.

    Returns:
        True on a match.
    """
    name = _normalise_host(host)
    return bool(name) and any(_matches(name, pattern) for pattern in patterns)


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        suffix = _normalise_host(pattern[2:])
        return bool(suffix) and name.endswith("." + suffix)
    return name == _normalise_host(pattern)


@functools.lru_cache(maxsize=1024)
def _normalise_host(host: str) -> str:
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".")
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except UnicodeError:  # idna.IDNAError is one; such a name matches nothing
        return name.lower()


def check_url(url: str | yarl.URL, policy: NetPolicy) -> yarl.URL:
    """Check an API URL against the policy before any connection is made.

    Messages name only the scheme, the host and the reason: never the path,
    the query or user info. The error's ``reason`` names neither scheme nor host,
    for URLs the API chose (redirect targets, next links).

    Args:
        url: The endpoint or a redirect target.
        policy: What may be reached.

    Returns:
        The parsed URL.

    Raises:
        BlockedError: the scheme is not https (http only with private networks
            allowed), the URL carries user info or has no host, the host is not
            in the allow-list, or the host is a refused IP literal or localhost.
    """
    parsed = _parse_url(url)
    _check_scheme(parsed, policy)
    _check_userinfo(parsed)
    host = _host_of(parsed)
    if policy.allowed_hosts and not host_matches(host, policy.allowed_hosts):
        raise _refused(host, f"is not in {ENV_ALLOWED_HOSTS}")
    if not policy.allow_private_networks:
        _check_literal_host(host)
    else:
        _check_metadata_literal(host)
    return parsed


WELL_KNOWN_SCHEMES = frozenset(
    {"data", "dict", "file", "ftp", "gopher", "jar", "javascript", "ldap", "mailto", "netdoc"}
    | {"sftp", "smb", "telnet", "tftp", "ws", "wss"}
)


def _refused(host: str, why: str) -> BlockedError:
    """Names the host; its ``reason`` does not (for hosts the API chose, CONTRACT §12)."""
    return BlockedError(f"host {host!r} {why}", reason=f"host {why}")


def _parse_url(url: str | yarl.URL) -> yarl.URL:
    if isinstance(url, yarl.URL):
        return url
    try:
        return yarl.URL(url)
    except (ValueError, TypeError):
        # yarl's message quotes the URL, which may hold a password.
        raise BlockedError("URL could not be parsed") from None


def _check_scheme(url: yarl.URL, policy: NetPolicy) -> None:
    scheme = url.scheme
    if scheme == "https" or (scheme == "http" and policy.allow_private_networks):
        return
    if scheme == "http":
        raise BlockedError(
            f"scheme 'http' is not allowed: https only unless {ENV_ALLOW_PRIVATE_NETWORKS}=true"
        )
    # A scheme the API chose is named only when it is one of ours, not text it wrote.
    named = scheme if scheme in WELL_KNOWN_SCHEMES else "(other)"
    raise BlockedError(
        f"scheme {scheme!r} is not allowed: https only",
        reason=f"scheme {named!r} is not allowed: https only",
    )


def _check_userinfo(url: yarl.URL) -> None:
    # "https://good.com@evil/" goes to evil; refuse any user info, even an empty
    # password. (yarl drops a bare "https://@host", which then means just host.)
    if url.raw_user is not None or url.raw_password is not None:
        raise BlockedError("URL must not carry user info (name or password before '@')")


def _host_of(url: yarl.URL) -> str:
    # raw_host is the lowercased IDNA form aiohttp connects to (yarl has already
    # mapped full-width digits and the like to ASCII).
    host = url.raw_host
    if not host:
        raise BlockedError("URL has no host")
    if ":" not in host and not _HOSTNAME_RE.fullmatch(host):
        raise _refused(host, "has characters not allowed in a host name")
    return host


def _check_literal_host(host: str) -> None:
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        raise _refused(host, "is refused: loopback")
    ip = parse_ip_literal(host)
    reason = None if ip is None else classify_address(ip)
    if reason is not None:
        raise _refused(host, f"is refused: {reason} address {ip}")


def _check_metadata_literal(host: str) -> None:
    ip = parse_ip_literal(host)
    service = None if ip is None else metadata_service(ip)
    if service is not None:
        raise _refused(host, f"is refused: cloud metadata address {ip} ({service})")


def metadata_service(ip: IPAddress) -> str | None:
    """The cloud metadata service at ``ip`` (in any IPv6 spelling), or None.

    Args:
        ip: The address.

    Returns:
        A short name of the service, or None.
    """
    service = _METADATA.get(ip)
    if service is not None or isinstance(ip, IPv4Address):
        return service
    for embedded in _embedded_candidates(ip):
        service = _METADATA.get(embedded)
        if service is not None:
            return service
    return None


def _embedded_candidates(ip: IPv6Address) -> list[IPv4Address]:
    candidates = [_embedded_ipv4(ip, 96)] if ip in _IPV4_COMPATIBLE else []
    for network, _label, offsets in _EMBEDDING_RULES:
        if ip in network:
            candidates += [_embedded_ipv4(ip, o) for o in _embedding_offsets(ip, network, offsets)]
    return candidates


# --- buckets ----------------------------------------------------------------


def check_bucket(bucket: str, policy: NetPolicy) -> None:
    """Check the raw bucket's name and, when set, the bucket allow-list.

    Args:
        bucket: ``api_config.raw_bucket``.
        policy: What may be written to.

    Raises:
        InvalidEventError: on field ``api_config.raw_bucket``, with the reason.
    """
    reason = _bucket_name_problem(bucket)
    if reason is None and policy.allowed_buckets and bucket not in policy.allowed_buckets:
        reason = f"bucket {bucket!r} is not in {ENV_ALLOWED_BUCKETS}"
    if reason is not None:
        raise InvalidEventError([("api_config.raw_bucket", reason)])


def _bucket_name_problem(bucket: str) -> str | None:
    """The first S3 general-purpose bucket naming rule ``bucket`` breaks, if any."""
    if not isinstance(bucket, str):
        return "bucket name must be a string"
    if not 3 <= len(bucket) <= 63:
        return f"bucket name {bucket!r} must be 3 to 63 characters long"
    if not _BUCKET_RE.fullmatch(bucket):
        return (
            f"bucket name {bucket!r} may hold only lowercase letters, digits, dots and"
            " hyphens, and must start and end with a letter or digit"
        )
    if ".." in bucket:
        return f"bucket name {bucket!r} must not contain two adjacent dots"
    if _DOTTED_QUAD_RE.fullmatch(bucket):
        return f"bucket name {bucket!r} must not look like an IP address"
    if bucket.startswith(("xn--", "sthree-")):
        return f"bucket name {bucket!r} must not start with 'xn--' or 'sthree-'"
    return None


# --- resolver ---------------------------------------------------------------


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses hosts and addresses the policy forbids.

    Use it as ``TCPConnector(resolver=GuardedResolver(policy))``. It checks the
    host allow-list before any DNS query (this also covers redirect targets),
    then drops every resolved address ``classify_address`` refuses, unless
    private networks are allowed.

    The ``BlockedError`` it raises is an ``OSError``, so aiohttp wraps it in
    ``ClientConnectorDNSError``; the original is ``exc.os_error`` (and
    ``exc.__cause__``).
    """

    def __init__(self, policy: NetPolicy, inner: AbstractResolver | None = None) -> None:
        """Wrap ``inner`` (default: aiohttp's ``DefaultResolver``).

        Args:
            policy: What may be reached.
            inner: The resolver that does the lookups. The default needs a
                running event loop, as ``TCPConnector`` itself does.
        """
        self._policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and keep only the addresses the policy allows.

        Raises:
            BlockedError: the host is not in the allow-list, or every address
                it resolves to is refused (names the host and the first reason).
        """
        allowed = self._policy.allowed_hosts
        if allowed and not host_matches(host, allowed):
            raise _refused(host, f"is not in {ENV_ALLOWED_HOSTS}")
        results = await self._inner.resolve(host, port, family)
        if self._policy.allow_private_networks:
            return _keep_allowed(host, results, _metadata_refusal)
        return _keep_allowed(host, results, _address_refusal)

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def _keep_allowed(
    host: str, results: list[ResolveResult], refusal: Callable[[str], str | None]
) -> list[ResolveResult]:
    kept: list[ResolveResult] = []
    refused: list[tuple[str, str]] = []
    for result in results:
        reason = refusal(result["host"])
        if reason is None:
            kept.append(result)
        else:
            refused.append((result["host"], reason))
    if refused and not kept:
        address, reason = refused[0]
        raise _refused(host, f"resolves to {address}, refused: {reason}")
    return kept


def _address_refusal(address: str) -> str | None:
    ip = parse_ip_literal(address)
    if ip is None:
        return "not an IP address"
    return classify_address(ip)


def _metadata_refusal(address: str) -> str | None:
    ip = parse_ip_literal(address)
    if ip is None:
        return "not an IP address"
    service = metadata_service(ip)
    return None if service is None else f"cloud metadata address ({service})"
