"""Network policies: named egress rules a devbox gets at create (`launch_parameters.network_policy_id`).

What a policy means on the embedded backend:
- `allow_all: true`: the safe default egress (egress.py): every public address, by any protocol.
- otherwise: HTTP and HTTPS to the `allowed_hostnames` only (exact names, or `*.example.com` for
  any name under example.com, not example.com itself), through the filtering proxy (policy_proxy.py);
  every other connection is refused. An empty list means no egress at all.
- `allow_devbox_to_devbox`: kept; devboxes reach each other only through tunnels anyway.
- `allow_agent_gateway` / `allow_mcp_gateway`: there is no gateway here, so `true` is refused.

The store is one JSON file, `<data dir>/network-policies/policies.json`, replaced atomically on
every change, so policies outlive backend restarts. Only the backend writes it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .clock import now_ms
from .errors import ApiError, not_found
from .ids import new_id

log = logging.getLogger("devbox_mcp.local")

STORE_FILE = "policies.json"
MAX_HOSTNAMES = 1000
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_HINT = "list them (GET /v1/network-policies) to see which ids exist"
_NO_GATEWAY = "there is no {} on the embedded backend; leave {} out or false"


@dataclass
class NetworkPolicy:
    id: str
    name: str
    create_time_ms: int
    update_time_ms: int
    description: str | None = None
    allow_all: bool = False
    allow_devbox_to_devbox: bool = False
    allowed_hostnames: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        """The API's NetworkPolicyView."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "egress": {
                "allow_all": self.allow_all,
                "allow_devbox_to_devbox": self.allow_devbox_to_devbox or self.allow_all,
                "allowed_hostnames": list(self.allowed_hostnames),
                "allow_agent_gateway": False,
                "allow_mcp_gateway": False,
            },
            "create_time_ms": self.create_time_ms,
            "update_time_ms": self.update_time_ms,
        }

    def allows(self, host: str) -> bool:
        """Whether HTTP(S) to `host` is allowed: an exact name, or a name under a `*.` entry."""
        host = host.rstrip(".").lower()
        if self.allow_all:
            return True
        for allowed in self.allowed_hostnames:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                    return True
            elif host == allowed:
                return True
        return False

    def reach(self) -> str:
        """One line saying what a devbox under this policy can reach."""
        if self.allow_all:
            return "public internet addresses only (no private, link-local or host addresses)"
        if not self.allowed_hostnames:
            return "no network at all (the policy allows no host)"
        return "HTTP(S) through a proxy to " + ", ".join(self.allowed_hostnames) + " only"


def check_hostnames(names: list[str]) -> list[str]:
    if len(names) > MAX_HOSTNAMES:
        raise ApiError(400, f"allowed_hostnames has {len(names)} entries; at most {MAX_HOSTNAMES}")
    checked = []
    for index, name in enumerate(names):
        clean = name.strip().rstrip(".").lower()
        if len(clean) > 253 or not _HOSTNAME.match(clean):
            raise ApiError(
                400,
                f"allowed_hostnames[{index}] {name[:100]!r} is not a host name: give an exact name such as "
                "'github.com' or a wildcard such as '*.npmjs.org' (no scheme, port or path)",
            )
        if clean not in checked:
            checked.append(clean)
    return checked


def check_gateways(allow_agent_gateway: bool | None, allow_mcp_gateway: bool | None) -> None:
    if allow_agent_gateway:
        raise ApiError(400, "allow_agent_gateway: " + _NO_GATEWAY.format("agent gateway", "allow_agent_gateway"))
    if allow_mcp_gateway:
        raise ApiError(400, "allow_mcp_gateway: " + _NO_GATEWAY.format("MCP hub", "allow_mcp_gateway"))


def check_name(name: str) -> str:
    if not name.strip() or len(name) > 256:
        raise ApiError(400, "name must be 1 to 256 characters, not blank")
    return name


class PolicyStore:
    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "network-policies"
        self.path = self.directory / STORE_FILE
        self._by_id: dict[str, NetworkPolicy] = {}

    def load(self) -> None:
        """Read the store; an unreadable one is moved aside (and logged), not lost."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            return
        try:
            records = json.loads(self.path.read_bytes())
            self._by_id = {r["id"]: NetworkPolicy(**r) for r in records}
        except (ValueError, TypeError, KeyError) as exc:
            aside = self.path.with_name(f"{STORE_FILE}.unreadable-{now_ms()}")
            self.path.replace(aside)
            log.warning("the network policy store was unreadable (%s); moved it to %s", type(exc).__name__, aside)

    def _save(self, by_id: dict[str, NetworkPolicy]) -> None:
        from .devboxes import write_json_atomic  # devboxes imports this module

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.path, [asdict(p) for p in by_id.values()])
        self._by_id = by_id

    def all(self) -> list[NetworkPolicy]:
        """Newest first."""
        return sorted(self._by_id.values(), key=lambda p: (p.create_time_ms, p.id), reverse=True)

    def get(self, policy_id: str) -> NetworkPolicy:
        policy = self._by_id.get(policy_id)
        if policy is None:
            raise not_found("network policy", policy_id, _HINT)
        return policy

    def find(self, policy_id: str) -> NetworkPolicy | None:
        return self._by_id.get(policy_id)

    def _name_free(self, name: str, but: str | None = None) -> None:
        for policy in self._by_id.values():
            if policy.name == name and policy.id != but:
                raise ApiError(400, f"a network policy named {name!r} already exists ({policy.id}); pick another name")

    def create(self, *, name: str, description: str | None, allow_all: bool, allow_devbox_to_devbox: bool,
               allowed_hostnames: list[str]) -> NetworkPolicy:  # fmt: skip
        check_name(name)
        hostnames = check_hostnames(allowed_hostnames)
        self._name_free(name)
        at = now_ms()
        policy = NetworkPolicy(
            id=new_id("np"), name=name, create_time_ms=at, update_time_ms=at, description=description,
            allow_all=allow_all, allow_devbox_to_devbox=allow_devbox_to_devbox or allow_all,
            allowed_hostnames=hostnames,
        )  # fmt: skip
        self._save({**self._by_id, policy.id: policy})
        return policy

    def update(self, policy: NetworkPolicy, changes: dict[str, Any]) -> NetworkPolicy:
        updated = NetworkPolicy(**asdict(policy))
        if changes.get("name") is not None:
            self._name_free(check_name(changes["name"]), but=policy.id)
            updated.name = changes["name"]
        if "description" in changes:
            updated.description = changes["description"]
        for key in ("allow_all", "allow_devbox_to_devbox"):
            if changes.get(key) is not None:
                setattr(updated, key, changes[key])
        if changes.get("allowed_hostnames") is not None:
            updated.allowed_hostnames = check_hostnames(changes["allowed_hostnames"])
        updated.allow_devbox_to_devbox = updated.allow_devbox_to_devbox or updated.allow_all
        updated.update_time_ms = max(now_ms(), policy.update_time_ms)
        self._save({**self._by_id, policy.id: updated})
        return updated

    def delete(self, policy: NetworkPolicy) -> NetworkPolicy:
        by_id = dict(self._by_id)
        by_id.pop(policy.id, None)
        self._save(by_id)
        return policy
