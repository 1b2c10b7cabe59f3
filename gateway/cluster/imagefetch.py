"""A function's image brought to this node from the nodes that hold it, pipelined into its first swap.

Instead of building the model here (and profiling it), the node asks a holder for the image's
header -- tensor table, chunk checksums, the holder's profile -- checks it against the digest
the registry keeps with the function, and starts serving the function at once: the host
segment is created empty, the workers prepare the program, and the scheduler sees the image
as not yet in host memory, so the first swap-in follows the transfer (`HostFeed`). The bytes
come by range requests from every holder in parallel (shared/rangefetch.py), each chunk
verified before anything may copy it. Once the image is whole the file is written to the
state dir (a restart reads it; the disk tier and other nodes' fetches use it) and the caller
confirms the claim in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from gateway.cluster.forward import FORWARDED_BY, TOKEN
from gateway.cluster.records import FunctionDef
from gateway.hostfeed import HostFeed
from gateway.hosttier import Tier
from gateway.registry import Function
from shared import imagefile, shm
from shared.errors import DamagedImage, TorporError, Unavailable
from shared.exectiming import ExecTiming
from shared.modelstore import ModelImage, TensorTable
from shared.rangefetch import FetchReport, Holder, HolderFailed, ImageLayout, RangeFetch, fetch_header
from shared.specs import specs_from_json

if TYPE_CHECKING:
    from gateway.cluster.config import ClusterConfig
    from gateway.service import Service

log = logging.getLogger("torpor.cluster")

MAX_SOURCES = 4  # holders fetched from at once; beyond a few, the receiving node's link is the limit


class ImageFetcher:
    def __init__(self, cfg: ClusterConfig, service: Service) -> None:
        self.cfg = cfg
        self.service = service
        self.reports: dict[str, dict[str, Any]] = {}  # function -> its last fetch, as GET /v1/functions shows it
        self._saving: set[asyncio.Task[None]] = set()  # image files being written after a fetch

    def __repr__(self) -> str:
        return f"<ImageFetcher {self.cfg.node} fetching={sorted(self.service.tiers.feeds)}>"

    @property
    def _headers(self) -> dict[str, str]:
        return {TOKEN: self.cfg.token, FORWARDED_BY: self.cfg.node}

    async def start(
        self, definition: FunctionDef, holders: list[Holder], source: dict[str, Any]
    ) -> asyncio.Task[FetchReport]:
        """Serve `definition` here from its holders' image; returns once it is servable, with the
        transfer running (the task ends when the image is whole, or raises when it cannot be)."""
        svc = self.service
        holders = holders[:MAX_SOURCES]
        header, holders = await self._header(definition, holders)
        table = TensorTable.from_wire(header["table"])
        layout = ImageLayout(
            definition.name + f"@{definition.version}", table.nbytes, header["chunk_bytes"], tuple(header["checksums"])
        )
        if table.nbytes != definition.model_bytes:
            raise DamagedImage(
                f"{definition.name}: the holders' image has {table.nbytes} bytes, "
                f"the registry says {definition.model_bytes}"
            )
        fn = function_from(definition, source, header.get("timing"))
        await svc.tiers.make_room(table.nbytes, keep=fn.name)
        name = svc.images.segment(fn.model_id)
        seg = await asyncio.to_thread(_fresh_segment, name, table.nbytes)
        feed = HostFeed(fn.name, fn.model_id, table.nbytes)
        svc.tiers.feeds[fn.name] = feed
        # The bytes start coming while the workers prepare the program (ParaServe overlaps fetch
        # and initialisation the same way); what arrives before a swap follows is in `feed.ready`.
        served = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._transfer(fn, layout, table, holders, seg, feed, served))
        log.info("%s: fetching its image (%d bytes) from %s", fn.name, table.nbytes, ", ".join(h.name for h in holders))
        try:
            await svc.serve_image(fn, ModelImage(name, table), Tier.DISK)
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            svc.tiers.feeds.pop(fn.name, None)
            shm.unlink(name)
            raise
        served.set()
        return task

    async def _header(self, definition: FunctionDef, holders: list[Holder]) -> tuple[dict[str, Any], list[Holder]]:
        """The first header a holder sends that matches the registry's digest; the holders that may serve it."""
        model_id = f"{definition.name}@{definition.version}"
        errors = []
        for i, holder in enumerate(holders):
            try:
                header = await asyncio.to_thread(fetch_header, holder, model_id, self._headers)
                got = imagefile.layout_digest(
                    header["model_id"],
                    TensorTable.from_wire(header["table"]),
                    header["chunk_bytes"],
                    header["checksums"],
                )
            except (HolderFailed, KeyError, TypeError, ValueError) as exc:
                errors.append(f"{holder.name}: {exc}")
                continue
            if header["model_id"] != model_id or (definition.image_digest and got != definition.image_digest):
                errors.append(f"{holder.name}: its image header does not match the registry's digest")
                continue
            return header, holders[i:]
        raise Unavailable(f"{definition.name}: no holder sent its image header ({'; '.join(errors)})")

    async def _transfer(
        self,
        fn: Function,
        layout: ImageLayout,
        table: TensorTable,
        holders: list[Holder],
        seg: shm.Segment,
        feed: HostFeed,
        served: asyncio.Event,
    ) -> FetchReport:
        svc = self.service
        loop = asyncio.get_running_loop()
        fetch = RangeFetch(
            layout,
            holders,
            seg.buf,
            self._headers,
            on_progress=lambda ready: loop.call_soon_threadsafe(feed.advance, ready),
        )
        try:
            try:
                report = await asyncio.to_thread(fetch.run)
            except BaseException:
                fetch.cancel()  # cancelled (the node stops) or failed: the threads stop at their next range
                raise
            feed.finish()
            await served.wait()  # the function is in the scheduler and registry now
        except BaseException as exc:
            message = exc.message if isinstance(exc, TorporError) else f"{type(exc).__name__}: {exc}"
            feed.fail(message)
            svc.tiers.feeds.pop(fn.name, None)
            seg.close()
            if not isinstance(exc, asyncio.CancelledError) and svc.registry.functions.get(fn.name) is fn:
                await svc.remove(fn.name, reason=f"its image could not be fetched: {message}")
            raise
        # Whole and verified: swaps from now on copy from host memory, and other nodes may fetch
        # it from here (out of the mapping). Its file is written in the background, at low CPU
        # priority: ~1 CPU-s for bert-base on this machine's disk, which a cold request executing
        # on the other core must not wait for. Until then the image stays in host memory.
        info = imagefile.ImageFileInfo(
            svc.images.path(fn.model_id), fn.model_id, table, layout.chunk_bytes, layout.checksums, 0
        )
        svc.tiers.unsaved[fn.name] = info
        svc.tiers.feeds.pop(fn.name, None)
        svc.dispatcher.apply(svc.dispatcher.scheduler.host_tier(fn.name, Tier.HOST))
        self.reports[fn.name] = {"from": [h.name for h in holders], **report.to_json()}
        log.info(
            "%s: image fetched in %.3f s (%.2f GB/s) from %s%s",
            fn.name,
            report.seconds,
            report.gbps,
            ", ".join(f"{n} {b} B" for n, b in report.bytes_from.items()),
            f"; dropped {report.failures}" if report.failures else "",
        )
        task = loop.create_task(self._persist(fn, info, seg))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)
        return report

    async def _persist(self, fn: Function, info: imagefile.ImageFileInfo, seg: shm.Segment) -> None:
        svc = self.service
        started = time.perf_counter()
        try:
            await _on_low_priority_thread(imagefile.write, info.path, fn.model_id, info.table, seg.buf)
            if svc.registry.functions.get(fn.name) is fn:
                svc.registry.save()
            log.info("%s: image file written in %.3f s", fn.name, time.perf_counter() - started)
        except (OSError, TorporError) as exc:
            log.error("%s: could not write its image file (%s); a restart rebuilds it", fn.name, exc)
        finally:
            svc.tiers.unsaved.pop(fn.name, None)
            seg.close()


