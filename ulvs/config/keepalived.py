"""keepalived.conf, the LVS + VRRP subset, parsed into the configuration model (``schema.Config``).

Grammar (keepalived.conf(5), ``acassen/keepalived:lib/parser.c``): one keyword per line, followed by
its values; ``{`` and ``}`` open and close a block and are tokens even when glued to a word; ``#``
and ``!`` start a comment anywhere outside a double-quoted string; ``include PATTERN`` (at any
level) splices in the files the caller's ``Includer`` resolves the pattern to.  Every token keeps
its (file, line), so every warning and error names where it came from.

What ulvs does not implement is never dropped silently: an unknown keyword, or a keepalived one
ulvs does not act on, is a ``ConfigWarning`` with its file:line, and a block ulvs does not support
is skipped as a whole with one warning.  What cannot run (a bad address, a value out of range, an
unknown scheduler, a missing ``}``) raises ``ConfigError``.

Mapping choices where keepalived and ulvs differ:

* Defaults are keepalived's, not ipvsadm's: ``lvs_method`` NAT (masq), ``protocol`` TCP,
  ``vrrp_version`` 2, ``persistence_timeout`` without a value 360 s, and ``persistence_granularity``
  alone turns persistence on at 360 s.
* Direct routing and tunnelling keep the destination port, so a real server of an address/port
  service with DR or TUN must use the service's port (ipvsadm silently forces it; ulvs refuses it).
* ulvs cannot see netfilter marks.  A service group (proto FWM) therefore answers its member
  entries: ``virtual_server group NAME`` becomes one service group whose members are the group's
  ``IP PORT`` / range / CIDR entries (with the virtual server's protocol).  A ``fwmark N`` entry in
  the group gives the service group its number; without one, groups are numbered 1, 2, ... in the
  order of their virtual servers, skipping numbers given explicitly.  ``virtual_server fwmark N``
  on its own has no members and is an error.
* Checker timing given at the virtual_server or real_server level (``connect_timeout``, ``retry``,
  ``delay_before_retry``, ``warmup``; ``delay_loop``, ``alpha`` and ``virtualhost`` of a
  real_server) has no field of its own in the model: it is copied into each checker that accepts
  the key and does not set it, as keepalived cascades it.  Defaults are left to the health monitor.
* Script lines (``notify_*``, ``quorum_up``/``quorum_down``) become argument vectors with
  ``shlex.split``; they are never run through a shell.
* ``virtual_ipaddress_excluded`` addresses are not moved (warning); SSL_GET's global ``SSL``
  context, ``vrrp_script``, ``track_script`` and authentication are not supported (warnings).

ulvs extensions, inside ``virtual_server``, as the native keys of the same names.  They are not
keepalived keywords (keepalived itself reports each as an unknown keyword), so a file that uses
them is for ulvs:

* ``slow_start SECONDS``: a dest that returns to service ramps its weight up from 1 over that
  many seconds (0, the default, is off);
* ``failed_conns keep|expire``: a failed dest's TCP connections are kept until they time out
  (default) or expired at once (``reset`` is refused: the dataplane cannot make an acceptable
  RST);
* ``ejection { threshold 0.5  min_syns 10  backoff 10  backoff_max 300  max_fraction 0.5 }``:
  passive ejection of masq dests (``schema.EjectionSettings``; each key optional, the block
  alone switches it on with the defaults).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ulvs.config.schema import (
    CHECK_KEYS,
    FAILED_CONNS,
    FAILED_CONNS_REFUSED,
    MAX_EJECTION_BACKOFF,
    MAX_EJECTION_SYNS,
    MAX_SLOW_START,
    URL_KEYS,
    Argv,
    CheckSpec,
    Config,
    ConfigError,
    ConfigWarning,
    EjectionSettings,
    Endpoint,
    Includer,
    LoadResult,
    RealServer,
    SyncSettings,
    Timeouts,
    VirtualAddress,
    VirtualService,
    VrrpInstance,
    VrrpSyncGroup,
    Where,
    check_tables,
)
from ulvs.core.model import (
    MAX_THRESHOLD,
    MAX_WEIGHT,
    DestConfig,
    FwdMethod,
    GroupMember,
    Proto,
    ServiceConfig,
)
from ulvs.sched import base as sched_base

T = TypeVar("T")

MAX_INCLUDE_DEPTH = 16
MAX_GROUP_MEMBERS = 4096           # a range or CIDR entry may not expand beyond this
PERSISTENCE_DEFAULT = 360          # keepalived IPVS_SVC_PERSISTENT_TIMEOUT
MAX_PERSISTENCE = 2**31 - 1
MAX_U32 = 2**32 - 1
VRRP_DEFAULT_VERSION = 2           # keepalived.conf(5): vrrp_version defaults to 2 (IPv4)
V3_MAX_ADVERT = 40.95              # RFC 5798 5.2.7: 12-bit centiseconds
V2_MAX_ADVERT = 255                # RFC 3768 5.3.7: 8-bit seconds

# ==========================================================================================
# Tokens and statements
# ==========================================================================================


@dataclass(frozen=True, slots=True)
class Token:
    """One word, one quoted string or one brace, with where it was read."""

    text: str
    file: str
    line: int
    quoted: bool = False

    @property
    def is_open(self) -> bool:
        return not self.quoted and self.text == "{"

    @property
    def is_close(self) -> bool:
        return not self.quoted and self.text == "}"

    @property
    def is_brace(self) -> bool:
        return self.is_open or self.is_close


_WORD_END = frozenset('{}#!"')


def tokenize(text: str, file: str) -> list[Token]:
    """Split one file's text into tokens (includes are not resolved here)."""
    tokens: list[Token] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c.isspace():
                i += 1
            elif c in "#!":
                break
            elif c in "{}":
                tokens.append(Token(c, file, lineno))
                i += 1
            elif c == '"':
                end = line.find('"', i + 1)
                if end < 0:
                    raise ConfigError("unterminated quoted string (a closing \" is missing on this line)",
                                      Where(file, lineno))
                tokens.append(Token(line[i + 1:end], file, lineno, quoted=True))
                i = end + 1
            else:
                j = i
                while j < n and not line[j].isspace() and line[j] not in _WORD_END:
                    j += 1
                tokens.append(Token(line[i:j], file, lineno))
                i = j
    return tokens


@dataclass(frozen=True, slots=True)
class Stmt:
    """A keyword line: its words and, when a ``{`` followed, the statements of its block."""

    words: tuple[Token, ...]
    block: tuple[Stmt, ...] | None = None

    @property
    def key(self) -> str:
        return self.words[0].text

    @property
    def args(self) -> tuple[Token, ...]:
        return self.words[1:]

    def where(self, key: str | None = None) -> Where:
        first = self.words[0]
        return Where(first.file, first.line, key or self.key)


def _same_line(a: Token, b: Token) -> bool:
    return a.line == b.line and a.file == b.file


def build_tree(tokens: list[Token]) -> tuple[Stmt, ...]:
    """Group tokens into statements (one per line) and blocks (balanced braces)."""
    children: list[Stmt] = []
    stack: list[tuple[tuple[Token, ...], Token, list[Stmt]]] = []   # (header, '{', outer children)
    words: list[Token] = []
    for tok in tokens:
        if tok.is_open:
            if words:
                header = tuple(words)
                words = []
            elif children and children[-1].block is None:
                header = children.pop().words          # "keyword" then "{" on the next line
            else:
                raise ConfigError("'{' without a keyword before it", Where(tok.file, tok.line))
            stack.append((header, tok, children))
            children = []
        elif tok.is_close:
            if words:
                children.append(Stmt(tuple(words)))
                words = []
            if not stack:
                raise ConfigError("unexpected '}' (no block is open)", Where(tok.file, tok.line))
            header, _, outer = stack.pop()
            outer.append(Stmt(header, tuple(children)))
            children = outer
        else:
            if words and not _same_line(words[-1], tok):
                children.append(Stmt(tuple(words)))
                words = []
            words.append(tok)
    if words:
        children.append(Stmt(tuple(words)))
    if stack:
        header, opened, _ = stack[-1]
        raise ConfigError(f"missing '}}' closing the {header[0].text!r} block opened here",
                          Where(opened.file, opened.line, header[0].text))
    return tuple(children)


# ==========================================================================================
# Includes
# ==========================================================================================


