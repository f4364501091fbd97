"""Devbox sizes: Runloop's `resource_size_request` presets and the CUSTOM_SIZE rules.

The table and the rules are the API's (ResourceSize in runloop-devbox-api.yml); the process limit
is ours (Runloop publishes none): 512 per GiB of memory, so X_SMALL and SMALL stay at or under
1,024 and it grows with the size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3
DEFAULT_SIZE = "SMALL"
CUSTOM = "CUSTOM_SIZE"
PIDS_PER_GIB = 512
MAX_PIDS = 32_768

# name: (vCPUs, memory GiB, disk GiB)
PRESETS: dict[str, tuple[float, int, int]] = {
    "X_SMALL": (0.5, 1, 4),
    "SMALL": (1, 2, 4),
    "MEDIUM": (2, 4, 8),
    "LARGE": (2, 8, 16),
    "X_LARGE": (4, 16, 16),
    "XX_LARGE": (8, 32, 16),
}
SIZE_NAMES: tuple[str, ...] = (*PRESETS, CUSTOM)
CUSTOM_FIELDS = ("custom_cpu_cores", "custom_gb_memory", "custom_disk_size")
CUSTOM_RULE = (
    "CPU must be 0.5, 1, or a multiple of 2 (max 16); memory (GiB) 1 or a multiple of 2 (max 64); "
    "disk (GiB) a multiple of 2 from 2 to 64; memory per CPU between 2 and 8 GiB"
)


class SizeError(ValueError):
    """The size request breaks a rule; the message names the field and the rule."""


@dataclass(frozen=True)
class Size:
    name: str  # a preset name or CUSTOM_SIZE
    cpu_cores: float
    memory_gib: int
    disk_gib: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_gib * GIB

    @property
    def disk_bytes(self) -> int:
        return self.disk_gib * GIB

    @property
    def pids(self) -> int:
        return min(MAX_PIDS, PIDS_PER_GIB * self.memory_gib)

    @property
    def cpus_shown(self) -> int:
        """What `nproc` reports: a fraction of a CPU still runs on a whole one."""
        return max(1, math.ceil(self.cpu_cores))

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any] | None) -> Size:
        if not data:
            return preset(DEFAULT_SIZE)  # devboxes recorded before sizes existed ran as the default
        return cls(str(data["name"]), float(data["cpu_cores"]), int(data["memory_gib"]), int(data["disk_gib"]))

    def describe(self) -> str:
        cpu = f"{self.cpu_cores:g} CPU"
        return f"{self.name}: {cpu}, {self.memory_gib} GiB memory, {self.disk_gib} GiB disk, {self.pids} processes"


def preset(name: str) -> Size:
    cpu, memory, disk = PRESETS[name]
    return Size(name, cpu, memory, disk)


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SizeError(f"launch_parameters.{field} must be a number; got {value!r}. {CUSTOM_RULE}")
    return float(value)


def resolve(params: dict[str, Any]) -> Size:
    """The size `launch_parameters` ask for (SMALL when none), or SizeError naming the rule broken."""
    name = params.get("resource_size_request") or DEFAULT_SIZE
    given = [f for f in CUSTOM_FIELDS if params.get(f) is not None]
    if name not in SIZE_NAMES:
        raise SizeError(
            f"launch_parameters.resource_size_request must be one of {', '.join(SIZE_NAMES)}; got {name!r}"
        )
    if name != CUSTOM:
        if given:
            raise SizeError(
                f"launch_parameters.{given[0]} needs resource_size_request CUSTOM_SIZE (got {name}); "
                "set it, or leave the custom_* fields out"
            )
        return preset(name)
    missing = [f for f in CUSTOM_FIELDS[:2] if params.get(f) is None]
    if missing:
        raise SizeError(f"resource_size_request CUSTOM_SIZE needs launch_parameters.{missing[0]}. {CUSTOM_RULE}")
    cpu = _number("custom_cpu_cores", params["custom_cpu_cores"])
    if not (cpu in (0.5, 1) or (cpu.is_integer() and cpu % 2 == 0 and 2 <= cpu <= 16)):
        raise SizeError(f"launch_parameters.custom_cpu_cores={cpu:g} is not allowed. {CUSTOM_RULE}")
    memory = _number("custom_gb_memory", params["custom_gb_memory"])
    if not (memory == 1 or (memory.is_integer() and memory % 2 == 0 and 2 <= memory <= 64)):
        raise SizeError(f"launch_parameters.custom_gb_memory={memory:g} is not allowed. {CUSTOM_RULE}")
    if not 2 * cpu <= memory <= 8 * cpu:
        raise SizeError(
            f"launch_parameters.custom_gb_memory={memory:g} with custom_cpu_cores={cpu:g} is "
            f"{memory / cpu:g} GiB per CPU; it must be between 2 and 8 (so {2 * cpu:g} to {8 * cpu:g} GiB)"
        )
    if params.get("custom_disk_size") is None:
        disk = default_custom_disk(int(memory))
    else:
        disk_value = _number("custom_disk_size", params["custom_disk_size"])
        if not (disk_value.is_integer() and disk_value % 2 == 0 and 2 <= disk_value <= 64):
            raise SizeError(f"launch_parameters.custom_disk_size={disk_value:g} is not allowed. {CUSTOM_RULE}")
        disk = int(disk_value)
    return Size(CUSTOM, cpu, int(memory), disk)


def default_custom_disk(memory_gib: int) -> int:
    """A CUSTOM_SIZE without custom_disk_size gets the disk of the presets with as much memory."""
    if memory_gib <= 2:
        return 4
    if memory_gib <= 4:
        return 8
    return 16
