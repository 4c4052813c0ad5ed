"""The connection-sync wire codec (ulvs.sync.proto): the format pinned by hand-built golden bytes,
round trips, MTU splitting, every drop reason, HMAC, anti-replay and loss counting, and that the
decoder never raises on anything a network can deliver.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ulvs.sync import proto
from ulvs.sync.proto import (
    BULK_END,
    BULK_REQUEST,
    CONNS,
    DROP_REASONS,
    ConnRecord,
    Decoder,
    Encoder,
    Kind,
    Message,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"pair-secret-0123456789abcdef"
BOOT = 0x1122334455667788


def ip(a: str) -> bytes:
    return IPv4Address(a).packed


REC = ConnRecord(proto=6, fwd=proto.IP_VS_CONN_F_DROUTE, state=1, caddr=ip("10.77.1.10"), cport=50000,
                 vaddr=ip("10.77.1.100"), vport=80, daddr=ip("10.77.2.11"), dport=8080, fwmark=0, timeout=900)


def rec(i: int) -> ConnRecord:
    return replace(REC, cport=1024 + i)


# ---- the format, by hand --------------------------------------------------------------------------
GOLDEN_ENTRY = bytes.fromhex(
    "00"          # Type: IPv4
    "06"          # Protocol: TCP
    "0024"        # Ver 0, Size 36
    "00000003"    # Flags: IP_VS_CONN_F_DROUTE
    "0001"        # State: ESTABLISHED
    "c350"        # cport 50000
    "0050"        # vport 80
    "1f90"        # dport 8080
    "00000000"    # fwmark
    "00000384"    # timeout 900 s
    "0a4d010a"    # caddr 10.77.1.10
    "0a4d0164"    # vaddr 10.77.1.100
    "0a4d020b"    # daddr 10.77.2.11
)
GOLDEN_TRAILER = bytes.fromhex("0000000000000001" "1122334455667788")   # sequence 1, boot id


def test_golden_header_entry_and_trailer_without_key() -> None:
    header = bytes.fromhex(
        "00"      # 0: not a v0 message
        "07"      # SyncID 7
        "003c"    # Size: 8 + 36 + 16 = 60, the whole datagram
        "01"      # Count
        "01"      # Version 1
        "00"      # hflags: no HMAC
        "00"      # kind CONNS
    )
    want = header + GOLDEN_ENTRY + GOLDEN_TRAILER
    assert len(GOLDEN_ENTRY) == 36
    assert Encoder(7, None, BOOT).messages([REC]) == [want]


def test_golden_with_key_the_hmac_covers_everything_before_it() -> None:
    body = bytes.fromhex("0007" "005c" "01" "01" "01" "00") + GOLDEN_ENTRY + GOLDEN_TRAILER   # Size 92
    want = body + hmac.new(KEY, body, hashlib.sha256).digest()
    assert len(want) == 92
    assert Encoder(7, KEY, BOOT).messages([REC]) == [want]


def test_golden_flags_of_deletion_and_template_records() -> None:
    (m,) = Encoder(7, None, BOOT).messages([replace(REC, delete=True),
                                            replace(REC, template=True, state=0, cport=0, dport=0)])
    assert m[8 + 4:8 + 8] == bytes.fromhex("80000003")          # ulvs F_DELETE | DROUTE
    assert m[44 + 4:44 + 8] == bytes.fromhex("00001003")        # IP_VS_CONN_F_TEMPLATE | DROUTE
    assert (proto.IP_VS_CONN_F_MASQ, proto.IP_VS_CONN_F_TUNNEL, proto.IP_VS_CONN_F_DROUTE) == (0, 2, 3)


def test_golden_control_messages() -> None:
    enc = Encoder(9, None, BOOT)
    req, end = enc.bulk_request(), enc.bulk_end()
    assert req == bytes.fromhex("0009" "0018" "00" "01" "00" "01") + bytes.fromhex("0000000000000001") \
        + BOOT.to_bytes(8, "big")
    assert end[:8] == bytes.fromhex("0009" "0018" "00" "01" "00" "02") and end[8:16] == (2).to_bytes(8, "big")
    assert enc.messages([], BULK_END)[0][7] == 2
    assert enc.messages([]) == []


# ---- round trips ----------------------------------------------------------------------------------
records = st.builds(
    ConnRecord,
    proto=st.sampled_from((6, 17)),
    fwd=st.sampled_from(sorted(proto.FWD_METHODS)),
    state=st.just(0),
    caddr=st.binary(min_size=4, max_size=4), cport=st.integers(0, 0xFFFF),
    vaddr=st.binary(min_size=4, max_size=4), vport=st.integers(0, 0xFFFF),
    daddr=st.binary(min_size=4, max_size=4), dport=st.integers(0, 0xFFFF),
    fwmark=st.integers(0, 0xFFFFFFFF), timeout=st.integers(0, 0xFFFFFFFF),
    delete=st.booleans(), template=st.booleans(),
).flatmap(lambda r: st.integers(0, 10 if r.proto == 6 and not r.template else 0)
          .map(lambda s: replace(r, state=s)))


@SETTINGS
@given(st.lists(records, max_size=120), st.sampled_from((None, KEY)), st.integers(0, 2**64 - 1),
       st.integers(0, 255), st.integers(120, 9000))
def test_round_trip(recs: list[ConnRecord], key: bytes | None, boot: int, syncid: int, mtu: int) -> None:
    enc = Encoder(syncid, key, boot, mtu)
    dec = Decoder(syncid, key)
    got: list[ConnRecord] = []
    for i, m in enumerate(enc.messages(recs), 1):
        assert len(m) <= mtu - 28
        msg = dec.feed(m)
        assert isinstance(msg, Message)
        assert (msg.kind, msg.seq, msg.boot_id, msg.syncid) == (CONNS, i, boot, syncid)
        got.extend(msg.records)
    assert got == recs
    assert dec.lost == 0
    assert dec.counters["records"] == len(recs)


def test_control_messages_round_trip() -> None:
    enc, dec = Encoder(1, KEY, BOOT), Decoder(1, KEY)
    for m, kind in ((enc.bulk_request(), BULK_REQUEST), (enc.bulk_end(), BULK_END)):
        msg = dec.feed(m)
        assert isinstance(msg, Message) and msg.kind == kind and msg.records == ()


# ---- MTU -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,per", [(None, 40), (KEY, 39)])
def test_mtu_splitting(key: bytes | None, per: int) -> None:
    """1500 - 20 (IP) - 8 (UDP) - 8 (header) - 16 (trailer) [- 32 (HMAC)] bytes of entries."""
    enc = Encoder(1, key, BOOT, 1500)
    assert enc.per_message == per
    msgs = enc.messages([rec(i) for i in range(2 * per + 5)])
    assert [m[4] for m in msgs] == [per, per, 5]                          # Count
    assert [struct.unpack_from("!Q", m, 8 + m[4] * 36)[0] for m in msgs] == [1, 2, 3]
    assert max(len(m) for m in msgs) <= 1472
    assert len(msgs[0]) + 36 > 1472                                       # a full one: no room left
    assert [len(m) for m in msgs] == [struct.unpack_from("!H", m, 2)[0] for m in msgs]


def test_mtu_limits() -> None:
    assert Encoder(1, None, BOOT, 28 + 8 + 16 + 36).per_message == 1
    with pytest.raises(ValueError):
        Encoder(1, None, BOOT, 28 + 8 + 16 + 35)
    assert Encoder(1, None, BOOT, 65535).per_message == 255                # Count is 8 bits


def test_encoder_refuses_bad_input() -> None:
    enc = Encoder(1, None, BOOT)
    for bad in (replace(REC, proto=1), replace(REC, fwd=1), replace(REC, state=11), replace(REC, caddr=b"\0"),
                replace(REC, proto=17, state=1), replace(REC, cport=65536), replace(REC, timeout=-1),
                replace(REC, template=True, state=1), replace(REC, proto=0)):
        with pytest.raises(ValueError):
            enc.messages([bad])
    with pytest.raises(ValueError):
        enc.messages([REC], BULK_END)
    with pytest.raises(ValueError):
        Encoder(256, None, BOOT)
    with pytest.raises(ValueError):
        Encoder(1, b"", BOOT)
    with pytest.raises(ValueError):
        Decoder(1, b"")
    assert enc.seq == 0, "nothing was sent"


# ---- drops -----------------------------------------------------------------------------------------
def _one(key: bytes | None = None, syncid: int = 1, recs: tuple[ConnRecord, ...] = (REC,)) -> bytes:
    return Encoder(syncid, key, BOOT).messages(recs)[0]


def _patched(m: bytes, off: int, value: bytes) -> bytes:
    return m[:off] + value + m[off + len(value):]


def _kind_with_entry() -> bytes:
    return _patched(_one(), 7, b"\x02")


def _drop_cases() -> list[tuple[str, bytes, Decoder]]:
    plain, keyed = Decoder(1, None), Decoder(1, KEY)
    m = _one()
    e = 8   # where the entry starts
    udp = _one(recs=(replace(REC, proto=17, state=0),))
    cases = [
        ("short", b"", plain),
        ("short", m[:7], plain),
        ("short", _patched(m[:8 + 16], 2, b"\x00\x18\x00\x01\x01"), keyed),   # AUTH, no room for it
        ("version", _patched(m, 0, b"\x01"), plain),                    # byte 0 of a v0 message
        ("version", _patched(m, 5, b"\x02"), plain),
        ("version", _patched(m, 6, b"\x80"), plain),                    # unknown hflags
        ("syncid", _one(syncid=2), plain),
        ("size", _patched(m, 2, b"\x00\x3d"), plain),
        ("size", m + b"\0", plain),
        ("size", _patched(m, 4, b"\x02"), plain),                       # Count says two entries
        ("kind", _patched(m, 7, b"\x03"), plain),
        ("kind", _kind_with_entry(), plain),                            # BULK_END with an entry
        ("auth_missing", m, keyed),
        ("auth_invalid", _one(key=b"another key"), keyed),
        ("auth_invalid", _patched(_one(key=KEY), e + 17, b"\x99"), keyed),   # altered on the way
        ("auth_unexpected", _one(key=KEY), plain),
        ("entry", _patched(m, e, b"\x01"), plain),                      # IPv6 entry
        ("entry", _patched(m, e + 2, b"\x10\x24"), plain),              # entry version 1
        ("entry", _patched(m, e + 2, b"\x00\x28"), plain),              # entry size 40
        ("entry", _patched(m, e + 1, b"\x01"), plain),                  # ICMP
        ("entry", _patched(m, e + 4, b"\x00\x00\x00\x01"), plain),      # IP_VS_CONN_F_LOCALNODE
        ("entry", _patched(m, e + 8, b"\x00\x0b"), plain),              # TCP state 11
        ("entry", _patched(udp, e + 8, b"\x00\x01"), plain),            # UDP state 1
    ]
    replayed = Decoder(1, None)
    assert isinstance(replayed.feed(m), Message)
    cases.append(("replay", m, replayed))
    return cases


DROPS = _drop_cases()


@pytest.mark.parametrize("reason,datagram,dec", DROPS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(DROPS)])
def test_drop_reason(reason: str, datagram: bytes, dec: Decoder) -> None:
    before = dict(dec.counters)
    assert dec.feed(datagram) == reason
    assert dec.counters[reason] == before[reason] + 1
    assert dec.counters["accepted"] == before["accepted"]


def test_every_drop_reason_is_tested() -> None:
    assert {r for r, _, _ in DROPS} == set(DROP_REASONS)
    assert {"short", "version", "syncid", "size", "auth_missing", "auth_invalid", "replay", "entry"} \
        <= set(DROP_REASONS)


def test_syncid_zero_accepts_any_pair() -> None:
    assert isinstance(Decoder(0, None).feed(_one(syncid=200)), Message)


def test_wrong_key_never_accepted_and_right_key_is() -> None:
    m = _one(key=KEY)
    assert Decoder(1, b"pair-secret-0123456789abcdeF").feed(m) == "auth_invalid"
    assert isinstance(Decoder(1, KEY).feed(m), Message)


# ---- sequence numbers ------------------------------------------------------------------------------
def test_replay_and_loss_counting() -> None:
    enc, dec = Encoder(1, KEY, BOOT), Decoder(1, KEY)
    msgs = [enc.messages([rec(i)])[0] for i in range(6)]      # sequence numbers 1..6
    assert isinstance(dec.feed(msgs[0]), Message)
    assert isinstance(dec.feed(msgs[1]), Message)
    assert dec.feed(msgs[1]) == "replay"                      # repeated
    assert isinstance(dec.feed(msgs[4]), Message)             # 3 and 4 lost
    assert dec.lost == 2
    assert dec.feed(msgs[2]) == "replay"                      # late: older than the highest
    assert isinstance(dec.feed(msgs[5]), Message)
    assert dec.lost == 2 and dec.highest(BOOT) == 6
    assert dec.counters["replay"] == 2 and dec.counters["accepted"] == 4


def test_a_new_boot_id_starts_a_new_window() -> None:
    dec = Decoder(1, None)
    old = Encoder(1, None, BOOT)
    old_msgs = [old.messages([rec(i)])[0] for i in range(5)]
    assert isinstance(dec.feed(old_msgs[4]), Message)         # first from this boot id: no loss counted
    assert dec.lost == 0
    new = Encoder(1, None, BOOT + 1)                          # the peer restarted: sequence 1 again
    assert isinstance(dec.feed(new.messages([REC])[0]), Message)
    assert dec.lost == 0
    assert dec.feed(old_msgs[3]) == "replay"                  # the old window is still remembered
    assert dec.highest(BOOT + 1) == 1


def test_boot_id_windows_are_bounded() -> None:
    dec = Decoder(1, None)
    for b in range(Decoder.WINDOWS + 5):
        assert isinstance(dec.feed(Encoder(1, None, b).messages([REC])[0]), Message)
    assert dec.highest(0) is None and dec.highest(Decoder.WINDOWS + 4) == 1


def test_a_rejected_datagram_does_not_move_the_window() -> None:
    enc, dec = Encoder(1, None, BOOT), Decoder(1, None)
    first = enc.messages([REC])[0]
    skipped = enc.messages([REC])[0]
    broken = _patched(enc.messages([REC])[0], 8 + 1, b"\x01")   # sequence 3, a bad entry
    assert dec.feed(broken) == "entry"
    assert isinstance(dec.feed(first), Message)
    assert isinstance(dec.feed(skipped), Message)             # still above the window: 2 > 1
    assert dec.lost == 0


# ---- robustness ------------------------------------------------------------------------------------
def _valid_messages() -> list[bytes]:
    enc = Encoder(1, None, BOOT)
    return [enc.messages([REC, replace(REC, proto=17, state=0, delete=True)])[0], enc.bulk_request(),
            Encoder(1, KEY, BOOT).messages([REC])[0]]


def test_every_truncation_is_a_drop() -> None:
    for m in _valid_messages():
        for n in range(len(m)):
            for dec in (Decoder(1, None), Decoder(1, KEY)):
                got = dec.feed(m[:n])
                assert got in DROP_REASONS, (n, got)


@SETTINGS
@given(st.binary(max_size=600))
def test_feed_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    for dec in (Decoder(1, None), Decoder(0, KEY)):
        got = dec.feed(data)
        assert isinstance(got, Message) or got in DROP_REASONS


@SETTINGS
@given(st.sampled_from(range(3)), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
       st.integers(0, 120))
def test_feed_never_raises_on_mutated_messages(which: int, edits: list[tuple[int, int]], cut: int) -> None:
    m = bytearray(_valid_messages()[which])
    for off, value in edits:
        if off < len(m):
            m[off] = value
    data = bytes(m[:len(m) - cut] if cut < len(m) else m)
    for dec in (Decoder(1, None), Decoder(1, KEY), Decoder(0, None)):
        got = dec.feed(data)
        assert isinstance(got, Message) or got in DROP_REASONS
        if isinstance(got, Message):
            assert all(proto.valid_record(r) for r in got.records)


def test_kinds_are_ipvs_spare_low_byte() -> None:
    assert [int(k) for k in Kind] == [0, 1, 2]
    assert (CONNS, BULK_REQUEST, BULK_END) == (Kind.CONNS, Kind.BULK_REQUEST, Kind.BULK_END)
