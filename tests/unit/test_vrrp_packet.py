"""The VRRPv3 advert codec (ulvs.vrrp.packet): scapy's VRRPv3 layer is the oracle both ways.

* encode() is byte-identical to scapy's IP/VRRPv3 payload (scapy computes the pseudo-header
  checksum), and decode_ip() reads scapy's packets; hypothesis runs both over arbitrary fields;
* every drop reason is reachable, and truncated or arbitrary input never raises;
* the ulvs HMAC trailer: valid, wrong key, tampered, missing.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from ulvs.packet.checksum import checksum
from ulvs.vrrp.packet import AUTH_TRAILER_LEN, DROP_REASONS, Advert, decode_ip, encode

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SRC, DST = "192.168.1.10", "224.0.0.18"
VIPS = ["192.168.1.100", "192.168.1.101"]
KEY = b"shared secret"


def a(s: str) -> bytes:
    return IPv4Address(s).packed


def scapy_ip(payload: VRRPv3 | VRRP | Raw | bytes, src: str = SRC, dst: str = DST, ttl: int = 255,
             proto: int = 112) -> bytes:
    if isinstance(payload, bytes):
        payload = Raw(payload)
    return bytes(IP(src=src, dst=dst, ttl=ttl, proto=proto) / payload)


def wrap(payload: bytes, src: bytes = a(SRC), dst: bytes = a(DST), ttl: int = 255, proto: int = 112,
         ihl: int = 5, total: int | None = None) -> bytes:
    """An IPv4 header (IHL 5, options zero-filled) in front of ``payload``, without scapy."""
    options = bytes(max(0, ihl - 5) * 4)
    length = 20 + len(options) + len(payload) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length & 0xFFFF, 1, 0, ttl, proto, 0, src, dst)
    head = head[:10] + struct.pack("!H", checksum(head + options)) + head[12:]
    return head + options + payload


def standard(**kw: object) -> bytes:
    """Our encoding of a typical advert (two VIPs), as a whole IP packet."""
    args: dict[str, object] = {"key": None, "seq": 0, "pseudo_header": True} | kw
    return wrap(encode(51, 150, 100, [a(v) for v in VIPS], a(SRC), a(DST), **args))  # type: ignore[arg-type]


# -- scapy as the oracle ------------------------------------------------------------------------


def test_encode_matches_scapy() -> None:
    ours = encode(51, 150, 100, [a(v) for v in VIPS], a(SRC), a(DST))
    theirs = scapy_ip(VRRPv3(vrid=51, priority=150, adv=100, addrlist=VIPS))[20:]
    assert ours == theirs


def test_encode_without_pseudo_header_is_the_plain_checksum() -> None:
    """keepalived's v3_checksum_as_v2: the Internet checksum of the VRRP message alone."""
    ours = encode(51, 150, 100, [a(v) for v in VIPS], a(SRC), a(DST), pseudo_header=False)
    zero = bytearray(scapy_ip(VRRPv3(vrid=51, priority=150, adv=100, addrlist=VIPS, chksum=0))[20:])
    zero[6:8] = struct.pack("!H", scapy_checksum(bytes(zero)))
    assert ours == bytes(zero)
    assert ours != encode(51, 150, 100, [a(v) for v in VIPS], a(SRC), a(DST))


def test_decode_reads_scapy() -> None:
    adv = decode_ip(scapy_ip(VRRPv3(vrid=7, priority=254, adv=4095, addrlist=VIPS)))
    assert adv == Advert(7, 254, 4095, tuple(a(v) for v in VIPS), a(SRC), a(DST), 255, None)


def test_scapy_reads_ours() -> None:
    pkt = IP(standard())
    vrrp = pkt[VRRPv3]
    assert (vrrp.version, vrrp.type, vrrp.vrid, vrrp.priority) == (3, 1, 51, 150)
    assert (vrrp.ipcount, vrrp.adv, vrrp.res) == (2, 100, 0)
    assert vrrp.addrlist == VIPS
    rebuilt = IP(bytes(pkt))
    rebuilt[VRRPv3].chksum = None           # scapy recomputes it: it must agree with ours
    assert bytes(rebuilt)[20:] == bytes(pkt)[20:]


@st.composite
def fields(draw: st.DrawFn) -> tuple[int, int, int, list[str], str, str]:
    ip = st.integers(0, 2**32 - 1).map(lambda i: str(IPv4Address(i)))
    return (draw(st.integers(1, 255)), draw(st.integers(0, 255)), draw(st.integers(1, 4095)),
            draw(st.lists(ip, min_size=1, max_size=20)), draw(ip), draw(ip))


