"""The Typer application, the options every command shares and the backend it works on.

``--url`` and ``--json`` are accepted before the command name (the application's) and
after it (the command's own, which win). The backend is the one the library would use:
``CHICORY_BACKEND_TYPE`` and its ``CHICORY_BACKEND_<TYPE>_*`` variables (environment,
then ``.env``), or ``--url``.

Every failure is one line on stderr, never with the password in it: exit 2 for a
configuration or usage problem (a missing driver included), 1 for anything at run time
(unreachable server, schema not migrated, database error). ``main`` returns the code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar, cast

import typer
from pydantic import SecretStr
from typer.core import TyperGroup

from chicory_backends.cli.render import emit
from chicory_backends.config import AnyBackendConfig, SQLBackendConfig
from chicory_backends.errors import ChicoryBackendError, ConfigurationError
from chicory_backends.factory import config_for, kind_from_url, require_driver, resolve_kind
from chicory_backends.types import BackendType

PROG = "chicory-backends"
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

T = TypeVar("T")

# The order of `chicory-backends --help`, whichever module registers a command first.
COMMANDS = (
    "migrate", "alembic-ini", "cleanup", "health", "tasks", "task", "stats", "workers",
    "dashboard",
)  # fmt: skip


class _Commands(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(super().list_commands(ctx), key=COMMANDS.index)


app = typer.Typer(
    name=PROG,
    cls=_Commands,
    help="Operate a chicory-backends result store. The backend comes from "
    "CHICORY_BACKEND_TYPE (postgres, mysql, sqlite, mssql, redis; default sqlite) and its "
    "CHICORY_BACKEND_<TYPE>_* variables (environment, then .env), or --url.",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # -h as before (argparse)
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)

# -- the shared options ----------------------------------------------------------------

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="database or Redis URL; overrides CHICORY_BACKEND_TYPE and its _URL",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


@dataclass(frozen=True)
class Target:
    """The backend a command works on: its kind and its (secret-holding) configuration."""

    kind: BackendType
    config: AnyBackendConfig

    @property
    def label(self) -> str:
        """Kind and address for messages; never the credentials."""
        return f"{self.kind.value} at {self.config.address()}"

    def sql_config(self, command_name: str) -> SQLBackendConfig:
        if not isinstance(self.config, SQLBackendConfig):
            raise ConfigurationError(
                f"'{command_name}' works on SQL backends only, and this backend is "
                f"{self.kind.value}"
            )
        return self.config


def resolve_target(url: str | None) -> Target:
    """The library's configuration; ``--url`` replaces only the URL of the kind it names."""
    if url is None:
        kind = resolve_kind()
        return Target(kind, config_for(kind))
    try:
        kind = kind_from_url(url)
    except ConfigurationError as error:
        raise ConfigurationError(f"--url: {error}") from None
    config = config_for(kind).model_copy(update={"url": SecretStr(url)})
    return Target(kind, config)


@dataclass(frozen=True)
class Session:
    """What a command was asked with: ``--url`` and ``--json``, wherever they were given."""

    url: str | None
    json: bool

    def target(self, *, driver: bool = True) -> Target:
        """The backend; its driver imported now unless ``driver=False`` (offline SQL), so
        that a missing one is named with the extra that installs it."""
        target = resolve_target(self.url)
        if driver:
            require_driver(target.config)
        return target

    def emit(self, payload: dict[str, Any], text: str) -> None:
        emit(payload, text, as_json=self.json)


def session(ctx: typer.Context, url: str | None, as_json: bool) -> Session:
    """The command's own ``--url``/``--json``, else those given before the command name."""
    shared = ctx.obj if isinstance(ctx.obj, Session) else Session(None, False)
    return Session(url if url is not None else shared.url, as_json or shared.json)


@app.callback()
def shared_options(ctx: typer.Context, url: UrlOption = None, as_json: JsonOption = False) -> None:
    ctx.obj = Session(url, as_json)


# -- commands: registration and the errors every command turns into exit codes ---------

Command = TypeVar("Command", bound=Callable[..., int])


def command(name: str, *, help: str) -> Callable[[Command], Command]:
    """Register a command; its errors become one line on stderr and an exit code."""

    def register(function: Command) -> Command:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return function(*args, **kwargs)
            except ConfigurationError as error:
                fail(str(error))
                return EXIT_CONFIG
            except ChicoryBackendError as error:
                fail(str(error))
                return EXIT_RUNTIME
            except ImportError as error:
                fail(f"a module chicory-backends needs cannot be imported: {error}")
                return EXIT_CONFIG
            except KeyboardInterrupt:
                fail("interrupted")
                return EXIT_INTERRUPTED

        app.command(name, help=help)(run)
        return function

    return register


# -- usage errors ------------------------------------------------------------------------


class BadValue(typer.BadParameter):
    """A value an option or argument cannot take, said as ``argument --since: why``."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(problem)
        self.line = f"argument {name}: {problem}"


# Typer names no class for every usage error (an unknown or missing option, a missing
# command or argument), only BadParameter, which derives from it: Click's UsageError, and
# Typer's own copy of it since Typer 0.26 vendors Click.
UsageError: type[Exception] = typer.BadParameter.__bases__[0]
if UsageError.__name__ != "UsageError":  # a Typer this module was not written for
    raise ImportError(f"typer.BadParameter derives from {UsageError!r}, not UsageError")


def checked(name: str, check: Callable[[str], T]) -> Callable[[str], T]:
    """A Typer parser from one of the library's checks: its ValueError is a usage error
    of ``name`` (an option, or an argument's metavar)."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except ValueError as error:
            raise BadValue(name, str(error)) from None

    return parse


class _Described(Protocol):
    def format_message(self) -> str: ...


def usage_line(error: Exception) -> str:
    """A usage error as one line: ``argument --since: why``, ``missing option '--x'``."""
    if isinstance(error, BadValue):
        return error.line
    text = " ".join(cast(_Described, error).format_message().split())
    return text[:1].lower() + text[1:].removesuffix(".")


def fail(message: str) -> None:
    """One line on stderr, after the command's name."""
    print(f"{PROG}: {message}", file=sys.stderr)


def whole_number(name: str, text: str) -> int:
    """A value of ``name`` (``--limit``, ``--batch-size``): a whole number from 1 up."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise BadValue(name, f"{text!r} is not a whole number of at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` by default) and return its exit code."""
    try:
        code = app(args=argv, prog_name=PROG, standalone_mode=False)
    except UsageError as error:
        fail(f"error: {usage_line(error)} (see --help)")
        return EXIT_CONFIG
    except typer.Abort:
        fail("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else int(code)
