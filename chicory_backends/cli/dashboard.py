"""``dashboard``: serve the web dashboard and /metrics (the web extra); it asks the
backend, never SQL (web/)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from chicory_backends.cli.app import EXIT_OK, JsonOption, UrlOption, command, session
from chicory_backends.factory import create_backend

TOKEN_VARIABLE = "CHICORY_DASHBOARD_TOKEN"  # noqa: S105 - a variable name, not a token


@command("dashboard", help="serve the web dashboard and /metrics (web extra)")
def dashboard(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option("--host", help="the address to serve on; any but loopback needs a token"),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="the port to serve on")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            show_default=False,
            help=f"the token every request must carry; required for any host but loopback "
            f"(default: ${TOKEN_VARIABLE})",
        ),
    ] = None,
    allow_delete: Annotated[
        bool, typer.Option("--allow-delete", help="offer a button that deletes a result")
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> int:
    """Serve until interrupted. ``--json`` is accepted as by every command; the
    dashboard prints no result."""
    from chicory_backends.web.serve import run_dashboard

    target = session(ctx, url, as_json).target()
    run_dashboard(
        lambda: create_backend(target.kind, target.config),
        host=host,
        port=port,
        token=token if token is not None else os.environ.get(TOKEN_VARIABLE),
        allow_delete=allow_delete,
    )
    return EXIT_OK
