"""A small keep-alive HTTP/1.1 client for node-to-node forwards (httptools parses the replies).

The forward is on the request path, so its cost is the hop's cost: a general-purpose client
spent ~3 ms of CPU per forward here (measured by loadtest/bench_cluster.py), this one a
fraction of that. It only does what a forward needs: POST with a body, a reply with
Content-Length or chunked body, pooled connections per peer, a deadline per exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import httptools


class PeerLost(Exception):
    """The connection failed before a whole reply arrived."""


class _Reply:
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class PeerClient:
    def __init__(self, max_idle: int = 32) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    async def close(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()

    async def post(
        self, base: str, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(base)
        if parts.scheme != "http":  # https peers: the general client's job (see forward.py)
            raise ValueError(f"peer URL {base!r}: this client speaks plain http")
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        head = [f"POST {path} HTTP/1.1", f"host: {parts.netloc}", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with asyncio.timeout(timeout_s):
            # A pooled connection may have been closed by the peer while idle: a reply that
            # never started on a reused connection is retried once on a fresh one.
            for reused in (True, False):
                conn = self._take(key) if reused else None
                if reused and conn is None:
                    continue
                if conn is None:
                    try:
                        conn = await asyncio.open_connection(*key)
                    except OSError as exc:
                        raise PeerLost(f"cannot connect to {base}: {exc}") from exc
                try:
                    status, reply, keep = await self._exchange(conn, request)
                except _NotStarted as exc:
                    conn[1].close()
                    if reused:
                        continue
                    raise PeerLost(f"{base} closed the connection") from exc
                except BaseException:
                    conn[1].close()  # cancelled or failed half-way: the connection's state is unknown
                    raise
                if keep:
                    self._give(key, conn)
                else:
                    conn[1].close()
                return status, reply.headers, b"".join(reply.body)
        raise PeerLost(f"{base}: no connection")  # not reached

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, _Reply, bool]:
        reader, writer = conn
        reply = _Reply()
        parser = httptools.HttpResponseParser(reply)
        started = False
        try:
            writer.write(request)
            await writer.drain()
            while not reply.done:
                data = await reader.read(65536)
                if not data:
                    raise (PeerLost("connection closed mid-reply") if started else _NotStarted())
                started = True
                parser.feed_data(data)
        except (ConnectionError, OSError) as exc:
            if not started:
                raise _NotStarted() from exc
            raise PeerLost(str(exc)) from exc
        except httptools.HttpParserError as exc:
            raise PeerLost(f"malformed reply: {exc}") from exc
        return parser.get_status_code(), reply, parser.should_keep_alive()

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    def _give(self, key: tuple[str, int], conn: _Conn) -> None:
        conns = self._idle.setdefault(key, [])
        if len(conns) < self.max_idle:
            conns.append(conn)
        else:
            with contextlib.suppress(Exception):
                conn[1].close()


class _NotStarted(Exception):
    """No byte of the reply arrived: safe to send again on a fresh connection."""
