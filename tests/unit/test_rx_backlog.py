"""A port whose batches() stopped at its budget is read again by the loop on its own, after the
loop's other callbacks, without waiting for its socket to turn readable (TPACKET_V3's poll can
stay quiet with blocks left: see PacketRing.batches)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

from ulvs.core import Core
from ulvs.io.base import Batch
from ulvs.runtime.rxwatch import RxWatch
from ulvs.runtime.worker import Worker


class BudgetPort:
    """Stops at its budget ``stops`` times, then runs dry; records the loop's order.  Its
    "socket" is a pipe that never turns readable."""

    ifindex = 3
    ifname = "fake0"
    paced = False

    def __init__(self, stops: int, order: list[str]) -> None:
        self.stops, self.order = stops, order
        self.backlog = False
        self.calls = 0
        self.r, self.w = os.pipe()

    def fileno(self) -> int:
        return self.r

    def batches(self) -> Iterator[Batch]:
        self.calls += 1
        self.order.append("rx")
        self.backlog = self.calls <= self.stops
        yield from ()

    def transmit_forwarded(self, b: Batch, verdicts: object, egress: object, n: int) -> None:
        raise AssertionError("nothing to send")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_a_worker_comes_back_to_a_port_left_with_a_backlog_after_other_callbacks() -> None:
    order: list[str] = []
    port = BudgetPort(stops=2, order=order)
    worker = Worker.__new__(Worker)               # no rings: the loop logic only
    worker.core = Core()
    worker.ports = {port.ifindex: port}           # type: ignore[dict-item]
    worker._timer = None

    async def go() -> None:
        loop = asyncio.get_running_loop()
        rx = RxWatch(loop)
        rx.watch(port, worker.on_rx)
        loop.call_soon(order.append, "control")   # another callback, already waiting
        rx._on_socket(rx._watches[id(port)])      # as the loop would on a readable socket
        for _ in range(5):
            await asyncio.sleep(0)
        rx.close()

    try:
        asyncio.run(go())
    finally:
        port.close()
    # the first call stopped at its budget; the control callback ran before the second; the
    # second stopped too, the third ran dry and nothing more was scheduled
    assert order == ["rx", "control", "rx", "rx"]
    assert port.calls == 3


def test_the_daemon_comes_back_to_a_watched_port_only() -> None:
    from ulvs.runtime.daemon import Daemon

    order: list[str] = []
    port, gone = BudgetPort(stops=1, order=order), BudgetPort(stops=5, order=order)
    gone.ifindex = 4
    daemon = Daemon.__new__(Daemon)               # no rings, no control socket: the loop logic
    daemon.core = Core()
    daemon.ports = {port.ifindex: port}           # type: ignore[dict-item]
    daemon.resolver = None
    daemon.tap = None
    daemon._timer = None

    async def go() -> None:
        loop = asyncio.get_running_loop()
        rx = RxWatch(loop)
        rx.watch(port, daemon._on_rx)
        rx.watch(gone, daemon._on_rx)
        loop.call_soon(order.append, "control")
        rx._on_socket(rx._watches[id(port)])
        rx._on_socket(rx._watches[id(gone)])
        rx.unwatch(gone)                          # detached meanwhile
        for _ in range(5):
            await asyncio.sleep(0)
        rx.close()

    try:
        asyncio.run(go())
    finally:
        port.close()
        gone.close()
    assert order == ["rx", "rx", "control", "rx"]   # port, gone, control, port again; gone never
    assert (port.calls, gone.calls) == (2, 1)
