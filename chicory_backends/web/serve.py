"""``chicory-backends dashboard``: serve the dashboard with uvicorn.

The CLI parses its options and calls ``run_dashboard``; this module checks them and
runs the server. The default host is 127.0.0.1: any other host needs a token. Importing
this module needs no extra; running the dashboard needs the ``web`` extra.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from chicory_backends.base import Backend
from chicory_backends.errors import ConfigurationError

# Seconds uvicorn waits for open pages (their live-update streams) on shutdown.
GRACEFUL_SHUTDOWN_SECONDS = 2


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: a bind no other machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name such as 0.0.0.0's hostname: may be reachable from outside


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve anything but loopback without a token (ConfigurationError)."""
    if token is not None and not token.strip():
        raise ConfigurationError("the dashboard token must not be empty")
    if token is None and not is_loopback_host(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host!r} without a token: other machines "
            "could read every task; pass a token (--token or CHICORY_DASHBOARD_TOKEN), "
            "or bind to 127.0.0.1"
        )


def run_dashboard(
    backend_factory: Callable[[], Backend],
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    allow_delete: bool = False,
) -> None:
    """Serve the dashboard until interrupted; the backend is connected at start-up and
    disconnected at shutdown. Raises ConfigurationError (before binding anything) for a
    non-loopback host without a token."""
    check_bind(host, token)
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be between 0 and 65535, not {port}")
    # Imported here: the CLI can import this module without the web extra installed.
    import socket

    try:
        import uvicorn

        from chicory_backends.web.app import create_app
    except ImportError as error:
        raise ConfigurationError(
            f"the dashboard needs the web extra ({error.name} is missing): "
            "pip install 'chicory-backends[web]'"
        ) from None

    app = create_app(
        backend_factory(), allow_delete=allow_delete, auth_token=token, manage_backend=True
    )
    watcher = app.state.dashboard.watcher

    class Server(uvicorn.Server):
        """uvicorn, ending the pages' live-update streams as the shutdown starts:
        otherwise every open page holds the exit for the whole graceful timeout."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await watcher.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        proxy_headers=False,  # the client address decides who needs a token: never a header
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    Server(config).run()
