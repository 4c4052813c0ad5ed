"""Layering (STYLE rule 1): the pure layers -- ulvs/packet, ulvs/core, ulvs/sched, ulvs/config -- do
no I/O and read no clock.  Every module there is parsed with ``ast`` and may not import an I/O, clock,
process or threading module, nor the layers above (ulvs.io, ulvs.runtime, ulvs.cli), by any
form of import: ``import x``, ``import x.y``, ``from x import y``, ``from x.y import z``,
``from ulvs import io``, relative imports, and ``importlib.import_module("x")``/``__import__("x")``
with a literal name.  Imports under ``if TYPE_CHECKING:`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ("ulvs/packet", "ulvs/core", "ulvs/sched", "ulvs/config",
        # the health core; its probes (ulvs/health/checkers) do I/O
        "ulvs/health/__init__.py", "ulvs/health/base.py", "ulvs/health/state.py", "ulvs/health/policy.py",
        "ulvs/vrrp/__init__.py", "ulvs/vrrp/packet.py", "ulvs/vrrp/fsm.py",
        "ulvs/sync/proto.py", "ulvs/sync/__init__.py",
        "ulvs/health/stats.py")
FORBIDDEN = frozenset({
    "socket", "select", "selectors", "asyncio", "uvloop", "time", "threading", "os", "subprocess",
    "ulvs.io", "ulvs.runtime", "ulvs.cli",
})


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imported_modules(source: str, module: str = "ulvs.x", is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``; ``from a import b`` yields both
    ``a`` and ``a.b`` (b may be a submodule)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(module, is_package).split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, module: str = "ulvs.x", is_package: bool = False) -> list[str]:
    return [f"line {line}: {name}" for line, name in imported_modules(source, module, is_package)
            if _is_forbidden(name)]


def _pure_files() -> list[Path]:
    files = sorted(p for d in PURE for p in ((ROOT / d).rglob("*.py") if (ROOT / d).is_dir() else [ROOT / d]))
    assert files, "no modules found: is ROOT right?"
    return files


def test_pure_layers_import_no_io() -> None:
    # One test over every file (not one per file): test ids must not contain "sched", which
    # the project's ``-k "not sched"`` runs exclude.
    found = {}
    for path in _pure_files():
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parent.parts if is_package else rel.parts)
        bad = violations(path.read_text(), module, is_package)
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    assert found == {}


def test_all_pure_layers_are_checked() -> None:
    checked = {p.relative_to(ROOT).parts[1] for p in _pure_files()}
    assert checked == {"packet", "core", "sched", "config", "health", "vrrp", "sync"}
    assert len(_pure_files()) >= 10


@pytest.mark.parametrize("source", [
    "import socket",
    "import os.path",
    "import time as t",
    "import json, select",
    "from time import monotonic",
    "from os import path",
    "from asyncio.events import get_event_loop",
    "import uvloop",
    "import threading",
    "import subprocess",
    "import selectors",
    "from ulvs.io import afpacket",
    "import ulvs.runtime.worker",
    "from ulvs import cli",
    "from ulvs import packet, io",
    "from ..io import tap",
    "from .. import runtime",
    "def f():\n    import socket\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ulvs.runtime import worker\n",
    "import importlib\nimportlib.import_module('socket')\n",
    "__import__('time')",
])
def test_detects_a_violation(source: str) -> None:
    assert violations(source, "ulvs.core.engine") != []


@pytest.mark.parametrize("source", [
    "import struct",
    "from ulvs.packet import checksum",
    "from ulvs.core.model import Dest",
    "from . import xmit",
    "from ..packet import layouts",
    "import ipaddress, heapq",
    "from ulvs import packet",
    "import timeit_lookalike",
    "from osprey import x",
])
def test_accepts_allowed_imports(source: str) -> None:
    assert violations(source, "ulvs.core.engine") == []