async def _on_low_priority_thread(fn: Any, *args: Any) -> Any:
    """Run `fn(*args)` on a thread of its own at the lowest CPU priority (Linux: nice 19 for that thread)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(exc: BaseException | None, result: Any) -> None:
        if not done.done():
            done.set_exception(exc) if exc is not None else done.set_result(result)

    def run() -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, exc, None)
        else:
            loop.call_soon_threadsafe(settle, None, result)

    threading.Thread(target=run, name="image-write", daemon=True).start()
    return await done


def _fresh_segment(name: str, nbytes: int) -> shm.Segment:
    shm.unlink(name)  # a half-made segment of an earlier attempt
    return shm.create(name, nbytes)


def function_from(definition: FunctionDef, source: dict[str, Any], timing: Any) -> Function:
    """This node's entry for a function defined in the registry, profiled by the holder that sent its image."""
    spec = definition.spec
    return Function(
        definition.name,
        source,
        definition.slo_ms,
        specs_from_json(definition.inputs, "inputs"),
        specs_from_json(definition.outputs, "outputs"),
        definition.model_bytes,
        timeout_ms=float(spec.get("timeout_ms", 60_000.0)),
        invoke_token_sha256=definition.invoke_token_sha256,
        version=definition.version,
        slo_percentile=float(spec.get("slo_percentile", 98.0)),
        max_batch_size=int(spec.get("max_batch_size", 1)),
        drop_late=bool(spec.get("drop_late", False)),
        heavy=spec.get("heavy"),
        timing=ExecTiming.from_wire(timing) if timing is not None else None,
    )
