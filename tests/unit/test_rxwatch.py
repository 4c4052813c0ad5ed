"""Receive pacing: a port that wakes the loop for every frame is read on a timer while busy,
and handed back to its socket when a tick finds less than a batch (ulvs.runtime.rxwatch)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from ulvs.io.base import Batch
from ulvs.runtime.rxwatch import Pacing, RxWatch, Timerfd

I = 100e-6

# (now, frames, by_timer) -> polling afterwards, in sequence from a fresh Pacing(I)
STEPS = [
    ((0.0, 1, False), False),          # the first wakeup: nothing to compare with
    ((0.5, 1, False), False),          # woken again long after: stays on the socket
    ((0.5 + I / 2, 1, False), True),   # woken again within the interval: to the timer
    ((0.5 + 2 * I, 3, True), True),    # a tick that finds a batch: keeps polling
    ((0.5 + 3 * I, 2, True), True),
    ((0.5 + 4 * I, 1, True), False),   # a tick with one frame: back to the socket
    ((0.5 + 4.5 * I, 0, False), False),  # a wakeup that found nothing does not start polling
    ((0.5 + 4.8 * I, 1, False), True),
    ((0.5 + 5.8 * I, 0, True), False),   # an empty tick: back to the socket
]


def test_pacing_steps() -> None:
    p = Pacing(I)
    for (now, frames, by_timer), polling in STEPS:
        assert p.step(now, frames, by_timer) is polling, (now, frames, by_timer)
    assert (p.ticks, p.wakeups) == (4, 5)


class PipePort:
    """A paced port whose frames are the bytes written to a pipe, one frame per byte."""

    ifindex = 7
    ifname = "pipe0"
    paced = True
    backlog = False

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def fileno(self) -> int:
        return self.r

    def send(self, frames: int) -> None:
        os.write(self.w, b"x" * frames)

    def batches(self) -> Iterator[Batch]:
        try:
            got = os.read(self.r, 4096)
        except BlockingIOError:
            return
        b = Batch()
        b.count = len(got)
        yield b

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_a_busy_paced_port_is_read_on_the_timer_and_handed_back_when_idle() -> None:
    port = PipePort()
    reads: list[tuple[str, int]] = []
    fake_now = [10.0]

    async def go() -> None:
        loop = asyncio.get_running_loop()
        rx = RxWatch(loop, interval=0.05, clock=lambda: fake_now[0])
        w_ = None

        def read(p: PipePort) -> int:
            n = sum(b.count for b in p.batches())
            reads.append(("tick" if w_ is not None and w_.by_timer else "socket", n))
            return n

        rx.watch(port, read)
        w_ = rx._watches[id(port)]

        async def until(count: int) -> None:
            for _ in range(2000):           # a hang guard, not a time limit on the behaviour
                if len(reads) >= count:
                    return
                await asyncio.sleep(0.001)
            raise AssertionError(f"only {reads}")

        port.send(1)
        await until(1)                     # on the socket, the first time
        assert w_.listening and not rx.pacing(port).polling   # type: ignore[union-attr]
        fake_now[0] += 0.01                # within the interval of the last read
        port.send(1)
        await until(2)
        assert not w_.listening and rx.pacing(port).polling   # type: ignore[union-attr]
        port.send(3)                       # not read until the tick: the socket is not watched
        await until(3)
        assert reads[2] == ("tick", 3)
        assert rx.pacing(port).polling     # type: ignore[union-attr]
        await until(4)                     # the next tick finds nothing: back to the socket
        assert reads[3] == ("tick", 0)
        assert w_.listening and not rx.pacing(port).polling   # type: ignore[union-attr]
        fake_now[0] += 1.0
        port.send(1)
        await until(5)
        assert reads[4] == ("socket", 1)
        rx.close()
        assert not rx._watches

    try:
        asyncio.run(go())
    finally:
        port.close()
    assert len(reads) == 5


@pytest.mark.parametrize(("paced", "interval"), [(False, 0.001), (True, 0.0)],
                         ids=["unpaced-port", "pacing-off"])
def test_no_timer_for_an_unpaced_port_or_with_pacing_off(paced: bool, interval: float) -> None:
    port = PipePort()
    port.paced = paced                     # type: ignore[misc]

    async def go() -> None:
        rx = RxWatch(asyncio.get_running_loop(), interval=interval)
        rx.watch(port, lambda p: 0)
        assert rx.pacing(port) is None and rx._watches[id(port)].timer is None
        assert rx.counters(port) == {}
        rx.close()

    try:
        asyncio.run(go())
    finally:
        port.close()


def test_timerfd_ticks_and_stops() -> None:
    import select

    t = Timerfd()
    try:
        t.start(0.001)
        assert select.select([t.fd], [], [], 5)[0] == [t.fd]
        t.stop()
        assert select.select([t.fd], [], [], 0.05)[0] == []   # disarmed and cleared
    finally:
        t.close()
    assert t.fd == -1


def test_ulvs_run_takes_rx_pace_in_microseconds_and_refuses_a_bad_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from typing import Any

    from ulvs.cli.main import main
    from ulvs.runtime import cli as run_cli
    from ulvs.runtime.daemon import Options

    started: list[Options] = []

    def fake_run(opts: Options, load: Any) -> int:
        started.append(opts)
        return 0

    monkeypatch.setattr(run_cli, "run", fake_run)
    assert main(["run"]) == 0
    assert started[-1].rx_pace == 0                   # off unless asked for
    assert main(["run", "--rx-ring", "lanes", "--rx-pace", "300"]) == 0
    assert started[-1].rx_pace == pytest.approx(300e-6)
    for bad in ("-1", "100001"):
        assert main(["run", "--rx-pace", bad]) == 2
        assert "--rx-pace must be between 0 and 100000 microseconds" in capsys.readouterr().err
    assert len(started) == 2
