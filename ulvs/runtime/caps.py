"""Linux capabilities (capabilities(7)): what this process holds, and what it hands on.

``ulvs run`` needs CAP_NET_ADMIN and CAP_NET_RAW and nothing else (REFERENCE (k)).  It also runs
helpers that need CAP_NET_ADMIN: ``nft`` and ``ip`` (the ingress table, policy rules), and its
own Python children (dataplane workers, the health monitor, whose PING_CHECK needs CAP_NET_RAW).
How a non-root daemon gets the capabilities decides whether those children keep them:

* systemd ``AmbientCapabilities=`` (and ``setpriv --ambient-caps``) put them in the *ambient*
  set, which survives ``execve`` of an ordinary program;
* file capabilities on the interpreter (``setcap cap_net_admin,cap_net_raw+ep``, the Docker
  image's way: Docker cannot grant ambient capabilities to a non-root user) give them to the
  daemon only; a child that is not itself capability-marked gets none, so ``nft`` would fail.

``keep_for_children`` closes the second gap: it copies the capabilities the daemon holds into
its inheritable and ambient sets (allowed without privilege for capabilities in the permitted
and bounding sets), so the children get exactly those two.  Root needs none of this: exec as
uid 0 grants the bounding set.

``drop_all`` is for children that need nothing (the metrics exporter, which parses HTTP from
the network).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
REQUIRED = (CAP_NET_ADMIN, CAP_NET_RAW)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_CLEAR_ALL = 4


@dataclass(frozen=True, slots=True)
class CapSets:
    """The five sets as bit masks (bit n = capability n), as /proc/PID/status shows them."""

    inheritable: int = 0
    permitted: int = 0
    effective: int = 0
    bounding: int = 0
    ambient: int = 0

    def has(self, cap: int) -> bool:
        return bool(self.effective >> cap & 1)


def parse_status(text: str) -> CapSets:
    """The capability sets of a /proc/PID/status text (CapInh, CapPrm, CapEff, CapBnd, CapAmb)."""
    fields = {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            fields[name] = int(value.strip(), 16)
    return CapSets(fields["CapInh"], fields["CapPrm"], fields["CapEff"], fields["CapBnd"], fields["CapAmb"])


def current(pid: int | str = "self") -> CapSets:
    """This process's (or ``pid``'s) capability sets."""
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def missing(sets: CapSets, required: tuple[int, ...] = REQUIRED) -> list[str]:
    """The names of the ``required`` capabilities not in the effective set."""
    return [NAMES.get(c, f"capability {c}") for c in required if not sets.has(c)]


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _capget() -> tuple[_Header, ctypes.Array[_Data]]:
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc().capget(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    return hdr, data


def _capset(hdr: _Header, data: ctypes.Array[_Data]) -> None:
    if _libc().capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def keep_for_children(caps: tuple[int, ...] = REQUIRED) -> list[str]:
    """Put each of ``caps`` that this process holds (permitted) but not yet ambient into its
    inheritable and ambient sets, so programs it runs keep them.  Returns the names raised;
    raises OSError when the kernel refuses (e.g. ``SECBIT_NO_CAP_AMBIENT_RAISE``)."""
    sets = current()
    todo = [c for c in caps if sets.permitted >> c & 1 and not sets.ambient >> c & 1]
    if not todo:
        return []
    hdr, data = _capget()
    for c in todo:
        data[c // 32].inheritable |= 1 << (c % 32)
    _capset(hdr, data)
    libc = _libc()
    for c in todo:
        if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, c, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot make {NAMES.get(c, c)} ambient: {os.strerror(err)}")
    return [NAMES.get(c, str(c)) for c in todo]


def drop_all() -> None:
    """Give up every capability, for good: ambient, inheritable, permitted and effective."""
    libc = _libc()
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)   # fails only on old kernels
    hdr, data = _capget()
    for d in data:
        d.effective = d.permitted = d.inheritable = 0
    _capset(hdr, data)
