"""The embedded backend: a Runloop-compatible HTTP API served on loopback.

Devboxes are bubblewrap sandboxes on this machine; axons are SQLite databases.
Nothing here imports the MCP layer.
"""
