# Two set-up commands: `make demo` and `make test`. Each one installs everything it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench dist bundle clean

install: $(STAMP)
	@./.ci/node-tools
	@./.ci/wheelhouse
	@./.ci/framework-clients
	@$(BIN)/devbox-mcp image --build

$(STAMP): pyproject.toml Makefile
	@./.ci/ensure-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/devbox-mcp demo

test: install
	$(BIN)/ruff check mcp_server tests bench mcpb
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.local_api
	$(BIN)/python -m bench.spawn
	$(BIN)/python -m bench.devbox_system
	$(BIN)/python -m bench.mcp
	$(BIN)/python -m bench.speed
	$(BIN)/python -m bench.cold_start
	$(BIN)/python -m bench.axons
	$(BIN)/python -m bench.resources
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.shared_backend
	$(BIN)/python -m bench.sizes
	$(BIN)/python -m bench.egress
	$(BIN)/python -m bench.tunnel
	$(BIN)/python -m bench.snapshots
	$(BIN)/python -m bench.blueprints
	$(BIN)/python -m bench.pty
	$(BIN)/python -m bench.density
	$(BIN)/python -m bench.terminal

# Wheel and sdist in dist/, built with this venv's setuptools (no download; tests/commands/test_packaging.py checks them).
dist: install
	rm -rf dist/devbox_mcp-*
	$(BIN)/python -m build --no-isolation --outdir dist .

# dist/devbox-mcp-<version>.mcpb: the one-click install for Claude Desktop (mcpb/build_bundle.py).
bundle: install
	$(BIN)/python mcpb/build_bundle.py --outdir dist

clean:
	rm -rf $(VENV) dist build
