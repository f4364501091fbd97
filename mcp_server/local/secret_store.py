"""The secret store: named values that devboxes receive as environment variables.

A value is write-only. Create and update take it; no endpoint returns it, and no log line,
error message or repr holds it (`Secret.value` is left out of the repr, and messages name
secrets, never their values). The store is one JSON file, `<data dir>/secrets/secrets.json`,
mode 0600 in a 0700 directory, replaced atomically on every change: a crash or a full disk
leaves the old file or the new one. The backend and `devbox-mcp secrets` share it safely. Values are not encrypted at rest: the file's mode is what
keeps them from other host users (and the backend's data directory is private to it anyway).

A devbox keeps only names (`{ENV_NAME: secret_name}`); `environment` looks the values up each
time a command starts, so an update reaches the next command and a deleted secret's variable is
no longer set, as the API says ("remove the Secret from all Devboxes").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clock import now_ms
from .errors import ApiError, disk_full, is_disk_full, not_found
from .ids import new_id

log = logging.getLogger("devbox_mcp.local")

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME_LENGTH = 256
# One environment string may be at most 128 KiB (MAX_ARG_STRLEN) with its name; keep well below.
MAX_VALUE_BYTES = 64 * 1024
STORE_FILE = "secrets.json"


@dataclass
class Secret:
    id: str
    name: str
    create_time_ms: int
    update_time_ms: int
    value: str = field(repr=False)

    def view(self) -> dict[str, Any]:
        """The SecretView of the API: everything but the value."""
        return {
            "id": self.id,
            "name": self.name,
            "create_time_ms": self.create_time_ms,
            "update_time_ms": self.update_time_ms,
        }


def check_name(name: str, what: str = "name") -> str:
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ApiError(
            400,
            f"{what} {name[:MAX_NAME_LENGTH]!r} is not a valid secret name: use letters, digits and _ "
            f"(not starting with a digit), at most {MAX_NAME_LENGTH} characters, e.g. DATABASE_PASSWORD",
        )
    return name


def check_value(value: str) -> str:
    """Refuse what no environment variable can hold; the message never quotes the value."""
    if "\0" in value:
        raise ApiError(400, "value contains a NUL character, which an environment variable cannot hold")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise ApiError(400, f"value is {size} bytes; a secret holds at most {MAX_VALUE_BYTES} bytes")
    return value


class SecretStore:
    """Every secret of one data directory: `secrets.json` is the truth, this a cache of it.

    Each call looks at the file first (one `stat`) and re-reads it when it was replaced, and each
    change is a read-modify-write under an exclusive `flock`: a second process on the same data
    directory (`devbox-mcp secrets` while a backend runs) is seen at once and never overwritten.
    """

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "secrets"
        self.path = self.directory / STORE_FILE
        self._by_name: dict[str, Secret] = {}
        self._stamp: tuple[int, int, int] | None = None  # (inode, mtime, size) of the file last read

    def __repr__(self) -> str:
        return f"SecretStore({self.path}, {len(self._by_name)} secrets)"

    # -- disk ----------------------------------------------------------------------------------

    def load(self) -> None:
        """Make the directory private and read the store; an unreadable one is moved aside, not lost."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with self._locked():
            if self.path.exists():
                os.chmod(self.path, 0o600)
            try:
                self._refresh()
            except (ValueError, TypeError, KeyError) as exc:
                aside = self.path.with_name(f"{STORE_FILE}.unreadable-{now_ms()}")
                os.replace(self.path, aside)
                log.warning("the secret store was unreadable (%s); moved it to %s", type(exc).__name__, aside)
                self._by_name, self._stamp = {}, None

    def _refresh(self) -> None:
        """Re-read the file if it was replaced since it was last read (parse errors propagate)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._by_name, self._stamp = {}, None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        records = json.loads(self.path.read_bytes())
        self._by_name = {r["name"]: Secret(**r) for r in records}
        self._stamp = stamp

    def _current(self) -> dict[str, Secret]:
        try:
            self._refresh()
        except (ValueError, TypeError, KeyError) as exc:  # someone wrote junk: keep what was last read
            log.warning("the secret store %s is unreadable (%s); using its last good copy", self.path, type(exc).__name__)
            st = os.stat(self.path)
            self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        return self._by_name

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _save(self, by_name: dict[str, Secret], action: str) -> None:
        """Write every secret to a new 0600 file, then rename it over the store."""
        records = [
            {"id": s.id, "name": s.name, "create_time_ms": s.create_time_ms,
             "update_time_ms": s.update_time_ms, "value": s.value}
            for s in by_name.values()
        ]  # fmt: skip
        data = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        tmp = self.directory / f".{STORE_FILE}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if is_disk_full(exc):
                raise disk_full(action) from None
            raise

    def _change(self, action: str, apply: Callable[[dict[str, Secret]], Secret]) -> Secret:
        """Under the lock: read the latest store, apply the change to a copy, save it, then adopt it."""
        with self._locked():
            by_name = dict(self._current())
            result = apply(by_name)
            self._save(by_name, action)
            st = os.stat(self.path)
            self._by_name, self._stamp = by_name, (st.st_ino, st.st_mtime_ns, st.st_size)
        return result

    # -- operations ------------------------------------------------------------------------------

    def all(self) -> list[Secret]:
        """Newest first, as the API lists them."""
        return sorted(self._current().values(), key=lambda s: (s.create_time_ms, s.id), reverse=True)

    def get(self, name: str) -> Secret:
        secret = self._current().get(name)
        if secret is None:
            raise not_found("secret", name, "list secrets (GET /v1/secrets) to see which names exist")
        return secret

    def by_id(self, secret_id: str) -> Secret:
        for secret in self._current().values():
            if secret.id == secret_id:
                return secret
        raise not_found("secret", secret_id, "list secrets (GET /v1/secrets) to see which ids exist")

    def create(self, name: str, value: str) -> Secret:
        check_name(name)
        check_value(value)

        def apply(by_name: dict[str, Secret]) -> Secret:
            if name in by_name:
                raise ApiError(
                    400,
                    f"a secret named {name!r} already exists; update it (POST /v1/secrets/{name}) or pick another name",
                )
            at = now_ms()
            by_name[name] = Secret(id=new_id("sec"), name=name, create_time_ms=at, update_time_ms=at, value=value)
            return by_name[name]

        return self._change(f"create secret {name}", apply)

    def update(self, secret: Secret, value: str) -> Secret:
        check_value(value)

        def apply(by_name: dict[str, Secret]) -> Secret:
            old = self._same(by_name, secret)
            by_name[old.name] = Secret(old.id, old.name, old.create_time_ms, max(now_ms(), old.update_time_ms), value)
            return by_name[old.name]

        return self._change(f"update secret {secret.name}", apply)

    def delete(self, secret: Secret) -> Secret:
        return self._change(f"delete secret {secret.name}", lambda by_name: by_name.pop(self._same(by_name, secret).name))

    @staticmethod
    def _same(by_name: dict[str, Secret], secret: Secret) -> Secret:
        """The secret as the store holds it now (another process may have deleted it meanwhile)."""
        current = by_name.get(secret.name)
        if current is None or current.id != secret.id:
            raise not_found("secret", secret.name, "list secrets (GET /v1/secrets) to see which names exist")
        return current

    # -- devboxes --------------------------------------------------------------------------------

    def missing(self, names: Mapping[str, str]) -> list[str]:
        """The secret names among the values of an `{ENV_NAME: secret_name}` map that do not exist."""
        current = self._current()
        return [name for name in names.values() if name not in current]

    def environment(self, names: Mapping[str, str]) -> dict[str, str]:
        """`{ENV_NAME: value}` for an `{ENV_NAME: secret_name}` map; deleted secrets are left out."""
        if not names:
            return {}
        current = self._current()
        return {env: current[name].value for env, name in names.items() if name in current}
