"""L1 schedulers: one module per IPVS scheduler, each registering itself by name."""

from ulvs.sched import (  # noqa: F401
    dh,
    fo,
    lblc,
    lblcr,
    lc,
    mh,
    nq,
    ovf,
    rr,
    sed,
    sh,
    twos,
    wlc,
    wrr,
)
from ulvs.sched.base import Scheduler, SchedulerError, create, names, register

__all__ = ["Scheduler", "SchedulerError", "create", "names", "register"]
