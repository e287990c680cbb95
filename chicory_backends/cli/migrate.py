"""``migrate`` (the schema to head, its SQL, or what an upgrade would do) and
``alembic-ini`` (an alembic.ini for this installation)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Annotated

import typer
from alembic import command as alembic
from alembic.util import CommandError

from chicory_backends.alembic_ini import alembic_ini
from chicory_backends.cli.app import (
    EXIT_OK,
    EXIT_RUNTIME,
    JsonOption,
    Session,
    Target,
    UrlOption,
    command,
    session,
)
from chicory_backends.cli.render import revision_lines
from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import ChicoryBackendError, ConfigurationError
from chicory_backends.factory import kind_from_url
from chicory_backends.redact import redact
from chicory_backends.sql.drivers import driver_for
from chicory_backends.sql.engine import translate_error
from chicory_backends.sql.migrate import (
    UpgradePlan,
    alembic_config,
    database_revision,
    plan_upgrade,
    revision_steps,
)
from chicory_backends.types import BackendType


def run_alembic(config: SQLBackendConfig, step: Callable[[], None]) -> None:
    """An alembic command, with its driver and alembic errors turned into ours."""
    try:
        step()
    except CommandError as error:
        raise ChicoryBackendError(f"alembic: {error}") from None
    except Exception as error:
        raise translate_error(error, config) from None


@command("migrate", help="upgrade the schema to head (alembic upgrade head)")
def migrate(
    ctx: typer.Context,
    sql: Annotated[
        bool, typer.Option("--sql", help="print the SQL instead of running it (no connection)")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="print what the upgrade would find and do (Chicory's own tables, row "
            "counts, the steps, an estimated time) and change nothing; exit 1 when an "
            "upgrade is due",
        ),
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> int:
    asked = session(ctx, url, as_json)
    target = asked.target(driver=not sql)  # offline SQL needs no driver
    config = target.sql_config("migrate")
    alembic_cfg = alembic_config(config.sqlalchemy_url().render_as_string(hide_password=False))
    if sql:
        alembic_cfg.output_buffer = io.StringIO()
        run_alembic(config, lambda: alembic.upgrade(alembic_cfg, "head", sql=True))
        text = alembic_cfg.output_buffer.getvalue()
        asked.emit({"backend": target.kind.value, "sql": text}, text.rstrip("\n"))
        return EXIT_OK

    if check:
        return report_plan(asked, target, asyncio.run(plan_upgrade(config)))
    if not driver_for(config).session_pinned:
        # The migration lock is a session-wide advisory lock: through transaction pooling
        # it would stay behind on whichever server connection took it.
        raise ConfigurationError(
            "migrate needs a direct connection to PostgreSQL, not through PgBouncer: run it "
            "with CHICORY_BACKEND_POSTGRES_PGBOUNCER=false and the server's own address"
        )
    plan = asyncio.run(plan_upgrade(config))
    before = plan.revision
    alembic_cfg.attributes["on_version_apply"] = revision_lines(quiet=asked.json)
    run_alembic(config, lambda: alembic.upgrade(alembic_cfg, "head"))
    after = asyncio.run(database_revision(config))
    if before == after:
        text = f"{target.label}: schema already at revision {after} (head)"
    elif plan.chicory_tables:
        kept = ", ".join(f"{count} rows of {table}" for table, count in plan.rows.items())
        text = (
            f"{target.label}: adopted Chicory 0.1.0's own tables in place ({kept} kept); "
            f"schema at revision {after} (head)"
        )
    else:
        text = f"{target.label}: schema upgraded from {before or 'empty'} to {after} (head)"
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "from_revision": before,
        "revision": after,
        "upgraded": before != after,
        "adopted_chicory_tables": plan.chicory_tables and before != after,
        "rows_kept": plan.rows if plan.chicory_tables else {},
    }
    asked.emit(payload, text)
    return EXIT_OK


def report_plan(asked: Session, target: Target, plan: UpgradePlan) -> int:
    """``migrate --check``: what was found, what would run; exit 1 when an upgrade is due."""
    docs = dict(revision_steps())
    found = (
        "Chicory 0.1.0's own tables (adopted in place by revision 0001, rows kept)"
        if plan.chicory_tables
        else f"revision {plan.revision}"
        if plan.revision
        else "no schema"
    )
    lines = [f"{target.label}: found {found}"]
    lines += [f"  {table}: {count} rows" for table, count in plan.rows.items()]
    if plan.needed:
        lines.append(f"upgrade to {plan.head} would apply:")
        lines += [f"  {revision}: {docs[revision].splitlines()[0]}" for revision in plan.steps]
        lines.append(f"estimated time: about {max(plan.estimated_seconds, 0.1):.1f}s")
    else:
        lines.append(f"schema at head ({plan.head}): nothing to do")
    payload = {
        "backend": target.kind.value,
        "revision": plan.revision,
        "head": plan.head,
        "chicory_tables": plan.chicory_tables,
        "rows": plan.rows,
        "steps": plan.steps,
        "estimated_seconds": round(plan.estimated_seconds, 1),
    }
    asked.emit(payload, "\n".join(lines))
    return EXIT_RUNTIME if plan.needed else EXIT_OK


def ini_url(url: str) -> str:
    """``--url`` as the ini's ``sqlalchemy.url``: a SQL URL on one line, with no password
    (the ini is a file, often committed; the password stays in CHICORY_BACKEND_* or .env,
    which the ini reads when it names no URL)."""
    try:
        kind = kind_from_url(url)
    except ConfigurationError as error:
        raise ConfigurationError(f"--url: {error}") from None
    if kind is BackendType.REDIS:
        raise ConfigurationError("alembic-ini --url: alembic migrates SQL databases, not Redis")
    if not url.isprintable() or url != url.strip() or " " in url:
        raise ConfigurationError("alembic-ini --url: the URL must be one word on one line")
    if redact(url) != url:
        raise ConfigurationError(
            "alembic-ini --url: the URL holds a password, which alembic.ini would keep in a "
            "file: leave --url out (the ini then reads the library's settings, "
            "CHICORY_BACKEND_<TYPE>_PASSWORD or .env included) or give a URL without one"
        )
    return url


IniUrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        show_default=False,
        help="a SQL database to write into the ini as its sqlalchemy.url, used instead of "
        "the library's settings; a URL holding a password is refused (the ini is a file)",
    ),
]


@command(
    "alembic-ini",
    help="print an alembic.ini for this installation (> alembic.ini, then alembic ...)",
)
def write_alembic_ini(
    ctx: typer.Context, url: IniUrlOption = None, as_json: JsonOption = False
) -> int:
    asked = session(ctx, url, as_json)
    text = alembic_ini(url=None if asked.url is None else ini_url(asked.url))
    asked.emit({"alembic_ini": text}, text.rstrip("\n"))
    return EXIT_OK
