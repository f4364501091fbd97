"""A blueprint's dockerfile, as far as this machine can honour it: parsed into build steps.

A blueprint builds in a devbox on the devbox image (or on another blueprint), not in a container
engine, so a dockerfile may hold only what that can mean exactly:

- `FROM` the default image (`DEFAULT_IMAGES`) or another blueprint (`FROM <blueprint id or name>`),
  once, first (after `ARG`s); no stages, no `--platform`.
- `RUN` (shell or JSON form) runs in the build devbox as the current `USER` (root unless set), in
  the current `WORKDIR`, with every `ENV` and `ARG` in its environment.
- `ENV` and `ARG` (`build_args` override `ARG` defaults); `$VAR`/`${VAR}`/`${VAR:-x}`/`${VAR:+x}`
  are substituted in `ENV`, `ARG`, `WORKDIR`, `USER`, `COPY` and `ADD`, as Docker does.
- `WORKDIR`, `USER` (a name or uid that exists in the build by then; a `:group` is refused).
- `COPY`/`ADD <source> <dest>` where the source is a path of the blueprint's `file_mounts` (the
  only build context here); no `--from`, `--chown` or URLs.

Anything else (another image, `CMD`, `EXPOSE`, heredocs...) fails the build: `DockerfileError`
names the line, the instruction and why. `ENV`s become the environment of the blueprint's
devboxes, as a container's ENV would.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

# What `FROM` may name for the devbox image every devbox starts from.
DEFAULT_IMAGES = ("devbox-mcp", "runloop:runloop/starter-x86_64", "runloop:runloop/starter-arm64")
DEFAULT_FROM = "devbox-mcp"
_REFUSED: dict[str, str] = {
    "CMD": "a devbox has no container command; set `entrypoint` when creating the devbox",
    "ENTRYPOINT": "set `entrypoint` when creating the devbox instead",
    "EXPOSE": "devboxes do not publish ports; with network_mode 'host' a server listens on the host's network",
    "VOLUME": "devboxes have no volumes; their whole filesystem is already writable",
    "HEALTHCHECK": "devboxes have no health checks",
    "STOPSIGNAL": "devboxes have no container stop signal",
    "SHELL": "RUN always uses /bin/bash -c here",
    "ONBUILD": "triggers for later builds are not supported",
    "LABEL": "use the blueprint's metadata instead",
    "MAINTAINER": "use the blueprint's metadata instead",
}


class DockerfileError(Exception):
    """The dockerfile asks for what this machine cannot build; the message names the line and why."""


@dataclass(frozen=True)
class Step:
    """One build step. kind: run | copy | workdir | user (ENV/ARG only change what later steps see)."""

    kind: str
    line: int
    text: str  # the instruction as written (for the build log)
    command: str = ""  # run: the shell command
    env: tuple[tuple[str, str], ...] = ()  # run: ENV and ARG values in force
    workdir: str = "/"  # run, copy: the directory it runs in / relative destinations start from
    user: str = "root"  # run, copy: who runs it / owns what it copies
    source: str = ""  # copy: a file_mounts path
    dest: str = ""  # copy: where it goes


@dataclass
class Plan:
    base: str | None = None  # None: the default image; else the name or id `FROM` gave
    from_line: int = 0
    steps: list[Step] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the ENVs in force at the end (the devboxes' defaults)
    workdir: str = "/"
    user: str = "root"


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) pairs: comments and blank lines dropped, `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].rstrip())
            continue
        pending.append(stripped)
        out.append((start, " ".join(part for part in pending if part).strip()))
        pending = []
    if pending:
        out.append((start, " ".join(pending).strip()))
    return out


_VAR = re.compile(r"\\\$|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def substitute(text: str, values: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alternative}; `\\$` is a `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group(1) or match.group(4)
        value = values.get(name, "")
        if match.group(2) == ":-":
            return value or match.group(3)
        if match.group(2) == ":+":
            return match.group(3) if value else ""
        return value

    return _VAR.sub(one, text)


def _pairs(args: str, what: str) -> list[tuple[str, str]]:
    """`ENV`/`ARG` arguments: `k=v k2="v 2"`, or the legacy `ENV key value with spaces`."""
    try:
        words = shlex.split(args, posix=True)
    except ValueError as exc:
        raise DockerfileError(f"{what}: {exc}") from None
    if not words:
        raise DockerfileError(f"{what} needs a name")
    if "=" not in words[0]:
        if what == "ENV":
            if len(words) < 2:
                raise DockerfileError("ENV needs a value: ENV NAME=value")
            return [(words[0], args.split(None, 1)[1].strip())]
        if len(words) != 1:
            raise DockerfileError(f"ARG takes one name (ARG NAME or ARG NAME=default); got {args!r}")
        return [(words[0], "\0")]  # declared without a default
    out = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"{what}: {word!r} is not NAME=value")
        out.append((name, value))
    return out


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise DockerfileError(f"{what}: {name!r} is not a valid variable name (letters, digits, _)")


def _flags(args: str, instruction: str) -> str:
    if args.startswith("--"):
        flag = args.split()[0]
        raise DockerfileError(f"{instruction} {flag}: flags are not supported here")
    return args


def _json_form(args: str) -> list[str] | None:
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def _join(base: str, path: str) -> str:
    if path.startswith("/"):
        return path
    return base.rstrip("/") + "/" + path


def parse(text: str, build_args: dict[str, str] | None = None, file_mounts: dict[str, str] | None = None) -> Plan:
    """The build steps `text` amounts to; DockerfileError (naming the line) for what cannot be built here."""
    build_args = dict(build_args or {})
    mounts = dict(file_mounts or {})
    plan = Plan()
    args: dict[str, str] = {}  # ARG values in force
    global_args: dict[str, str] = {}  # those declared before FROM
    seen_from = False
    used_args: set[str] = set()
    for number, line in logical_lines(text):
        instruction, _, rest = line.partition(" ")
        keyword = instruction.upper()
        rest = rest.strip()
        where = f"line {number}: {instruction}"
        try:
            if "<<" in rest and keyword in ("RUN", "COPY", "ADD"):
                raise DockerfileError("heredocs are not supported; write the command on the line")
            if keyword == "FROM":
                if seen_from:
                    raise DockerfileError("a second FROM: multi-stage builds are not supported here")
                seen_from = True
                image = _flags(rest, "FROM").split()
                if len(image) != 1:
                    raise DockerfileError("FROM takes one image (no `AS` stages here)")
                name = substitute(image[0], {**args})
                plan.base = None if name in DEFAULT_IMAGES else name
                plan.from_line = number
                global_args, args = args, {}  # ARGs before FROM are out of scope after it, unless declared again
                continue
            if keyword == "ARG":
                for name, default in _pairs(rest, "ARG"):
                    _check_name(name, "ARG")
                    used_args.add(name)
                    if name in build_args:
                        args[name] = build_args[name]
                    elif default != "\0":
                        args[name] = substitute(default, {**args, **plan.env})
                    elif name in global_args:
                        args[name] = global_args[name]
                continue
            if not seen_from:
                raise DockerfileError("only ARG may come before FROM")
            values = {**args, **plan.env}
            if keyword == "ENV":
                for name, value in _pairs(rest, "ENV"):
                    _check_name(name, "ENV")
                    plan.env[name] = substitute(value, values)
                    values = {**args, **plan.env}
            elif keyword == "WORKDIR":
                if not rest:
                    raise DockerfileError("WORKDIR needs a path")
                plan.workdir = _join(plan.workdir, substitute(rest, values))
                plan.steps.append(Step("workdir", number, line, workdir=plan.workdir, user=plan.user))
            elif keyword == "USER":
                user = substitute(rest, values)
                if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}|[0-9]+", user):
                    raise DockerfileError(
                        f"{user!r}: give one user name or uid (a `:group` is not supported here)"
                    )
                plan.user = user
                plan.steps.append(Step("user", number, line, user=user))
            elif keyword == "RUN":
                body = _flags(rest, "RUN")
                if not body:
                    raise DockerfileError("RUN needs a command")
                exec_form = _json_form(body)
                command = shlex.join(exec_form) if exec_form is not None else body
                env = {**args, **plan.env}
                plan.steps.append(Step("run", number, line, command=command, env=tuple(env.items()),
                                       workdir=plan.workdir, user=plan.user))  # fmt: skip
            elif keyword in ("COPY", "ADD"):
                body = _flags(rest, keyword)
                paths = _json_form(body) or shlex.split(body)
                if len(paths) != 2:
                    raise DockerfileError("give one source and one destination")
                source, dest = (substitute(p, values) for p in paths)
                if "://" in source:
                    raise DockerfileError(f"{source}: this machine fetches nothing by URL; put the file in file_mounts")
                found = _mount_for(source, mounts)
                if found is None:
                    known = ", ".join(sorted(mounts)) or "none"
                    raise DockerfileError(
                        f"{source}: the build context here is the blueprint's file_mounts (paths: {known}); "
                        "add the file there"
                    )
                if dest.endswith("/"):
                    dest += found.rsplit("/", 1)[-1]
                plan.steps.append(Step("copy", number, line, source=found, dest=_join(plan.workdir, dest),
                                       workdir=plan.workdir, user=plan.user))  # fmt: skip
            elif keyword in _REFUSED:
                raise DockerfileError(_REFUSED[keyword])
            else:
                raise DockerfileError("not a dockerfile instruction this machine knows")
        except DockerfileError as exc:
            raise DockerfileError(f"{where}: {exc}") from None
    if not seen_from:
        raise DockerfileError(f"no FROM: start the dockerfile with FROM {DEFAULT_FROM} (or FROM <blueprint>)")
    unused = sorted(set(build_args) - used_args)
    if unused:
        raise DockerfileError(f"build_args {', '.join(unused)}: the dockerfile declares no such ARG")
    return plan


def _mount_for(source: str, mounts: dict[str, str]) -> str | None:
    """The file_mounts path `source` names: as written, or relative to the home (`~/x`, `x`)."""
    candidates = {source, source.removeprefix("./")}
    for path in mounts:
        short = path.removeprefix("~/").removeprefix("/home/user/")
        if path in candidates or short in candidates:
            return path
    return None


def preview(
    *,
    dockerfile: str | None,
    base: str | None,
    system_setup_commands: list[str],
    file_mounts: dict[str, str],
    code_mounts: list[tuple[str, str | None]],
) -> str:
    """The dockerfile the build parameters amount to: the given one (or `FROM base`), then each
    setup command as a RUN; file and code mounts as comments (they are written before the steps)."""
    lines: list[str] = []
    for path in sorted(file_mounts):
        lines.append(f"# file mount: {path}")
    for repo, install in code_mounts:
        lines.append(f"# code mount: {repo}" + (f" (install: {install})" if install else ""))
    if dockerfile and dockerfile.strip():
        lines.append(dockerfile.rstrip("\n"))
    else:
        lines.append(f"FROM {base or DEFAULT_FROM}")
    lines.extend(f"RUN {command}" for command in system_setup_commands)
    return "\n".join(lines) + "\n"
