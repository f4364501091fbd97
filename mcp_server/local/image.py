"""The devbox image: a Debian root filesystem, built once per machine, that every devbox overlays.

Built with `mmdebstrap` from the host's own Debian apt sources (same release as the host),
with the packages an agent expects of a development machine (`PACKAGES`), a `user` (uid 1000,
home /home/user) with passwordless sudo, and its files owned by the devbox id range
(`idmap.IdRange`), so that a devbox's root owns its system as on a real machine while being an
unprivileged uid on the host. A devbox never writes to the image: it is the lower layer of an
overlay whose upper layer lives in the devbox's own directory (`sandbox.RootFs`).

Images live in one directory per machine (`default_images_dir`, shared by every data
directory; `DEVBOX_MCP_IMAGE_DIR` overrides it), one subdirectory per recipe: the package list,
the apt sources and the id range are hashed into its name, so a different recipe builds a new
image and never changes one a devbox already sits on. A build happens once, under a file lock
(concurrent backends wait for it, then use it), into a temporary directory renamed into place
when complete: a half-built image is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .idmap import IdRange, shift_tree

log = logging.getLogger("devbox_mcp.local")

RECIPE_VERSION = 1  # bump when the build steps change, so a new image is built
# What an agent expects of a development machine; listed in the README. `mount` remounts the
# devbox's root with setuid allowed (bubblewrap mounts everything nosuid), so sudo works.
PACKAGES = (
    "bash", "coreutils", "git", "curl", "ca-certificates", "python3", "python3-venv", "python3-pip",
    "build-essential", "procps", "less", "nano", "vim-tiny", "sudo", "nodejs", "npm",
    "mount", "iproute2", "netbase",
)  # fmt: skip
IMAGE_USER = "user"
IMAGE_UID = 1000
IMAGE_DIR_ENV = "DEVBOX_MCP_IMAGE_DIR"

# Runs after the packages are installed (mmdebstrap's customize hook; "$1" is the new root).
_CUSTOMIZE = f"""set -e
chroot "$1" useradd --create-home --uid {IMAGE_UID} --user-group --shell /bin/bash --comment "devbox user" {IMAGE_USER}
printf '%s\\n' '{IMAGE_USER} ALL=(ALL:ALL) NOPASSWD: ALL' > "$1/etc/sudoers.d/devbox-user"
chmod 0440 "$1/etc/sudoers.d/devbox-user"
# `sudo pip install` is what agents type: let pip install into the system (PEP 668 notwithstanding).
printf '[global]\\nbreak-system-packages = true\\n' > "$1/etc/pip.conf"
rm -f "$1/etc/hostname" "$1/etc/resolv.conf" "$1/etc/machine-id"
"""


class ImageError(Exception):
    """The image cannot be built here; the message says why and what to do."""


def default_images_dir() -> Path:
    configured = os.environ.get(IMAGE_DIR_ENV)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/devbox-mcp/images")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "devbox-mcp" / "images"


def host_codename() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME" and value.strip('"'):
                return value.strip('"')
    return None


# -- the host's apt sources, for the host's own release ---------------------------------------------


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current, key = [], {}, ""
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def _one_line_stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        options: dict[str, str] = {}
        words = words[1:]
        if words and words[0].startswith("["):
            while words:
                word = words.pop(0).strip("[]")
                name, _, value = word.partition("=")
                if name:
                    options[name.lower()] = value
                if "]" in word or not words:
                    break
        if len(words) < 2:
            continue
        stanza = {"types": "deb", "uris": words[0], "suites": words[1], "components": " ".join(words[2:])}
        if "signed-by" in options:
            stanza["signed-by"] = options["signed-by"]
        stanzas.append(stanza)
    return stanzas


def host_sources(codename: str) -> str:
    """The host's binary apt sources for `codename` (and its -updates, -security...), as deb822 text."""
    stanzas: list[dict[str, str]] = []
    paths = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in paths:
        with contextlib.suppress(OSError):
            stanzas += _one_line_stanzas(Path(path).read_text())
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with contextlib.suppress(OSError):
            stanzas += _deb822_stanzas(Path(path).read_text())
    out = []
    for stanza in stanzas:
        if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
            continue
        suites = [s for s in stanza.get("suites", "").split() if s == codename or s.startswith(codename + "-")]
        if not suites or not stanza.get("uris"):
            continue
        lines = ["Types: deb", f"URIs: {stanza['uris']}", f"Suites: {' '.join(suites)}"]
        lines.append(f"Components: {stanza.get('components') or 'main'}")
        if stanza.get("signed-by"):
            lines.append(f"Signed-By: {stanza['signed-by']}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


# -- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A complete image: `rootfs` is the lower layer devboxes overlay."""

    path: Path
    info: dict[str, object]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


class ImageStore:
    """The images of one machine for one id range: find the current one, or build it."""

    def __init__(self, directory: Path, ids: IdRange) -> None:
        self.directory = directory
        self.ids = ids
        self.codename = host_codename()
        self.sources = host_sources(self.codename) if self.codename else ""

    @property
    def name(self) -> str:
        recipe = {
            "version": RECIPE_VERSION,
            "codename": self.codename,
            "packages": PACKAGES,
            "sources": self.sources,
            "ids": [self.ids.uid_base, self.ids.gid_base, self.ids.count],
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.codename}-{digest}"

    def unavailable_reason(self) -> str | None:
        """Why no image can be built on this machine (None when one can)."""
        if not self.codename:
            return "this host has no VERSION_CODENAME in /etc/os-release, so there is no release to build the devbox image from"
        if not self.sources:
            return f"the host's apt sources have no entry for {self.codename!r} to build the devbox image from"
        if not shutil.which("mmdebstrap"):
            return "mmdebstrap is not installed; install it (`apt-get install mmdebstrap`) to build the devbox image"
        return None

    def current(self) -> Image | None:
        """The built image of the current recipe, if there is one."""
        path = self.directory / self.name
        try:
            info = json.loads((path / "image.json").read_text())
        except (OSError, ValueError):
            return None
        return Image(path, info)

    @staticmethod
    def at(path: Path) -> Image | None:
        """The image a devbox was created on (its record keeps the path)."""
        try:
            return Image(path, json.loads((path / "image.json").read_text()))
        except (OSError, ValueError):
            return None

    def build(self, progress: Callable[[str], None]) -> Image:
        """Build the current recipe's image unless it exists; blocking (minutes the first time)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # Only root may enter: the image holds setuid programs of the devbox id range.
        os.chmod(self.directory, 0o700)
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another backend may be building it: wait, then use it
            image = self.current()
            if image is not None:
                return image
            reason = self.unavailable_reason()
            if reason:
                raise ImageError(reason)
            for stale in self.directory.glob(".build-*"):  # left by a build that was killed
                shutil.rmtree(stale, ignore_errors=True)
            return self._build_locked(progress)

    def _build_locked(self, progress: Callable[[str], None]) -> Image:
        started = time.monotonic()
        work = self.directory / f".build-{self.name}-{os.getpid()}"
        work.mkdir(mode=0o700)
        try:
            sources = work / "debian.sources"
            sources.write_text(self.sources)
            rootfs = work / "rootfs"
            command = [
                "mmdebstrap", "--mode=root", "--variant=apt", "--include=" + ",".join(PACKAGES),
                "--skip=cleanup/apt/lists",  # `apt-get install` works without an `apt-get update` first
                "--dpkgopt=force-unsafe-io",  # a failed build is thrown away whole: no fsync per file
                "--customize-hook=" + _CUSTOMIZE,
                str(self.codename), str(rootfs), str(sources),
            ]  # fmt: skip
            progress(f"building the devbox image {self.name} with mmdebstrap (once per machine; a few minutes)")
            self._run(command, progress)
            progress("giving the image's files to the devbox id range")
            count = shift_tree(rootfs, self.ids)
            info = {
                "name": self.name,
                "codename": self.codename,
                "packages": list(PACKAGES),
                "uid_base": self.ids.uid_base,
                "gid_base": self.ids.gid_base,
                "files": count,
                "build_seconds": round(time.monotonic() - started, 1),
                "built_at": int(time.time()),
            }
            (work / "image.json").write_text(json.dumps(info, indent=1) + "\n")
            final = self.directory / self.name
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        progress(f"devbox image {self.name} built in {info['build_seconds']} s")
        return Image(final, info)

    @staticmethod
    def _run(command: list[str], progress: Callable[[str], None]) -> None:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        tail: list[str] = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = (tail + [line])[-20:]
            if line.startswith(("I: ", "E: ", "W: ")):
                progress(line)
        if proc.wait() != 0:
            raise ImageError(f"mmdebstrap failed (exit {proc.returncode}): " + " | ".join(tail[-5:]))


def cli_main(*, build: bool, gc: bool = False) -> int:
    """`devbox-mcp image [--build] [--gc]`: say where the image is, or build it (what `make install`
    runs); list the old images and what keeps each, or remove those nothing uses (image_gc.py)."""
    from .idmap import FALLBACK_NOTE, host_range, subordinate_map
    from .image_gc import collect, old_images

    directory = default_images_dir()
    ids = host_range(directory)
    if ids is None:
        user_map, why_not = subordinate_map()
        print(f"devbox-mcp: no devbox image: {user_map.note if user_map else f'{FALLBACK_NOTE} ({why_not})'}")
        return 0
    store = ImageStore(directory, ids)
    image = store.current()
    if image is None and build:
        try:
            image = store.build(lambda line: print(f"devbox-mcp: {line}", flush=True))
        except ImageError as exc:
            print(f"devbox-mcp: cannot build the devbox image: {exc}")
            return 1
    if image is None:
        reason = store.unavailable_reason()
        print(f"devbox-mcp: the devbox image {store.name} is not built yet" + (f" ({reason})" if reason else "")
              + "; `devbox-mcp image --build` builds it (the first devbox would otherwise)")
        return 0
    print(f"devbox-mcp: devbox image {image.path} ({image.info.get('build_seconds')} s to build; "
          f"ids {ids.uid_base}-{ids.uid_base + ids.count - 1} on the host)")
    removed = collect(store) if gc else []
    for path in removed:
        print(f"devbox-mcp: removed the old image {path}: nothing uses it")
    for old in old_images(store):
        print(f"devbox-mcp: old image {old.path}: " + (f"kept, {old.kept_because}" if old.kept_because
              else "nothing uses it; `devbox-mcp image --gc` removes it"))
    return 0
