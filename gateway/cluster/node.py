"""One node of the cluster: the local Service wrapped with the registry, placement and routing.

The request path reads only the policy's local view; Redis is touched by background tasks:
heartbeats (publish this node's record, read everyone's), the event stream (deploys, deletes,
claims, seen by every node within a blocking read), a periodic full resync, and the placement
loop that acts on the policy's claims and releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from gateway.cluster import transfer
from gateway.cluster.config import ClusterConfig
from gateway.cluster.forward import Forwarder
from gateway.cluster.imagefetch import ImageFetcher
from gateway.cluster.policy import Claim, ClusterPolicy, Knobs, Release
from gateway.cluster.records import FunctionDef, Hold, HoldState, NodeRecord, NodeState
from gateway.cluster.store import ClusterStore, RegistryDown, RegistryLost
from gateway.registry import Function, check_name
from gateway.service import Service
from shared import imagefile
from shared.errors import NotFound, TorporError, Unavailable
from shared.rangefetch import Holder

log = logging.getLogger("torpor.cluster")
T = TypeVar("T")


class Conflict(TorporError):
    status = 409
    kind = "conflict"


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, service: Service, clock: Any = time.monotonic) -> None:
        self.cfg = cfg
        self.service = service
        self.store = ClusterStore(cfg.redis_url)
        self.policy = ClusterPolicy(cfg.node, clock, Knobs(max_replicas=cfg.max_replicas))
        self.forwarder = Forwarder(cfg.node, cfg.token)
        self.state = NodeState.UP
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[str] = set()  # functions this node is deploying, claiming or dropping now
        self._joined = False  # declared what we hold to the registry's current incarnation
        self._last_event = "0-0"
        # Functions in the view but not in the registry, nor deleted: since when (see _resync).
        self._undeclared_since: dict[str, float] = {}
        self._synced = asyncio.Event()
        self._changed = asyncio.Event()  # set whenever the view of a function changes
        # Reads of the registry are applied in the order they were made: without it, a read
        # made before a change could be applied after it and bring the old state back.
        self._view_lock = asyncio.Lock()
        self._placing = asyncio.Lock()  # one claim or release at a time; stop() waits for it
        self._stopping = False
        self._artifacts: set[str] = set()  # digests of users' .pt2 files on this node's disk
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self.fetcher = ImageFetcher(cfg, service)
        self._placements: set[asyncio.Task[None]] = set()  # placements asked for with `place_here`

    @property
    def name(self) -> str:
        return self.cfg.node

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self.policy.node_seen(self._record())
        loops = (self._heartbeats, self._follow, self._resyncs, self._placement)
        self._tasks = [asyncio.get_running_loop().create_task(loop()) for loop in loops]
        # Serve at once from what the state dir restored; wait briefly for the first sync.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), 5.0)

    async def stop(self) -> None:
        """Drain: no new placements here, hand the images over, then leave."""
        self.state = NodeState.DRAINING
        with contextlib.suppress(RegistryDown):
            await self._beat()
            deadline = time.monotonic() + self.cfg.drain_s
            while time.monotonic() < deadline and self._sole_holds() and self._others_up():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
        # From here the node's own copies stay as they are (the Service frees them all when it
        # stops): a copy dropped half-way by a cancelled task could leave a worker call pending.
        self._stopping = True
        async with self._placing, self._view_lock:  # let a placement or an apply under way finish
            tasks = [*self._tasks, *self._fetching.values(), *self._placements]
            for task in tasks:
                task.cancel()
        # A loop inside a Redis call may see the cancellation as a failed command and go round
        # once more: the loops also stop on _stopping, and nothing waits on them for long.
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            if pending:
                log.warning("%d cluster task(s) did not stop when cancelled", len(pending))
        with contextlib.suppress(RegistryDown):
            for name in list(self.service.registry.functions):
                await self.store.release(name, self.name, force=not self._sole_holds([name]))
            await self.store.leave(self.name)
        await self.forwarder.close()
        await self.store.close()

    def _others_up(self) -> bool:
        """Whether any other node could take an image over (not when the whole cluster stops)."""
        return any(n != self.name and self.policy.state_of(n) == NodeState.UP for n in self.policy.nodes)

    def _sole_holds(self, names: list[str] | None = None) -> list[str]:
        """Functions held here that no other up node holds yet."""
        names = list(self.service.registry.functions) if names is None else names
        return [n for n in names if n in self.policy.functions and not self.policy.live_holders(n)]

    # -- routing (no Redis here) ------------------------------------------------------
    def here_ms(self, name: str) -> float | None:
        """Predicted completion of a request of `name` on this node; None if not held here."""
        if name not in self.service.registry.functions:
            return None
        if len(self.policy.holders.get(name, ())) <= 1:
            return 0.0  # nowhere else to go: no need to predict
        return self.service.scheduler.predict(name)["completion_ms"]

    # -- deploy and delete ---------------------------------------------------------------
    async def deploy(self, name: str, body: object) -> tuple[Function, bool]:
        check_name(name)
        from gateway import deploy

        spec = deploy.parse(name, body)  # a bad body is a 400 before anything changes
        assert isinstance(body, dict)
        version = await self.store.next_version()  # 503 here when Redis is away
        created = name not in self.policy.functions
        self._busy.add(name)
        try:
            fn, _ = await self.service.deploy(name, body, version=version)
            definition = await self._definition(fn, spec.model, body)
            try:
                async with self._view_lock:
                    won, value = await self.store.deploy(definition, self.name)
                    if won:
                        self.policy.function_defined(definition, {self.name: Hold(HoldState.HOST, value)})
            except RegistryDown:
                await self.service.remove(name)
                raise
            if not won:
                await self.service.remove(name)
                raise Conflict(f"function {name!r} was replaced concurrently by version {value}; this one was dropped")
        finally:
            self._busy.discard(name)
            with contextlib.suppress(RegistryDown):
                await self._refresh(name)  # what the registry says now, whoever won
        log.info("deployed %s version %d in the cluster", name, version)
        return fn, created

    async def remove(self, name: str) -> Function:
        # The registry decides, not this node's view: a deploy answered 201 on another node a moment
        # ago is in Redis before its event reaches this node, and deleting it must not answer 404.
        self._busy.add(name)
        try:
            async with self._view_lock:
                if not await self.store.delete(name, self.name):
                    raise NotFound(f"function {name!r} is not deployed")
                definition = self.policy.functions.get(name)
                self.policy.function_removed(name)
            if name in self.service.registry.functions:
                return await self.service.remove(name)
        finally:
            self._busy.discard(name)
        return _stub(definition, name)

    async def _definition(self, fn: Function, model: dict[str, Any], body: dict[str, Any]) -> FunctionDef:
        spec = {k: v for k, v in body.items() if k != "invoke_token"}
        artifact = None
        if "pt2" in fn.source:
            artifact = await asyncio.to_thread(transfer.file_sha256, fn.source["pt2"])
            spec["model"] = {"artifact": artifact}
        else:
            spec["model"] = dict(fn.source)
        try:
            info = await asyncio.to_thread(imagefile.read_info, self.service.images.path(fn.model_id))
            digest: str | None = info.digest
        except TorporError:
            digest = None  # no image file (yet): nodes fetching it check the chunks against the holder's header
        return FunctionDef(
            fn.name,
            fn.version,
            spec,
            [s.to_json() for s in fn.inputs],
            [s.to_json() for s in fn.outputs],
            fn.model_bytes,
            fn.invoke_token_sha256,
            artifact,
            self.name,
            digest,
        )

    # -- placement ------------------------------------------------------------------------
    def _prefetch(self, sha256: str) -> None:
        """Keep a copy of every user's .pt2 on disk: if its holders die, any node can rebuild it."""
        if sha256 in self._fetching:
            return

        async def fetch() -> None:
            try:
                artifacts = self.service.registry.artifacts
                if await asyncio.to_thread(transfer.find_artifact, artifacts, sha256) is None:
                    sources = [v.record.url for n, v in self.policy.nodes.items() if n != self.name]
                    await transfer.fetch_artifact(self.forwarder.client, sources, sha256, artifacts, self.cfg)
                self._artifacts.add(sha256)
            except TorporError as exc:
                log.warning("could not fetch artifact %s yet: %s", sha256[:16], exc.message)
            finally:
                self._fetching.pop(sha256, None)

        self._fetching[sha256] = asyncio.get_running_loop().create_task(fetch())

    async def _install(self, definition: FunctionDef, servable: asyncio.Event | None = None) -> None:
        """Bring a function's image here, as defined in the registry, and return once it is whole.

        From the nodes that hold it when there are any (range requests to all of them at once;
        `servable` is set as soon as requests can be served here, following the transfer);
        otherwise, or if that fails, built from its definition (a zoo config or the user's .pt2).
        """
        body = dict(definition.spec)
        source: dict[str, Any] = dict(body["model"])
        if definition.artifact_sha256:
            artifacts = self.service.registry.artifacts
            path = await asyncio.to_thread(transfer.find_artifact, artifacts, definition.artifact_sha256)
            if path is None:
                sources = [v.record.url for n, v in self.policy.nodes.items() if n != self.name]
                path = await transfer.fetch_artifact(
                    self.forwarder.client, sources, definition.artifact_sha256, artifacts, self.cfg
                )
            body["model"], source = {"path": str(path)}, {"pt2": str(path)}
        holders = self.image_holders(definition.name)
        if holders:
            try:
                arriving = await self.fetcher.start(definition, holders, source)
                if servable is not None:
                    servable.set()
                await arriving
                return
            except TorporError as exc:
                log.warning("%s: could not fetch its image (%s); building it here", definition.name, exc.message)
        await self.service.deploy(definition.name, body, version=definition.version)
        fn = self.service.registry.functions[definition.name]
        if fn.invoke_token_sha256 != definition.invoke_token_sha256:
            fn.invoke_token_sha256 = definition.invoke_token_sha256  # the token itself never leaves its deployer
            self.service.registry.save()

    def image_holders(self, name: str) -> list[Holder]:
        """Other nodes whose host memory holds the function's image (a draining one still serves it)."""
        names = self.policy.live_holders(name, (NodeState.UP, NodeState.DRAINING))
        return [Holder(n, self.policy.nodes[n].record.url) for n in names if n != self.name and n in self.policy.nodes]

    async def place_here(self, name: str) -> None:
        """Claim a replica of `name` on this node and bring its image here (Triton's plain `load` on a
        node that does not hold it). Returns once requests can be served here; the image may still be arriving."""
        definition = self.policy.functions.get(name)
        if definition is None:
            raise NotFound(f"function {name!r} is not deployed")
        if name in self.service.registry.functions or name in self._busy:
            return
        epoch = await self.store.claim(name, self.name, definition.version, "replica", self.cfg.max_replicas)
        if not epoch:
            raise Unavailable(
                f"function {name!r} was not placed on node {self.name}: it has --max-replicas "
                f"({self.cfg.max_replicas}) copies already, is being placed here, or was replaced"
            )
        log.info("claimed %s (asked here, epoch %d)", name, epoch)
        servable = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._place(definition, epoch, servable))
        self._placements.add(task)
        task.add_done_callback(self._placements.discard)
        await servable.wait()
        if name not in self.service.registry.functions:
            raise Unavailable(f"function {name!r} could not be placed on node {self.name} (see its log)")

    async def _claim(self, claim: Claim) -> None:
        definition = self.policy.functions.get(claim.function)
        if definition is None:
            return
        epoch = await self.store.claim(claim.function, self.name, definition.version, claim.mode, self.cfg.max_replicas)
        if not epoch:
            return
        log.info("claimed %s (%s, epoch %d)", claim.function, claim.mode, epoch)
        await self._place(definition, epoch)

    async def _place(self, definition: FunctionDef, epoch: int, servable: asyncio.Event | None = None) -> None:
        """Install a claimed function here, then confirm the claim (fenced by its epoch)."""
        name = definition.name
        self._busy.add(name)
        try:
            try:
                await self._install(definition, servable)
            except TorporError as exc:
                log.error("could not place %s here: %s", name, exc.message)
                await self.store.release(name, self.name, force=True)
                return
            if not await self.store.confirm(name, self.name, epoch, definition.version):
                log.warning("claim on %s (epoch %d) was fenced off; dropping the copy", name, epoch)
                await self._drop(name)
        except RegistryDown as exc:
            log.error("placing %s here: %s", name, exc.message)
        finally:
            self._busy.discard(name)
            if servable is not None:
                servable.set()  # also when it failed: the waiter sees it is not here
        with contextlib.suppress(RegistryDown):
            await self._refresh(name)

    async def _release(self, release: Release) -> None:
        if await self.store.release(release.function, self.name):
            log.info("released the idle replica of %s", release.function)
            await self._drop(release.function)

    async def _drop(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.service.remove(name)

    async def _placement(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.cfg.heartbeat_s)
            if self.state != NodeState.UP:
                continue
            try:
                for decision in self.policy.plan(self._host_used(), self.cfg.host_memory):
                    async with self._placing:
                        if self._stopping:
                            return
                        if isinstance(decision, Claim):
                            await self._claim(decision)
                        else:
                            await self._release(decision)
            except RegistryDown:
                continue
            except Exception:  # one bad placement must not stop the loop
                log.exception("placement step failed")

    # -- keeping the local view -------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while not self._stopping:
            try:
                await self._beat()
            except RegistryDown as exc:
                if self.policy.registry_reachable:
                    log.error("%s; serving what this node holds until it is back", exc.message)
                self.policy.reachability(False)
                self._joined = False
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.cfg.heartbeat_s)

    async def _beat(self) -> None:
        try:
            records = await self.store.heartbeat(self._record(), self.cfg.ttl_s)
        except RegistryLost as exc:
            log.warning("%s; declaring what this node holds again", exc.message)
            self._joined = False
            records = None
        if not self._joined:  # first contact, back after an outage, or Redis lost its data
            await self._rejoin()
        if records is None:
            records = await self.store.heartbeat(self._record(), self.cfg.ttl_s)
        self.policy.reachability(True)
        for name, rec in records.items():
            if rec is None:
                self.policy.node_missing(name)
            else:
                self.policy.node_seen(rec)

    async def _rejoin(self) -> None:
        """Declare every local image (a restarted node, or a Redis that lost its data) and resync."""
        await self.store.join()
        self._last_event = await self.store.last_event_id()
        for name, fn in list(self.service.registry.functions.items()):
            if name in self._busy:
                continue
            definition = self.policy.functions.get(name)
            if definition is None or definition.version != fn.version:
                definition = await self._definition(fn, fn.source, _body_of(fn))
            if await self.store.adopt(definition, self.name) < 0:
                log.info("%s was deleted or replaced while this node was away; dropping version %d", name, fn.version)
                await self._drop(name)
        await self._resync()
        self._joined = True
        self._synced.set()
        log.info("joined the cluster at %s as %s", self.store.where, self.name)

    async def _resync(self) -> None:
        async with self._view_lock:
            snapshot = await self._read(self.store.snapshot())
            now = self.policy.clock()
            for name in set(self.policy.functions) - set(snapshot.functions):
                # Deleted (a tombstone says so): gone at once. Missing without a tombstone: Redis
                # lost its data and the nodes holding the function have not declared it again
                # yet. Until each had a TTL to, requests for it still go where it was.
                since = self._undeclared_since.setdefault(name, now)
                if name in snapshot.tombstones or now - since >= self.cfg.ttl_s:
                    await self._apply(name, None, {})
            for name, (definition, holds) in snapshot.functions.items():
                await self._apply(name, definition, holds)

    async def _read(self, read: Awaitable[T]) -> T:
        """A read of the registry to apply; if Redis lost its data meanwhile, rejoin instead."""
        try:
            return await read
        except RegistryLost:
            self._joined = False  # the next heartbeat declares what this node holds again
            raise

    async def _resyncs(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.cfg.resync_s)
            if self._joined:
                with contextlib.suppress(RegistryDown):
                    await self._resync()

    async def _follow(self) -> None:
        while not self._stopping:
            if not self._joined:
                await asyncio.sleep(self.cfg.heartbeat_s)
                continue
            try:
                events = await self.store.events_after(self._last_event)
            except RegistryDown as exc:
                log.warning("event stream: %s", exc.message)
                self._joined = False
                continue
            names = []
            for eid, fields in events:
                self._last_event = eid
                if fields.get("name") not in names:
                    names.append(fields.get("name"))
            for name in names:
                with contextlib.suppress(RegistryDown):
                    await self._refresh(name)

    async def _refresh(self, name: str) -> None:
        async with self._view_lock:
            definition, holds = await self._read(self.store.function(name))
            await self._apply(name, definition, holds)

    async def _apply(self, name: str, definition: FunctionDef | None, holds: dict[str, Hold]) -> None:
        """Bring the local view, and this node's own copy, in line with the registry."""
        self._changed.set()
        self._undeclared_since.pop(name, None)
        if definition is None:
            self.policy.function_removed(name)
        else:
            self.policy.function_defined(definition, holds)
            if definition.artifact_sha256 and definition.artifact_sha256 not in self._artifacts:
                self._prefetch(definition.artifact_sha256)
        if name in self._busy or self._stopping:
            return  # a local operation on it is under way (it refreshes when done), or stopping
        local = self.service.registry.functions.get(name)
        if local is None:
            if definition is not None and self.name in holds and holds[self.name].state == HoldState.HOST:
                # Placed here but not here (e.g. lost with a deploy that Redis cut short): let go,
                # so that the function is placed elsewhere rather than forwarded here in vain.
                log.warning("%s is placed on this node but not held here; releasing the claim", name)
                await self.store.release(name, self.name, force=True)
            return
        if definition is None or definition.version != local.version or self.name not in holds:
            log.info("dropping the local copy of %s (version %d): no longer placed here", name, local.version)
            self._busy.add(name)
            try:
                await self._drop(name)
            finally:
                self._busy.discard(name)

    # -- what this node tells the others ------------------------------------------------------
    def _host_used(self) -> int:
        return sum(f.model_bytes for f in self.service.registry.functions.values())

    def _record(self) -> NodeRecord:
        svc = self.service
        sched = svc.scheduler
        resident = {m for d in sched.devices for m in d.resident}
        fns = svc.registry.functions
        return NodeRecord(
            name=self.name,
            url=self.cfg.advertise,
            state=self.state,
            ts=time.time(),
            devices=sum(d.online for d in sched.devices),
            host_used=self._host_used(),
            host_budget=self.cfg.host_memory,
            held=tuple(sorted(fns)),
            resident=tuple(sorted(n for n, f in fns.items() if f.model_id in resident)),
            queued=sched.queued(),
            running=sum(d.running is not None for d in sched.devices),
            exec_ms={n: round(s.exec.at(1), 3) for n, s in sched.functions.items()},
            shed=tuple(sorted(sched.admission.shed)) if sched.admission is not None else (),
        )

    def nodes_view(self) -> list[dict[str, Any]]:
        now = time.time()
        self.policy.node_seen(self._record())
        out = []
        for name in sorted(self.policy.nodes):
            rec = self.policy.nodes[name].record
            out.append(
                {
                    "node": name,
                    "url": rec.url,
                    "state": self.policy.state_of(name).value,
                    "heartbeat_age_s": round(max(0.0, now - rec.ts), 3),
                    "devices": rec.devices,
                    "host_used_bytes": rec.host_used,
                    "host_budget_bytes": rec.host_budget or None,
                    "holds": list(rec.held),
                    "resident": list(rec.resident),
                    "shed": list(rec.shed),  # refused by its admission now: the node is overloaded
                    "load": {"queued": rec.queued, "running": rec.running},
                }
            )
        return out


def _body_of(fn: Function) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": dict(fn.source),
        "slo_ms": fn.slo_ms,
        "timeout_ms": fn.timeout_ms,
        "slo_percentile": fn.slo_percentile,
        "max_batch_size": fn.max_batch_size,
        "drop_late": fn.drop_late,
        "heavy": fn.heavy,
        "input_spec": [s.to_json() for s in fn.inputs],
    }
    return body


def _stub(definition: FunctionDef | None, name: str) -> Function:
    """What DELETE answers when the function was held elsewhere only."""
    return Function(name, dict(definition.spec["model"]) if definition else {}, 0.0, (), (), 0)
