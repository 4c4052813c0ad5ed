"""L1 connection synchronisation between the two directors of a pair (sans-I/O).

``ulvs.sync.proto`` is the wire codec (IPVS sync v1 with ulvs's additions, docs/SYNC.md); the
connection table side lives in the core (``Core.enable_sync``, ``drain_sync``, ``sync_dump``,
``sync_refresh``, ``apply_sync``).  This package is pure: no sockets, no clock (the sender's
boot id and every ``now`` are passed in), and it imports nothing but the standard library, so
the core can import its record type.
"""

from ulvs.sync.proto import (
    BULK_END,
    BULK_REQUEST,
    CONNS,
    DROP_REASONS,
    ConnRecord,
    Decoder,
    Encoder,
    Kind,
    Message,
)

__all__ = [
    "BULK_END",
    "BULK_REQUEST",
    "CONNS",
    "DROP_REASONS",
    "ConnRecord",
    "Decoder",
    "Encoder",
    "Kind",
    "Message",
]
