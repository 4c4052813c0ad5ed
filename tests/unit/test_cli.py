"""The ulvs command line: version, help, in-process demo, argument and privilege errors."""

from __future__ import annotations

import re

import pytest

from ulvs import __version__
from ulvs.cli.main import main
from ulvs.runtime import daemon


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ulvs {__version__}"


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["demo", "--requests", "0"], ["run", "--backend", "nope"], ["nope"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_in_process_demo_shows_the_core_at_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--in-process"]) == 0
    out = capsys.readouterr().out
    assert "TCP  10.77.1.100:80 wlc" in out
    rows = re.findall(r"^  (10\.77\.2\.1\d:8080) +(\d) +(\d+)", out, re.M)
    assert [(w, int(c)) for _, w, c in rows] == [("3", 30), ("2", 20), ("1", 10)]
    assert "Drops: none" in out


def test_missing_privileges_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(daemon, "has_capability", lambda cap: cap != daemon.CAP_NET_RAW)
    code = daemon.run(daemon.Options(), lambda path: [])
    assert code == 2
    assert [r.getMessage() for r in caplog.records] == [
        "ulvs run needs CAP_NET_RAW (run as root or grant the capability)"]
    monkeypatch.setattr(daemon, "has_capability", lambda cap: cap != daemon.CAP_NET_ADMIN)
    caplog.clear()
    assert daemon.run(daemon.Options(), lambda path: []) == 2
    assert "CAP_NET_ADMIN" in caplog.records[0].getMessage()
