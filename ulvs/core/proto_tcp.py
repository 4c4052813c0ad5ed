"""TCP connection tracking as IPVS does it (ip_vs_proto_tcp.c), written as tables.

Theory of operation: a connection's state moves on *events* derived from each segment's flags
by priority RST > SYN > FIN > ACK (a segment with none of them changes nothing).  The next state
is read from one of three grids, chosen by direction:

* INPUT       client -> real server, for NAT connections (the director also sees replies);
* OUTPUT      real server -> client (NAT replies);
* INPUT_ONLY  client -> real server for droute/tunnel connections, whose replies bypass us.

Rows are events, columns the current state; every cell is defined, so there is no invalid
transition -- only a pure SYN may *create* a connection (checked by the caller).  The state's
timeout (seconds) is restarted by every packet.  ESTABLISHED counts as an *active* connection,
every other state (and every UDP connection) as *inactive*.
"""

from enum import IntEnum


class TcpState(IntEnum):
    NONE = 0
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT = 4
    TIME_WAIT = 5
    CLOSE = 6
    CLOSE_WAIT = 7
    LAST_ACK = 8
    LISTEN = 9
    SYNACK = 10


# UDP has one state, listed "UDP" by ipvsadm; it shares the state byte with TCP.
UDP_STATE = 11
NUM_STATES = 12

STATE_NAMES = [s.name for s in TcpState] + ["UDP"]


class Direction(IntEnum):
    INPUT = 0
    OUTPUT = 1
    INPUT_ONLY = 2


class Event(IntEnum):
    SYN = 0
    FIN = 1
    ACK = 2
    RST = 3


sNO, sES, sSS, sSR, sFW, sTW, sCL, sCW, sLA, sLI, sSA = tuple(TcpState)

# fmt: off
TRANSITIONS: dict[tuple[Direction, Event], tuple[TcpState, ...]] = {
    #                                  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
    (Direction.INPUT, Event.SYN):      (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR),
    (Direction.INPUT, Event.FIN):      (sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW),
    (Direction.INPUT, Event.ACK):      (sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),
    (Direction.INPUT, Event.RST):      (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR),

    (Direction.OUTPUT, Event.SYN):     (sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR),
    (Direction.OUTPUT, Event.FIN):     (sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW),
    (Direction.OUTPUT, Event.ACK):     (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES),
    (Direction.OUTPUT, Event.RST):     (sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL),

    (Direction.INPUT_ONLY, Event.SYN): (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR),
    (Direction.INPUT_ONLY, Event.FIN): (sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW),
    (Direction.INPUT_ONLY, Event.ACK): (sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),
    (Direction.INPUT_ONLY, Event.RST): (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL),
}
# fmt: on

# Default timeouts in seconds (tcp_timeouts[], ip_vs_proto_udp.c), indexed by state.
DEFAULT_TIMEOUTS: tuple[int, ...] = (
    2,     # NONE (also persistence templates' placeholder state)
    900,   # ESTABLISHED   -- ipvsadm --set tcp
    120,   # SYN_SENT
    60,    # SYN_RECV
    120,   # FIN_WAIT      -- ipvsadm --set tcpfin
    120,   # TIME_WAIT
    10,    # CLOSE
    60,    # CLOSE_WAIT
    30,    # LAST_ACK
    120,   # LISTEN
    120,   # SYNACK
    300,   # UDP           -- ipvsadm --set udp
)

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10


def event_of(flags: int) -> Event | None:
    """The tracking event of a segment, by IPVS priority RST > SYN > FIN > ACK."""
    if flags & TH_RST:
        return Event.RST
    if flags & TH_SYN:
        return Event.SYN
    if flags & TH_FIN:
        return Event.FIN
    if flags & TH_ACK:
        return Event.ACK
    return None


# Flat lookup, built from the grids once: _BY_FLAGS[(direction * 32 + (flags & 0x17)) * NUM_STATES
# + state] is the next state (flags & 0x17 keeps the four flags event_of looks at).  One index
# per segment instead of a call and an enum.
_NEXT: list[tuple[TcpState, ...]] = [TRANSITIONS[(d, e)] for d in Direction for e in Event]
_BY_FLAGS: tuple[int, ...] = tuple(
    state if (ev := event_of(flags)) is None or state >= len(TcpState) else int(_NEXT[d * 4 + ev][state])
    for d in range(len(Direction)) for flags in range(32) for state in range(NUM_STATES)
)   # (UDP_STATE, the last column, never moves)


def next_state(direction: int, flags: int, state: int) -> int:
    """State after a segment with ``flags`` travelling in ``direction``."""
    return _BY_FLAGS[(direction * 32 + (flags & 0x17)) * NUM_STATES + state]


def is_pure_syn(flags: int) -> bool:
    """Only a SYN without ACK, FIN or RST creates a TCP connection."""
    return flags & (TH_SYN | TH_ACK | TH_FIN | TH_RST) == TH_SYN
