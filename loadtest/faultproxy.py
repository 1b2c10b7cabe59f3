"""A fault-injecting HTTP proxy in front of one node, as a process of its own.

`python -m loadtest.faultproxy --port P --target http://127.0.0.1:Q [--corrupt-when FILE]`

Passes every request through to the target (one upstream connection per request, closed after
the response, so each exchange is a whole request and response). While FILE exists, the body
of every image range response (`GET .../data`) has one byte flipped in its middle: the node
behind it then looks like a holder whose image file is damaged, to the nodes that fetch from it.
A node advertises the proxy's URL (`torpor serve --advertise`) so the other nodes reach it here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"


async def _exchange(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target: tuple[str, int], corrupt_when: str | None
) -> None:
    try:
        head = await client_r.readuntil(HEAD_END)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        client_w.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [ln for ln in lines[1:] if ln and not ln.lower().startswith("connection:")]
    length = next((int(ln.split(":", 1)[1]) for ln in headers if ln.lower().startswith("content-length:")), 0)
    body = await client_r.readexactly(length) if length else b""
    up_r, up_w = await asyncio.open_connection(*target)
    up_w.write("\r\n".join([lines[0], *headers, "connection: close", "", ""]).encode("latin-1") + body)
    await up_w.drain()
    response = await up_r.read()  # until the target closes: the whole response
    up_w.close()
    damage = corrupt_when is not None and await asyncio.to_thread(os.path.exists, corrupt_when)
    if method == "GET" and path.endswith("/data") and damage:
        cut = response.find(HEAD_END) + len(HEAD_END)
        if 0 < cut < len(response):
            mid = cut + (len(response) - cut) // 2
            response = response[:mid] + bytes([response[mid] ^ 0xFF]) + response[mid + 1 :]
    client_w.write(response)
    await client_w.drain()
    client_w.close()


async def serve(port: int, target: str, corrupt_when: str | None) -> None:
    parts = urlsplit(target)
    where = (parts.hostname or "127.0.0.1", parts.port or 80)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await _exchange(r, w, where, corrupt_when)
        except (OSError, asyncio.IncompleteReadError):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--target", required=True, help="the node behind the proxy, http://host:port")
    p.add_argument("--corrupt-when", help="damage image ranges while this file exists")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.target, args.corrupt_when))


if __name__ == "__main__":
    main()
