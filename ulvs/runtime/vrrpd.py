"""The VRRP speaker: the process that runs the VRRPv3 instances of a director.

    python -m ulvs.runtime.vrrpd --config FILE --socket CONTROL_SOCKET [--format FMT]

The daemon starts it (``ulvs.runtime.supervisor``) when its configuration has ``vrrp``
instances, so that a busy dataplane can never delay an advertisement (keepalived's VRRP child,
STYLE rule 12).  It is a thin shell around the pure state machine (``ulvs.vrrp.fsm``, one
``Instance`` per ``vrrp_instance``, ``SyncGroup`` for ``vrrp_sync_group``) and the advert codec
(``ulvs.vrrp.packet``):

* one raw IP socket (protocol 112) per interface, bound to it, joined to 224.0.0.18, sending
  with TTL 255; adverts go to the group, or to each ``unicast_peer`` from ``unicast_src_ip``.
  Received packets are decoded (TTL 255, checksum, the optional HMAC trailer) and handed to the
  instance with that VRID; every refusal is counted by reason;
* one timer armed from the instances' ``next_deadline()``; ``now`` is ``time.monotonic()``;
* what the machine decides it carries out: ``SendAdvert``; ``Transition`` adds the virtual
  addresses on MASTER and removes them on leaving it (netlink, pyroute2), runs the
  ``notify_*`` script (an argument vector, never a shell, in a session of its own, killed after
  ``SCRIPT_TIMEOUT``) and reports the new state to the daemon; ``SendGarp`` sends one
  gratuitous ARP request for each virtual address on its interface (AF_PACKET);
* ``track_interface``: an interface that goes down (or away) puts the instance in FAULT, and
  back up again in BACKUP (polled every ``LINK_POLL`` seconds from sysfs);
* it reports every instance's state and counters to the daemon (control request ``vrrp``) on
  each transition and every ``REPORT_INTERVAL``; the daemon's reply says whether connection
  sync has finished its bulk resync, and until it has (or ``--sync-hold`` seconds have passed)
  no instance preempts a master it hears (``Instance.hold_preempt``), so a director that
  (re)joins does not take over before it holds the connections;
* SIGTERM (or SIGINT, or the daemon going away) ends it gracefully: a master sends a
  priority-0 advert so the backup takes over after its skew time, and every virtual address it
  added is removed.

Logs go to stderr (the daemon's log) as ``ulvs-vrrp[PID]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulvs.config.schema import Config, VirtualAddress, VrrpInstance
from ulvs.health.monitor import ControlClient
from ulvs.runtime import child
from ulvs.vrrp import fsm, packet

log = logging.getLogger("ulvs.vrrp")

VRRP_PROTO = 112
VRRP_GROUP = "224.0.0.18"
SCRIPT_TIMEOUT = 10.0
REPORT_INTERVAL = 1.0
LINK_POLL = 0.2
SO_BINDTODEVICE = 25
ETH_P_ARP = 0x0806
_MREQN = struct.Struct("4s4si")
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


# -- the interfaces ---------------------------------------------------------------------------------

def _sysfs(ifname: str, attr: str) -> str:
    return Path(f"/sys/class/net/{ifname}/{attr}").read_text().strip()


def link_up(ifname: str) -> bool:
    """An interface that exists and is up with a carrier (track_interface)."""
    try:
        return _sysfs(ifname, "operstate") in ("up", "unknown") and _sysfs(ifname, "carrier") == "1"
    except OSError:
        return False


def primary_address(ifname: str) -> ipaddress.IPv4Address | None:
    """The interface's first (primary) IPv4 address, as the advert's source and tie-breaker."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return None
        for msg in ipr.get_addr(index=idx[0], family=socket.AF_INET):
            if not msg["flags"] & 0x01:          # IFA_F_SECONDARY
                return ipaddress.IPv4Address(msg.get_attr("IFA_ADDRESS"))
    return None


