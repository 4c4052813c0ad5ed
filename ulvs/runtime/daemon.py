"""``ulvs run``: the director daemon (a thin shell around the core).

It attaches to interfaces: a ring per interface, and the nftables ingress table that hides
ulvs's traffic from the host stack. It loads the configuration, then runs one event loop
(uvloop) that:
* drains the rings: ring blocks go to ``Core.process_batch`` and forwarded frames are sent
  straight out of the ring;
* arms one timer from ``Core.next_deadline()``;
* serves the control socket (newline-delimited JSON, ``ulvs.runtime.control``);
* keeps next hops resolved;
* reacts to SIGTERM/SIGINT (clean shutdown) and SIGHUP (reload by diff).

It owns the effective configuration: the configuration file's requests with the health overlay
the health monitor reports laid over them (``ulvs.config.overlay``); every reload and every
health change applies ``diff_requests(core, wanted)``.  The monitor is a child process of its
own (``ulvs.runtime.supervisor``), started when the configuration has checks, a sorry server or
quorum scripts, sent SIGHUP after each successful reload, restarted when it dies.

Everything it added to the kernel is removed on the way out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulvs.config.overlay import (
    DestHealth,
    OverlayKey,
    ServicePolicy,
    apply_overlay,
    configured_dests,
    health_from_json,
    needs_monitor,
    overlay_to_json,
    policies,
    sorry_from_json,
)
from ulvs.config.schema import Config
from ulvs.core import Core, FwdMethod
from ulvs.io.afpacket import PacketRing, RingConfig, RingError, has_capability
from ulvs.io.base import Port
from ulvs.io.fanout import MAX_LANE_WORKERS
from ulvs.io.tap import TapError, TapPort
from ulvs.packet.layouts import ARP, ETH, ETH_P_ARP
from ulvs.runtime.configfile import DaemonConfig
from ulvs.runtime.kernel import (
    KernelError,
    KernelState,
    TapSteering,
    interception_for,
    ip_forwarding,
    local_addresses,
)
from ulvs.runtime.neigh import Egress, Resolver
from ulvs.runtime.peercred import ControlGroup, peer_allowed, peer_of, refusal, resolve_group
from ulvs.runtime.pool import (
    ArpPort,
    WorkerLink,
    group_base,
    merge_explanations,
    merge_snapshots,
    merge_status,
)
from ulvs.runtime.rxwatch import DEFAULT_INTERVAL, RxWatch
from ulvs.runtime.sdnotify import Notifier
from ulvs.runtime.supervisor import ExporterProcess, MonitorProcess

log = logging.getLogger("ulvs")
SYNC_HOLD = 3.0     # s a (re)joining director waits for its bulk resync before it may preempt

DEFAULT_SOCKET = Path("/run/ulvs/ulvs.sock")
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


class DaemonError(Exception):
    """Cannot start: the message is for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    config: Path | None = None
    interfaces: list[str] = field(default_factory=list)
    backend: str = "afpacket"
    control_socket: Path = DEFAULT_SOCKET
    conn_limit: int = 1_000_000
    workers: int = 1
    gro: bool = True
    rx_ring: str = "auto"               # afpacket receive layout (ulvs.io.afpacket.RING_MODES)
    tx_ring: int = 4096                 # afpacket transmit ring slots (0: a send() per frame)
    rx_pace: float = DEFAULT_INTERVAL   # s: read a busy per-frame port on a timer (0: never; rxwatch)
    control_group: str | None = None   # group admitted to the control socket (mode 0660)
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus exporter child; None: none
    flow_log: str | None = None        # flow log file, "-" for stdout (ulvs.runtime.flowlog); None: off
    flow_log_rate: int = 1000          # flow log lines per second at most


