"""NANNY: Piranha's nanny check (lvs.cf(5)), as ``ulvs.config.lvscf`` writes it.

* Empty ``send`` and ``expect``: a TCP connection is enough.
* ``send`` (nanny's ``\\n \\r \\t`` escapes already decoded by the parser) is written after
  connecting; with ``expect`` the reply is read until it contains ``expect`` (a regex search
  with ``use_regex``), the server closes, ``MAX_REPLY`` bytes arrive or ``connect_timeout``
  runs out.
* ``send_program`` replaces the connection: the command is split like a shell would, ``%h``
  in any argument becomes the dest address (so the address is always part of one argument),
  and it runs without a shell in its own process group, killed at ``connect_timeout``.  Its
  output must contain ``expect``; without ``expect`` its exit status 0 is what counts.
"""

from __future__ import annotations

import asyncio
import re

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, register
from ulvs.health.checkers._io import (
    Failed,
    bounded,
    close_stream,
    describe_oserror,
    endpoint,
    kill_group,
    open_stream,
    read_until,
)
from ulvs.health.checkers.misc import split_command

MAX_REPLY = 64 * 1024   # bytes of reply (or program output) searched for ``expect``


class Nanny(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        self.send = str(spec.get("send", "")).encode()
        self.expect = str(spec.get("expect", ""))
        self.pattern: re.Pattern[bytes] | None = None
        if self.expect and spec.get("use_regex", False):
            try:
                self.pattern = re.compile(self.expect.encode())
            except re.error as e:
                raise CheckerError(f"expect {self.expect!r} is not a regex: {e}") from None
        program = spec.get("send_program")
        self.program = None if not program else split_command(program, "send_program")

    def found(self, data: bytes) -> bool:
        if self.pattern is not None:
            return self.pattern.search(data) is not None
        return self.expect.encode() in data

    async def probe(self) -> Result:
        if self.program is not None:
            return await self._run_program(self.program)
        return await bounded(self._converse, self.connect_timeout, f"nanny {endpoint(self.target)}")

    async def _converse(self) -> Result:
        reader, writer = await open_stream(self.target)
        try:
            if self.send:
                writer.write(self.send)
                await writer.drain()
            if not self.expect:
                return Result(True, "sent" if self.send else "connected")
            reply = await read_until(reader, self.found, MAX_REPLY)
            return self._judge(reply, "reply")
        finally:
            await close_stream(writer)

    def _judge(self, output: bytes, what: str) -> Result:
        if not self.found(output):
            kind = "regex" if self.pattern is not None else "text"
            raise Failed(f"{what} {output[:80]!r} lacks the expected {kind} {self.expect!r}")
        return Result(True, f"{what} has {self.expect!r}")

    async def _run_program(self, program: list[str]) -> Result:
        argv = [arg.replace("%h", self.target.host) for arg in program]
        what = f"nanny send_program {argv[0]}"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            return Result(False, f"{what}: cannot run: {describe_oserror(e)}")
        try:
            return await bounded(lambda: self._program_result(proc), self.connect_timeout, what)
        finally:
            if proc.returncode is None:
                await asyncio.shield(kill_group(proc))

    async def _program_result(self, proc: asyncio.subprocess.Process) -> Result:
        assert proc.stdout is not None
        output = await read_until(proc.stdout, self.found if self.expect else lambda d: False, MAX_REPLY)
        if self.expect:
            return self._judge(output, "output")
        status = await proc.wait()
        if status != 0:
            raise Failed(f"exit {status}")
        return Result(True, "exit 0")


register("NANNY", Nanny)
