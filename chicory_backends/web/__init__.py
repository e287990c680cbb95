"""The dashboard and ``/metrics``: an ASGI application over any backend's contract.

Needs the ``web`` extra (``pip install 'chicory-backends[web]'``). The application asks
the backend (``list_tasks``, ``get_task``, ``task_summary``, ``get_active_workers``); it
holds no SQL and imports no driver. ``create_app`` is imported on first use, so that
``chicory_backends.web.serve`` (the CLI's entry) imports without the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chicory_backends.web.app import create_app

__all__ = ["create_app"]

WEB_EXTRA_HINT = "pip install 'chicory-backends[web]'"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        try:
            from chicory_backends.web.app import create_app
        except ImportError as error:
            raise ImportError(
                f"the dashboard needs the web extra ({error.name} is missing): {WEB_EXTRA_HINT}"
            ) from error
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
