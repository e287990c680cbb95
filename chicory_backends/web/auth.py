"""Who may look: loopback clients when there is no token, token holders otherwise.

With a token, a request is let in by ``Authorization: Bearer <token>`` (Prometheus,
scripts), by the session cookie, or by ``?token=<token>`` once: that answers with a
redirect to the same address without the token and sets the cookie (HttpOnly,
SameSite=Strict), so the token does not stay in the address bar, the history or a
Referer. The cookie holds an HMAC of the token, not the token. Every comparison is
constant-time.

Without a token only loopback clients are served (and those over a Unix socket): an
application mounted on a public interface without a token refuses everyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "chicory_dashboard"
PUBLIC_PREFIXES = ("/static/",)


def is_loopback(host: str | None) -> bool:
    if host is None:  # a Unix socket: only local processes reach it
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"chicory-dashboard-session", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class TokenAuth:
    """Pure ASGI middleware (streams such as the live-update events pass untouched)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the dashboard token must not be empty")
        self.app = app
        self.token = token
        self.session = None if token is None else session_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        local_path = path[len(root) :] if root and path.startswith(root) else path
        if local_path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        response = self._check(scope, root)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, scope: Scope, root: str) -> Response | None:
        """None to let the request in, else the answer that refuses (or redirects) it."""
        if self.token is None or self.session is None:
            client = scope.get("client")
            if is_loopback(client[0] if client else None):
                return None
            return PlainTextResponse(
                "This dashboard has no token and serves only loopback clients. "
                "Start it with a token to serve other hosts.\n",
                status_code=403,
            )
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(credentials.strip(), self.token):
            return None
        cookies = _cookies(headers.get("cookie", ""))
        if _same(cookies.get(COOKIE, ""), self.session):
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for key, value in query if key == "token"]
        if given and _same(given[-1], self.token):
            rest = urlencode([(key, value) for key, value in query if key != "token"])
            # One leading slash: "//host/..." would send the browser to another site.
            target = "/" + scope.get("path", "/").lstrip("/") + ("?" + rest if rest else "")
            if scope.get("method") not in ("GET", "HEAD"):
                return None  # let it in; the next page view sets the cookie
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(
                COOKIE,
                self.session,
                httponly=True,
                samesite="strict",
                secure=scope.get("scheme") == "https",
                path=root or "/",
            )
            return redirect
        return PlainTextResponse(
            "A token is required: send 'Authorization: Bearer <token>', "
            "or open the dashboard once with ?token=<token>.\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="chicory dashboard"'},
        )


def _cookies(header: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            found.setdefault(key, value)
    return found