class _Ctx:
    """Warnings collected while parsing one document."""

    def __init__(self) -> None:
        self.warnings: list[ConfigWarning] = []

    def warn(self, where: Where, message: str) -> None:
        self.warnings.append(ConfigWarning(where, message))

    def unsupported(self, stmt: Stmt, why: str = "not supported by ulvs") -> None:
        skipped = "; block skipped" if stmt.block is not None else "; ignored"
        self.warn(stmt.where(), f"{stmt.key}: {why}{skipped}")

    def unknown(self, stmt: Stmt, section: str) -> None:
        skipped = "; block skipped" if stmt.block is not None else "; ignored"
        self.warn(stmt.where(), f"unknown keyword {stmt.key!r} in {section}{skipped}")


def _starts_statement(tokens: list[Token], i: int) -> bool:
    if i == 0:
        return True
    prev = tokens[i - 1]
    return prev.is_brace or not _same_line(prev, tokens[i])


def load_tokens(text: str, source: str, include: Includer | None, ctx: _Ctx,
                chain: tuple[str, ...] = ()) -> list[Token]:
    """Tokenize ``text`` and splice in every ``include`` (depth first, in the includer's order)."""
    chain = chain or (source,)
    raw = tokenize(text, source)
    out: list[Token] = []
    i = 0
    while i < len(raw):
        tok = raw[i]
        if tok.quoted or tok.text != "include" or not _starts_statement(raw, i):
            out.append(tok)
            i += 1
            continue
        j = i + 1
        while j < len(raw) and _same_line(raw[j], tok) and not raw[j].is_brace:
            j += 1
        out.extend(_include(tok, raw[i + 1:j], include, ctx, chain))
        i = j
    return out


def _include(tok: Token, args: list[Token], include: Includer | None, ctx: _Ctx,
             chain: tuple[str, ...]) -> list[Token]:
    where = Where(tok.file, tok.line, "include")
    if len(args) != 1:
        raise ConfigError("include takes one file name or glob pattern", where)
    pattern = args[0].text
    if include is None:
        raise ConfigError(f"cannot include {pattern!r}: includes are not available here", where)
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels", where)
    files = include(pattern, tok.file)
    if not files:
        ctx.warn(where, f"include {pattern!r} matched no files")
    out: list[Token] = []
    for name, text in files:
        if name in chain:
            raise ConfigError(f"include loop: {' -> '.join((*chain, name))}", where)
        out.extend(load_tokens(text, name, include, ctx, (*chain, name)))
    return out


# ==========================================================================================
# Values
# ==========================================================================================

_INT = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)\Z")
_HEX = re.compile(r"([0-9A-Fa-f]{2})+\Z")
_HEX_X = re.compile(r"([0-9A-Fa-fXx]{2})+\Z")
_STATUS = re.compile(r"[0-9]{3}(-[0-9]{3})?(,[0-9]{3}(-[0-9]{3})?)*\Z")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _err(stmt: Stmt, message: str) -> ConfigError:
    return ConfigError(message, stmt.where())


def _nargs(stmt: Stmt, lo: int, hi: int | None = None) -> tuple[Token, ...]:
    n = len(stmt.args)
    hi = lo if hi is None else hi
    if not lo <= n <= hi:
        if lo == hi:
            want = f"{lo} value{'s' if lo != 1 else ''}"
        else:
            want = f"{lo} to {hi} values"
        raise _err(stmt, f"expects {want}, got {n}")
    return stmt.args


def _one(stmt: Stmt) -> Token:
    return _nargs(stmt, 1)[0]


def _int_of(stmt: Stmt, tok: Token, lo: int, hi: int) -> int:
    if not _INT.match(tok.text):
        raise _err(stmt, f"{tok.text!r} is not a whole number (allowed: {lo}..{hi})")
    value = int(tok.text)
    if not lo <= value <= hi:
        raise _err(stmt, f"{value} out of range (allowed: {lo}..{hi})")
    return value


def _int(stmt: Stmt, lo: int, hi: int) -> int:
    return _int_of(stmt, _one(stmt), lo, hi)


def _seconds_of(stmt: Stmt, tok: Token, lo: float = 0.0, hi: float = float(MAX_U32),
                positive: bool = False) -> int | float:
    """A time in seconds: int when written as one, float when fractional."""
    if not _NUMBER.match(tok.text):
        raise _err(stmt, f"{tok.text!r} is not a number of seconds")
    value: int | float = int(tok.text) if _INT.match(tok.text) else float(tok.text)
    if value < lo or value > hi or (positive and value <= 0):
        allowed = f"> {lo:g}" if positive else f">= {lo:g}"
        if hi < MAX_U32:
            allowed += f" and <= {hi:g}"
        raise _err(stmt, f"{tok.text} seconds out of range (allowed: {allowed})")
    return value


def _seconds(stmt: Stmt, positive: bool = False) -> int | float:
    return _seconds_of(stmt, _one(stmt), positive=positive)


def _addr_of(stmt: Stmt, tok: Token) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(tok.text)
    except ValueError:
        if ":" in tok.text:
            raise _err(stmt, f"{tok.text!r}: IPv6 is not supported by ulvs") from None
        raise _err(stmt, f"{tok.text!r} is not an IPv4 address") from None


def _addr(stmt: Stmt) -> ipaddress.IPv4Address:
    return _addr_of(stmt, _one(stmt))


def _port_of(stmt: Stmt, tok: Token) -> int:
    return _int_of(stmt, tok, 0, 65535)


def _flag(stmt: Stmt) -> bool:
    """A flag keyword: present = on, or an explicit true/false (keepalived check_true_false)."""
    args = _nargs(stmt, 0, 1)
    if not args:
        return True
    word = args[0].text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _err(stmt, f"{args[0].text!r} is not a boolean (allowed: true, false, yes, no, on, off)")


def _choice(stmt: Stmt, tok: Token, choices: Mapping[str, T]) -> T:
    try:
        return choices[tok.text]
    except KeyError:
        raise _err(stmt, f"{tok.text!r} is not allowed (allowed: {', '.join(choices)})") from None


def _text(stmt: Stmt) -> str:
    return _one(stmt).text


def _joined(stmt: Stmt) -> str:
    """The values as one string; quoted values that need it are re-quoted."""
    args = _nargs(stmt, 1, 64)
    if len(args) == 1:
        return args[0].text
    return " ".join(shlex.quote(t.text) if t.quoted else t.text for t in args)


def _argv(stmt: Stmt) -> Argv:
    """A script line as an argument vector: a quoted string is split like a shell would (but
    never run by one); unquoted words are taken as they are."""
    argv: list[str] = []
    for tok in _nargs(stmt, 1, 64):
        if tok.quoted:
            try:
                argv.extend(shlex.split(tok.text))
            except ValueError as e:
                raise _err(stmt, f"cannot split the script line: {e}") from None
        else:
            argv.append(tok.text)
    if not argv:
        raise _err(stmt, "empty script line")
    return tuple(argv)


def _hex(stmt: Stmt) -> str:
    value = _text(stmt)
    if not _HEX.match(value):
        raise _err(stmt, f"{value!r} is not hex bytes (pairs of 0-9a-f)")
    return value.lower()


def _hex_free(stmt: Stmt, wildcard: bool = False) -> str:
    """keepalived's free-format hex (UDP_CHECK payload / require_reply): the values joined,
    spaces ignored (``Ab12f 3`` = ab 12 f3); with ``wildcard`` an X nibble matches anything."""
    value = "".join(a.text for a in stmt.args).lower()
    pattern = _HEX_X if wildcard else _HEX
    if not value or not pattern.match(value):
        what = "0-9a-f, or X for any nibble" if wildcard else "0-9a-f"
        raise _err(stmt, f"{value!r} is not hex bytes (an even number of {what}, spaces ignored)")
    return value


def _status_code(stmt: Stmt) -> int | str:
    value = _text(stmt)
    if not _STATUS.match(value):
        raise _err(stmt, f"{value!r} is not an HTTP status code or range list (e.g. 200, 200-299,301)")
    return int(value) if value.isdigit() else value


def _block(stmt: Stmt) -> tuple[Stmt, ...]:
    if stmt.block is None:
        raise _err(stmt, "expects a { ... } block")
    return stmt.block


def _no_block(stmt: Stmt) -> None:
    if stmt.block is not None:
        raise _err(stmt, "takes no { ... } block")


# ==========================================================================================
# Checkers
# ==========================================================================================

