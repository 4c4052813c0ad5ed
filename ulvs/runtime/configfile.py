"""Reading configuration files: the I/O shell around the pure parsers of ``ulvs.config``.

``load(path, fmt)`` reads a file, picks its format (``ulvs.config.detect`` unless given),
resolves its includes (glob patterns relative to the including file, sorted; loops and nesting
deeper than ``MAX_INCLUDE_DEPTH`` refused) and returns the parser's ``LoadResult``.
``check_runnable(config)`` refuses what the daemon's core would refuse, naming where it came
from; ``inert_warnings(config)`` names what this version of the daemon reads but does not act
on; ``compile_requests(config)`` is the control requests that build it (start and reload).
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulvs.config import FORMATS, detect, parse
from ulvs.config.requests import compile_requests
from ulvs.config.schema import Config, ConfigError, ConfigWarning, LoadResult, Where
from ulvs.core.engine import Core
from ulvs.core.model import FwdMethod
from ulvs.runtime.control import apply_request

MAX_INCLUDE_DEPTH = 16
TAP_METHODS = frozenset({FwdMethod.MASQ})   # the tap backend cannot rewrite MACs (daemon._attach_tap)

log = logging.getLogger("ulvs")

__all__ = ["MAX_INCLUDE_DEPTH", "DaemonConfig", "FileIncluder", "UnreadableError", "check_runnable",
           "compile_requests", "inert_warnings", "load", "read_text"]


class UnreadableError(ConfigError):
    """The configuration file itself cannot be read (``ulvs check-config`` exits 3)."""


def read_text(path: Path) -> str:
    """A configuration file's text; ``UnreadableError`` naming the file when it cannot be read."""
    try:
        return path.read_text()
    except OSError as e:
        raise UnreadableError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UnreadableError(f"cannot read {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


@dataclass(slots=True)
class FileIncluder:
    """The ``Includer`` for files: ``(pattern, including file) -> [(name, text), ...]``.

    A pattern with glob characters may match nothing; a plain file name must exist.  Parsers
    handle the files they get depth first, so the chain of includers of a file is known from
    who returned it: a file that is already on its own chain is a loop."""

    parents: dict[str, str] = field(default_factory=dict)   # file -> the file that included it

    def __call__(self, pattern: str, including: str) -> list[tuple[str, str]]:
        chain = self._chain(including)
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise ConfigError(f"includes nested deeper than {MAX_INCLUDE_DEPTH} files: "
                              f"{' -> '.join(reversed(chain))}")
        base = Path(including).parent
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        if glob.has_magic(full):
            names = sorted(glob.glob(full))
        elif Path(full).exists():
            names = [full]
        else:
            raise ConfigError(f"include {pattern!r}: no such file {full}")
        out = []
        for name in names:
            resolved = str(Path(name).resolve())
            if resolved in (str(Path(c).resolve()) for c in chain):
                raise ConfigError(f"include loop: {' -> '.join([*reversed(chain), name])}")
            self.parents[name] = including
            out.append((name, read_text(Path(name))))
        return out

    def _chain(self, name: str) -> list[str]:
        """``name``, the file that included it, and so on up to the top file."""
        chain = [name]
        while chain[-1] in self.parents and len(chain) <= MAX_INCLUDE_DEPTH + 1:
            chain.append(self.parents[chain[-1]])
        return chain


def load(path: Path, fmt: str | None = None) -> LoadResult:
    """Read and parse a configuration file.  Raises ``ConfigError`` (file:line: key: message)."""
    text = read_text(path)
    name = str(path)
    if fmt is None:
        fmt = detect(name, text)
    elif fmt not in FORMATS:
        raise ConfigError(f"unknown configuration format {fmt!r} (allowed: {', '.join(FORMATS)})")
    try:
        return parse(fmt, text, name, FileIncluder())
    except ImportError as e:
        raise ConfigError(f"the {fmt} format is not available in this ulvs: {e}") from None


def check_runnable(config: Config, backend: str | None = None) -> None:
    """Apply the configuration to a scratch core set up as the daemon's will be for ``backend``
    (default: the configuration's own): anything it refuses (the parsers catch nearly everything
    first; the tap backend serves masq only) is a ``ConfigError`` at the service or dest it came
    from."""
    for inst in config.vrrp:
        if inst.version != 3:
            raise ConfigError(f"vrrp_instance {inst.name}: VRRP version {inst.version} is not supported "
                              "by ulvs (allowed: 3; in keepalived.conf set global_defs { vrrp_version 3 } "
                              "or the instance's version 3)", inst.where or Where(config.source))
    origins = [w for vs in config.services for w in (vs.where, *(rs.where for rs in vs.dests))]
    core = Core(conn_limit=1)
    if (backend or config.daemon.backend) == "tap":
        core.allowed_methods = TAP_METHODS
    reply = apply_request(core, {"cmd": "batch", "requests": compile_requests(config)}, 0.0)
    if reply["ok"]:
        return
    index, failed = reply.get("index"), reply.get("reply")
    where = origins[index] if isinstance(index, int) and index < len(origins) else None
    message = failed.get("error") if isinstance(failed, dict) else reply.get("error")
    raise ConfigError(str(message), where or Where(config.source))


def inert_warnings(config: Config) -> tuple[ConfigWarning, ...]:
    """Parts of a valid configuration that do less than they seem to: said at start and reload.
    (Health checks, sorry servers and quorum run in the health monitor, VRRP in the VRRP
    speaker, connection sync in the daemon.)"""
    out = []
    if config.sync is not None and not config.vrrp:
        out.append(ConfigWarning(Where(config.source, key="sync"),
                                 "connection sync without VRRP instances: nothing makes this director "
                                 "master, so it only receives connections"))
    if config.sync is not None and config.sync.key is None and config.sync.key_file is None:
        out.append(ConfigWarning(Where(config.source, key="sync"),
                                 "connection sync is not authenticated (no key or key_file): any host on "
                                 "the sync link can inject connections, as with IPVS"))
    return tuple(out)


class DaemonConfig:
    """The daemon's configuration file: loaded once before start (its ``[daemon]`` settings
    shape the daemon), then again on every reload.  Called with the path, as the daemon's
    ``load_config``, it returns the requests; the first call returns the start-up load's.
    Warnings are logged on every load; a failing load raises ``ConfigError``.  ``backend`` is
    the command line's, if it gave one.  ``current`` is the model of the last load returned
    (the daemon reads its health policy: inhibit_on_failure, sorry servers)."""

    def __init__(self, path: Path, fmt: str | None = None, backend: str | None = None) -> None:
        self.path, self.fmt = path, fmt
        self.backend = backend
        self.first = self._load(path)
        self.current = self.first     # the configuration whose requests the last call returned
        self.backend = backend or self.first.daemon.backend
        self._started = False

    def _load(self, path: Path) -> Config:
        result = load(path, self.fmt)
        check_runnable(result.config, self.backend)
        for w in result.warnings + inert_warnings(result.config):
            log.warning("%s", w)
        return result.config

    def __call__(self, path: Path) -> list[dict[str, Any]]:
        if not self._started:
            self._started = True
            return compile_requests(self.first)
        config = self._load(path)
        if config.daemon != self.first.daemon:
            log.warning("%s: [daemon] settings changed: they take effect when ulvs restarts", path)
        self.current = config
        return compile_requests(config)
