"""The forwarding core: services, dests, connections, and the packet path (sans-I/O).

``Core`` is driven by its caller: the control plane calls the service/dest methods *between*
batches, the I/O layer hands it batches of frames with ``process_batch(..., now)`` and sends what
the verdicts say, and the shell arms one timer from ``next_deadline()`` and calls
``handle_timer(now)``.  The core never reads a clock, opens a socket or logs per packet.

The per-packet work is split in two (STYLE "Two speeds"): ``ulvs.core.fastpath`` handles
conn-table hits of plain IPv4 TCP/UDP that do not change state; everything else comes here, to
``_slow``, which is ordinary readable code: parsing with bounds checks, new connections and
scheduling, TCP state changes, ICMP errors, TTL expiry.  Both share the same plans
(``ulvs.core.xmit``) and counters.
"""

from __future__ import annotations

import ipaddress
import struct
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import compress
from typing import Any

from ulvs.core import xmit
from ulvs.core.conntab import (
    F_ANSWERED,
    F_DEAD,
    F_INACTIVE,
    F_NAT,
    F_OPS,
    F_SYNC,
    F_TEMPLATE,
    F_UDP,
    TICKS_PER_SECOND,
    ConnTable,
)
from ulvs.core.fastpath import process_batch as _fast_process_batch
from ulvs.core.flows import CLOSE, CLOSED_BY_FIN, CLOSED_BY_RST, OPEN, CloseReason, FlowRecord
from ulvs.core.model import Dest, DestConfig, FwdMethod, Proto, Service, ServiceConfig
from ulvs.core.proto_tcp import (
    DEFAULT_TIMEOUTS,
    NUM_STATES,
    STATE_NAMES,
    TH_ACK,
    TH_FIN,
    TH_RST,
    TH_SYN,
    UDP_STATE,
    Direction,
    TcpState,
    is_pure_syn,
    next_state,
)
from ulvs.core.stats import Counters, StatsTable
from ulvs.core.verdict import DropReason, Verdict
from ulvs.packet import builder
from ulvs.packet.checksum import apply_delta, checksum, verify
from ulvs.packet.layouts import (
    ETH_P_IP,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from ulvs.packet.parse import Frame, Malformed, parse_frame
from ulvs.sched import create as create_scheduler
from ulvs.sync.proto import (
    IP_VS_CONN_F_DROUTE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_TUNNEL,
    UDP_STATE_NORMAL,
    ConnRecord,
)

_PORTS = struct.Struct("!HH")
_KEY = struct.Struct("!IIHH")   # a connection key read as caddr, vaddr, cport, vport
_U16 = struct.Struct("!H")
_DROP, _FORWARD, _PASS = int(Verdict.DROP), int(Verdict.FORWARD), int(Verdict.PASS)
_REASON_BY_LABEL = {r.label: r for r in DropReason}
_EVICT_ON_ENTRY = (TcpState.SYN_RECV, TcpState.CLOSE, TcpState.TIME_WAIT)
# Plain ints for the per-packet code (an enum member read from its class costs a lookup).
_SYN_RECV, _ESTABLISHED = int(TcpState.SYN_RECV), int(TcpState.ESTABLISHED)
_D_IN, _D_OUT, _D_IN_ONLY = int(Direction.INPUT), int(Direction.OUTPUT), int(Direction.INPUT_ONLY)
_REUSABLE = (TcpState.TIME_WAIT, TcpState.CLOSE)   # conn_reuse_mode: a new SYN may reschedule
_NO_PARTIAL = bytes(4096)
# Connection sync (ulvs.sync): what the capture log records, and the IPVS forwarding-method values.
_EV_NEW, _EV_STATE, _EV_DEL = 0, 1, 2
_FWD_OF = {FwdMethod.MASQ: IP_VS_CONN_F_MASQ, FwdMethod.TUNNEL: IP_VS_CONN_F_TUNNEL,
           FwdMethod.DROUTE: IP_VS_CONN_F_DROUTE}
SYNC_REFRESH_SCAN = 16384   # slots ``sync_refresh`` looks at per call, by default


class CoreError(ValueError):
    """A control-plane request that cannot be applied (unknown service, duplicate dest...)."""


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """One connection as listed by ``ulvsadm -L -c``."""

    proto: Proto
    caddr: ipaddress.IPv4Address
    cport: int
    vaddr: ipaddress.IPv4Address
    vport: int
    daddr: ipaddress.IPv4Address
    dport: int
    state: str
    expires: float          # seconds from ``now`` until expiry
    method: FwdMethod
    template: bool = False  # a persistence template (listed with state NONE, cport 0)


ServiceKey = tuple[Proto, ipaddress.IPv4Address, int]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Where a new packet of a flow would go, and why (``Core.explain``; ``ulvs explain``).

    ``kind`` is one of:
    * ``connection``: an existing connection carries the flow (``state``, ``expires``; ``dest``
      may be ``removed``, its packets are then dropped as ``dest_gone``);
    * ``template``: a persistence template binds the client network (``client`` = caddr masked
      with ``netmask``) to ``dest`` until ``expires``;
    * ``scheduled``: the service's scheduler (``sched``) would pick ``dest`` for it;
    * ``no_dest``: the scheduler finds no available dest ("no destination available");
    * ``no_service``: no service answers vaddr:vport (the packet is not ulvs's).

    ``replaces`` names the state of a closed connection a new SYN of the flow would replace
    (conn_reuse_mode); ``table_full`` says a new connection would find the table full with
    nothing to evict; ``reason`` says it all in one sentence."""

    kind: str
    proto: Proto
    caddr: ipaddress.IPv4Address
    cport: int
    vaddr: ipaddress.IPv4Address
    vport: int
    reason: str
    service: ServiceKey | None = None
    sched: str | None = None
    daddr: ipaddress.IPv4Address | None = None
    dport: int | None = None
    method: FwdMethod | None = None
    state: str | None = None
    expires: float | None = None          # seconds from ``now``
    client: ipaddress.IPv4Address | None = None
    netmask: ipaddress.IPv4Address | None = None
    removed: bool = False
    replaces: str | None = None
    table_full: bool = False              # no room for its connection: dropped (conn_table_full)


def _svc_lookup_key(proto: int, vaddr: bytes, vport: int) -> tuple[int, bytes]:
    return (proto, vaddr + _U16.pack(vport))


class Core:
    """An IPVS-like director core.  Not thread-safe: one per dataplane worker."""

    def __init__(self, *, conn_limit: int = 1_000_000, tick: float = 1.0, batch_max: int = 1024,
                 expire_nodest_conn: bool = False, expire_quiescent_template: bool = False,
                 icmp_rate: float = 100.0) -> None:
        self.table = ConnTable(conn_limit, tick)
        self.stats = StatsTable()
        self.timeouts = array("d", DEFAULT_TIMEOUTS)
        self.expire_nodest_conn = expire_nodest_conn
        self.expire_quiescent_template = expire_quiescent_template
        self._tmpl: dict[int, list[int]] = {}   # template slot -> [timeout s, conns it controls]
        self.services: dict[ServiceKey, Service] = {}
        self._svc_lookup: dict[tuple[int, bytes], Service] = {}
        self.vips: set[bytes] = set()
        self.masq_addrs: set[bytes] = set()       # addresses of masq dests (NAT replies come from)
        self.local_addrs: set[bytes] = set()      # the director's own addresses (traffic to them passes)
        # Forwarding methods the dataplane can carry out (the tap backend cannot route by MAC).
        self.allowed_methods: frozenset[FwdMethod] = frozenset({FwdMethod.MASQ, FwdMethod.DROUTE})
        self._masq_ports: set[bytes] = set()      # their daddr|dport endpoints
        self._trash: dict[tuple[ServiceKey, ipaddress.IPv4Address, int], Dest] = {}
        self._in_plans: dict[tuple[int, bytes], list[Any]] = {}
        self._out_plans: dict[tuple[int, bytes, int, bytes], list[Any]] = {}
        self._plans_by_daddr: dict[bytes, list[list[Any]]] = {}
        self.neighbors: dict[bytes, tuple[int, bytes, bytes]] = {}
        self.interfaces: dict[int, tuple[bytes, bytes | None]] = {}
        self.unresolved: set[bytes] = set()
        # Batch outputs, preallocated: verdict, egress and drop reason per frame.
        self.batch_max = batch_max
        self.verdicts = bytearray(batch_max)
        self.egress = array("l", [0]) * batch_max
        self.reasons = bytearray(batch_max)
        self.emitted: list[tuple[bytes, int]] = []
        # ICMP error rate limit (token bucket), like the kernel's icmp_ratelimit.
        self._icmp_rate = icmp_rate
        self._icmp_tokens = icmp_rate
        self._icmp_stamp = 0.0
        self._ifin = 0
        self._len = 0
        self._tl = 0
        self._partial: Any = _NO_PARTIAL
        # Connection sync (see "Connection synchronisation" below): None while off, else the
        # (slot, event, ...) tuples captured since the last drain.
        self._sync_log: list[tuple[Any, ...]] | None = None
        self._sync_stamps = array("I")      # per slot: ticks when it was last sent or applied
        self._sync_cursor = 0
        self._unlearned_plans: dict[tuple[int, bytes], list[Any]] = {}
        self.sync_skipped = 0               # records apply_sync could not apply here
        # Flow log (see "Flow log" below, ulvs.core.flows): None while off, else the open and
        # close records captured since the last drain; _count_flows is the fast path's test.
        self._flow_log: list[FlowRecord] | None = None
        self._count_flows = False

    # ======================================================================================
    # Control plane (call between batches)
    # ======================================================================================
    def add_service(self, cfg: ServiceConfig) -> Service:
        if cfg.key in self.services:
            raise CoreError(f"service {_svc_name(cfg)} already exists")
        lookups = [_svc_lookup_key(p, a.packed, port) for p, a, port in cfg.entries()]
        for lk in lookups:
            other = self._svc_lookup.get(lk)
            if other is not None:
                port = _U16.unpack_from(lk[1], 4)[0]
                entry = f"{Proto(lk[0]).name} {ipaddress.IPv4Address(lk[1][:4])}:{port}"
                raise CoreError(f"{entry} already belongs to {_svc_name(other.config)}")
        svc = Service(cfg, create_scheduler(cfg.sched, cfg.flags))
        self.services[cfg.key] = svc
        for lk in lookups:
            self._svc_lookup[lk] = svc
        self._refresh_vips()
        return svc

    def _refresh_vips(self) -> None:
        self.vips = {lk[1][:4] for lk in self._svc_lookup}

    def _find_service(self, proto: int, vkey: bytes) -> Service | None:
        """The service for packets to vkey = vaddr|vport: exact entry, else the VIP's port-0 entry."""
        return self._svc_lookup.get((proto, vkey)) or self._svc_lookup.get((proto, vkey[:4] + b"\0\0"))

    def edit_service(self, cfg: ServiceConfig) -> Service:
        svc = self.get_service(cfg.key)
        if cfg.entries() != svc.config.entries():
            raise CoreError("a service's address, port or group members cannot be edited; "
                            "delete and add it")
        if cfg.sched != svc.config.sched or cfg.flags != svc.config.flags:
            svc.scheduler = create_scheduler(cfg.sched, cfg.flags)
            svc.scheduler.rebuild(svc.dests)
        svc.config = cfg
        return svc

    def del_service(self, key: ServiceKey) -> None:
        svc = self.get_service(key)
        for d in list(svc.dests):
            self.del_dest(key, d.config.daddr, d.config.dport)
        del self.services[key]
        for p, a, port in svc.config.entries():
            del self._svc_lookup[_svc_lookup_key(p, a.packed, port)]
        self._refresh_vips()

    def clear(self) -> None:
        """ipvsadm -C: delete every service."""
        for key in list(self.services):
            self.del_service(key)

    def get_service(self, key: ServiceKey) -> Service:
        try:
            return self.services[key]
        except KeyError:
            raise CoreError(f"no such service {key[0].name} {key[1]}:{key[2]}") from None

    def add_dest(self, key: ServiceKey, cfg: DestConfig) -> Dest:
        svc = self.get_service(key)
        self._check_method(cfg.method)
        if svc.find(cfg.daddr, cfg.dport) is not None:
            raise CoreError(f"dest {cfg.daddr}:{cfg.dport} already exists in {_svc_name(svc.config)}")
        dest = self._trash.pop((key, cfg.daddr, cfg.dport), None)
        if dest is None:
            dest = Dest(cfg, svc, sid=self.stats.alloc())
        dest.config, dest.removed, dest.overloaded = cfg, False, False
        dest.weight = cfg.weight
        if cfg.weight:
            dest.last_weight = cfg.weight
        dest.index = len(svc.dests)
        svc.dests.append(dest)
        self._refresh_plans(dest)
        self._refresh_masq()
        svc.scheduler.add_dest(svc.dests, dest)
        return dest

    def edit_dest(self, key: ServiceKey, cfg: DestConfig) -> Dest:
        svc = self.get_service(key)
        dest = svc.find(cfg.daddr, cfg.dport)
        if dest is None:
            raise CoreError(f"no dest {cfg.daddr}:{cfg.dport} in {_svc_name(svc.config)}")
        self._check_method(cfg.method)
        method_changed = cfg.method != dest.config.method
        dest.config = cfg
        dest.weight = cfg.weight
        if cfg.weight:
            dest.last_weight = cfg.weight
        self._update_overload(dest)
        if method_changed:
            self._refresh_plans(dest)
            self._refresh_masq()
        svc.scheduler.upd_dest(svc.dests, dest)
        return dest

    def _check_method(self, method: FwdMethod) -> None:
        if method == FwdMethod.TUNNEL:
            raise CoreError("the tunnel forwarding method is not supported yet; use masq or droute")
        if method not in self.allowed_methods:
            allowed = " or ".join(sorted(m.value for m in self.allowed_methods))
            raise CoreError(f"forwarding method {method.value} is not available with this dataplane "
                            f"backend; use {allowed}")

    def del_dest(self, key: ServiceKey, daddr: ipaddress.IPv4Address, dport: int) -> None:
        svc = self.get_service(key)
        dest = svc.find(daddr, dport)
        if dest is None:
            raise CoreError(f"no dest {daddr}:{dport} in {_svc_name(svc.config)}")
        svc.dests.remove(dest)
        for i, d in enumerate(svc.dests):
            d.index = i
        dest.removed = True
        # Existing connections keep pointing at the dest object; their packets now take the
        # slow path (egress -1) and are dropped or expired (expire_nodest_conn).  If the dest
        # comes back before they expire it is revived from the trash, as IPVS does.
        for plan in self._plans_of(dest):
            plan[xmit.P_EG] = -1
        if dest.conns or dest.persistconns:
            self._trash[(key, daddr, dport)] = dest
        else:
            self._forget_dest(dest)
        self._refresh_masq()
        svc.scheduler.del_dest(svc.dests, dest)

    def expire_dest_conns(self, key: ServiceKey, daddr: ipaddress.IPv4Address, dport: int, proto: Proto,
                          now: float) -> int:
        """Drop the connections of ``proto`` bound to dest ``daddr:dport`` of service ``key``
        (in service or already removed, when connections keep it in the trash), and the
        persistence templates of that protocol (or of the service group) that pin clients to
        it; returns how many connections went.

        The health monitor's answer to a failed dest: a UDP flow has no end, so without this
        its next datagram would still go to the dead dest until the flow times out; with it,
        the next datagram is scheduled afresh.  A walk over the whole table: a control-plane
        operation, never on the packet path.  A dest that is neither in the service nor kept
        by connections has none: 0.  ``now`` is the time of the decision (unused by the walk
        itself; kept so the call reads like every other timed core call)."""
        svc = self.get_service(key)
        dest = svc.find(daddr, dport) or self._trash.get((key, daddr, dport))
        if dest is None:
            return 0
        t = self.table
        templates, conns = [], []
        for slot in t.slots():
            if t.dest(slot) is not dest:
                continue
            if t.flags[slot] & F_TEMPLATE:
                if t.key[slot][0] in (int(proto), 0):
                    templates.append(slot)
            elif t.proto(slot) == proto:
                conns.append(slot)
        for slot in templates:
            if not t.flags[slot] & F_DEAD:
                self._kill_template(slot)
        for slot in conns:
            self._unbind(slot, CloseReason.FLUSHED)
        return len(conns)

    def _refresh_masq(self) -> None:
        dests = [d for s in self.services.values() for d in s.dests] + list(self._trash.values())
        masq = [d for d in dests if d.config.method == FwdMethod.MASQ]
        self.masq_addrs = {d.config.daddr.packed for d in masq}
        self._masq_ports = {d.config.daddr.packed + _U16.pack(d.config.dport) for d in masq}

    def set_timeouts(self, tcp: float = 0, tcpfin: float = 0, udp: float = 0) -> None:
        """ipvsadm --set tcp tcpfin udp (0 keeps the current value)."""
        for state, value in ((TcpState.ESTABLISHED, tcp), (TcpState.FIN_WAIT, tcpfin), (UDP_STATE, udp)):
            if value < 0:
                raise CoreError("timeouts must not be negative")
            if value:
                self.timeouts[state] = value

    def set_neighbor(self, addr: ipaddress.IPv4Address | bytes, egress: int, dst_mac: bytes,
                     src_mac: bytes) -> None:
        """Next hop towards a dest address: egress interface, its MAC and the egress MAC."""
        a = addr if isinstance(addr, bytes) else addr.packed
        self.neighbors[a] = (egress, dst_mac, src_mac)
        self.unresolved.discard(a)
        for plan in self._plans_by_daddr.get(a, ()):
            if plan[xmit.P_EG] != -2:
                xmit.set_l2(plan, egress, dst_mac, src_mac)

    def set_local_addrs(self, addrs: Iterable[str | ipaddress.IPv4Address]) -> None:
        """The director's own addresses: a real server's packets to them are not NAT replies."""
        self.local_addrs = {ipaddress.IPv4Address(a).packed for a in addrs}

    def set_interface(self, ifindex: int, mac: bytes, addr: ipaddress.IPv4Address | None) -> None:
        """An interface of the director, used as the source of ICMP errors it originates."""
        self.interfaces[ifindex] = (mac, addr.packed if addr else None)

    # -- plans -----------------------------------------------------------------------------
    def _in_plan(self, dest: Dest, vkey: bytes) -> list[Any]:
        """The in plan of ``dest`` for packets to vkey = vaddr|vport (6 bytes)."""
        plan = self._in_plans.get((dest.sid, vkey))
        if plan is None:
            vaddr, vport = vkey[:4], _U16.unpack_from(vkey, 4)[0]
            if dest.config.method == FwdMethod.MASQ:
                plan = xmit.nat_in_plan(vaddr, vport, dest.config.daddr.packed,
                                        dest.config.dport or vport, dest.sid, dest)
            else:
                plan = xmit.dr_plan(dest.sid, dest)
            nb = self.neighbors.get(dest.config.daddr.packed)
            if nb is not None and not dest.removed:
                xmit.set_l2(plan, *nb)
            self._in_plans[(dest.sid, vkey)] = plan
            self._plans_by_daddr.setdefault(dest.config.daddr.packed, []).append(plan)
        return plan

    def _out_plan(self, dest: Dest, vkey: bytes, ifin: int, macs: bytes) -> list[Any]:
        """The out plan of ``dest`` for replies to a client whose frames arrived on ``ifin``
        with ``macs`` = their destination MAC | source MAC: replies go back the same way."""
        pkey = (dest.sid, vkey, ifin, macs)
        plan = self._out_plans.get(pkey)
        if plan is None:
            vaddr, vport = vkey[:4], _U16.unpack_from(vkey, 4)[0]
            plan = xmit.nat_out_plan(vaddr, vport, dest.config.daddr.packed, dest.config.dport or vport,
                                     dest.sid, dest, ifin, macs[6:12] + macs[0:6])
            self._out_plans[pkey] = plan
        return plan

    def _plans_of(self, dest: Dest) -> Iterator[list[Any]]:
        for p in list(self._in_plans.values()) + list(self._out_plans.values()):
            if p[xmit.P_DEST] is dest:
                yield p

    def _refresh_plans(self, dest: Dest) -> None:
        """Drop cached plans of ``dest`` (method change, revival) and re-arm surviving conns."""
        # del_dest set the egress of every plan to -1; an out plan's real egress (the client's
        # ingress interface) survives only in its cache key, so recover it before discarding.
        out_ifin = {id(p): k[2] for k, p in self._out_plans.items() if p[xmit.P_DEST] is dest}
        self._discard_plans(dest)
        t = self.table
        for slot in t.slots():
            if t.dest(slot) is not dest:
                continue
            if dest.config.method == FwdMethod.MASQ and t.flags[slot] & F_NAT:
                vkey = t.key[slot][4:8] + t.key[slot][10:12]
                t.iplan[slot] = self._in_plan(dest, vkey)
                old_out = t.oplan[slot]
                t.oplan[slot] = self._out_plan(dest, vkey, out_ifin.get(id(old_out), old_out[xmit.P_EG]),
                                               old_out[xmit.P_L2][6:12] + old_out[xmit.P_L2][0:6])
                if t.oplan[slot][xmit.P_EG] < 0:   # synced, return path not learned yet (apply_sync)
                    t.iplan[slot] = self._unlearned_in_plan(dest, vkey)
            elif not t.flags[slot] & F_TEMPLATE:
                # The forwarding method changed under a live connection: it cannot continue.
                self._unbind(slot, CloseReason.DEST_CHANGED)

    def _discard_plans(self, dest: Dest) -> None:
        for k in [k for k, p in self._in_plans.items() if p[xmit.P_DEST] is dest]:
            plan = self._in_plans.pop(k)
            lst = self._plans_by_daddr.get(dest.config.daddr.packed)
            if lst is not None and plan in lst:
                lst.remove(plan)
        for k2 in [k for k, p in self._out_plans.items() if p[xmit.P_DEST] is dest]:
            del self._out_plans[k2]

    def _forget_dest(self, dest: Dest) -> None:
        self._discard_plans(dest)
        self.stats.release(dest.sid)

    # ======================================================================================
    # Connections: bind / unbind (ip_vs_bind_dest / ip_vs_unbind_dest)
    # ======================================================================================
    def _bind(self, proto: int, key: bytes, vkey: bytes, dest: Dest, ifin: int, macs: bytes,
              now: float, ops: bool = False) -> int:
        """Create the connection with in key ``key`` (caddr|vaddr|cport|vport) to ``dest``, in its
        first state (a pure SYN has just been seen: SYN_RECV; UDP: its one state).

        A one-packet (``ops``) connection is not entered under its in key, so the next datagram
        of the flow is scheduled afresh; NAT replies still find it by its out key."""
        t = self.table
        state = _SYN_RECV if proto == IPPROTO_TCP else UDP_STATE
        iplan = self._in_plan(dest, vkey)
        nat = iplan[xmit.P_KIND] == xmit.KIND_NAT
        flags = (F_NAT | F_INACTIVE) if nat else F_INACTIVE
        if nat:
            okey = iplan[xmit.P_OKA] + key[0:4] + iplan[xmit.P_OKP] + key[8:10]
            if ops:
                old = t.out_tab[proto].get(okey)
                if old is not None:
                    self._unbind(old, CloseReason.OPS)   # the flow's previous datagram to this dest
        slot = t.alloc(proto, state, flags | F_OPS if ops else flags, now)
        t.key[slot] = key
        t.iplan[slot] = iplan
        if not ops:
            t.in_tab[proto][key] = slot
        if nat:
            t.oplan[slot] = self._out_plan(dest, vkey, ifin, macs)
            t.out_tab[proto][okey] = slot
        dest.inactconns += 1
        self.stats.conns[dest.sid] += 1
        if nat and proto == IPPROTO_TCP:
            self.stats.syns[dest.sid] += 1    # passive health: a SYN the dest should answer
        u = dest.config.u_threshold
        sched = dest.service.scheduler
        if u and dest.activeconns + dest.inactconns >= u and not dest.overloaded:
            dest.overloaded = True
            sched.upd_dest(dest.service.dests, dest)
        if sched.tracks_conns:
            sched.conn_changed(dest)
        t.schedule(slot, now + self.timeouts[state])
        if state == _SYN_RECV:
            t._evictable.append(slot)
        if self._sync_log is not None:
            self._sync_log.append((slot, _EV_NEW))
        if self._flow_log is not None:
            self._flow_log.append((OPEN, key, proto, dest, now, False))
        return slot

    def _unbind(self, slot: int, why: CloseReason = CloseReason.EXPIRED) -> None:
        """Remove connection or template ``slot``; ``why`` is for the flow log (EXPIRED: its
        timeout passed, refined by ``_close_record``)."""
        t = self.table
        iplan = t.iplan[slot]
        dest: Dest = iplan[xmit.P_DEST]
        key = t.key[slot]
        flags = t.flags[slot]
        if self._sync_log is not None and not flags & F_OPS:
            self._sync_log.append((slot, _EV_DEL, key, dest, t.state[slot], flags))
        if self._flow_log is not None and not flags & F_TEMPLATE:
            self._flow_log.append(self._close_record(slot, why))
        if flags & F_TEMPLATE:
            if not flags & F_DEAD:
                t.templates.pop(key, None)
            del self._tmpl[slot]
            dest.persistconns -= 1
            t.release(slot)
            self._maybe_forget(dest)
            return
        proto = t.proto(slot)
        if not flags & F_OPS:
            t.in_tab[proto].pop(key, None)
        if flags & F_NAT:
            okey = iplan[xmit.P_OKA] + key[0:4] + iplan[xmit.P_OKP] + key[8:10]
            if t.out_tab[proto].get(okey) == slot:
                del t.out_tab[proto][okey]
        if flags & F_INACTIVE:
            dest.inactconns -= 1
        else:
            dest.activeconns -= 1
        tslot = t.control.get(slot)
        t.release(slot)
        if tslot is not None:
            info = self._tmpl[tslot]
            info[1] -= 1
            if info[1] == 0 and t.flags[tslot] & F_DEAD:
                self._unbind(tslot)
        self._update_overload(dest)
        if dest.removed:
            self._maybe_forget(dest)
        else:
            dest.service.scheduler.conn_changed(dest)

    def _maybe_forget(self, dest: Dest) -> None:
        """A removed dest is forgotten once no connection or template refers to it."""
        if dest.removed and not dest.conns and not dest.persistconns:
            if self._trash.get((dest.service.config.key, dest.config.daddr, dest.config.dport)) is dest:
                del self._trash[(dest.service.config.key, dest.config.daddr, dest.config.dport)]
                self._forget_dest(dest)

    def _update_overload(self, dest: Dest) -> None:
        """IPVS threshold rule: set at bind when conns >= upper; clear on unbind when below the
        lower threshold, else below 3/4 of the upper, else (no upper) always."""
        u, lo, total = dest.config.u_threshold, dest.config.l_threshold, dest.conns
        was = dest.overloaded
        if u and total >= u:
            dest.overloaded = True
        elif was:
            if lo:
                dest.overloaded = total >= lo
            elif u:
                dest.overloaded = total * 4 >= u * 3
            else:
                dest.overloaded = False
        if was != dest.overloaded and not dest.removed:
            dest.service.scheduler.upd_dest(dest.service.dests, dest)

    def _set_state(self, slot: int, new: int, now: float) -> None:
        t = self.table
        old = t.state[slot]
        if new == old:
            return
        t.state[slot] = new
        if self._sync_log is not None:
            self._sync_log.append((slot, _EV_STATE))
        dest: Dest = t.dest(slot)
        inactive = bool(t.flags[slot] & F_INACTIVE)
        if inactive and new == _ESTABLISHED:
            t.flags[slot] &= ~F_INACTIVE
            dest.inactconns -= 1
            dest.activeconns += 1
            dest.service.scheduler.conn_changed(dest)
        elif not inactive and new != _ESTABLISHED:
            t.flags[slot] |= F_INACTIVE
            dest.activeconns -= 1
            dest.inactconns += 1
            dest.service.scheduler.conn_changed(dest)
        if new in _EVICT_ON_ENTRY:
            t.mark_evictable(slot)
        t.schedule(slot, now + self.timeouts[new], earlier_only=True)

    # ======================================================================================
    # Time
    # ======================================================================================
    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work, or None."""
        deadline = self.table.next_deadline()
        for svc in self.services.values():
            d = svc.scheduler.next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        return deadline

    def handle_timer(self, now: float) -> int:
        """Expire every connection whose timeout has passed; returns how many expired.
        Schedulers whose state ages (lblc's cache) get their timer here too."""
        for svc in self.services.values():
            d = svc.scheduler.next_deadline()
            if d is not None and d <= now:
                svc.scheduler.handle_timer(now)
        t = self.table
        timeouts, state, seen = self.timeouts, t.state, t.seen
        expired = 0
        for slot in t.due_slots(now):
            tmpl = self._tmpl.get(slot) if t.flags[slot] & F_TEMPLATE else None
            if tmpl is not None:
                deadline = seen(slot) + tmpl[0]
                if tmpl[1]:
                    # A template does not expire while it controls connections: each time its
                    # timer fires it is re-armed for another timeout, counted from that moment.
                    while deadline <= now:
                        deadline += tmpl[0]
            else:
                deadline = seen(slot) + timeouts[state[slot]]
            if deadline > now:
                t.schedule(slot, deadline)
            else:
                self._unbind(slot)
                expired += 1
        return expired

    # ======================================================================================
    # Explain: the decision for a flow, with no side effect
    # ======================================================================================
    def explain(self, proto: Proto, caddr: ipaddress.IPv4Address, cport: int,
                vaddr: ipaddress.IPv4Address, vport: int, now: float) -> Explanation:
        """Where the next packet of ``proto`` caddr:cport -> vaddr:vport would go at ``now``
        (a TCP flow: its next SYN when no connection carries it), and why.

        The same decisions as the packet path, in the same order -- connection table, then
        persistence template, then scheduler -- but nothing is created, moved or counted: the
        scheduler is asked through ``Scheduler.peek``, which runs on a copy of its state."""
        if proto not in (Proto.TCP, Proto.UDP):
            raise CoreError("explain takes a TCP or UDP flow")
        p = int(proto)
        flow: dict[str, Any] = dict(proto=proto, caddr=caddr, cport=cport, vaddr=vaddr, vport=vport)
        name = f"{proto.name} {caddr}:{cport} -> {vaddr}:{vport}"
        key = caddr.packed + vaddr.packed + _PORTS.pack(cport, vport)
        t = self.table
        replaces: str | None = None
        slot = t.tabs[(p, 0)].get(key)
        if slot is not None:
            st = t.state[slot]
            if p == IPPROTO_TCP and self._syn_restarts(slot):
                replaces = STATE_NAMES[st]        # a new SYN starts over (conn_reuse_mode)
            else:
                dest: Dest = t.dest(slot)
                dport = dest.config.dport or vport
                where = f"{dest.config.daddr}:{dport}"
                expires = max(0.0, t.seen(slot) + self.timeouts[st] - now)
                reason = f"{name}: existing connection in state {STATE_NAMES[st]} to {where}"
                if dest.removed:
                    reason += " (its dest was removed: packets are dropped as dest_gone)"
                return Explanation(
                    "connection", **flow, reason=reason, service=dest.service.config.key,
                    sched=dest.service.config.sched, daddr=dest.config.daddr, dport=dport,
                    method=dest.config.method, state=STATE_NAMES[st], expires=expires,
                    removed=dest.removed)
        svc = self._find_service(p, vaddr.packed + _U16.pack(vport))
        if svc is None:
            return Explanation("no_service", **flow, reason=f"{name}: no service for {vaddr}:{vport}")
        cfg = svc.config
        # Room: free slots (plus the one a replaced connection frees) and evictable entries.
        room = t.limit - t.count + (replaces is not None) + t.evictable_count()
        common: dict[str, Any] = dict(service=cfg.key, sched=cfg.sched, replaces=replaces)
        again = f" (replacing a {replaces} connection)" if replaces else ""
        no_room = "; but the connection table is full with nothing to evict: dropped (conn_table_full)"
        ci, vi = int(caddr), int(vaddr)
        if cfg.persistent is not None:
            tslot = t.templates.get(_template_key(cfg, p, ci, vi, vport))
            if tslot is not None and self._template_valid(t.dest(tslot)):
                dest = t.dest(tslot)
                info = self._template_info(tslot, now)
                client = ipaddress.IPv4Address(ci & int(cfg.netmask))
                full = room < 1
                return Explanation(
                    "template", **flow, **common, daddr=dest.config.daddr,
                    dport=dest.config.dport or vport, method=dest.config.method,
                    expires=info.expires, client=client, netmask=cfg.netmask, table_full=full,
                    reason=f"{name}: persistence template {client}/{cfg.netmask} -> "
                           f"{dest.config.daddr}:{dest.config.dport or vport}, expires in "
                           f"{int(info.expires)} s{again}{no_room if full else ''}")
        picked = svc.scheduler.peek(ci, cport, vi, vport, now)
        if picked is None:
            return Explanation("no_dest", **common, **flow,
                               reason=f"{name}: scheduler {cfg.sched} of {_svc_name(cfg)}: "
                                      f"no destination available{again}")
        dport = picked.config.dport or vport
        full = room < (2 if cfg.persistent is not None else 1)    # a new template takes one too
        return Explanation(
            "scheduled", **flow, **common, daddr=picked.config.daddr, dport=dport,
            method=picked.config.method, table_full=full,
            reason=f"{name}: scheduler {cfg.sched} of {_svc_name(cfg)} picks "
                   f"{picked.config.daddr}:{dport}{again}{no_room if full else ''}")

    # ======================================================================================
    # Connection synchronisation (ulvs.sync, docs/SYNC.md)
    # ======================================================================================
    # Sender side: where connections change -- _bind and _persist (new), _set_state (TCP
    # state), _unbind (gone) -- a small tuple goes into ``_sync_log`` (one attribute test while
    # sync is off); records are built only when drained, from the slot's state at that time, or
    # for a removed connection from what _unbind captured (its slot may be reused by then).
    # Receiver side: ``apply_sync`` creates, updates and deletes connections from records.  A
    # synced NAT connection does not know its way back to the client (the interface and MACs
    # of the client's frames, see _out_plan) until a packet of the client reaches this core.

    def enable_sync(self) -> None:
        """Start capturing connection changes for ``drain_sync``."""
        if self._sync_log is None:
            self._sync_log = []

    def disable_sync(self) -> None:
        """Stop capturing; changes not drained yet are forgotten."""
        self._sync_log = None

    @property
    def sync_enabled(self) -> bool:
        return self._sync_log is not None

    def drain_sync(self, now: float) -> list[ConnRecord]:
        """What changed since the last drain, in the order it happened: a record for every
        connection or persistence template created or whose TCP state changed (one per
        connection, with its state and remaining timeout at ``now``), and a deletion record for
        every one removed.  One created and removed between two drains is left out: the peer
        never heard of it.  One-packet (ops) connections are never synced."""
        log = self._sync_log
        if not log:
            return []
        self._sync_log = []
        t = self.table
        out: list[ConnRecord | None] = []
        pending: dict[int, tuple[int, bool]] = {}   # live slot -> (its place in out, created since)
        for ev in log:
            slot = ev[0]
            if ev[1] == _EV_DEL:
                p = pending.pop(slot, None)
                if p is not None:
                    out[p[0]] = None
                    if p[1]:
                        continue
                _slot, _ev, key, dest, state, flags = ev
                out.append(self._sync_record_of(key, dest, state, flags, 0.0, delete=True))
            elif slot not in pending:
                pending[slot] = (len(out), ev[1] == _EV_NEW)
                out.append(None)   # filled in below, from the slot as it is now
        for slot, (i, _created) in pending.items():
            if t.key[slot] is not None and not t.flags[slot] & (F_OPS | F_DEAD):
                out[i] = self._sync_record(slot, now)
        return [r for r in out if r is not None]

    def sync_dump(self, now: float) -> Iterator[ConnRecord]:
        """Every live connection and persistence template (templates first, so a receiver
        links the connections to them): the answer to a bulk request.  Consume it between
        batches."""
        t = self.table
        for templates in (True, False):
            for slot in t.slots():
                fl = t.flags[slot]
                if bool(fl & F_TEMPLATE) == templates and not fl & (F_OPS | F_DEAD):
                    yield self._sync_record(slot, now)

    def sync_refresh(self, now: float, max_age: float, scan: int = SYNC_REFRESH_SCAN) -> list[ConnRecord]:
        """Records for the connections last sent (or applied) ``max_age`` seconds ago or more,
        so that a peer does not expire a connection that lives on here.  Looks at ``scan``
        slots per call, round-robin from where the last call stopped: called every second it
        goes through a table of N slots in N / ``scan`` seconds, with no pause."""
        t = self.table
        n = len(t.key)
        if n == 0 or scan <= 0:
            return []
        stamps = self._sync_stamps_for(n)
        cutoff = t.ticks(now) - max_age * TICKS_PER_SECOND
        key, flags = t.key, t.flags
        out = []
        slot = self._sync_cursor % n
        for _ in range(min(scan, n)):
            if key[slot] is not None and not flags[slot] & (F_OPS | F_DEAD) and stamps[slot] <= cutoff:
                out.append(self._sync_record(slot, now))
            slot += 1
            if slot == n:
                slot = 0
        self._sync_cursor = slot
        return out

    def apply_sync(self, records: Iterable[ConnRecord], now: float) -> int:
        """Apply a peer's records: create connections (flagged F_SYNC) and persistence
        templates, update their state and timeout, or delete them.  Returns how many records
        changed something here.  A record whose service (proto, vaddr, vport) or dest (daddr,
        dport, forwarding method) does not exist here is skipped and counted in
        ``sync_skipped``; so is one that finds the table full with nothing to evict.

        The peer's connection wins over one of this core for the same client flow.  A
        record's remaining timeout never shortens what this core already has (its own packets
        count too; a connection the peer removes comes as a deletion record).  What is applied
        is not captured for this core's own ``drain_sync``: no echo."""
        saved, self._sync_log = self._sync_log, None
        applied = 0
        try:
            for rec in records:
                res = self._apply_template(rec, now) if rec.template else self._apply_conn(rec, now)
                if res > 0:
                    applied += 1
                elif res < 0:
                    self.sync_skipped += 1
        finally:
            self._sync_log = saved
        return applied

    # -- records ---------------------------------------------------------------------------
    def _sync_stamps_for(self, n: int) -> array[int]:
        s = self._sync_stamps
        if len(s) < n:
            s.extend(array("I", bytes(4 * (n - len(s)))))
        return s

    def _sync_stamp(self, slot: int, now: float) -> None:
        self._sync_stamps_for(slot + 1)[slot] = max(0, self.table.ticks(now))

    def _sync_record(self, slot: int, now: float) -> ConnRecord:
        """The record of live ``slot`` at ``now`` (and the slot counts as sent)."""
        t = self.table
        self._sync_stamp(slot, now)
        flags = t.flags[slot]
        if flags & F_TEMPLATE:
            timeout, controls = self._tmpl[slot]
            left = timeout if controls else t.seen(slot) + timeout - now   # no expiry while it controls
        else:
            left = t.seen(slot) + self.timeouts[t.state[slot]] - now
        return self._sync_record_of(t.key[slot], t.dest(slot), t.state[slot], flags, left)

    @staticmethod
    def _sync_record_of(key: Any, dest: Dest, state: int, flags: int, left: float,
                        delete: bool = False) -> ConnRecord:
        """A record from a slot's fields: in ``key`` (or a template's key), dest, state, flags
        and the seconds ``left`` before it expires (rounded up)."""
        cfg = dest.service.config
        fwd = _FWD_OF[dest.config.method]
        daddr = dest.config.daddr.packed
        timeout = min(0xFFFFFFFF, max(0, -int(-left // 1)))
        if flags & F_TEMPLATE:
            if key[0] == 0:    # a service group's template: IPPROTO_IP, the mark in fwmark (as IPVS)
                proto, vaddr, vport = 0, bytes(4), 0
            else:              # the service's own port: the receiver derives the key from its config
                proto, vaddr, vport = key[0], key[2].to_bytes(4, "big"), cfg.vport
            return ConnRecord(proto, fwd, TcpState.NONE, key[1].to_bytes(4, "big"), 0, vaddr, vport, daddr,
                              dest.config.dport, cfg.fwmark, timeout, delete, template=True)
        cport, vport = _PORTS.unpack_from(key, 8)
        udp = bool(flags & F_UDP)
        return ConnRecord(IPPROTO_UDP if udp else IPPROTO_TCP, fwd, UDP_STATE_NORMAL if udp else state,
                          key[0:4], cport, key[4:8], vport, daddr, dest.config.dport or vport, cfg.fwmark,
                          timeout, delete)

    # -- applying --------------------------------------------------------------------------
    @staticmethod
    def _same_dest(dest: Dest, daddr: bytes, dport: int, vport: int) -> bool:
        return dest.config.daddr.packed == daddr and (dest.config.dport or vport) == dport

    @staticmethod
    def _sync_dest(svc: Service, rec: ConnRecord, vport: int) -> Dest | None:
        """The dest of ``svc`` the record names, if it has the record's forwarding method: an
        exact daddr:dport, else a dest of port 0 (the packet's port) when dport is ``vport``."""
        found = None
        for d in svc.dests:
            if d.config.daddr.packed == rec.daddr and d.config.dport == rec.dport:
                found = d
                break
        else:
            for d in svc.dests:
                if d.config.daddr.packed == rec.daddr and d.config.dport == 0 and rec.dport == vport:
                    found = d
                    break
        if found is None or _FWD_OF[found.config.method] != rec.fwd:
            return None
        return found

    def _apply_conn(self, rec: ConnRecord, now: float) -> int:
        """1 applied, 0 nothing to do, -1 skipped."""
        t = self.table
        proto = rec.proto
        if proto == IPPROTO_TCP:
            if not 0 <= rec.state < UDP_STATE:
                return -1
            state = rec.state
        elif proto == IPPROTO_UDP:
            state = UDP_STATE
        else:
            return -1
        key = rec.caddr + rec.vaddr + _PORTS.pack(rec.cport, rec.vport)
        slot = t.in_tab[proto].get(key)
        if rec.delete:
            if slot is None:
                return 0
            if not self._same_dest(t.dest(slot), rec.daddr, rec.dport, rec.vport):
                return -1
            self._unbind(slot, CloseReason.SYNC)
            return 1
        vkey = key[4:8] + key[10:12]
        svc = self._find_service(proto, vkey)
        dest = self._sync_dest(svc, rec, rec.vport) if svc is not None and not svc.config.ops else None
        if svc is None or dest is None:
            return -1
        if slot is not None and t.dest(slot) is not dest:
            self._unbind(slot, CloseReason.SYNC)    # the peer's connection for this flow wins
            slot = None
        new = slot is None
        if slot is None:
            if not self._make_room():
                return -1
            slot = self._bind_synced(proto, key, vkey, dest, state, now)
        else:
            self._set_state(slot, state, now)
        self._sync_expiry(slot, rec.timeout, now, new)
        if svc.config.persistent is not None and slot not in t.control:
            caddr, vaddr, cport, vport = _KEY.unpack(key)
            tslot = t.templates.get(_template_key(svc.config, proto, caddr, vaddr, vport))
            if tslot is not None and t.dest(tslot) is dest:
                t.control[slot] = tslot
                self._tmpl[tslot][1] += 1
        self._sync_stamp(slot, now)
        return 1

    def _apply_template(self, rec: ConnRecord, now: float) -> int:
        t = self.table
        if rec.proto == 0:
            svc = self.services.get((Proto.FWM, ipaddress.IPv4Address(0), rec.fwmark))
        elif rec.proto in (IPPROTO_TCP, IPPROTO_UDP):
            svc = self._find_service(rec.proto, rec.vaddr + _U16.pack(rec.vport))
        else:
            svc = None
        if svc is None or svc.config.persistent is None:
            return 0 if rec.delete else -1
        cfg = svc.config
        assert cfg.persistent is not None
        caddr, vaddr = int.from_bytes(rec.caddr, "big"), int.from_bytes(rec.vaddr, "big")
        tkey = _template_key(cfg, rec.proto, caddr, vaddr, rec.vport)
        tslot = t.templates.get(tkey)
        if rec.delete:
            if tslot is None:
                return 0
            if not self._same_dest(t.dest(tslot), rec.daddr, rec.dport, 0):
                return -1
            self._kill_template(tslot)   # freed now, or with the last connection it controls
            return 1
        dest = self._sync_dest(svc, rec, 0)
        if dest is None:
            return -1
        if tslot is not None and t.dest(tslot) is not dest:
            self._kill_template(tslot)
            tslot = None
        new = tslot is None
        if tslot is None:
            if not self._make_room():
                return -1
            if rec.proto == 0:     # a group's template: plan it as for its first member entry
                member, maddr, mport = cfg.entries()[0]
                proto, vkey = int(member), maddr.packed + _U16.pack(mport)
            else:
                proto, vkey = rec.proto, rec.vaddr + _U16.pack(rec.vport)
            tslot = t.alloc(proto, TcpState.NONE, F_TEMPLATE | F_SYNC, now)
            t.key[tslot] = tkey
            t.iplan[tslot] = self._in_plan(dest, vkey)
            t.templates[tkey] = tslot
            self._tmpl[tslot] = [cfg.persistent, 0]
            dest.persistconns += 1
            t.schedule(tslot, now + cfg.persistent)
        self._sync_expiry(tslot, rec.timeout, now, new)
        self._sync_stamp(tslot, now)
        return 1

    def _sync_expiry(self, slot: int, left: int, now: float, new: bool) -> None:
        """Make ``slot`` expire ``left`` seconds from ``now`` (at most its full timeout here),
        by dating its last packet back; an existing slot's deadline is only ever moved later."""
        t = self.table
        full = self._tmpl[slot][0] if t.flags[slot] & F_TEMPLATE else self.timeouts[t.state[slot]]
        stamp = max(0, t.ticks(now) - int(max(0.0, full - left) * TICKS_PER_SECOND))
        if new or stamp > t.last[slot]:
            t.last[slot] = stamp
        t.schedule(slot, t.seen(slot) + full)

    def _bind_synced(self, proto: int, key: bytes, vkey: bytes, dest: Dest, state: int, now: float) -> int:
        """``_bind`` for a connection a peer reported, in ``state``.  Not counted as a new
        connection of the dest (its statistics and passive-health SYNs are the peer's)."""
        t = self.table
        iplan = self._in_plan(dest, vkey)
        nat = iplan[xmit.P_KIND] == xmit.KIND_NAT
        active = proto == IPPROTO_TCP and state == TcpState.ESTABLISHED
        flags = F_SYNC | (F_NAT if nat else 0) | (0 if active else F_INACTIVE)
        slot = t.alloc(proto, state, flags, now)
        t.key[slot] = key
        t.in_tab[proto][key] = slot
        if nat:
            # Replies go to the slow path (egress -1) and are dropped there as sync_unlearned
            # until the client's first packet shows the way back; a private copy of the in plan
            # with egress -1 makes that packet take the slow path too (_forward_in learns).
            t.iplan[slot] = self._unlearned_in_plan(dest, vkey)
            t.oplan[slot] = self._out_plan(dest, vkey, -1, xmit.NO_L2)
            t.out_tab[proto][iplan[xmit.P_OKA] + key[0:4] + iplan[xmit.P_OKP] + key[8:10]] = slot
        else:
            t.iplan[slot] = iplan
        if active:
            dest.activeconns += 1
        else:
            dest.inactconns += 1
        self._update_overload(dest)
        dest.service.scheduler.conn_changed(dest)
        t.schedule(slot, now + self.timeouts[state])
        if state in _EVICT_ON_ENTRY:
            t.mark_evictable(slot)
        if self._flow_log is not None:
            self._flow_log.append((OPEN, key, proto, dest, now, True))
        return slot

    def _unlearned_in_plan(self, dest: Dest, vkey: bytes) -> list[Any]:
        """The in plan of a synced NAT connection that has not learned its return path: the
        dest's plan with egress -1 (shared by such connections, never patched by set_neighbor)."""
        plan = self._unlearned_plans.get((dest.sid, vkey))
        if plan is None or plan[xmit.P_DEST] is not dest:
            plan = list(self._in_plan(dest, vkey))
            plan[xmit.P_EG] = -1
            self._unlearned_plans[(dest.sid, vkey)] = plan
        return plan

    def _learn_return_path(self, slot: int, ifin: int, macs: bytes) -> None:
        """A synced NAT connection's client frames arrive on ``ifin`` with ``macs`` (their
        destination | source MAC): replies go back that way, as ``_bind`` sets it up."""
        t = self.table
        dest: Dest = t.dest(slot)
        key = t.key[slot]
        vkey = key[4:8] + key[10:12]
        t.oplan[slot] = self._out_plan(dest, vkey, ifin, macs)
        t.iplan[slot] = self._in_plan(dest, vkey)

    def _learn_from_neighbor(self, slot: int) -> bool:
        """Learn a synced connection's return path from a next hop known for its client
        address, if there is one."""
        nb = self.neighbors.get(self.table.key[slot][0:4])
        if nb is None:
            return False
        egress, dst_mac, src_mac = nb
        self._learn_return_path(slot, egress, src_mac + dst_mac)   # as a client frame would show it
        return True

    # ======================================================================================
    # Flow log (ulvs.core.flows; the shell is ulvs.runtime.flowlog)
    # ======================================================================================
    # While it is on, the table keeps per-slot packets and bytes both ways, the first packet's
    # ``now`` and whether a FIN or RST was seen; _bind/_bind_synced capture an open record and
    # _unbind a close record (with its counters: the slot is reused afterwards), as sync
    # captures its changes.  The fast path counts behind one local boolean per packet; the slow
    # path (_xmit, _new_flow, ICMP errors) counts too.  Persistence templates are not flows.

    def enable_flow_log(self) -> None:
        """Start counting per connection and capturing opens and closes for ``drain_flows``.
        Connections already open count from now on (their start is their last packet)."""
        if self._flow_log is not None:
            return
        t = self.table
        t.enable_flow_counters()
        assert t.fstart is not None
        for slot in t.slots():
            t.fstart[slot] = t.seen(slot)
        self._flow_log = []
        self._count_flows = True

    def disable_flow_log(self) -> None:
        """Stop; records not drained yet are forgotten and the counters freed."""
        self._flow_log = None
        self._count_flows = False
        self.table.disable_flow_counters()

    @property
    def flow_log_enabled(self) -> bool:
        return self._flow_log is not None

    def drain_flows(self) -> list[FlowRecord]:
        """The open and close records captured since the last drain, in order (decode them
        with ``ulvs.core.flows.flow_event``)."""
        log = self._flow_log
        if not log:
            return []
        self._flow_log = []
        return log

    def open_flows(self) -> list[FlowRecord]:
        """A close record, reason SHUTDOWN, for every connection still in the table (which
        keeps them): what the daemon writes when it stops."""
        if self._flow_log is None:
            return []
        t = self.table
        return [self._close_record(slot, CloseReason.SHUTDOWN) for slot in t.slots()
                if not t.flags[slot] & F_TEMPLATE]

    def _close_record(self, slot: int, why: CloseReason) -> FlowRecord:
        t = self.table
        fpkts, fbytes, fstart, fclose = t.fpkts, t.fbytes, t.fstart, t.fclose
        assert fpkts is not None and fbytes is not None and fstart is not None and fclose is not None
        dest: Dest = t.dest(slot)
        if why == CloseReason.EXPIRED:
            closed = fclose[slot]
            if closed == CLOSED_BY_RST:
                why = CloseReason.RST
            elif closed == CLOSED_BY_FIN:
                why = CloseReason.FIN
            elif dest.removed:
                why = CloseReason.DEST_REMOVED
        k = slot * 2
        return (CLOSE, t.key[slot], t.proto(slot), dest, fstart[slot], t.seen(slot), fpkts[k], fbytes[k],
                fpkts[k + 1], fbytes[k + 1], t.state[slot], int(why), bool(t.flags[slot] & F_SYNC))

    def _count_flow(self, slot: int, si: int, length: int) -> None:
        """One forwarded packet of ``length`` (IP total length) in the direction of stats row
        ``si`` (in plans have even rows, out plans odd)."""
        t = self.table
        assert t.fpkts is not None and t.fbytes is not None
        k = slot + slot + (si & 1)
        t.fpkts[k] += 1
        t.fbytes[k] += length

    def _mark_closing(self, slot: int, tcp_flags: int) -> None:
        """A FIN or RST of the connection: the reason it will close, unless a RST follows a FIN."""
        fclose = self.table.fclose
        assert fclose is not None
        if tcp_flags & TH_RST:
            fclose[slot] = CLOSED_BY_RST
        elif not fclose[slot]:
            fclose[slot] = CLOSED_BY_FIN

    # ======================================================================================
    # Views
    # ======================================================================================
    def conns(self, now: float) -> Iterator[ConnInfo]:
        t = self.table
        for slot in t.slots():
            if t.flags[slot] & F_TEMPLATE:
                yield self._template_info(slot, now)
                continue
            key: bytes = t.key[slot]
            dest: Dest = t.dest(slot)
            cport, vport = _PORTS.unpack_from(key, 8)
            st = t.state[slot]
            yield ConnInfo(
                proto=Proto(t.proto(slot)),
                caddr=ipaddress.IPv4Address(key[0:4]), cport=cport,
                vaddr=ipaddress.IPv4Address(key[4:8]), vport=vport,
                daddr=dest.config.daddr, dport=dest.config.dport or vport,
                state=STATE_NAMES[st],
                expires=max(0.0, t.seen(slot) + self.timeouts[st] - now),
                method=dest.config.method,
            )

    def _template_info(self, slot: int, now: float) -> ConnInfo:
        t = self.table
        tkey = t.key[slot]
        dest: Dest = t.dest(slot)
        timeout, controls = self._tmpl[slot]
        if tkey[0] == 0:   # service group: IPVS lists the mark in the vaddr field
            proto, vaddr, vport = Proto.FWM, ipaddress.IPv4Address(tkey[2]), 0
        else:
            proto, vaddr, vport = Proto(tkey[0]), ipaddress.IPv4Address(tkey[2]), tkey[3]
        expires = timeout if controls else max(0.0, t.seen(slot) + timeout - now)
        return ConnInfo(proto=proto, caddr=ipaddress.IPv4Address(tkey[1]), cport=0, vaddr=vaddr, vport=vport,
                        daddr=dest.config.daddr, dport=dest.config.dport, state="NONE",
                        expires=expires, method=dest.config.method, template=True)

    def dest_counters(self, dest: Dest) -> Counters:
        return self.stats.row(dest.sid)

    def service_counters(self, svc: Service) -> Counters:
        total = Counters()
        for d in svc.dests:
            total = total + self.stats.row(d.sid)
        return total

    def drop_counts(self) -> dict[str, int]:
        return self.stats.drop_counts()

    def conn_count(self) -> int:
        return self.table.count

    def state_counts(self) -> dict[str, int]:
        # The live slots' states gathered in C (compress keeps a slot whose key is set), then
        # counted per state: ~50 ms at 1,000,000 entries against ~270 ms for a Python loop; the
        # status (and every metrics scrape) runs it on the dataplane's loop.
        t = self.table
        live = bytes(compress(t.state, t.key))
        return {STATE_NAMES[i]: c for i in range(NUM_STATES) if (c := live.count(i))}

    # ======================================================================================
    # Packet path
    # ======================================================================================
    def process_batch(self, bufs: Any, offs: Any, lens: Any, ifins: Any, count: int, now: float,
                      partial: Any = None) -> None:
        """Decide frames 0..count-1; frame j is bufs[j][offs[j]:offs[j]+lens[j]], received on
        interface ifins[j].  Results: ``verdicts[j]``, ``egress[j]``, ``reasons[j]`` (drops);
        frames the core originates (ICMP errors) are appended to ``emitted``.

        ``partial[j]`` true: frame j's TCP/UDP checksum field holds a CHECKSUM_PARTIAL seed
        (virtio_net_hdr NEEDS_CSUM), which is moved by the address delta only."""
        if count > self.batch_max:
            self.batch_max = count
            self.verdicts = bytearray(count)
            self.egress = array("l", [0]) * count
            self.reasons = bytearray(count)
        if partial is None:
            partial = _NO_PARTIAL if count <= len(_NO_PARTIAL) else bytes(count)
        self._partial = partial
        _fast_process_batch(self, bufs, offs, lens, ifins, count, now, partial)

    def process(self, frame: bytearray, ifin: int, now: float) -> tuple[Verdict, int, DropReason | None]:
        """Run one frame through the batch path; returns (verdict, egress, drop reason)."""
        self.process_batch([frame], [0], [len(frame)], [ifin], 1, now)
        v = Verdict(self.verdicts[0])
        return v, self.egress[0], DropReason(self.reasons[0]) if v == Verdict.DROP else None

    # ======================================================================================
    # Slow path
    # ======================================================================================
    def _drop(self, j: int, reason: DropReason) -> None:
        self.stats.drops[reason] += 1
        self.verdicts[j] = _DROP
        self.reasons[j] = reason

    def _slow(self, j: int, buf: Any, off: int, n: int, ifin: int, now: float) -> None:
        """Decide one frame the fast path could not; writes verdict j."""
        self._ifin = ifin
        try:
            f = parse_frame(buf, off, n)
        except Malformed as e:
            self._drop(j, _REASON_BY_LABEL[e.reason])
            return
        if f.ethertype != ETH_P_IP:
            self.verdicts[j] = _PASS
            return
        if f.is_fragment:
            if f.daddr in self.vips or f.saddr in self.masq_addrs:
                self._drop(j, DropReason.FRAGMENT)
            else:
                self.verdicts[j] = _PASS
            return
        if f.proto == IPPROTO_TCP or f.proto == IPPROTO_UDP:
            self._slow_l4(j, buf, f, ifin, now)
        elif f.proto == IPPROTO_ICMP:
            self._slow_icmp(j, buf, f, ifin, now)
        else:
            self.verdicts[j] = _PASS

    def _slow_l4(self, j: int, buf: Any, f: Frame, ifin: int, now: float) -> None:
        t = self.table
        key = f.saddr + f.daddr + _PORTS.pack(f.sport, f.dport)
        slot = t.tabs[(f.proto, 0)].get(key)
        if slot is not None:
            if f.proto == IPPROTO_TCP and is_pure_syn(f.tcp_flags) and self._syn_restarts(slot):
                self._unbind(slot, CloseReason.REUSED)
            else:
                self._forward_in(j, buf, f, slot, now)
                return
        else:
            slot = t.tabs[(f.proto, 1)].get(key)
            if slot is not None:
                self._forward_out(j, buf, f, slot, now)
                return
        svc = self._find_service(f.proto, f.daddr + _U16.pack(f.dport))
        if svc is None:
            if f.saddr + _U16.pack(f.sport) in self._masq_ports and f.daddr not in self.local_addrs:
                self._drop(j, DropReason.NO_CONN)   # a NAT reply without a connection
            else:
                self.verdicts[j] = _PASS
            return
        self._new_conn(j, buf, f, svc, ifin, now)

    def _syn_restarts(self, slot: int) -> bool:
        """Whether a new SYN on TCP connection ``slot`` starts a new connection (scheduled afresh)
        instead of following it.  conn_reuse_mode: the entry is closed (TIME_WAIT, CLOSE) and no
        persistence template controls it.  ulvs: or the entry is embryonic (SYN_RECV) and its dest
        was removed -- the dest never completed the handshake (an ejected dest left the SYN
        unanswered, or a failed one went away), so the client's retransmitted SYN, or its next
        connection from the same port, goes to a live dest instead of being dropped as
        dest_gone until the entry times out."""
        t = self.table
        st = t.state[slot]
        if st in _REUSABLE and slot not in t.control:
            return True
        return st == TcpState.SYN_RECV and bool(t.dest(slot).removed)

    def _new_conn(self, j: int, buf: Any, f: Frame, svc: Service, ifin: int, now: float) -> None:
        if f.proto == IPPROTO_TCP and not is_pure_syn(f.tcp_flags):
            self._drop(j, DropReason.NO_CONN)
            return
        key = f.saddr + f.daddr + _PORTS.pack(f.sport, f.dport)
        slot = self._schedule_and_bind(j, buf, f.off, f.proto, key, f.daddr + _U16.pack(f.dport), svc,
                                       f.ttl, ifin, now)
        if slot >= 0:
            nat = bool(self.table.flags[slot] & F_NAT)
            self._xmit(j, buf, f, slot, self.table.iplan[slot], nat, now)
            if svc.config.ops and not nat:
                self._unbind(slot, CloseReason.OPS)

    def _schedule_and_bind(self, j: int, buf: Any, off: int, proto: int, key: bytes, vkey: bytes,
                           svc: Service, ttl: int, ifin: int, now: float) -> int:
        """Pick a dest for a new flow and create its connection; -1 when the frame was dropped."""
        caddr, vaddr, cport, vport = _KEY.unpack(key)
        cfg = svc.config
        tslot = -1
        svc.scheduler.now = now
        if cfg.persistent is None:
            dest = svc.scheduler.schedule(caddr, cport, vaddr, vport)
        else:
            dest, tslot = self._persist(svc, proto, caddr, cport, vaddr, vport, vkey, now)
        if dest is None:
            self._drop(j, DropReason.NO_DEST)
            return -1
        if self.table.count >= self.table.limit and not self._make_room():
            self._drop(j, DropReason.CONN_TABLE_FULL)
            return -1
        slot = self._bind(proto, key, vkey, dest, ifin, bytes(buf[off:off + 12]), now, cfg.ops)
        if tslot >= 0 and self.table.live(tslot):
            self.table.control[slot] = tslot
            self._tmpl[tslot][1] += 1
            self.table.last[tslot] = self.table.ticks(now)   # restart the template's timer
        return slot

    def _make_room(self) -> bool:
        """True when the table can take one more entry (evicting an embryonic or closed one)."""
        t = self.table
        if not t.full:
            return True
        victim = t.pop_evictable()
        if victim < 0:
            return False
        self._unbind(victim, CloseReason.EVICTED)
        return True

    # -- persistence (ip_vs_sched_persist) ------------------------------------------------------
    def _persist(self, svc: Service, proto: int, caddr: int, cport: int, vaddr: int, vport: int,
                 vkey: bytes, now: float) -> tuple[Dest | None, int]:
        """The dest of the client network's template (keyed by ``_template_key``), scheduling
        and creating one if needed."""
        cfg = svc.config
        tkey = _template_key(cfg, proto, caddr, vaddr, vport)
        t = self.table
        tslot = t.templates.get(tkey)
        if tslot is not None:
            dest: Dest = t.dest(tslot)
            if not self._template_valid(dest):
                self._kill_template(tslot)
            else:
                return dest, tslot
        picked = svc.scheduler.schedule(caddr, cport, vaddr, vport)
        if picked is None or not self._make_room():
            return picked, -1
        assert cfg.persistent is not None
        tslot = t.alloc(proto, TcpState.NONE, F_TEMPLATE, now)
        t.key[tslot] = tkey
        t.iplan[tslot] = self._in_plan(picked, vkey)
        t.templates[tkey] = tslot
        self._tmpl[tslot] = [cfg.persistent, 0]
        picked.persistconns += 1
        t.schedule(tslot, now + cfg.persistent)
        if self._sync_log is not None:
            self._sync_log.append((tslot, _EV_NEW))
        return picked, tslot

    def _template_valid(self, dest: Dest) -> bool:
        """A template still binds its client network unless its dest is gone or quiescent
        (with expire_quiescent_template)."""
        return not dest.removed and not (dest.weight == 0 and self.expire_quiescent_template)

    def _kill_template(self, tslot: int) -> None:
        """Unlink an invalid template; it is freed now or with the last connection it controls."""
        t = self.table
        t.templates.pop(t.key[tslot], None)
        t.flags[tslot] |= F_DEAD
        if not self._tmpl[tslot][1]:
            self._unbind(tslot)

    def _new_flow(self, j: int, buf: Any, off: int, key: bytes, proto: int, ttl: int, ipc: int,
                  l4c: int, ifin: int, now: float) -> None:
        """A plain untagged IPv4 pure SYN or UDP datagram that missed the table (the fast path
        has checked its headers).  New flows to a service are bound here without a full parse;
        anything else goes to the general slow path."""
        vkey = key[4:8] + key[10:12]
        svc = self._svc_lookup.get((proto, vkey)) or self._find_service(proto, vkey)
        if svc is None or ttl <= 1:
            self._slow(j, buf, off, self._len, ifin, now)
            return
        slot = self._schedule_and_bind(j, buf, off, proto, key, vkey, svc, ttl, ifin, now)
        if slot < 0:
            return
        plan = self.table.iplan[slot]
        if plan[xmit.P_EG] < 0:
            self.unresolved.add(plan[xmit.P_DEST].config.daddr.packed)
            self._drop(j, DropReason.NEIGH_UNRESOLVED)
            return
        xmit.rewrite_plain(buf, off, proto, plan, ttl, ipc, l4c, bool(self._partial[j]))
        si = plan[xmit.P_SI]
        self.stats.pkts[si] += 1
        self.stats.bytes[si] += self._tl
        if self._count_flows:
            self._count_flow(slot, si, self._tl)
        self.verdicts[j] = _FORWARD
        self.egress[j] = plan[xmit.P_EG]
        if svc.config.ops and plan[xmit.P_KIND] != xmit.KIND_NAT:
            self._unbind(slot, CloseReason.OPS)   # one-packet scheduling without replies to translate

    def _tcp_change(self, j: int, buf: Any, off: int, slot: int, plan: list[Any], flags: int, ttl: int,
                    ipc: int, l4c: int, tl: int, now: float) -> None:
        """A TCP segment of a known connection on a plain frame (untagged IPv4 without options,
        headers checked, next hop known, TTL left) that may change the connection's state: the
        handshake, FIN, RST, anything before ESTABLISHED.  The fast path hands it here with the
        fields it has read; this does what ``_forward_in`` / ``_forward_out`` do, without
        parsing the frame again.  What needs the frame (a pure SYN to the VIP, which may start a
        new connection; a removed dest; a synced connection's unlearned return path) goes to the
        slow path before anything has changed."""
        t = self.table
        out = plan[xmit.P_SI] & 1
        nat = t.flags[slot] & F_NAT
        if ((not out and flags & 0x17 == TH_SYN) or t.dest(slot).removed
                or (nat and not out and t.oplan[slot][xmit.P_EG] < 0)):
            self._slow(j, buf, off, self._len, self._ifin, now)
            return
        if self._count_flows and flags & (TH_FIN | TH_RST):
            self._mark_closing(slot, flags)
        state = t.state[slot]
        if out:
            if state == _SYN_RECV and not t.flags[slot] & F_ANSWERED:
                self._count_answer(slot, flags)
            self._set_state(slot, next_state(_D_OUT, flags, state), now)
        else:
            self._set_state(slot, next_state(_D_IN if nat else _D_IN_ONLY, flags, state), now)
        xmit.rewrite_plain(buf, off, IPPROTO_TCP, plan, ttl, ipc, l4c, bool(self._partial[j]))
        t.last[slot] = t.ticks(now)
        si = plan[xmit.P_SI]
        self.stats.pkts[si] += 1
        self.stats.bytes[si] += tl
        if self._count_flows:
            self._count_flow(slot, si, tl)
        self.verdicts[j] = _FORWARD
        self.egress[j] = plan[xmit.P_EG]

    def _forward_in(self, j: int, buf: Any, f: Frame, slot: int, now: float) -> None:
        t = self.table
        dest: Dest = t.dest(slot)
        if dest.removed:
            self._nodest(j, slot)
            return
        nat = bool(t.flags[slot] & F_NAT)
        if nat and t.oplan[slot][xmit.P_EG] < 0:
            # A synced connection's first packet here: its frames show the way back (apply_sync).
            self._learn_return_path(slot, self._ifin, bytes(buf[f.off:f.off + 12]))
        if f.proto == IPPROTO_TCP:
            if self._count_flows and f.tcp_flags & (TH_FIN | TH_RST):
                self._mark_closing(slot, f.tcp_flags)
            direction = Direction.INPUT if nat else Direction.INPUT_ONLY
            self._set_state(slot, next_state(direction, f.tcp_flags, t.state[slot]), now)
        self._xmit(j, buf, f, slot, t.iplan[slot], nat, now)

    def _forward_out(self, j: int, buf: Any, f: Frame, slot: int, now: float) -> None:
        t = self.table
        if t.dest(slot).removed:
            self._nodest(j, slot)
            return
        if t.oplan[slot][xmit.P_EG] < 0 and not self._learn_from_neighbor(slot):
            # Synced; no packet from the client seen yet.  Ask for the next hop towards the
            # client (the daemon routes and resolves it, as IPVS routes a NAT reply): the
            # server's retransmission then goes through.
            self.unresolved.add(t.key[slot][0:4])
            self._drop(j, DropReason.SYNC_UNLEARNED)
            return
        if f.proto == IPPROTO_TCP:
            if self._count_flows and f.tcp_flags & (TH_FIN | TH_RST):
                self._mark_closing(slot, f.tcp_flags)
            if t.state[slot] == TcpState.SYN_RECV and not t.flags[slot] & F_ANSWERED:
                self._count_answer(slot, f.tcp_flags)
            self._set_state(slot, next_state(Direction.OUTPUT, f.tcp_flags, t.state[slot]), now)
        self._xmit(j, buf, f, slot, t.oplan[slot], True, now)

    def _count_answer(self, slot: int, flags: int) -> None:
        """Passive health: the dest's first answer to a connection's SYN, a RST (refused) or a
        SYN-ACK (accepted), counted once per connection.  Every segment of a connection not yet
        ESTABLISHED comes through ``_tcp_change`` or the slow path, so the fast path counts
        nothing."""
        t = self.table
        sid = t.dest(slot).sid
        if flags & TH_RST:
            self.stats.rsts[sid] += 1
        elif flags & (TH_SYN | TH_ACK) == TH_SYN | TH_ACK:
            self.stats.synacks[sid] += 1
        else:
            return
        t.flags[slot] |= F_ANSWERED

    def _xmit(self, j: int, buf: Any, f: Frame, slot: int, plan: list[Any], nat: bool, now: float) -> None:
        if plan[xmit.P_EG] < 0:
            self.unresolved.add(self.table.dest(slot).config.daddr.packed)
            self._drop(j, DropReason.NEIGH_UNRESOLVED)
            return
        if nat and f.ttl <= 1:
            self._time_exceeded(j, buf, f, self._ifin, now)
            return
        xmit.rewrite(buf, f.off, f.l3, f.l4, f.proto, plan, bool(self._partial[j]))
        self.table.last[slot] = self.table.ticks(now)
        si = plan[xmit.P_SI]
        self.stats.pkts[si] += 1
        self.stats.bytes[si] += f.tot_len
        if self._count_flows:
            self._count_flow(slot, si, f.tot_len)
        self.verdicts[j] = _FORWARD
        self.egress[j] = plan[xmit.P_EG]

    def _nodest(self, j: int, slot: int) -> None:
        """Packet of a connection whose dest was removed (sysctl expire_nodest_conn)."""
        if self.expire_nodest_conn:
            self._unbind(slot, CloseReason.DEST_REMOVED)
        self._drop(j, DropReason.DEST_GONE)

    # -- ICMP --------------------------------------------------------------------------------
    def _slow_icmp(self, j: int, buf: Any, f: Frame, ifin: int, now: float) -> None:
        """ICMP errors about a connection follow it (ip_vs_in_icmp / ip_vs_out_icmp)."""
        inner = f.inner
        if inner is None or inner.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            self.verdicts[j] = _PASS
            return
        if not verify(buf, f.l4, f.l4_end):
            self._drop(j, DropReason.BAD_ICMP_CHECKSUM)
            return
        t = self.table
        # The quoted packet travelled the other way: reverse it to get the connection's key.
        key = inner.daddr + inner.saddr + _PORTS.pack(inner.dport, inner.sport)
        slot = t.tabs[(inner.proto, 0)].get(key)
        outbound = False
        if slot is None:
            slot = t.tabs[(inner.proto, 1)].get(key)
            outbound = True
        if slot is None:
            if f.daddr in self.vips:
                self._drop(j, DropReason.NO_CONN)
            else:
                self.verdicts[j] = _PASS
            return
        if t.dest(slot).removed:
            self._nodest(j, slot)
            return
        nat = bool(t.flags[slot] & F_NAT)
        if nat and t.oplan[slot][xmit.P_EG] < 0:   # synced, return path not learned yet
            if not outbound:
                self._learn_return_path(slot, ifin, bytes(buf[f.off:f.off + 12]))
            elif not self._learn_from_neighbor(slot):
                self.unresolved.add(t.key[slot][0:4])    # as in _forward_out
                self._drop(j, DropReason.SYNC_UNLEARNED)
                return
        plan = t.oplan[slot] if outbound else t.iplan[slot]
        if plan[xmit.P_EG] < 0:
            self.unresolved.add(t.dest(slot).config.daddr.packed)
            self._drop(j, DropReason.NEIGH_UNRESOLVED)
            return
        if nat:
            if f.ttl <= 1:
                # No ICMP error about an ICMP error (RFC 1122 3.2.2, RFC 1812 4.3.2.7).
                self._drop(j, DropReason.TTL_EXCEEDED)
                return
            self._nat_icmp(buf, f, plan, outbound)
        else:
            buf[f.off:f.off + 12] = plan[xmit.P_L2]
        si = plan[xmit.P_SI]
        self.stats.pkts[si] += 1
        self.stats.bytes[si] += f.tot_len
        if self._count_flows:
            self._count_flow(slot, si, f.tot_len)
        self.verdicts[j] = _FORWARD
        self.egress[j] = plan[xmit.P_EG]

    def _nat_icmp(self, buf: Any, f: Frame, plan: list[Any], outbound: bool) -> None:
        """Rewrite outer and quoted headers of a related ICMP error (ip_vs_nat_icmp)."""
        inner = f.inner
        assert inner is not None
        buf[f.off:f.off + 12] = plan[xmit.P_L2]
        new_addr = plan[xmit.P_A4]
        # Outer header: towards the real server the destination becomes daddr; towards the
        # client the source becomes the VIP (as IPVS does, whoever sent the error).
        outer_field = f.l3 + (12 if outbound else 16)
        buf[outer_field:outer_field + 4] = new_addr
        buf[f.l3 + 8] = f.ttl - 1
        _U16.pack_into(buf, f.l3 + 10, 0)
        _U16.pack_into(buf, f.l3 + 10, checksum(buf, f.l3, f.l3 + f.ihl))
        # Quoted header: it was sent the other way, so the fields to fix are mirrored --
        # towards the real server the quoted *source* was the VIP, towards the client the
        # quoted *destination* was daddr.
        inner_addr = inner.l3 + (16 if outbound else 12)
        inner_port = inner.l4 + (2 if outbound else 0)
        buf[inner_addr:inner_addr + 4] = new_addr
        _U16.pack_into(buf, inner_port, plan[xmit.P_PORT])
        _U16.pack_into(buf, inner.l3 + 10, 0)
        _U16.pack_into(buf, inner.l3 + 10, checksum(buf, inner.l3, inner.l3 + inner.ihl))
        # The quoted transport checksum, when quoted, moves by the same delta as the flow's.
        coff = inner.l4 + (16 if inner.proto == IPPROTO_TCP else 6)
        if coff + 2 <= f.l4_end:
            (c,) = _U16.unpack_from(buf, coff)
            if c or inner.proto == IPPROTO_TCP:
                c = apply_delta(c, plan[xmit.P_DL4])
                _U16.pack_into(buf, coff, c or (0xFFFF if inner.proto == IPPROTO_UDP else 0))
        _U16.pack_into(buf, f.l4 + 2, 0)
        _U16.pack_into(buf, f.l4 + 2, checksum(buf, f.l4, f.l4_end))

    def _time_exceeded(self, j: int, buf: Any, f: Frame, ifin: int, now: float) -> None:
        """TTL would reach 0: drop, and answer ICMP time exceeded back out of the ingress
        interface, from that interface's address (else the address the packet was sent to)."""
        self._drop(j, DropReason.TTL_EXCEEDED)
        if not self._icmp_allowed(now):
            return
        src = self.interfaces.get(ifin, (b"", None))[1] or f.daddr
        quoted = bytes(buf[f.l3:min(f.l4_end, f.l3 + f.ihl + 8)])
        frame = builder.icmp_error_frame(
            smac=bytes(buf[f.off:f.off + 6]), dmac=bytes(buf[f.off + 6:f.off + 12]),
            src=src, dst=f.saddr, itype=ICMP_TIME_EXCEEDED, code=0, quoted_ip=quoted)
        self.emitted.append((frame, ifin))

    def _icmp_allowed(self, now: float) -> bool:
        elapsed = now - self._icmp_stamp
        self._icmp_stamp = now
        self._icmp_tokens = min(self._icmp_rate, self._icmp_tokens + elapsed * self._icmp_rate)
        if self._icmp_tokens >= 1.0:
            self._icmp_tokens -= 1.0
            return True
        return False


def _svc_name(cfg: ServiceConfig) -> str:
    if cfg.proto == Proto.FWM:
        return f"FWM {cfg.fwmark}"
    return f"{cfg.proto.name} {cfg.vaddr}:{cfg.vport}"


def _template_key(cfg: ServiceConfig, proto: int, caddr: int, vaddr: int, vport: int) -> tuple[int, ...]:
    """A persistence template's key, after IPVS: a service group uses <group, caddr & mask>; a
    port-0 service or FTP (port 21) uses <proto, caddr & mask, vaddr> so every port of the VIP
    sticks together; any other service <proto, caddr & mask, vaddr, vport>."""
    masked = caddr & int(cfg.netmask)
    if cfg.proto == Proto.FWM:
        return (0, masked, cfg.fwmark)
    if cfg.vport in (0, 21):
        return (proto, masked, vaddr, 0)
    return (proto, masked, vaddr, vport)


def iter_services(core: Core) -> Iterable[Service]:
    """Services in ipvsadm's default order: protocol, address, port."""
    return sorted(core.services.values(), key=lambda s: (s.config.proto, s.config.vaddr, s.config.vport))