@SETTINGS
@given(fields())
def test_scapy_oracle_both_ways(f: tuple[int, int, int, list[str], str, str]) -> None:
    vrid, prio, adv, vips, src, dst = f
    theirs = scapy_ip(VRRPv3(vrid=vrid, priority=prio, adv=adv, addrlist=vips), src=src, dst=dst)
    assert encode(vrid, prio, adv, [a(v) for v in vips], a(src), a(dst)) == theirs[20:]
    assert decode_ip(theirs, pseudo_header=True) == Advert(vrid, prio, adv, tuple(a(v) for v in vips),
                                                           a(src), a(dst), 255, None)


# -- round trips --------------------------------------------------------------------------------


@SETTINGS
@given(fields(), st.none() | st.binary(min_size=1, max_size=64), st.integers(0, 2**64 - 1), st.booleans())
def test_round_trip(f: tuple[int, int, int, list[str], str, str], key: bytes | None, seq: int,
                    pseudo: bool) -> None:
    vrid, prio, adv, vips, src, dst = f
    addrs = tuple(a(v) for v in vips)
    pkt = wrap(encode(vrid, prio, adv, addrs, a(src), a(dst), key=key, seq=seq, pseudo_header=pseudo),
               src=a(src), dst=a(dst))
    want = Advert(vrid, prio, adv, addrs, a(src), a(dst), 255, seq if key is not None else None)
    assert decode_ip(pkt, key=key, pseudo_header=pseudo) == want
    assert decode_ip(memoryview(pkt), key=key) == want      # None accepts either checksum flavour
    # Without a key a trailer is accepted unchecked; the other checksum flavour is refused.
    assert decode_ip(pkt) == Advert(vrid, prio, adv, addrs, a(src), a(dst), 255, None)
    assert decode_ip(pkt, key=key, pseudo_header=not pseudo) in ("checksum", want)


def test_ip_options_are_skipped() -> None:
    payload = encode(51, 150, 100, [a(VIPS[0])], a(SRC), a(DST))
    adv = decode_ip(wrap(payload, ihl=7))
    assert isinstance(adv, Advert) and adv.addresses == (a(VIPS[0]),)


@pytest.mark.parametrize("kwargs", [
    {"vrid": 0}, {"vrid": 256}, {"priority": -1}, {"priority": 256}, {"adver_int_cs": 0},
    {"adver_int_cs": 4096}, {"addresses": []}, {"addresses": [b"\x01\x02\x03"]},
    {"addresses": [a(VIPS[0])] * 256}, {"src": b"\x00" * 16}, {"key": b""},
    {"key": KEY, "seq": -1}, {"key": KEY, "seq": 2**64},
])
def test_encode_rejects_misuse(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"vrid": 1, "priority": 100, "adver_int_cs": 100,
                               "addresses": [a(VIPS[0])], "src": a(SRC), "dst": a(DST)} | kwargs
    with pytest.raises(ValueError):
        encode(**args)  # type: ignore[arg-type]


# -- drop reasons -------------------------------------------------------------------------------


def _patched(pkt: bytes, offset: int, value: bytes) -> bytes:
    return pkt[:offset] + value + pkt[offset + len(value):]


