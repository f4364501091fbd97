"""Axon routes (`/v1/axons/...`). Placeholder until built."""

from .config import Component, LocalConfig


def build(config: LocalConfig) -> Component:
    return Component(routes=[])
