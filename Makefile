# Two commands for a new machine: `make demo` (SQLite, no server needed) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_DB ?= chicory_demo.db

.PHONY: install demo test test-quick lint bench bench-e2e bench-bursts bench-cleanup bench-adopt bench-sizes clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	CHICORY_BACKEND_TYPE=sqlite CHICORY_BACKEND_SQLITE_FILE_PATH=$(DEMO_DB) $(BIN)/alembic upgrade head
	CHICORY_BACKEND_TYPE=sqlite CHICORY_BACKEND_SQLITE_FILE_PATH=$(DEMO_DB) $(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest -q -ra

# Unit and contract tests on SQLite alone: no server, about 15 seconds.
test-quick: install
	$(BIN)/python -m pytest -q -ra tests/unit tests/contract -m "not (postgres or mysql or redis)"

lint: install
	$(BIN)/ruff check chicory_backends migrations tests examples bench
	$(BIN)/ruff format --check chicory_backends migrations tests examples bench
	$(BIN)/mypy

# The chicory-backends command of this checkout (the same as .venv/bin/chicory-backends,
# configured like the library: CHICORY_BACKEND_TYPE, CHICORY_BACKEND_<TYPE>_*, .env), e.g.
# make cli ARGS="migrate", make cli ARGS="tasks --state FAILURE --since 1h".
# make dashboard: the web dashboard on http://127.0.0.1:8000 (ARGS="--port 8001").
.PHONY: cli dashboard
ARGS ?=

cli: install
	$(BIN)/chicory-backends $(ARGS)

dashboard: install
	$(BIN)/chicory-backends dashboard $(ARGS)

BENCH_ARGS ?=

# Throughput and wire round trips against Chicory 0.1.0 and the raw drivers (servers on
# 127.0.0.1), then the store_result bursts and the real Chicory worker end to end (below);
# about 10 minutes on 2 cores. Writes bench/results/{latest,bursts,e2e}.{md,json}.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Only the real thing: `chicory worker` (Chicory's CLI, its defaults) on the Redis broker
# and RabbitMQ, storing into ours, Chicory's own backend, or none; N tasks per case
# (BENCH_ARGS="--tasks 2000"); about 2 minutes. Writes bench/results/e2e.{md,json}.
bench-e2e: install
	$(BIN)/python -m bench e2e $(BENCH_ARGS)

# store_result in bursts of 32 (and one at a time) on long-lived and fresh backend objects,
# with sessions per 1,000 calls; about 1.5 minutes. Writes bench/results/bursts.{md,json}.
bench-bursts: install
	$(BIN)/python -m bench bursts $(BENCH_ARGS)

# cleanup_old_results on 1,000,000 expired rows (100,000 on SQLite) while a result is
# stored every 10 ms; about 1 minute. Writes bench/results/cleanup.{md,json}.
bench-cleanup: install
	$(BIN)/python -m bench cleanup $(BENCH_ARGS)

# Adopting Chicory 0.1.0's own tables (1,000,000 rows; 100,000 on SQLite) with
# `chicory-backends migrate` while Chicory's own backend keeps writing and reading; about
# 3 to 5 minutes. Writes bench/results/adopt.{md,json}.
bench-adopt: install
	$(BIN)/python -m bench adopt $(BENCH_ARGS)

# Results of 100 B to 10 MB written and read, vs Chicory 0.1.0 and the raw driver: sizes.{md,json}.
bench-sizes: install
	$(BIN)/python -m bench sizes $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm .pytest_cache .mypy_cache
