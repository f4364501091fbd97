"""Devbox, execution and file routes (`/v1/devboxes/...`). Placeholder until built."""

from .config import Component, LocalConfig


def build(config: LocalConfig) -> Component:
    return Component(routes=[])
