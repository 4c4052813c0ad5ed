"""The VRRPv3 advertisement codec for IPv4 (RFC 5798 section 5), plus ulvs's HMAC trailer.

Pure: no sockets, no clocks.  ``encode`` builds the VRRP payload only -- a raw IPPROTO 112 socket
adds the IP header (TTL 255, RFC 5798 section 5.1.1.3, is the socket's job) -- and ``decode_ip``
reads a whole IPv4 packet as such a socket returns it, IP header included.  Decoding never raises:
network garbage ends in one of ``DROP_REASONS``, which double as counter names (STYLE rule 5).

Wire format (RFC 5798 section 5.1), 8 bytes then the addresses::

    Version=3 (4 bits) | Type=1 (4) | VRID (8) | Priority (8) | Count IPvX Addr (8)
    rsvd (4) | Max Adver Int (12 bits, centiseconds) | Checksum (16)
    IPv4 address (4 bytes) x Count

Checksum (section 5.2.8): the Internet checksum of the VRRP message, computed over an IPv4
pseudo-header (source, destination, zero, protocol 112, VRRP length) as for TCP.  keepalived does
this by default; Cisco, Juniper and keepalived's ``v3_checksum_as_v2`` leave the pseudo-header out
(``pseudo_header=False``), which keepalived.conf(5) calls RFC 9568 compliance.

Authentication trailer (a ulvs extension, for ulvs-ulvs pairs only; VRRPv3 has no
authentication and keepalived does not know this trailer)::

    after the addresses:  b"UL" (2) | reserved, zero (2) | sequence (8, big-endian) | MAC (16)
    MAC = HMAC-SHA256(key, src | dst | 112 (1 byte) | VRRP message with a zero checksum
                           | b"UL" | sequence)[:16]

The checksum covers only the standard message (its length follows from Count), so the trailer
can be added or checked without touching it.  A receiver without a key accepts a trailer it
cannot check (``auth_seq`` is then None); a receiver with a key requires one.  The sequence is
reported, not judged: anti-replay (a rising sequence per sender) is the caller's policy.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ulvs.packet.checksum import checksum, pseudo_header_sum, verify
from ulvs.packet.layouts import IP4, IP4_LEN

IPPROTO_VRRP = 112
VRRP_TTL = 255                  # RFC 5798 section 5.1.1.3 (sent) and section 7.1 (checked)
VRRP_VERSION = 3
VRRP_TYPE_ADVERTISEMENT = 1     # the only type (RFC 5798 section 5.2.2)
MAX_ADVER_INT = 0x0FFF          # 12 bits of centiseconds: 40.95 s
MAX_ADDRESSES = 255             # Count is 8 bits; its minimum is 1 (section 5.2.5)

# Version/type (1) | VRID (1) | Priority (1) | Count (1) | rsvd 4 bits + Max Adver Int 12 bits (2) |
# Checksum (2)
VRRP_HEADER = struct.Struct("!BBBBHH")
VRRP_HEADER_LEN = 8
CHECKSUM_OFF = 6
ADDR_LEN = 4

AUTH_MAGIC = b"UL"
# magic (2) | reserved (2) | sequence (8) | truncated HMAC-SHA256 (16)
AUTH_TRAILER = struct.Struct("!2sHQ16s")
AUTH_TRAILER_LEN = 28
MAC_LEN = 16
MAX_SEQ = (1 << 64) - 1

DropReason = Literal[
    "short",         # the buffer ends before the IP header, the IP total length or the VRRP fixed part
    "not_ipv4",      # IP version is not 4
    "protocol",      # IP protocol is not 112
    "ttl",           # TTL is not 255: the sender is not on the link (RFC 5798 section 7.1)
    "version",       # VRRP version is not 3
    "type",          # VRRP type is not ADVERTISEMENT
    "length",        # lengths disagree: IHL, IP total length, Count (0, or more addresses than
                     # sent), or trailing bytes that are not exactly one ulvs trailer
    "checksum",      # the VRRP checksum is wrong (in the flavour(s) accepted)
    "auth_missing",  # a key is configured and the advert has no trailer
    "auth_invalid",  # the trailer's MAC is wrong, or its reserved bytes are not zero
]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


@dataclass(frozen=True, slots=True)
class Advert:
    """One received advertisement: the VRRP fields and what the IP header said."""

    vrid: int
    priority: int                   # 255 address owner, 1..254 backup, 0 master leaving
    max_adver_int: int              # centiseconds (12 bits)
    addresses: tuple[bytes, ...]    # 4-byte packed IPv4 addresses
    src: bytes                      # the sender's primary address (IP source), 4 bytes
    dst: bytes                      # 224.0.0.18, or ours when unicast, 4 bytes
    ttl: int
    auth_seq: int | None = None     # the trailer's sequence when its MAC was checked, else None


def encode(vrid: int, priority: int, adver_int_cs: int, addresses: Sequence[bytes],
           src: bytes, dst: bytes, *, key: bytes | None = None, seq: int = 0,
           pseudo_header: bool = True) -> bytes:
    """The VRRP payload of one advertisement (RFC 5798 section 5.1), without the IP header.

    ``src``/``dst`` are the IP addresses the packet will carry: the checksum's pseudo-header and
    the MAC cover them.  With ``key``, the ulvs trailer (sequence ``seq``) follows the addresses.
    Out-of-range arguments are our own misuse and raise ``ValueError``.
    """
    _check_range("vrid", vrid, 1, 255)
    _check_range("priority", priority, 0, 255)
    _check_range("adver_int_cs", adver_int_cs, 1, MAX_ADVER_INT)
    _check_range("number of addresses", len(addresses), 1, MAX_ADDRESSES)
    if any(len(a) != ADDR_LEN for a in (*addresses, src, dst)):
        raise ValueError("addresses, src and dst must be 4-byte packed IPv4 addresses")
    message = bytearray(VRRP_HEADER.pack(VRRP_VERSION << 4 | VRRP_TYPE_ADVERTISEMENT, vrid, priority,
                                         len(addresses), adver_int_cs, 0))
    for a in addresses:
        message += a
    trailer = b""
    if key is not None:
        _check_range("seq", seq, 0, MAX_SEQ)
        if not key:
            raise ValueError("the authentication key is empty")
        trailer = AUTH_TRAILER.pack(AUTH_MAGIC, 0, seq, _mac(key, src, dst, message, seq))
    struct.pack_into("!H", message, CHECKSUM_OFF, _checksum(message, src, dst, pseudo_header))
    return bytes(message) + trailer


def decode_ip(packet: bytes | memoryview, *, key: bytes | None = None,
              pseudo_header: bool | None = None) -> Advert | DropReason:
    """Parse one IPv4 packet from a raw IPPROTO 112 socket into an ``Advert`` or a drop reason.

    Checks in the order of RFC 5798 section 7.1: TTL 255, version 3, then (section 5.2.2) type,
    the length against Count, the checksum (``pseudo_header`` True: with the pseudo-header, False:
    without, None: either), and with ``key`` the ulvs trailer.  The VRID, the priority's meaning and
    the interval are the caller's business.  Never raises on bad input.
    """
    buf = bytes(packet)
    if len(buf) < IP4_LEN:
        return "short"
    ver_ihl, _tos, total_len, _id, _frag, ttl, proto, _csum, src, dst = IP4.unpack_from(buf)
    if ver_ihl >> 4 != 4:
        return "not_ipv4"
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IP4_LEN or total_len < ihl:
        return "length"
    if len(buf) < total_len:
        return "short"
    if proto != IPPROTO_VRRP:
        return "protocol"
    if ttl != VRRP_TTL:
        return "ttl"
    return _decode_vrrp(buf[ihl:total_len], src, dst, ttl, key, pseudo_header)


def _decode_vrrp(vrrp: bytes, src: bytes, dst: bytes, ttl: int, key: bytes | None,
                 pseudo_header: bool | None) -> Advert | DropReason:
    if len(vrrp) < VRRP_HEADER_LEN:
        return "short"
    ver_type, vrid, priority, count, rsvd_adver, _csum = VRRP_HEADER.unpack_from(vrrp)
    if ver_type >> 4 != VRRP_VERSION:
        return "version"
    if ver_type & 0x0F != VRRP_TYPE_ADVERTISEMENT:
        return "type"
    size = VRRP_HEADER_LEN + ADDR_LEN * count
    message, trailer = vrrp[:size], vrrp[size:]
    if count == 0 or len(message) < size or (trailer and not _is_trailer(trailer)):
        return "length"
    if not _checksum_ok(message, src, dst, pseudo_header):
        return "checksum"
    auth_seq = None
    if key is not None:
        if not trailer:
            return "auth_missing"
        auth_seq = _verified_seq(key, src, dst, message, trailer)
        if auth_seq is None:
            return "auth_invalid"
    addresses = tuple(message[i:i + ADDR_LEN] for i in range(VRRP_HEADER_LEN, size, ADDR_LEN))
    return Advert(vrid, priority, rsvd_adver & MAX_ADVER_INT, addresses, src, dst, ttl, auth_seq)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} out of range (allowed: {low}..{high})")


def _checksum(message: bytes | bytearray, src: bytes, dst: bytes, pseudo_header: bool) -> int:
    """RFC 5798 section 5.2.8 over ``message`` (its checksum field zero)."""
    initial = pseudo_header_sum(src, dst, IPPROTO_VRRP, len(message)) if pseudo_header else 0
    return checksum(message, initial=initial)


def _checksum_ok(message: bytes, src: bytes, dst: bytes, pseudo_header: bool | None) -> bool:
    with_pseudo = pseudo_header is not False and verify(
        message, initial=pseudo_header_sum(src, dst, IPPROTO_VRRP, len(message)))
    return with_pseudo or (pseudo_header is not True and verify(message))


def _is_trailer(trailer: bytes) -> bool:
    return len(trailer) == AUTH_TRAILER_LEN and trailer.startswith(AUTH_MAGIC)


def _mac(key: bytes, src: bytes, dst: bytes, message: bytes | bytearray, seq: int) -> bytes:
    """The trailer's MAC; the checksum field of ``message`` is zeroed here."""
    zeroed = bytes(message[:CHECKSUM_OFF]) + b"\0\0" + bytes(message[CHECKSUM_OFF + 2:])
    data = src + dst + bytes((IPPROTO_VRRP,)) + zeroed + AUTH_MAGIC + seq.to_bytes(8, "big")
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def _verified_seq(key: bytes, src: bytes, dst: bytes, message: bytes, trailer: bytes) -> int | None:
    """The trailer's sequence if its reserved bytes are zero and its MAC is right, else None."""
    _magic, reserved, seq, mac = AUTH_TRAILER.unpack(trailer)
    if reserved != 0 or not hmac.compare_digest(mac, _mac(key, src, dst, message, seq)):
        return None
    return int(seq)
