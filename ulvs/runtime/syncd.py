"""Connection sync between the two directors of a pair: the transport and the roles.

A thin shell around ``ulvs.sync.proto`` (the wire format, HMAC, sequence numbers) and the core's
sync hooks (``Core.drain_sync``, ``sync_refresh``, ``sync_dump``, ``apply_sync``).  It lives in the
daemon's own event loop, next to the connection table it feeds and is fed by: the records are
made from and applied to that table, so another process would only add two copies of every
record.  What must never wait on a busy dataplane -- the VRRP adverts that decide who is master
-- runs in the VRRP speaker's process (``ulvs.runtime.vrrpd``); a late sync message costs at most
a connection that is younger than the delay.

* **Role.** The state of the VRRP instance named by ``[sync] instance`` (keepalived's
  ``lvs_sync_daemon IF INSTANCE``), or, without one, MASTER if any instance is master: the
  master sends, the backup applies.  Both listen.
* **Master.** Every ``SEND_INTERVAL`` it drains the core's changes (creations, state changes,
  deletions) and re-sends connections whose last record is older than ``REFRESH_AGE`` (so
  long-lived ones do not expire on the backup), packed into as few datagrams as the MTU allows;
  with nothing to say it still sends an empty message every ``HEARTBEAT`` (the backup's lag).
* **Backup.** It applies what it receives to its own table; synced connections wait there
  without traffic (the master holds the addresses) and carry on when it takes over.
* **Bulk resync.** At start, and whenever this director stops being master, it asks for a full
  copy (BULK_REQUEST, repeated every ``BULK_RETRY``); the master answers with every connection
  and BULK_END.  Until that answer, or ``ready_after`` seconds with no answer (no peer), the
  speaker does not preempt (``ready``): a director that comes back does not take over before it
  holds the connections, so failback loses nothing either.
* **Transport.** UDP on ``[sync] interface``, to the multicast group (224.0.0.81:8848, TTL 1, as
  IPVS) or to each of ``peers``; datagrams from ourselves are ignored by boot id.  Without a key
  everything is accepted unauthenticated (a warning at start, like IPVS); with one, every
  message carries an HMAC-SHA256 and anything else is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Any

from ulvs.config.schema import SyncSettings
from ulvs.core import Core
from ulvs.sync import proto

log = logging.getLogger("ulvs.sync")

SEND_INTERVAL = 0.02     # s between drains on the master
REFRESH_AGE = 60.0       # s after which a live connection is sent again
HEARTBEAT = 1.0          # s: an empty message at least this often from the master
BULK_RETRY = 0.5         # s between bulk requests while none is answered
BULK_BATCH = 64          # datagrams sent per loop turn when answering a bulk request
SO_BINDTODEVICE = 25
MASTER = 2
_MREQN = struct.Struct("4s4si")


class SyncError(RuntimeError):
    """The sync settings cannot be put to work (key file, interface)."""


def read_key(settings: SyncSettings, config: Path | None) -> bytes | None:
    """The HMAC key: ``key``, or the first line of ``key_file`` (relative to the config file)."""
    if settings.key is not None:
        return settings.key.encode()
    if settings.key_file is None:
        return None
    path = Path(settings.key_file)
    if not path.is_absolute() and config is not None:
        path = config.parent / path
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SyncError(f"sync.key_file {path}: {e.strerror}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise SyncError(f"sync.key_file {path}: empty")
    return key.encode()


class SyncManager:
    def __init__(self, core: Core, settings: SyncSettings, key: bytes | None, *,
                 ready_after: float) -> None:
        self.core = core
        self.settings = settings
        self.key = key
        self.boot_id = secrets.randbits(63)
        self.encoder = proto.Encoder(settings.syncid, key, self.boot_id)
        self.decoder = proto.Decoder(settings.syncid, key)
        self.role = "backup"
        self.ready = False
        self.ready_after = ready_after
        self.sock = self._open()
        self.dests = ([(str(p), settings.port) for p in settings.peers]
                      or [(str(settings.group), settings.port)])
        self.counters = {"messages_sent": 0, "records_sent": 0, "messages_received": 0,
                         "records_applied": 0, "bulk_requests_sent": 0, "bulk_requests_answered": 0,
                         "bulk_records_sent": 0, "bulk_completed": 0, "send_errors": 0}
        self.dropped: dict[str, int] = {}
        self._last_rx: float | None = None
        self._last_tx = 0.0
        self._last_refresh = 0.0
        self._started = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bulk_wanted = True
        core.enable_sync()
        if key is None:
            log.warning("connection sync on %s is not authenticated (no [sync] key): any host on that "
                        "link can inject connections, as with IPVS", settings.interface)

    def _open(self) -> socket.socket:
        s = self.settings
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, s.interface.encode())
            ifindex = socket.if_nametoindex(s.interface)
            if not s.peers:
                mreqn = _MREQN.pack(s.group.packed, bytes(4), ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.bind(("", s.port))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise SyncError(f"sync on {s.interface} port {s.port}: {e.strerror or e}") from None
        return sock

    # -- running ----------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self._on_readable)
        self._spawn(self._sender())
        self._spawn(self._bulk_requester())
        log.info("connection sync on %s (%s, syncid %d)%s", self.settings.interface,
                 ", ".join(f"{h}:{p}" for h, p in self.dests), self.settings.syncid,
                 ", HMAC-SHA256" if self.key else "")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def vrrp_states(self, states: dict[str, int], now: float) -> None:
        """The VRRP speaker's latest report: derive our role from it."""
        inst = self.settings.instance
        master = states.get(inst) == MASTER if inst is not None else MASTER in states.values()
        role = "master" if master else "backup"
        if role == self.role:
            return
        log.info("connection sync: %s -> %s", self.role, role)
        self.role = role
        if role == "master":
            self.ready = True
            self.core.drain_sync(now)   # what we applied as backup needs no echo
        else:
            self._bulk_wanted = True     # our table may be stale: ask the new master for a copy

    async def _sender(self) -> None:
        while True:
            await asyncio.sleep(SEND_INTERVAL)
            now = time.monotonic()
            records = self.core.drain_sync(now)
            if self.role != "master":
                continue
            if now - self._last_refresh >= 1.0:
                self._last_refresh = now
                records += self.core.sync_refresh(now, REFRESH_AGE)
            if records or now - self._last_tx >= HEARTBEAT:
                self._send(self.encoder.messages(records))
                self.counters["records_sent"] += len(records)

    async def _bulk_requester(self) -> None:
        while True:
            now = time.monotonic()
            if not self.ready and now - self._started >= self.ready_after:
                log.info("connection sync: no bulk resync answer within %g s; going ahead", self.ready_after)
                self.ready = True
            if self._bulk_wanted and self.role != "master":
                self._send([self.encoder.bulk_request()])
                self.counters["bulk_requests_sent"] += 1
            await asyncio.sleep(BULK_RETRY)

    def _send(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            for dest in self.dests:
                try:
                    self.sock.sendto(d, dest)
                    self.counters["messages_sent"] += 1
                except OSError:
                    self.counters["send_errors"] += 1
        self._last_tx = time.monotonic()

    def _on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("connection sync socket: %s", e)
                return
            self._on_datagram(data)

    def _on_datagram(self, data: bytes) -> None:
        msg = self.decoder.feed(data)
        if isinstance(msg, str):
            self.dropped[msg] = self.dropped.get(msg, 0) + 1
            return
        if msg.boot_id == self.boot_id:
            return                                   # our own (unicast to self, looped back)
        now = time.monotonic()
        self.counters["messages_received"] += 1
        if msg.kind == proto.BULK_REQUEST:
            if self.role == "master":
                self.counters["bulk_requests_answered"] += 1
                self._spawn(self._answer_bulk())
            return
        if msg.kind == proto.BULK_END:
            if self._bulk_wanted and self.role != "master":
                self._bulk_wanted = False
                self.counters["bulk_completed"] += 1
                if not self.ready:
                    log.info("connection sync: bulk resync complete (%d connections)", self.core.conn_count())
                self.ready = True
            return
        self._last_rx = now
        if self.role != "master" and msg.records:
            self.counters["records_applied"] += self.core.apply_sync(msg.records, now)

    async def _answer_bulk(self) -> None:
        """Every connection, then BULK_END, a few datagrams per loop turn."""
        now = time.monotonic()
        records = list(self.core.sync_dump(now))
        datagrams = self.encoder.messages(records)
        for i in range(0, len(datagrams), BULK_BATCH):
            self._send(datagrams[i:i + BULK_BATCH])
            await asyncio.sleep(0)
        self._send([self.encoder.bulk_end()])
        self.counters["bulk_records_sent"] += len(records)
        log.info("connection sync: answered a bulk request with %d connections", len(records))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        lag = None if self.role == "master" or self._last_rx is None else round(now - self._last_rx, 3)
        return {"interface": self.settings.interface, "syncid": self.settings.syncid,
                "instance": self.settings.instance,
                "destinations": [f"{h}:{p}" for h, p in self.dests], "authenticated": self.key is not None,
                "role": self.role, "ready": self.ready, "lag_seconds": lag,
                "lost_messages": self.decoder.lost, **self.counters, "dropped": dict(self.dropped),
                "skipped_records": getattr(self.core, "sync_skipped", 0)}
