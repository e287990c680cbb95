"""The one place a backend kind becomes a class and a configuration."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pydantic import SecretStr, ValidationError

from chicory_backends.config import (
    SQL_CONFIGS,
    AnyBackendConfig,
    RedisBackendConfig,
    SQLBackendConfig,
)
from chicory_backends.errors import ConfigurationError
from chicory_backends.types import BackendType

if TYPE_CHECKING:
    from chicory_backends.base import Backend

DEFAULT_KIND = BackendType.SQLITE

_URL_SCHEMES: dict[str, BackendType] = {
    "postgresql": BackendType.POSTGRES,
    "postgres": BackendType.POSTGRES,
    "mysql": BackendType.MYSQL,
    "mariadb": BackendType.MYSQL,
    "sqlite": BackendType.SQLITE,
    "mssql": BackendType.MSSQL,
    "redis": BackendType.REDIS,
    "rediss": BackendType.REDIS,
    "unix": BackendType.REDIS,
}


def resolve_kind(kind: BackendType | str | None = None) -> BackendType:
    """The argument, else CHICORY_BACKEND_TYPE, else SQLite (the embedded default)."""
    value = kind if kind is not None else os.environ.get("CHICORY_BACKEND_TYPE") or DEFAULT_KIND
    try:
        return BackendType(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(member.value for member in BackendType)
        raise ConfigurationError(
            f"unknown backend type {value!r}: choose one of {choices}"
        ) from None


def config_for(kind: BackendType | str | None = None) -> AnyBackendConfig:
    """The configuration of a kind, read from its CHICORY_BACKEND_<KIND>_* variables."""
    resolved = resolve_kind(kind)
    config_class = RedisBackendConfig if resolved is BackendType.REDIS else SQL_CONFIGS[resolved]
    try:
        return config_class()
    except ValidationError as error:
        raise ConfigurationError(_describe(error, resolved)) from None


def kind_from_url(url: str) -> BackendType:
    """The backend kind a URL's scheme names (``postgresql+asyncpg://`` -> postgres)."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    kind = _URL_SCHEMES.get(scheme)
    if kind is None:
        known = ", ".join(sorted(_URL_SCHEMES))
        raise ConfigurationError(f"unknown scheme {scheme!r}: use one of {known}")
    return kind


def sql_config_from_url(url: str) -> SQLBackendConfig:
    kind = kind_from_url(url)
    if kind is BackendType.REDIS:
        raise ConfigurationError("not a SQL database URL (a redis one)")
    return SQL_CONFIGS[kind](url=SecretStr(url))


def create_backend(
    kind: BackendType | str | None = None, config: AnyBackendConfig | None = None
) -> Backend:
    """A backend object, not yet connected."""
    resolved = resolve_kind(kind)
    if config is None:
        config = config_for(resolved)
    if resolved is BackendType.REDIS:
        if not isinstance(config, RedisBackendConfig):
            raise ConfigurationError("a redis backend needs a RedisBackendConfig")
        from chicory_backends.redis import RedisBackend

        return RedisBackend(config)
    expected = SQL_CONFIGS[resolved]
    if not isinstance(config, expected):
        raise ConfigurationError(
            f"a {resolved.value} backend needs a {expected.__name__}, not a {type(config).__name__}"
        )
    from chicory_backends.sql.backend import DatabaseBackend

    return DatabaseBackend(config)


def _describe(error: ValidationError, kind: BackendType) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        variable = f"CHICORY_BACKEND_{kind.value.upper()}_{field.upper()}"
        problems.append(f"{variable}: {item['msg']}")
    return "invalid backend configuration: " + "; ".join(problems)
