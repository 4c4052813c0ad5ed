"""TCP_CHECK, HTTP_GET, SSL_GET and SMTP_CHECK against real servers on 127.0.0.1, and checkers
built from a parsed keepalived.conf.  Each test runs on asyncio's loop and on uvloop (the
health monitor's)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ulvs.config.keepalived import parse
from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, create
from ulvs.health.checkers import http

LOCAL = ipaddress.IPv4Address("127.0.0.1")
TIMEOUT = 0.3
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def checker(kind: str, port: int, **options: Any) -> Checker:
    options.setdefault("connect_timeout", TIMEOUT)
    return create(CheckSpec(kind, tuple(sorted(options.items()))), Target(LOCAL, port))


@contextlib.asynccontextmanager
async def server(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


async def probe_against(handler: Handler, kind: str, tls: ssl.SSLContext | None = None,
                        **options: Any) -> Result:
    async with server(handler, tls) as port:
        return await checker(kind, port, **options).probe()


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- HTTP servers ----------------------------------------------------------------------------

def http_reply(status: int = 200, body: bytes = b"hello", headers: str | None = None) -> bytes:
    head = f"Content-Length: {len(body)}\r\n" if headers is None else headers
    return f"HTTP/1.1 {status} X\r\n{head}\r\n".encode() + body


def responder(reply: bytes | Callable[[bytes], bytes], seen: list[bytes] | None = None,
              close: bool = True) -> Handler:
    """Reads one request head, records it, writes ``reply`` (or ``reply(head)``)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            if seen is not None:
                seen.append(head)
            writer.write(reply(head) if callable(reply) else reply)
            await writer.drain()
            if close:
                writer.close()
            else:
                await asyncio.sleep(10)
    return handle


def url(path: str = "/", **options: Any) -> dict[str, Any]:
    return {"path": path, **options}


def http_get(reply: bytes, *urls: dict[str, Any], seen: list[bytes] | None = None,
             close: bool = True, **options: Any) -> Awaitable[Result]:
    return probe_against(responder(reply, seen, close), "HTTP_GET", url=urls or (url(),), **options)


# -- TCP_CHECK -------------------------------------------------------------------------------

async def _idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


def test_tcp_connects(run: Any) -> None:
    result = run(probe_against(_idle, "TCP_CHECK"))
    assert result.ok and "connected" in result.detail


def test_tcp_refused(run: Any) -> None:
    result = run(checker("TCP_CHECK", closed_port()).probe())
    assert not result.ok and "ECONNREFUSED" in result.detail


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A listener that never accepts, its accept queue filled, so new SYNs are dropped."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        addr = listener.getsockname()
        for _ in range(16):
            client = stack.enter_context(socket.socket())
            client.settimeout(0.2)
            try:
                client.connect(addr)
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled")
        yield addr[1]


def test_tcp_timeout(run: Any) -> None:
    with full_backlog() as port:
        result = run(checker("TCP_CHECK", port).probe())
    assert not result.ok and "no answer within 0.3 s" in result.detail


def test_tcp_binds_source_port(run: Any) -> None:
    peers: list[tuple[str, int]] = []
    source = closed_port()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        writer.close()

    async def go() -> Result:
        async with server(record) as port:
            spec = CheckSpec("TCP_CHECK", (("connect_timeout", TIMEOUT),))
            target = Target(ipaddress.IPv4Address("127.0.0.9"), 1, connect_ip=LOCAL, connect_port=port,
                            bindto=ipaddress.IPv4Address("127.0.0.2"), bind_port=source)
            result = await create(spec, target).probe()
            await asyncio.sleep(0.05)
            return result

    assert run(go()).ok
    assert peers == [("127.0.0.2", source)]


# -- HTTP_GET --------------------------------------------------------------------------------

def test_http_default_status_range(run: Any) -> None:
    assert run(http_get(http_reply(204, b"", ""))).ok
    result = run(http_get(http_reply(500)))
    assert not result.ok and "status 500 not in 200-299" in result.detail


