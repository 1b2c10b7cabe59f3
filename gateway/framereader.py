"""Frames from a worker's socket, parsed in the event loop's read callback.

A buffered protocol instead of a StreamReader and a reader task: small frames are
cut out of one 64 KiB receive buffer (many per recv call), a large frame is
received straight into a buffer of its own size (no copy after the socket), and
each frame is handed to `on_frame` in the same callback, so a reply wakes the
request waiting for it without another trip through the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.errors import ProtocolError
from shared.protocol import HEADER, Frame, decode_payload, frame_length

SCRATCH_BYTES = 64 << 10


class FrameReader(asyncio.BufferedProtocol):
    def __init__(self, on_frame: Callable[[Frame], None], on_close: Callable[[str | None], None]) -> None:
        self._on_frame = on_frame
        self._on_close = on_close  # None: the peer closed; else why the stream is unusable
        self._scratch = bytearray(SCRATCH_BYTES)
        self._have = 0  # bytes in scratch not yet parsed
        self._big: bytearray | None = None  # a large frame's payload being received in place
        self._big_got = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's transports do not subclass asyncio's

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_got :]
        return memoryview(self._scratch)[self._have :]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._big is not None:
                self._big_got += nbytes
                if self._big_got == len(self._big):
                    payload, self._big = self._big, None
                    self._on_frame(decode_payload(payload))
                return
            self._have += nbytes
            self._parse()
        except ProtocolError as exc:  # framing lost (or a malformed frame): nothing after it can be trusted
            self._fail(exc.message)

    def _parse(self) -> None:
        view, pos, end = memoryview(self._scratch), 0, self._have
        try:
            while end - pos >= HEADER.size:
                length = frame_length(bytes(view[pos : pos + HEADER.size]))
                start = pos + HEADER.size
                if end - start >= length:
                    # The frame's buffers must outlive the scratch buffer: one copy, of a small frame.
                    self._on_frame(decode_payload(bytearray(view[start : start + length])))
                    pos = start + length
                elif length > SCRATCH_BYTES - HEADER.size:
                    self._big = bytearray(length)  # received in place from here on
                    self._big_got = end - start
                    self._big[: self._big_got] = view[start:end]
                    pos = end
                    break
                else:
                    break
            rest = end - pos
            if pos and rest:
                view[:rest] = view[pos:end]  # a partial small frame moves to the front
            self._have = rest
        finally:
            view.release()

    def _fail(self, reason: str) -> None:
        self._on_close(reason)
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_close(None)
