"""`devbox-mcp secrets set|list|delete`: the embedded backend's secrets, from the command line.

The backend `devbox-mcp` starts on first use has a key generated per start, so a user has no
stable way to call its secrets API: this command edits the store in the data directory instead,
whether a backend runs or not, and a running one sees the change at once (see
`local/secret_store.py`). A value is read from standard input (a prompt without echo on a
terminal), never from the command line, where `ps` would show it; it is never printed.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from ..local.errors import ApiError
from ..local.secret_store import SecretStore


def _read_value() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("value (not echoed): ")
    value = sys.stdin.read()
    return value[:-1] if value.endswith("\n") else value  # `echo ... |` adds one


def main(action: str, name: str | None, data_dir: Path) -> int:
    if os.environ.get("RUNLOOP_API_KEY"):
        print(
            "devbox-mcp: note: RUNLOOP_API_KEY is set, so devbox-mcp uses Runloop's cloud, whose secrets are "
            f"managed there; this command manages the embedded backend's (in {data_dir})",
            file=sys.stderr,
        )
    store = SecretStore(data_dir)
    try:
        store.load()
        if action == "list":
            for secret in store.all():
                print(secret.name)
            return 0
        assert name is not None
        if action == "delete":
            store.delete(store.get(name))
            print(f"deleted secret {name}", file=sys.stderr)
            return 0
        value = _read_value()
        try:
            existing = store.get(name)
        except ApiError:
            store.create(name, value)
            print(f"created secret {name}", file=sys.stderr)
        else:
            store.update(existing, value)
            print(f"updated secret {name}", file=sys.stderr)
        return 0
    except ApiError as exc:
        print(f"devbox-mcp: {exc.message}", file=sys.stderr)
        return 1
