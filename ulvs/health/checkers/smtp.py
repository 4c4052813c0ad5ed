"""SMTP_CHECK: a 220 greeting, ``HELO helo_name`` answered 250, then QUIT (keepalived check_smtp.c).

Replies may span several lines (RFC 5321 §4.2.1: ``250-...`` continues, ``250 ...`` ends); the
code of the last line counts.  The answer to QUIT is read but not judged, as keepalived does.
"""

from __future__ import annotations

import asyncio
import re

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, Result, Target, register
from ulvs.health.checkers._io import CLOSE_GRACE, Failed, bounded, close_stream, endpoint, open_stream

DEFAULT_HELO = "smtpchecker.keepalived.org"   # keepalived's SMTP_DEFAULT_HELO
MAX_LINE = 4096          # bytes per reply line (RFC 5321 §4.5.3.1.5 allows 512)
MAX_LINES = 100          # lines per multi-line reply
_REPLY_LINE = re.compile(rb"(\d{3})([ -]?)(.*)\r?\n\Z", re.DOTALL)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One (possibly multi-line) SMTP reply -> (code, text of its last line)."""
    for _ in range(MAX_LINES):
        line = await reader.readuntil(b"\n")
        m = _REPLY_LINE.match(line)
        if m is None:
            raise Failed(f"malformed reply line {line[:80]!r}")
        if m.group(2) != b"-":
            return int(m.group(1)), m.group(3).decode("latin-1", errors="replace").strip()
    raise Failed(f"reply longer than {MAX_LINES} lines")


class SmtpCheck(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        self.helo_name = str(spec.get("helo_name", DEFAULT_HELO))

    async def probe(self) -> Result:
        return await bounded(self._dialog, self.connect_timeout, f"SMTP to {endpoint(self.target)}")

    async def _dialog(self) -> Result:
        reader, writer = await open_stream(self.target, limit=MAX_LINE)
        try:
            code, text = await read_reply(reader)
            if code != 220:
                raise Failed(f"greeting {code} {text!r}, expected 220")
            writer.write(f"HELO {self.helo_name}\r\n".encode("latin-1", errors="replace"))
            code, text = await read_reply(reader)
            if code != 250:
                raise Failed(f"HELO answered {code} {text!r}, expected 250")
            writer.write(b"QUIT\r\n")
            await writer.drain()
            await _quit_reply(reader)
            return Result(True, f"220 greeting, HELO {self.helo_name} answered 250")
        finally:
            await close_stream(writer)


async def _quit_reply(reader: asyncio.StreamReader) -> None:
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await read_reply(reader)
    except (Failed, OSError, EOFError, asyncio.LimitOverrunError):
        pass    # the server may just close or stay silent; the dialog already passed


register("SMTP_CHECK", SmtpCheck)
