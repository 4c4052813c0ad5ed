"""Packaging without Docker: the compose file (services, capabilities, networks, addresses and
the configurations they mount), the Prometheus and Grafana files, the dashboard's metric names
against the exporter's own list, the Dockerfile's promises, and the entrypoint as POSIX sh."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ulvs.cli.main import main as ulvs_main
from ulvs.config.schema import parse_listen
from ulvs.runtime.configfile import load
from ulvs.runtime.metrics import METRICS, OPTIONAL, sample_names

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "ulvs.json"
DIRECTORS = ("director1", "director2")
REAL_SERVERS = ("rs1", "rs2", "rs3")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def subnets(c: dict[str, Any]) -> dict[str, ipaddress.IPv4Network]:
    return {name: ipaddress.IPv4Network(net["ipam"]["config"][0]["subnet"])
            for name, net in c["networks"].items()}


def mount(service: dict[str, Any], inside: str) -> Path:
    """The repository path a service's bind mount puts at ``inside`` (a file or a directory)."""
    for v in service.get("volumes", []):
        src, dst, *_ = v.split(":")
        if inside == dst or inside.startswith(dst.rstrip("/") + "/"):
            return (DOCKER / src / inside[len(dst):].lstrip("/")).resolve()
    raise AssertionError(f"nothing mounted at {inside}")


# -- compose --------------------------------------------------------------------------------------
def test_compose_has_the_lvs_nat_topology_and_monitoring() -> None:
    c = compose()
    assert set(c["services"]) == {"client", *DIRECTORS, *REAL_SERVERS, "prometheus", "grafana"}
    nets = {name: set(s["networks"]) for name, s in c["services"].items()}
    assert nets["client"] == {"frontend"}
    for rs in REAL_SERVERS:
        assert nets[rs] == {"backend"}
        assert c["services"][rs]["image"].startswith("nginx:")
    for d in DIRECTORS:
        assert nets[d] == {"frontend", "backend", "monitoring"}
    assert nets["prometheus"] == nets["grafana"] == {"monitoring"}
    assert set(c["networks"]) == {"frontend", "backend", "monitoring"}


