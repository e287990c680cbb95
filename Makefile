# Two commands for a new machine: `make demo` (SQLite, no server needed) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_DB ?= chicory_demo.db

.PHONY: install demo test test-fast lint bench clean

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

lint: install
	$(BIN)/ruff check chicory_backends migrations tests examples
	$(BIN)/ruff format --check chicory_backends migrations tests examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm .pytest_cache .mypy_cache
