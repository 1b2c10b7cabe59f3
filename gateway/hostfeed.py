"""A host image that is still arriving from elsewhere (another node), and the swaps that follow it.

Whoever fills the segment (gateway/cluster/imagefetch.py) reports the verified prefix here;
a swap-in that starts meanwhile is sent with `Load.follow` (this feed's id) and the bytes ready
so far, and then gets a one-way FILL frame for every advance, so its copy thread copies each
group as soon as its bytes are verified (the worker's `HostFill`, as for the disk tier) and
execution follows group by group. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from shared.errors import Unavailable
from shared.protocol import Fill

_ids = itertools.count(1)


class HostFeed:
    def __init__(self, function: str, model_id: str, nbytes: int) -> None:
        self.id = next(_ids)
        self.function = function
        self.model_id = model_id
        self.nbytes = nbytes
        self.ready = 0
        self.complete = False
        self.error: str | None = None
        self._followers: list[Any] = []  # WorkerClients with a swap following this feed
        self._settled = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"failed: {self.error}" if self.error else "arriving"
        return f"<HostFeed {self.model_id} {self.ready}/{self.nbytes} {state} followers={len(self._followers)}>"

    def follow(self, client: Any) -> None:
        """`client` was just sent a LOAD following this feed (with `self.ready`): send it every advance.

        Called right after that LOAD is written, with no await in between, so no advance falls
        between the LOAD's `ready` and the first FILL frame.
        """
        if self.error is not None:
            client.send(Fill(follow=self.id, ready=self.ready, error=self.error))
        elif self.complete:
            client.send(Fill(follow=self.id, ready=self.ready, complete=True))
        else:
            self._followers.append(client)

    def advance(self, ready: int) -> None:
        if ready <= self.ready or self.complete or self.error is not None:
            return  # reports may come out of order from several fetching threads
        self.ready = ready
        self._send(Fill(follow=self.id, ready=ready))

    def finish(self) -> None:
        """Every byte is in the segment and verified."""
        self.ready, self.complete = self.nbytes, True
        self._send(Fill(follow=self.id, ready=self.nbytes, complete=True))
        self._followers.clear()
        if not self._settled.done():
            self._settled.set_result(None)

    def fail(self, message: str) -> None:
        if self.complete:
            return
        self.error = message
        self._send(Fill(follow=self.id, ready=self.ready, error=message))
        self._followers.clear()
        if not self._settled.done():
            self._settled.set_exception(Unavailable(message))
            self._settled.exception()  # retrieved: nobody need be waiting

    async def wait(self) -> None:
        """Until the image is whole (or the fetch failed: Unavailable)."""
        await asyncio.shield(self._settled)

    def _send(self, frame: Fill) -> None:
        for client in self._followers:
            client.send(frame)  # a dead worker's client drops it: its swap is gone anyway
