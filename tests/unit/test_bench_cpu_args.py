"""bench/bench_cpu.py refuses bad arguments before it needs root or a lab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_cpu.py"


def test_bad_arguments_are_refused_with_the_option_named() -> None:
    p = subprocess.run([sys.executable, str(BENCH), "--configs", "v4"], capture_output=True, text=True)
    assert p.returncode == 2 and "--configs: 'v4' is not RING or RING:PACE" in p.stderr
    p = subprocess.run([sys.executable, str(BENCH), "--rates", "fast"], capture_output=True, text=True)
    assert p.returncode == 2 and "--rates: not a list of integers" in p.stderr
