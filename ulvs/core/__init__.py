"""L1 forwarding core (sans-I/O): model, connection table, TCP/UDP tracking, rewrite, verdicts."""

from ulvs.core.engine import ConnInfo, Core, CoreError, Explanation
from ulvs.core.model import Dest, DestConfig, FwdMethod, Proto, Service, ServiceConfig
from ulvs.core.proto_tcp import TcpState
from ulvs.core.verdict import DropReason, Verdict

__all__ = [
    "ConnInfo",
    "Core",
    "CoreError",
    "Dest",
    "DestConfig",
    "DropReason",
    "Explanation",
    "FwdMethod",
    "Proto",
    "Service",
    "ServiceConfig",
    "TcpState",
    "Verdict",
]
