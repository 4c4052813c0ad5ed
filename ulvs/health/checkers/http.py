"""HTTP_GET and SSL_GET: fetch each ``url`` and require its status, digest and regex
(keepalived check_http.c / check_ssl.c).

Every url is fetched on its own connection, each bounded by ``connect_timeout``; the check
passes only when all of them pass.  Per url, in keepalived's order:

* ``status_code``: ints, ``"200"``, ``"200-299"``, ``"200-299,301"`` or a list of those;
  default 200-299.
* ``digest``: the MD5 of the body in hex (what keepalived's ``genhash`` prints).
* ``regex`` (Python ``re`` on the body bytes, searched from ``regex_min_offset``; a match must
  start at or before ``regex_max_offset``); ``regex_no_match`` inverts it; ``regex_options``
  caseless, multiline, dotall, extended.

``http_protocol`` 1.0 (default) sends a bare HTTP/1.0 request, 1.0C adds ``Connection: close``,
1.1 sends HTTP/1.1 with ``Connection: close``.  The body is framed by chunked transfer coding,
Content-Length, or the end of the connection, and at most ``MAX_BODY`` bytes are read: a larger
body passes a status-only url but cannot be checked against a digest or regex.  ``Host`` is the
url's ``virtualhost``, else the checker's, else ``address:port``.

SSL_GET does not verify the server's certificate (neither does keepalived without a global
``SSL`` block); it sends SNI only with ``enable_sni``: ``sni_name``, else the virtualhost.
Without ``tls_compliant`` a server that closes without a TLS close_notify is tolerated.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, CheckerError, Result, Target, register
from ulvs.health.checkers._io import Failed, bounded, close_stream, endpoint, open_stream, read_until

MAX_BODY = 1 << 20          # bytes of body read at most
MAX_HEAD = 64 * 1024        # bytes of status line + headers (and of one chunk-size line)
USER_AGENT = "KeepAliveClient"   # keepalived's; some servers' access rules expect it
DEFAULT_STATUS = ((200, 299),)
STATUS_MIN, STATUS_MAX = 100, 599
PROTOCOLS = {"1.0": ("HTTP/1.0", False), "1.0C": ("HTTP/1.0", True), "1.1": ("HTTP/1.1", True)}
REGEX_OPTIONS = {"caseless": re.IGNORECASE, "multiline": re.MULTILINE, "dotall": re.DOTALL,
                 "extended": re.VERBOSE}
NO_BODY_STATUS = frozenset({204, 304})

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: [^\r\n]*)?\Z")
_STATUS_ITEM = re.compile(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?\Z")


# -- configuration ------------------------------------------------------------------------------

def parse_status_codes(value: Any) -> tuple[tuple[int, int], ...]:
    """``status_code`` as inclusive ranges: 200, "200", "200-299,301", [200, "301-302"]."""
    if value is None:
        return DEFAULT_STATUS
    items: list[Any] = list(value) if isinstance(value, (list, tuple)) else [value]
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise CheckerError(f"status_code {item!r} is not a code or a range")
        parts = [item] if isinstance(item, int) else str(item).split(",")
        ranges.extend(_status_range(p) for p in parts)
    if not ranges:
        raise CheckerError("status_code is empty")
    return tuple(ranges)


def _status_range(part: int | str) -> tuple[int, int]:
    if isinstance(part, int):
        lo = hi = part
    else:
        m = _STATUS_ITEM.match(part)
        if m is None:
            raise CheckerError(f"status_code {part!r} is not a code or a range (e.g. 200, 200-299)")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
    if not STATUS_MIN <= lo <= hi <= STATUS_MAX:
        raise CheckerError(f"status_code {part!r} is outside {STATUS_MIN}-{STATUS_MAX} or reversed")
    return lo, hi


def _regex_flags(value: Any) -> int:
    if value is None:
        return 0
    words = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    flags = 0
    for word in words:
        flag = REGEX_OPTIONS.get(str(word))
        if flag is None:
            raise CheckerError(f"regex option {word!r} is not supported "
                               f"(supported: {', '.join(REGEX_OPTIONS)})")
        flags |= flag
    return flags


@dataclass(frozen=True, slots=True)
class UrlCheck:
    """One ``url`` block, checked."""

    path: str
    statuses: tuple[tuple[int, int], ...] = DEFAULT_STATUS
    digest: str | None = None
    regex: re.Pattern[bytes] | None = None
    regex_no_match: bool = False
    regex_min_offset: int = 0
    regex_max_offset: int | None = None
    virtualhost: str | None = None

    @classmethod
    def from_options(cls, url: Mapping[str, Any]) -> UrlCheck:
        path = url.get("path")
        if not isinstance(path, str) or not path or any(c in path for c in " \r\n"):
            raise CheckerError(f"url path {path!r} must be a non-empty string without spaces")
        digest = url.get("digest")
        if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", str(digest)):
            raise CheckerError(f"url {path}: digest {digest!r} is not an MD5 hex digest")
        regex = url.get("regex")
        try:
            pattern = None if regex is None else re.compile(str(regex).encode(),
                                                            _regex_flags(url.get("regex_options")))
        except re.error as e:
            raise CheckerError(f"url {path}: bad regex {regex!r}: {e}") from None
        return cls(path, parse_status_codes(url.get("status_code")),
                   None if digest is None else str(digest).lower(), pattern,
                   bool(url.get("regex_no_match", False)), int(url.get("regex_min_offset", 0)),
                   None if url.get("regex_max_offset") is None else int(url["regex_max_offset"]),
                   url.get("virtualhost"))


# -- the response -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]   # lower-case names; repeated headers joined with ", "
    body: bytes
    truncated: bool           # the body went on past MAX_BODY


def parse_head(head: bytes) -> tuple[int, int, dict[str, str]]:
    """Status line and headers (``head`` ends with the blank line) -> (minor, status, headers)."""
    lines = head[:-4].split(b"\r\n")
    m = _STATUS_LINE.match(lines[0])
    if m is None:
        raise Failed(f"malformed status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise Failed(f"malformed header line {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(m.group(2)), int(m.group(3)), headers


async def read_response(reader: asyncio.StreamReader) -> Response:
    while True:
        minor, status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        if not 100 <= status < 200:        # skip interim 1xx responses (RFC 9110 §15.2)
            break
    if status in NO_BODY_STATUS:
        return Response(status, headers, b"", False)
    if minor >= 1 and "chunked" in headers.get("transfer-encoding", "").lower():
        body, truncated = await _read_chunked(reader)
    elif "content-length" in headers:
        body, truncated = await _read_length(reader, _content_length(headers["content-length"]))
    else:
        body = await read_until(reader, lambda d: False, MAX_BODY + 1)
        body, truncated = body[:MAX_BODY], len(body) > MAX_BODY
    return Response(status, headers, body, truncated)


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise Failed(f"bad Content-Length {value!r}")
    return int(values.pop())


async def _read_length(reader: asyncio.StreamReader, length: int) -> tuple[bytes, bool]:
    return await reader.readexactly(min(length, MAX_BODY)), length > MAX_BODY


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    body = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Failed(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":   # trailer fields
                pass
            return body, False
        if len(body) + size > MAX_BODY:
            return body + await reader.readexactly(MAX_BODY - len(body)), True
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise Failed("chunk not followed by CRLF")


# -- the checks -----------------------------------------------------------------------------------

def check_response(url: UrlCheck, resp: Response) -> str:
    """Raise Failed unless ``resp`` satisfies ``url``; return what passed."""
    if not any(lo <= resp.status <= hi for lo, hi in url.statuses):
        raise Failed(f"status {resp.status} not in {_ranges(url.statuses)}")
    passed = f"status {resp.status}"
    if (url.digest is not None or url.regex is not None) and resp.truncated:
        raise Failed(f"body longer than {MAX_BODY} bytes: digest and regex cannot be checked")
    if url.digest is not None:
        got = hashlib.md5(resp.body, usedforsecurity=False).hexdigest()
        if got != url.digest:
            raise Failed(f"MD5 digest {got} != {url.digest}")
        passed += ", digest"
    if url.regex is not None:
        matched = _regex_matches(url, resp.body)
        if matched == url.regex_no_match:
            verb = "matches" if matched else "does not match"
            raise Failed(f"body {verb} regex {url.regex.pattern.decode(errors='replace')!r}")
        passed += ", regex"
    return passed


def _regex_matches(url: UrlCheck, body: bytes) -> bool:
    assert url.regex is not None
    m = url.regex.search(body, url.regex_min_offset)
    return m is not None and (url.regex_max_offset is None or m.start() <= url.regex_max_offset)


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


class HttpGet(Checker):
    scheme = "http"

    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        urls = spec.get("url")
        if not isinstance(urls, Sequence) or isinstance(urls, str) or not urls:
            raise CheckerError(f"{spec.kind} needs at least one url block")
        self.urls = tuple(UrlCheck.from_options(u) for u in urls)
        protocol = str(spec.get("http_protocol", "1.0"))
        if protocol not in PROTOCOLS:
            raise CheckerError(f"http_protocol {protocol!r} (allowed: {', '.join(PROTOCOLS)})")
        self.version, self.close = PROTOCOLS[protocol]
        self.virtualhost: str | None = spec.get("virtualhost")

    async def probe(self) -> Result:
        passed: list[str] = []
        for url in self.urls:
            what = f"{self.kind} {self.scheme}://{endpoint(self.target)}{url.path}"
            result = await bounded(functools.partial(self._fetch, url), self.connect_timeout, what)
            if not result.ok:
                return result
            passed.append(f"{url.path}: {result.detail}")
        return Result(True, "; ".join(passed))

    def request(self, url: UrlCheck) -> bytes:
        host = url.virtualhost or self.virtualhost or endpoint(self.target)
        connection = "Connection: close\r\n" if self.close else ""
        return (f"GET {url.path} {self.version}\r\nUser-Agent: {USER_AGENT}\r\n{connection}"
                f"Host: {host}\r\n\r\n").encode("latin-1", errors="replace")

    async def connect(self, url: UrlCheck) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_stream(self.target, limit=MAX_HEAD)

    async def _fetch(self, url: UrlCheck) -> Result:
        reader, writer = await self.connect(url)
        try:
            writer.write(self.request(url))
            await writer.drain()
            return Result(True, check_response(url, await read_response(reader)))
        finally:
            await close_stream(writer)


class SslGet(HttpGet):
    scheme = "https"

    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        if not spec.get("tls_compliant", False):
            self.tls.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        self.enable_sni = bool(spec.get("enable_sni", False))
        self.sni_name: str | None = spec.get("sni_name")

    def sni(self, url: UrlCheck) -> str:
        if not self.enable_sni:
            return ""
        return self.sni_name or url.virtualhost or self.virtualhost or ""

    async def connect(self, url: UrlCheck) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_stream(self.target, self.tls, self.sni(url), limit=MAX_HEAD)


register("HTTP_GET", HttpGet)
register("SSL_GET", SslGet)