@pytest.mark.parametrize(("status_code", "status", "ok"), [
    (200, 200, True), (201, 200, False), ("301", 301, True), ("200-299,301", 301, True),
    ("200-299,301", 302, False), ([200, "404-405"], 404, True), ((200, "404-405"), 403, False),
])
def test_http_status_code_forms(run: Any, status_code: Any, status: int, ok: bool) -> None:
    result = run(http_get(http_reply(status), url(status_code=status_code)))
    assert result.ok is ok


@pytest.mark.parametrize("bad", ["2000", "299-200", "abc", True, 99])
def test_http_bad_status_code_is_a_config_error(bad: Any) -> None:
    with pytest.raises(CheckerError):
        checker("HTTP_GET", 80, url=(url(status_code=bad),))


def test_http_digest(run: Any) -> None:
    body = b"<html>ok</html>"
    good = hashlib.md5(body).hexdigest()
    assert run(http_get(http_reply(body=body), url(digest=good.upper()))).ok
    result = run(http_get(http_reply(body=body + b"!"), url(digest=good)))
    assert not result.ok and f"!= {good}" in result.detail


def test_http_regex(run: Any) -> None:
    reply = http_reply(body=b"status: GREEN\n")
    assert run(http_get(reply, url(regex="status: (GREEN|AMBER)"))).ok
    assert not run(http_get(reply, url(regex="RED"))).ok
    assert run(http_get(reply, url(regex="RED", regex_no_match=True))).ok
    assert not run(http_get(reply, url(regex="GREEN", regex_no_match=True))).ok
    assert run(http_get(reply, url(regex="green", regex_options="caseless"))).ok
    assert not run(http_get(reply, url(regex="GREEN", regex_min_offset=9))).ok
    assert run(http_get(reply, url(regex="GREEN", regex_max_offset=8))).ok
    assert not run(http_get(reply, url(regex="GREEN", regex_max_offset=7))).ok


def test_http_regex_option_unknown_is_a_config_error() -> None:
    with pytest.raises(CheckerError, match="not supported"):
        checker("HTTP_GET", 80, url=(url(regex="x", regex_options="ungreedy"),))


def test_http_host_header(run: Any) -> None:
    seen: list[bytes] = []
    reply = http_reply()
    assert run(http_get(reply, url("/a"), url("/b", virtualhost="b.example"), seen=seen,
                        virtualhost="site.example")).ok
    assert b"GET /a HTTP/1.0\r\n" in seen[0] and b"\r\nHost: site.example\r\n" in seen[0]
    assert b"GET /b HTTP/1.0\r\n" in seen[1] and b"\r\nHost: b.example\r\n" in seen[1]
    assert b"Connection" not in seen[0]
    seen.clear()
    assert run(http_get(reply, seen=seen)).ok
    assert b"\r\nHost: 127.0.0.1:" in seen[0]


def test_http_1_0c_sends_connection_close(run: Any) -> None:
    seen: list[bytes] = []
    assert run(http_get(http_reply(), seen=seen, http_protocol="1.0C")).ok
    assert seen[0].startswith(b"GET / HTTP/1.0\r\n") and b"\r\nConnection: close\r\n" in seen[0]


def test_http_1_1_chunked(run: Any) -> None:
    seen: list[bytes] = []
    body = b"first chunk, second chunk"
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"d;ext=1\r\nfirst chunk, \r\nc\r\nsecond chunk\r\n0\r\nX-Trailer: 1\r\n\r\n")
    result = run(http_get(chunked, url(digest=hashlib.md5(body).hexdigest()), seen=seen,
                          close=False, http_protocol="1.1"))
    assert result.ok, result.detail
    assert seen[0].startswith(b"GET / HTTP/1.1\r\n") and b"\r\nConnection: close\r\n" in seen[0]


def test_http_bad_chunk(run: Any) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    result = run(http_get(reply, http_protocol="1.1"))
    assert not result.ok and "bad chunk size" in result.detail


def test_http_content_length_ends_the_body_on_an_open_connection(run: Any) -> None:
    body = b"exactly this"
    result = run(http_get(http_reply(body=body) + b"EXTRA", url(digest=hashlib.md5(body).hexdigest()),
                          close=False))
    assert result.ok, result.detail


