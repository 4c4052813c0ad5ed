"""Passive ejection in the native TOML format: ``[service.ejection]``, its checks and rendering."""

from __future__ import annotations

import pytest

from ulvs.config import keepalived, native
from ulvs.config.render import render
from ulvs.config.schema import ConfigError, EjectionSettings, LoadResult
from ulvs.health.policy import EjectionPolicy

HEAD = """\
[[service]]
protocol = "tcp"
vip = "10.0.0.1"
port = 80
forwarding = "masq"
"""
DESTS = """
[[service.dest]]
address = "10.0.1.1"

[[service.dest]]
address = "10.0.1.2"
"""


def parse(ejection: str, head: str = HEAD) -> LoadResult:
    return native.parse(head + ejection + DESTS, "lb.toml")


def test_off_unless_configured() -> None:
    assert parse("").config.services[0].ejection is None


def test_the_table_with_every_key() -> None:
    vs = parse("[service.ejection]\nthreshold = 0.5\nmin_syns = 5\nbackoff = 2\nbackoff_max = 8\n"
               "max_fraction = 0.34\n").config.services[0]
    assert vs.ejection == EjectionSettings(0.5, 5, 2.0, 8.0, 0.34)


def test_an_empty_table_switches_it_on_with_the_defaults() -> None:
    assert parse("[service.ejection]\n").config.services[0].ejection == EjectionSettings()
    assert parse("ejection = {}\n").config.services[0].ejection == EjectionSettings()


def test_a_backoff_above_the_default_maximum_raises_the_maximum_with_it() -> None:
    e = parse("[service.ejection]\nbackoff = 600\n").config.services[0].ejection
    assert e is not None and (e.backoff, e.backoff_max) == (600.0, 600.0)


@pytest.mark.parametrize(("body", "line", "key", "message"), [
    ("threshold = 1", 7, "service[0].ejection.threshold",
     "1 is out of range (allowed: 0 <= threshold < 1: the fraction of SYNs left unanswered that "
     "ejects a dest)"),
    ("threshold = -0.1", 7, "service[0].ejection.threshold", "-0.1 is out of range (allowed: 0..1)"),
    ("min_syns = 0", 7, "service[0].ejection.min_syns", "0 is out of range (allowed: 1..1000000)"),
    ("min_syns = 2.5", 7, "service[0].ejection.min_syns", "must be an integer 1..1000000, not a float"),
    ("backoff = 0", 7, "service[0].ejection.backoff", "0 is out of range (allowed: 0.001..86400)"),
    ("backoff = 5\nbackoff_max = 2", 8, "service[0].ejection.backoff_max",
     "2 is out of range (allowed: 5..86400)"),
    ("max_fraction = 1.5", 7, "service[0].ejection.max_fraction", "1.5 is out of range (allowed: 0..1)"),
    ("syns = 5", 7, "service[0].ejection.syns",
     "unknown key 'syns' (allowed: backoff, backoff_max, max_fraction, min_syns, threshold)"),
])
def test_errors_name_the_line_key_path_and_range(body: str, line: int, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"[service.ejection]\n{body}\n")
    e = info.value
    assert e.where is not None
    assert (e.where.file, e.where.line, e.where.key, e.message) == ("lb.toml", line, key, message)


def test_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"service\[0\]\.ejection: must be a table, not an integer"):
        parse("ejection = 1\n")


def test_a_udp_service_cannot_have_it() -> None:
    with pytest.raises(ConfigError, match="judges TCP connections: this service has no TCP entry"):
        parse("[service.ejection]\n", HEAD.replace('"tcp"', '"udp"').replace('forwarding = "masq"\n', ""))


def test_droute_dests_are_warned_about() -> None:
    result = parse("[service.ejection]\n", HEAD.replace('forwarding = "masq"\n', ""))
    assert [w.message for w in result.warnings] == [
        "passive ejection sees only masq dests' answers (droute replies bypass the director): nothing "
        "is judged"]


