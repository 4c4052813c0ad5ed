"""Reading configuration files (``ulvs.runtime.configfile``): format detection, unreadable files,
includes (globs relative to the including file, sorted; loops and depth refused) and the
daemon's loader (start-up load reused, reloads, warnings logged), and what the core refuses."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from ulvs.config.schema import Config, ConfigError, RealServer, VirtualService, Where
from ulvs.core.model import DestConfig, FwdMethod, Proto, ServiceConfig
from ulvs.runtime.configfile import MAX_INCLUDE_DEPTH, DaemonConfig, UnreadableError, check_runnable, load

A = ipaddress.IPv4Address

WEB = ('[[service]]\nprotocol = "tcp"\nvip = "10.0.0.{n}"\nport = 80\n'
       '[[service.dest]]\naddress = "10.0.1.{n}"\n')
RULES = "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n"


def vips(path: Path) -> list[str]:
    return [str(vs.config.vaddr) for vs in load(path).config.services]


def test_format_from_name_content_or_argument(tmp_path: Path) -> None:
    (tmp_path / "lb.toml").write_text(WEB.format(n=1))
    (tmp_path / "rules").write_text(RULES)
    (tmp_path / "rules.toml").write_text(RULES)
    assert vips(tmp_path / "lb.toml") == ["10.0.0.1"]
    assert [vs.config.sched for vs in load(tmp_path / "rules").config.services] == ["rr"]
    assert load(tmp_path / "rules.toml", "ipvsadm").config.services[0].config.sched == "rr"
    with pytest.raises(ConfigError, match=r"rules.toml:1: invalid TOML"):
        load(tmp_path / "rules.toml")
    with pytest.raises(ConfigError, match=r"unknown configuration format 'yaml' \(allowed: toml, "):
        load(tmp_path / "lb.toml", "yaml")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError) as e:
        load(tmp_path / "missing.toml")
    assert str(e.value) == f"cannot read {tmp_path / 'missing.toml'}: No such file or directory"
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(UnreadableError, match="not UTF-8 text"):
        load(tmp_path / "binary.toml")


def test_includes_are_globs_relative_to_the_including_file_sorted(tmp_path: Path) -> None:
    (tmp_path / "etc" / "services.d").mkdir(parents=True)
    (tmp_path / "etc" / "lb.toml").write_text('include = ["services.d/*.toml", "none.d/*.toml"]\n'
                                              + WEB.format(n=1))
    (tmp_path / "etc" / "services.d" / "b.toml").write_text(WEB.format(n=3))
    (tmp_path / "etc" / "services.d" / "a.toml").write_text('include = "more/c.toml"\n' + WEB.format(n=2))
    (tmp_path / "etc" / "services.d" / "more").mkdir()
    (tmp_path / "etc" / "services.d" / "more" / "c.toml").write_text(WEB.format(n=4))
    assert vips(tmp_path / "etc" / "lb.toml") == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.3"]


def test_errors_in_included_files_name_that_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "lb.toml").write_text('include = "svc.toml"\n' + WEB.format(n=1))
    (tmp_path / "svc.toml").write_text(WEB.format(n=1).replace("port = 80", "port = 80\nops = true"))
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "lb.toml")
    assert str(e.value) == f"{tmp_path / 'svc.toml'}:5: service[0].ops: one-packet scheduling (ops) is for " \
                           "UDP services only"
    (tmp_path / "svc.toml").write_text(WEB.format(n=1))
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "lb.toml")
    assert str(e.value).startswith(f"{tmp_path / 'svc.toml'}:1: service[0]: service tcp 10.0.0.1:80 is "
                                   f"defined twice (first: {tmp_path / 'lb.toml'}:2: service[0])")
    (tmp_path / "svc.toml").write_text("[daemon]\nworkers = 2\n")
    with pytest.raises(ConfigError, match=r"svc.toml:1: daemon: unknown key 'daemon' \(allowed: include, "
                                          r"service, vrrp\)"):
        load(tmp_path / "lb.toml")


def test_a_missing_include_names_the_include_line(tmp_path: Path) -> None:
    (tmp_path / "lb.toml").write_text('router_id = "x"\ninclude = ["gone.toml"]\n')
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "lb.toml")
    assert str(e.value) == f"{tmp_path / 'lb.toml'}:2: include: include 'gone.toml': no such file " \
                           f"{tmp_path / 'gone.toml'}"


def test_include_loops_and_depth_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('include = "b.toml"\n')
    (tmp_path / "b.toml").write_text('include = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"b.toml:1: include: include loop: .*a.toml -> .*b.toml -> "
                                          r".*a.toml$"):
        load(tmp_path / "a.toml")
    for i in range(MAX_INCLUDE_DEPTH + 2):
        (tmp_path / f"d{i}.toml").write_text(f'include = "d{i + 1}.toml"\n')
    (tmp_path / f"d{MAX_INCLUDE_DEPTH + 2}.toml").write_text("")
    with pytest.raises(ConfigError, match=f"includes nested deeper than {MAX_INCLUDE_DEPTH} files"):
        load(tmp_path / "d0.toml")
    for i in range(MAX_INCLUDE_DEPTH - 1):    # 16 files deep is fine
        (tmp_path / f"e{i}.toml").write_text(f'include = "e{i + 1}.toml"\n')
    (tmp_path / f"e{MAX_INCLUDE_DEPTH - 1}.toml").write_text(WEB.format(n=9))
    assert vips(tmp_path / "e0.toml") == ["10.0.0.9"]


def test_the_same_file_included_twice_is_not_a_loop(tmp_path: Path) -> None:
    (tmp_path / "lb.toml").write_text('include = ["x.toml", "y.toml"]\n')
    (tmp_path / "x.toml").write_text('include = "common.toml"\n')
    (tmp_path / "y.toml").write_text('include = "common.toml"\n')
    (tmp_path / "common.toml").write_text("")
    assert load(tmp_path / "lb.toml").config.services == ()


def test_daemon_loader_reuses_the_start_up_load_then_reloads(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lb.toml"
    path.write_text("[daemon]\nworkers = 2\n" + WEB.format(n=1)
                    + "[[service.dest.check]]\ntype = \"TCP_CHECK\"\n")
    caplog.set_level(logging.WARNING, "ulvs")
    loader = DaemonConfig(path)
    assert loader.first.daemon.workers == 2
    assert [r.getMessage() for r in caplog.records] == []   # health checks run: nothing inert
    path.write_text(WEB.format(n=2))
    first = loader(path)                                   # the daemon's start: the load above
    assert first[0]["service"]["vaddr"] == "10.0.0.1"
    assert loader.current is loader.first
    caplog.clear()
    again = loader(path)                                   # SIGHUP: read again
    assert again[0]["service"]["vaddr"] == "10.0.0.2"
    assert loader.current.services[0].config.vaddr == ipaddress.IPv4Address("10.0.0.2")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: [daemon] settings changed: they take effect when ulvs restarts"]
    path.write_text(WEB.format(n=2).replace("port = 80", "port = 80000"))
    with pytest.raises(ConfigError, match=r"lb.toml:4: service\[0\].port: 80000 is out of range"):
        loader(path)


def test_what_the_core_refuses_is_an_error_at_its_service_or_dest() -> None:
    good = RealServer(DestConfig(A("10.0.1.1"), 80), where=Where("lb.conf", 7))
    tunnel = RealServer(DestConfig(A("10.0.1.2"), 80, method=FwdMethod.TUNNEL), where=Where("lb.conf", 9))
    svc = VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.1"), 80), (good, tunnel),
                         where=Where("lb.conf", 5))
    with pytest.raises(ConfigError) as e:
        check_runnable(Config(services=(svc,), source="lb.conf"))
    assert str(e.value) == "lb.conf:9: the tunnel forwarding method is not supported yet; use masq or droute"
    unknown = VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.2"), 80, sched="nope"),
                             where=Where("lb.conf", 12))
    with pytest.raises(ConfigError, match=r"^lb.conf:12: unknown scheduler 'nope'"):
        check_runnable(Config(services=(unknown,), source="lb.conf"))
    check_runnable(Config(services=(VirtualService(svc.config, (good,)),)))


def test_the_tap_backend_refuses_droute_dests_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(WEB.format(n=1))                                   # droute: the default
    with pytest.raises(ConfigError) as e:
        DaemonConfig(path, backend="tap")
    assert str(e.value) == (f"{path}:5: service[0].dest[0]: forwarding method droute is not available "
                            "with this dataplane backend; use masq")
    path.write_text('[daemon]\nbackend = "tap"\n' + WEB.format(n=1))
    with pytest.raises(ConfigError, match="lb.toml:7: service"):
        DaemonConfig(path)
    assert DaemonConfig(path, backend="afpacket").backend == "afpacket"    # the command line wins
