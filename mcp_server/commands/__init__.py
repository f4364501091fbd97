"""The commands (`devbox-mcp` and its subcommands): the only code that knows both the MCP layer and the
embedded backend.
"""