_Conv = Callable[[Stmt], Any]
_HTTP_PROTOCOLS = {"1.0": "1.0", "1.0C": "1.0C", "1.1": "1.1"}
_DNS_TYPES = {t: t for t in ("A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA")}

# Checker key -> converter to its typed value (CHECK_KEYS says which kinds accept it).
CHECK_CONVERTERS: dict[str, _Conv] = {
    "connect_ip": lambda s: str(_addr(s)),
    "connect_port": lambda s: _port_of(s, _one(s)),
    "bindto": lambda s: str(_addr(s)),
    "bind_port": lambda s: _port_of(s, _one(s)),
    "bind_if": _text,
    "fwmark": lambda s: _int(s, 0, MAX_U32),
    "connect_timeout": lambda s: _seconds(s, positive=True),
    "retry": lambda s: _int(s, 0, MAX_U32),
    "delay_before_retry": _seconds,
    "warmup": _seconds,
    "delay_loop": lambda s: _seconds(s, positive=True),
    "alpha": _flag,
    "log_all_failures": _flag,
    "http_protocol": lambda s: _choice(s, _one(s), _HTTP_PROTOCOLS),
    "virtualhost": _text,
    "fast_recovery": _flag,
    "enable_sni": _flag,
    "sni_name": _text,
    "tls_compliant": _flag,
    "helo_name": _text,
    "type": lambda s: _choice(s, _one(s), _DNS_TYPES),
    "name": _text,
    "payload": _hex_free,
    "require_reply": lambda s: _hex_free(s, wildcard=True) if s.args else True,
    "min_reply_length": lambda s: _int(s, 0, 65535),
    "max_reply_length": lambda s: _int(s, 0, 65535),
    "misc_path": _joined,
    "misc_timeout": lambda s: _seconds(s, positive=True),
    "misc_dynamic": _flag,
    "user": _joined,
    "track_file": _text,
    "dynamic": _flag,
    "weight": lambda s: _int(s, -254, 254),
}
URL_CONVERTERS: dict[str, _Conv] = {
    "path": _text,
    "digest": _hex,
    "status_code": _status_code,
    "virtualhost": _text,
    "regex": _text,
    "regex_no_match": _flag,
    "regex_options": _joined,
    "regex_min_offset": lambda s: _int(s, 0, MAX_U32),
    "regex_max_offset": lambda s: _int(s, 0, MAX_U32),
}
CHECK_ALIASES = {"nb_get_retry": "retry", "connect_bind_address": "bindto"}   # older keepalived names
CHECK_UNSUPPORTED = frozenset({"host", "regex_stack", "smtp_alert", "default_connect_ip", "nexthop"})
URL_UNSUPPORTED = frozenset({"regex_stack"})
CHECKERS_UNSUPPORTED = frozenset({"BFD_CHECK", "SNMP_CHECK"})
_CHECKERS = frozenset(k for k in CHECK_KEYS if k != "NANNY")


def _allowed(keys: Iterable[str]) -> str:
    return ", ".join(sorted(keys))


def _parse_url(ctx: _Ctx, stmt: Stmt) -> dict[str, Any]:
    _nargs(stmt, 0)
    url: dict[str, Any] = {}
    for s in _block(stmt):
        if s.key in URL_UNSUPPORTED:
            ctx.unsupported(s)
            continue
        conv = URL_CONVERTERS.get(s.key)
        if conv is None:
            raise _err(s, f"unknown url key (allowed: {_allowed(URL_KEYS)})")
        _no_block(s)
        url[s.key] = conv(s)
    if "path" not in url:
        raise _err(stmt, "a url block needs a path")
    return url


def parse_checker(ctx: _Ctx, stmt: Stmt) -> CheckSpec:
    """One checker block (``TCP_CHECK { ... }`` ...) as a CheckSpec with typed, sorted options."""
    kind = stmt.key
    _nargs(stmt, 0)
    allowed = CHECK_KEYS[kind]
    options: dict[str, Any] = {}
    urls: list[dict[str, Any]] = []
    for s in _block(stmt):
        key = CHECK_ALIASES.get(s.key, s.key)
        if key != s.key:
            ctx.warn(s.where(), f"{s.key} is an old name of {key}; read as {key}")
        if key in CHECK_UNSUPPORTED:
            ctx.unsupported(s)
            continue
        if key not in allowed:
            raise _err(s, f"{kind}: unknown key (allowed: {_allowed(allowed)})")
        if key == "url":
            urls.append(_parse_url(ctx, s))
            continue
        _no_block(s)
        options[key] = CHECK_CONVERTERS[key](s)
    if urls:
        options["url"] = tuple(urls)
    elif kind in ("HTTP_GET", "SSL_GET"):
        raise _err(stmt, f"{kind} needs at least one url block")
    if kind == "MISC_CHECK" and "misc_path" not in options:
        raise _err(stmt, "MISC_CHECK needs misc_path")
    if kind == "FILE_CHECK" and "track_file" not in options:
        raise _err(stmt, "FILE_CHECK needs track_file")
    where = stmt.where()
    check_tables(options, kind, where)
    return CheckSpec(kind, tuple(sorted(options.items())), where)


def _cascade(check: CheckSpec, inherited: Mapping[str, Any]) -> CheckSpec:
    """Copy settings given above the checker into it, where it accepts them and sets none."""
    allowed = CHECK_KEYS[check.kind]
    options = check.as_dict()
    for key, value in inherited.items():
        if key in allowed and key not in options:
            options[key] = value
    return CheckSpec(check.kind, tuple(sorted(options.items())), check.where)


# ==========================================================================================
# Virtual servers
# ==========================================================================================

METHODS = {"NAT": FwdMethod.MASQ, "DR": FwdMethod.DROUTE, "TUN": FwdMethod.TUNNEL}
PROTOCOLS = {"TCP": Proto.TCP, "UDP": Proto.UDP}
_TUN_OPTIONS = frozenset({"type", "port", "nocsum", "csum", "remcsum"})
_TUN_TYPES = frozenset({"ipip", "gue", "gre"})
# Flags keepalived spells as separate keywords (check_parser.c lbflags_handler); the sh-/mh-
# ones apply only to their scheduler.
SCHED_FLAG_KEYWORDS = {"flag-1": None, "flag-2": None, "flag-3": None,
                       "sh-port": "sh", "sh-fallback": "sh", "mh-port": "mh", "mh-fallback": "mh"}


@dataclass(slots=True)
class _RS:
    addr: ipaddress.IPv4Address
    port: int | None
    where: Where
    weight: int = 1
    method: FwdMethod | None = None
    u_threshold: int = 0
    l_threshold: int = 0
    inhibit: bool | None = None
    notify_up: Argv | None = None
    notify_down: Argv | None = None
    inherited: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckSpec] = field(default_factory=list)


@dataclass(slots=True)
class _VS:
    where: Where
    vaddr: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    vport: int = 0
    group: str | None = None
    proto: Proto = Proto.TCP
    sched: str = "wlc"
    flags: list[tuple[str, Where]] = field(default_factory=list)
    method: FwdMethod = FwdMethod.MASQ
    persistent: int | None = None
    netmask: ipaddress.IPv4Address = ipaddress.IPv4Address("255.255.255.255")
    ops: bool = False
    delay_loop: float = 60.0
    sorry: tuple[ipaddress.IPv4Address, int | None, Where] | None = None
    sorry_inhibit: bool = False
    quorum: int = 1
    hysteresis: int = 0
    quorum_up: Argv | None = None
    quorum_down: Argv | None = None
    alpha: bool = False
    omega: bool = False
    inhibit: bool = False
    virtualhost: str | None = None
    slow_start: float = 0.0
    failed_conns: str = "keep"
    ejection: tuple[EjectionSettings, Where] | None = None
    inherited: dict[str, Any] = field(default_factory=dict)
    real_servers: list[_RS] = field(default_factory=list)


def _method(stmt: Stmt, ctx: _Ctx) -> FwdMethod:
    args = _nargs(stmt, 1, 8)
    method = _choice(stmt, args[0], METHODS)
    extra = args[1:]
    if extra and method is not FwdMethod.TUNNEL:
        raise _err(stmt, f"{args[0].text} takes no options")
    for tok in extra:
        if tok.text not in _TUN_OPTIONS | _TUN_TYPES and not _INT.match(tok.text):
            raise _err(stmt, f"unknown tunnel option {tok.text!r} (allowed: {_allowed(_TUN_OPTIONS)})")
    if extra and [t.text for t in extra] != ["type", "ipip"]:
        ctx.warn(stmt.where(), "tunnel options (type gue|gre, port, csum) are not supported by ulvs; "
                               "ignored, tunnels are IPIP")
    return method


