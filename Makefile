# The README's two commands: `make run` and `make test`. Each creates .venv and installs
# what it needs on first use (and again when a requirements file changes).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi run --host 127.0.0.1 --port $(PORT)

test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck -s sh docker/entrypoint.sh

# Load benchmark (bench/README.md): seeds 10k users, runs gunicorn as production does
# against PostgreSQL + Redis and SQLite, prints the table. ARGS="--backend postgresql --quick"
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(ARGS)