def test_directors_hold_net_admin_and_net_raw_only() -> None:
    c = compose()
    for d in DIRECTORS:
        s = c["services"][d]
        assert s["cap_drop"] == ["ALL"]
        assert sorted(s["cap_add"]) == ["NET_ADMIN", "NET_RAW"]
        assert not s.get("privileged") and "user" not in s           # the image's non-root user
        assert not any("no-new-privileges" in o for o in s.get("security_opt", []))   # would void setcap
        assert s["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        assert s["init"] is True
        assert "ports" not in s                                       # /metrics is never published


def test_addresses_are_in_their_networks_and_unique() -> None:
    c = compose()
    nets = subnets(c)
    seen: dict[str, set[ipaddress.IPv4Address]] = {n: set() for n in nets}
    for name, s in c["services"].items():
        for net, how in s["networks"].items():
            addr = ipaddress.IPv4Address(how["ipv4_address"])
            assert addr in nets[net], (name, net, addr)
            assert addr not in seen[net], (name, net, addr)
            seen[net].add(addr)
            dynamic = ipaddress.IPv4Network(c["networks"][net]["ipam"]["config"][0]["ip_range"])
            assert addr not in dynamic and dynamic.subnet_of(nets[net])
    # interfaces: the directors' configurations name eth0 frontend, eth1 backend (priority order)
    for d in DIRECTORS:
        prio = {net: how["priority"] for net, how in c["services"][d]["networks"].items()}
        assert prio["frontend"] > prio["backend"] > prio["monitoring"]


def director_config(name: str) -> Any:
    s = compose()["services"][name]
    return load(mount(s, s["environment"]["ULVS_CONFIG"])).config


def test_the_directors_configurations_run_and_match_the_networks(capsys: pytest.CaptureFixture[str]) -> None:
    c = compose()
    nets = subnets(c)
    addrs = {n: {ipaddress.IPv4Address(s["networks"][n]["ipv4_address"]) for s in c["services"].values()
                 if n in s["networks"]} for n in nets}
    for d in DIRECTORS:
        s = c["services"][d]
        path = mount(s, s["environment"]["ULVS_CONFIG"])
        assert ulvs_main(["check-config", str(path)]) == 0, capsys.readouterr().err
        config = director_config(d)
        assert config.daemon.interfaces == ("eth0", "eth1")
        (web,) = config.services
        assert web.config.vaddr in nets["frontend"] and web.config.vaddr not in addrs["frontend"]
        for rs in web.dests:
            assert rs.config.daddr in addrs["backend"]
        side = {"eth0": "frontend", "eth1": "backend"}
        for inst in config.vrrp:
            net = side[inst.interface]
            for v in inst.virtual_addresses:
                assert v.address.ip in nets[net] and v.address.ip not in addrs[net]
        assert {m for g in config.vrrp_sync_groups for m in g.members} == {i.name for i in config.vrrp}
        listen = parse_listen(s["environment"]["ULVS_METRICS_LISTEN"])
        assert listen is not None and listen[0] == s["networks"]["monitoring"]["ipv4_address"]
    one, two = (director_config(d) for d in DIRECTORS)
    assert one.services == two.services
    assert [i.priority for i in one.vrrp] != [i.priority for i in two.vrrp]
    # the real servers send replies through the floating gateway the pair holds
    gateway = {str(v.address.ip) for i in one.vrrp if i.interface == "eth1" for v in i.virtual_addresses}
    for rs in REAL_SERVERS:
        cmd = " ".join(c["services"][rs]["command"])
        assert re.search(r"ip route replace default via (\S+)", cmd).group(1) in gateway  # type: ignore[union-attr]


def test_prometheus_scrapes_both_exporters_and_grafana_finds_prometheus() -> None:
    c = compose()
    prom = yaml.safe_load(mount(c["services"]["prometheus"], "/etc/prometheus/prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    targets = {t: sc["labels"]["instance"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {c["services"][d]["environment"]["ULVS_METRICS_LISTEN"]: d for d in DIRECTORS}
    grafana = c["services"]["grafana"]
    (source,) = yaml.safe_load(mount(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")
                               .read_text())["datasources"]
    prom_addr = c["services"]["prometheus"]["networks"]["monitoring"]["ipv4_address"]
    assert source["url"] == f"http://{prom_addr}:9090" and source["type"] == "prometheus"
    (provider,) = yaml.safe_load(mount(grafana, "/etc/grafana/provisioning/dashboards/ulvs.yml")
                                 .read_text())["providers"]
    assert mount(grafana, provider["options"]["path"] + "/ulvs.json") == DASHBOARD
    dash = json.loads(DASHBOARD.read_text())
    choice = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert choice["current"]["value"] == source["uid"]


# -- the dashboard ----------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        out = []
        for p in panels:
            out += [t["expr"] for t in p.get("targets", [])]
            out += walk(p.get("panels", []))
        return out
    dash = json.loads(DASHBOARD.read_text())
    return walk(dash["panels"]) + [v["definition"] for v in dash["templating"]["list"] if "definition" in v]


def test_every_metric_the_dashboard_uses_is_one_the_exporter_emits() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    used = {name for e in exprs for name in re.findall(r"\b(ulvs_[A-Za-z0-9_:]*)", e)}
    emitted = sample_names()
    assert used - set(emitted) == set()
    families = {emitted[n] for n in used}
    # every family has a panel
    assert set(METRICS) - families == set()
    assert OPTIONAL <= families


def test_the_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "ulvs" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"]


# -- Dockerfile and entrypoint ----------------------------------------------------------------------
def test_the_dockerfile_builds_a_slim_non_root_image_with_two_capabilities() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all("slim" in f for f in froms)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users == ["ulvs"]
    assert "setcap cap_net_admin,cap_net_raw+ep" in text and "venv --copies" in text
    assert 'ENTRYPOINT ["/usr/local/bin/ulvs-entrypoint"]' in text
    assert "COPY docker/entrypoint.sh /usr/local/bin/ulvs-entrypoint" in text
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
    assert re.search(r"install -d -o ulvs -g ulvs .*/run/ulvs", text)     # the control socket's home
    assert "nftables" in text and "iproute2" in text


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_the_entrypoint_parses_as_posix_sh(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    script = DOCKER / "entrypoint.sh"
    assert script.read_text().startswith("#!/bin/sh\n")
    assert script.stat().st_mode & 0o111
    argv = [shell, "--posix", "-n", str(script)] if shell == "bash" else [shell, "-n", str(script)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for bashism in ("[[", "function ", "local ", "$'", "<(", "declare ", "${!", "==", "pipefail"):
        assert bashism not in text, bashism
