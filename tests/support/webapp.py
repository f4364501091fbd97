"""A small web app to run inside a devbox (stdlib only: the devbox needs nothing installed).

`python3 webapp.py PORT` serves, on 0.0.0.0:PORT:
- `/`: a page whose script opens a WebSocket to `ws` beside it, sends a line and shows the echo
  in `#ws` ("websocket echo: ...");
- `/ws`: a WebSocket (RFC 6455) that echoes text and binary messages;
- `/events`: Server-Sent Events: `one`, then `two` once the file `/tmp/go` exists;
- `/ticks`: an event every 0.2 s until the client goes;
- `/conn`: the client's address as this server sees it (the same on a reused connection);
- `/bytes/N`: N bytes (Content-Length), for downloads.

Tests and benchmarks upload it with `write_file_contents` (its source is `SOURCE`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>devbox web app</title>
<style>body{font-family:sans-serif;margin:2em;background:#f4f7fb}h1{color:#1b4f8a}</style></head>
<body><h1 id="title">Hello from the devbox</h1><p id="ws">websocket: connecting</p>
<script>
const ws = new WebSocket(location.href.replace(/^http/, "ws").replace(/[^/]*$/, "") + "ws");
ws.onopen = () => ws.send("ping through the tunnel");
ws.onmessage = (e) => { document.getElementById("ws").textContent = "websocket echo: " + e.data; };
ws.onerror = () => { document.getElementById("ws").textContent = "websocket error"; };
</script></body></html>
"""
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = b"x" * (1 << 20)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes: without this, Nagle and delayed ACKs hold the body ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path.endswith("/ws"):
            self.websocket()
        elif path.endswith("/events"):
            self.events()
        elif path.endswith("/ticks"):
            self.ticks()
        elif path.endswith("/conn"):
            self.reply(f"{self.client_address[0]}:{self.client_address[1]}".encode(), "text/plain")
        elif "/bytes/" in path:
            self.download(int(path.rsplit("/", 1)[1]))
        else:
            self.reply(PAGE, "text/html; charset=utf-8")

    def reply(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def download(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            self.wfile.write(CHUNK[: min(size, len(CHUNK))])
            size -= len(CHUNK)

    def stream_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def events(self) -> None:
        self.stream_head()
        self.wfile.write(b"data: one\n\n")
        self.wfile.flush()
        while not Path("/tmp/go").exists():
            time.sleep(0.02)
        self.wfile.write(b"data: two\n\n")

    def ticks(self) -> None:
        self.stream_head()
        try:
            for n in range(10_000):
                self.wfile.write(f"data: {n}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close: answer it and end
                self.wfile.write(b"\x88\x00")
                return
            if opcode in (1, 2):
                self.wfile.write(frame(opcode, data))
                self.wfile.flush()


def frame(opcode: int, data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        return bytes([0x80 | opcode, n]) + data
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + struct.pack(">H", n) + data
    return bytes([0x80 | opcode, 127]) + struct.pack(">Q", n) + data


SOURCE = Path(__file__).read_text(encoding="utf-8")

if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print(f"serving on {sys.argv[1]} (pid {os.getpid()})", flush=True)
    server.serve_forever()
