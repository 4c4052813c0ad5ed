"""Internet checksums (RFC 1071) and incremental updates (RFC 1624).

All values are 16-bit one's complement quantities held in Python ints.

RFC 1624 eqn. 3:  HC' = ~(~HC + ~m + m').  When the changed words m -> m' are known in advance
(a NAT rewrite always replaces the same address and port words for a given connection and
direction), ``D = fold(sum(~m) + sum(m'))`` is computed once and stored; each packet then needs
``HC' = ~fold(~HC + D)`` -- one add and one fold.  A TTL decrement changes the word
``ttl << 8 | proto`` by -0x0100, which is the constant ``~0x0100 = 0xFEFF`` in the same sum.
"""

import mmap
import sys
from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview | mmap.mmap

_LITTLE = sys.byteorder == "little"

# Adding ~0x0100 to a checksum sum accounts for a TTL decrement (see module docstring).
TTL_DEC_DELTA = 0xFEFF


def fold(s: int) -> int:
    """Fold a non-negative sum into 16 bits with end-around carry."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def raw_sum(data: Buffer, start: int = 0, end: int | None = None) -> int:
    """One's complement sum (unfolded) of the 16-bit big-endian words of data[start:end]."""
    mv = memoryview(data)[start:end]
    n = len(mv)
    total = 0
    if n & 1:
        total = mv[n - 1] << 8
        mv = mv[: n - 1]
    if len(mv):
        s = sum(mv.cast("H"))
        if _LITTLE:
            s = fold(s)
            s = ((s & 0xFF) << 8) | (s >> 8)
        total += s
    return total


def checksum(data: Buffer, start: int = 0, end: int | None = None,
             initial: int = 0) -> int:
    """The Internet checksum of data[start:end] plus an initial sum (e.g. a pseudo-header)."""
    return ~fold(raw_sum(data, start, end) + initial) & 0xFFFF


def verify(data: Buffer, start: int = 0, end: int | None = None,
           initial: int = 0) -> bool:
    """True when the region (checksum field included) sums to 0xFFFF."""
    return fold(raw_sum(data, start, end) + initial) == 0xFFFF


def pseudo_header_sum(saddr: bytes, daddr: bytes, proto: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo-header (RFC 768 / RFC 9293 section 3.1)."""
    return raw_sum(saddr) + raw_sum(daddr) + proto + length


def words(b: bytes) -> list[int]:
    """Split an even-length byte string into 16-bit big-endian words."""
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]


def delta(old: Iterable[int], new: Iterable[int], extra: int = 0) -> int:
    """Precomputed RFC 1624 delta for replacing the 16-bit words ``old`` by ``new``."""
    s = extra
    for w in old:
        s += ~w & 0xFFFF
    for w in new:
        s += w
    return fold(s)


def apply_delta(hc: int, d: int) -> int:
    """Apply a precomputed delta to a checksum field value (eqn. 3)."""
    s = (hc ^ 0xFFFF) + d
    s = (s & 0xFFFF) + (s >> 16)
    return s ^ 0xFFFF


def add_to_partial(field: int, d: int) -> int:
    """Add a delta to an *uncomplemented* partial checksum (CHECKSUM_PARTIAL seed)."""
    s = field + d
    return (s & 0xFFFF) + (s >> 16)
