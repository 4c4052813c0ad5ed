"""``Core.explain`` and ``Scheduler.peek``: the decision for a flow, predicted without side effects.

For every registered scheduler, explain() must name the dest the next real SYN gets, and leave
the whole core -- connection table, counters, scheduler cursors, caches, random generators --
exactly as it was (compared as a pickle of the core before and after).
"""

from __future__ import annotations

import ipaddress
import pickle

import pytest

from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.packet import builder
from ulvs.sched import names as scheduler_names

A = ipaddress.IPv4Address
CMAC, DMAC, LMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe", "02:00:00:00:02:fe"
VIP = "10.77.1.100"
DESTS = ["10.77.2.11", "10.77.2.12", "10.77.2.13", "10.77.2.14", "10.77.2.15"]
WEIGHTS = [3, 1, 2, 0, 5]                  # one quiescent dest
SCHED_FLAGS = {"sh": frozenset({"sh-port"}), "mh": frozenset({"mh-port"})}


def core_with(sched: str, *, persistent: int | None = None, udp: bool = False) -> Core:
    core = Core(conn_limit=4096)
    proto = Proto.UDP if udp else Proto.TCP
    cfg = ServiceConfig(proto, A(VIP), 80, sched=sched, flags=SCHED_FLAGS.get(sched, frozenset()),
                        persistent=persistent)
    core.add_service(cfg)
    for i, (d, w) in enumerate(zip(DESTS, WEIGHTS, strict=True)):
        core.add_dest(cfg.key, DestConfig(A(d), 80, weight=w, method=FwdMethod.MASQ,
                                          u_threshold=4 if i == 2 else 0))
        core.set_neighbor(A(d), 2, bytes([2, 0, 0, 0, 2, i + 1]), builder.mac(LMAC))
    return core


def send(core: Core, caddr: str, cport: int, flags: int, now: float) -> str | None:
    f = bytearray(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, 80, flags))
    v, _eg, _reason = core.process(f, 1, now)
    if v != Verdict.FORWARD:
        return None
    assert f[0:5] == bytes([2, 0, 0, 0, 2])
    return DESTS[f[5] - 1]


def fingerprint(core: Core) -> bytes:
    return pickle.dumps(core)


@pytest.mark.parametrize("sched", scheduler_names())
def test_explain_predicts_the_next_schedule_and_changes_nothing(sched: str) -> None:
    core = core_with(sched)
    now = 10.0
    for i in range(80):
        caddr, cport = f"10.77.0.{10 + i % 7}", 1000 + i
        before = fingerprint(core)
        e = core.explain(Proto.TCP, A(caddr), cport, A(VIP), 80, now)
        assert fingerprint(core) == before, f"{sched}: explain changed the core at flow {i}"
        got = send(core, caddr, cport, 0x02, now)
        if got is None:
            assert e.kind == "no_dest", (sched, i, e)
        else:
            assert e.kind == "scheduled" and str(e.daddr) == got, (sched, i, e, got)
            assert e.sched == sched and e.dport == 80 and e.method == FwdMethod.MASQ
        if i % 3 == 0:
            send(core, caddr, cport, 0x10, now)          # ACK: ESTABLISHED (an active conn)
        if i % 11 == 10:
            now += 130.0                                  # let embryonic conns expire
            core.handle_timer(now)
        now += 0.5


@pytest.mark.parametrize("sched", scheduler_names())
def test_explain_leaves_the_sequence_of_decisions_unchanged(sched: str) -> None:
    # Twin cores: one is asked before every SYN, the other never; both must decide alike.
    # (twos draws random numbers: give both the same seeded generator.)
    import random

    cores = [core_with(sched), core_with(sched)]
    if sched == "twos":
        for c in cores:
            (svc,) = c.services.values()
            svc.scheduler._rng = rng = random.Random(7)    # type: ignore[attr-defined]
            svc.scheduler._random = rng.random            # type: ignore[attr-defined]
    seqs: list[list[str | None]] = [[], []]
    for which, core in enumerate(cores):
        for i in range(40):
            caddr, cport = f"10.77.0.{10 + i % 5}", 2000 + i
            if which == 0:
                for _ in range(3):
                    core.explain(Proto.TCP, A(caddr), cport, A(VIP), 80, 1.0 + i)
            seqs[which].append(send(core, caddr, cport, 0x02, 1.0 + i))
    assert seqs[0] == seqs[1]


