"""The connection-sync wire format: IPVS sync v1 (net/netfilter/ipvs/ip_vs_sync.c) plus ulvs's
sequence numbers, sender boot id, HMAC and message kinds.  Codec only: bytes in, bytes out.

One message is one UDP datagram, at most the MTU minus the IP and UDP headers (REFERENCE (i)).
All fields are in network byte order::

    header, 8 bytes (IPVS struct ip_vs_sync_mesg)
     0               1               2               3
    +---------------+---------------+-------------------------------+
    |  0 (8)        |  SyncID (8)   |  Size (16): the whole datagram|
    +---------------+---------------+---------------+---------------+
    |  Count (8)    |  Version = 1  |  hflags (8)   |  kind (8)     |
    +---------------+---------------+---------------+---------------+

    entry, 36 bytes for IPv4 (IPVS struct ip_vs_sync_v4), Count times
    +---------------+---------------+-------+-----------------------+
    |  Type = 0 (8) | Protocol (8)  | Ver(4)| Size (12) = 36        |
    +---------------+---------------+-------+-----------------------+
    |  Flags (32)                                                   |
    +-------------------------------+-------------------------------+
    |  State (16)                   |  cport (16)                   |
    +-------------------------------+-------------------------------+
    |  vport (16)                   |  dport (16)                   |
    +-------------------------------+-------------------------------+
    |  fwmark (32)                                                  |
    |  timeout, seconds (32)                                        |
    |  caddr (32)                                                   |
    |  vaddr (32)                                                   |
    |  daddr (32)                                                   |
    +---------------------------------------------------------------+

    trailer (ulvs), after the entries
    +---------------------------------------------------------------+
    |  sequence number (64)                                         |
    |  sender boot id (64)                                          |
    |  HMAC-SHA256 of every byte before it (256), when hflags AUTH  |
    +---------------------------------------------------------------+

ulvs's additions, none of which an IPVS kernel would understand (it is not a target: ulvs and
IPVS directors are not meant to sync with each other):

* IPVS's spare 16 bits hold ``hflags`` (bit 0 ``AUTH``: an HMAC ends the datagram) and the
  message ``kind``: ``CONNS`` (entries), ``BULK_REQUEST`` (send me your whole table) and
  ``BULK_END`` (that was all of it); the two control kinds carry no entries;
* entry Flags keep IPVS's values (``IP_VS_CONN_F_*``, include/uapi/linux/ip_vs.h: the
  forwarding method in the low three bits, ``TEMPLATE`` for persistence templates) and add
  ``F_DELETE`` (a deletion record: IPVS's backup only lets connections time out);
* the trailer: a 64-bit sequence number per sender and a 64-bit boot id the sender picks at
  random when it starts, both covered by the HMAC, so a receiver can tell replays and losses
  from a restart of its peer.

States keep the IPVS numbering: TCP as ``ulvs.core.proto_tcp.TcpState`` (NONE 0 .. SYNACK 10,
the same as IPVS's IP_VS_TCP_S_*), UDP 0 (IPVS's IP_VS_UDP_S_NORMAL; the core maps it to its
own UDP state).  A persistence template is in state NONE with cport 0; a service group's
template has protocol 0 (IPPROTO_IP, as IPVS) and its mark in fwmark.

The decoder never raises on network input: every bad datagram is a counted drop whose reason
is one of ``DROP_REASONS``.  The codec reads no clock and draws no random numbers; the caller
passes the boot id.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

SYNC_VERSION = 1
SYNC_PORT = 8848                      # IPVS's default sync port (group 224.0.0.81)

HEADER = struct.Struct("!BBHBBBB")    # 0, SyncID, Size, Count, Version, hflags, kind
ENTRY = struct.Struct("!BBHIHHHHII4s4s4s")
TRAILER = struct.Struct("!QQ")        # sequence number, sender boot id
HMAC_LEN = 32                         # SHA-256 digest
IP_UDP_OVERHEAD = 20 + 8              # IPv4 header without options + UDP header
MAX_COUNT = 255                       # Count is 8 bits
assert HEADER.size == 8 and ENTRY.size == 36 and TRAILER.size == 16

H_AUTH = 0x01                         # hflags: the datagram ends with an HMAC

# Entry Flags.  IPVS's (include/uapi/linux/ip_vs.h) where IPVS has the meaning:
IP_VS_CONN_F_FWD_MASK = 0x0007
IP_VS_CONN_F_MASQ = 0x0000            # NAT
IP_VS_CONN_F_TUNNEL = 0x0002
IP_VS_CONN_F_DROUTE = 0x0003          # direct routing
IP_VS_CONN_F_TEMPLATE = 0x1000        # persistence template
F_DELETE = 0x80000000                 # ulvs: the connection is gone (a deletion record)
FWD_METHODS = frozenset({IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_DROUTE})

# Entry Type bit 0 is IPv6 in IPVS; only IPv4 entries exist here.  Ver(4)+Size(12) of an IPv4
# entry without options: version 0, size 36.
ENTRY_TYPE_INET = 0
ENTRY_VER_SIZE = ENTRY.size

TCP, UDP = 6, 17
TCP_STATES = 11                       # NONE .. SYNACK
UDP_STATE_NORMAL = 0                  # IPVS's only UDP state


class Kind(IntEnum):
    """Message kinds (ulvs; the header's spare low byte)."""

    CONNS = 0           # connection entries: created, changed, refreshed or deleted
    BULK_REQUEST = 1    # a (re)joining director asks its peer for the whole table
    BULK_END = 2        # the peer has sent all of it


CONNS, BULK_REQUEST, BULK_END = Kind.CONNS, Kind.BULK_REQUEST, Kind.BULK_END
_KINDS = frozenset(int(k) for k in Kind)

# Why the decoder dropped a datagram (also the keys of ``Decoder.counters``, with "accepted").
DROP_REASONS = (
    "short",            # shorter than a header and a trailer
    "version",          # not a v1 message (byte 0 is not 0, Version is not 1, unknown hflags)
    "syncid",           # another pair's SyncID
    "size",             # Size is not the datagram's length, or Count entries do not fill it
    "kind",             # unknown kind, or a control message carrying entries
    "auth_missing",     # a key is configured here but the datagram has no HMAC
    "auth_invalid",     # the HMAC does not match (wrong key, or altered on the way)
    "auth_unexpected",  # the datagram has an HMAC but no key is configured here
    "replay",           # a sequence number not above the highest seen from that boot id
    "entry",            # an entry that is not a valid IPv4 connection or template
)


@dataclass(frozen=True, slots=True)
class ConnRecord:
    """One connection (or persistence template) as it travels between directors.

    ``fwd`` is the IPVS forwarding-method value (``IP_VS_CONN_F_MASQ`` / ``TUNNEL`` /
    ``DROUTE``), ``state`` the IPVS state number (UDP: 0), ``timeout`` the seconds left before
    it expires on the sender, ``delete`` a deletion record.  ``template``: a persistence
    template, whose caddr is the masked client address and cport 0 (ulvs syncs them as IPVS
    does, with IP_VS_CONN_F_TEMPLATE)."""

    proto: int
    fwd: int
    state: int
    caddr: bytes
    cport: int
    vaddr: bytes
    vport: int
    daddr: bytes
    dport: int
    fwmark: int
    timeout: int
    delete: bool = False
    template: bool = False


def valid_record(r: ConnRecord) -> bool:
    """Whether ``r`` can be sent, and is taken when received."""
    if r.template:
        if r.proto not in (0, TCP, UDP) or r.state != 0:
            return False
    elif r.proto == TCP:
        if not 0 <= r.state < TCP_STATES:
            return False
    elif r.proto != UDP or r.state != UDP_STATE_NORMAL:
        return False
    return (r.fwd in FWD_METHODS
            and len(r.caddr) == 4 and len(r.vaddr) == 4 and len(r.daddr) == 4
            and all(0 <= p <= 0xFFFF for p in (r.cport, r.vport, r.dport))
            and 0 <= r.fwmark <= 0xFFFFFFFF and 0 <= r.timeout <= 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Message:
    """A datagram the decoder accepted."""

    kind: Kind
    records: tuple[ConnRecord, ...]
    seq: int
    boot_id: int
    syncid: int


def _check_key(key: bytes | None) -> None:
    if key is not None and not key:
        raise ValueError("an empty sync key: configure none, or a real one")


class Encoder:
    """Builds the datagrams of one sender: ``syncid`` (0..255), an HMAC when ``key`` is set,
    ``boot_id`` (64 bits, drawn at random by the caller when the director starts) and the
    path ``mtu``, which bounds every datagram (IP and UDP headers included)."""

    def __init__(self, syncid: int, key: bytes | None, boot_id: int, mtu: int = 1500) -> None:
        if not 0 <= syncid <= 0xFF:
            raise ValueError(f"syncid {syncid} out of range 0..255")
        if not 0 <= boot_id <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("the boot id is 64 bits")
        _check_key(key)
        self.syncid = syncid
        self.key = key
        self.boot_id = boot_id
        self.seq = 0          # the last sequence number used; the first message carries 1
        self._tail = TRAILER.size + (HMAC_LEN if key is not None else 0)
        room = mtu - IP_UDP_OVERHEAD - HEADER.size - self._tail
        self.per_message = min(MAX_COUNT, room // ENTRY.size)
        if self.per_message < 1:
            raise ValueError(f"MTU {mtu} leaves no room for a sync entry")

    def messages(self, records: Iterable[ConnRecord], kind: Kind = CONNS) -> list[bytes]:
        """The datagrams carrying ``records`` (as many per datagram as the MTU allows), each
        with the next sequence number.  ``CONNS`` without records is no datagram at all; the
        control kinds carry no records and are one datagram."""
        recs = list(records)
        for r in recs:
            if not valid_record(r):
                raise ValueError(f"not a valid sync record: {r}")
        if kind != CONNS:
            if recs:
                raise ValueError(f"a {kind.name} message carries no records")
            return [self._pack(kind, [])]
        n = self.per_message
        return [self._pack(kind, recs[i:i + n]) for i in range(0, len(recs), n)]

    def bulk_request(self) -> bytes:
        return self._pack(BULK_REQUEST, [])

    def bulk_end(self) -> bytes:
        return self._pack(BULK_END, [])

    def _pack(self, kind: Kind, recs: list[ConnRecord]) -> bytes:
        if self.seq >= 0xFFFFFFFFFFFFFFFF:
            raise OverflowError("sequence numbers exhausted: restart with a new boot id")
        self.seq += 1
        size = HEADER.size + len(recs) * ENTRY.size + self._tail
        buf = bytearray(size)
        HEADER.pack_into(buf, 0, 0, self.syncid, size, len(recs), SYNC_VERSION,
                         H_AUTH if self.key is not None else 0, kind)
        off = HEADER.size
        for r in recs:
            flags = r.fwd | (IP_VS_CONN_F_TEMPLATE if r.template else 0) | (F_DELETE if r.delete else 0)
            ENTRY.pack_into(buf, off, ENTRY_TYPE_INET, r.proto, ENTRY_VER_SIZE, flags, r.state, r.cport,
                            r.vport, r.dport, r.fwmark, r.timeout, r.caddr, r.vaddr, r.daddr)
            off += ENTRY.size
        TRAILER.pack_into(buf, off, self.seq, self.boot_id)
        if self.key is not None:
            off += TRAILER.size
            buf[off:] = hmac.digest(self.key, bytes(buf[:off]), hashlib.sha256)
        return bytes(buf)


class Decoder:
    """Checks and decodes the datagrams of a pair: ``syncid`` (0 accepts any, as IPVS's backup
    does) and ``key`` (when set, only datagrams with a valid HMAC are taken; when not, only
    datagrams without one).

    Anti-replay, per sender boot id: the highest sequence number accepted so far.  A sequence
    number at or below it is a ``replay``; one above it by more than one means messages were
    lost (``lost`` grows by the gap).  A boot id not seen before (the peer restarted, or this
    director did) starts a new window with no loss counted.  The last ``WINDOWS`` boot ids
    are remembered."""

    WINDOWS = 16

    def __init__(self, syncid: int, key: bytes | None) -> None:
        if not 0 <= syncid <= 0xFF:
            raise ValueError(f"syncid {syncid} out of range 0..255")
        _check_key(key)
        self.syncid = syncid
        self.key = key
        self.lost = 0
        self.counters: dict[str, int] = {"accepted": 0, "records": 0, **dict.fromkeys(DROP_REASONS, 0)}
        self._highest: OrderedDict[int, int] = OrderedDict()   # boot id -> highest sequence number

    def feed(self, datagram: bytes) -> Message | str:
        """The message in ``datagram``, or the reason it was dropped (one of ``DROP_REASONS``)."""
        got = self._decode(datagram)
        if isinstance(got, str):
            self.counters[got] += 1
        else:
            self.counters["accepted"] += 1
            self.counters["records"] += len(got.records)
        return got

    def highest(self, boot_id: int) -> int | None:
        """The highest sequence number accepted from ``boot_id``, if any."""
        return self._highest.get(boot_id)

    def _decode(self, d: bytes) -> Message | str:
        n = len(d)
        if n < HEADER.size:
            return "short"
        zero, syncid, size, count, version, hflags, kind = HEADER.unpack_from(d, 0)
        if zero != 0 or version != SYNC_VERSION or hflags & ~H_AUTH:
            return "version"
        if self.syncid and syncid != self.syncid:
            return "syncid"
        if size != n:
            return "size"
        auth = bool(hflags & H_AUTH)
        end = n - TRAILER.size - (HMAC_LEN if auth else 0)   # where the entries end
        if end < HEADER.size:
            return "short"
        if end - HEADER.size != count * ENTRY.size:
            return "size"
        if kind not in _KINDS or (kind != CONNS and count):
            return "kind"
        if self.key is not None:
            if not auth:
                return "auth_missing"
            mac = hmac.digest(self.key, bytes(d[:n - HMAC_LEN]), hashlib.sha256)
            if not hmac.compare_digest(mac, bytes(d[n - HMAC_LEN:])):
                return "auth_invalid"
        elif auth:
            return "auth_unexpected"
        seq, boot_id = TRAILER.unpack_from(d, end)
        highest = self._highest.get(boot_id)
        if highest is not None and seq <= highest:
            return "replay"
        records = []
        for off in range(HEADER.size, end, ENTRY.size):
            (typ, proto, ver_size, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr,
             daddr) = ENTRY.unpack_from(d, off)
            if typ != ENTRY_TYPE_INET or ver_size != ENTRY_VER_SIZE:
                return "entry"
            r = ConnRecord(proto, flags & IP_VS_CONN_F_FWD_MASK, state, caddr, cport, vaddr, vport, daddr,
                           dport, fwmark, timeout, delete=bool(flags & F_DELETE),
                           template=bool(flags & IP_VS_CONN_F_TEMPLATE))
            if not valid_record(r):
                return "entry"
            records.append(r)
        # Accepted: only now does the window move, so a forged or broken datagram cannot move it.
        if highest is None:
            self._highest[boot_id] = seq
            while len(self._highest) > self.WINDOWS:
                self._highest.popitem(last=False)
        else:
            self.lost += seq - highest - 1
            self._highest[boot_id] = seq
            self._highest.move_to_end(boot_id)
        return Message(Kind(kind), tuple(records), seq, boot_id, syncid)