class Link:
    """One interface: the VRRP raw socket and the gratuitous-ARP packet socket."""

    def __init__(self, ifname: str, source: ipaddress.IPv4Address | None) -> None:
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)
        self.mac = bytes.fromhex(_sysfs(ifname, "address").replace(":", ""))
        addr = source or primary_address(ifname)
        if addr is None:
            raise OSError(f"{ifname} has no IPv4 address to send VRRP adverts from")
        self.addr = addr
        # Receive on an unbound socket (a raw socket bound to an address only sees packets to
        # that address, not to the group); send from one bound to ours, the adverts' source.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
        self.arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            mreqn = _MREQN.pack(socket.inet_aton(VRRP_GROUP), self.addr.packed, self.ifindex)
            s = self.sock
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            s.setblocking(False)
            t = self.tx
            t.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            t.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # it never reads
            t.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            t.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            t.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            t.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            t.bind((str(self.addr), 0))
            t.setblocking(False)
            self.arp.bind((ifname, ETH_P_ARP))
        except OSError:
            self.close()
            raise

    def send(self, payload: bytes, dst: str) -> None:
        try:
            self.tx.sendto(payload, (dst, 0))
        except OSError as e:
            log.debug("%s: advert to %s not sent: %s", self.ifname, dst, e)

    def garp(self, addr: ipaddress.IPv4Address) -> None:
        """A gratuitous ARP request for ``addr`` (sender = target = addr), broadcast."""
        frame = (_ETH.pack(b"\xff" * 6, self.mac, ETH_P_ARP)
                 + _ARP.pack(1, 0x0800, 6, 4, 1, self.mac, addr.packed, bytes(6), addr.packed))
        try:
            self.arp.send(frame)
        except OSError as e:
            log.debug("%s: gratuitous ARP for %s not sent: %s", self.ifname, addr, e)

    def close(self) -> None:
        self.sock.close()
        self.tx.close()
        self.arp.close()


# -- the virtual addresses -----------------------------------------------------------------------------

class Addresses:
    """The virtual addresses this speaker added, so that exactly those are removed again."""

    def __init__(self) -> None:
        self.added: set[tuple[str, ipaddress.IPv4Interface]] = set()

    def add(self, dev: str, addr: ipaddress.IPv4Interface) -> None:
        if (dev, addr) in self.added:
            return
        if self._netlink("add", dev, addr):
            self.added.add((dev, addr))

    def remove(self, dev: str, addr: ipaddress.IPv4Interface, *, force: bool = False) -> None:
        """Remove an address we added (or, with ``force``, one left behind by an earlier run)."""
        if (dev, addr) in self.added or force:
            self._netlink("del", dev, addr)
            self.added.discard((dev, addr))

    def remove_all(self) -> None:
        for dev, addr in sorted(self.added, key=str):
            self.remove(dev, addr)

    @staticmethod
    def _netlink(op: str, dev: str, addr: ipaddress.IPv4Interface) -> bool:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=dev)
                if not idx:
                    log.error("virtual address %s: no interface %s", addr, dev)
                    return False
                ipr.addr(op, index=idx[0], address=str(addr.ip), prefixlen=addr.network.prefixlen)
            log.info("%s virtual address %s on %s", "added" if op == "add" else "removed", addr, dev)
            return True
        except NetlinkError as e:
            if op == "add" and e.code == 17:       # EEXIST: already there (not ours to remove)
                return False
            if op == "del" and e.code == 99:       # EADDRNOTAVAIL: already gone
                return True
            log.error("cannot %s virtual address %s on %s: %s", op, addr, dev, e)
            return False


# -- one instance ---------------------------------------------------------------------------------------

@dataclass
class Speaker:
    """One ``vrrp_instance``: its settings, its state machine and its link."""

    cfg: VrrpInstance
    link: Link
    machine: fsm.Instance
    key: bytes | None
    seq: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)   # entries into each state

    @property
    def dests(self) -> list[str]:
        return [str(p) for p in self.cfg.unicast_peers] or [VRRP_GROUP]

    def addresses(self) -> list[tuple[str, ipaddress.IPv4Interface]]:
        return [(_dev(v, self.cfg), v.address) for v in self.cfg.virtual_addresses]

    def advert(self, priority: int) -> None:
        cs = max(1, min(4095, round(self.cfg.advert_int * 100)))
        addrs = tuple(v.address.ip.packed for v in self.cfg.virtual_addresses)
        for dst in self.dests:
            self.seq += 1
            payload = packet.encode(self.cfg.vrid, priority, cs, addrs, self.link.addr.packed,
                                    ipaddress.IPv4Address(dst).packed, key=self.key, seq=self.seq,
                                    pseudo_header=not self.cfg.checksum_as_v2)
            self.link.send(payload, dst)

    def status(self) -> dict[str, Any]:
        m = self.machine
        return {"iname": self.cfg.name, "intf": self.cfg.interface, "vrid": self.cfg.vrid,
                "state": int(m.state), "state_name": m.state.name, "priority": self.cfg.priority,
                "address": str(self.link.addr), "master_adver_int": m.master_adver_int,
                "master_down_interval": m.master_down_interval,
                "virtual_addresses": [str(v.address) for v in self.cfg.virtual_addresses],
                **m.counters, "dropped": dict(self.dropped), "transitions": dict(self.transitions)}


def _dev(v: VirtualAddress, inst: VrrpInstance) -> str:
    return v.dev or inst.interface


