"""MISC_CHECK, FILE_CHECK and NANNY: real child processes, real files, real servers on 127.0.0.1
(asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shlex
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ulvs.config.lvscf import parse as parse_lvscf
from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, create
from ulvs.health.checkers import file as file_check
from ulvs.health.checkers import misc

LOCAL = ipaddress.IPv4Address("127.0.0.1")
TIMEOUT = 0.3
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def checker(kind: str, port: int = 0, **options: Any) -> Checker:
    return create(CheckSpec(kind, tuple(sorted(options.items()))), Target(LOCAL, port))


def sh(script: str) -> str:
    """A misc_path running ``script`` with /bin/sh (the checker itself never uses a shell)."""
    return shlex.join(["/bin/sh", "-c", script])


def gone(pid: int) -> bool:
    """The process has exited (absent, or a zombie waiting for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_gone(pid: int) -> bool:
    for _ in range(100):       # SIGKILL is delivered asynchronously
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


# -- MISC_CHECK -------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "dynamic", "ok", "weight"), [
    (0, False, True, None), (1, False, False, None), (3, False, False, None),
    (0, True, True, None), (1, True, False, None), (2, True, True, 0), (7, True, True, 5),
    (255, True, True, 253),
])
def test_misc_exit_status(run: Any, status: int, dynamic: bool, ok: bool, weight: int | None) -> None:
    result = run(checker("MISC_CHECK", misc_path=sh(f"exit {status}"), misc_dynamic=dynamic).probe())
    assert (result.ok, result.weight) == (ok, weight)
    assert f"exit {status}" in result.detail


def test_misc_signal_is_a_failure(run: Any) -> None:
    result = run(checker("MISC_CHECK", misc_path=sh("kill -TERM $$")).probe())
    assert not result.ok and "killed by signal 15" in result.detail


