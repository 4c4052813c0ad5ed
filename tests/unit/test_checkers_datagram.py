"""DNS_CHECK, UDP_CHECK and PING_CHECK against responders on 127.0.0.1 (asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, create
from ulvs.health.checkers import dns, ping, udp
from ulvs.health.checkers._io import Failed

LOCAL = ipaddress.IPv4Address("127.0.0.1")
TIMEOUT = 0.3
Reply = Callable[[bytes], list[bytes]]   # a request -> the datagrams sent back


def checker(kind: str, port: int, **options: Any) -> Checker:
    options.setdefault("connect_timeout", TIMEOUT)
    return create(CheckSpec(kind, tuple(sorted(options.items()))), Target(LOCAL, port))


class _Responder(asyncio.DatagramProtocol):
    def __init__(self, reply: Reply, seen: list[bytes]) -> None:
        self.reply, self.seen = reply, seen
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)   # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(data)
        assert self.transport is not None
        for out in self.reply(data):
            self.transport.sendto(out, addr)


@contextlib.asynccontextmanager
async def responder(reply: Reply, seen: list[bytes] | None = None) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Responder(reply, [] if seen is None else seen), local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def probe_against(reply: Reply, kind: str, seen: list[bytes] | None = None, **options: Any) -> Result:
    async with responder(reply, seen) as port:
        return await checker(kind, port, **options).probe()


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- DNS_CHECK -------------------------------------------------------------------------------

def question(query: bytes) -> tuple[int, bytes, int]:
    """(id, wire name, qtype) of a query."""
    qid = struct.unpack_from("!H", query)[0]
    end = query.index(b"\0", 12) + 1
    qtype = struct.unpack_from("!H", query, end)[0]
    return qid, query[12:end], qtype


def dns_reply(query: bytes, rcode: int = 0, answers: int = 1, rtype: int | None = None,
              qid: int | None = None, cut: int = 0) -> bytes:
    rid, name, qtype = question(query)
    header = struct.pack("!HHHHHH", rid if qid is None else qid, 0x8180 | rcode, 1, answers, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, rtype or qtype, 1, 300, 4) + b"\x0a\x00\x00\x01"
    wire = header + name + struct.pack("!HH", qtype, 1) + rr * answers
    return wire[:len(wire) - cut]


def test_dns_default_is_soa_for_root(run: Any) -> None:
    seen: list[bytes] = []
    result = run(probe_against(lambda q: [dns_reply(q)], "DNS_CHECK", seen))
    assert result.ok and "1 answers (1 SOA)" in result.detail
    _, name, qtype = question(seen[0])
    assert (name, qtype) == (b"\0", dns.TYPES["SOA"])
    assert struct.unpack_from("!H", seen[0], 2)[0] == dns.FLAG_RD


def test_dns_name_and_type(run: Any) -> None:
    seen: list[bytes] = []
    result = run(probe_against(lambda q: [dns_reply(q, answers=2)], "DNS_CHECK", seen,
                               name="www.example.com.", type="AAAA"))
    assert result.ok and "2 answers (2 AAAA)" in result.detail
    assert question(seen[0])[1:] == (b"\x03www\x07example\x03com\x00", 28)


def test_dns_no_answer_is_still_up(run: Any) -> None:
    result = run(probe_against(lambda q: [dns_reply(q, answers=0)], "DNS_CHECK", type="MX"))
    assert result.ok and "0 answers" in result.detail


def test_dns_error_rcode(run: Any) -> None:
    result = run(probe_against(lambda q: [dns_reply(q, rcode=3)], "DNS_CHECK"))
    assert not result.ok and "NXDOMAIN" in result.detail
    result = run(probe_against(lambda q: [dns_reply(q, rcode=2)], "DNS_CHECK"))
    assert not result.ok and "SERVFAIL" in result.detail


def test_dns_ignores_other_ids_and_junk(run: Any) -> None:
    def noisy(q: bytes) -> list[bytes]:
        qid = question(q)[0]
        return [b"\x01\x02", dns_reply(q, qid=qid ^ 1, rcode=3), q, dns_reply(q)]

    assert run(probe_against(noisy, "DNS_CHECK")).ok
    result = run(probe_against(lambda q: [dns_reply(q, qid=question(q)[0] ^ 1)], "DNS_CHECK"))
    assert not result.ok and "no answer within 0.3 s" in result.detail


def test_dns_truncated_reply(run: Any) -> None:
    result = run(probe_against(lambda q: [dns_reply(q, cut=3)], "DNS_CHECK"))
    assert not result.ok and "truncated" in result.detail


def test_dns_port_unreachable(run: Any) -> None:
    result = run(checker("DNS_CHECK", closed_udp_port()).probe())
    assert not result.ok and "ECONNREFUSED" in result.detail


def test_dns_bad_name_is_a_config_error() -> None:
    with pytest.raises(CheckerError, match="label"):
        checker("DNS_CHECK", 53, name="a" * 64 + ".example")
    with pytest.raises(CheckerError, match="type"):
        checker("DNS_CHECK", 53, type="PTR")


def test_dns_parse_reply_is_bounded() -> None:
    query = dns.build_query(7, dns.encode_name("example.com"), 1)
    full = dns_reply(query, answers=2)
    assert dns.parse_reply(full).answers == (1, 1)
    for n in range(12, len(full)):
        with pytest.raises(Failed):
            dns.parse_reply(full[:n])


# -- UDP_CHECK -------------------------------------------------------------------------------

def echo(q: bytes) -> list[bytes]:
    return [q]


def test_udp_hex_format() -> None:
    assert udp.parse_hex("Ab12f 3 456 546443123")[0] == bytes.fromhex("AB120F034506546443 1203")
    data, mask = udp.parse_hex("12xX 3x", wildcard=True)
    assert (data, mask) == (b"\x12\x00\x30", b"\x00\xff\x0f")
    with pytest.raises(CheckerError):
        udp.parse_hex("12X4")


def test_udp_reply_pattern(run: Any) -> None:
    seen: list[bytes] = []
    assert run(probe_against(echo, "UDP_CHECK", seen, payload="c0ffee01", require_reply="c0ffee01")).ok
    assert seen == [bytes.fromhex("c0ffee01")]
    assert run(probe_against(echo, "UDP_CHECK", payload="c0ffee01", require_reply="c0fXeeX1")).ok
    result = run(probe_against(echo, "UDP_CHECK", payload="c0ffee01", require_reply="c0ffee02"))
    assert not result.ok and "does not match" in result.detail


def test_udp_reply_prefix_and_length(run: Any) -> None:
    # keepalived compares min(reply, pattern) bytes: a shorter matching reply passes ...
    assert run(probe_against(echo, "UDP_CHECK", payload="c0ff", require_reply="c0ffee")).ok
    # ... unless the length bounds say otherwise.
    result = run(probe_against(echo, "UDP_CHECK", payload="c0ff", require_reply="c0ffee", min_reply_length=3))
    assert not result.ok and "2-byte reply outside 3..255" in result.detail
    result = run(probe_against(lambda q: [q * 200], "UDP_CHECK", payload="c0ff", require_reply=True))
    assert not result.ok and "400-byte reply outside 0..255" in result.detail
    assert run(probe_against(lambda q: [q * 200], "UDP_CHECK", payload="c0ff", require_reply=True,
                             max_reply_length=400)).ok


def test_udp_any_reply_without_require_reply(run: Any) -> None:
    result = run(probe_against(lambda q: [b"whatever"], "UDP_CHECK", payload="01", min_reply_length=20))
    assert result.ok and "8-byte reply" in result.detail


def test_udp_silence(run: Any) -> None:
    seen: list[bytes] = []
    result = run(probe_against(lambda q: [], "UDP_CHECK", seen))
    assert result.ok and "no ICMP error" in result.detail
    assert len(seen) == 1 and len(seen[0]) == udp.RANDOM_PAYLOAD
    result = run(probe_against(lambda q: [], "UDP_CHECK", payload="01", require_reply=True))
    assert not result.ok and "no reply within 0.3 s" in result.detail


def test_udp_port_unreachable(run: Any) -> None:
    for options in ({}, {"require_reply": "01"}):
        result = run(checker("UDP_CHECK", closed_udp_port(), payload="01", **options).probe())
        assert not result.ok and "ICMP port unreachable" in result.detail


def test_udp_bad_options_are_config_errors() -> None:
    with pytest.raises(CheckerError):
        checker("UDP_CHECK", 9, payload="0x")
    with pytest.raises(CheckerError):
        checker("UDP_CHECK", 9, min_reply_length=10, max_reply_length=5)


# -- PING_CHECK ------------------------------------------------------------------------------

def test_ping_loopback(run: Any) -> None:
    c = checker("PING_CHECK", 0)
    first, second = run(c.probe()), run(c.probe())
    assert first.ok and second.ok and "echo reply from 127.0.0.1" in first.detail
    assert first.detail != second.detail     # a new sequence number each probe


def test_ping_unusable_source_fails(run: Any) -> None:
    spec = CheckSpec("PING_CHECK", (("connect_timeout", TIMEOUT),))
    target = Target(LOCAL, 0, bindto=ipaddress.IPv4Address("192.0.2.1"))   # not a local address
    result = run(create(spec, target).probe())
    assert not result.ok and "EADDRNOTAVAIL" in result.detail


def test_ping_reply_matching() -> None:
    reply = bytearray(ping.echo_request(0x1234, 7))
    reply[0] = ping.ECHO_REPLY
    ip = bytes([0x45]) + bytes(11) + socket.inet_aton("127.0.0.1") + socket.inet_aton("127.0.0.1")
    assert ping.is_reply(bytes(reply), False, "127.0.0.1", 0x1234, 7)
    assert ping.is_reply(ip + bytes(reply), True, "127.0.0.1", 0x1234, 7)
    assert not ping.is_reply(ip + bytes(reply), True, "127.0.0.2", 0x1234, 7)     # other host
    assert not ping.is_reply(ip + bytes(reply), True, "127.0.0.1", 0x1235, 7)     # other id
    assert not ping.is_reply(bytes(reply), False, "127.0.0.1", 0x1234, 8)         # other seq
    assert not ping.is_reply(ping.echo_request(0x1234, 7), False, "127.0.0.1", 0x1234, 7)   # request
    assert not ping.is_reply(ip[:10], True, "127.0.0.1", 0x1234, 7)
    assert ping.inet_checksum(ping.echo_request(1, 1)) == 0