def test_render_round_trips_it() -> None:
    for body in ("", "[service.ejection]\n", "[service.ejection]\nthreshold = 0.25\nmin_syns = 3\n"
                                             "backoff = 1.5\nbackoff_max = 12\nmax_fraction = 1\n"):
        config = parse(body).config
        text = render(config)
        assert native.parse(text, "lb.toml").config == config
        assert ("[service.ejection]" in text) == bool(body)


def test_the_settings_become_the_policy() -> None:
    policy = EjectionPolicy.from_settings(EjectionSettings(0.3, 4, 2.0, 8.0, 0.25))
    assert policy == EjectionPolicy(threshold=0.3, min_syns=4, base=2.0, max=8.0, max_fraction=0.25)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 8.0]


def test_the_model_checks_its_own_ranges() -> None:
    with pytest.raises(ValueError, match="backoff_max"):
        EjectionSettings(backoff=10, backoff_max=5)
    with pytest.raises(ValueError, match="threshold"):
        EjectionSettings(threshold=1.0)


KEEPALIVED = """
virtual_server 10.0.0.1 80 {
    lb_kind NAT
    ejection {
        threshold 0.5
        min_syns 5
        backoff 2
        backoff_max 8
    }
    real_server 10.0.1.1 80 {
        TCP_CHECK {
        }
    }
}
"""


def test_keepalived_ejection_block_is_a_ulvs_extension() -> None:
    vs = keepalived.parse(KEEPALIVED, "k.conf").config.services[0]
    assert vs.ejection == EjectionSettings(0.5, 5, 2.0, 8.0)
    settings = "        threshold 0.5\n        min_syns 5\n        backoff 2\n        backoff_max 8\n"
    empty = KEEPALIVED.replace(settings, "")
    assert keepalived.parse(empty, "k.conf").config.services[0].ejection == EjectionSettings()
    without = KEEPALIVED.replace("    ejection {\n" + settings + "    }\n", "")
    assert keepalived.parse(without, "k.conf").config.services[0].ejection is None


def test_keepalived_ejection_needs_a_tcp_service_and_is_set_once() -> None:
    udp = KEEPALIVED.replace("    lb_kind NAT\n", "    lb_kind NAT\n    protocol UDP\n")
    with pytest.raises(ConfigError, match="k.conf:5: ejection: passive ejection judges TCP connections"):
        keepalived.parse(udp, "k.conf")
    twice = KEEPALIVED.replace("    real_server", "    ejection {\n    }\n    real_server")
    with pytest.raises(ConfigError, match="ejection is already set in this virtual_server"):
        keepalived.parse(twice, "k.conf")


@pytest.mark.parametrize(("body", "message"), [
    ("threshold 1", "k.conf:5: threshold: 1 out of range (allowed: 0 <= value < 1)"),
    ("min_syns 0", "k.conf:5: min_syns: 0 out of range (allowed: 1..1000000)"),
    ("backoff 5\n        backoff_max 2",
     "k.conf:6: backoff_max: 2 seconds out of range (allowed: >= backoff (5) and <= 86400)"),
    ("max_fraction 2", "k.conf:5: max_fraction: 2 out of range (allowed: 0..1)"),
    ("syns 5", "k.conf:5: syns: unknown ejection key (allowed: backoff, backoff_max, max_fraction, "
               "min_syns, threshold)"),
])
def test_keepalived_ejection_errors_name_the_line_and_range(body: str, message: str) -> None:
    text = KEEPALIVED.replace("threshold 0.5\n        min_syns 5\n        backoff 2\n        backoff_max 8",
                              body)
    with pytest.raises(ConfigError) as info:
        keepalived.parse(text, "k.conf")
    assert str(info.value) == message


def test_keepalived_ejection_round_trips_through_the_native_format() -> None:
    config = keepalived.parse(KEEPALIVED, "k.conf").config
    again = native.parse(render(config), "k.conf").config
    assert again.services[0].ejection == config.services[0].ejection
