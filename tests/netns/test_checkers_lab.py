"""Every checker kind against real server processes in the lab, probed from the director.

The probes run inside the director namespace (where the health monitor runs) through
``lab.python("director", PROBE, cases)``: the code builds each ``CheckSpec``/``Target``, awaits
``probe()`` and prints the results as JSON.  Targets are rs1/rs2 on the server LAN (10.77.2.x).
rs1 serves the lab's own HTTP name server (port 80) and UDP echo (5353); rs2 additionally runs
``SERVERS`` below: a TLS HTTP server (443, self-signed certificate from the ``openssl`` CLI),
a minimal SMTP responder (25) and a minimal UDP DNS responder (53).  Assertions are on
outcomes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ulvs.lab import Lab

pytestmark = pytest.mark.netns

UNUSED = "10.77.2.200"   # on the server LAN, held by nobody: ARP goes unanswered
T = 1.0                  # connect_timeout of every probe

PROBE = textwrap.dedent("""
    import asyncio, ipaddress, json, sys
    from ulvs.config.schema import CheckSpec
    from ulvs.health.base import Target, create

    def freeze(v):
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        return v

    async def main(cases):
        out = []
        for kind, host, port, options in cases:
            spec = CheckSpec(kind, tuple(sorted((k, freeze(v)) for k, v in options.items())))
            r = await create(spec, Target(ipaddress.IPv4Address(host), port)).probe()
            out.append({"ok": r.ok, "detail": r.detail, "weight": r.weight})
        return out

    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
""")

SERVERS = textwrap.dedent("""
    import asyncio, signal, ssl, socket, struct, sys

    BODY = b"rs2 over tls\\n"

    async def tls_http(reader, writer):
        try:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(BODY) + BODY)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def smtp(reader, writer):
        try:
            writer.write(b"220 rs2 ESMTP ready\\r\\n")
            while line := await reader.readline():
                verb = line.split(b" ")[0].strip().upper()
                if verb in (b"HELO", b"EHLO"):
                    writer.write(b"250 rs2\\r\\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\\r\\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"502 not implemented\\r\\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    class Dns(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            if len(data) < 17:
                return
            qid, flags = struct.unpack_from("!HH", data)
            i = 12
            while i < len(data) and data[i]:
                i += 1 + data[i]
            end = i + 5                     # root label + qtype + qclass
            if end > len(data):
                return
            question = data[12:end]
            head = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1, 0, 0)
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("10.77.2.12")
            self.transport.sendto(head + question + answer, addr)

    async def main(certdir):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{certdir}/cert.pem", f"{certdir}/key.pem")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        servers = [await asyncio.start_server(tls_http, "0.0.0.0", 443, ssl=ctx, reuse_address=True),
                   await asyncio.start_server(smtp, "0.0.0.0", 25, reuse_address=True)]
        transport, _ = await loop.create_datagram_endpoint(Dns, local_addr=("0.0.0.0", 53))
        print("ready", flush=True)
        await stop.wait()
        transport.close()
        for s in servers:
            s.close()

    asyncio.run(main(sys.argv[1]))
""")

MISC_SCRIPT = textwrap.dedent("""
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    except OSError:
        sys.exit(1)
    sys.exit(int(sys.argv[3]))
""")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ulvs-checkers-lab-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def rs2_servers(lab: Lab, tmp: Path) -> Iterator[None]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=rs2.lab", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    proc = lab.popen("rs2", [sys.executable, "-c", SERVERS, str(tmp)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()   # the servers print "ready" once bound (or exit)
        if line.strip() != b"ready":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"rs2 servers did not start: {err.decode(errors='replace')}")
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def probe(lab: Lab, *cases: tuple[str, str, int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Run each (kind, host, port, options) probe in the director namespace; their results."""
    out = lab.python("director", PROBE, json.dumps([list(c) for c in cases]), timeout=60)
    assert out.returncode == 0, out.stderr
    results: list[dict[str, Any]] = json.loads(out.stdout)
    assert len(results) == len(cases)
    return results


def rs(lab: Lab, name: str) -> str:
    addr = lab.addr(name)
    assert addr.startswith("10.77.2.")
    return addr


def test_tcp_check(lab: Lab) -> None:
    up, closed = probe(lab, ("TCP_CHECK", rs(lab, "rs1"), 80, {"connect_timeout": T}),
                       ("TCP_CHECK", rs(lab, "rs1"), 81, {"connect_timeout": T}))
    assert up["ok"] is True, up
    assert closed["ok"] is False, closed


def test_http_get(lab: Lab) -> None:
    rs1 = rs(lab, "rs1")
    [page] = lab.http_get("director", rs1)
    assert page.status == 200 and page.body is not None, page
    digest = hashlib.md5(page.body.encode()).hexdigest()
    wrong = hashlib.md5(b"not rs1's page").hexdigest()
    opts: dict[str, Any] = {"connect_timeout": T}
    results = probe(
        lab,
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "status_code": 200}]}),
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "digest": digest}]}),
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "regex": "^rs1$",
                                                "regex_options": "multiline"}]}),
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "status_code": 200, "digest": digest,
                                                "regex": "rs1"}]}),
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "status_code": 404}]}),
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "digest": wrong}]}),
        ("HTTP_GET", rs1, 80, {**opts, "url": [{"path": "/", "regex": "rs2"}]}),
    )
    assert [r["ok"] for r in results] == [True, True, True, True, False, False, False], results