def test_http_body_until_close_without_length(run: Any) -> None:
    body = b"read to the end"
    result = run(http_get(http_reply(body=body, headers=""), url(digest=hashlib.md5(body).hexdigest())))
    assert result.ok, result.detail


def test_http_short_body(run: Any) -> None:
    result = run(http_get(http_reply(headers="Content-Length: 100\r\n", body=b"only ten!!")))
    assert not result.ok and "short read" in result.detail


def test_http_slow_server_times_out(run: Any) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    result = run(probe_against(silent, "HTTP_GET", url=(url(),)))
    assert not result.ok and "no answer within 0.3 s" in result.detail


@pytest.mark.parametrize(("reply", "reason"), [
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "bad Content-Length"),
    (b"\x00\xff garbage without end", "short read"),
])
def test_http_garbage(run: Any, reply: bytes, reason: str) -> None:
    result = run(http_get(reply))
    assert not result.ok and reason in result.detail


def test_http_refused(run: Any) -> None:
    result = run(checker("HTTP_GET", closed_port(), url=(url(),)).probe())
    assert not result.ok and "ECONNREFUSED" in result.detail


def test_http_body_is_bounded(run: Any) -> None:
    big = b"x" * (http.MAX_BODY + 10)
    assert run(http_get(http_reply(body=big))).ok
    result = run(http_get(http_reply(body=big), url(digest=hashlib.md5(big).hexdigest())))
    assert not result.ok and "digest and regex cannot be checked" in result.detail


def test_http_every_url_must_pass(run: Any) -> None:
    def by_path(head: bytes) -> bytes:
        return http_reply(404 if head.startswith(b"GET /missing") else 200)

    result = run(probe_against(responder(by_path), "HTTP_GET", url=(url("/"), url("/missing"))))
    assert not result.ok and "/missing" in result.detail and "status 404" in result.detail
    assert run(probe_against(responder(by_path), "HTTP_GET", url=(url("/"), url("/also")))).ok


def test_http_skips_interim_responses(run: Any) -> None:
    assert run(http_get(b"HTTP/1.1 100 Continue\r\n\r\n" + http_reply())).ok


# -- SSL_GET ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(crt), "-days", "2", "-subj", "/CN=rs.example"],
                   check=True, capture_output=True)
    return crt, key


