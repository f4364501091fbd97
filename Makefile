# Two set-up commands: `make demo` and `make test`. Each one installs everything it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)
	@./.ci/node-tools

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
	$(BIN)/python -m bench.local_api
	$(BIN)/python -m bench.mcp
	$(BIN)/python -m bench.axons
	$(BIN)/python -m bench.resources
	$(BIN)/python -m bench.http

clean:
	rm -rf $(VENV)