@pytest.mark.usefixtures("rs2_servers")
def test_ssl_get(lab: Lab) -> None:
    rs2 = rs(lab, "rs2")
    good, wrong_status = probe(
        lab,
        ("SSL_GET", rs2, 443, {"connect_timeout": T, "url": [{"path": "/", "status_code": 200,
                                                              "regex": "rs2 over tls"}]}),
        ("SSL_GET", rs2, 443, {"connect_timeout": T, "url": [{"path": "/", "status_code": 404}]}),
    )
    assert good["ok"] is True, good
    assert wrong_status["ok"] is False, wrong_status


@pytest.mark.usefixtures("rs2_servers")
def test_smtp_check(lab: Lab) -> None:
    up, closed = probe(lab, ("SMTP_CHECK", rs(lab, "rs2"), 25, {"connect_timeout": T}),
                       ("SMTP_CHECK", rs(lab, "rs1"), 25, {"connect_timeout": T}))
    assert up["ok"] is True, up
    assert closed["ok"] is False, closed


@pytest.mark.usefixtures("rs2_servers")
def test_dns_check(lab: Lab) -> None:
    up, no_server = probe(
        lab,
        ("DNS_CHECK", rs(lab, "rs2"), 53, {"connect_timeout": T, "name": "rs2.lab", "type": "A"}),
        ("DNS_CHECK", rs(lab, "rs1"), 53, {"connect_timeout": T, "name": "rs2.lab", "type": "A"}),
    )
    assert up["ok"] is True, up
    assert no_server["ok"] is False, no_server


def test_udp_check(lab: Lab) -> None:
    rs1 = rs(lab, "rs1")
    echoed = (b"rs1:" + b"hi").hex()      # the echo server prefixes its name (ulvs.lab.servers)
    opts: dict[str, Any] = {"connect_timeout": T, "payload": b"hi".hex()}
    match, mismatch, closed = probe(
        lab,
        ("UDP_CHECK", rs1, lab.udp_port, {**opts, "require_reply": echoed}),
        ("UDP_CHECK", rs1, lab.udp_port, {**opts, "require_reply": (b"rs2:hi").hex()}),
        ("UDP_CHECK", rs1, lab.udp_port + 1, {**opts, "require_reply": True}),
    )
    assert match["ok"] is True, match
    assert mismatch["ok"] is False, mismatch
    assert closed["ok"] is False, closed


def test_ping_check(lab: Lab) -> None:
    up, unused = probe(lab, ("PING_CHECK", rs(lab, "rs1"), 0, {"connect_timeout": T}),
                       ("PING_CHECK", UNUSED, 0, {"connect_timeout": T}))
    assert up["ok"] is True, up
    assert unused["ok"] is False, unused


def test_misc_check(lab: Lab, tmp: Path) -> None:
    script = tmp / "misc_check.py"
    script.write_text(MISC_SCRIPT)
    rs1 = rs(lab, "rs1")

    def cmd(port: int, exit_code: int) -> str:
        return f"{sys.executable} {script} {rs1} {port} {exit_code}"

    up, down, dynamic = probe(
        lab,
        ("MISC_CHECK", rs1, 80, {"misc_path": cmd(80, 0), "misc_timeout": 10}),
        ("MISC_CHECK", rs1, 80, {"misc_path": cmd(81, 0), "misc_timeout": 10}),
        ("MISC_CHECK", rs1, 80, {"misc_path": cmd(80, 5), "misc_timeout": 10, "misc_dynamic": True}),
    )
    assert up["ok"] is True, up
    assert down["ok"] is False, down
    assert dynamic["ok"] is True and dynamic["weight"] == 3, dynamic


def test_file_check(lab: Lab, tmp: Path) -> None:
    track = tmp / "track"
    case = ("FILE_CHECK", rs(lab, "rs1"), 80, {"track_file": str(track), "weight": 0})
    track.write_text("0\n")
    [up] = probe(lab, case)
    track.write_text("1\n")
    [down] = probe(lab, case)
    assert up["ok"] is True, up
    assert down["ok"] is False, down


def test_nanny(lab: Lab) -> None:
    opts: dict[str, Any] = {"connect_timeout": T, "send": "GET / HTTP/1.0\r\n\r\n", "use_regex": True}
    up, wrong = probe(lab, ("NANNY", rs(lab, "rs1"), 80, {**opts, "expect": "HTTP/1.[01] 200"}),
                      ("NANNY", rs(lab, "rs1"), 80, {**opts, "expect": "HTTP/1.[01] 404"}))
    assert up["ok"] is True, up
    assert wrong["ok"] is False, wrong