def _flipped(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0xFF
    return bytes(b)


def _one_vip(**kw: object) -> bytes:
    return encode(51, 150, 100, [a(VIPS[0])], a(SRC), a(DST), **kw)  # type: ignore[arg-type]


def _with_count(count: int) -> bytes:
    """One address but Count says ``count``; the checksum is right for the bytes sent."""
    body = bytearray(_patched(_one_vip(), 3, bytes((count,))))
    body[6:8] = b"\0\0"
    initial = sum(struct.unpack("!4H", a(SRC) + a(DST))) + 112 + len(body)
    body[6:8] = struct.pack("!H", checksum(bytes(body), initial=initial))
    return wrap(bytes(body))


DROPS: dict[str, list[tuple[bytes, dict[str, object]]]] = {
    "short": [(b"", {}), (standard()[:19], {}), (standard()[:-1], {}),
              (wrap(_one_vip()[:7]), {}), (wrap(b"", ihl=6)[:22], {})],
    "not_ipv4": [(bytes(IPv6(src="fe80::1", dst="ff02::12", nh=112, hlim=255) / Raw(_one_vip())), {}),
                 (_patched(standard(), 0, b"\x55"), {})],
    "protocol": [(scapy_ip(_one_vip(), proto=17), {})],
    "ttl": [(scapy_ip(_one_vip(), ttl=254), {}), (scapy_ip(_one_vip(), ttl=1), {})],
    "version": [(scapy_ip(VRRP(vrid=51, priority=150, addrlist=VIPS)), {}),
                (wrap(_patched(_one_vip(), 0, b"\x41")), {})],
    "type": [(wrap(_patched(_one_vip(), 0, b"\x32")), {})],
    "length": [(_with_count(2), {}), (_with_count(0), {}), (wrap(_one_vip() + b"\0" * 4), {}),
               (wrap(_one_vip() + b"XX" + bytes(AUTH_TRAILER_LEN - 2)), {}),
               (wrap(_one_vip(), total=19), {}), (_patched(standard(), 0, b"\x44"), {})],
    "checksum": [(wrap(_flipped(_one_vip(), 7)), {}),
                 (wrap(_patched(_one_vip(), 2, b"\x01")), {}),
                 (wrap(_one_vip(), src=a("192.168.1.11")), {}),           # the pseudo-header counts
                 (wrap(_one_vip(pseudo_header=False)), {"pseudo_header": True}),
                 (wrap(_one_vip()), {"pseudo_header": False})],
    "auth_missing": [(wrap(_one_vip()), {"key": KEY})],
    "auth_invalid": [(wrap(_one_vip(key=KEY, seq=9)), {"key": b"another key"}),
                     (wrap(_flipped(_one_vip(key=KEY, seq=9), -1)), {"key": KEY}),         # MAC
                     (wrap(_patched(_one_vip(key=KEY, seq=9), 23, b"\x08")), {"key": KEY}),  # sequence
                     (wrap(_patched(_one_vip(key=KEY, seq=9), 14, b"\x01")), {"key": KEY})],  # reserved
}


def test_every_drop_reason_has_cases() -> None:
    assert tuple(DROPS) == DROP_REASONS


DROP_CASES = [(reason, i) for reason, cases in DROPS.items() for i, _ in enumerate(cases)]


@pytest.mark.parametrize(("reason", "index"), DROP_CASES)
def test_drop_reason(reason: str, index: int) -> None:
    pkt, kwargs = DROPS[reason][index]
    assert decode_ip(pkt, **kwargs) == reason  # type: ignore[arg-type]


def test_auth_trailer_valid() -> None:
    pkt = wrap(_one_vip(key=KEY, seq=2**40 + 5))
    adv = decode_ip(pkt, key=KEY)
    assert isinstance(adv, Advert) and adv.auth_seq == 2**40 + 5
    assert len(pkt) == 20 + 12 + AUTH_TRAILER_LEN
    # the trailer does not change the standard part, nor its checksum
    assert pkt[20:32] == _one_vip()


def test_auth_binds_the_addresses() -> None:
    """The MAC covers src and dst: a replay with another source fails even with a fixed checksum."""
    payload = _one_vip(key=KEY, seq=1, pseudo_header=False)
    assert isinstance(decode_ip(wrap(payload), key=KEY), Advert)
    assert decode_ip(wrap(payload, src=a("192.168.1.11")), key=KEY) == "auth_invalid"
    assert decode_ip(wrap(payload, dst=a("192.168.1.20")), key=KEY) == "auth_invalid"


# -- never raises -------------------------------------------------------------------------------


@pytest.mark.parametrize("fix_length", [False, True])
def test_every_truncation_is_a_drop(fix_length: bool) -> None:
    pkt = wrap(_one_vip(key=KEY, seq=3))
    for n in range(len(pkt)):
        cut = pkt[:n]
        if fix_length and n >= 4:
            cut = _patched(cut, 2, struct.pack("!H", n))
        assert decode_ip(cut, key=KEY) in DROP_REASONS, n


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    got = decode_ip(data)
    assert isinstance(got, Advert) or got in DROP_REASONS


@SETTINGS
@given(st.binary(max_size=120), st.sampled_from([None, KEY]), st.sampled_from([None, True, False]))
def test_arbitrary_vrrp_payload_never_raises(payload: bytes, key: bytes | None, pseudo: bool | None) -> None:
    got = decode_ip(wrap(payload), key=key, pseudo_header=pseudo)
    assert isinstance(got, Advert) or got in DROP_REASONS


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 20 + 12 + AUTH_TRAILER_LEN - 1), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_mutated_adverts_never_raise(mutations: list[tuple[int, int]]) -> None:
    pkt = bytearray(wrap(_one_vip(key=KEY, seq=3)))
    for offset, value in mutations:
        pkt[offset] = value
    got = decode_ip(bytes(pkt), key=KEY)
    assert isinstance(got, Advert) or got in DROP_REASONS
