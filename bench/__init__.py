"""Benchmarks: run each as a module from the repository root, e.g. `.venv/bin/python -m bench.local_api`
(as modules, `bench/http.py` and `bench/mcp.py` cannot shadow the stdlib `http` or the `mcp` package)."""