def _seq_start() -> int:
    """Sequence numbers of the HMAC trailer start at the wall clock in microseconds, so that a
    restarted speaker's adverts are newer than anything it sent before (anti-replay)."""
    return int(time.time() * 1e6)


# -- the process ------------------------------------------------------------------------------------------

class Vrrpd:
    def __init__(self, config: Config, control: ControlClient, sync_hold: float) -> None:
        self.config = config
        self.control = control
        self.sync_hold = sync_hold
        self.links: dict[str, Link] = {}
        self.speakers: list[Speaker] = []
        self.by_link_vrid: dict[tuple[str, int], Speaker] = {}
        self.addresses = Addresses()
        # pyroute2's synchronous API cannot run inside a running event loop: netlink work goes
        # to one thread of its own, in order.
        self._nl = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vrrp-netlink")
        self.groups: list[fsm.SyncGroup] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._report_due = asyncio.Event()
        self._stop = asyncio.Event()
        self._sync_ready = False
        self._faulted: set[str] = set()

    # setup
    def build(self) -> None:
        for inst in self.config.vrrp:
            link = self.links.get(inst.interface)
            if link is None:
                link = self.links[inst.interface] = Link(inst.interface, inst.unicast_src_ip)
            machine = fsm.Instance(fsm.InstanceSettings.from_config(inst), link.addr.packed)
            key = inst.auth_key.encode() if inst.auth_key else None
            sp = Speaker(inst, link, machine, key, seq=_seq_start())
            self.speakers.append(sp)
            self.by_link_vrid[(inst.interface, inst.vrid)] = sp
        by_name = {sp.cfg.name: sp.machine for sp in self.speakers}
        for g in self.config.vrrp_sync_groups:
            self.groups.append(fsm.SyncGroup([by_name[m] for m in g.members if m in by_name]))

    def clean(self) -> None:
        """Addresses a crashed predecessor left behind: a speaker starts as backup without them."""
        for sp in self.speakers:
            for dev, addr in sp.addresses():
                self.addresses.remove(dev, addr, force=True)

    async def run(self) -> int:
        """Run until told to stop; ``build`` and ``clean`` have run (outside the loop)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for sp in self.speakers:
            if self.sync_hold > 0:
                sp.machine.hold_preempt(now + self.sync_hold)
            self.carry_out(sp, sp.machine.start(now))
        for link in self.links.values():
            loop.add_reader(link.sock.fileno(), self.on_readable, link)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.spawn(self.reporter())
        self.spawn(self.watch_links())
        self.arm()
        log.info("VRRP speaker running: %s", ", ".join(
            f"{sp.cfg.name} (vrid {sp.cfg.vrid} on {sp.cfg.interface}, priority {sp.cfg.priority})"
            for sp in self.speakers))
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        now = time.monotonic()
        for sp in self.speakers:
            self.carry_out(sp, sp.machine.shutdown(now))
        await asyncio.get_running_loop().run_in_executor(self._nl, self.addresses.remove_all)
        self._nl.shutdown(wait=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.report()
        for link in self.links.values():
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(link.sock.fileno())
            link.close()
        for t in list(self.tasks):
            t.cancel()
        log.info("VRRP speaker stopped")

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # receive
    def on_readable(self, link: Link) -> None:
        while True:
            try:
                data = link.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("%s: VRRP socket: %s", link.ifname, e)
                return
            self.on_packet(link, data)

    def on_packet(self, link: Link, data: bytes) -> None:
        # The VRID and the instance's key decide how to decode: peek at the VRID first.
        ihl = (data[0] & 0x0F) * 4 if data else 0
        if len(data) < ihl + 8:
            return
        sp = self.by_link_vrid.get((link.ifname, data[ihl + 1]))
        if sp is None:
            return                       # another virtual router on this LAN
        adv = packet.decode_ip(data, key=sp.key, pseudo_header=None)
        if isinstance(adv, str):
            sp.dropped[adv] = sp.dropped.get(adv, 0) + 1
            return
        if adv.src == link.addr.packed:
            return                       # our own advert (multicast loop is off; unicast to self)
        self.carry_out(sp, sp.machine.advert_received(adv, time.monotonic()))
        self.arm()

    # timers
    def arm(self) -> None:
        deadlines = [d for sp in self.speakers if (d := sp.machine.next_deadline()) is not None]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadlines:
            loop = asyncio.get_running_loop()
            delay = max(0.0, min(deadlines) - time.monotonic())
            self._timer = loop.call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        for sp in self.speakers:
            d = sp.machine.next_deadline()
            if d is not None and d <= now:
                self.carry_out(sp, sp.machine.timer(now))
        self.arm()

    # actions
    def carry_out(self, sp: Speaker, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, fsm.SendAdvert):
                sp.advert(a.priority)
            elif isinstance(a, fsm.SendGarp):
                for dev, addr in sp.addresses():
                    link = self.links.get(dev) or sp.link
                    link.garp(addr.ip)
            elif isinstance(a, fsm.Transition):
                self.transition(sp, a)
        for g in self.groups:
            followers = g.follow(sp.machine, actions, time.monotonic())
            for machine, more in followers:
                other = next(s for s in self.speakers if s.machine is machine)
                self.carry_out(other, more)

    def transition(self, sp: Speaker, t: fsm.Transition) -> None:
        log.info("%s: %s -> %s (%s)", sp.cfg.name, t.old.name, t.new.name, t.reason)
        sp.transitions[t.new.name] = sp.transitions.get(t.new.name, 0) + 1
        if t.new == fsm.State.MASTER:
            for dev, addr in sp.addresses():
                self._nl.submit(self.addresses.add, dev, addr)
        elif t.old == fsm.State.MASTER:
            for dev, addr in sp.addresses():
                self._nl.submit(self.addresses.remove, dev, addr)
        script = {fsm.State.MASTER: sp.cfg.notify_master, fsm.State.BACKUP: sp.cfg.notify_backup,
                  fsm.State.FAULT: sp.cfg.notify_fault}.get(t.new)
        if script:
            self.spawn(run_script(tuple(script), sp.cfg.name))
        self._report_due.set()

    # track_interface
    async def watch_links(self) -> None:
        while True:
            now = time.monotonic()
            for sp in self.speakers:
                tracked = (sp.cfg.interface, *sp.cfg.track_interfaces)
                down = [i for i in tracked if not link_up(i)]
                if down and sp.cfg.name not in self._faulted:
                    self._faulted.add(sp.cfg.name)
                    log.warning("%s: %s down: FAULT", sp.cfg.name, ", ".join(down))
                    self.carry_out(sp, sp.machine.fault(now))
                elif not down and sp.cfg.name in self._faulted:
                    self._faulted.discard(sp.cfg.name)
                    log.info("%s: tracked interfaces up again", sp.cfg.name)
                    self.carry_out(sp, sp.machine.recover(now))
            self.arm()
            await asyncio.sleep(LINK_POLL)

    # reports to the daemon
    async def reporter(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_INTERVAL):
                    await self._report_due.wait()
            self._report_due.clear()
            await self.report()

    async def report(self) -> None:
        reply = await self.control.request({"cmd": "vrrp", "pid": os.getpid(),
                                            "instances": [sp.status() for sp in self.speakers]})
        if reply.get("sync_ready") and not self._sync_ready:
            self._sync_ready = True
            now = time.monotonic()
            for sp in self.speakers:
                sp.machine.hold_preempt(now)
            log.info("connection sync is ready: preemption allowed")
            self.arm()


async def run_script(argv: tuple[str, ...], name: str) -> None:
    """A notify script: an argument vector in a session of its own, killed after SCRIPT_TIMEOUT."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    start_new_session=True)
    except OSError as e:
        log.error("%s: cannot run %s: %s", name, argv[0], e)
        return
    try:
        async with asyncio.timeout(SCRIPT_TIMEOUT):
            code = await proc.wait()
        if code:
            log.warning("%s: %s exited with %d", name, argv[0], code)
    except TimeoutError:
        log.error("%s: %s ran over %g s: killed", name, argv[0], SCRIPT_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def main(argv: list[str] | None = None) -> int:
    from ulvs.config import ConfigError
    from ulvs.runtime.configfile import load

    p = argparse.ArgumentParser(prog="python -m ulvs.runtime.vrrpd",
                                description="ulvs VRRP speaker (started by ulvs run)")
    p.add_argument("--config", type=Path, required=True, metavar="FILE")
    p.add_argument("--socket", type=Path, required=True, metavar="CONTROL_SOCKET")
    p.add_argument("--format", metavar="FMT", help="the configuration's format (default: detected)")
    p.add_argument("--sync-hold", type=float, default=0.0, metavar="S",
                   help="no preemption for S seconds unless connection sync says it is ready")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ulvs-vrrp[%(process)d] %(levelname)s %(message)s")
    if not child.attach_to_parent("VRRP speaker", log):
        return 1
    try:
        config = load(args.config, args.format).config
    except (ConfigError, OSError) as e:
        log.error("%s", e)
        return 2

    vrrpd = Vrrpd(config, ControlClient(args.socket), args.sync_hold)
    try:
        vrrpd.build()
        vrrpd.clean()
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 1

    return child.run(vrrpd.run())


if __name__ == "__main__":
    sys.exit(main())