def tls_server(cert: tuple[Path, Path], sni: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)

    def record(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        sni.append(name)
    ctx.sni_callback = record
    return ctx


def test_ssl_get(run: Any, cert: tuple[Path, Path]) -> None:
    sni: list[str | None] = []
    body = b"secure"
    result = run(probe_against(responder(http_reply(body=body)), "SSL_GET", tls_server(cert, sni),
                               url=(url(digest=hashlib.md5(body).hexdigest()),)))
    assert result.ok, result.detail
    assert sni == [None]


def test_ssl_get_sni(run: Any, cert: tuple[Path, Path]) -> None:
    sni: list[str | None] = []
    handler = responder(http_reply())
    urls = (url("/a"), url("/b", virtualhost="b.example"))
    assert run(probe_against(handler, "SSL_GET", tls_server(cert, sni), url=urls,
                             virtualhost="site.example", enable_sni=True)).ok
    assert sni == ["site.example", "b.example"]
    sni.clear()
    assert run(probe_against(handler, "SSL_GET", tls_server(cert, sni), url=urls,
                             virtualhost="site.example", enable_sni=True, sni_name="sni.example")).ok
    assert sni == ["sni.example", "sni.example"]


def test_ssl_get_against_plain_http_fails(run: Any) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(http_reply(400))
        writer.close()

    result = run(probe_against(plain, "SSL_GET", url=(url(),)))
    assert not result.ok and "TLS error" in result.detail


def test_ssl_get_status_checked(run: Any, cert: tuple[Path, Path]) -> None:
    result = run(probe_against(responder(http_reply(503)), "SSL_GET", tls_server(cert, []), url=(url(),)))
    assert not result.ok and "status 503" in result.detail


# -- SMTP_CHECK ------------------------------------------------------------------------------

def smtp_server(greeting: bytes = b"220-mx.example ESMTP\r\n220 ready\r\n", helo_reply: bytes = b"250 hi\r\n",
                seen: list[bytes] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            writer.write(greeting)
            while line := await reader.readline():
                if seen is not None:
                    seen.append(line)
                if line.startswith(b"HELO"):
                    writer.write(helo_reply)
                elif line.startswith(b"QUIT"):
                    writer.write(b"221 bye\r\n")
                    writer.close()
                    return
    return handle


def test_smtp_dialog(run: Any) -> None:
    seen: list[bytes] = []
    result = run(probe_against(smtp_server(seen=seen), "SMTP_CHECK", helo_name="lb.example"))
    assert result.ok, result.detail
    assert seen == [b"HELO lb.example\r\n", b"QUIT\r\n"]
    seen.clear()
    assert run(probe_against(smtp_server(seen=seen), "SMTP_CHECK")).ok
    assert seen[0] == b"HELO smtpchecker.keepalived.org\r\n"


def test_smtp_bad_greeting(run: Any) -> None:
    result = run(probe_against(smtp_server(greeting=b"554 go away\r\n"), "SMTP_CHECK"))
    assert not result.ok and "greeting 554" in result.detail


def test_smtp_helo_rejected(run: Any) -> None:
    result = run(probe_against(smtp_server(helo_reply=b"501-no\r\n501 really\r\n"), "SMTP_CHECK"))
    assert not result.ok and "HELO answered 501" in result.detail


def test_smtp_garbage_and_silence(run: Any) -> None:
    result = run(probe_against(smtp_server(greeting=b"hello there\r\n"), "SMTP_CHECK"))
    assert not result.ok and "malformed reply line" in result.detail
    result = run(probe_against(smtp_server(greeting=b""), "SMTP_CHECK"))
    assert not result.ok and "no answer within" in result.detail


# -- from keepalived.conf ----------------------------------------------------------------------

def test_checkers_from_keepalived_conf(run: Any, tmp_path: Path) -> None:
    flag = tmp_path / "weight"
    flag.write_text("0\n")

    async def go() -> list[Result]:
        async with server(_idle) as tcp_port, server(responder(http_reply(body=b"ok"))) as http_port:
            text = f"""
virtual_server 10.0.0.1 80 {{
    delay_loop 6
    lvs_method NAT
    connect_timeout 1
    real_server 127.0.0.1 80 {{
        TCP_CHECK {{
            connect_port {tcp_port}
        }}
        HTTP_GET {{
            url {{
                path /health
                digest {hashlib.md5(b"ok").hexdigest()}
                status_code 200-299
            }}
            connect_port {http_port}
            http_protocol 1.1
        }}
        MISC_CHECK {{
            misc_path "/bin/sh -c 'exit 5'"
            misc_dynamic
        }}
        FILE_CHECK {{
            track_file {flag}
            weight 0
        }}
    }}
}}
"""
            service = parse(text, "k.conf").config.services[0]
            dest = service.dests[0]
            results = []
            for spec in dest.checks:
                port = spec.get("connect_port")
                target = Target(dest.config.daddr, dest.config.dport, connect_port=port)
                c = create(spec, target)
                if spec.kind in ("TCP_CHECK", "HTTP_GET"):   # cascaded from the virtual_server
                    assert c.connect_timeout == 1
                results.append(await c.probe())
            return results

    tcp, web, misc, track = run(go())
    assert tcp.ok and web.ok and track.ok
    assert misc.ok and misc.weight == 3


def test_checker_identity_is_hashable_with_url_blocks() -> None:
    import ipaddress

    from ulvs.config.schema import CheckSpec
    from ulvs.health.base import Target, create

    url = ({"path": "/healthz", "status_code": "200-299"},)
    a = create(CheckSpec("HTTP_GET", (("url", url),)), Target(ipaddress.IPv4Address("10.77.2.11"), 80))
    b = create(CheckSpec("HTTP_GET", (("url", url),)), Target(ipaddress.IPv4Address("10.77.2.11"), 80))
    c = create(CheckSpec("HTTP_GET", (("url", url),)), Target(ipaddress.IPv4Address("10.77.2.12"), 80))
    assert {a.key(): 1, b.key(): 2} == {a.key(): 2}          # same check of the same dest: shared
    assert a.key() != c.key()
