"""Who may call `intake serve`, and from where.

"Open to local users" must never mean "open to every web page in the
operator's browser": a page on any site can send requests to 127.0.0.1,
and with DNS rebinding it can read the answers too. So four locks, each of
which alone stops that class (docs/serve.md, "Who may call it"):

1. **Always a token.** Every path under /api/ needs `Authorization: Bearer
   <admin token>`. Without INTAKE_ADMIN_TOKEN, serve (on loopback only)
   makes one for the run and prints it once, as Jupyter does. A web page
   cannot know it, and a browser never adds a bearer header by itself.
2. **Host names this server.** A rebinding page reaches 127.0.0.1 under its
   own name; its requests carry that name in `Host`. Only IP literals,
   `localhost`, the bound name and names given with `--allowed-host` pass.
3. **No other origin.** A request whose `Origin` is not this server's own,
   or whose `Sec-Fetch-Site` says another site or port made it, is refused
   before anything is read or changed.
4. **State changes are JSON.** POST/PATCH/PUT/DELETE must say
   `Content-Type: application/json`, which neither an HTML form nor a
   no-cors fetch can send without a CORS preflight serve never grants.

/metrics is open on loopback (a local Prometheus agent scrapes it) and
needs the token otherwise; locks 2 and 3 apply to it too. The drain's tick
also takes INTAKE_TICK_TOKEN, a token that can do nothing else, so the
secret a scheduler keeps (Supabase Vault) cannot pause or purge anything.
The dashboard's page shell (`/`, `/static/`) holds no data and is open.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets as random_tokens
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from intake_cli.faces.serve.replies import error
from intake_cli.platform import secrets
from intake_cli.platform.errors import UsageError

TOKEN_ENV = "INTAKE_ADMIN_TOKEN"
TICK_TOKEN_ENV = "INTAKE_TICK_TOKEN"
TICK_PATH = "/api/drain/tick"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Methods that change something: they must carry JSON (lock 4).
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values a request from the dashboard itself, or typed by the
# operator, carries; `same-site` is another port of the same host: refused.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name other than localhost may resolve to anything: not loopback.
        return False


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def check_host_name(name: str) -> str | None:
    """Why `name` cannot be an allowed Host name, or None."""
    if _is_ip_literal(name):
        return None
    if not _HOST_NAME.match(name.lower().rstrip(".")):
        return "expected a DNS name such as intake.example.com (no port, no wildcard, no scheme)"
    return None


# RFC 6750's b64token: what an Authorization header can carry as it is.
_BEARER_CHARACTERS = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


def _bearer_token_from_env(name: str) -> str | None:
    value = secrets.from_env(name)
    if value is not None and not _BEARER_CHARACTERS.match(value):
        raise UsageError(
            f"{name} holds characters a bearer token cannot carry in a header (allowed: "
            f"letters, digits, - . _ ~ + / and = at the end); {secrets.HOW_TO_MAKE}"
        )
    return value


def tokens_from_env() -> tuple[str | None, str | None]:
    """(admin token, tick token) from the environment, each checked for strength."""
    admin = _bearer_token_from_env(TOKEN_ENV)
    tick = _bearer_token_from_env(TICK_TOKEN_ENV)
    if admin is not None and tick is not None and hmac.compare_digest(admin, tick):
        raise UsageError(
            f"{TICK_TOKEN_ENV} must differ from {TOKEN_ENV}: the tick token is kept by a "
            "scheduler (e.g. Supabase Vault) and must not open the rest of the admin API"
        )
    return admin, tick


@dataclass(frozen=True)
class StartDecision:
    token: str
    # What to print once on stderr before serving: how to reach the API.
    notice: str | None


def check_start(host: str, port: int, token: str | None) -> StartDecision:
    """The admin token to serve with; refuses an address off loopback without one from the env."""
    if token is not None:
        return StartDecision(token, None)
    if not is_loopback(host):
        raise UsageError(
            f"refusing to serve on {host} without {TOKEN_ENV}: anyone who reaches it could "
            f"pause pools and replay or purge dead letters. Set {TOKEN_ENV} "
            f"({secrets.HOW_TO_MAKE}), or bind to 127.0.0.1"
        )
    made = random_tokens.token_urlsafe(32)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return StartDecision(
        made,
        f"{TOKEN_ENV} is not set: this run's admin token is {made}\n"
        f"  dashboard: http://{netloc}/#token={made}\n"
        f"  API: curl -H 'Authorization: Bearer {made}' http://{netloc}/api/status\n"
        f"  set {TOKEN_ENV} to keep one token across restarts",
    )


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(lowercased name, port or None) of a Host header, None when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        name, colon, port_text = value.rpartition(":")
        if not colon:
            name, port_text = value, ""
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    name = name.rstrip(".")
    if not name:
        return None
    return name, int(port_text) if port_text else None


@dataclass(frozen=True)
class Guard:
    token: str
    loopback: bool
    tick_token: str | None = None
    # Names (lowercase) a Host header may carry besides IP literals and localhost.
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        *,
        token: str,
        host: str,
        tick_token: str | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> Guard:
        names = {name.lower().rstrip(".") for name in allowed_hosts}
        if not _is_ip_literal(host):
            names.add(host.lower().rstrip("."))
        return cls(token, is_loopback(host), tick_token, frozenset(names))

    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return given.strip() if scheme.lower() == "bearer" else None

    @staticmethod
    def _matches(given: str, expected: str | None) -> bool:
        # Constant time: the comparison must not tell how much of a guess was right.
        return expected is not None and hmac.compare_digest(given.encode(), expected.encode())

    def host_refusal(self, request: web.Request) -> str | None:
        header = request.headers.get("Host")
        if header is None:
            return None  # not a browser: HTTP/1.0 clients may send none
        parsed = _split_host(header)
        if parsed is not None:
            name = parsed[0]
            if _is_ip_literal(name) or name == "localhost" or name in self.allowed_hosts:
                return None
        return (
            "the Host header does not name this server (a page on another site reaching it "
            "through DNS rebinding?): start serve with --allowed-host NAME to allow a name"
        )

    def origin_refusal(self, request: web.Request) -> str | None:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in OWN_FETCH_SITES:
            return "a request made by a page of another origin is refused"
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if not _same_origin(origin, request.headers.get("Host")):
            return "a request made by a page of another origin is refused"
        return None

    def who(self, request: web.Request) -> str | None:
        """ "token", "tick" or "loopback" when the request may go on, None when it must not."""
        path = request.path
        given = self._bearer(request)
        if path == "/api" or path.startswith("/api/"):
            if given is not None and self._matches(given, self.token):
                return "token"
            if (
                given is not None
                and path == TICK_PATH
                and request.method == "POST"
                and self._matches(given, self.tick_token)
            ):
                return "tick"
            return None
        if path == "/metrics":
            if given is not None and self._matches(given, self.token):
                return "token"
            return "loopback" if self.loopback else None
        return "open"


def _same_origin(origin: str, host_header: str | None) -> bool:
    """Whether `Origin` names the scheme-less place `Host` does (host and port)."""
    if host_header is None or origin.strip().lower() == "null":
        return False
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return False
    host = _split_host(host_header)
    if host is None:
        return False
    default = DEFAULT_PORTS[parts.scheme]
    return (parts.hostname.rstrip("."), origin_port or default) == (host[0], host[1] or default)


GUARD = web.AppKey("guard", Guard)


def _guarded(path: str) -> bool:
    return path == "/api" or path.startswith("/api/") or path == "/metrics"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app[GUARD]
    # Where the request came from is checked before the token: a refused
    # page learns nothing, not even whether its guess of a token was right.
    if _guarded(request.path) and (
        refusal := guard.host_refusal(request) or guard.origin_refusal(request)
    ):
        return error(403, refusal, None)
    who = guard.who(request)
    if who is None:
        return error(
            401,
            "missing or wrong bearer token (Authorization: Bearer <INTAKE_ADMIN_TOKEN>)",
            None,
            headers={"WWW-Authenticate": 'Bearer realm="intake"'},
        )
    if request.method in CHANGING and _guarded(request.path):
        media = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return error(
                415,
                "a request that changes something must send Content-Type: application/json "
                "(an empty body may be {})",
                None,
            )
    request["who"] = who
    return await handler(request)
