"""Writes only from the atlas's own pages: a same-origin check and a per-session CSRF token on every write.

A browser sends a form to any site, with no preflight, from any page the user visits; so every request
that writes (a POST: no route takes PUT, PATCH or DELETE) must (1) not come from another site: an `Origin`
(or, without one, a `Referer`) naming another scheme, host or port, or `Sec-Fetch-Site` other than
same-origin / none, is refused; and (2) carry the token of its session: the server gives each client a
session cookie (HttpOnly, SameSite=Lax: never sent with another site's POST) and derives the token from it
with a secret made at start (an HMAC, so nothing is stored); pages put it in their forms (`csrf_token`) and a
`<meta name="csrf-token">`, API clients read it from `GET /session.json` and send it as the `X-CSRF-Token`
header with the cookie.
Another site can neither read the token nor send the cookie, so its requests get a 403 and change nothing.

Reads are guarded against DNS rebinding: a page of another site whose name is made to resolve to this machine
reaches the server as same-origin, but its requests carry that site's name in `Host`. So every request's Host must
name the server (`Hosts`): the address it is bound to, a loopback name, or one given with `--allowed-host`;
any other gets a 421 before a view runs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.types import Message, Scope

from atlas.server.errors import CrossSiteError, WrongHostError

COOKIE = "atlas_session"
HEADER = "x-csrf-token"
FIELD = "csrf_token"
WRITE_METHODS = {"POST"}
"""The methods of the routes that write (every write is a POST); any other method is a read or gets a 405 with
`Allow` from the router."""
SESSION = re.compile(r"[0-9a-f]{32}")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("", "0.0.0.0", "::")
"""Bound to every address: a request may name any of this machine's addresses, so any IP address is allowed in
Host (DNS rebinding needs a name); names still have to be allowed."""


class Hosts:
    """The names a request's Host header may give: the bound host, the loopback names and the `extra` ones."""

    def __init__(self, bound: str = "127.0.0.1", extra: tuple[str, ...] | list[str] = ()) -> None:
        self.any_address = bound in WILDCARD
        self.names = frozenset(filter(None, (_hostname(h) for h in (*LOOPBACK, bound, *extra))))

    def check(self, scope: Scope) -> None:
        """Raise WrongHostError unless the request's Host names this server."""
        sent = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
        if sent is None:
            raise WrongHostError("the request has no Host header: send the address of this server")
        name = _hostname(sent)
        if name in self.names or (self.any_address and name is not None and _is_address(name)):
            return
        raise WrongHostError(f"this server does not answer for host {_shown(sent)!r} (a page of another site may be "
                             "trying to read it): use http://127.0.0.1, or start `atlas serve` with --allowed-host "
                             "NAME for a name of yours")


def _hostname(host: str) -> str | None:
    """The host of a Host header or address, lower case, without port, brackets or a final dot; None if malformed."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]" if host.count(":") > 1 else host  # a bare IPv6 address (--host ::1)
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _is_address(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """Sessions and their tokens for one server run."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def token(self, session: str) -> str:
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def session_of(scope: Scope) -> str | None:
        """The valid session id the request's cookie carries, if any."""
        cookies = SimpleCookie()
        for name, value in scope["headers"]:
            if name == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except Exception:  # noqa: BLE001 - a malformed cookie header is no session
                    continue
        found = cookies.get(COOKIE)
        return found.value if found and SESSION.fullmatch(found.value) else None

    @staticmethod
    def new_session() -> str:
        return secrets.token_hex(16)

    @staticmethod
    def cookie(session: str) -> bytes:
        return f"{COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax".encode()

    def check(self, scope: Scope, body: bytes) -> None:
        """Raise CrossSiteError unless a write comes from this server's own origin with its session's token."""
        if scope["method"] not in WRITE_METHODS:
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            raise CrossSiteError(f"refused a write from another site (Sec-Fetch-Site: {fetch_site}): write from "
                                 "the atlas's own pages")
        source = headers.get("origin") or headers.get("referer")
        if source is not None and not _same_origin(source, scope, headers.get("host", "")):
            raise CrossSiteError(f"refused a write from another site ({_shown(source)}): write from the atlas's "
                                 "own pages")
        session = self.session_of(scope)
        sent = headers.get(HEADER) or _form_token(headers.get("content-type", ""), body)
        if not session or not sent or not hmac.compare_digest(sent, self.token(session)):
            raise CrossSiteError("a write needs this session's CSRF token: send the form of the atlas's page, or "
                                 "from a script GET /session.json and send its cookie and its csrf_token as the "
                                 "X-CSRF-Token header")


def _form_token(content_type: str, body: bytes) -> str | None:
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return None
    values = parse_qs(body.decode("utf-8", "replace")).get(FIELD)
    return values[0] if values else None


def _same_origin(source: str, scope: Scope, host: str) -> bool:
    parts = urlsplit(source)
    scheme = scope.get("scheme", "http")
    default = {"http": 80, "https": 443}.get(scheme)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    own = urlsplit(f"{scheme}://{host}")
    try:
        own_port = own.port or default
    except ValueError:
        return False
    return parts.scheme == scheme and bool(parts.hostname) and parts.hostname == own.hostname and port == own_port


def _shown(source: str) -> str:
    return source if len(source) <= 100 else source[:99] + "…"


def add_cookie(message: Message, session: str) -> Message:
    """The response's start message with the new session's Set-Cookie header."""
    if message["type"] == "http.response.start":
        message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", Guard.cookie(session))]}
    return message
