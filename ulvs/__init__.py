"""ulvs: a userspace Linux Virtual Server.

Layers (imports point down only; see docs/ARCHITECTURE.md):

  L5 cli        ulvs / ulvsadm command lines
  L4 runtime    daemon, workers, control socket, metrics       (I/O, clocks, asyncio)
  L3 io         AF_PACKET rings, TAP                           (sockets)
  L2 config     native TOML, keepalived.conf, ipvsadm rules
  L1 core       conn table, TCP/UDP tracking, rewrite, verdicts (sans-I/O: bytes + now in,
     sched      schedulers                                       verdicts out)
  L0 packet     layouts, checksums, bounded parser, builder
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