def check_privileges() -> None:
    """The effective set (/proc/self/status CapEff) holds CAP_NET_RAW and CAP_NET_ADMIN, before
    anything is opened; a non-root daemon also hands them on to its children (``nft``, ``ip``,
    workers, monitor: ``ulvs.runtime.caps``)."""
    for cap, name in ((CAP_NET_RAW, "CAP_NET_RAW"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")):
        if not has_capability(cap):
            raise DaemonError(f"ulvs run needs {name} (run as root or grant the capability)")
    if os.geteuid() != 0:
        from ulvs.runtime import caps

        try:
            raised = caps.keep_for_children()
        except OSError as e:
            raise DaemonError(f"ulvs run cannot pass CAP_NET_ADMIN/CAP_NET_RAW on to nft and its "
                              f"children: {e.strerror}") from None
        if raised:
            log.info("capabilities made ambient for the children: %s", ", ".join(raised))


def check_socket_dir(path: Path) -> None:
    """The control socket's directory exists (made if need be) and this process may create the
    socket there: a non-root daemon needs a directory of its own (systemd RuntimeDirectory=)."""
    where = path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DaemonError(f"cannot create {where} for the control socket: {e.strerror} (create it "
                          f"writable by uid {os.geteuid()}, or give --control-socket)") from None
    if not os.access(where, os.W_OK | os.X_OK, effective_ids=True):
        raise DaemonError(f"cannot create the control socket in {where}: not writable by uid "
                          f"{os.geteuid()} (systemd: RuntimeDirectory=ulvs; or give --control-socket)")


def up_interfaces() -> list[str]:
    """UP, non-loopback interfaces of this network namespace."""
    names = []
    for _idx, name in socket.if_nameindex():
        try:
            flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
        except OSError:
            continue
        if flags & 0x1 and not flags & 0x8:   # IFF_UP, not IFF_LOOPBACK
            names.append(name)
    return names


class Daemon:
    REFUSE_GRACE = 2.0      # seconds a refused control peer has to send its request / hang up

    def __init__(self, opts: Options, load_config: Callable[[Path], list[dict[str, Any]]]) -> None:
        self.opts = opts
        self.load_config = load_config
        self.core = Core(conn_limit=opts.conn_limit)
        self.ports: dict[int, Port] = {}
        self.kernel: KernelState | None = None
        self.steering: TapSteering | None = None
        self.tap: TapPort | None = None
        self.links: list[WorkerLink] = []   # dataplane worker processes (--workers N > 1)
        self._lane_file: Any = None         # their auto rings' shared lane bits (--rx-ring auto)
        self.resolver: Resolver | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._rx: RxWatch | None = None
        from ulvs.runtime.control import RateEstimator

        self.estimator = RateEstimator()
        # Netlink work (pyroute2) and nft runs on one thread of its own: pyroute2's synchronous
        # API cannot run inside the event loop, and nothing slow may block the dataplane.
        self._nl = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._change_lock: asyncio.Lock | None = None
        self._resolving = False
        self._server: asyncio.AbstractServer | None = None
        self._socket_made = False
        self._stop: asyncio.Event | None = None
        self.exit_code = 0
        self._group: ControlGroup | None = None
        self._started = time.monotonic()
        self._last_reload: dict[str, Any] | None = None
        # The effective configuration: the file's requests, its model's health policy, and the
        # health overlay (ulvs.config.overlay) the monitor reports.
        self._compiled: list[dict[str, Any]] = []
        self._config: Config | None = None
        self._policies: dict[Any, ServicePolicy] = {}
        self._known: set[OverlayKey] = set()
        self._overlay: dict[OverlayKey, DestHealth] = {}
        self._sorry: set[Any] = set()
        self._monitor: MonitorProcess | None = None
        self._exporter: ExporterProcess | None = None
        self._probe_stats: dict[str, Any] = {}       # the monitor's last probe_stats report
        self._notify = Notifier.from_env()           # systemd Type=notify (no-op without it)
        # VRRP (ulvs.runtime.vrrpd, a child of ours) and what it last reported.
        self._vrrp: MonitorProcess | None = None
        self._vrrp_report: dict[str, Any] | None = None
        self.sync: Any = None               # ulvs.runtime.syncd.SyncManager when [sync] is set
        self.flowlog: Any = None            # ulvs.runtime.flowlog.FlowLog with --flow-log

    def _model(self) -> Config | None:
        """The configuration model behind the requests ``load_config`` last returned."""
        return self.load_config.current if isinstance(self.load_config, DaemonConfig) else None

    def _load_initial(self) -> list[dict[str, Any]]:
        """The start-up configuration: remember it and return the requests that build it."""
        self._compiled = self.load_config(self.opts.config) if self.opts.config else []
        self._config = self._model()
        self._policies = policies(self._config) if self._config is not None else {}
        self._known = configured_dests(self._compiled)
        return self._wanted()

    def _wanted(self) -> list[dict[str, Any]]:
        return apply_overlay(self._compiled, self._overlay, self._sorry, self._policies)

    # -- start / stop ---------------------------------------------------------------------------
    def start(self) -> None:
        """Attach and configure; on any failure, undo what was done and raise DaemonError."""
        check_privileges()
        check_socket_dir(self.opts.control_socket)
        if self.opts.backend not in ("afpacket", "tap"):
            raise DaemonError(f"unknown backend {self.opts.backend!r}; use afpacket or tap")
        if self.opts.control_group is not None:
            try:
                self._group = resolve_group(self.opts.control_group)
            except ValueError as e:
                raise DaemonError(str(e)) from None
        requests = self._load_initial()
        names = self.opts.interfaces or up_interfaces()
        if self.opts.backend == "afpacket" and not names:
            raise DaemonError("no interface to attach to: none is UP (give --interface)")
        if self.opts.workers > 1 and self.opts.backend != "afpacket":
            raise DaemonError("--workers needs the afpacket backend")
        if self.opts.rx_ring == "auto" and self.opts.workers > MAX_LANE_WORKERS:
            raise DaemonError(f"--rx-ring auto takes at most {MAX_LANE_WORKERS} workers (give --rx-ring v3 "
                              "for more)")
        sync = self._config.sync if self._config is not None else None
        if sync is not None and self.opts.workers > 1:
            raise DaemonError("connection sync ([sync], lvs_sync_daemon) works with one dataplane "
                              "process only: drop --workers or the sync settings")
        if self.opts.flow_log is not None:
            self._start_flowlog()
        try:
            if self.opts.backend == "tap":
                self._attach_tap()
            elif self.opts.workers > 1:
                self._attach_pool(names)
            else:
                self._attach(names)
            self._apply_requests(requests, "configuration")
            self._sync_kernel()
            self._resolve_all()
            if sync is not None:
                self._start_sync(sync)
        except BaseException:
            self.shutdown()
            raise

    def _attach(self, names: list[str]) -> None:
        addrs = _interface_addrs()
        for name in names:
            try:
                ring = PacketRing(name, RingConfig(mode=self.opts.rx_ring, tx_slot_count=self.opts.tx_ring))
            except RingError as e:
                raise DaemonError(f"cannot attach to {name}: {e.strerror or e}") from None
            except PermissionError:
                raise DaemonError("ulvs run needs CAP_NET_RAW (run as root)") from None
            self.ports[ring.ifindex] = ring
            addr = addrs.get(name)
            self.core.set_interface(ring.ifindex, ring.mac, addr)
            log.info("attached to %s (ifindex %d, %s, rx ring %s)", name, ring.ifindex, ring.mac.hex(":"),
                     ring.cfg.mode)
        self.kernel = KernelState(sorted(p.ifname for p in self.ports.values()))
        if self.opts.gro:
            self.kernel.enable_gro()
        self.resolver = Resolver(
            egress={i: Egress(i, p.mac, addrs[p.ifname].packed if p.ifname in addrs else None,
                              p.send_frame) for i, p in self.ports.items()},
            set_neighbor=self._set_neighbor)

    def _attach_pool(self, names: list[str]) -> None:
        """--workers N: the workers own the rings; the main process keeps ARP and control."""
        addrs = _interface_addrs()
        for name in names:
            try:
                port = ArpPort(name)
            except OSError as e:
                raise DaemonError(f"cannot attach to {name}: {e.strerror or e}") from None
            self.ports[port.ifindex] = port
            self.core.set_interface(port.ifindex, port.mac, addrs.get(name))
        self.kernel = KernelState(sorted(names))
        if self.opts.gro:
            self.kernel.enable_gro()
        self.resolver = Resolver(
            egress={i: Egress(i, p.mac, addrs[p.ifname].packed if p.ifname in addrs else None,
                              p.send_frame) for i, p in self.ports.items()},
            set_neighbor=self._set_neighbor)
        base = group_base()
        # One worker at a time: a worker answers its first message only after joining its
        # fanout groups, whose members must be in worker order (lanes: member k of each of the
        # two groups is worker k; auto: members 2k and 2k + 1 of the one group, its ring and
        # its quick socket; see ulvs.io.afpacket and ulvs.io.fanout).
        self.links = []
        lane_fd = None
        if self.opts.rx_ring == "auto":
            # the workers' lane bits (ulvs.io.fanout.LaneShare): an unlinked file, gone with us
            self._lane_file = tempfile.TemporaryFile()
            lane_fd = self._lane_file.fileno()
        for i in range(self.opts.workers):
            link = WorkerLink(i, sorted(names), base, self.opts.conn_limit, self.opts.rx_ring,
                              self.opts.tx_ring, self.opts.rx_pace, self.opts.workers, lane_fd)
            self.links.append(link)
            for p in self.ports.values():
                a = addrs.get(p.ifname)
                self._call(link, {"op": "interface", "ifindex": p.ifindex, "mac": p.mac.hex(),
                                  "addr": str(a) if a else None})
        log.info("%d dataplane workers (pids %s) on %s", len(self.links),
                 ", ".join(str(x.proc.pid) for x in self.links), ", ".join(sorted(names)))

    @staticmethod
    def _call(link: WorkerLink, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = link.call(msg)
        except (OSError, ValueError) as e:
            raise DaemonError(f"dataplane worker {link.index}: {e}") from None
        if not reply.get("ok"):
            raise DaemonError(f"dataplane worker {link.index} refused {msg.get('op')}: {reply.get('error')}")
        return reply

    def _broadcast(self, msg: dict[str, Any]) -> None:
        for link in self.links:
            try:
                self._call(link, msg)
            except DaemonError as e:
                log.error("%s", e)

    def _set_neighbor(self, addr: bytes, egress: int, dst_mac: bytes, src_mac: bytes) -> None:
        """Resolver results reach the core on the loop's thread (the core is single-threaded)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply_neighbor, addr, egress, dst_mac, src_mac)
        else:
            self._apply_neighbor(addr, egress, dst_mac, src_mac)

    def _apply_neighbor(self, addr: bytes, egress: int, dst_mac: bytes, src_mac: bytes) -> None:
        self.core.set_neighbor(addr, egress, dst_mac, src_mac)
        if self.links:
            self._broadcast({"op": "neighbor", "addr": addr.hex(), "egress": egress,
                             "dmac": dst_mac.hex(), "smac": src_mac.hex()})

    def _attach_tap(self) -> None:
        if not ip_forwarding():
            raise DaemonError("the tap backend needs net.ipv4.ip_forward=1: the kernel routes "
                              "VIP traffic into the TAP and the rewritten packets out of it")
        try:
            tap = TapPort(f"ulvs{os.getpid() % 100000}")
        except TapError as e:
            raise DaemonError(f"{e.strerror} (needs CAP_NET_ADMIN and /dev/net/tun)") from None
        self.tap = tap
        self.ports[tap.ifindex] = tap
        # Packets come back from the TAP with a client's source address: no reverse-path check
        # on our own device (the setting goes away with the device).
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/conf/{tap.ifname}/rp_filter").write_text("0")
        self.core.allowed_methods = frozenset({FwdMethod.MASQ})
        self.steering = TapSteering(tap.ifindex, tap.ifname)
        log.info("tap backend on %s (ifindex %d); policy routing table %d", tap.ifname, tap.ifindex,
                 self.steering.table)

    def _apply_requests(self, requests: list[dict[str, Any]], what: str) -> None:
        from ulvs.runtime.control import apply_request

        if not requests:
            return
        batch = {"cmd": "batch", "requests": requests}
        reply = apply_request(self.core, batch, time.monotonic())
        if not reply.get("ok"):
            raise DaemonError(f"{what} rejected: {reply.get('error')}")
        self._broadcast({"op": "request", "req": batch})

    def _sync_kernel(self) -> None:
        """Start-up (no loop yet): bring the kernel in line with the configuration."""
        local = set(local_addresses())
        self._apply_kernel(interception_for(self.core.services.values(), local))
        self._set_local(local)

    def _set_local(self, local: set[str]) -> None:
        self.core.set_local_addrs(local)
        if self.links:
            self._broadcast({"op": "local", "addrs": sorted(local)})
            self._broadcast({"op": "fanout", "masq": sorted(a.hex() for a in self.core.masq_addrs)})

    def _apply_kernel(self, ic: Any) -> None:
        try:
            if self.kernel is not None:
                self.kernel.apply(ic)
            if self.steering is not None:
                self.steering.apply(ic)
        except KernelError as e:
            raise DaemonError(str(e)) from None

    def _wanted_hops(self) -> set[bytes]:
        addrs = {d.config.daddr.packed for s in self.core.services.values() for d in s.dests}
        addrs |= self.core.unresolved
        self.core.unresolved.clear()
        return addrs

    def _resolve_all(self) -> None:
        """Start-up (no loop yet): next hops for every dest."""
        addrs = self._wanted_hops()
        if self.tap is not None:
            # Everything leaves through the kernel side of the TAP, which routes it on.
            for a in addrs:
                self.core.set_neighbor(a, self.tap.ifindex, self.tap.kernel_mac, self.tap.mac)
        elif self.resolver is not None:
            self.resolver.resolve(addrs)

    async def _resolve_async(self) -> None:
        addrs = self._wanted_hops()
        if self.tap is not None:
            for a in addrs:
                self.core.set_neighbor(a, self.tap.ifindex, self.tap.kernel_mac, self.tap.mac)
        elif self.resolver is not None and addrs:
            await asyncio.get_running_loop().run_in_executor(self._nl, self.resolver.resolve, addrs)

    def _schedule_resolve(self) -> None:
        if self._resolving:
            return
        self._resolving = True

        async def go() -> None:
            try:
                await self._resolve_async()
            except Exception as e:  # noqa: BLE001 - keep serving; next housekeeping retries
                log.error("next-hop resolution failed: %s", e)
            finally:
                self._resolving = False

        asyncio.ensure_future(go())

    async def _sync_kernel_async(self) -> None:
        """After a change: re-read local addresses, replace the nft table / policy rules, and
        resolve new dests -- on the netlink thread, one change at a time."""
        assert self._change_lock is not None
        async with self._change_lock:
            loop = asyncio.get_running_loop()
            local = set(await loop.run_in_executor(self._nl, local_addresses))
            ic = interception_for(self.core.services.values(), local)
            await loop.run_in_executor(self._nl, self._apply_kernel, ic)
            self._set_local(local)
            await self._resolve_async()

    def shutdown(self) -> None:
        """Remove every kernel object ulvs added and close every socket. Idempotent."""
        if self.flowlog is not None:
            self._stop_flowlog()
        if self._monitor is not None:
            self._monitor.kill_now()      # normally already stopped by run()
        if self._exporter is not None:
            self._exporter.kill_now()
        if self._vrrp is not None:
            self._vrrp.kill_now()
        if self.sync is not None:
            self.sync.close()
        if self.kernel is not None:
            try:
                self.kernel.remove()
            except KernelError as e:
                log.error("could not remove nft table %s: %s", self.kernel.table, e)
        if self.steering is not None:
            self.steering.remove()
        for link in self.links:
            link.stop()
        self.links = []
        if self._lane_file is not None:
            self._lane_file.close()
            self._lane_file = None
        for port in self.ports.values():
            if getattr(port, "holes", 0):
                log.warning("%s: stepped over %d unfilled receive-ring slot(s) under overload",
                            port.ifname, getattr(port, "holes", 0))
            port.close()
        self.ports.clear()
        self._nl.shutdown(wait=True)
        if self._socket_made:
            with contextlib.suppress(FileNotFoundError):
                self.opts.control_socket.unlink()
            self._socket_made = False

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._change_lock = asyncio.Lock()
        stop = self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        rx = self._rx = RxWatch(loop, self.opts.rx_pace)
        for port in self.ports.values():
            rx.watch(port, self._on_rx)
        if self.sync is not None:
            self.sync.start(loop)
        await self._serve_control()
        self._arm_timer()
        housekeeping = asyncio.ensure_future(self._housekeeping())
        flows = asyncio.ensure_future(self._drain_flows()) if self.flowlog is not None else None
        log.info("ulvs running: %d service(s), control socket %s", len(self.core.services),
                 self.opts.control_socket)
        try:
            await self._update_monitor(reloaded=False)
            await self._update_vrrp(reloaded=False)
            if self.opts.metrics_listen is not None:
                self._exporter = ExporterProcess(self.opts.metrics_listen, self.opts.control_socket)
                await self._exporter.start()
            self._notify.ready()
            self._notify.start_watchdog(loop)
            await stop.wait()
        finally:
            self._notify.stopping()
            if self._exporter is not None:
                await self._exporter.stop()
            if self._vrrp is not None:
                # First: a master resigns (priority 0) while the dataplane still forwards.
                await self._vrrp.stop()
            if self._monitor is not None:
                await self._monitor.stop()
            housekeeping.cancel()
            if flows is not None:
                flows.cancel()
            rx.close()
            if self._server is not None:
                self._server.close()
            log.info("ulvs stopping")

    def _on_rx(self, port: Port) -> int:
        """Forward what ``port`` has received (``RxWatch`` calls this); returns the frames."""
        core, ports, resolver, tap = self.core, self.ports, self.resolver, self.tap
        now = time.monotonic()
        frames = 0
        for b in port.batches():
            n = b.count
            frames += n
            bufs, offs, lens = b.bufs, b.offs, b.lens
            core.process_batch(bufs, offs, lens, b.ifins, n, now, b.partial)
            verdicts, egress = core.verdicts, core.egress
            for each in ports.values():
                each.transmit_forwarded(b, verdicts, egress, n)
                each.flush()
            j = verdicts.find(2, 0, n)
            while j >= 0:     # passed: ARP is ours to learn from and answer
                buf, off = bufs[j], offs[j]
                if buf[off + 12] == 0x08 and buf[off + 13] == 0x06:
                    if tap is not None and port is tap:
                        tap.answer_arp(buf, off, lens[j])
                    else:
                        arp = memoryview(buf)[off:off + lens[j]]
                        if resolver is not None:
                            resolver.learn(arp, port.ifindex)
                        self._answer_vip_arp(port, arp)
                # Anything else passed on a ring is already the kernel's; on the TAP it was
                # routed to us and is not ours: it ends here.
                j = verdicts.find(2, j + 1, n)
        if core.emitted:
            for frame, eg in core.emitted:
                out = ports.get(eg)
                if out is not None:
                    out.send_frame(frame)
            core.emitted.clear()
        if core.unresolved:
            self._schedule_resolve()
        self._arm_timer()
        return frames

    def _port_counters(self) -> dict[str, dict[str, int]]:
        """Ring counters by interface, with the pacing counters of paced ports."""
        out = {}
        for p in self.ports.values():
            c = {**(p.counters() if hasattr(p, "counters") else {}),
                 **(self._rx.counters(p) if self._rx is not None else {})}
            if c:
                out[p.ifname] = c
        return out

    def _answer_vip_arp(self, port: Port, frame: memoryview) -> None:
        """ulvs serves a VIP whether or not it is a local address: when it is not, the kernel
        does not answer ARP for it, so we do, with the MAC of the interface that was asked."""
        if len(frame) < 42:
            return
        fields = ARP.unpack_from(frame, 14)
        op, sha, spa, target = fields[4], bytes(fields[5]), bytes(fields[6]), bytes(fields[8])
        if op != 1 or target not in self.core.vips or target in self.core.local_addrs:
            return
        if self._vrrp is not None:
            return   # with VRRP the master's kernel holds the virtual addresses and answers
        port.send_frame(ETH.pack(sha, port.mac, ETH_P_ARP)
                        + ARP.pack(1, 0x0800, 6, 4, 2, port.mac, target, sha, spa))

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(max(deadline, loop.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(time.monotonic())
        self._arm_timer()

    async def _housekeeping(self) -> None:
        """Re-ask unanswered next hops every second; re-read all next hops every 30 s; feed the
        rate estimator every 2 s (ipvsadm --rate)."""
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            if tick % 2 == 0:
                self.estimator.tick(self.core)
            for link in self.links:
                if link.proc.poll() is not None:
                    # Its connections are gone and the fanout group has shrunk under the others:
                    # stop with an error, so the supervisor (systemd) restarts the whole director.
                    log.error("dataplane worker %d (pid %d) exited with %s: stopping", link.index,
                              link.proc.pid, link.proc.returncode)
                    self.exit_code = 1
                    if self._stop is not None:
                        self._stop.set()
                    return
                try:
                    got = self._call(link, {"op": "unresolved"})
                except DaemonError as e:
                    log.error("%s", e)
                    continue
                if got.get("addrs"):
                    self.core.unresolved.update(bytes.fromhex(a) for a in got["addrs"])
                    self._schedule_resolve()
            if self.resolver is not None:
                self.resolver.retry()
                if tick % 30 == 0:
                    self.resolver.forget()
                    self._schedule_resolve()
            await self._check_interfaces()

    async def _check_interfaces(self) -> None:
        """Detach interfaces that disappeared; the others keep serving."""
        gone = [i for i, p in self.ports.items() if not Path(f"/sys/class/net/{p.ifname}").exists()]
        if not gone:
            return
        for i in gone:
            port = self.ports.pop(i)
            log.warning("interface %s disappeared: detached", port.ifname)
            if self._rx is not None:
                self._rx.unwatch(port)
            port.close()
            if self.resolver is not None:
                self.resolver.egress.pop(i, None)
        if self.kernel is not None:
            self.kernel.interfaces = sorted(p.ifname for p in self.ports.values())
            try:
                await self._sync_kernel_async()
            except DaemonError as e:
                log.error("%s", e)

    # -- control socket -------------------------------------------------------------------------
    async def _serve_control(self) -> None:
        path = self.opts.control_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if _socket_alive(path):
                raise DaemonError(f"another ulvs is serving the control socket {path}")
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(path))
        finally:
            os.umask(old)
        self._socket_made = True
        if self._group is not None:
            os.chown(path, -1, self._group.gid)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP)
        else:
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from ulvs.runtime.control import PROTOCOL_VERSION

        try:
            if not await self._admit(reader, writer):
                return
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                except ValueError as e:
                    reply: dict[str, Any] = {"ok": False, "v": PROTOCOL_VERSION, "error": f"bad JSON: {e}"}
                else:
                    reply = await self._handle(req)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """SO_PEERCRED check (``ulvs.runtime.peercred``): a refused peer gets one reply naming
        the reason, and the connection is closed.

        The reply answers the peer's first request, which is read (and ignored) first, and the
        rest of its input is drained after a half-close: closing a unix socket with unread data
        resets it, and the peer could lose the reply."""
        from ulvs.runtime.control import PROTOCOL_VERSION

        own = os.geteuid()
        try:
            peer = peer_of(writer.get_extra_info("socket"))
        except (OSError, AttributeError, TypeError) as e:
            log.warning("control socket: cannot read the peer's credentials, refused: %s", e)
            return False
        if peer_allowed(peer, own, self._group):
            return True
        message = refusal(peer, own, self._group)
        log.warning("control socket: refused pid %d (uid %d, gid %d): %s", peer.pid, peer.uid, peer.gid,
                    message)
        quiet = (ConnectionError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError)
        with contextlib.suppress(*quiet):
            await asyncio.wait_for(reader.readline(), self.REFUSE_GRACE)
        with contextlib.suppress(*quiet):
            writer.write(json.dumps({"ok": False, "v": PROTOCOL_VERSION, "error": message}).encode() + b"\n")
            writer.write_eof()
            await writer.drain()
            async with asyncio.timeout(self.REFUSE_GRACE):
                while await reader.read(65536):
                    pass
        return False

    async def _handle(self, req: Any) -> dict[str, Any]:
        """One request: the daemon's own commands (reload, the daemon part of status) here,
        everything else applied to the core (and forwarded to the workers)."""
        from ulvs.runtime.control import PROTOCOL_VERSION, READ_ONLY, apply_request, version_error

        if not isinstance(req, dict):
            return {"ok": False, "v": PROTOCOL_VERSION, "error": "a request is a JSON object"}
        refused = version_error(req)
        if refused is not None:
            return refused
        cmd = req.get("cmd")
        if cmd == "reload":
            return await self.reload_config("reload request")
        if cmd in ("health", "sorry"):
            return await self._health_command(req)
        if cmd == "probe_stats":
            return self._probe_stats_command(req)
        if cmd == "metrics":     # the exporter's scrape: the status, cut down to what it reads
            from ulvs.runtime.control import metrics_view

            got = await self._handle({**req, "cmd": "status"})
            if not got.get("ok"):
                return got
            return {"ok": True, "v": PROTOCOL_VERSION, "metrics": metrics_view(got["status"])}
        if cmd == "vrrp":
            return self._vrrp_command(req)
        reply = apply_request(self.core, req, time.monotonic(), estimator=self.estimator)
        if reply.get("ok") and self.links:
            reply = self._forward(req, reply)
        if reply.get("ok") and cmd == "status":
            reply["status"]["daemon"] = self._daemon_info()
            reply["status"]["daemon"]["ports"].update(reply["status"].pop("ports", {}))  # workers' rings
            reply["status"]["health"] = {
                **overlay_to_json(self._overlay, self._sorry),
                "monitor": self._monitor.info() if self._monitor is not None else None,
                "probes": self._probe_stats}
            reply["status"]["vrrp"] = self._vrrp_status()
            reply["status"]["sync"] = self.sync.status() if self.sync is not None else None
        if reply.get("ok") and cmd not in READ_ONLY:
            await self._after_change()
        return reply

    def _daemon_info(self) -> dict[str, Any]:
        from ulvs import __version__
        from ulvs.runtime.control import PROTOCOL_VERSION

        path = self.opts.control_socket
        try:
            mode = f"{stat.S_IMODE(path.stat().st_mode):04o}"
        except OSError:
            mode = None
        return {
            "pid": os.getpid(), "version": __version__, "protocol": PROTOCOL_VERSION,
            "uptime": round(time.monotonic() - self._started, 3), "backend": self.opts.backend,
            "workers": self.opts.workers, "worker_pids": [link.proc.pid for link in self.links],
            "interfaces": sorted(p.ifname for p in self.ports.values()),
            "ports": self._port_counters(),
            "control_socket": str(path), "control_socket_mode": mode,
            "control_group": self._group.name if self._group is not None else None,
            "conn_limit": self.opts.conn_limit,
            "config": str(self.opts.config) if self.opts.config is not None else None,
            "last_reload": self._last_reload,
            "metrics": None if self._exporter is None else {"listen": self._exporter.listen,
                                                            **self._exporter.info()},
            "flow_log": self.flowlog.info() if self.flowlog is not None else None,
        }

    def _forward(self, req: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        """A request the main process accepted goes to every worker; snapshots and status are
        merged, and explain asks every worker (each has its own connections and scheduler)."""
        cmd = req.get("cmd")
        if cmd == "get_timeouts":
            return reply
        parts = []
        for link in self.links:
            try:
                wr = self._call(link, {"op": "request", "req": req})
            except DaemonError as e:
                log.error("%s", e)
                return {"ok": False, "v": reply.get("v"), "error": str(e)}
            if cmd in ("snapshot", "status", "explain"):
                parts.append(wr[str(cmd)] if cmd != "explain" else wr["explanation"])
        if cmd == "snapshot":
            return {**reply, "snapshot": merge_snapshots(reply["snapshot"], parts)}
        if cmd == "status":
            return {**reply, "status": merge_status(reply["status"], parts)}
        if cmd == "explain":
            return {**reply, "explanation": merge_explanations(parts)}
        return reply

    async def _after_change(self) -> None:
        try:
            await self._sync_kernel_async()
        except DaemonError as e:
            log.error("%s", e)

    # -- reload ---------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the configuration and apply only the differences."""
        asyncio.ensure_future(self.reload_config("SIGHUP"))

    async def reload_config(self, why: str) -> dict[str, Any]:
        """Re-read the configuration and apply only the differences (SIGHUP, and the control
        command "reload", whose reply this is).  On any error the running configuration stays.
        systemd hears RELOADING=1 before and READY=1 after, either way."""
        self._notify.reloading()
        self._reopen_flowlog()
        try:
            return await self._reload_config(why)
        finally:
            self._notify.ready()

    async def _reload_config(self, why: str) -> dict[str, Any]:
        from ulvs.runtime.control import PROTOCOL_VERSION, diff_requests

        if self.opts.config is None:
            log.info("%s: no configuration file to reload", why)
            return {"ok": False, "v": PROTOCOL_VERSION,
                    "error": "no configuration file to reload (ulvs run was started without --config)"}
        at = time.time()
        try:
            compiled = self.load_config(self.opts.config)
            model = self._model()
            pols = policies(model) if model is not None else {}
            known = configured_dests(compiled)
            monitored = model is not None and needs_monitor(model)
            # Health carries over for every dest still configured; without a monitor there is
            # nobody to report health, so every dest is up.
            overlay = {k: h for k, h in self._overlay.items() if k in known} if monitored else {}
            sorry = {k for k in self._sorry if k in pols and pols[k].sorry is not None}
            if not monitored:
                sorry = set()
            changes = diff_requests(self.core, apply_overlay(compiled, overlay, sorry, pols))
            self._apply_requests(changes, "reload")
        except (DaemonError, ValueError, OSError) as e:
            log.error("reload of %s failed, configuration unchanged: %s", self.opts.config, e)
            self._last_reload = {"at": at, "by": why, "ok": False, "error": str(e)}
            return {"ok": False, "v": PROTOCOL_VERSION,
                    "error": f"reload of {self.opts.config} failed, configuration unchanged: {e}"}
        self._compiled, self._config, self._policies, self._known = compiled, model, pols, known
        self._overlay, self._sorry = overlay, sorry
        await self._after_change()
        log.info("reloaded %s: %d change(s)", self.opts.config, len(changes))
        self._last_reload = {"at": at, "by": why, "ok": True, "changes": len(changes)}
        await self._update_monitor(reloaded=True)
        await self._update_vrrp(reloaded=True)
        return {"ok": True, "v": PROTOCOL_VERSION, "changes": len(changes), "config": str(self.opts.config)}

    # -- flow log -------------------------------------------------------------------------------
    def _start_flowlog(self) -> None:
        """--flow-log: open the file and make the core count and capture (ulvs.runtime.flowlog)."""
        from ulvs.runtime.flowlog import FlowLog, FlowLogError

        if self.opts.workers > 1:
            raise DaemonError("the flow log works with one dataplane process only: drop --workers "
                              "or --flow-log")
        assert self.opts.flow_log is not None
        try:
            self.flowlog = FlowLog(self.opts.flow_log, self.opts.flow_log_rate)
        except (FlowLogError, ValueError) as e:
            raise DaemonError(str(e)) from None
        self.core.enable_flow_log()
        log.info("flow log: %s, at most %d lines/s", "stdout" if self.opts.flow_log == "-" else
                 self.opts.flow_log, self.opts.flow_log_rate)

    async def _drain_flows(self) -> None:
        from ulvs.runtime.flowlog import DRAIN_INTERVAL

        failing: str | None = None
        while True:
            await asyncio.sleep(DRAIN_INTERVAL)
            try:
                self.flowlog.write(self.core.drain_flows())
                failing = None
            except (OSError, ValueError) as e:     # a full disk: say so (once), keep forwarding
                if str(e) != failing:
                    log.error("flow log: %s (lines are lost until it can write again)", e)
                failing = str(e)

    def _stop_flowlog(self) -> None:
        """Shutdown: what is left to drain, then a close line (reason shutdown) for every
        connection still open."""
        flowlog, self.flowlog = self.flowlog, None
        try:
            flowlog.close([*self.core.drain_flows(), *self.core.open_flows()])
        except (OSError, ValueError) as e:
            log.error("flow log: %s", e)

    def _reopen_flowlog(self) -> None:
        if self.flowlog is None:
            return
        from ulvs.runtime.flowlog import FlowLogError

        try:
            self.flowlog.reopen()
        except FlowLogError as e:
            log.error("%s: writing on to the old file", e)

    # -- VRRP -----------------------------------------------------------------------------------
    async def _update_vrrp(self, *, reloaded: bool) -> None:
        """Start the VRRP speaker when the configuration has instances, stop it when it has none
        any more; a reload restarts it (a master resigns with priority 0 first), so instances
        are rebuilt from the new settings."""
        want = self.opts.config is not None and self._config is not None and bool(self._config.vrrp)
        if want and reloaded and self._vrrp is not None and self._vrrp_changed():
            await self._vrrp.stop()
            self._vrrp = None
        if want and self._vrrp is None:
            fmt = self.load_config.fmt if isinstance(self.load_config, DaemonConfig) else None
            assert self.opts.config is not None and self._config is not None
            hold = ("--sync-hold", str(SYNC_HOLD)) if self._config.sync is not None else ()
            self._vrrp = MonitorProcess(self.opts.config, self.opts.control_socket, fmt,
                                        module="ulvs.runtime.vrrpd", name="VRRP speaker", extra=hold)
            self._vrrp_config = self._config.vrrp
            await self._vrrp.start()
        elif not want and self._vrrp is not None:
            log.info("the configuration has no VRRP instances any more: stopping the VRRP speaker")
            await self._vrrp.stop()
            self._vrrp = None
            self._vrrp_report = None

    def _start_sync(self, settings: Any) -> None:
        from ulvs.runtime.syncd import SyncError, SyncManager, read_key

        try:
            key = read_key(settings, self.opts.config)
            self.sync = SyncManager(self.core, settings, key, ready_after=SYNC_HOLD)
        except SyncError as e:
            raise DaemonError(str(e)) from None

    def _vrrp_changed(self) -> bool:
        return self._config is None or getattr(self, "_vrrp_config", None) != self._config.vrrp

    def _vrrp_command(self, req: dict[str, Any]) -> dict[str, Any]:
        """The speaker's report: every instance's state and counters (on each transition and
        every second).  The reply tells it whether connection sync is ready (bulk resync done),
        which lifts its hold on preemption."""
        from ulvs.runtime.control import PROTOCOL_VERSION

        instances = req.get("instances")
        if not isinstance(instances, list):
            return {"ok": False, "v": PROTOCOL_VERSION, "error": "vrrp: instances must be a list"}
        self._vrrp_report = {"pid": req.get("pid"), "at": time.time(), "instances": instances}
        if self.sync is not None:
            self.sync.vrrp_states({str(i.get("iname")): int(i.get("state", 0)) for i in instances
                                   if isinstance(i, dict)}, time.monotonic())
        ready = self.sync.ready if self.sync is not None else True
        return {"ok": True, "v": PROTOCOL_VERSION, "sync_ready": ready}

    def _vrrp_status(self) -> list[dict[str, Any]] | None:
        if self._vrrp is None:
            return None
        report = self._vrrp_report or {"instances": []}
        return [dict(i, speaker_pid=self._vrrp.pid) for i in report["instances"] if isinstance(i, dict)]

    # -- health ---------------------------------------------------------------------------------
    def _probe_stats_command(self, req: dict[str, Any]) -> dict[str, Any]:
        """The monitor's probe statistics (``ulvs.health.stats``): kept for status and metrics."""
        from ulvs.health.stats import probes_from_json
        from ulvs.runtime.control import PROTOCOL_VERSION

        try:
            self._probe_stats = probes_from_json(req.get("probes"))
        except ValueError as e:
            return {"ok": False, "v": PROTOCOL_VERSION, "error": f"probe_stats: {e}"}
        return {"ok": True, "v": PROTOCOL_VERSION}

    async def _update_monitor(self, *, reloaded: bool) -> None:
        """Start the health monitor when the configuration needs one, stop it when it no longer
        does, and forward a successful reload to a running one."""
        want = self.opts.config is not None and self._config is not None and needs_monitor(self._config)
        if want and self._monitor is None:
            fmt = self.load_config.fmt if isinstance(self.load_config, DaemonConfig) else None
            assert self.opts.config is not None
            self._monitor = MonitorProcess(self.opts.config, self.opts.control_socket, fmt)
            await self._monitor.start()
        elif want and reloaded and self._monitor is not None:
            self._monitor.reload()
        elif not want and self._monitor is not None:
            log.info("the configuration has no health checks any more: stopping the health monitor")
            await self._monitor.stop()
            self._monitor = None

    async def _health_command(self, req: dict[str, Any]) -> dict[str, Any]:
        """The monitor's reports: "health" (a dest is up or down, with a weight) and "sorry" (a
        service's sorry server on or off).  A report that changes what is served is applied
        like a reload, ``diff_requests(core, wanted)``; one that cannot be applied changes
        nothing."""
        from ulvs.runtime.control import PROTOCOL_VERSION, RequestError, diff_requests, key_name

        def reply(error: str | None = None, changes: int = 0) -> dict[str, Any]:
            if error is not None:
                return {"ok": False, "v": PROTOCOL_VERSION, "error": error}
            return {"ok": True, "v": PROTOCOL_VERSION, "changes": changes}

        saved = (dict(self._overlay), set(self._sorry))
        try:
            if req["cmd"] == "health":
                upd = health_from_json(req)
                svc, daddr, dport = upd.key
                if upd.key not in self._known:
                    return reply(f"no dest {daddr}:{dport} of {key_name(svc)} in the configuration")
                old = self._overlay.get(upd.key)
                since = old.since if old is not None and old.up == upd.up else time.time()
                new = DestHealth(upd.up, upd.weight, upd.detail, since)
                self._overlay[upd.key] = new
                if new.effect == (old.effect if old is not None else (True, None)):
                    return reply()
                state = "up" if upd.up else "down"
                if upd.up and upd.weight is not None:
                    state += f", weight {upd.weight}"
                what = f"health: {key_name(svc)} dest {daddr}:{dport} {state}"
                if upd.detail:
                    what += f" ({upd.detail})"
            else:
                key, on = sorry_from_json(req)
                policy = self._policies.get(key)
                if policy is None or policy.sorry is None:
                    return reply(f"{key_name(key)} has no sorry server in the configuration")
                if on == (key in self._sorry):
                    return reply()
                (self._sorry.add if on else self._sorry.discard)(key)
                what = (f"health: {key_name(key)} sorry server {policy.sorry[0]}:{policy.sorry[1]} "
                        f"{'on' if on else 'off'}")
        except RequestError as e:
            return reply(str(e))
        try:
            changes = diff_requests(self.core, self._wanted())
            self._apply_requests(changes, "health change")
        except (DaemonError, ValueError) as e:
            self._overlay, self._sorry = saved
            log.error("%s: not applied: %s", what, e)
            return reply(f"{what}: not applied: {e}")
        log.info("%s: %d change(s)", what, len(changes))
        if changes:
            await self._after_change()
        return reply(changes=len(changes))


def _socket_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _interface_addrs() -> dict[str, Any]:
    """First IPv4 address of each interface, by name."""
    import ipaddress

    from pyroute2 import IPRoute

    out: dict[str, Any] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2):
            name = names.get(a["index"])
            if name and name not in out:
                out[name] = ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS"))
    return out


def run(opts: Options, load_config: Callable[[Path], list[dict[str, Any]]]) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    daemon = Daemon(opts, load_config)
    try:
        daemon.start()
    except DaemonError as e:
        log.error("%s", e)
        return e.code
    try:
        try:
            import uvloop

            runner: Callable[[Any], Any] = uvloop.run
        except ImportError:   # uvloop is a dependency; plain asyncio keeps tools usable without it
            runner = asyncio.run
        runner(daemon.run())
    except DaemonError as e:
        log.error("%s", e)
        return e.code
    finally:
        daemon.shutdown()
    return daemon.exit_code
