"""devbox-mcp: an MCP server that gives LLM agents real Linux sandboxes."""

__version__ = "0.1.0"
