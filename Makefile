# cryo's entry points. `make setup` prepares the machine (root, Debian 12) and the venv;
# `make test` is what CI runs. VENV selects another virtual environment.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
export VENV

.PHONY: setup test lint demo bench

setup:
	bash scripts/setup-system.sh
	bash scripts/setup-python.sh

test: setup
	$(PYTHON) -m pytest
	$(MAKE) lint

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

demo: setup
	$(PYTHON) -m daemon demo

bench: setup
	$(PYTHON) -m bench
