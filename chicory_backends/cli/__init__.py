"""The ``chicory-backends`` command: migrate, clean up and inspect a result backend.

One module per command group, each registering its commands on the Typer application
of app.py (which also holds the shared ``--url``/``--json`` options, the backend a
command works on and the exit codes); render.py is everything printed.

    app.py          the Typer app, --url/--json, Target (which backend), errors -> exit codes
    render.py       inert text, Rich tables, times and numbers, progress
    migrate.py      migrate (--sql, --check), alembic-ini
    maintenance.py  cleanup, stats
    health.py       health, workers
    history.py      tasks, task; the --since/--until window stats shares
    dashboard.py    dashboard
"""

# Each module registers its commands on import (app.COMMANDS sets the help's order).
from chicory_backends.cli import dashboard, health, history, maintenance, migrate  # noqa: F401
from chicory_backends.cli.app import main

__all__ = ["main"]
