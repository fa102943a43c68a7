"""The HTTP server's socket (nearline/api/server.py): what a response's latency depends on."""

from __future__ import annotations

import asyncio
import socket

from nearline.api.server import ApiServer
from nearline.settings import ApiSettings


def test_connections_are_served_with_tcp_nodelay() -> None:
    # uvicorn serves the bound socket through asyncio, which sets TCP_NODELAY only on sockets
    # that say they are TCP. Without it a keep-alive connection's second response has its body
    # held back behind its head until the client's delayed ACK (40 ms on Linux).
    server = ApiServer("127.0.0.1", 0, ApiSettings())

    async def main() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listening = await asyncio.start_server(accept, sock=server.socket)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            nodelay = await asyncio.wait_for(seen, 10)
            writer.close()
            return nodelay
        finally:
            listening.close()

    try:
        assert asyncio.run(main()) != 0
    finally:
        server.close()
