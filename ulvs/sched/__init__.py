"""L1 schedulers: one module per IPVS scheduler, each registering itself by name."""

from ulvs.sched import rr  # noqa: F401
from ulvs.sched.base import Scheduler, SchedulerError, create, names, register

__all__ = ["Scheduler", "SchedulerError", "create", "names", "register"]
