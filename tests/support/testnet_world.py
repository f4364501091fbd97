"""The test hosts of `testnet`, run inside the test's "world" network namespace (never on the real network).

HTTP on port 80 and HTTPS on 443 on every address of the namespace (each answers with the address
it was reached on and the Host it was asked for), and a DNS server on the address given, with the
names of `testnet.NAMES`. Usage: python testnet_world.py serve|no-dns|dns-only DNS_ADDRESS CERT KEY NAMES_JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import sys


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    host = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"host:")), b"")
    local = writer.get_extra_info("sockname")[0]
    body = f"world {local} {host.decode(errors='replace')}\n".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


class Dns(asyncio.DatagramProtocol):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        ident, _flags, qd = struct.unpack("!HHH", data[:6])
        pos, labels = 12, []
        while data[pos]:
            labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
            pos += data[pos] + 1
        qtype = struct.unpack("!H", data[pos + 1 : pos + 3])[0]
        question = data[12 : pos + 5]
        address = self.names.get(".".join(labels).lower())
        answer = b""
        rcode = 0 if address else 3
        if address and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if answer else 0, 0, 0)
        self.transport.sendto(header + question + answer, addr)  # type: ignore[attr-defined]


async def main() -> None:
    mode, dns_address, cert, key, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    if mode != "dns-only":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        await asyncio.start_server(http, "0.0.0.0", 80)
        await asyncio.start_server(http, "0.0.0.0", 443, ssl=tls)
    if mode != "no-dns":
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: Dns(names), local_addr=(dns_address, 53))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin


if __name__ == "__main__":
    asyncio.run(main())
