"""L0 packet layer: header layouts, checksums, a bounded parser and a frame builder.

Pure functions over bytes; no sockets, clocks or global state.
"""

from ulvs.packet.checksum import (
    apply_delta,
    checksum,
    delta,
    fold,
    pseudo_header_sum,
    verify,
)
from ulvs.packet.parse import Frame, Malformed, parse_frame

__all__ = [
    "Frame",
    "Malformed",
    "apply_delta",
    "checksum",
    "delta",
    "fold",
    "parse_frame",
    "pseudo_header_sum",
    "verify",
]
