"""Code mounts: a git repository cloned into a devbox's home while it is provisioned.

`{repo_owner, repo_name, git_ref?, token?, install_command?}` becomes a clone of
`<base>/<owner>/<name>.git` at `/home/user/<name>` (the devbox user's home), at `git_ref` (a
branch or tag) or the default branch; then `install_command` runs in the repository, in the
devbox, before the launch commands (`DevboxManager`). The base is GitHub's unless
`DEVBOX_GIT_BASE_URL` says otherwise (tests point it at a git server on loopback).

The clone runs on the host side, by the backend, before the devbox's processes start: the
devbox's network mode (isolated, none) does not decide whether the repository is reachable,
and the token never enters the devbox. The token goes to git as an HTTP header through
`GIT_CONFIG_*` environment variables of the one git process: not in its argv (visible to
every user in `ps`), not in the clone's `.git/config` (the remote URL carries no credential),
not in any record, log or view (`CodeMount.record` leaves it out). git runs without the host's
configuration, templates or hooks, without submodules, and without prompting.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_URL_ENV = "DEVBOX_GIT_BASE_URL"
DEFAULT_BASE_URL = "https://github.com"
CLONE_TIMEOUT_SECONDS = 600.0
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_REF = re.compile(r"^[A-Za-z0-9_./@+-]{1,250}$")


class CodeMountError(Exception):
    """A code mount that cannot be cloned; the message says why (never the token)."""


@dataclass(frozen=True)
class CodeMount:
    repo_owner: str
    repo_name: str
    git_ref: str | None = None
    install_command: str | None = None
    token: str | None = None  # for the clone only: never recorded, logged or shown

    def __repr__(self) -> str:  # a secret must not reach a log through a repr
        return f"CodeMount({self.repo_owner}/{self.repo_name}@{self.git_ref or 'default'})"

    @property
    def label(self) -> str:
        return f"{self.repo_owner}/{self.repo_name}" + (f"@{self.git_ref}" if self.git_ref else "")

    def record(self) -> dict[str, Any]:
        """What a devbox or blueprint keeps of it: everything but the token."""
        return {
            "repo_owner": self.repo_owner, "repo_name": self.repo_name,
            "git_ref": self.git_ref, "install_command": self.install_command,
        }  # fmt: skip


def parse(items: list[Any] | None, where: str = "code_mounts") -> list[CodeMount]:
    """The code mounts of a request body; ValueError (naming the entry and field) for a bad one."""
    out: list[CodeMount] = []
    names: set[str] = set()
    for index, item in enumerate(items or []):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at} must be an object {{repo_owner, repo_name, git_ref?, token?, install_command?}}")
        extra = set(item) - {"repo_owner", "repo_name", "git_ref", "token", "install_command"}
        if extra:
            raise ValueError(f"{at}: unknown field {sorted(extra)[0]}; a code mount has repo_owner, repo_name, "
                             "git_ref, token and install_command")  # fmt: skip
        for key in ("repo_owner", "repo_name"):
            value = item.get(key)
            if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
                raise ValueError(f"{at}.{key} must be a repository {key[5:]} (letters, digits, '.', '_', '-')")
        for key in ("git_ref", "token", "install_command"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise ValueError(f"{at}.{key} must be a string")
        ref = item.get("git_ref") or None
        if ref is not None and (not _REF.match(ref) or ref.startswith("-") or ".." in ref):
            raise ValueError(f"{at}.git_ref must be a branch or tag name")
        token = item.get("token") or None
        if token is not None and any(ord(c) < 0x21 or ord(c) == 0x7F for c in token):
            raise ValueError(f"{at}.token must not hold spaces or control characters")
        install = item.get("install_command") or None
        if install is not None and "\0" in install:
            raise ValueError(f"{at}.install_command contains a NUL character")
        if item["repo_name"] in names:
            raise ValueError(f"{at}: two code mounts of {item['repo_name']!r} would be cloned to the same directory")
        names.add(item["repo_name"])
        out.append(CodeMount(item["repo_owner"], item["repo_name"], ref, install, token))
    return out


def base_url(environ: dict[str, str] | None = None) -> str:
    return ((environ if environ is not None else os.environ).get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def repo_url(mount: CodeMount, base: str | None = None) -> str:
    return f"{base or base_url()}/{mount.repo_owner}/{mount.repo_name}.git"


def _git_env(token: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ASKPASS": "/bin/false",
        "LC_ALL": "C",
    }
    config = [("protocol.file.allow", "never"), ("credential.helper", "")]
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


async def clone(mount: CodeMount, dest: Path) -> str:
    """Clone `mount` into `dest` (which must not exist); a one-line summary, or CodeMountError."""
    if await asyncio.to_thread(os.path.lexists, dest):
        raise CodeMountError(f"{dest.name} already exists in the home (a file mount?); cannot clone {mount.label} there")
    url = repo_url(mount)
    args = ["git", "clone", "--quiet", "--template=", "--no-recurse-submodules"]
    if mount.git_ref:
        args += ["--branch", mount.git_ref]
    args += ["--", url, str(dest)]
    proc = await asyncio.create_subprocess_exec(
        *args, env=_git_env(mount.token), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd="/",
    )  # fmt: skip
    try:
        async with asyncio.timeout(CLONE_TIMEOUT_SECONDS):
            out, _ = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise CodeMountError(f"cloning {url} took more than {CLONE_TIMEOUT_SECONDS:g} s") from None
    text = out.decode("utf-8", errors="replace").strip()
    if mount.token:
        text = text.replace(mount.token, "***")
    if proc.returncode != 0:
        raise CodeMountError(f"git clone {url} failed (exit {proc.returncode}): {text[-2000:] or 'no output'}")
    return f"cloned {url}" + (f" at {mount.git_ref}" if mount.git_ref else "") + f" into ~/{mount.repo_name}"
