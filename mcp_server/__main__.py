"""`python -m mcp_server`: the same as the `devbox-mcp` command.

The import is absolute so that this file also works run by path (an MCP Bundle names it as its
entry point), as long as the package is installed in the interpreter that runs it.
"""

import sys

from mcp_server.commands.cli import main

sys.exit(main())
