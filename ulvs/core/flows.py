"""Flow records: what the core captures when a connection opens and closes (for the flow log).

Theory of operation: while the flow log is on (``Core.enable_flow_log``) the connection table
keeps, per slot, packets and bytes in each direction, the ``now`` of the first packet and what
closed the connection (a FIN or a RST, which never take the established path).  ``Core._bind`` captures an
*open* record and ``Core._unbind`` a *close* record into a list, the way connection sync
captures its changes (one attribute test while off); the shell drains the list
(``Core.drain_flows``), rate-limits, and only then decodes the lines it writes with
``flow_event``, so a flood of connections costs a tuple each, not a formatted line.

Bytes are IP total lengths (the IPv4 header's Total Length field of every packet the core
forwards for the connection, ICMP errors about it included), which is what IPVS counts in its
statistics (``ipvsadm --stats``).  A GRO/GSO super-packet counts once with its own total length.

A record is a plain tuple (cheap to make on the packet path), decoded here:

  open   (OPEN, key, proto, dest, start, synced)
  close  (CLOSE, key, proto, dest, start, end, inpkts, inbytes, outpkts, outbytes, state, reason,
          synced)

``key`` is the connection's in key caddr|vaddr|cport|vport (12 bytes), ``dest`` the Dest,
``start``/``end`` the core's ``now`` of the first and the last packet (``end`` to the conn
table's 1/16 s), ``state`` the TCP state (or UDP) as an int, ``reason`` a ``CloseReason``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ulvs.core.model import FwdMethod, Proto
from ulvs.core.proto_tcp import STATE_NAMES

OPEN, CLOSE = 0, 1
FlowRecord = tuple[Any, ...]

# What a slot's close byte records (set by Core._mark_closing, which sees every FIN and RST).
CLOSED_BY_FIN, CLOSED_BY_RST = 1, 2

_KEY = struct.Struct("!4s4sHH")


class CloseReason(IntEnum):
    """Why a connection left the table; the label (lower-case name) is the log's ``reason``."""

    EXPIRED = 0        # timed out with no FIN or RST seen (idle ESTABLISHED, SYN_RECV, UDP ...)
    FIN = 1            # timed out after a FIN: the close handshake ran (FIN_WAIT ... TIME_WAIT)
    RST = 2            # timed out after a RST (CLOSE)
    DEST_REMOVED = 3   # its dest was removed: expire_nodest_conn, or timed out with the dest gone
    DEST_CHANGED = 4   # its dest's forwarding method changed under it
    FLUSHED = 5        # the dest failed and its connections were flushed (expire_dest_conns)
    EVICTED = 6        # the table was full and a new connection took its slot
    REUSED = 7         # a new SYN on the closed entry started a new connection (conn_reuse_mode)
    OPS = 8            # one-packet scheduling: done with its datagram
    SYNC = 9           # the peer director removed or replaced it (connection sync)
    SHUTDOWN = 10      # still open when the daemon stopped (not removed: written at shutdown)

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """One decoded flow record.  Counters, ``duration``, ``state`` and ``reason`` are those of a
    close; an open has zeros and None."""

    event: str                      # "open" or "close"
    proto: Proto
    caddr: ipaddress.IPv4Address
    cport: int
    vaddr: ipaddress.IPv4Address
    vport: int
    daddr: ipaddress.IPv4Address
    dport: int
    method: FwdMethod
    start: float                    # the core's now of the first packet
    synced: bool = False            # created from a peer director's sync record
    duration: float = 0.0           # first to last packet, seconds
    inpkts: int = 0                 # client -> real server
    inbytes: int = 0
    outpkts: int = 0                # real server -> client (NAT only)
    outbytes: int = 0
    state: str | None = None
    reason: CloseReason | None = None


def flow_event(rec: FlowRecord) -> FlowEvent:
    """Decode a record captured by the core."""
    caddr, vaddr, cport, vport = _KEY.unpack(rec[1])
    dest = rec[3]
    common: dict[str, Any] = dict(
        proto=Proto(rec[2]), caddr=ipaddress.IPv4Address(caddr), cport=cport,
        vaddr=ipaddress.IPv4Address(vaddr), vport=vport, daddr=dest.config.daddr,
        dport=dest.config.dport or vport, method=dest.config.method, start=rec[4])
    if rec[0] == OPEN:
        return FlowEvent("open", **common, synced=rec[5])
    (_ev, _key, _proto, _dest, start, end, inpkts, inbytes, outpkts, outbytes, state, reason,
     synced) = rec
    return FlowEvent("close", **common, synced=synced, duration=max(0.0, end - start), inpkts=inpkts,
                     inbytes=inbytes, outpkts=outpkts, outbytes=outbytes, state=STATE_NAMES[state],
                     reason=CloseReason(reason))
