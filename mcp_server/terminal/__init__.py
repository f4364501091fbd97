"""Terminal sessions over the Runloop client: the PTY WebSocket, a virtual screen, named keys, waiting."""
