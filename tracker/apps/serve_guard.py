"""Who may talk to ``track serve``: other web sites cannot use it through a visitor's browser (:class:`Guard`).

- DNS rebinding: a request is answered only when its ``Host`` is a loopback name (``localhost``, 127.x.y.z,
  ``[::1]``, any port), the address the server is bound to, or one of ``allowed_hosts`` (400 otherwise;
  :class:`HostPolicy`).
- CSRF: a POST must carry a ``Content-Type`` that a cross-site form cannot send without a CORS preflight
  (which this server never grants): uploads ``application/octet-stream`` or ``video/*``, jobs
  ``application/json`` (415 otherwise), and an ``Origin``, when sent, must be the server's own (403).
"""

import ipaddress
import json
import re

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_HOST = re.compile(r"^(?P<name>\[[0-9a-fA-F:.]+\]|[^\[\]:]+)(:(?P<port>[0-9]{1,5}))?$")
# A cross-site form (or a "simple" fetch) may POST these without a CORS preflight.
FORM_TYPES = ("", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``) as ``(name, port)``, or None.

    Names are lower-cased; IP addresses are written the standard way (IPv6 without brackets).
    """
    m = _HOST.match(value.strip())
    if m is None:
        return None
    name, port = m["name"].lower(), m["port"]
    if port is not None and not 0 < int(port) < 65536:
        return None
    try:
        name = str(ipaddress.ip_address(name[1:-1] if name.startswith("[") else name))
    except ValueError:
        if name.startswith("[") or not _NAME.match(name) or len(name) > 253:
            return None
    return name, None if port is None else int(port)


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The ``Host`` values the server answers (the DNS rebinding guard).

    Loopback names are always served; so are the address the server is bound to (unless it is a wildcard
    such as 0.0.0.0, which no client addresses) and the ``allowed`` names (``name`` or ``name:port``).

    Args:
        bind_host: the address or name the server listens on.
        allowed: further names, as given to ``--allowed-host``.

    Raises:
        ValueError: an allowed entry is not a host name or address.
    """

    def __init__(self, bind_host: str, allowed: tuple[str, ...] = ()):
        self.allowed: set[tuple[str, int | None]] = set()
        for entry in allowed:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"{entry!r} is not a host name or address (name, name:port, 1.2.3.4, [::1]:8000)")
            self.allowed.add(parsed)
        bound = split_host(f"[{bind_host}]" if ":" in bind_host else bind_host)
        if bound is not None and bound[0] not in ("0.0.0.0", "::"):
            self.allowed.add((bound[0], None))

    def allows(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        return is_loopback(name) or (name, None) in self.allowed or (name, port) in self.allowed


def media_type(content_type: str | None) -> str:
    """The essence of a ``Content-Type`` (``type/subtype``, lower case, no parameters); "" when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class Guard:
    """ASGI middleware: refuses foreign ``Host`` names (400), form-like POSTs (415) and foreign ``Origin``s (403).

    Every answer, refused or not, carries ``X-Content-Type-Options: nosniff``. Errors are one-line JSON.

    Args:
        app: the ASGI app guarded.
        policy: the ``Host`` values served.
    """

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    def refusal(self, method: str, headers) -> tuple[int, str] | None:
        """``(status, message)`` when the request must be refused, else None."""
        hosts = headers.getlist("host")
        host = hosts[0] if len(hosts) == 1 else ""
        if not self.policy.allows(host):
            shown = json.dumps(host[:80]) if len(hosts) < 2 else "given twice"
            return 400, (
                f"host {shown} is not served here (a guard against DNS rebinding); open the address "
                "track serve printed, or start it with --allowed-host NAME"
            )
        if method in self.SAFE:
            return None
        kind = media_type(headers.get("content-type"))
        if kind in FORM_TYPES:
            return 415, (
                f"refused: Content-Type {kind or 'none'} can be sent by any web page's form; send uploads as "
                "application/octet-stream or video/*, jobs as application/json"
            )
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            return 403, f"refused: a request from origin {json.dumps(origin[:80])}; only this server's pages may post"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        async def send_nosniff(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-content-type-options", b"nosniff")]
            await send(message)

        refused = self.refusal(scope["method"], Headers(scope=scope))
        if refused is not None:
            await JSONResponse({"error": refused[1]}, status_code=refused[0])(scope, receive, send_nosniff)
            return
        await self.app(scope, receive, send_nosniff)


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server as reached through ``host`` (the ``Host`` header)."""
    scheme, sep, netloc = origin.partition("://")
    return sep == "://" and scheme.lower() in ("http", "https") and netloc.lower() == host.strip().lower()
