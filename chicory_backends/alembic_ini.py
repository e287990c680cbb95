"""The alembic.ini of the installed package, for ``chicory-backends alembic-ini > alembic.ini``.

A deploy directory then needs nothing else for ``alembic upgrade head`` (``downgrade``,
``check``, ``upgrade head --sql``): the database comes from the library's own settings,
or from the ``sqlalchemy.url`` that ``alembic-ini --url`` writes (never with a password).
"""

from __future__ import annotations

from pathlib import Path

from chicory_backends.sql.migrate import VERSION_TABLE, script_location

# Where pyproject.toml puts migrations/ inside the wheel.
PACKAGED_LOCATION = "chicory_backends:_migrations"
_PACKAGED_DIR = Path(__file__).resolve().parent / "_migrations"

_FROM_SETTINGS = """\
# The database comes from the same settings as the library: CHICORY_BACKEND_TYPE
# (postgres, mysql, sqlite, mssql; default sqlite) and its CHICORY_BACKEND_<TYPE>_*
# variables (or _URL), from the environment or a .env file in the working directory.
"""
_FROM_URL = """\
# The database is sqlalchemy.url below (`alembic-ini --url`); the library's settings
# (CHICORY_BACKEND_*, .env) are not read, the password included: the URL is used as is.
"""
_TEMPLATE = """\
# Alembic for chicory-backends, written by `chicory-backends alembic-ini`.
{database}\
# Another database: alembic -x url=postgresql+asyncpg://user:password@host/db upgrade head
# The revisions are recorded in their own table, {version_table}.
[alembic]
script_location = {script_location}
path_separator = os
{url_line}\

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


def ini_script_location() -> str:
    """The package-relative location where the migrations ship inside the package (a
    wheel install), which stays right if the environment is moved or rebuilt; else (a
    source checkout, installed editable) the absolute path of the repository's folder."""
    location = script_location()
    if location == _PACKAGED_DIR:
        return PACKAGED_LOCATION
    return str(location).replace("%", "%%")  # ConfigParser interpolation


def alembic_ini(url: str | None = None) -> str:
    """The ini; ``url`` (checked by the caller: one line, no password) as its
    ``sqlalchemy.url``, which migrations/env.py uses unless ``-x url=`` names another."""
    return _TEMPLATE.format(
        database=_FROM_SETTINGS if url is None else _FROM_URL,
        script_location=ini_script_location(),
        version_table=VERSION_TABLE,
        url_line="" if url is None else f"sqlalchemy.url = {url.replace('%', '%%')}\n",
    )
