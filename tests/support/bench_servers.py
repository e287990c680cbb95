"""The local servers as the bench parts take them, for their smoke runs (tests/bench).

``bench`` is the repository's own folder, importable because the suite is a package
rooted beside it (no sys.path edit)."""

from __future__ import annotations

from sqlalchemy import make_url

from bench.env import Servers
from tests.support.services import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, REDIS_HOST, REDIS_PORT


def bench_servers(redis_db: int = 15, redis_chicory_db: int = 14) -> Servers:
    """PostgreSQL, MariaDB and Redis at the test suite's addresses; Redis dbs of the bench's."""
    return Servers(
        postgres_url=make_url(POSTGRES_ADMIN_URL),
        mysql_url=make_url(MYSQL_ADMIN_URL),
        redis_host=REDIS_HOST,
        redis_port=REDIS_PORT,
        redis_db=redis_db,
        redis_chicory_db=redis_chicory_db,
    )
