"""``ulvs check-config``, ``ulvs import`` and the configuration side of ``ulvs run``: exit codes,
messages naming file:line, TOML on stdout, and [daemon] settings under the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ulvs.cli.main import main
from ulvs.config import native
from ulvs.runtime import cli as run_cli
from ulvs.runtime.configfile import load
from ulvs.runtime.daemon import Options

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ulvs.toml"
WEB = ('[[service]]\nprotocol = "tcp"\nvip = "10.0.0.1"\nport = 80\n\n'
       '[[service.dest]]\naddress = "10.0.1.1"\nweight = 2\n')
RULES = "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m -w 3\n"
KEEPALIVED = """\
virtual_server 10.0.0.1 80 {
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 10.0.1.1 80 {
        weight 3
    }
}
"""
LVS_CF = ("network = nat\nvirtual WEB {\naddress = 10.0.0.1 eth0:1\nport = 80\nscheduler = rr\n"
          "server rs1 {\naddress = 10.0.1.1\nactive = 1\nweight = 3\n}\n}\n")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# -- check-config -------------------------------------------------------------------------------
def test_check_config_of_the_example_is_valid_with_warnings_naming_lines(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check-config", str(EXAMPLE)], capsys)
    assert code == 0
    assert out == f"{EXAMPLE}: configuration OK: 3 service(s), 7 dest(s), 2 VRRP instance(s)\n"
    assert err == ""          # health checks, VRRP and sync all run: nothing inert


def test_check_config_warns_of_unauthenticated_sync(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "u.toml"
    cfg.write_text('[sync]\ninterface = "eth1"\n')
    code, out, err = run(["check-config", str(cfg)], capsys)
    assert code == 0
    assert err.splitlines() == [
        f"{cfg}: sync: warning: connection sync without VRRP instances: nothing makes this director "
        "master, so it only receives connections",
        f"{cfg}: sync: warning: connection sync is not authenticated (no key or key_file): any host on "
        "the sync link can inject connections, as with IPVS"]


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(WEB)
    bad.write_text(WEB.replace("weight = 2", "weight = -2"))
    ok = f"{good}: configuration OK: 1 service(s), 1 dest(s)\n"
    assert run(["check-config", str(good)], capsys) == (0, ok, "")
    assert run(["check-config", str(bad)], capsys) == (
        4, "", f"{bad}:8: service[0].dest[0].weight: -2 is out of range (allowed: 0..65535)\n")
    assert run(["check-config", str(tmp_path / "nope.toml")], capsys) == (
        3, "", f"cannot read {tmp_path / 'nope.toml'}: No such file or directory\n")


def test_check_config_format_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "lb.toml"              # the name says TOML; the option says otherwise
    rules.write_text(RULES)
    assert run(["check-config", str(rules)], capsys)[0] == 4
    assert run(["check-config", "--format", "ipvsadm", str(rules)], capsys)[0] == 0
    rules.write_text(RULES.replace("-s rr", "-s nope"))
    code, _, err = run(["check-config", "--format", "ipvsadm", str(rules)], capsys)
    assert code == 4 and err.startswith(f"{rules}:1: unknown scheduler 'nope'")


# -- import -------------------------------------------------------------------------------------
def test_import_ipvsadm_prints_equivalent_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    code, out, err = run(["import", "ipvsadm", str(rules)], capsys)
    assert (code, err) == (0, "")
    assert out == (f"# Converted from {rules} (ipvsadm) by ulvs import.\n\n[[service]]\nprotocol = \"tcp\"\n"
                   'vip = "10.0.0.1"\nport = 80\nscheduler = "rr"\nforwarding = "masq"\n\n'
                   '[[service.dest]]\naddress = "10.0.1.1"\nweight = 3\n')
    imported = native.parse(out, str(rules)).config
    assert [(vs.config.sched, [d.config.weight for d in vs.dests]) for vs in imported.services] == \
        [("rr", [3])]


def test_import_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text(RULES + "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -w 70000\n")
    assert run(["import", "ipvsadm", str(rules)], capsys) == (2, "", f"{rules}:3: illegal weight specified\n")
    assert run(["import", "ipvsadm", str(tmp_path / "none")], capsys)[0] == 2
    with pytest.raises(SystemExit) as e:
        main(["import", "toml", str(rules)])          # import is from the other formats
    assert e.value.code == 2


def test_import_keepalived(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(KEEPALIVED)
    code, out, _err = run(["import", "keepalived", str(conf)], capsys)
    assert code == 0
    (svc,) = native.parse(out, "x").config.services
    assert (svc.config.sched, [(str(d.config.daddr), d.config.weight) for d in svc.dests]) == \
        ("rr", [("10.0.1.1", 3)])


def test_import_lvs_cf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "lvs.cf"
    conf.write_text(LVS_CF)
    code, out, _err = run(["import", "lvs.cf", str(conf)], capsys)
    assert code == 0
    (svc,) = native.parse(out, "x").config.services
    assert (svc.config.sched, [(str(d.config.daddr), d.config.weight) for d in svc.dests]) == \
        ("rr", [("10.0.1.1", 3)])


# -- ulvs run -----------------------------------------------------------------------------------
def test_run_with_a_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "lb.toml"
    bad.write_text(WEB.replace('vip = "10.0.0.1"', 'vip = "10.0.0.300"'))
    code, _, err = run(["run", "--config", str(bad)], capsys)
    assert code == 2
    assert err == f"ulvs run: {bad}:3: service[0].vip: '10.0.0.300' is not an IPv4 address\n"
    code, _, err = run(["run", "--keepalived-conf", str(tmp_path / "none.conf")], capsys)
    assert code == 2 and "cannot read" in err


def test_run_takes_daemon_settings_from_the_config_under_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    started: list[tuple[Options, Any]] = []
    monkeypatch.setattr(run_cli, "run", lambda opts, load: started.append((opts, load)) or 0)
    conf = tmp_path / "lb.toml"
    conf.write_text('[daemon]\ninterfaces = ["eth7"]\nbackend = "tap"\nworkers = 3\nconn_limit = 5000\n'
                    'gro = false\ncontrol_socket = "/tmp/from-config.sock"\ncontrol_group = "lb"\n'
                    + WEB.replace("weight = 2", 'weight = 2\nforwarding = "masq"'))   # tap: masq only
    assert main(["run", "--config", str(conf)]) == 0
    opts, load = started[-1]
    assert (opts.config, opts.interfaces, opts.backend, opts.workers, opts.conn_limit, opts.gro,
            opts.control_socket, opts.control_group) == (
        conf, ["eth7"], "tap", 3, 5000, False, Path("/tmp/from-config.sock"), "lb")
    assert load(conf)[0]["cmd"] == "add_service"           # the daemon's first load: the config's requests
    assert main(["run", "--config", str(conf), "-i", "eth1", "--backend", "afpacket", "--workers", "1",
                 "--conn-limit", "9", "--gro", "on", "--control-socket", "/tmp/cli.sock",
                 "--control-group", "adm"]) == 0
    opts, _ = started[-1]
    assert (opts.interfaces, opts.backend, opts.workers, opts.conn_limit, opts.gro, opts.control_socket,
            opts.control_group) == (["eth1"], "afpacket", 1, 9, True, Path("/tmp/cli.sock"), "adm")
    assert main(["run"]) == 0
    opts, load = started[-1]
    assert (opts.config, opts.interfaces, opts.backend, opts.workers, opts.conn_limit, opts.gro,
            opts.control_socket) == (None, [], "afpacket", 1, 1_000_000, True, Path("/run/ulvs/ulvs.sock"))
    assert main(["run", "--config", str(conf), "--keepalived-conf", str(conf)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize(("fmt", "name"), [("keepalived", "keepalived.conf"), ("lvs.cf", "lvs.cf")])
def test_import_of_the_examples_is_the_same_configuration(fmt: str, name: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLE.parent / name
    code, out, _err = run(["import", fmt, str(path)], capsys)
    assert code == 0
    assert native.parse(out, str(path)).config == load(path, fmt).config


def test_run_keepalived_conf_reads_any_name_as_keepalived(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[Options, Any]] = []
    monkeypatch.setattr(run_cli, "run", lambda opts, load: started.append((opts, load)) or 0)
    conf = tmp_path / "lb.rules"                     # a name that says nothing
    conf.write_text(KEEPALIVED)
    assert main(["run", "--keepalived-conf", str(conf)]) == 0
    opts, load_config = started[-1]
    assert opts.config == conf
    assert [r["cmd"] for r in load_config(conf)] == ["add_service", "add_dest", "set_timeouts"]
