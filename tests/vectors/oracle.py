"""Scapy as the independent oracle for checksums: re-parse a frame, delete every checksum scapy
can recompute, rebuild, and compare.

Quoted transport headers inside ICMP errors (``TCPerror``/``UDPerror``) are truncated, so their
checksums cannot be recomputed and are left alone; a UDP checksum of 0 means "none" (RFC 768)
and is left alone too.  The quoted IP header (``IPerror``) is complete and is checked.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import NoPayload, Packet


def _checked_layers(p: Packet) -> list[Packet]:
    out = []
    layer = p
    while not isinstance(layer, NoPayload):
        quoted = isinstance(layer, TCPerror | UDPerror | ICMPerror)
        no_udp_sum = isinstance(layer, UDP) and layer.chksum == 0
        if isinstance(layer, IP | TCP | UDP | ICMP) and not quoted and not no_udp_sum:
            out.append(layer)
        layer = layer.payload
    return out


def checksum_errors(frame: bytes) -> list[str]:
    """Descriptions of the checksums in ``frame`` that scapy computes differently; [] if none."""
    q = Ether(frame)
    layers = _checked_layers(q)
    found = [(layer.name, layer.chksum) for layer in layers]
    for layer in layers:
        del layer.chksum
    rebuilt = bytes(q)
    if rebuilt == frame:
        return []
    want = [(layer.name, layer.chksum) for layer in _checked_layers(Ether(rebuilt))]
    errors = [f"{name}: {got:#06x} != {exp:#06x}" for (name, got), (_, exp) in zip(found, want, strict=False)
              if got != exp]
    return errors or [f"rebuilt frame differs: {frame.hex()} != {rebuilt.hex()}"]


def checked_layer_names(frame: bytes) -> list[str]:
    """The layers whose checksums ``checksum_errors`` verifies (to show a check is not vacuous)."""
    return [layer.name for layer in _checked_layers(Ether(frame))]
