"""Allow-list parsing and matching (pure logic)."""

from __future__ import annotations

import ipaddress

import pytest

from metaflow_sandbox_core import (
    Capabilities,
    ConfigError,
    EgressKind,
    Isolation,
    NetworkPolicy,
    SandboxSpec,
    check_egress_kinds,
    parse_allow_list,
    parse_destination,
)


@pytest.mark.parametrize(
    ("entry", "kind", "host", "port"),
    [
        ("api.example.com", EgressKind.HOST, "api.example.com", None),
        ("API.Example.com.", EgressKind.HOST, "api.example.com", None),
        ("api.example.com:443", EgressKind.HOST_PORT, "api.example.com", 443),
        ("*.example.com", EgressKind.WILDCARD, "example.com", None),
        ("10.0.0.0/8", EgressKind.CIDR, "10.0.0.0/8", None),
        ("2001:db8::/32", EgressKind.CIDR, "2001:db8::/32", None),
        ("127.0.0.1:9000", EgressKind.HOST_PORT, "127.0.0.1", 9000),
        ("10.1.2.3", EgressKind.HOST, "10.1.2.3", None),
        ("[::1]:8080", EgressKind.HOST_PORT, "::1", 8080),
        ("2001:db8::1", EgressKind.HOST, "2001:db8::1", None),
        ("localhost", EgressKind.HOST, "localhost", None),
    ],
)
def test_valid_entries_parse(entry, kind, host, port):
    destination = parse_destination(entry)
    assert (destination.kind, destination.host, destination.port) == (kind, host, port)


@pytest.mark.parametrize(
    ("entry", "fix"),
    [
        ("", "empty; remove it"),
        ("https://api.example.com", "not a URL"),
        ("api.example.com/v1", "not a URL"),
        ("api.example.com:0", "from 1 to 65535"),
        ("api.example.com:99999", "from 1 to 65535"),
        ("api.example.com:http", "must be a number"),
        ("*", "use network='full'"),
        ("0.0.0.0/0", "use network='full'"),
        ("::/0", "use network='full'"),
        ("*.com", "whole top-level domain"),
        ("api.*.com", "only as the first label"),
        ("*.example.com:443", "remove the port"),
        ("10.0.0.1/8", "write the network address"),
        ("api example.com", "remove the spaces"),
        ("bad_-.exa$mple.com", "not a host name"),
        ("-bad.example.com", "not a host name"),
        ("0.0.0.0", "unspecified address"),
        ("[::1", "closing ']'"),
        ("2001:db8::zz", "not an IP address"),
        (443, "entries are strings"),
    ],
)
def test_malformed_entries_name_the_fix_in_one_line(entry, fix):
    with pytest.raises(ConfigError) as error:
        parse_destination(entry)
    message = str(error.value)
    assert fix in message and "\n" not in message


def test_allow_list_needs_a_non_empty_list_and_drops_duplicates():
    assert parse_allow_list(["a.example.com", "a.example.com", "*.b.org"]) == ("a.example.com", "*.b.org")
    with pytest.raises(ConfigError, match="say network='datastore'"):
        parse_allow_list([])
    with pytest.raises(ConfigError, match="a list of destinations"):
        parse_allow_list("api.example.com")


def test_matching_by_name_and_by_address():
    wildcard = parse_destination("*.example.com")
    assert wildcard.matches_name("a.b.example.com", 443)
    assert not wildcard.matches_name("example.com", 443)
    assert not wildcard.matches_name("evilexample.com", 443)
    with_port = parse_destination("api.example.com:443")
    assert with_port.matches_name("API.example.com.", 443)
    assert not with_port.matches_name("api.example.com", 80)
    cidr = parse_destination("10.0.0.0/8")
    assert cidr.matches_name("10.2.3.4", 22)
    assert cidr.matches_address(ipaddress.ip_address("10.9.9.9"), 1)
    assert not cidr.matches_address(ipaddress.ip_address("11.0.0.1"), 1)
    assert not parse_destination("api.example.com").matches_address(ipaddress.ip_address("10.0.0.1"), 443)


def test_a_backend_refuses_entry_forms_it_cannot_enforce_naming_what_it_can():
    with pytest.raises(ConfigError) as error:
        check_egress_kinds("demo", frozenset({EgressKind.CIDR}), ["api.example.com"])
    assert "demo backend cannot enforce: it enforces only CIDR entries" in str(error.value)
    with pytest.raises(ConfigError, match="cannot filter egress"):
        check_egress_kinds("demo", frozenset(), ["10.0.0.0/8"])
    check_egress_kinds("demo", frozenset({EgressKind.CIDR}), ["10.0.0.0/8"])


def test_spec_egress_allow_needs_the_filtered_policy():
    spec = SandboxSpec(network="datastore", egress_allow=("api.example.com:443",))
    assert spec.egress_allow == ("api.example.com:443",)
    with pytest.raises(ConfigError, match="needs network='datastore'"):
        SandboxSpec(network="full", egress_allow=("api.example.com",))
    with pytest.raises(ConfigError, match="not a URL"):
        SandboxSpec(network="datastore", egress_allow=("http://x",))


def test_capabilities_default_to_no_egress_filter():
    caps = Capabilities(isolation=Isolation.NAMESPACES, local=True, can_mount=True)
    assert caps.egress_kinds == frozenset() and NetworkPolicy.DATASTORE not in caps.network_policies
