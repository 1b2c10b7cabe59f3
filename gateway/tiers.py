"""Moving function images between the tiers: host shared memory and the state dir's files.

`Tiers` brings saved images back at start (adopted or read, within --host-memory), makes
room by pushing least recently used images to disk, and readies a disk-tier image's host
segment before a swap-in fills it. Where each image is lives in the scheduler (it decides
fills); `HostTier` accounts bytes and recency. The scheduler is reached through the
dispatcher, since the service replaces it once the workers report their devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from gateway.hostfeed import HostFeed
from gateway.hosttier import HostTier, Tier
from gateway.registry import UNLOADED, Function, Registry
from shared import imagefile, shm
from shared.config import format_size
from shared.errors import TorporError, Unavailable
from shared.imagestore import ImageStore
from shared.modelstore import ModelImage
from shared.protocol import ReleaseHost

if TYPE_CHECKING:
    from gateway.dispatcher import Dispatcher
    from gateway.workers import WorkerPool

log = logging.getLogger("torpor.gateway")

BRING_IN_THREADS = 2


class Tiers:
    def __init__(
        self, images: ImageStore, host: HostTier, registry: Registry, pool: WorkerPool, dispatcher: Dispatcher
    ) -> None:
        self.images = images
        self.host = host
        self.registry = registry
        self.pool = pool
        self.dispatcher = dispatcher
        # Images arriving from other nodes into their host segment (gateway/cluster/imagefetch.py):
        # a swap-in follows the feed, and the image is neither pushed to disk nor served onwards.
        self.feeds: dict[str, HostFeed] = {}
        # Fetched images whose file is still being written: kept in host memory until it is.
        self.unsaved: dict[str, imagefile.ImageFileInfo] = {}

    def __repr__(self) -> str:
        return f"<Tiers {self.images!r} {self.host!r}>"

    def bring_back(self, saved: list[Function]) -> tuple[dict[str, tuple[ModelImage, str]], float | None]:
        """Each saved function's host image from the state dir, without building its model.

        Within --host-memory, in registry order; the rest stay on the disk tier until invoked.
        Returns {function: (image, tier)} and the disk bandwidth measured reading them (or None).
        A function missing here is rebuilt by the caller.
        """
        images: dict[str, tuple[ModelImage, str]] = {}
        counts = {"adopted": 0, "read": 0, "disk": 0}
        # Which images come into host memory (within --host-memory, in registry order; one that
        # turns out unusable is rebuilt, so it takes its room all the same) and which stay on disk.
        plan: list[tuple[Function, bool]] = []
        used = 0
        for fn in saved:
            if fn.reason == UNLOADED or not self.images.has(fn.model_id):
                continue  # unloaded by the user; or saved before images were kept on disk (rebuilt)
            host = self.host.budget is None or used + fn.model_bytes <= self.host.budget
            used += fn.model_bytes if host else 0
            plan.append((fn, host))
        # Two at a time: checking an adopted segment is bound by page faults and hashing, a read
        # by the disk; either way a second one in flight uses the other core (or the disk's queue).
        with ThreadPoolExecutor(BRING_IN_THREADS, thread_name_prefix="bring-in") as pool:
            got = list(pool.map(lambda item: self._bring_in(*item), plan))
        reads = [(r[2], r[3]) for r in got if not isinstance(r, Exception) and r[2]]
        read_bytes = sum(n for n, _ in reads)
        # Concurrent reads share the disk: their summed time over the reads in flight is the wall time.
        read_s = sum(s for _, s in reads) / max(1, min(BRING_IN_THREADS, len(reads)))
        for (fn, _), result in zip(plan, got, strict=True):
            if isinstance(result, Exception):
                reason = result.message if isinstance(result, TorporError) else str(result)
                log.error("image of %s unusable (%s); rebuilding it", fn.name, reason)
                continue
            image, how, _, _ = result
            if image.table.nbytes != fn.model_bytes:
                log.error("image of %s does not match its registry entry; rebuilding it", fn.name)
                if how != "disk":
                    image.unlink()
                continue
            images[fn.name] = (image, Tier.DISK if how == "disk" else Tier.HOST)
            counts[how] += 1
        if images:
            log.info(
                "host images: %d adopted from shared memory, %d read from disk, %d left on disk (--host-memory)",
                counts["adopted"],
                counts["read"],
                counts["disk"],
            )
        # Enough bytes for a bandwidth worth using in the cost model.
        return images, read_bytes / read_s if read_s > 0 and read_bytes >= 64 << 20 else None

    def _bring_in(self, fn: Function, host: bool) -> tuple[ModelImage, str, int, float] | Exception:
        """One function's image: (image, how, bytes read from disk, seconds reading), or the error."""
        try:
            if not host:
                info = imagefile.read_info(self.images.path(fn.model_id))
                return ModelImage(self.images.segment(fn.model_id), info.table), "disk", 0, 0.0
            started = time.perf_counter()
            got = self.images.bring_in(fn.model_id)
            read = got.image.nbytes if got.how == "read" else 0
            return got.image, got.how, read, time.perf_counter() - started
        except (TorporError, OSError) as exc:
            return exc

    async def make_room(self, nbytes: int, keep: str) -> None:
        """Push least recently used host images to disk until `nbytes` more fit in --host-memory."""
        scheduler = self.dispatcher.scheduler
        # An arriving image holds its whole segment, whatever the scheduler counts it as.
        tiers = {**scheduler.host_tiers(), **{f: Tier.FILLING for f in self.feeds}}
        pinned = scheduler.host_pinned() | set(self.feeds) | set(self.unsaved)
        victims = self.host.victims(nbytes, tiers, keep, pinned)
        if victims is None:
            raise Unavailable(
                f"host memory: {format_size(nbytes)} more do not fit within --host-memory "
                f"{format_size(self.host.budget or 0)} while the other images are in use; retry later"
            )
        for name in victims:
            await self._to_disk(self.registry.functions[name])

    async def _to_disk(self, fn: Function) -> None:
        assert fn.image is not None
        self.dispatcher.apply(self.dispatcher.scheduler.host_tier(fn.name, Tier.DISK))
        # Unlink first, with no await between: a fill started from now on re-creates the name.
        fn.image.unlink()
        # Sent now, in order, ahead of any later LOAD on the same sockets: each worker drops its
        # mapping of the old pages before it could be asked to map the re-created segment.
        replies = [c.request(ReleaseHost(model_id=fn.model_id)) for c in self.pool.live_clients()]
        await asyncio.gather(*replies, return_exceptions=True)
        log.info("%s: image moved to the disk tier (host memory)", fn.name)

    async def fill_source(self, function: str) -> str | HostFeed | None:
        """Before a swap-in of an image not whole in host memory: what the worker fills it from.

        The feed of an image arriving from another node (None once it is whole after all), or
        the image file, with host room made and an empty segment readied for the worker to read into.
        """
        feed = self.feeds.get(function)
        if feed is not None:
            if feed.error is not None:
                raise Unavailable(f"function {function!r}: its image could not be fetched ({feed.error})")
            return None if feed.complete else feed
        fn = self.registry.get(function)
        assert fn.image is not None
        await self.make_room(0, keep=function)  # the filling image already counts as host memory
        name = fn.image.segment_name
        await asyncio.to_thread(lambda: (shm.unlink(name), shm.create(name, fn.model_bytes).close()))
        return str(self.images.path(fn.model_id))

    def tier(self, fn: Function) -> str:
        """Where a function's weights are: device (resident somewhere), host, disk, or fetching (from
        other nodes; none: unloaded, no image)."""
        if fn.name in self.feeds:
            return "fetching"
        if not fn.ready:
            return Tier.DISK if self.images.has(fn.model_id) else "none"
        scheduler = self.dispatcher.scheduler
        if scheduler.residency(fn.model_id):
            return "device"
        state = scheduler.functions.get(fn.name)
        return Tier.DISK if state is not None and state.host_tier != Tier.HOST else Tier.HOST