def test_explain_an_existing_connection() -> None:
    core = core_with("rr")
    got = send(core, "10.77.0.10", 1000, 0x02, 0.0)
    send(core, "10.77.0.10", 1000, 0x10, 0.0)
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1000, A(VIP), 80, 5.0)
    assert (e.kind, str(e.daddr), e.state) == ("connection", got, "ESTABLISHED")
    assert e.expires == pytest.approx(895.0, abs=1.0)
    assert "existing connection in state ESTABLISHED" in e.reason
    # the dest removed under it: the connection still holds the flow, and says so
    (svc,) = core.services.values()
    assert got is not None
    core.del_dest(svc.config.key, A(got), 80)
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1000, A(VIP), 80, 5.0)
    assert e.kind == "connection" and e.removed and "dest_gone" in e.reason


def test_explain_a_closed_connection_is_rescheduled() -> None:
    core = core_with("rr")
    send(core, "10.77.0.10", 1000, 0x02, 0.0)
    send(core, "10.77.0.10", 1000, 0x10, 0.0)             # ACK: ESTABLISHED
    send(core, "10.77.0.10", 1000, 0x04, 0.0)             # RST: CLOSE
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1000, A(VIP), 80, 1.0)
    assert e.kind == "scheduled" and e.replaces == "CLOSE"
    assert send(core, "10.77.0.10", 1000, 0x02, 1.0) == str(e.daddr)


def test_explain_a_persistence_template() -> None:
    core = core_with("rr", persistent=300)
    first = send(core, "10.77.0.10", 1000, 0x02, 0.0)
    e = core.explain(Proto.TCP, A("10.77.0.10"), 5555, A(VIP), 80, 10.0)
    assert (e.kind, str(e.daddr), str(e.client)) == ("template", first, "10.77.0.10")
    assert e.expires == 300                               # held while it controls a connection
    assert send(core, "10.77.0.10", 5555, 0x02, 10.0) == first
    # another client has no template: the scheduler decides (and a template would be made)
    e = core.explain(Proto.TCP, A("10.77.0.99"), 5555, A(VIP), 80, 10.0)
    assert e.kind == "scheduled"
    assert send(core, "10.77.0.99", 5555, 0x02, 10.0) == str(e.daddr)


def test_explain_no_service_and_no_destination() -> None:
    core = core_with("wlc")
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1000, A(VIP), 81, 0.0)
    assert e.kind == "no_service" and "no service for 10.77.1.100:81" in e.reason
    e = core.explain(Proto.UDP, A("10.77.0.10"), 1000, A(VIP), 80, 0.0)
    assert e.kind == "no_service"
    (svc,) = core.services.values()
    for d in list(svc.dests):
        core.edit_dest(svc.config.key, DestConfig(d.config.daddr, 80, weight=0, method=FwdMethod.MASQ))
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1000, A(VIP), 80, 0.0)
    assert e.kind == "no_dest" and "no destination available" in e.reason
    assert core.drop_counts()["no_dest"] == 0             # nothing was counted


def test_peek_restores_sched_data() -> None:
    # A scheduler that keeps per-dest state in dest.sched_data and mutates it when scheduling.
    from ulvs.sched.base import Scheduler

    class Counting(Scheduler):
        name = "counting"

        def rebuild(self, dests):  # type: ignore[no-untyped-def]
            self.dests = dests
            for d in dests:
                d.sched_data = d.sched_data or {"picks": 0}

        def schedule(self, caddr: int, cport: int, vaddr: int, vport: int):  # type: ignore[no-untyped-def]
            best = min(self.dests, key=lambda d: d.sched_data["picks"])
            best.sched_data["picks"] += 1
            return best

    core = core_with("rr")
    (svc,) = core.services.values()
    sched = Counting()
    sched.rebuild(svc.dests)
    svc.dests[0].sched_data["picks"] = 2
    data = [d.sched_data for d in svc.dests]
    picked = sched.peek(1, 2, 3, 4, 0.0)
    assert picked is svc.dests[1]
    assert [d.sched_data for d in svc.dests] == [{"picks": 2}] + [{"picks": 0}] * 4
    assert all(d.sched_data is x for d, x in zip(svc.dests, data, strict=True))
    assert sched.schedule(1, 2, 3, 4) is picked


def test_explain_says_when_the_table_is_full() -> None:
    core = core_with("rr")
    core.table.limit = 2
    send(core, "10.77.0.10", 1000, 0x02, 0.0)
    send(core, "10.77.0.10", 1000, 0x10, 0.0)              # ESTABLISHED: never evicted
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1001, A(VIP), 80, 0.0)
    assert e.kind == "scheduled" and not e.table_full
    send(core, "10.77.0.10", 1001, 0x02, 0.0)
    send(core, "10.77.0.10", 1001, 0x10, 0.0)
    e = core.explain(Proto.TCP, A("10.77.0.10"), 1002, A(VIP), 80, 0.0)
    assert e.table_full and "conn_table_full" in e.reason
    assert send(core, "10.77.0.10", 1002, 0x02, 0.0) is None
    assert core.drop_counts()["conn_table_full"] == 1
