"""What every child process of the daemon does first: the health monitor, the VRRP speaker and
the metrics exporter share it.

``attach_to_parent(what, log)`` asks the kernel for SIGTERM when the daemon (the parent) dies
(``PR_SET_PDEATHSIG``) and refuses to start when the parent is already gone (re-parented to
init); ``run(coro)`` runs the child's main coroutine on uvloop (asyncio when uvloop is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

PR_SET_PDEATHSIG = 1


def attach_to_parent(what: str, log: logging.Logger) -> bool:
    """Die with the daemon; False (logged) when the daemon that started us is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:
        log.error("the daemon that started the %s is gone", what)
        return False
    return True


def run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))
