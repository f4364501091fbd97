# Two set-up commands: `make demo` and `make test`. Each one installs everything it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@./.ci/ensure-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/devbox-mcp demo

test: install
	$(BIN)/ruff check mcp_server tests bench
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/local_api.py
	$(BIN)/python bench/mcp.py

clean:
	rm -rf $(VENV)
