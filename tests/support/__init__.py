"""What several test layers share: the embedded backend as a process, the fault proxy, the in-memory
MCP client, HTTP serving, the fast-retry client, subscription helpers, the devbox image and id range.

Fixtures defined here are registered once, in `tests/conftest.py` (`pytest_plugins`); tests import
only helpers.
"""
