"""DNS_CHECK: one UDP query for ``name`` (default ".") of ``type`` (default SOA), class IN.

Semantics are keepalived's (check_dns.c): the dest is up when a reply carries the query's id,
has QR set and RCODE NOERROR (RFC 1035 §4.1.1).  An answer is not required: an authoritative
"no data" reply (NOERROR, no records) still shows a working server.  Datagrams with another
id, or queries, are ignored while the attempt lasts.  Unlike keepalived the reply must also
parse (header, question and record framing, bounded); the answer count goes in the detail.
A connected socket's ICMP port unreachable fails the check at once.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from dataclasses import dataclass

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, register
from ulvs.health.checkers._io import Failed, bounded, endpoint, udp_socket

# RFC 1035 §3.2.2 / RFC 3596 §2.1 type codes.
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}
CLASS_IN = 1
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_REPLY = 4096            # bytes read per datagram (EDNS-sized; plain DNS is 512)
MAX_LABEL, MAX_NAME = 63, 255

HEADER = struct.Struct("!HHHHHH")   # id, flags, qdcount, ancount, nscount, arcount (§4.1.1)
QFIXED = struct.Struct("!HH")       # qtype, qclass (§4.1.2)
RRFIXED = struct.Struct("!HHIH")    # type, class, ttl, rdlength (§4.1.3)
FLAG_QR = 0x8000
FLAG_RD = 0x0100
RCODE_MASK = 0x000F


def encode_name(name: str) -> bytes:
    """A domain name in wire form (§3.1); "." and "" are the root."""
    labels = [label for label in name.rstrip(".").split(".")] if name.strip(".") else []
    wire = b""
    for label in labels:
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 1 <= len(raw) <= MAX_LABEL:
            raise CheckerError(f"DNS name {name!r}: label {label!r} must be 1-{MAX_LABEL} bytes")
        wire += bytes([len(raw)]) + raw
    wire += b"\0"
    if len(wire) > MAX_NAME:
        raise CheckerError(f"DNS name {name!r} is longer than {MAX_NAME} bytes")
    return wire


def build_query(qid: int, name: bytes, qtype: int) -> bytes:
    return HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + name + QFIXED.pack(qtype, CLASS_IN)


@dataclass(frozen=True, slots=True)
class Reply:
    qid: int
    flags: int
    answers: tuple[int, ...]   # the type of each answer record

    @property
    def rcode(self) -> int:
        return self.flags & RCODE_MASK


def parse_reply(data: bytes) -> Reply:
    """Header, then the framing of every question and answer; raises Failed when truncated."""
    if len(data) < HEADER.size:
        raise Failed(f"reply of {len(data)} bytes is shorter than a DNS header")
    qid, flags, qdcount, ancount, _, _ = HEADER.unpack_from(data)
    pos = HEADER.size
    for _ in range(qdcount):
        pos = _skip_name(data, pos) + QFIXED.size
    answers: list[int] = []
    for _ in range(ancount):
        pos = _skip_name(data, pos)
        if pos + RRFIXED.size > len(data):
            raise Failed("reply truncated in an answer record")
        rtype, _, _, rdlength = RRFIXED.unpack_from(data, pos)
        pos += RRFIXED.size + rdlength
        answers.append(rtype)
    if pos > len(data):
        raise Failed("reply truncated")
    return Reply(qid, flags, tuple(answers))


def _answers_query(data: bytes, qid: int) -> bool:
    """A response to our query?  Short datagrams, other ids and queries are ignored."""
    if len(data) < HEADER.size:
        return False
    rid, flags = struct.unpack_from("!HH", data)
    return rid == qid and bool(flags & FLAG_QR)


def _skip_name(data: bytes, pos: int) -> int:
    """The offset after the name at ``pos``; a compression pointer (§4.1.4) ends it."""
    for _ in range(MAX_NAME):
        if pos >= len(data):
            raise Failed("reply truncated in a name")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise Failed(f"bad label type 0x{length:02x}")
        pos += 1 + length
        if length == 0:
            return pos
    raise Failed("name has too many labels")


class DnsCheck(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        self.qname = str(spec.get("name", "."))
        self.qtype_name = str(spec.get("type", "SOA")).upper()
        if self.qtype_name not in TYPES:
            raise CheckerError(f"DNS type {self.qtype_name!r} (allowed: {', '.join(TYPES)})")
        self.qtype = TYPES[self.qtype_name]
        self.wire_name = encode_name(self.qname)

    async def probe(self) -> Result:
        what = f"DNS {self.qtype_name} {self.qname} to {endpoint(self.target)}"
        return await bounded(self._query, self.connect_timeout, what)

    async def _query(self) -> Result:
        loop = asyncio.get_running_loop()
        qid = secrets.randbelow(1 << 16)
        with udp_socket(self.target) as sock:
            await loop.sock_sendall(sock, build_query(qid, self.wire_name, self.qtype))
            while True:
                data = await loop.sock_recv(sock, MAX_REPLY)
                if _answers_query(data, qid):
                    return self._judge(parse_reply(data))

    def _judge(self, reply: Reply) -> Result:
        if reply.rcode:
            raise Failed(f"rcode {RCODES.get(reply.rcode, reply.rcode)}")
        matching = sum(1 for t in reply.answers if t == self.qtype)
        return Result(True, f"NOERROR, {len(reply.answers)} answers ({matching} {self.qtype_name})")


register("DNS_CHECK", DnsCheck)
