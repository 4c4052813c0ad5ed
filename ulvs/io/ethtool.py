"""Read or set interface offloads (tx checksum, TSO, GSO, GRO) without the ethtool binary.

The daemon switches GRO on for the interfaces it attaches to (and restores it). The lab uses
it when ``ethtool`` is not installed, run inside a namespace by path (stdlib only)::

    python -I ethtool.py off eth0 srv0     # like: ethtool -K IF tx off tso off gso off gro off
    python -I ethtool.py get eth0          # {"eth0": {"tx": false, "tso": false, ...}}

It uses the legacy one-feature ethtool ioctls (``include/uapi/linux/ethtool.h``: ETHTOOL_GTXCSUM
and friends, each a ``struct ethtool_value {u32 cmd; u32 data;}``), which the kernel still maps
onto netdev features (``net/ethtool/ioctl.c:ethtool_set_one_feature``).
"""

from __future__ import annotations

import array
import fcntl
import json
import socket
import struct
import sys

SIOCETHTOOL = 0x8946
# feature: (get cmd, set cmd).  tx (checksum) goes first: TSO depends on it.
FEATURES: dict[str, tuple[int, int]] = {
    "tx": (0x16, 0x17),  # ETHTOOL_GTXCSUM / ETHTOOL_STXCSUM
    "tso": (0x1E, 0x1F),  # ETHTOOL_GTSO / ETHTOOL_STSO
    "gso": (0x23, 0x24),  # ETHTOOL_GGSO / ETHTOOL_SGSO
    "gro": (0x2B, 0x2C),  # ETHTOOL_GGRO / ETHTOOL_SGRO
}
_IFREQ = struct.Struct("16sP")  # ifr_name, ifr_data pointer (rest of the union unused)
_IFREQ_SIZE = 40


def _ethtool(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    buf = array.array("B", struct.pack("II", cmd, data))
    ifr = _IFREQ.pack(ifname.encode(), buf.buffer_info()[0]).ljust(_IFREQ_SIZE, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    return int(struct.unpack("II", buf.tobytes())[1])


def get(ifname: str) -> dict[str, bool]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return {name: bool(_ethtool(s, ifname, g)) for name, (g, _) in FEATURES.items()}


def set_feature(ifname: str, name: str, on: bool) -> None:
    """Switch one feature (a key of ``FEATURES``) on or off."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _ethtool(s, ifname, FEATURES[name][1], int(on))


def switch_off(ifname: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, (_, setter) in FEATURES.items():
            _ethtool(s, ifname, setter, 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("get", "off"):
        sys.stderr.write("usage: ethtool.py get|off IFNAME...\n")
        return 2
    if args[0] == "off":
        for ifname in args[1:]:
            switch_off(ifname)
    json.dump({ifname: get(ifname) for ifname in args[1:]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
