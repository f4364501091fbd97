"""MCP over streamable HTTP: the ASGI app, its guards (Host/Origin, bearer token, body limit), and the
event store that makes handshake-era streams resumable.
"""
