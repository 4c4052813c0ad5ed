"""Verdicts and drop reasons.  Every frame handed to the core ends in exactly one verdict.

Verdicts are small ints so the batch loop writes them into a bytearray without allocating.
``DropReason`` doubles as the metrics label (``label``) and indexes the drop counters.
"""

from enum import IntEnum


class Verdict(IntEnum):
    DROP = 0      # counted under a DropReason
    FORWARD = 1   # rewritten in place; send on the egress written beside the verdict
    PASS = 2      # not ours (ARP, non-VIP traffic, ...): leave it to the host stack


class DropReason(IntEnum):
    # malformed input (labels shared with ulvs.packet.parse)
    TRUNCATED = 0
    BAD_VERSION = 1
    BAD_IHL = 2
    BAD_TOTAL_LENGTH = 3
    BAD_L4_HEADER = 4
    BAD_ICMP = 5
    BAD_ICMP_CHECKSUM = 6
    # policy
    FRAGMENT = 7            # IP fragments are not reassembled
    TTL_EXCEEDED = 8        # TTL <= 1 on a packet we would route (ICMP time exceeded sent)
    NO_CONN = 9             # non-SYN TCP / ICMP error for a service without a connection
    NO_DEST = 10            # the scheduler found no available dest
    CONN_TABLE_FULL = 11    # limit reached and nothing evictable
    DEST_GONE = 12          # the connection's dest was removed (expire_nodest_conn = 0)
    NEIGH_UNRESOLVED = 13   # next-hop MAC for the dest not known yet
    TUNNEL_UNSUPPORTED = 14  # forwarding method not available in this dataplane
    SYNC_UNLEARNED = 15     # reply of a synced NAT conn before its client's return path is known

    @property
    def label(self) -> str:
        return self.name.lower()


NUM_DROP_REASONS = len(DropReason)
