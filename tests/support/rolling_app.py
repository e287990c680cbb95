"""The Chicory app of the rolling switch (test_rolling_switch.py), as a user has it, twice.

``chicory worker rolling_app:old`` is the app before the switch: Chicory's own result
backend, ``Chicory(broker=..., backend=BackendType.POSTGRES)`` configured by the usual
``CHICORY_BACKEND_<KIND>_*`` variables. ``chicory worker rolling_app:new`` is the same app
after it: ``backend=chicory_backend(kind)``, ours, reading the same variables (and
``CHICORY_BACKEND_<KIND>_WRITE_CHICORY_FORMAT``). The test uses both as clients too.

From the environment the test sets:

- ``ROLLING_BACKEND``: ``postgres``, ``mysql``, ``sqlite`` or ``redis``;
- ``ROLLING_NAMESPACE``: a prefix for the broker's keys (Redis broker, see e2e_app.py), so
  concurrent runs never share a queue;
- ``ROLLING_RUNS_DIR``: each worker process appends the id of every task it starts to
  ``<pid>.log`` there, so the test counts who ran what.

No ``from __future__ import annotations``: Chicory builds its argument models from the
annotations at run time.
"""

import asyncio
import os
from pathlib import Path
from typing import Any

from chicory import BackendType, Chicory, ChicoryConfig, TaskContext

from chicory_backends.chicory import chicory_backend
from tests.support.e2e_app import NamespacedRedisBroker

# Every JSON type, and the values a careless reader changes the type of: strings that
# look like JSON above all.
VALUES: list[Any] = [
    "42", "true", "false", "null", "[1, 2]", '{"x": 1}', "", "ünïcode ✓ 日本 🚀",
    None, True, False, 0, -7, 2**53 + 1, 10**20, 1.0, -1.5, 3.25e-8,
    [], {}, [1, "2", None, True, 1.5], {"a": [1, {"b": None}], "c": "d", "ü": "✓"},
    {"nested": {"list": [[], {}], "s": "[1, 2]"}},
]  # fmt: skip


def failure_message(index: int) -> str:
    return f"rolling failure {index}: ünïcode ✓"


def _ran(task_id: str) -> None:
    runs = os.environ.get("ROLLING_RUNS_DIR")
    if runs:
        with (Path(runs) / f"{os.getpid()}.log").open("a", encoding="utf-8") as handle:
            handle.write(task_id + "\n")


def make_app(side: str) -> Chicory:
    """``side``: ``old`` (Chicory's own backend) or ``new`` (ours)."""
    config = ChicoryConfig()
    broker = NamespacedRedisBroker(os.environ["ROLLING_NAMESPACE"], config)
    kind = os.environ["ROLLING_BACKEND"]
    backend = BackendType(kind) if side == "old" else chicory_backend(kind)
    app = Chicory(broker=broker, backend=backend, config=config)

    @app.task(name="rolling.value")
    async def value(ctx: TaskContext, index: int, delay: float) -> Any:
        _ran(ctx.task_id)
        await asyncio.sleep(delay)
        return VALUES[index]

    @app.task(name="rolling.fail")
    async def fail(ctx: TaskContext, index: int, delay: float) -> None:
        _ran(ctx.task_id)
        await asyncio.sleep(delay)
        raise ValueError(failure_message(index))

    return app


def __getattr__(name: str) -> Chicory:
    # Built on first access, after the test has set the environment.
    if name in ("old", "new"):
        return make_app(name)
    raise AttributeError(name)