def _persistence_timeout(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    vs.persistent = _int(stmt, 1, MAX_PERSISTENCE) if stmt.args else PERSISTENCE_DEFAULT


def _sorry_server(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    args = _nargs(stmt, 1, 2)
    port = _port_of(stmt, args[1]) if len(args) == 2 else None
    vs.sorry = (_addr_of(stmt, args[0]), port, stmt.where())


def _sorry_inhibit(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    if vs.sorry is None:
        raise _err(stmt, "sorry_server_inhibit before (or without) sorry_server")
    vs.sorry_inhibit = _flag(stmt)


def _failed_conns(stmt: Stmt) -> str:
    """ulvs extension: a ``FAILED_CONNS`` name; a refused ``ConnPolicy`` name says why."""
    tok = _one(stmt)
    if tok.text in FAILED_CONNS_REFUSED:
        raise _err(stmt, f"{FAILED_CONNS_REFUSED[tok.text]} (allowed: {', '.join(FAILED_CONNS)})")
    return _choice(stmt, tok, {name: name for name in FAILED_CONNS})


def _fraction(stmt: Stmt, below_one: bool = False) -> float:
    tok = _one(stmt)
    allowed = "0 <= value < 1" if below_one else "0..1"
    if not _NUMBER.match(tok.text):
        raise _err(stmt, f"{tok.text!r} is not a number (allowed: {allowed})")
    value = float(tok.text)
    if not 0.0 <= value <= 1.0 or (below_one and value == 1.0):
        raise _err(stmt, f"{tok.text} out of range (allowed: {allowed})")
    return value


def _ejection(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    """ulvs extension: ``ejection { ... }``, passive ejection (``schema.EjectionSettings``)."""
    _nargs(stmt, 0)
    if vs.ejection is not None:
        raise _err(stmt, f"ejection is already set in this virtual_server (at {vs.ejection[1]})")
    d = EjectionSettings()
    values: dict[str, Any] = {}
    convert: dict[str, Callable[[Stmt], Any]] = {
        "threshold": lambda s: _fraction(s, below_one=True),
        "min_syns": lambda s: _int(s, 1, MAX_EJECTION_SYNS),
        "backoff": lambda s: float(_seconds_of(s, _one(s), hi=MAX_EJECTION_BACKOFF, positive=True)),
        "backoff_max": lambda s: float(_seconds_of(s, _one(s), hi=MAX_EJECTION_BACKOFF, positive=True)),
        "max_fraction": _fraction,
    }
    where: dict[str, Stmt] = {}
    for s in _block(stmt):
        conv = convert.get(s.key)
        if conv is None:
            raise _err(s, f"unknown ejection key (allowed: {_allowed(convert)})")
        _no_block(s)
        values[s.key] = conv(s)
        where[s.key] = s
    backoff = values.get("backoff", d.backoff)
    values.setdefault("backoff_max", max(d.backoff_max, backoff))
    if values["backoff_max"] < backoff:
        raise _err(where["backoff_max"], f"{values['backoff_max']:g} seconds out of range (allowed: >= "
                                         f"backoff ({backoff:g}) and <= {MAX_EJECTION_BACKOFF:g})")
    try:
        vs.ejection = (EjectionSettings(**values), stmt.where())
    except ValueError as e:
        raise _err(stmt, str(e)) from None


def _sched_flag(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    _nargs(stmt, 0)
    vs.flags.append((stmt.key, stmt.where()))


def _ops(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    vs.ops = _flag(stmt)


def _protocol(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    tok = _one(stmt)
    if tok.text.upper() == "SCTP":
        raise _err(stmt, "SCTP services are not supported by ulvs (allowed: TCP, UDP)")
    vs.proto = _choice(stmt, Token(tok.text.upper(), tok.file, tok.line), PROTOCOLS)


def _ip_family(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    if _choice(stmt, _one(stmt), {"inet": "inet", "inet6": "inet6"}) == "inet6":
        raise _err(stmt, "IPv6 is not supported by ulvs")


def _lvs_sched(vs: _VS, stmt: Stmt, ctx: _Ctx) -> None:
    vs.sched = _choice(stmt, _one(stmt), {n: n for n in sched_base.names()})


def _inherit(key: str) -> Callable[[_VS | _RS, Stmt, _Ctx], None]:
    conv = CHECK_CONVERTERS[key]

    def handler(obj: _VS | _RS, stmt: Stmt, ctx: _Ctx) -> None:
        obj.inherited[key] = conv(stmt)
    return handler


def _setter(attr: str, conv: Callable[[Stmt], Any]) -> Callable[[Any, Stmt, _Ctx], None]:
    def handler(obj: Any, stmt: Stmt, ctx: _Ctx) -> None:
        setattr(obj, attr, conv(stmt))
    return handler


_VSHandler = Callable[[_VS, Stmt, _Ctx], None]
VS_KEYWORDS: dict[str, _VSHandler] = {
    "lvs_sched": _lvs_sched,
    "lb_algo": _lvs_sched,
    "lvs_method": lambda vs, s, ctx: setattr(vs, "method", _method(s, ctx)),
    "lb_kind": lambda vs, s, ctx: setattr(vs, "method", _method(s, ctx)),
    "protocol": _protocol,
    "ip_family": _ip_family,
    "persistence_timeout": _persistence_timeout,
    "persistence_granularity": _setter("netmask", _addr),
    "delay_loop": _setter("delay_loop", lambda s: float(_seconds(s, positive=True))),
    "sorry_server": _sorry_server,
    "sorry_server_inhibit": _sorry_inhibit,
    "quorum": _setter("quorum", lambda s: _int(s, 1, MAX_U32)),
    "hysteresis": _setter("hysteresis", lambda s: _int(s, 0, MAX_U32)),
    "quorum_up": _setter("quorum_up", _argv),
    "quorum_down": _setter("quorum_down", _argv),
    "alpha": _setter("alpha", _flag),
    "omega": _setter("omega", _flag),
    "inhibit_on_failure": _setter("inhibit", _flag),
    "virtualhost": _setter("virtualhost", _text),
    "slow_start": _setter("slow_start", lambda s: float(_seconds_of(s, _one(s), hi=MAX_SLOW_START))),
    "failed_conns": _setter("failed_conns", _failed_conns),
    "ops": _ops,
    **{k: _sched_flag for k in SCHED_FLAG_KEYWORDS},
    **{k: _inherit(k) for k in ("connect_timeout", "retry", "delay_before_retry", "warmup")},
}
VS_UNSUPPORTED = frozenset({"ha_suspend", "smtp_alert", "snmp_name", "hashed", "persistence_engine",
                            "sorry_server_lvs_method", "weight", "nat_mask", "laddr_group_name"})

_RSHandler = Callable[[_RS, Stmt, _Ctx], None]
RS_KEYWORDS: dict[str, _RSHandler] = {
    "weight": _setter("weight", lambda s: _int(s, 0, MAX_WEIGHT)),
    "lvs_method": lambda rs, s, ctx: setattr(rs, "method", _method(s, ctx)),
    "uthreshold": _setter("u_threshold", lambda s: _int(s, 0, MAX_THRESHOLD)),
    "lthreshold": _setter("l_threshold", lambda s: _int(s, 0, MAX_THRESHOLD)),
    "inhibit_on_failure": _setter("inhibit", _flag),
    "notify_up": _setter("notify_up", _argv),
    "notify_down": _setter("notify_down", _argv),
    **{k: _inherit(k) for k in ("connect_timeout", "retry", "delay_before_retry", "warmup",
                                "delay_loop", "alpha", "virtualhost")},
}
RS_UNSUPPORTED = frozenset({"smtp_alert", "snmp_name"})


def _vs_header(stmt: Stmt) -> _VS:
    args = _nargs(stmt, 1, 2)
    vs = _VS(stmt.where())
    first = args[0].text
    if first in ("fwmark", "group"):
        if len(args) != 2:
            raise _err(stmt, f"virtual_server {first} needs a {'number' if first == 'fwmark' else 'name'}")
        if first == "fwmark":
            raise _err(stmt, f"fwmark {args[1].text}: ulvs does not see netfilter marks, so a service "
                             "group needs its members; define them in a virtual_server_group "
                             "(IP PORT entries, and 'fwmark N' for the number) and use "
                             "'virtual_server group NAME'")
        vs.group = args[1].text
        return vs
    vs.vaddr = _addr_of(stmt, args[0])
    vs.vport = _port_of(stmt, args[1]) if len(args) == 2 else 0
    return vs


def _rs_header(stmt: Stmt) -> _RS:
    args = _nargs(stmt, 1, 2)
    port = _port_of(stmt, args[1]) if len(args) == 2 else None
    return _RS(_addr_of(stmt, args[0]), port, stmt.where())


def parse_real_server(ctx: _Ctx, stmt: Stmt) -> _RS:
    rs = _rs_header(stmt)
    for s in stmt.block or ():
        if s.key in _CHECKERS:
            rs.checks.append(parse_checker(ctx, s))
        elif s.key in RS_KEYWORDS:
            _no_block(s)
            RS_KEYWORDS[s.key](rs, s, ctx)
        elif s.key in RS_UNSUPPORTED or s.key in CHECKERS_UNSUPPORTED:
            ctx.unsupported(s)
        else:
            ctx.unknown(s, "real_server")
    return rs


def parse_virtual_server(ctx: _Ctx, stmt: Stmt) -> _VS:
    vs = _vs_header(stmt)
    granularity = False
    for s in _block(stmt):
        if s.key == "real_server":
            vs.real_servers.append(parse_real_server(ctx, s))
        elif s.key == "ejection":
            _ejection(vs, s, ctx)
        elif s.key in VS_KEYWORDS:
            _no_block(s)
            VS_KEYWORDS[s.key](vs, s, ctx)
            granularity = granularity or s.key == "persistence_granularity"
        elif s.key in VS_UNSUPPORTED:
            ctx.unsupported(s)
        else:
            ctx.unknown(s, "virtual_server")
    if granularity and vs.persistent is None:
        vs.persistent = PERSISTENCE_DEFAULT      # keepalived pgr_handler: granularity implies persistence
    return vs


# -- virtual_server_group -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    where: Where
    addresses: tuple[tuple[ipaddress.IPv4Address, int, Where], ...]
    fwmarks: tuple[tuple[int, Where], ...]


def _expand_range(stmt: Stmt, tok: Token) -> list[ipaddress.IPv4Address]:
    """``A.B.C.D``, ``A.B.C.D-E`` (last octet), ``A.B.C.D-A.B.C.E`` or ``A.B.C.D/LEN``."""
    text = tok.text
    if "/" in text:
        try:
            net = ipaddress.IPv4Network(text)
        except ValueError:
            raise _err(stmt, f"{text!r} is not an IPv4 network with its host bits zero") from None
        first, last = int(net.network_address), int(net.broadcast_address)
    elif "-" in text:
        start_text, end_text = text.split("-", 1)
        start = _addr_of(stmt, Token(start_text, tok.file, tok.line))
        if "." in end_text:
            end = _addr_of(stmt, Token(end_text, tok.file, tok.line))
        else:
            octet = _int_of(stmt, Token(end_text, tok.file, tok.line), 0, 255)
            end = ipaddress.IPv4Address((int(start) & ~0xFF) | octet)
        first, last = int(start), int(end)
        if last <= first:
            raise _err(stmt, f"{text!r}: the range end is not above its start")
    else:
        first = last = int(_addr_of(stmt, tok))
    if last - first + 1 > MAX_GROUP_MEMBERS:
        raise _err(stmt, f"{text!r} expands to {last - first + 1} addresses "
                         f"(allowed: up to {MAX_GROUP_MEMBERS})")
    return [ipaddress.IPv4Address(a) for a in range(first, last + 1)]


def parse_group(ctx: _Ctx, stmt: Stmt) -> _Group:
    name = _one(stmt).text
    addresses: list[tuple[ipaddress.IPv4Address, int, Where]] = []
    fwmarks: list[tuple[int, Where]] = []
    for s in _block(stmt):
        _no_block(s)
        if s.key == "fwmark":
            args = _nargs(s, 1, 2)
            if len(args) == 2 and args[1].text != "inet":
                raise _err(s, f"family {args[1].text!r}: only inet (IPv4) is supported by ulvs")
            fwmarks.append((_int_of(s, args[0], 1, MAX_U32), s.where()))
            continue
        port = _port_of(s, s.args[0]) if _nargs(s, 0, 1) else 0
        addresses.extend((a, port, s.where()) for a in _expand_range(s, s.words[0]))
    if len(addresses) > MAX_GROUP_MEMBERS:
        raise _err(stmt, f"{len(addresses)} entries (allowed: up to {MAX_GROUP_MEMBERS})")
    if len(fwmarks) > 1:
        raise ConfigError("ulvs serves a group as one service group: at most one fwmark entry",
                          fwmarks[1][1])
    if not addresses:
        raise _err(stmt, "a virtual_server_group needs IP PORT entries: ulvs does not see netfilter "
                         "marks, so a group of only fwmark entries matches nothing")
    if fwmarks:
        ctx.warn(fwmarks[0][1], f"fwmark {fwmarks[0][0]}: ulvs does not match netfilter marks; the "
                                f"group's address entries are served as service group {fwmarks[0][0]}")
    return _Group(name, stmt.where(), tuple(addresses), tuple(fwmarks))


# -- building the model ---------------------------------------------------------------------


def _service_config(vs: _VS, group: _Group | None, fwmark: int, ctx: _Ctx) -> ServiceConfig:
    flags: set[str] = set()
    for flag, where in vs.flags:
        wanted = SCHED_FLAG_KEYWORDS[flag]
        if wanted is not None and wanted != vs.sched:
            ctx.warn(where, f"{flag} only applies to the {wanted} scheduler (this service uses "
                            f"{vs.sched}); ignored")
        else:
            flags.add(flag)
    members: tuple[GroupMember, ...] = ()
    if group is not None:
        seen: dict[GroupMember, Where] = {}
        for addr, port, where in group.addresses:
            m = (vs.proto, addr, port)
            if m in seen:
                raise ConfigError(f"{vs.proto.name} {addr}:{port} is listed twice in the group", where)
            seen[m] = where
        members = tuple(seen)
    try:
        if group is not None:
            return ServiceConfig(Proto.FWM, ipaddress.IPv4Address(0), 0, sched=vs.sched,
                                 flags=frozenset(flags), persistent=vs.persistent, netmask=vs.netmask,
                                 ops=vs.ops, fwmark=fwmark, members=members)
        return ServiceConfig(vs.proto, vs.vaddr, vs.vport, sched=vs.sched, flags=frozenset(flags),
                             persistent=vs.persistent, netmask=vs.netmask, ops=vs.ops)
    except ValueError as e:
        raise ConfigError(str(e), vs.where) from None


def _dest_port(vs: _VS, svc: ServiceConfig, port: int | None, method: FwdMethod, where: Where,
               what: str) -> int:
    if svc.proto == Proto.FWM:
        return 0 if port is None else port
    if port is None:
        return vs.vport
    if method in (FwdMethod.DROUTE, FwdMethod.TUNNEL) and port != vs.vport:
        raise ConfigError(f"{what} port {port} differs from the service port {vs.vport}: direct routing "
                          "and tunnelling keep the destination port (ipvsadm forces it to the service "
                          "port)", where)
    return port


def _real_server(vs: _VS, svc: ServiceConfig, rs: _RS) -> RealServer:
    method = rs.method or vs.method
    dport = _dest_port(vs, svc, rs.port, method, rs.where, "real server")
    try:
        config = DestConfig(rs.addr, dport, weight=rs.weight, method=method,
                            u_threshold=rs.u_threshold, l_threshold=rs.l_threshold)
    except ValueError as e:
        raise ConfigError(str(e), rs.where) from None
    inherited = {**vs.inherited, **rs.inherited}
    checks = tuple(_cascade(c, inherited) for c in rs.checks)
    return RealServer(config, checks, rs.inhibit, rs.notify_up, rs.notify_down, rs.where)


def build_service(vs: _VS, group: _Group | None, fwmark: int, ctx: _Ctx) -> VirtualService:
    svc = _service_config(vs, group, fwmark, ctx)
    dests: list[RealServer] = []
    seen: dict[tuple[ipaddress.IPv4Address, int], Where] = {}
    for rs in vs.real_servers:
        dest = _real_server(vs, svc, rs)
        key = (dest.config.daddr, dest.config.dport)
        if key in seen:
            raise ConfigError(f"real server {key[0]}:{key[1]} is already defined at {seen[key]}", rs.where)
        seen[key] = rs.where
        dests.append(dest)
    sorry: Endpoint | None = None
    if vs.sorry is not None:
        addr, port, where = vs.sorry
        sorry = (addr, _dest_port(vs, svc, port, vs.method, where, "sorry server"))
    ejection: EjectionSettings | None = None
    if vs.ejection is not None:
        ejection, where = vs.ejection
        if not any(proto == Proto.TCP for proto, _vaddr, _vport in svc.entries()):
            raise ConfigError("passive ejection judges TCP connections: this service has no TCP entry",
                              where)
    return VirtualService(svc, tuple(dests), name=vs.group, delay_loop=vs.delay_loop, sorry_server=sorry,
                          sorry_server_inhibit=vs.sorry_inhibit, quorum=vs.quorum, hysteresis=vs.hysteresis,
                          quorum_up=vs.quorum_up, quorum_down=vs.quorum_down, alpha=vs.alpha,
                          omega=vs.omega, inhibit_on_failure=vs.inhibit, virtualhost=vs.virtualhost,
                          slow_start=vs.slow_start, failed_conns=vs.failed_conns, ejection=ejection,
                          where=vs.where)


# ==========================================================================================
# VRRP
# ==========================================================================================

_STATES = {"MASTER": "MASTER", "BACKUP": "BACKUP"}
_VIP_VALUE_OPTIONS = frozenset({"brd", "broadcast", "scope", "label", "preferred_lft", "track_group"})


@dataclass(slots=True)
class _Vrrp:
    name: str
    where: Where
    interface: str | None = None
    vrid: int | None = None
    priority: int = 100
    advert_int: float = 1.0
    advert_where: Where | None = None
    state: str = "BACKUP"
    version: int | None = None
    preempt: bool = True
    preempt_delay: float = 0.0
    preempt_where: Where | None = None
    addresses: list[VirtualAddress] = field(default_factory=list)
    unicast_src_ip: ipaddress.IPv4Address | None = None
    peers: list[ipaddress.IPv4Address] = field(default_factory=list)
    track: list[str] = field(default_factory=list)
    notify_master: Argv | None = None
    notify_backup: Argv | None = None
    notify_fault: Argv | None = None
    garp_master_delay: float | None = None
    garp_master_repeat: int | None = None
    lower_prio_no_advert: bool | None = None
    higher_prio_send_advert: bool | None = None
    sync_interface: tuple[str, Where] | None = None


def _vip(ctx: _Ctx, stmt: Stmt) -> VirtualAddress:
    text = stmt.key
    if ":" in text:
        raise _err(stmt, f"{text!r}: IPv6 is not supported by ulvs")
    try:
        address = ipaddress.IPv4Interface(text)
    except ValueError:
        raise _err(stmt, f"{text!r} is not an IPv4 address[/prefix length]") from None
    dev: str | None = None
    args = list(stmt.args)
    while args:
        opt = args.pop(0).text
        if opt == "dev":
            if not args:
                raise _err(stmt, "dev needs an interface name")
            dev = args.pop(0).text
        else:
            if opt in _VIP_VALUE_OPTIONS and args:
                args.pop(0)                     # the option's value
            ctx.warn(stmt.where(), f"{text}: address option {opt!r} is not supported by ulvs; ignored")
    return VirtualAddress(address, dev)


def _vips(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    _nargs(stmt, 0)
    for s in _block(stmt):
        _no_block(s)
        v.addresses.append(_vip(ctx, s))


def _peers(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    _nargs(stmt, 0)
    for s in _block(stmt):
        _no_block(s)
        v.peers.append(_addr_of(s, s.words[0]))
        if s.args:
            ctx.warn(s.where(), f"unicast_peer {s.key}: options {' '.join(t.text for t in s.args)!r} are "
                                "not supported by ulvs; ignored")


def _track(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    _nargs(stmt, 0)
    for s in _block(stmt):
        _no_block(s)
        v.track.append(s.key)
        if s.args:
            ctx.warn(s.where(), f"track_interface {s.key}: weights are not supported by ulvs (a tracked "
                                "interface going down means FAULT); ignored")


def _advert_int(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    v.advert_int = float(_seconds(stmt, positive=True))
    v.advert_where = stmt.where()


def _nopreempt(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    _nargs(stmt, 0)
    v.preempt = False
    v.preempt_where = stmt.where()


def _preempt_delay(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    v.preempt_delay = float(_seconds_of(stmt, _one(stmt), 0.0, 1000.0))
    v.preempt_where = stmt.where()


def _lvs_sync_interface(v: _Vrrp, stmt: Stmt, ctx: _Ctx) -> None:
    v.sync_interface = (_text(stmt), stmt.where())


_VrrpHandler = Callable[[_Vrrp, Stmt, _Ctx], None]
VRRP_KEYWORDS: dict[str, _VrrpHandler] = {
    "state": lambda v, s, ctx: setattr(v, "state", _choice(s, _one(s), _STATES)),
    "interface": _setter("interface", _text),
    "virtual_router_id": _setter("vrid", lambda s: _int(s, 1, 255)),
    "priority": _setter("priority", lambda s: _int(s, 1, 255)),
    "advert_int": _advert_int,
    "version": _setter("version", lambda s: _int(s, 2, 3)),
    "nopreempt": _nopreempt,
    "preempt_delay": _preempt_delay,
    "unicast_src_ip": _setter("unicast_src_ip", _addr),
    "notify_master": _setter("notify_master", _argv),
    "notify_backup": _setter("notify_backup", _argv),
    "notify_fault": _setter("notify_fault", _argv),
    "garp_master_delay": _setter("garp_master_delay", lambda s: float(_seconds(s))),
    "garp_master_repeat": _setter("garp_master_repeat", lambda s: _int(s, 1, 255)),
    "lower_prio_no_advert": _setter("lower_prio_no_advert", lambda s: _flag(s)),
    "higher_prio_send_advert": _setter("higher_prio_send_advert", lambda s: _flag(s)),
    "lvs_sync_daemon_interface": _lvs_sync_interface,
}
VRRP_BLOCKS: dict[str, _VrrpHandler] = {
    "virtual_ipaddress": _vips,
    "unicast_peer": _peers,
    "track_interface": _track,
}
VRRP_UNSUPPORTED = frozenset({
    "virtual_ipaddress_excluded", "virtual_routes", "virtual_rules", "track_script", "track_process",
    "track_file", "track_bfd", "authentication", "auth_hmac", "accept", "no_accept", "use_vmac",
    "vmac_xmit_base", "native_ipv6", "dont_track_primary", "mcast_src_ip", "unicast_ttl",
    "check_unicast_src", "garp_master_refresh", "garp_master_refresh_repeat",
    "garp_lower_prio_delay", "garp_lower_prio_repeat", "garp_interval", "gna_interval",
    "down_timer_adverts", "notify_stop", "notify",
    "notify_master_rx_lower_pri", "notify_priority_changes", "smtp_alert", "debug", "strict_mode",
    "skip_check_adv_addr", "kernel_rx_buf_size", "unicast_fault_no_peer", "old_unicast_checksum",
    "linkbeat_use_polling", "promote_secondaries", "track_src_ip",
})


def parse_vrrp_instance(ctx: _Ctx, stmt: Stmt) -> _Vrrp:
    v = _Vrrp(_one(stmt).text, stmt.where())
    for s in _block(stmt):
        if s.key in VRRP_BLOCKS:
            VRRP_BLOCKS[s.key](v, s, ctx)
        elif s.key in VRRP_KEYWORDS:
            _no_block(s)
            VRRP_KEYWORDS[s.key](v, s, ctx)
        elif s.key in VRRP_UNSUPPORTED:
            ctx.unsupported(s)
        else:
            ctx.unknown(s, "vrrp_instance")
    return v


def build_vrrp(v: _Vrrp, defaults: _Globals, ctx: _Ctx) -> VrrpInstance:
    if v.interface is None:
        raise ConfigError(f"vrrp_instance {v.name} needs an interface", v.where)
    if v.vrid is None:
        raise ConfigError(f"vrrp_instance {v.name} needs a virtual_router_id (1..255)", v.where)
    version = v.version or defaults.vrrp_version
    where = v.advert_where or v.where
    if version == 3 and v.advert_int > V3_MAX_ADVERT:
        raise ConfigError(f"advert_int {v.advert_int:g} out of range for VRRPv3 (allowed: > 0 and "
                          f"<= {V3_MAX_ADVERT})", Where(where.file, where.line, "advert_int"))
    if version == 2 and (v.advert_int != int(v.advert_int) or not 1 <= v.advert_int <= V2_MAX_ADVERT):
        raise ConfigError(f"advert_int {v.advert_int:g} out of range for VRRPv2 (allowed: whole seconds "
                          f"1..{V2_MAX_ADVERT})", Where(where.file, where.line, "advert_int"))
    if v.preempt_where is not None and v.state == "MASTER":
        ctx.warn(v.preempt_where, f"vrrp_instance {v.name}: nopreempt/preempt_delay only work with "
                                  "state BACKUP")
    garp = v.garp_master_delay if v.garp_master_delay is not None else defaults.garp_master_delay
    repeat = v.garp_master_repeat if v.garp_master_repeat is not None else defaults.garp_master_repeat
    no_advert = (v.lower_prio_no_advert if v.lower_prio_no_advert is not None
                 else defaults.lower_prio_no_advert)
    # keepalived's default for higher_prio_send_advert is off (ulvs's native default is on)
    send_advert = bool(v.higher_prio_send_advert) or defaults.higher_prio_send_advert
    return VrrpInstance(v.name, v.interface, v.vrid, priority=v.priority, advert_int=v.advert_int,
                        state=v.state, version=version, preempt=v.preempt, preempt_delay=v.preempt_delay,
                        virtual_addresses=tuple(v.addresses), unicast_src_ip=v.unicast_src_ip,
                        unicast_peers=tuple(v.peers), track_interfaces=tuple(v.track),
                        notify_master=v.notify_master, notify_backup=v.notify_backup,
                        notify_fault=v.notify_fault, garp_master_delay=garp, garp_master_repeat=repeat,
                        min_garp=defaults.min_garp, lower_prio_no_advert=no_advert,
                        higher_prio_send_advert=send_advert,
                        where=v.where)


SYNC_GROUP_UNSUPPORTED = frozenset({"notify_master", "notify_backup", "notify_fault", "notify_stop",
                                    "notify", "smtp_alert", "global_tracking", "sync_group_tracking_weight",
                                    "track_interface", "track_script", "track_process", "track_file",
                                    "track_bfd"})


def parse_sync_group(ctx: _Ctx, stmt: Stmt) -> tuple[VrrpSyncGroup, dict[str, Where]]:
    name = _one(stmt).text
    members: dict[str, Where] = {}
    for s in _block(stmt):
        if s.key == "group":
            _nargs(s, 0)
            for m in _block(s):
                _no_block(m)
                for tok in m.words:
                    if tok.text in members:
                        raise _err(m, f"{tok.text} is listed twice")
                    members[tok.text] = Where(tok.file, tok.line, "group")
        elif s.key in SYNC_GROUP_UNSUPPORTED:
            ctx.unsupported(s)
        else:
            ctx.unknown(s, "vrrp_sync_group")
    if not members:
        raise _err(stmt, f"vrrp_sync_group {name} needs a group {{ ... }} of instances")
    if len(members) == 1:
        ctx.warn(stmt.where(), f"vrrp_sync_group {name} has only one instance")
    return VrrpSyncGroup(name, tuple(members), stmt.where()), members


# ==========================================================================================
# global_defs
# ==========================================================================================


@dataclass(slots=True)
class _Globals:
    router_id: str | None = None
    sync: tuple[Stmt, str, str | None, int | None, int, ipaddress.IPv4Address] | None = None
    vrrp_version: int = VRRP_DEFAULT_VERSION
    garp_master_delay: float = 5.0
    garp_master_repeat: int = 5
    min_garp: bool = False
    lower_prio_no_advert: bool = False
    higher_prio_send_advert: bool = False
    timeouts: Timeouts = Timeouts()


def _lvs_sync_daemon(g: _Globals, stmt: Stmt, ctx: _Ctx) -> None:
    """``lvs_sync_daemon IF [[inst] INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group IP]``."""
    args = list(_nargs(stmt, 1, 16))
    interface = args.pop(0).text
    instance: str | None = None
    if args and args[0].text == "inst":
        args.pop(0)
        if not args:
            raise _err(stmt, "inst needs a vrrp_instance name")
    if args and args[0].text not in ("id", "maxlen", "port", "ttl", "group"):
        instance = args.pop(0).text
    syncid: int | None = None
    port, group = _SYNC_DEFAULTS.port, _SYNC_DEFAULTS.group
    while args:
        opt = args.pop(0)
        if not args:
            raise _err(stmt, f"{opt.text} needs a value")
        value = args.pop(0)
        if opt.text == "id":
            syncid = _int_of(stmt, value, 0, 255)
        elif opt.text == "port":
            port = _int_of(stmt, value, 1, 65535)
        elif opt.text == "group":
            group = _addr_of(stmt, value)
            if not group.is_multicast:
                raise _err(stmt, f"group {group} is not a multicast address (224.0.0.0/4)")
        elif opt.text in ("maxlen", "ttl"):
            ctx.warn(stmt.where(), f"lvs_sync_daemon {opt.text} is not supported by ulvs; ignored")
        else:
            raise _err(stmt, f"unknown option {opt.text!r} (allowed: id, maxlen, port, ttl, group)")
    g.sync = (stmt, interface, instance, syncid, port, group)


_SYNC_DEFAULTS = SyncSettings("")
_TIMEOUT_NAMES = ("tcp", "tcpfin", "udp")


def _lvs_timeouts(g: _Globals, stmt: Stmt, ctx: _Ctx) -> None:
    args = list(_nargs(stmt, 2, 6))
    values = {"tcp": g.timeouts.tcp, "tcpfin": g.timeouts.tcpfin, "udp": g.timeouts.udp}
    while args:
        name = args.pop(0).text
        if name not in values or not args:
            raise _err(stmt, f"expects pairs NAME SECONDS (NAME: {', '.join(_TIMEOUT_NAMES)})")
        values[name] = _int_of(stmt, args.pop(0), 1, 2**31 - 1)
    g.timeouts = Timeouts(**values)


_GlobalHandler = Callable[[_Globals, Stmt, _Ctx], None]
GLOBAL_KEYWORDS: dict[str, _GlobalHandler] = {
    "router_id": _setter("router_id", _text),
    "lvs_id": _setter("router_id", _text),            # keepalived 1.x name of router_id
    "lvs_sync_daemon": _lvs_sync_daemon,
    "lvs_timeouts": _lvs_timeouts,
    "vrrp_version": _setter("vrrp_version", lambda s: _int(s, 2, 3)),
    "vrrp_garp_master_delay": _setter("garp_master_delay", lambda s: float(_seconds(s))),
    "vrrp_garp_master_repeat": _setter("garp_master_repeat", lambda s: _int(s, 1, 255)),
    "vrrp_min_garp": _setter("min_garp", lambda s: _flag(s)),
    "vrrp_lower_prio_no_advert": _setter("lower_prio_no_advert", lambda s: _flag(s)),
    "vrrp_higher_prio_send_advert": _setter("higher_prio_send_advert", lambda s: _flag(s)),
}
# Known keepalived global_defs keywords that ulvs accepts and does not act on.
GLOBAL_UNUSED = frozenset({
    "notification_email", "notification_email_from", "smtp_server", "smtp_helo_name",
    "smtp_connect_timeout", "smtp_alert", "smtp_alert_vrrp", "smtp_alert_checker", "email_faults",
    "enable_traps", "enable_snmp_vrrp", "enable_snmp_checker", "enable_snmp_rfc", "enable_snmp_rfcv2",
    "enable_snmp_rfcv3", "snmp_socket", "enable_dbus", "script_user", "enable_script_security",
    "vrrp_mcast_group4", "vrrp_mcast_group6", "vrrp_garp_master_refresh",
    "vrrp_garp_master_refresh_repeat", "vrrp_garp_lower_prio_delay", "vrrp_garp_lower_prio_repeat",
    "vrrp_garp_interval", "vrrp_gna_interval",
    "vrrp_strict", "vrrp_iptables", "vrrp_ipsets",
    "vrrp_nftables", "vrrp_check_unicast_src", "vrrp_skip_check_adv_addr", "vrrp_priority",
    "checker_priority", "bfd_priority", "vrrp_no_swap", "checker_no_swap", "vrrp_rt_priority",
    "checker_rt_priority", "dynamic_interfaces", "max_auto_priority", "min_auto_priority_delay",
    "lvs_flush", "lvs_flush_on_stop", "default_interface", "linkbeat_use_polling", "process_names",
    "vrrp_process_name", "checker_process_name", "instance", "net_namespace", "use_pid_dir",
    "vrrp_startup_delay", "notify_fifo", "notify_fifo_script", "vrrp_notify_fifo",
    "vrrp_notify_fifo_script", "lvs_notify_fifo", "lvs_notify_fifo_script", "vrrp_down_timer_adverts",
    "vrrp_netlink_cmd_rcv_bufs", "vrrp_netlink_monitor_rcv_bufs", "child_wait_time", "local_name",
    "vrrp_garp_extra_if", "vrrp_strict_mode", "umask", "startup_script", "shutdown_script",
})


def parse_global_defs(ctx: _Ctx, stmt: Stmt, g: _Globals) -> None:
    _nargs(stmt, 0)
    for s in _block(stmt):
        if s.key in GLOBAL_KEYWORDS:
            _no_block(s)
            GLOBAL_KEYWORDS[s.key](g, s, ctx)
        elif s.key in GLOBAL_UNUSED:
            ctx.unsupported(s, "accepted but not used by ulvs")
        else:
            ctx.unknown(s, "global_defs")


# ==========================================================================================
# The document
# ==========================================================================================

TOP_UNSUPPORTED = frozenset({
    "static_ipaddress", "static_routes", "static_rules", "vrrp_script", "vrrp_track_process",
    "track_file", "vrrp_track_file", "garp_group", "bfd_instance", "SSL", "linkbeat_interfaces",
})


@dataclass(slots=True)
class _Document:
    globals: _Globals = field(default_factory=_Globals)
    services: list[_VS] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    vrrp: list[_Vrrp] = field(default_factory=list)
    sync_groups: list[tuple[VrrpSyncGroup, dict[str, Where]]] = field(default_factory=list)


def _top(ctx: _Ctx, doc: _Document, stmt: Stmt) -> None:
    key = stmt.key
    if key == "global_defs":
        parse_global_defs(ctx, stmt, doc.globals)
    elif key == "virtual_server":
        doc.services.append(parse_virtual_server(ctx, stmt))
    elif key == "virtual_server_group":
        group = parse_group(ctx, stmt)
        if group.name in doc.groups:
            raise _err(stmt, f"virtual_server_group {group.name} is already defined at "
                             f"{doc.groups[group.name].where}")
        doc.groups[group.name] = group
    elif key == "vrrp_instance":
        doc.vrrp.append(parse_vrrp_instance(ctx, stmt))
    elif key == "vrrp_sync_group":
        doc.sync_groups.append(parse_sync_group(ctx, stmt))
    elif key in TOP_UNSUPPORTED:
        ctx.unsupported(stmt)
    elif key.startswith(("@", "$")):
        ctx.warn(stmt.where(), f"{key}: conditional configuration and parameter definitions are not "
                               "supported by ulvs; ignored")
    else:
        ctx.unknown(stmt, "the top level")


def _build_services(ctx: _Ctx, doc: _Document) -> tuple[VirtualService, ...]:
    explicit: dict[int, Where] = {}
    for vs in doc.services:
        if vs.group is None:
            continue
        group = doc.groups.get(vs.group)
        if group is None:
            raise ConfigError(f"virtual_server_group {vs.group!r} is not defined"
                              f" (defined: {_allowed(doc.groups) or 'none'})", vs.where)
        if group.fwmarks:
            mark, _ = group.fwmarks[0]
            if mark in explicit:
                raise ConfigError(f"service group {mark} (fwmark of group {group.name}) is already used by "
                                  f"the virtual server at {explicit[mark]}; remove the fwmark entry to "
                                  "number the groups automatically", vs.where)
            explicit[mark] = vs.where
    next_mark = 1
    services: list[VirtualService] = []
    seen: dict[Any, Where] = {}
    for vs in doc.services:
        group = doc.groups[vs.group] if vs.group is not None else None
        mark = 0
        if group is not None:
            if group.fwmarks:
                mark = group.fwmarks[0][0]
            else:
                while next_mark in explicit:
                    next_mark += 1
                mark = next_mark
                next_mark += 1
        service = build_service(vs, group, mark, ctx)
        key = service.config.key
        if key in seen:
            raise ConfigError(f"this service is already defined at {seen[key]}", vs.where)
        seen[key] = vs.where
        services.append(service)
    return tuple(services)


def _build_vrrp(ctx: _Ctx, doc: _Document) -> tuple[tuple[VrrpInstance, ...], tuple[VrrpSyncGroup, ...]]:
    instances: dict[str, VrrpInstance] = {}
    by_vrid: dict[tuple[str, int], Where] = {}
    for v in doc.vrrp:
        if v.name in instances:
            raise ConfigError(f"vrrp_instance {v.name} is already defined at {instances[v.name].where}",
                              v.where)
        inst = build_vrrp(v, doc.globals, ctx)
        key = (inst.interface, inst.vrid)
        if key in by_vrid:
            raise ConfigError(f"virtual_router_id {inst.vrid} on {inst.interface} is already used by the "
                              f"instance at {by_vrid[key]}", v.where)
        by_vrid[key] = v.where
        instances[v.name] = inst
    member_of: dict[str, str] = {}
    groups: list[VrrpSyncGroup] = []
    for group, wheres in doc.sync_groups:
        for name, where in wheres.items():
            if name not in instances:
                raise ConfigError(f"vrrp_sync_group {group.name}: no vrrp_instance named {name!r} "
                                  f"(defined: {_allowed(instances) or 'none'})", where)
            if name in member_of:
                raise ConfigError(f"vrrp_instance {name} is already in vrrp_sync_group {member_of[name]}",
                                  where)
            member_of[name] = group.name
        groups.append(group)
    names = [g.name for g in groups]
    for i, g in enumerate(groups):
        if g.name in names[:i]:
            raise ConfigError(f"vrrp_sync_group {g.name} is defined twice", g.where)
    return tuple(instances.values()), tuple(groups)


def _build_sync(ctx: _Ctx, doc: _Document, vrrp: tuple[VrrpInstance, ...]) -> SyncSettings | None:
    by_name = {v.name: v for v in vrrp}
    legacy = [(v.name, v.sync_interface) for v in doc.vrrp if v.sync_interface is not None]
    if doc.globals.sync is None:
        if not legacy:
            return None
        name, (interface, where) = legacy[0]
        for _, (_, extra) in legacy[1:]:
            ctx.warn(extra, "lvs_sync_daemon_interface given in more than one vrrp_instance; the first wins")
        return SyncSettings(interface, name, syncid=by_name[name].vrid)
    for _, (_, where) in legacy:
        ctx.warn(where, "lvs_sync_daemon_interface is overridden by global_defs lvs_sync_daemon; ignored")
    stmt, interface, instance, syncid, port, group = doc.globals.sync
    if instance is not None and instance not in by_name:
        raise _err(stmt, f"no vrrp_instance named {instance!r} (defined: {_allowed(by_name) or 'none'})")
    if syncid is None:
        syncid = by_name[instance].vrid if instance is not None else 0   # keepalived: id defaults to the VRID
    return SyncSettings(interface, instance, syncid=syncid, port=port, group=group)


def parse(text: str, source: str, include: Includer | None = None) -> LoadResult:
    """Parse keepalived.conf ``text`` (named ``source`` in messages) into a Config."""
    ctx = _Ctx()
    tree = build_tree(load_tokens(text, source, include, ctx))
    doc = _Document()
    for stmt in tree:
        _top(ctx, doc, stmt)
    services = _build_services(ctx, doc)
    vrrp, sync_groups = _build_vrrp(ctx, doc)
    sync = _build_sync(ctx, doc, vrrp)
    g = doc.globals
    config = Config(timeouts=g.timeouts, services=services, vrrp=vrrp, vrrp_sync_groups=sync_groups,
                    sync=sync, router_id=g.router_id, source=source)
    return LoadResult(config, tuple(ctx.warnings))


__all__ = ["Stmt", "Token", "build_tree", "load_tokens", "parse", "tokenize"]
