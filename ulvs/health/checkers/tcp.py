"""TCP_CHECK: the dest is up when a TCP connection to it completes (keepalived check_tcp.c)."""

from __future__ import annotations

from ulvs.health.base import Checker, Result, register
from ulvs.health.checkers._io import bounded, close_stream, endpoint, open_stream


class TcpCheck(Checker):
    async def probe(self) -> Result:
        return await bounded(self._connect, self.connect_timeout, f"TCP connect to {endpoint(self.target)}")

    async def _connect(self) -> Result:
        _, writer = await open_stream(self.target)
        await close_stream(writer)
        return Result(True, f"connected to {endpoint(self.target)}")


register("TCP_CHECK", TcpCheck)
