"""Who may use the control socket: the pure decision (``peer_allowed``), and the daemon's real
socket end to end -- its mode and group, and SO_PEERCRED checks against client processes that
fork and drop to the ``nobody`` user (root only)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ulvs.runtime.daemon import Daemon, Options
from ulvs.runtime.peercred import ControlGroup, Peer, peer_allowed, refusal, resolve_group

OPS = ControlGroup("ops", 1500)


@pytest.mark.parametrize(("peer", "own", "group", "allowed"), [
    (Peer(1, 0, 0), 0, None, True),                        # root
    (Peer(1, 0, 0), 1000, None, True),                     # root, daemon not root
    (Peer(1, 1000, 1000), 1000, None, True),               # the daemon's own uid
    (Peer(1, 1001, 1000), 1000, None, False),              # same group, but no group configured
    (Peer(1, 1001, 1001), 0, None, False),
    (Peer(1, 1001, 1500), 0, OPS, True),                   # primary group is the control group
    (Peer(1, 1001, 1001, (4, 1500, 27)), 0, OPS, True),    # a supplementary group is
    (Peer(1, 1001, 1001, (4, 27)), 0, OPS, False),
    (Peer(1, 1001, 1501), 0, OPS, False),
])
def test_peer_allowed(peer: Peer, own: int, group: ControlGroup | None, allowed: bool) -> None:
    assert peer_allowed(peer, own, group) is allowed


def test_refusal_messages() -> None:
    assert refusal(Peer(1, 1001, 1001), 0, OPS) == "permission denied: uid 1001 is not root nor in group ops"
    assert refusal(Peer(1, 1001, 1001), 0, None).startswith("permission denied: uid 1001 is not root (")
    assert "not root nor uid 1000" in refusal(Peer(1, 1001, 1001), 1000, None)


def test_resolve_group() -> None:
    root = grp.getgrgid(0)
    assert resolve_group(root.gr_name) == ControlGroup(root.gr_name, 0)
    assert resolve_group("0") == ControlGroup(root.gr_name, 0)
    with pytest.raises(ValueError, match="unknown group 'no-such-group-ulvs'"):
        resolve_group("no-such-group-ulvs")


# ---------------------------------------------------------------------------------------------
# The daemon's socket, end to end (root: the clients fork and setuid to nobody)
# ---------------------------------------------------------------------------------------------
NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as another user")


@contextmanager
def control_server(group: str | None) -> Iterator[tuple[Daemon, Path]]:
    """The daemon's control server alone (no dataplane), on its own event loop in a thread."""
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-access-"))
    tmp.chmod(0o755)                                  # nobody must reach the socket inside
    path = tmp / "ulvs.sock"
    daemon = Daemon(Options(control_socket=path, control_group=group), lambda _p: [])
    if group is not None:
        daemon._group = resolve_group(group)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        await daemon._serve_control()
        ready.set()
        await stop.wait()
        assert daemon._server is not None
        daemon._server.close()
        await daemon._server.wait_closed()
        clients = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in clients:
            t.cancel()
        await asyncio.gather(*clients, return_exceptions=True)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield daemon, path
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        daemon.shutdown()
        tmp.rmdir()


def ask_as(path: Path, uid: int, gid: int, groups: tuple[int, ...] = ()) -> Any:
    """Fork a client that drops to uid/gid/groups, sends one status request and reports the
    reply (and whether the daemon then closed the connection), or the connect errno."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: no pytest, no threads, no logging
        result: Any
        try:
            os.close(rfd)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(str(path))
            except OSError as e:
                result = {"connect_errno": e.errno}
            else:
                s.sendall(b'{"v": 1, "cmd": "status"}\n')
                f = s.makefile("rb")
                reply = json.loads(f.readline())
                try:                                        # a refused peer gets nothing more
                    s.sendall(b'{"v": 1, "cmd": "status"}\n')
                    then = f.readline().decode()
                except OSError:                             # closed: EPIPE or ECONNRESET
                    then = ""
                result = {"reply": reply, "then": then}
            os.write(wfd, json.dumps(result).encode())
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            os.write(wfd, json.dumps({"child_error": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@root_only
def test_group_socket_mode_owner_and_peer_checks() -> None:
    nogroup = grp.getgrgid(NOBODY).gr_name
    with control_server(nogroup) as (daemon, path):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, NOBODY)
        # a member of the group (primary or supplementary) is served
        got = ask_as(path, NOBODY, NOBODY)
        assert got["reply"]["ok"] is True and got["reply"]["v"] == 1
        assert got["reply"]["status"]["daemon"]["control_group"] == nogroup
        assert got["reply"]["status"]["daemon"]["control_socket_mode"] == "0660"
        assert ask_as(path, NOBODY, 1, (NOBODY,))["reply"]["ok"] is True
        # anyone else: the file mode already keeps them out
        assert ask_as(path, NOBODY, 1)["connect_errno"] == 13          # EACCES
        # and with the mode loosened, SO_PEERCRED still does: one reply, then the end
        path.chmod(0o666)
        got = ask_as(path, NOBODY, 1)
        assert got["reply"] == {"ok": False, "v": 1, "error":
                                f"permission denied: uid {NOBODY} is not root nor in group {nogroup}"}
        assert got["then"] == ""
        # root always gets in
        assert ask_as(path, 0, 0)["reply"]["ok"] is True


@root_only
def test_without_a_group_only_root_is_served(caplog: pytest.LogCaptureFixture) -> None:
    with control_server(None) as (_daemon, path), caplog.at_level("WARNING", logger="ulvs"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert ask_as(path, NOBODY, NOBODY)["connect_errno"] == 13
        path.chmod(0o666)
        got = ask_as(path, NOBODY, NOBODY)
        assert got.get("reply", {}).get("ok") is False, got
        assert got["reply"]["error"].startswith(f"permission denied: uid {NOBODY} is not root")
        assert got["then"] == ""
        assert ask_as(path, 0, 0)["reply"]["ok"] is True
    assert any(f"uid {NOBODY}" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
