"""UDP_CHECK: send ``payload`` on a connected UDP socket and judge the reply (keepalived check_udp.c).

Semantics (keepalived.conf(5) and check_udp.c):

* An ICMP error for the datagram (port or host unreachable, reported on the connected socket)
  fails the check.
* Without ``require_reply`` any reply passes, and so does silence for ``connect_timeout``:
  UDP has no handshake, so only an ICMP error proves the service absent.
* With ``require_reply`` a reply must arrive, its length must lie in ``min_reply_length``
  (0) .. ``max_reply_length`` (255), and, when ``require_reply`` gives hex, the first
  min(reply, pattern) bytes must match it, an ``X`` nibble matching anything.

Hex strings are keepalived's free format: whitespace-separated words of hex digit pairs, an
odd last digit of a word standing for a byte of its own ("Ab12f 3" = AB 12 0F 03).  Without
``payload`` a random 32-byte datagram is sent, as keepalived sends random bytes.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, register
from ulvs.health.checkers._io import Failed, bounded, endpoint, udp_socket

DEFAULT_MIN_REPLY, DEFAULT_MAX_REPLY = 0, 255
RANDOM_PAYLOAD = 32     # bytes sent when no payload is configured
MAX_DATAGRAM = 65535    # read whole datagrams, so over-long replies are seen as such


def parse_hex(text: str, wildcard: bool = False) -> tuple[bytes, bytes]:
    """keepalived's hex format -> (bytes, mask); a mask bit of 1 ignores that reply bit."""
    data, mask = bytearray(), bytearray()
    for word in text.split():
        pairs = [word[i:i + 2] for i in range(0, len(word), 2)]
        if len(pairs[-1]) == 1:
            pairs[-1] = "0" + pairs[-1]
        for pair in pairs:
            value = ignore = 0
            for digit in pair:
                value, ignore = value << 4, ignore << 4
                if digit in "xX" and wildcard:
                    ignore |= 0xF
                elif digit in "0123456789abcdefABCDEF":
                    value |= int(digit, 16)
                else:
                    raise CheckerError(f"{text!r} is not a hex string ({digit!r})")
            data.append(value)
            mask.append(ignore)
    if not data:
        raise CheckerError(f"{text!r} is an empty hex string")
    return bytes(data), bytes(mask)


def reply_matches(reply: bytes, pattern: bytes, mask: bytes) -> bool:
    n = min(len(reply), len(pattern))
    return all((reply[i] ^ pattern[i]) & ~mask[i] & 0xFF == 0 for i in range(n))


class UdpCheck(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        payload = spec.get("payload")
        self.payload = None if payload is None else parse_hex(str(payload))[0]
        self.require_reply, self.pattern = _require_reply(spec.get("require_reply", False))
        self.min_reply = int(spec.get("min_reply_length", DEFAULT_MIN_REPLY))
        self.max_reply = int(spec.get("max_reply_length", DEFAULT_MAX_REPLY))
        if self.min_reply > self.max_reply:
            raise CheckerError(f"min_reply_length {self.min_reply} > max_reply_length {self.max_reply}")

    async def probe(self) -> Result:
        return await bounded(self._exchange, None, f"UDP to {endpoint(self.target)}")

    async def _exchange(self) -> Result:
        loop = asyncio.get_running_loop()
        with udp_socket(self.target) as sock:
            try:
                await loop.sock_sendall(sock, self.payload or secrets.token_bytes(RANDOM_PAYLOAD))
                async with asyncio.timeout(self.connect_timeout):
                    reply = await loop.sock_recv(sock, MAX_DATAGRAM)
            except ConnectionRefusedError:
                raise Failed("ICMP port unreachable") from None
            except TimeoutError:
                if self.require_reply:
                    raise Failed(f"no reply within {self.connect_timeout:g} s") from None
                return Result(True, f"no ICMP error within {self.connect_timeout:g} s")
        return self._judge(reply)

    def _judge(self, reply: bytes) -> Result:
        if not self.require_reply:
            return Result(True, f"{len(reply)}-byte reply")
        if not self.min_reply <= len(reply) <= self.max_reply:
            raise Failed(f"{len(reply)}-byte reply outside {self.min_reply}..{self.max_reply} bytes")
        if self.pattern is not None and not reply_matches(reply, *self.pattern):
            raise Failed(f"reply {reply[:32].hex()} does not match the required reply")
        return Result(True, f"{len(reply)}-byte reply matches")


def _require_reply(value: Any) -> tuple[bool, tuple[bytes, bytes] | None]:
    """``require_reply``: absent/False, True (any reply), or the hex pattern of the reply."""
    if isinstance(value, bool):
        return value, None
    return True, parse_hex(str(value), wildcard=True)


register("UDP_CHECK", UdpCheck)
