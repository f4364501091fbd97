"""Shared machinery of the agent-CLI tests: a scripted model API, a loopback-only namespace, runners."""
