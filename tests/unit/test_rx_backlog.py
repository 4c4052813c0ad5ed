"""A port whose batches() stopped at its budget is read again by the loop on its own, after the
loop's other callbacks, without waiting for its socket to turn readable (TPACKET_V3's poll can
stay quiet with blocks left: see PacketRing.batches)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from ulvs.core import Core
from ulvs.io.base import Batch
from ulvs.runtime.worker import Worker


class BudgetPort:
    """Stops at its budget ``stops`` times, then runs dry; records the loop's order."""

    ifindex = 3
    ifname = "fake0"

    def __init__(self, stops: int, order: list[str]) -> None:
        self.stops, self.order = stops, order
        self.backlog = False
        self.calls = 0

    def batches(self) -> Iterator[Batch]:
        self.calls += 1
        self.order.append("rx")
        self.backlog = self.calls <= self.stops
        yield from ()

    def transmit_forwarded(self, b: Batch, verdicts: object, egress: object, n: int) -> None:
        raise AssertionError("nothing to send")

    def flush(self) -> None:
        pass


def test_a_worker_comes_back_to_a_port_left_with_a_backlog_after_other_callbacks() -> None:
    order: list[str] = []
    port = BudgetPort(stops=2, order=order)
    worker = Worker.__new__(Worker)               # no rings: the loop logic only
    worker.core = Core()
    worker.ports = {port.ifindex: port}           # type: ignore[dict-item]
    worker._timer = None

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(order.append, "control")   # another callback, already waiting
        worker.on_rx(port)                        # type: ignore[arg-type]  # as the reader would
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(go())
    # the first call stopped at its budget; the control callback ran before the second; the
    # second stopped too, the third ran dry and nothing more was scheduled
    assert order == ["rx", "control", "rx", "rx"]
    assert port.calls == 3


def test_the_daemon_comes_back_to_an_attached_port_only() -> None:
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
        asyncio.get_running_loop().call_soon(order.append, "control")
        daemon._on_rx(port)                       # type: ignore[arg-type]
        daemon._on_rx(gone)                       # type: ignore[arg-type]  # detached meanwhile
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(go())
    assert order == ["rx", "rx", "control", "rx"]   # port, gone, control, port again; gone never
    assert (port.calls, gone.calls) == (2, 1)
