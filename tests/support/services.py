"""Where the test servers are, and what a test does when one is not there.

A server that cannot be reached skips the tests that need it, with the reason, unless
CHICORY_TEST_REQUIRE_SERVICES=1 (CI), where it fails them instead.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "CHICORY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MYSQL_ADMIN_URL = os.environ.get(
    "CHICORY_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"
)
REDIS_HOST = os.environ.get("CHICORY_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CHICORY_TEST_REDIS_PORT", "6379"))

# Each run works in databases of its own, created fresh, never in the shared `test`.
TEST_DATABASE = "chicory_test"


def services_required() -> bool:
    return os.environ.get("CHICORY_TEST_REQUIRE_SERVICES") == "1"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def missing(message: str) -> NoReturn:
    """Skip with the reason, or fail with it under CHICORY_TEST_REQUIRE_SERVICES=1."""
    if services_required():
        pytest.fail(f"{message}, and CHICORY_TEST_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def require(name: str, host: str, port: int) -> None:
    """Skip (or, under CHICORY_TEST_REQUIRE_SERVICES=1, fail) when host:port is closed."""
    if not port_open(host, port):
        missing(f"{name} is not reachable at {host}:{port}; start it (see README)")


ODBC_PACKAGES = "Debian/Ubuntu: apt-get install unixodbc tdsodbc"


def require_odbc(driver: str | None = None) -> None:
    """The SQL Server client stack: pyodbc must load unixODBC's libodbc (a system package,
    not a pip one), and ``driver``, if named, must be registered with unixODBC."""
    try:
        import pyodbc
    except ImportError as error:
        missing(f"pyodbc cannot be imported ({error}): the SQL Server tests need unixODBC "
                f"and FreeTDS ({ODBC_PACKAGES})")  # fmt: skip
    if driver is not None and driver not in pyodbc.drivers():
        missing(f"no ODBC driver {driver!r} is registered with unixODBC ({ODBC_PACKAGES})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
