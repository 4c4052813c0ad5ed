"""Who is at the other end of the control socket (SO_PEERCRED), and whether they may use it.

The socket file's mode is the first gate (0600, or 0660 with ``--control-group``); this is the
second, so a socket whose mode was loosened, or a descriptor passed on, still admits only:
* root (uid 0),
* the daemon's own uid,
* with a control group configured, a process whose primary or supplementary group it is.

``peer_allowed`` is the decision, a pure function; ``peer_of`` reads a connected socket's peer
(SO_PEERCRED for pid/uid/gid, SO_PEERGROUPS for the supplementary groups).
"""

from __future__ import annotations

import errno
import grp
import socket
import struct
from dataclasses import dataclass

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)   # Linux 4.13
_UCRED = struct.Struct("3i")                             # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()     # supplementary groups


@dataclass(frozen=True, slots=True)
class ControlGroup:
    """A configured ``--control-group``: its name (for messages) and gid."""

    name: str
    gid: int


def peer_allowed(peer: Peer, own_uid: int, group: ControlGroup | None) -> bool:
    """May ``peer`` use the control socket of a daemon running as ``own_uid``?"""
    if peer.uid == 0 or peer.uid == own_uid:
        return True
    return group is not None and (peer.gid == group.gid or group.gid in peer.groups)


def refusal(peer: Peer, own_uid: int, group: ControlGroup | None) -> str:
    """The error a refused peer is sent."""
    if group is not None:
        return f"permission denied: uid {peer.uid} is not root nor in group {group.name}"
    who = "root" if own_uid == 0 else f"root nor uid {own_uid}"
    return (f"permission denied: uid {peer.uid} is not {who} (start ulvs run with --control-group "
            "to admit a group)")


def resolve_group(name: str) -> ControlGroup:
    """A group by name (or number); raises ValueError naming an unknown group."""
    try:
        entry = grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except (KeyError, OverflowError):
        raise ValueError(f"unknown group {name!r} (for --control-group)") from None
    return ControlGroup(entry.gr_name, entry.gr_gid)


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of a connected unix socket's peer, as the kernel recorded them."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    size = 64 * 4
    groups: tuple[int, ...] = ()
    while size <= 65536 * 4:                  # NGROUPS_MAX
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE:
                size *= 4
                continue
            break                             # an older kernel: the primary gid still counts
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
        break
    return Peer(pid, uid, gid, groups)
