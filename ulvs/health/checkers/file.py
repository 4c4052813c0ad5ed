"""FILE_CHECK: the dest follows a number an outside agent writes to ``track_file``
(keepalived check_file.c and trackers/track_file.c; keepalived.conf(5) "Track files").

ulvs takes ``track_file`` as the file's path (keepalived names a top-level ``track_file``
block holding the path, which ulvs does not parse).  Each probe reads the file the way
keepalived does: the first 127 bytes as a C ``strtol`` number in base 0 (leading blanks, a sign,
0x hex, 0 octal; trailing text ignored); a missing, unreadable or empty file, or one without a
number, reads as 0.  A number outside the int32 range is ignored (the last value stands).

With ``weight`` 0 the file is an up/down switch: 0 is up, anything else is down.  Otherwise
(``weight`` defaults to 1) the value times the weight is the dest's status: it is down only at
or below keepalived's fault value -2^31 and up otherwise.  keepalived adds that product to the
dest's configured weight; a checker does not know that weight, so ulvs applies it only with
``dynamic``, as the dest's weight itself (``Result.weight``, clamped to 0..65535).
"""

from __future__ import annotations

import os
import re

from ulvs.config.schema import CheckSpec
from ulvs.core.model import MAX_WEIGHT
from ulvs.health.base import Checker, CheckerError, Result, Target, register

READ_LIMIT = 127                       # bytes keepalived reads (char buf[128])
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
WEIGHT_FAULT = INT32_MIN               # IPVS_WEIGHT_FAULT
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def strtol(text: bytes) -> int:
    """C ``strtol(text, NULL, 0)``: the leading number, 0 when there is none."""
    m = _STRTOL.match(text)
    if m is None:
        return 0
    digits = m.group(2)
    if digits[:2] in (b"0x", b"0X"):
        value = int(digits[2:], 16)
    elif digits.startswith(b"0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == b"-" else value


def read_value(path: str) -> int:
    """The file's number; O_NONBLOCK (as keepalived) so a FIFO without a writer cannot hang us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return strtol(os.read(fd, READ_LIMIT))
    except OSError:
        return 0
    finally:
        os.close(fd)


class FileCheck(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        path = spec.get("track_file")
        if not isinstance(path, str) or not path:
            raise CheckerError("FILE_CHECK needs track_file (the path of the file)")
        self.path = path
        self.weight = int(spec.get("weight", 1))
        self.dynamic = bool(spec.get("dynamic", False))
        self.value = 0

    async def probe(self) -> Result:
        # One small read of a local file, done in place as keepalived does: no worker thread
        # (MISC_CHECK's privilege drop runs in a forked child, which threads make unsafe).
        value = read_value(self.path)
        if INT32_MIN <= value <= INT32_MAX + 1:     # keepalived's accepted range
            self.value = value
        return self.judge(self.value)

    def judge(self, value: int) -> Result:
        what = f"FILE_CHECK {self.path}: value {value}"
        if self.weight == 0:
            return Result(value == 0, f"{what} ({'up' if value == 0 else 'down'} with weight 0)")
        status = value * self.weight
        if status <= WEIGHT_FAULT:
            return Result(False, f"{what} x weight {self.weight} = {status}: fault")
        if not self.dynamic:
            return Result(True, f"{what} x weight {self.weight} = {status}")
        weight = max(0, min(MAX_WEIGHT, status))
        return Result(True, f"{what} x weight {self.weight}: weight {weight}", weight=weight)


register("FILE_CHECK", FileCheck)
