"""What the socket probes share: one bound per attempt, failures as results, stream open/close.

A probe body raises ``Failed("reason")`` when the server answers wrongly; ``bounded`` turns that,
a timeout and every socket or TLS error into ``Result(ok=False, detail=...)`` so that network
input never escapes a probe as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable

from ulvs.health.base import Result, Target

CLOSE_GRACE = 0.5   # s a finished probe waits for its connection to close before aborting it


class Failed(Exception):
    """The server answered, but not as the check requires (the message is the reason)."""


async def bounded(body: Callable[[], Awaitable[Result]], timeout: float | None, what: str) -> Result:
    """Run one probe attempt under ``timeout`` seconds (None: the body bounds itself); every
    network outcome becomes a Result."""
    try:
        async with asyncio.timeout(timeout):
            return await body()
    except Failed as e:
        return Result(False, f"{what}: {e}")
    except TimeoutError:
        return Result(False, f"{what}: no answer within {timeout or 0:g} s")
    except asyncio.IncompleteReadError as e:
        return Result(False, f"{what}: connection closed before the answer was complete (short read, "
                             f"{len(e.partial)} bytes of the last part)")
    except asyncio.LimitOverrunError:
        return Result(False, f"{what}: line too long")
    except ssl.SSLError as e:
        return Result(False, f"{what}: TLS error: {e.reason or e}")
    except OSError as e:
        return Result(False, f"{what}: {describe_oserror(e)}")


def describe_oserror(e: OSError) -> str:
    if e.errno is not None and e.errno in errno.errorcode:
        return f"{e.strerror or errno.errorcode[e.errno]} ({errno.errorcode[e.errno]})"
    return str(e) or type(e).__name__


def endpoint(target: Target) -> str:
    return f"{target.host}:{target.port}"


async def open_stream(target: Target, tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None,
                      limit: int = 64 * 1024) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP (or TLS) connection to the target from its chosen source address and port.

    ``server_hostname`` is the TLS SNI name; "" sends none."""
    if tls is None:
        return await asyncio.open_connection(target.host, target.port, local_addr=target.source,
                                             limit=limit)
    return await asyncio.open_connection(target.host, target.port, local_addr=target.source,
                                         limit=limit, ssl=tls, server_hostname=server_hostname or "")


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close politely for a moment, then abort; never raises (the verdict is already known)."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()


async def read_until(reader: asyncio.StreamReader, done: Callable[[bytes], bool],
                     limit: int) -> bytes:
    """Read until ``done(data)``, end of stream or ``limit`` bytes; returns what was read."""
    data = b""
    while not done(data) and len(data) < limit:
        chunk = await reader.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill a child started with ``start_new_session`` and everything it started, then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def udp_socket(target: Target) -> socket.socket:
    """A non-blocking UDP socket bound to the target's source and connected to the target, so
    the kernel delivers only its datagrams and reports ICMP unreachables as errors."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if target.source is not None:
            sock.bind(target.source)
        sock.connect((target.host, target.port))
    except OSError:
        sock.close()
        raise
    return sock
