"""Real-server stand-in for the lab: a small HTTP/1.1 server and a UDP echo server in one process.

Run inside a real server's namespace (the lab does this for you)::

    python -m ulvs.lab.servers --name rs1 --http-port 80 --udp-port 5353

HTTP: every ``GET``/``HEAD`` answers ``200`` with the body ``<name>\\n`` and an ``X-Real-Server``
header, except ``/bytes/N`` which streams N deterministic bytes (``ulvs.lab.pattern``) with a
``Content-Length``, so large downloads (hundreds of MB) can be checked end to end without storing
them.  Connections are HTTP/1.1 keep-alive unless the client asks otherwise (RFC 9112 §9.3).
UDP: every datagram is answered with ``<name>:`` + payload, from the address it was sent to.

Both listen on 0.0.0.0 so a DR real server (VIP on ``lo``) answers for the VIP too.  Once both
sockets are bound the process prints ``ready`` on stdout (the lab waits for that line) and then
never writes to stdout again.  Imports only the stdlib and ``ulvs.lab.pattern``: it must start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import struct
import sys

from ulvs.lab.pattern import MAX_BYTES, PATTERN

_MAX_HEADER = 16384
_CHUNK = len(PATTERN)
# Linux <netinet/in.h>: IP_PKTINFO = 8, struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr;}.
IP_PKTINFO = 8
_PKTINFO = struct.Struct("=i4s4s")


def _response_head(status: str, length: int, name: str, keep_alive: bool) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: text/plain\r\n"
        f"Content-Length: {length}\r\n"
        f"X-Real-Server: {name}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("ascii")


async def _handle_http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = f"{name}\n".encode()
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_response_head("431 Request Header Fields Too Large", 0, name, False))
                break
            except asyncio.IncompleteReadError:
                break  # clean or mid-request close by the client
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                writer.write(_response_head("400 Bad Request", 0, name, False))
                break
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip().lower()
            conn = headers.get("connection", "")
            keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            # Request bodies are not expected; drain a declared one so keep-alive stays in sync.
            length = int(headers.get("content-length", "0") or "0")
            if length:
                await reader.readexactly(length)
            if method not in ("GET", "HEAD"):
                writer.write(_response_head("405 Method Not Allowed", 0, name, keep_alive))
            elif target.startswith("/bytes/"):
                try:
                    n = int(target[len("/bytes/") :])
                except ValueError:
                    n = -1
                if not 0 <= n <= MAX_BYTES:
                    writer.write(_response_head("400 Bad Request", 0, name, keep_alive))
                else:
                    writer.write(_response_head("200 OK", n, name, keep_alive))
                    if method == "GET":
                        view = memoryview(PATTERN)
                        while n > 0:
                            take = min(n, _CHUNK)
                            writer.write(view[:take])
                            n -= take
                            await writer.drain()
            else:
                writer.write(_response_head("200 OK", len(body), name, keep_alive))
                if method == "GET":
                    writer.write(body)
            await writer.drain()
            if not keep_alive:
                break
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _udp_echo(sock: socket.socket, prefix: bytes) -> None:
    """Answer every queued datagram from the address it was sent to.

    A 0.0.0.0 socket would otherwise pick the source by route, i.e. the LAN address rather than a
    DR VIP held on ``lo``; IP_PKTINFO (ip(7)) gives the request's destination, reused as source.
    """
    while True:
        try:
            data, anc, _, addr = sock.recvmsg(65535, socket.CMSG_SPACE(_PKTINFO.size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # e.g. a queued ICMP error from an earlier reply
        cmsgs = []
        for level, kind, cdata in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(cdata) >= _PKTINFO.size:
                _, _, dst = _PKTINFO.unpack_from(cdata)
                cmsgs = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, dst, bytes(4)))]
        try:
            sock.sendmsg([prefix + data], cmsgs, 0, addr)
        except OSError:
            pass


async def serve(name: str, http_port: int, udp_port: int, host: str = "0.0.0.0") -> None:
    """Serve HTTP and UDP echo until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle_http(name, reader, writer)

    server = await asyncio.start_server(
        handler, host, http_port, reuse_address=True, backlog=1024, limit=_MAX_HEADER
    )
    udp = _udp_socket(host, udp_port)
    loop.add_reader(udp.fileno(), _udp_echo, udp, f"{name}:".encode())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # Never write to stdout again: the lab closes its end of the pipe after reading "ready".
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(udp.fileno())
        udp.close()
        server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ulvs lab real server: HTTP name/bytes server + UDP echo")
    p.add_argument("--name", required=True, help="name answered in bodies and echoes, e.g. rs1")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--udp-port", type=int, default=5353)
    p.add_argument("--host", default="0.0.0.0")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.name, args.http_port, args.udp_port, args.host))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
