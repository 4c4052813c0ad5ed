"""Scheduler registry: every IPVS scheduler is creatable by name, errors are SchedulerError."""

from __future__ import annotations

import ipaddress

import pytest

from ulvs.core.model import Dest, DestConfig, Proto, Service, ServiceConfig
from ulvs.sched import SchedulerError, create, names, register
from ulvs.sched.base import Scheduler
from ulvs.sched.wlc import WeightedLeastConnection

ALL = ["dh", "fo", "lblc", "lblcr", "lc", "mh", "nq", "ovf", "rr", "sed", "sh", "twos", "wlc", "wrr"]


def test_every_ipvs_scheduler_is_registered() -> None:
    assert names() == ALL


@pytest.mark.parametrize("name", ALL)
def test_create_by_name(name: str) -> None:
    s = create(name)
    assert isinstance(s, Scheduler)
    assert s.name == name
    assert s.schedule(1, 2, 3, 4) is None          # no dests: "no destination available"


@pytest.mark.parametrize("name,flags", [("sh", {"sh-port", "sh-fallback"}),
                                        ("mh", {"mh-port", "mh-fallback"})])
def test_flags_are_accepted(name: str, flags: set[str]) -> None:
    s = create(name, frozenset(flags))
    assert s.flags == frozenset(flags)


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(SchedulerError):
        register("wlc", WeightedLeastConnection)
    assert create("wlc").name == "wlc"             # the original stays registered


def test_unknown_name_and_flag() -> None:
    with pytest.raises(SchedulerError):
        create("nope")
    with pytest.raises(SchedulerError):
        create("sh", frozenset({"sh-bogus"}))
    with pytest.raises(SchedulerError):
        create("mh", frozenset({"mh-port", "mh-unknown"}))


def _service(name: str) -> Service:
    s = create(name)
    return Service(ServiceConfig(Proto.TCP, ipaddress.IPv4Address("10.77.1.1"), 80, sched=name), s)


def _add(svc: Service, w: int, n: int) -> Dest:
    d = Dest(DestConfig(ipaddress.IPv4Address(0x0A4D0000 + n), 80, weight=w), svc, weight=w,
             last_weight=w or 1)
    d.index = len(svc.dests)
    svc.dests.append(d)
    svc.scheduler.add_dest(svc.dests, d)
    return d


@pytest.mark.parametrize("name", ALL)
def test_quiescent_and_overloaded_dests_never_chosen(name: str) -> None:
    svc = _service(name)
    ds = [_add(svc, w, i + 1) for i, w in enumerate([3, 1, 2, 5, 4, 1])]
    sch = svc.scheduler
    ds[0].weight = 0
    sch.upd_dest(svc.dests, ds[0])
    ds[3].weight = 0
    sch.upd_dest(svc.dests, ds[3])
    ds[2].overloaded = True
    sch.upd_dest(svc.dests, ds[2])
    bad = {id(ds[0]), id(ds[2]), id(ds[3])}
    chosen = set()
    for k in range(3000):
        d = sch.schedule(0x0B000000 + k * 7919, 1024 + k, 0x0A000000 + k % 97, 80)
        if d is not None:
            assert id(d) not in bad, (name, d)
            chosen.add(id(d))
            d.activeconns += 1
            sch.conn_changed(d)
    if name not in ("dh", "sh", "mh", "fo", "ovf"):
        assert chosen, name


@pytest.mark.parametrize("name", ALL)
def test_all_unavailable_gives_none(name: str) -> None:
    svc = _service(name)
    ds = [_add(svc, w, i + 1) for i, w in enumerate([3, 1, 2])]
    for d in ds:
        d.weight = 0
        svc.scheduler.upd_dest(svc.dests, d)
    for k in range(200):
        assert svc.scheduler.schedule(0x0B000000 + k, 1000 + k, 0x0A000000 + k, 80) is None
