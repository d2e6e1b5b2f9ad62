"""Egress allow-lists: parsing the step's `network=[...]` entries and matching a destination against them.

An entry is one of (`EgressKind`):
- `host`: a DNS name or an IP address, any port (`api.example.com`, `10.1.2.3`, `[::1]`);
- `host_port`: the same with one port (`api.example.com:443`);
- `wildcard`: every name strictly below a domain, any port (`*.example.com`; not `example.com` itself);
- `cidr`: an IP network, any port (`10.0.0.0/8`, `2001:db8::/32`).
Pure logic (no I/O): backends map entries onto their provider's mechanism, the bubblewrap proxy matches with
`Destination.allows`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

from .errors import ConfigError

#: One DNS label: letters, digits, hyphens inside, 1-63 characters (underscores are tolerated, as in SRV).
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007 - evaluated at import, Python 3.9
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007


class EgressKind(str, enum.Enum):
    """The forms of allow-list entry; a backend declares which it enforces (`Capabilities.egress_kinds`)."""

    HOST = "host"
    HOST_PORT = "host:port"
    WILDCARD = "*.domain"
    CIDR = "CIDR"


@dataclass(frozen=True)
class Destination:
    """One parsed allow-list entry. `host` is a lower-case name without the `*.` (or an IP as text);
    `network` is set for IP literals (a /32 or /128) and CIDRs; `port` None means any port."""

    entry: str
    kind: EgressKind
    host: str
    port: int | None = None
    network: IPNetwork | None = None

    def matches_name(self, name: str, port: int) -> bool:
        """Whether a connection to `name:port` (a DNS name or IP literal) is allowed by name."""
        if self.port is not None and port != self.port:
            return False
        name = name.lower().rstrip(".")
        if self.kind is EgressKind.WILDCARD:
            return name.endswith("." + self.host)
        if self.network is not None:
            address = ip_or_none(name)
            return address is not None and address in self.network
        return name == self.host

    def matches_address(self, address: IPAddress, port: int) -> bool:
        """Whether this entry is an IP literal or CIDR covering `address` (and `port`)."""
        if self.port is not None and port != self.port:
            return False
        return self.network is not None and address in self.network


def ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _bad(entry: object, fix: str) -> ConfigError:
    return ConfigError(f"network entry {entry!r}: {fix}.")


def _check_name(entry: str, name: str) -> None:
    if len(name) > 253:
        raise _bad(entry, "a host name has at most 253 characters")
    labels = name.split(".")
    if any(not _LABEL.match(label) for label in labels):
        raise _bad(
            entry,
            "not a host name; use letters, digits, hyphens and dots, e.g. 'api.example.com' (no scheme, path or spaces)",
        )


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _bad(entry, f"port {text!r} must be a number from 1 to 65535, e.g. 'api.example.com:443'")
    return int(text)


def parse_destination(entry: object) -> Destination:
    """Parse one allow-list entry; `ConfigError` naming the fix for a malformed one."""
    if not isinstance(entry, str):
        raise _bad(entry, "allow-list entries are strings such as 'api.example.com:443'")
    text = entry.strip().lower()
    if not text:
        raise _bad(entry, "empty; remove it")
    if text != entry.lower() or " " in text:
        raise _bad(entry, "remove the spaces")
    if "://" in text or ("/" in text and not _looks_like_cidr(text)):
        raise _bad(entry, "give a host, host:port, *.domain or CIDR, not a URL (e.g. 'api.example.com:443')")
    if text in ("*", "0.0.0.0/0", "::/0") or text.startswith("*:"):
        raise _bad(entry, "allows every destination; use network='full' to say so")
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            raise _bad(entry, f"not a CIDR ({error}); write the network address, e.g. '10.0.0.0/8'")
        return Destination(entry, EgressKind.CIDR, str(network), network=network)
    if text.startswith("*."):
        domain = text[2:]
        if ":" in domain:
            raise _bad(entry, "a *.domain entry allows every port; remove the port")
        _check_name(entry, domain)
        if "." not in domain:
            raise _bad(
                entry, "the wildcard would cover a whole top-level domain; name a domain like '*.example.com'"
            )
        return Destination(entry, EgressKind.WILDCARD, domain)
    if "*" in text:
        raise _bad(entry, "'*' is allowed only as the first label, as in '*.example.com'")
    host, port = text, None
    if text.startswith("["):  # [v6] or [v6]:port
        close = text.find("]")
        if close < 0:
            raise _bad(entry, "an IPv6 address in brackets needs the closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad(entry, "write '[address]:port'")
            port = _port(entry, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(entry, port_text)
    elif text.count(":") > 1:  # a bare IPv6 address
        host = text
    address = ip_or_none(host)
    if address is not None:
        if address.is_unspecified:
            raise _bad(entry, "the unspecified address is no destination; name the host or network")
        network = ipaddress.ip_network(address)
        kind = EgressKind.HOST_PORT if port else EgressKind.HOST
        return Destination(entry, kind, str(address), port, network)
    if ":" in host:
        raise _bad(
            entry,
            "not an IP address; put an IPv6 address in brackets to add a port, e.g. '[2001:db8::1]:443'",
        )
    host = host.rstrip(".")
    _check_name(entry, host)
    return Destination(entry, EgressKind.HOST_PORT if port else EgressKind.HOST, host, port)


def _looks_like_cidr(text: str) -> bool:
    return text.count("/") == 1 and text.split("/")[1].isdigit() and "://" not in text


def parse_allow_list(value: object) -> tuple[str, ...]:
    """The entries of a `network=[...]` list, each checked (`ConfigError` naming the fix), duplicates dropped."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"network={value!r}: give 'none', 'datastore', 'full' or a list of destinations such as "
            "['api.example.com:443', '*.example.org', '10.0.0.0/8']."
        )
    if not value:
        raise ConfigError(
            "network=[] allows nothing beyond the datastore; say network='datastore' (or 'none')."
        )
    entries: list[str] = []
    for entry in value:
        parse_destination(entry)
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def destinations(entries: Iterable[str]) -> tuple[Destination, ...]:
    return tuple(parse_destination(entry) for entry in entries)


def check_egress_kinds(backend: str, supported: frozenset[EgressKind], entries: Sequence[str]) -> None:
    """`ConfigError` naming what `backend` can filter when an entry has a form it cannot enforce."""
    for destination in destinations(entries):
        if destination.kind not in supported:
            if supported:
                forms = ", ".join(kind.value for kind in EgressKind if kind in supported)
                can = f"it enforces only {forms} entries"
            else:
                can = "it cannot filter egress (use network='none' or 'full')"
            raise ConfigError(
                f"network entry {destination.entry!r} is a {destination.kind.value} entry, which the {backend} "
                f"backend cannot enforce: {can}."
            )
