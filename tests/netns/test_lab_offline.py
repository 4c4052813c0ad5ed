"""Lab pieces that need no root: argument checks, the byte pattern, the CLI's non-root answer."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from ulvs.cli.main import main
from ulvs.lab import PATTERN, Lab, pattern_bytes, pattern_digest


def test_pattern_is_defined_by_sha256_counters() -> None:
    assert len(PATTERN) == 65536
    assert PATTERN[:32] == hashlib.sha256(bytes(8)).digest()
    data = pattern_bytes(200_000)
    assert data[65536:65600] == PATTERN[:64]
    assert pattern_bytes(100, offset=65500) == PATTERN[65500:] + PATTERN[:64]
    for n in (0, 1, 65536, 200_000):
        assert pattern_digest(n) == hashlib.sha256(data[:n]).hexdigest()


@pytest.mark.parametrize(
    "kwargs", [{"directors": 3}, {"directors": 0}, {"clients": 0}, {"clients": 22}, {"servers": 41}]
)
def test_lab_rejects_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Lab(**kwargs)  # type: ignore[arg-type]


def test_lab_names_before_up() -> None:
    lab = Lab(servers=2)
    assert lab.roles == ("client", "director", "lan", "rs1", "rs2")
    assert lab.addr("rs2") == "10.77.2.12" and lab.addr("director", "server") == "10.77.2.1"
    with pytest.raises(KeyError):
        lab.ns("rs3")
    lab.down()  # never built: nothing to do


@pytest.mark.parametrize("verb", [["up"], ["down"], ["status"]])
def test_cli_needs_root(
    verb: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["lab", *verb]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CAP_NET_ADMIN" in err and "root" in err


def test_netns_tests_skip_with_reason_when_not_root() -> None:
    # Run the netns module in a child pytest whose os.geteuid() pretends not to be root.
    code = (
        "import os, sys, pytest\n"
        "os.geteuid = lambda: 1000\n"
        "sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', 'tests/netns/test_lab.py']))\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert "needs root (CAP_NET_ADMIN) to create network namespaces" in proc.stdout
    assert " passed" not in proc.stdout and " skipped" in proc.stdout
