"""MISC_CHECK: run ``misc_path`` and judge its exit status (keepalived check_misc.c).

* ``misc_path`` is split like a shell would (``shlex``) but run without one.
* It gets ``misc_timeout`` seconds, else the checker's ``delay_loop`` (keepalived defaults to the
  service's delay_loop, which a checker does not see), else 5 s; then its whole process group
  is killed and the check fails.
* Exit 0 is up, 1 (or a signal) is down.  With ``misc_dynamic`` exit 2..255 is up with weight
  exit - 2 (``Result.weight``), and exit 0 keeps the configured weight; without it any
  non-zero exit is down.
* ``user NAME [GROUP]`` runs it as that user (and group, default the user's, with the user's
  supplementary groups) when ulvs runs as root.  An unknown user or group, or a different user
  while not root, fails the check with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import os
import pwd
import shlex
from typing import Any

from ulvs.config.schema import CheckSpec
from ulvs.health.base import DEFAULT_CONNECT_TIMEOUT, Checker, CheckerError, Result, Target, register
from ulvs.health.checkers._io import Failed, describe_oserror, kill_group

DYNAMIC_MIN, DYNAMIC_MAX = 2, 255


def split_command(line: Any, key: str) -> list[str]:
    if not isinstance(line, str):
        raise CheckerError(f"{key} must be a command line, not {line!r}")
    try:
        argv = shlex.split(line)
    except ValueError as e:
        raise CheckerError(f"{key} {line!r}: {e}") from None
    if not argv:
        raise CheckerError(f"{key} is empty")
    return argv


def credentials(user: str | None) -> dict[str, Any]:
    """Keyword arguments for create_subprocess_exec that run the child as ``user [group]``."""
    if user is None:
        return {}
    words = user.split()
    if not 1 <= len(words) <= 2:
        raise Failed(f"user {user!r} is not NAME [GROUP]")
    try:
        pw = pwd.getpwnam(words[0])
    except KeyError:
        raise Failed(f"unknown user {words[0]!r}") from None
    try:
        gid = grp.getgrnam(words[1]).gr_gid if len(words) == 2 else pw.pw_gid
    except KeyError:
        raise Failed(f"unknown group {words[1]!r}") from None
    if os.geteuid() != 0:
        if (pw.pw_uid, gid) == (os.geteuid(), os.getegid()):
            return {}
        raise Failed(f"cannot run as {user!r}: ulvs is not running as root")
    return {"preexec_fn": functools.partial(drop_privileges, pw.pw_uid, gid,
                                            os.getgrouplist(pw.pw_name, gid))}


def drop_privileges(uid: int, gid: int, groups: list[int]) -> None:
    """Runs in the child before exec (uvloop has no user=/group= arguments, so a preexec)."""
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)


async def run_bounded(argv: list[str], timeout: float, **options: Any) -> int | None:
    """Run ``argv`` in its own session; its exit status, or None when it was killed on timeout."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                start_new_session=True, **options)
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    except TimeoutError:
        await kill_group(proc)
        return None
    except asyncio.CancelledError:
        await asyncio.shield(kill_group(proc))
        raise


def judge_exit(status: int, dynamic: bool) -> Result:
    if status == 0:
        return Result(True, "exit 0")
    if status < 0:
        return Result(False, f"killed by signal {-status}")
    if dynamic and DYNAMIC_MIN <= status <= DYNAMIC_MAX:
        return Result(True, f"exit {status}: weight {status - DYNAMIC_MIN}", weight=status - DYNAMIC_MIN)
    return Result(False, f"exit {status}")


class MiscCheck(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        self.argv = split_command(spec.get("misc_path"), "misc_path")
        self.timeout = float(spec.get("misc_timeout") or spec.get("delay_loop") or DEFAULT_CONNECT_TIMEOUT)
        self.dynamic = bool(spec.get("misc_dynamic", False))
        user = spec.get("user")
        self.user = None if user is None else str(user)

    async def probe(self) -> Result:
        what = f"MISC_CHECK {shlex.join(self.argv)}"
        try:
            status = await run_bounded(self.argv, self.timeout, stdout=asyncio.subprocess.DEVNULL,
                                       stderr=asyncio.subprocess.DEVNULL, **credentials(self.user))
        except Failed as e:
            return Result(False, f"{what}: {e}")
        except OSError as e:
            return Result(False, f"{what}: cannot run: {describe_oserror(e)}")
        if status is None:
            return Result(False, f"{what}: still running after {self.timeout:g} s (killed)")
        result = judge_exit(status, self.dynamic)
        return Result(result.ok, f"{what}: {result.detail}", result.weight)


register("MISC_CHECK", MiscCheck)
