"""A packed image fetched from several holders at once, by HTTP range requests, chunk-verified.

The image is cut into ranges of whole checksum chunks. Each holder gets one thread and one
keep-alive connection; the threads take ranges in image order from one shared list, so the
verified prefix -- what a swap-in may copy -- grows at the holders' aggregate bandwidth
(ParaServe's point: several links load one model faster than one). Each response body is
received straight into the destination (the host segment), then every chunk in it is checked
against the image's XXH3-64 checksums before it counts.

A holder that sends a bad chunk, a wrong status or nothing within the timeout is dropped for
the rest of the fetch, and its range goes back to the front of the list for the others. Only
the thread that owns a range writes into it, and it gives the range back only once it has
stopped writing, so bytes already verified are never overwritten. The fetch fails, naming each
holder's failure, only when no holder is left for a range.

Torch-free and Starlette-free (the gateway runs it, on threads: the sockets and the hash release
the GIL). The holders' side is gateway/cluster/imageserve.py.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import xxhash

from shared.errors import Unavailable

# Chunks per range request (16 MiB): one round trip per ~30 ms of transfer here, and the first
# groups are still in soon.
RANGE_CHUNKS = 4
TIMEOUT_S = 10.0  # per socket operation: a holder silent this long is unreachable
MAX_HEADER_BYTES = 64 << 20


@dataclass(frozen=True)
class Holder:
    name: str
    url: str  # base URL, http(s)://host:port


@dataclass(frozen=True)
class ImageLayout:
    """What a fetch needs to know of the image: its size and chunk checksums."""

    model_id: str
    nbytes: int
    chunk_bytes: int
    checksums: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 or len(self.checksums) != -(-self.nbytes // self.chunk_bytes):
            raise ValueError(f"image {self.model_id}: {len(self.checksums)} checksums for {self.nbytes} bytes")


@dataclass
class FetchReport:
    nbytes: int
    seconds: float = 0.0
    bytes_from: dict[str, int] = field(default_factory=dict)  # verified bytes each holder sent
    failures: dict[str, str] = field(default_factory=dict)  # holder -> why it was dropped
    retried: int = 0  # ranges given back by a dropped holder, for another to fetch

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 4),
            "gbps": round(self.gbps, 3),
            "bytes_from": dict(self.bytes_from),
            "failures": dict(self.failures),
            "retried": self.retried,
        }


class HolderFailed(Exception):
    """This holder cannot be trusted with the rest of the fetch."""


def data_path(model_id: str) -> str:
    return f"/internal/v1/images/{quote(model_id, safe='')}"


def connect(url: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"holder URL {url!r}: expected http(s)://host:port")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout_s)


def fetch_header(holder: Holder, model_id: str, headers: dict[str, str], timeout_s: float = TIMEOUT_S) -> Any:
    """The image's header (layout, tensor table, the holder's profile of it) as JSON, from one holder."""
    conn = connect(holder.url, timeout_s)
    try:
        conn.request("GET", data_path(model_id), headers=headers)
        r = conn.getresponse()
        body = r.read(MAX_HEADER_BYTES)
        if r.status != 200:
            raise HolderFailed(f"HTTP {r.status}: {body[:200].decode(errors='replace')}")
        return orjson.loads(body)
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as exc:
        raise HolderFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


class RangeFetch:
    """One image's transfer into `dest` (a writable buffer of at least `layout.nbytes`)."""

    def __init__(
        self,
        layout: ImageLayout,
        holders: Sequence[Holder],
        dest: Any,
        headers: dict[str, str],
        on_progress: Callable[[int], None] | None = None,
        range_chunks: int = RANGE_CHUNKS,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        if not holders:
            raise ValueError("a fetch needs at least one holder")
        if range_chunks < 1:
            raise ValueError(f"range_chunks: expected at least 1, got {range_chunks}")
        self.layout = layout
        self.holders = list(holders)
        self.view = memoryview(dest).cast("B")
        if len(self.view) < layout.nbytes:
            raise ValueError(f"destination of {len(self.view)} bytes for an image of {layout.nbytes}")
        self.headers = headers
        self.on_progress = on_progress
        self.timeout_s = timeout_s
        step = range_chunks * layout.chunk_bytes
        self.ranges = [(s, min(s + step, layout.nbytes)) for s in range(0, layout.nbytes, step)]
        self.report = FetchReport(layout.nbytes, bytes_from={h.name: 0 for h in self.holders})
        self._cond = threading.Condition()
        # The first range of each holder is dealt to it (every holder starts at once); the rest
        # are taken in image order by whichever thread is free.
        self._first = {h.name: i for i, h in enumerate(self.holders) if i < len(self.ranges)}
        self._todo: deque[int] = deque(range(len(self.holders), len(self.ranges)))
        self._flying = len(self._first)  # dealt or taken, not yet verified or given back
        self._verified = [False] * len(self.ranges)
        self._ready = 0  # bytes of the verified prefix
        self._done_ranges = 0
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<RangeFetch {self.layout.model_id} {self._ready}/{self.layout.nbytes} from {len(self.holders)}>"

    @property
    def ready(self) -> int:
        return self._ready

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def run(self) -> FetchReport:
        """Fetch every range (blocking); raises Unavailable when some range has no holder left."""
        started = time.perf_counter()
        threads = [
            threading.Thread(target=self._serve, args=(h,), name=f"fetch-{h.name}", daemon=True) for h in self.holders
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.report.seconds = time.perf_counter() - started
        if self._cancelled:
            raise Unavailable(f"image {self.layout.model_id}: the fetch was cancelled")
        if self._done_ranges < len(self.ranges):
            why = "; ".join(f"{n}: {r}" for n, r in self.report.failures.items()) or "no holder answered"
            raise Unavailable(
                f"image {self.layout.model_id}: {len(self.ranges) - self._done_ranges} of {len(self.ranges)} "
                f"ranges could not be fetched from any holder ({why})"
            )
        return self.report

    # -- one thread per holder -------------------------------------------------------
    def _take(self, holder: Holder) -> int | None:
        with self._cond:
            first = self._first.pop(holder.name, None)
            if first is not None:
                if not self._cancelled:
                    return first
                self._flying -= 1
            # Wait while others still fly: a range they give back must find a taker.
            while not self._todo and self._flying and not self._cancelled:
                self._cond.wait()
            if self._cancelled or not self._todo:
                return None
            self._flying += 1
            return self._todo.popleft()

    def _serve(self, holder: Holder) -> None:
        try:
            conn = connect(holder.url, self.timeout_s)
        except ValueError as exc:
            self._give_back(holder, self._first.get(holder.name), str(exc))
            return
        try:
            while (index := self._take(holder)) is not None:
                try:
                    self._fetch(conn, holder, index)
                except (HolderFailed, OSError, http.client.HTTPException) as exc:
                    # This thread no longer writes into the range: only now may another take it.
                    conn.close()
                    self._give_back(holder, index, f"{type(exc).__name__}: {exc}")
                    return
                self._verified_range(holder, index)
        finally:
            conn.close()

    def _give_back(self, holder: Holder, index: int | None, why: str) -> None:
        """The holder is dropped; its range (if any) goes first to whoever takes next."""
        with self._cond:
            if self._first.get(holder.name) == index:
                self._first.pop(holder.name, None)
            if index is not None:
                self._flying -= 1
                self._todo.appendleft(index)
                self.report.retried += 1
            self.report.failures[holder.name] = why
            self._cond.notify_all()

    def _fetch(self, conn: http.client.HTTPConnection, holder: Holder, index: int) -> None:
        start, end = self.ranges[index]
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}"}
        conn.request("GET", data_path(self.layout.model_id) + "/data", headers=headers)
        r = conn.getresponse()
        want = f"bytes {start}-{end - 1}/{self.layout.nbytes}"
        if r.status != 206 or r.getheader("content-range") != want:
            body = r.read(4096)
            raise HolderFailed(f"HTTP {r.status} ({body[:200].decode(errors='replace')}) for {want}")
        view = self.view[start:end]
        got = 0
        while got < len(view):
            n = r.readinto(view[got:])
            if not n:
                raise HolderFailed(f"range {want} cut short at {got} bytes")
            got += n
        if not r.isclosed():
            r.read()  # nothing should be left; leaves the connection ready for the next request
        chunk = self.layout.chunk_bytes
        for c in range(start // chunk, -(-end // chunk)):
            lo, hi = c * chunk, min((c + 1) * chunk, self.layout.nbytes)
            if xxhash.xxh3_64_intdigest(self.view[lo:hi]) != self.layout.checksums[c]:
                raise HolderFailed(f"chunk {c} (bytes {lo}..{hi}) fails its checksum")

    def _verified_range(self, holder: Holder, index: int) -> None:
        start, end = self.ranges[index]
        with self._cond:
            self._flying -= 1
            self._verified[index] = True
            self._done_ranges += 1
            self.report.bytes_from[holder.name] += end - start
            advanced = False
            i = self._ready_index()
            while i < len(self.ranges) and self._verified[i]:
                self._ready = self.ranges[i][1]
                advanced = True
                i += 1
            ready = self._ready
            self._cond.notify_all()
        if advanced and self.on_progress is not None:
            self.on_progress(ready)

    def _ready_index(self) -> int:
        """The first range not yet in the verified prefix."""
        step = self.ranges[0][1] - self.ranges[0][0] if self.ranges else 1
        return -(-self._ready // step)
