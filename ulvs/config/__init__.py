"""Configuration (L2, pure): every input format parsed into one model (``schema.Config``).

Formats are registered by name; each lives in its own module exposing
``parse(text, source, include) -> LoadResult``:

  toml        ulvs.config.native          the native format (tomllib), strict
  keepalived  ulvs.config.keepalived      keepalived.conf, the LVS + VRRP subset
  ipvsadm     ulvs.config.ipvsadm_rules   ``ipvsadm-save`` / ``ulvsadm -S`` rules
  lvs.cf      ulvs.config.lvscf           Red Hat Piranha's /etc/sysconfig/ha/lvs.cf

Reading files (and resolving includes) is the caller's job: see ``ulvs.runtime.configfile``.
"""

from __future__ import annotations

import importlib
import re

from ulvs.config.schema import (
    Config,
    ConfigError,
    ConfigWarning,
    Includer,
    LoadResult,
    Where,
)

_TOML_KEY = re.compile(r"^[A-Za-z_][\w.-]*\s*=")

FORMATS: dict[str, str] = {
    "toml": "ulvs.config.native",
    "keepalived": "ulvs.config.keepalived",
    "ipvsadm": "ulvs.config.ipvsadm_rules",
    "lvs.cf": "ulvs.config.lvscf",
}


def parse(fmt: str, text: str, source: str, include: Includer | None = None) -> LoadResult:
    """Parse ``text`` (named ``source`` in messages) in format ``fmt``."""
    module = FORMATS.get(fmt)
    if module is None:
        raise ConfigError(f"unknown configuration format {fmt!r} (allowed: {', '.join(FORMATS)})")
    result: LoadResult = importlib.import_module(module).parse(text, source, include)
    return result


def detect(name: str, text: str) -> str:
    """Guess a file's format from its name, then its content."""
    base = name.rsplit("/", 1)[-1].lower()
    if base.endswith(".toml"):
        return "toml"
    if base.startswith("keepalived") or base.endswith(".conf") and "virtual_server" in text:
        return "keepalived"
    if base == "lvs.cf" or base.endswith(".cf"):
        return "lvs.cf"
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", "!")):
            continue
        if s.startswith(("-A", "-a", "--add-service", "--add-server", "ipvsadm", "ulvsadm")):
            return "ipvsadm"
        if s.startswith("[") or _TOML_KEY.match(s):
            return "toml"
        break
    if "virtual_server" in text or "vrrp_instance" in text or "global_defs" in text:
        return "keepalived"
    return "toml"


__all__ = ["FORMATS", "Config", "ConfigError", "ConfigWarning", "LoadResult", "Where", "detect", "parse"]
