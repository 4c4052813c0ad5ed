"""Joining a fanout group asks the kernel to keep outgoing frames away from the group, and
falls back to a plain join on a kernel without that flag."""

from __future__ import annotations

import errno

import pytest

from ulvs.io import fanout


class FakeSocket:
    def __init__(self, refuse_flag: bool) -> None:
        self.refuse_flag = refuse_flag
        self.calls: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        self.calls.append((level, opt, value))
        if self.refuse_flag and value >> 16 & fanout.PACKET_FANOUT_FLAG_IGNORE_OUTGOING:
            raise OSError(errno.EINVAL, "Invalid argument")


def test_join_asks_for_ignore_outgoing() -> None:
    sock = FakeSocket(refuse_flag=False)
    assert fanout.join(sock, 0x1234) is True          # type: ignore[arg-type]
    ((level, opt, value),) = sock.calls
    assert (level, opt) == (fanout.SOL_PACKET, fanout.PACKET_FANOUT)
    assert value & 0xFFFF == 0x1234
    assert value >> 16 == fanout.PACKET_FANOUT_CBPF | fanout.PACKET_FANOUT_FLAG_IGNORE_OUTGOING


def test_join_falls_back_without_the_flag() -> None:
    sock = FakeSocket(refuse_flag=True)
    assert fanout.join(sock, 7) is False              # type: ignore[arg-type]
    assert [v >> 16 for _l, _o, v in sock.calls] == [
        fanout.PACKET_FANOUT_CBPF | fanout.PACKET_FANOUT_FLAG_IGNORE_OUTGOING, fanout.PACKET_FANOUT_CBPF]


def test_other_errors_are_not_swallowed() -> None:
    class Busy(FakeSocket):
        def setsockopt(self, level: int, opt: int, value: int) -> None:
            raise OSError(errno.EBUSY, "busy")

    with pytest.raises(OSError):
        fanout.join(Busy(False), 7)                   # type: ignore[arg-type]
