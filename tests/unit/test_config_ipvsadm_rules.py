"""ipvsadm rules files -> ``Config`` -> control requests (``ulvs.config.ipvsadm_rules``,
``compile_requests``): the same requests the old load path (``parse_restore``) produced, and the
same table on a real Core, with every refusal naming the file and line.

Test ids avoid the word "sched" (the project's ``-k "not sched"`` runs deselect it)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ulvs.config import detect, ipvsadm_rules
from ulvs.config.ipvsadm import parse_restore
from ulvs.config.schema import ConfigError, Timeouts
from ulvs.core import Core
from ulvs.core.model import FwdMethod, Proto
from ulvs.runtime.configfile import compile_requests
from ulvs.runtime.control import apply_request, build_snapshot, diff_requests

A = ipaddress.IPv4Address
SAVED = """\
-A -t 10.0.0.1:80 -s wlc
-a -t 10.0.0.1:80 -r 192.168.1.1:80 -m -w 3
-a -t 10.0.0.1:80 -r 192.168.1.2:8080 -m -w 1 -x 100 -y 50
-A -u 10.0.0.1:53 -s sh -p 60 -M 255.255.255.0 -o -b sh-fallback,sh-port
-a -u 10.0.0.1:53 -r 192.168.1.1:53 -g -w 1
-A -f 7 -s rr --group-member tcp:10.0.0.2:80 --group-member tcp:10.0.0.2:443
-a -f 7 -r 192.168.1.3:0 -g -w 0
"""
DEFAULT_TIMEOUTS = {"cmd": "set_timeouts", "tcp": 900, "tcpfin": 120, "udp": 300}


def old_requests(text: str) -> list[dict[str, Any]]:
    """What ``ulvs run --config`` applied before the config model existed."""
    return [req for _line, req in parse_restore(text)]


def table(requests: list[dict[str, Any]]) -> Any:
    core = Core(conn_limit=16)
    assert apply_request(core, {"cmd": "batch", "requests": requests}, 0.0)["ok"]
    snap = build_snapshot(core, 0.0, conns=False)
    return [(s.config, [d.config for d in s.dests]) for s in snap.services], snap.timeouts


def test_saved_rules_compile_to_the_requests_of_the_old_load_path() -> None:
    config = ipvsadm_rules.parse(SAVED, "rules").config
    assert compile_requests(config) == old_requests(SAVED) + [DEFAULT_TIMEOUTS]
    web, dns, group = config.services
    assert [d.config.method for d in web.dests] == [FwdMethod.MASQ, FwdMethod.MASQ]
    assert dns.config.flags == frozenset({"sh-fallback", "sh-port"}) and dns.config.ops
    assert group.config.proto == Proto.FWM and group.config.fwmark == 7
    assert web.where is not None and str(web.where) == "rules:1"
    assert str(web.dests[1].where) == "rules:3"
    assert detect("rules", SAVED) == "ipvsadm"


def test_edits_deletes_clear_and_set_build_the_same_table_as_restoring_them() -> None:
    text = ("-A -t 10.0.0.9:80\n-a -t 10.0.0.9:80 -r 10.0.1.9:80 -m\n-C\n" + SAVED +
            "-E -t 10.0.0.1:80 -s rr\n-e -t 10.0.0.1:80 -r 192.168.1.1:80 -m -w 5\n"
            "-d -t 10.0.0.1:80 -r 192.168.1.2:8080\n-D -u 10.0.0.1:53\n-Z\n--set 0 60 0\n")
    config = ipvsadm_rules.parse(text, "rules").config
    assert config.timeouts == Timeouts(900, 60, 300)
    assert table(compile_requests(config)) == table(old_requests(text))
    assert [vs.config.key[0] for vs in config.services] == [Proto.TCP, Proto.FWM]


def test_reload_by_diff_of_compiled_requests_changes_only_the_difference() -> None:
    core = Core(conn_limit=16)
    assert apply_request(core, {"cmd": "batch", "requests": compile_requests(
        ipvsadm_rules.parse(SAVED, "rules").config)}, 0.0)["ok"]
    changed = SAVED.replace("-m -w 3", "-m -w 4")
    assert diff_requests(core, compile_requests(ipvsadm_rules.parse(changed, "rules").config)) == [
        {"cmd": "edit_dest", "service": {"proto": "tcp", "vaddr": "10.0.0.1", "vport": 80},
         "dest": {"daddr": "192.168.1.1", "dport": 80, "weight": 4, "method": "masq", "u_threshold": 0,
                  "l_threshold": 0}}]


@pytest.mark.parametrize(("text", "message"), [
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.1.1 -w 99999\n", "rules:2: illegal weight specified"),
    ("\n-A -t 10.0.0.1:80 -s nope\n", "rules:2: unknown scheduler 'nope' (allowed: dh, fo, lblc, lblcr, lc, "
                                      "mh, nq, ovf, rr, sed, sh, twos, wlc, wrr)"),
    ("-A -t 10.0.0.1:80\n-A -t 10.0.0.1:80\n", "rules:2: service TCP 10.0.0.1:80 already exists"),
    ("-A -t 10.0.0.1:80\n-A -f 1 --group-member tcp:10.0.0.1:80\n",
     "rules:2: TCP 10.0.0.1:80 already belongs to TCP 10.0.0.1:80"),
    ("-a -t 10.0.0.1:80 -r 10.0.1.1\n", "rules:1: no such service TCP 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.1.1\n-a -t 10.0.0.1:80 -r 10.0.1.1\n",
     "rules:3: dest 10.0.1.1:80 already exists in TCP 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-e -t 10.0.0.1:80 -r 10.0.1.1\n", "rules:2: no dest 10.0.1.1:80 in TCP 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-d -t 10.0.0.1:80 -r 10.0.1.1\n", "rules:2: no dest 10.0.1.1:80 in TCP 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.1.1 -i\n",
     "rules:2: the tunnel forwarding method (-i) is not supported yet; use -m or -g"),
    ("-L -n\n", "rules:1: the 'list' command cannot be restored"),
], ids=["usage", "unknown", "twice", "entry", "no-service", "dest-twice", "edit", "delete", "tunnel", "list"])
def test_refusals_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        ipvsadm_rules.parse(text, "rules")
    assert str(e.value) == message


def test_empty_rules_are_an_empty_configuration() -> None:
    config = ipvsadm_rules.parse("# nothing\n\n", "rules").config
    assert config.services == () and compile_requests(config) == [DEFAULT_TIMEOUTS]