def test_misc_timeout_kills_the_process_group(run: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {shlex.quote(str(pidfile))}; wait"
    result = run(checker("MISC_CHECK", misc_path=sh(script), misc_timeout=TIMEOUT).probe())
    assert not result.ok and "still running after 0.3 s (killed)" in result.detail
    assert wait_gone(int(pidfile.read_text()))


def test_misc_runs_without_a_shell(run: Any, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = run(checker("MISC_CHECK", misc_path=f"/bin/echo $(touch {marker}) ; touch {marker}").probe())
    assert result.ok
    assert not marker.exists()


def test_misc_user(run: Any) -> None:
    as_nobody = sh('test "$(id -u):$(id -g)" = 65534:65534')
    assert run(checker("MISC_CHECK", misc_path=as_nobody, user="nobody").probe()).ok
    assert not run(checker("MISC_CHECK", misc_path=as_nobody).probe()).ok    # we are root
    in_group = sh('test "$(id -u):$(id -g)" = 65534:0')
    assert run(checker("MISC_CHECK", misc_path=in_group, user="nobody root").probe()).ok


def test_misc_unknown_user_or_program(run: Any) -> None:
    result = run(checker("MISC_CHECK", misc_path="/bin/true", user="no-such-user-ulvs").probe())
    assert not result.ok and "unknown user 'no-such-user-ulvs'" in result.detail
    result = run(checker("MISC_CHECK", misc_path="/bin/true", user="nobody no-such-group-ulvs").probe())
    assert not result.ok and "unknown group" in result.detail
    result = run(checker("MISC_CHECK", misc_path="/nonexistent/ulvs-check --flag").probe())
    assert not result.ok and "cannot run" in result.detail and "ENOENT" in result.detail


def test_misc_timeout_default() -> None:
    plain = CheckSpec("MISC_CHECK", (("misc_path", "/bin/true"),))
    assert misc.MiscCheck(plain, Target(LOCAL, 0)).timeout == 5
    with_loop = CheckSpec("MISC_CHECK", (("delay_loop", 7), ("misc_path", "/bin/true")))
    assert misc.MiscCheck(with_loop, Target(LOCAL, 0)).timeout == 7


def test_misc_bad_path_is_a_config_error() -> None:
    with pytest.raises(CheckerError):
        checker("MISC_CHECK", misc_path="/bin/sh -c 'unbalanced")
    with pytest.raises(CheckerError):
        checker("MISC_CHECK", misc_path="  ")


# -- FILE_CHECK -------------------------------------------------------------------------------

def file_probe(run: Any, path: Path, text: str | None, **options: Any) -> Result:
    if text is not None:
        path.write_text(text)
    return run(checker("FILE_CHECK", track_file=str(path), **options).probe())  # type: ignore[no-any-return]


def test_file_weight_zero_is_a_switch(run: Any, tmp_path: Path) -> None:
    f = tmp_path / "state"
    assert file_probe(run, f, "0\n", weight=0).ok
    result = file_probe(run, f, "1\n", weight=0)
    assert not result.ok and "value 1" in result.detail
    f.unlink()
    assert file_probe(run, f, None, weight=0).ok       # keepalived: a missing file reads as 0


def test_file_weighted(run: Any, tmp_path: Path) -> None:
    f = tmp_path / "state"
    result = file_probe(run, f, "5", weight=2)
    assert result.ok and result.weight is None
    result = file_probe(run, f, "7", weight=2, dynamic=True)
    assert result.ok and result.weight == 14
    assert file_probe(run, f, "-3", dynamic=True).weight == 0                 # clamped
    assert file_probe(run, f, "100000", dynamic=True).weight == 65535
    result = file_probe(run, f, "2147483648", weight=-1)                    # -2^31: keepalived's fault
    assert not result.ok and "fault" in result.detail


def test_file_keeps_the_last_value_when_out_of_range(run: Any, tmp_path: Path) -> None:
    f = tmp_path / "state"
    c = checker("FILE_CHECK", track_file=str(f), weight=0)
    f.write_text("1")
    assert not run(c.probe()).ok
    f.write_text("99999999999")
    result = run(c.probe())
    assert not result.ok and "value 1" in result.detail


def test_file_fifo_without_writer_does_not_block(run: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = file_probe(run, fifo, None, weight=0)
    assert result.ok and "value 0" in result.detail


@pytest.mark.parametrize(("text", "value"), [
    (b"42", 42), (b"  -7 apples", -7), (b"+3", 3), (b"0x1F", 31), (b"010", 8), (b"09", 0),
    (b"0x", 0), (b"junk", 0), (b"", 0), (b"\n12\n", 12),
])
def test_file_reads_like_strtol(text: bytes, value: int) -> None:
    assert file_check.strtol(text) == value


# -- NANNY ------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def line_server(reply: bytes, seen: list[bytes], banner: bytes = b"", close: bool = True) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            writer.write(banner)
            seen.append(await reader.readuntil(b"\n"))
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()
            else:
                await asyncio.sleep(10)
    return handle


async def nanny(handler: Handler, **options: Any) -> Result:
    options.setdefault("connect_timeout", TIMEOUT)
    async with server(handler) as port:
        return await checker("NANNY", port, **options).probe()


def test_nanny_connect_only(run: Any) -> None:
    seen: list[bytes] = []
    assert run(nanny(line_server(b"", seen))).ok
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(checker("NANNY", port, connect_timeout=TIMEOUT).probe())
    assert not result.ok and "ECONNREFUSED" in result.detail


def test_nanny_send_expect(run: Any) -> None:
    seen: list[bytes] = []
    result = run(nanny(line_server(b"+OK ready\r\n", seen), send="PING\r\n", expect="OK ready"))
    assert result.ok, result.detail
    assert seen == [b"PING\r\n"]
    result = run(nanny(line_server(b"-ERR\r\n", []), send="PING\r\n", expect="OK"))
    assert not result.ok and "lacks the expected text 'OK'" in result.detail


def test_nanny_regex(run: Any) -> None:
    reply = b"HTTP/1.0 204 No Content\r\n\r\n"
    assert run(nanny(line_server(reply, []), send="GET /\r\n", expect=r"HTTP/1\.[01] 2\d\d",
                     use_regex=True)).ok
    assert not run(nanny(line_server(reply, []), send="GET /\r\n", expect=r"HTTP/1\.[01] 2\d\d")).ok
    with pytest.raises(CheckerError):
        checker("NANNY", 1, expect="(", use_regex=True)


def test_nanny_expect_banner_without_send(run: Any) -> None:
    assert run(nanny(line_server(b"", [], banner=b"220 mail ready\r\n"), expect="220")).ok


def test_nanny_expect_never_arrives(run: Any) -> None:
    result = run(nanny(line_server(b"nothing useful", [], close=False), send="x\n", expect="OK"))
    assert not result.ok and "no answer within 0.3 s" in result.detail


def test_nanny_send_program_with_host(run: Any) -> None:
    program = shlex.join(["/bin/sh", "-c", 'echo "checked $0 and $1"', "%h", "--host=%h"])
    result = run(checker("NANNY", 80, send_program=program, expect="checked 127.0.0.1 and --host=127.0.0.1",
                         connect_timeout=2).probe())
    assert result.ok, result.detail
    result = run(checker("NANNY", 80, send_program=program, expect="10.0.0.1", connect_timeout=2).probe())
    assert not result.ok and "lacks the expected text" in result.detail


def test_nanny_send_program_exit_status(run: Any) -> None:
    assert run(checker("NANNY", send_program="/bin/true", connect_timeout=2).probe()).ok
    result = run(checker("NANNY", send_program="/bin/false", connect_timeout=2).probe())
    assert not result.ok and "exit 1" in result.detail


def test_nanny_send_program_is_killed_on_timeout(run: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    program = shlex.join(["/bin/sh", "-c", f"echo $$ > {shlex.quote(str(pidfile))}; exec sleep 30"])
    result = run(checker("NANNY", send_program=program, expect="never", connect_timeout=TIMEOUT).probe())
    assert not result.ok and "no answer within 0.3 s" in result.detail
    assert wait_gone(int(pidfile.read_text()))


def test_nanny_from_lvs_cf(run: Any) -> None:
    seen: list[bytes] = []

    async def go() -> Result:
        async with server(line_server(b"HTTP/1.0 200 OK\r\n", seen)) as port:
            text = ("network = nat\nvirtual WEB {\naddress = 10.0.0.1 eth0:1\n"
                    f"port = {port}\n"
                    'send = "GET / HTTP/1.0\\r\\n\\r\\n"\nexpect = "HTTP/1.0 200"\n'
                    "server rs1 {\naddress = 127.0.0.1\nactive = 1\nweight = 1\n}\n}\n")
            dest = parse_lvscf(text, "lvs.cf").config.services[0].dests[0]
            (spec,) = dest.checks
            return await create(spec, Target(dest.config.daddr, dest.config.dport)).probe()

    assert run(go()).ok
    assert seen == [b"GET / HTTP/1.0\r\n"]
