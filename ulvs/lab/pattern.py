"""The deterministic byte pattern served by the lab's ``/bytes/N`` and helpers to check it.

Byte i of any ``/bytes/N`` body is ``PATTERN[i % len(PATTERN)]``: 64 KiB of SHA-256 counter-mode
output (SHA-256 of the 8-byte big-endian counters 0..2047), fixed by definition rather than by a
PRNG's implementation, so a client can verify a stream of any length incrementally.
"""

from __future__ import annotations

import hashlib

PATTERN: bytes = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(2048))
MAX_BYTES = 1 << 40  # refuse absurd sizes rather than stream forever


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """The ``n`` bytes of the download pattern starting at ``offset`` (for checking bodies)."""
    out = bytearray()
    pos = offset % len(PATTERN)
    while len(out) < n:
        take = min(n - len(out), len(PATTERN) - pos)
        out += PATTERN[pos : pos + take]
        pos = 0
    return bytes(out)


def pattern_digest(n: int) -> str:
    """SHA-256 hex digest of the first ``n`` pattern bytes, computed without holding them all."""
    h = hashlib.sha256()
    full, rest = divmod(n, len(PATTERN))
    for _ in range(full):
        h.update(PATTERN)
    h.update(PATTERN[:rest])
    return h.hexdigest()
