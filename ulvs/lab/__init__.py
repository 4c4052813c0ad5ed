"""The lab: LVS-NAT/DR test topologies in network namespaces (root only), for netns and e2e tests.

    from ulvs.lab import Lab
    with Lab(dr=False) as lab:
        lab.http_get("client", lab.addr("rs1"))      # routed through the director's kernel

See ``topology.py`` for the addressing plan and the teardown guarantees.
"""

from ulvs.lab.pattern import PATTERN, pattern_bytes, pattern_digest
from ulvs.lab.topology import (
    CLIENT_FLOAT_GW,
    CLIENT_IF,
    CLIENT_NET,
    DIRECTOR_IF_CLIENT,
    DIRECTOR_IF_SERVER,
    HTTP_PORT,
    NAT_GW,
    NS_PREFIX,
    SERVER_IF,
    SERVER_NET,
    UDP_PORT,
    VIP,
    VIP_NET,
    HttpResult,
    Lab,
    LabError,
    LabInfo,
    cleanup_stale,
    destroy,
    destroy_all,
    list_namespaces,
    status,
)

__all__ = [
    "CLIENT_FLOAT_GW",
    "CLIENT_IF",
    "CLIENT_NET",
    "DIRECTOR_IF_CLIENT",
    "DIRECTOR_IF_SERVER",
    "HTTP_PORT",
    "NAT_GW",
    "NS_PREFIX",
    "PATTERN",
    "SERVER_IF",
    "SERVER_NET",
    "UDP_PORT",
    "VIP",
    "VIP_NET",
    "HttpResult",
    "Lab",
    "LabError",
    "LabInfo",
    "cleanup_stale",
    "destroy",
    "destroy_all",
    "list_namespaces",
    "pattern_bytes",
    "pattern_digest",
    "status",
]
