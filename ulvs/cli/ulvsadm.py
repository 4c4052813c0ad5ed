"""``ulvsadm``: ipvsadm's command line, talking to the ulvs daemon over its control socket.

The grammar is pure and lives in ``ulvs.config.ipvsadm`` (re-exported here): ``parse_args(argv)``
turns an argument vector into an ``Invocation`` (the control requests to send plus what to
list) and ``parse_restore(text)`` does the same for the lines of ``-R``.  ``ControlClient`` is
the whole transport; ``main`` glues them together.

The grammar and every message are ipvsadm 1.31's.  Differences: addresses are numeric IPv4 only
(``-n`` is implied); ``-R`` is atomic (one batch: all lines or none); ``--socket PATH`` (or
``$ULVS_SOCKET``) picks the daemon; and ``--group-member proto:addr:port`` gives a service group
(``-f N``) its members.
Exit status: 0, 1 when the daemon rejects a request or cannot be reached, 2 for usage errors.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import IO, Any

from ulvs import __version__
from ulvs.cli import render
from ulvs.config.ipvsadm import (
    CMD_NAMES,
    DEFAULT_PERSISTENT,
    DEFAULT_SCHED,
    LEGAL,
    LONG,
    OPT_NAMES,
    OPTIONS,
    PROG,
    RESTORABLE,
    SHORT,
    TRY_HELP,
    Invocation,
    Opt,
    UsageError,
    parse_args,
    parse_restore,
)
from ulvs.runtime.control import (
    IPVS_VERSION,
    PROTOCOL_VERSION,
    JsonObj,
    RequestError,
    Timeouts,
    key_name,
    snapshot_from_json,
)

__all__ = ["CMD_NAMES", "DEFAULT_PERSISTENT", "DEFAULT_SCHED", "DEFAULT_SOCKET", "LEGAL", "LONG", "OPTIONS",
           "OPT_NAMES", "PROG", "RESTORABLE", "SHORT", "SOCKET_ENV", "TRY_HELP", "ControlClient",
           "ControlError", "Invocation", "Opt", "UsageError", "main", "parse_args", "parse_restore", "run",
           "usage", "version"]

DEFAULT_SOCKET = "/run/ulvs/ulvs.sock"
SOCKET_ENV = "ULVS_SOCKET"


class ControlError(Exception):
    """The daemon could not be reached or answered nonsense; exit status 1."""


# ==========================================================================================
# Transport
# ==========================================================================================
class ControlClient:
    """One request, one reply, over the daemon's unix socket (newline-delimited JSON).  Every
    request is sent with the protocol version it speaks (``"v": PROTOCOL_VERSION``)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, req: JsonObj) -> JsonObj:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as e:
            raise ControlError(f"cannot create a unix socket: {e}") from None
        with sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as e:
                reason = e.strerror or str(e)
                raise ControlError(f"cannot connect to ulvs daemon at {self.path}: {reason}") from None
            try:
                sent = {"v": PROTOCOL_VERSION, **req}
                sock.sendall(json.dumps(sent, separators=(",", ":")).encode() + b"\n")
                with sock.makefile("rb") as f:
                    line = f.readline()
            except OSError as e:
                raise ControlError(f"ulvs daemon at {self.path}: {e.strerror or e}") from None
        if not line:
            raise ControlError(f"ulvs daemon at {self.path} closed the connection without replying")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlError(f"ulvs daemon at {self.path} sent a reply that is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ControlError(f"ulvs daemon at {self.path} sent a malformed reply")
        return reply


# ==========================================================================================
# main
# ==========================================================================================
def usage() -> str:
    p = PROG
    return (
        f"{version()}"
        "Usage:\n"
        f"  {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [-b sched-flags] [-o]\n"
        f"  {p} -D virtual-service\n"
        f"  {p} -C\n"
        f"  {p} -R\n"
        f"  {p} -S [-n]\n"
        f"  {p} -a|e virtual-service -r server-address [options]\n"
        f"  {p} -d virtual-service -r server-address\n"
        f"  {p} -L|l [virtual-service] [options]\n"
        f"  {p} -Z [virtual-service]\n"
        f"  {p} --set tcp tcpfin udp\n"
        f"  {p} -h\n\n"
        "Commands:\n"
        "Either long or short options are allowed.\n"
        "  --add-service     -A        add virtual service with options\n"
        "  --edit-service    -E        edit virtual service with options\n"
        "  --delete-service  -D        delete virtual service\n"
        "  --clear           -C        clear the whole table\n"
        "  --restore         -R        restore rules from stdin (atomically: all or nothing)\n"
        "  --save            -S        save rules to stdout\n"
        "  --add-server      -a        add real server with options\n"
        "  --edit-server     -e        edit real server with options\n"
        "  --delete-server   -d        delete real server\n"
        "  --list            -L|-l     list the table\n"
        "  --zero            -Z        zero counters in a service or all services\n"
        "  --set tcp tcpfin udp        set connection timeout values\n"
        "  --start-daemon              (ulvs: sync runs from the configuration's [sync])\n"
        "  --stop-daemon               (ulvs: sync runs from the configuration's [sync])\n"
        "  --help            -h        display this help message\n\n"
        "virtual-service:\n"
        "  --tcp-service|-t  service-address   service-address is addr[:port] (numeric IPv4)\n"
        "  --udp-service|-u  service-address   service-address is addr[:port] (numeric IPv4)\n"
        "  --fwmark-service|-f fwmark          a service group number (groups are defined in the\n"
        "                                      config file or with --group-member)\n\n"
        "Options:\n"
        f"  --scheduler    -s scheduler         the default scheduler is {DEFAULT_SCHED}.\n"
        "  --persistent   -p [timeout]         persistent service\n"
        "  --netmask      -M netmask           persistent granularity mask\n"
        "  --real-server  -r server-address    server-address is addr (and port)\n"
        "  --gatewaying   -g                   gatewaying (direct routing) (default)\n"
        "  --ipip         -i                   ipip encapsulation (tunneling; not supported yet)\n"
        "  --masquerading -m                   masquerading (NAT)\n"
        "  --weight       -w weight            capacity of real server\n"
        "  --u-threshold  -x uthreshold        upper threshold of connections\n"
        "  --l-threshold  -y lthreshold        lower threshold of connections\n"
        "  --connection   -c                   output of current IPVS connections\n"
        "  --timeout                           output of timeout (tcp tcpfin udp)\n"
        "  --daemon                            output of daemon information\n"
        "  --stats                             output of statistics information\n"
        "  --rate                              output of rate information\n"
        "  --exact                             expand numbers (display exact values)\n"
        "  --thresholds                        output of thresholds information\n"
        "  --persistent-conn                   output of persistent connection info\n"
        "  --nosort                            disable sorting output of service/server entries\n"
        "  --sort                              does nothing, for backwards compatibility\n"
        "  --ops          -o                   one-packet scheduling\n"
        "  --numeric      -n                   numeric output of addresses and ports (always)\n"
        "  --sched-flags  -b flags             scheduler flags (comma-separated)\n\n"
        "ulvs options:\n"
        "  --group-member proto:addr:port      a member of the -f service group (repeatable)\n"
        f"  --socket PATH                       the daemon's control socket (default ${SOCKET_ENV},\n"
        f"                                      else {DEFAULT_SOCKET})\n"
    )


def version() -> str:
    return f"{PROG} v{__version__} (ipvsadm-compatible, over the ulvs control socket; IPVS v{IPVS_VERSION})\n"


def _socket_path(inv: Invocation) -> str:
    return inv.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _checked(reply: JsonObj) -> JsonObj:
    if not reply["ok"]:
        raise _Rejected(str(reply.get("error", "request rejected")))
    return reply


class _Rejected(Exception):
    pass


def daemon_lines(sync: Any, vrrp: Any) -> str:
    """``ipvsadm -L --daemon``: the sync daemon line ipvsadm prints (``master sync daemon
    (mcast=IF, syncid=N)``, or ``backup ...``), then ulvs's own lines: the sync lag and counters,
    and one line per VRRP instance.  Nothing at all when neither runs, as ipvsadm."""
    out = []
    if isinstance(sync, dict):
        dest = ", ".join(sync.get("destinations", []))
        out.append(f"{sync.get('role', '?')} sync daemon (mcast={sync.get('interface')}, "
                   f"syncid={sync.get('syncid')}, dest={dest})")
        lag = sync.get("lag_seconds")
        out.append(f"  sync: {'ready' if sync.get('ready') else 'bulk resync pending'}, "
                   f"lag {'-' if lag is None else f'{lag:.3f} s'}, sent {sync.get('records_sent', 0)}, "
                   f"applied {sync.get('records_applied', 0)}, lost messages {sync.get('lost_messages', 0)}, "
                   f"authenticated {'yes' if sync.get('authenticated') else 'no'}")
    for i in vrrp or []:
        if isinstance(i, dict):
            out.append(f"VRRP {i.get('iname')} vrid {i.get('vrid')} on {i.get('intf')}: "
                       f"{i.get('state_name', i.get('state'))} (priority {i.get('priority')}, "
                       f"address {i.get('address')})")
    return "".join(line + "\n" for line in out)


def run(inv: Invocation, client: ControlClient, stdin: IO[str], stdout: IO[str]) -> None:
    """Carry out a parsed invocation.  Raises ControlError, _Rejected or UsageError."""
    if inv.command == "restore":
        numbered = parse_restore(stdin.read())
        if not numbered:
            return
        reply = client.request({"cmd": "batch", "requests": [r for _, r in numbered]})
        if not reply["ok"]:
            index = reply.get("index")
            sub = reply.get("reply")
            if isinstance(index, int) and 0 <= index < len(numbered) and isinstance(sub, dict):
                raise _Rejected(f"line {numbered[index][0]}: {sub.get('error')} (nothing was restored)")
            raise _Rejected(f"{reply.get('error')} (nothing was restored)")
        return
    if inv.command == "list" and inv.view == "daemon":
        st = _checked(client.request({"cmd": "status"}))["status"]
        stdout.write(daemon_lines(st.get("sync"), st.get("vrrp")))
        return
    if inv.command == "list" and inv.view == "timeout":
        t = _checked(client.request({"cmd": "get_timeouts"}))["timeouts"]
        try:
            stdout.write(render.timeouts(Timeouts(int(t["tcp"]), int(t["tcpfin"]), int(t["udp"]))))
        except (TypeError, KeyError, ValueError):
            raise ControlError("the daemon sent malformed timeouts") from None
        return
    if inv.command in ("list", "save"):
        conns = inv.command == "list" and inv.view == "connections"
        reply = _checked(client.request({"cmd": "snapshot", "conns": conns}))
        try:
            snap = snapshot_from_json(reply.get("snapshot"))
        except RequestError as e:
            raise ControlError(f"the daemon sent a malformed snapshot: {e}") from None
        if inv.command == "save":
            stdout.write(render.save(snap))
        elif conns:
            stdout.write(render.connections(snap, inv.persistent_conn))
        elif inv.service is not None:
            svc = snap.service(inv.service)
            if svc is None:
                raise _Rejected(f"no such service {key_name(inv.service)}")
            stdout.write(render.table(snap, inv.fmt, svc))
        else:
            stdout.write(render.table(snap, inv.fmt))
        return
    for req in inv.requests:
        _checked(client.request(req))


def main(argv: Sequence[str] | None = None, *, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        inv = parse_args(args)
        if inv.command == "help":
            out.write(usage())
            return 0
        if inv.command == "version":
            out.write(version())
            return 0
        if inv.command in ("start-daemon", "stop-daemon"):
            raise UsageError(f"--{inv.command}: ulvs runs connection sync from its configuration "
                             "([sync] or keepalived's lvs_sync_daemon); it is not started by hand")
        run(inv, ControlClient(_socket_path(inv)), stdin or sys.stdin, out)
    except UsageError as e:
        err.write(f"{e}\n")
        return 2
    except (ControlError, _Rejected) as e:
        err.write(f"{e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

