"""The running torpor service: registry, host model store, workers and dispatcher together.

Owns every shared-memory segment it creates; `stop` releases them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from gateway import deploy, devicefacts, progress
from gateway.costmodel import Topology
from gateway.decisions import Stages
from gateway.dispatcher import Dispatcher, Invocation, Limits, Outcome
from gateway.hosttier import HostTier, Tier
from gateway.metrics import Metrics
from gateway.registry import READY, REGISTRY_FILE, UNAVAILABLE, UNLOADED, Function, Registry, check_name
from gateway.scheduler import POLICIES, FunctionInfo, Scheduler
from gateway.tiers import Tiers
from gateway.workers import WorkerPool
from shared import shm
from shared.config import ServeConfig, format_size
from shared.errors import DoesNotFit, InvalidInput, TorporError, Unavailable
from shared.imagestore import ImageStore
from shared.modelstore import ModelImage
from shared.protocol import Forget, Prepare, Stats, prepare_record

log = logging.getLogger("torpor.gateway")

CPU_DEFAULT_BUDGET = 1 << 30
DEMO = (
    ("mlp", "mlp", 50.0),
    ("resnet18", "resnet18", 500.0),
    ("resnet50", "resnet50", 1000.0),
    ("bert", "bert-base", 2000.0),
)


class StartupError(Exception):
    """The server cannot start: the message names the cause and the fix, in one line."""


class Service:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        # None on GPUs without --device-memory: each worker sizes its arena from its free memory.
        self.budget: int | None = cfg.device_memory or default_budget(cfg)
        self.registry = Registry(cfg.state_dir)
        self.images = ImageStore(cfg.state_dir / "images")
        self.host = HostTier(cfg.host_memory)
        self.pool = WorkerPool(cfg, self.budget, self._worker_lost)
        self.policy = replace(POLICIES["torpor"], admit_utilization=cfg.admit_utilization, split=cfg.split)
        # Provisional until the workers report their devices (start): no function is added before.
        self.scheduler = Scheduler(Topology.flat([self.budget or 0] * len(cfg.devices)), time.monotonic, self.policy)
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.scheduler, self.pool, Limits(cfg.max_queue, cfg.max_queued), self.metrics)
        self.metrics.attach(self)
        self.tiers = Tiers(self.images, self.host, self.registry, self.pool, self.dispatcher)
        self.dispatcher.fill_source = self.tiers.fill_source
        self._deploy_lock = asyncio.Lock()
        self._restarting: set[int] = set()
        self._restarts: set[asyncio.Task[None]] = set()
        self.transitions: dict[str, str] = {}  # function -> LOADING / UNLOADING while it changes
        self.ready = False
        self.stopping = False

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Reclaim, start the workers, restore saved functions, deploy the demo; then ready.

        A failure that leaves nothing to serve raises StartupError (cause and fix in one line);
        the caller still runs `stop`, which releases whatever was created so far.
        """
        # A crashed run's model images are spared for adoption; everything else it left goes.
        for name in shm.reclaim_stale(spare=lambda n: "-model-" in n):
            log.warning("reclaimed shared memory %s left by a crashed run", name)
        saved = self._saved_functions()
        deploy.start_builders()
        # Host images come back (adopted from shared memory, or read from the state dir)
        # while the workers start: one is I/O, the other mostly importing torch.
        bring_in = asyncio.ensure_future(asyncio.to_thread(self.tiers.bring_back, saved))
        try:
            await self.pool.start_all()
        except (TorporError, OSError) as exc:
            memory = f"--device-memory ({format_size(self.budget)} per device)" if self.budget else "the arenas"
            raise StartupError(
                f"the device workers could not start ({_message(exc)}); check --devices and that "
                f"{memory} fits in this machine's memory"
            ) from exc
        finally:
            images, disk_bandwidth = await bring_in  # never raises: an unusable image is rebuilt instead
        for name in shm.reclaim_stale(spare=self.images.spare):
            log.warning("reclaimed shared memory %s left by a crashed run", name)
        self._adopt_devices()
        if disk_bandwidth is not None:
            self.scheduler.cost.disk_bandwidth = disk_bandwidth
        with progress.Steps("restoring function", len(saved), log) as steps:
            for fn in saved:
                steps.step(fn.name)
                await self._restore(fn, images.get(fn.name))
        if self.cfg.demo:
            await self._deploy_demo()
        self.ready = True

    def _saved_functions(self) -> list[Function]:
        state_dir = self.cfg.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            probe = state_dir / ".write-check"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StartupError(
                f"cannot write the state directory {state_dir} ({exc.strerror or exc}); give a writable --state-dir"
            ) from exc
        path = state_dir / REGISTRY_FILE
        try:
            return self.registry.load()
        except (OSError, ValueError, KeyError, TypeError, TorporError) as exc:
            raise StartupError(
                f"cannot read {path} ({_message(exc)}); repair it, or move it away to start with no functions"
            ) from exc

    async def _restore(self, fn: Function, image: tuple[ModelImage, str] | None) -> None:
        """Bring back a saved function, from its image if it has one; one that cannot be built stays UNAVAILABLE."""
        if fn.reason == UNLOADED:
            self.registry.functions[fn.name] = fn  # unloaded by the user: stays so until loaded
            return
        fn.state, fn.reason = READY, ""  # it may have failed to restore last time: try again
        try:
            if image is not None:
                await self.serve_image(fn, *image)
            else:
                await self._install(fn, fn.source, persist=False, input_spec=fn.inputs or None)
        except TorporError as exc:
            log.error("could not restore function %s: %s", fn.name, exc.message)
            fn.image, fn.state, fn.reason = None, UNAVAILABLE, f"could not be restored: {exc.message}"
            self.registry.functions[fn.name] = fn

    async def _deploy_demo(self) -> None:
        for name, zoo_name, slo in DEMO:
            if name in self.registry.functions:
                continue
            log.info("deploying demo function %s (%s)", name, zoo_name)
            try:
                await self.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": slo})
            except DoesNotFit as exc:
                log.warning("skipping demo function %s: %s", name, exc.message)
            except TorporError as exc:
                raise StartupError(f"demo function {name} could not be deployed ({exc.message})") from exc

    async def serve_image(self, fn: Function, image: ModelImage, tier: str) -> None:
        """Serve a function from its image (host memory, disk tier, or arriving from other nodes: a
        feed in `tiers.feeds`, disk to the scheduler so its first swap follows it); specs and timing given."""
        fn.image = image
        try:
            await self._prepare_everywhere(fn)
        except BaseException:
            await self.pool.broadcast(Forget(model_id=fn.model_id))
            image.unlink()
            raise
        self.registry.functions[fn.name] = fn
        self.dispatcher.function_added(function_info(fn))
        self.host.add(fn.name, fn.model_bytes, time.monotonic())
        if tier == Tier.DISK:
            self.dispatcher.apply(self.scheduler.host_tier(fn.name, Tier.DISK))
        self.dispatcher.settle()  # free device memory takes the model before its first request

    async def stop(self) -> None:
        self.stopping = True
        self.ready = False
        # A worker restart under way would start a process after stop_all has reaped the pool.
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        await self.dispatcher.drain()
        await self.pool.stop_all()
        for fn in self.registry.functions.values():
            if fn.image is not None:
                fn.image.unlink()
        for name in shm.owned_by(_pid()):
            shm.unlink(name)

    def _adopt_devices(self) -> None:
        """The scheduler's topology from what the workers measured (READY and PEERS replies)."""
        facts = [self.pool.facts[i] for i in range(len(self.cfg.devices))]
        topology = devicefacts.topology(facts)
        self.scheduler = Scheduler(topology, time.monotonic, self.policy)
        self.dispatcher.scheduler = self.scheduler
        self.budget = min(topology.capacities)
        log.info(
            "devices: %s",
            "; ".join(
                f"{f.device}: {f.kind} {format_size(f.budget)}"
                + (f", host {f.host_gbps:.1f} GB/s" if f.host_gbps else "")
                + (f", PCIe switch {topology.switches[f.device]}" if f.kind == "cuda" else "")
                for f in facts
            ),
        )
        if topology.links:
            log.info("direct links: %s", {k: f"{v / 1e9:.0f} GB/s" for k, v in topology.links.items()})

    # -- functions -----------------------------------------------------------------
    async def deploy(self, name: str, body: object, version: int | None = None) -> tuple[Function, bool]:
        """`version`: given by the cluster's registry; a single node counts its own."""
        check_name(name)
        spec = deploy.parse(name, body)
        self.transitions[name] = "LOADING"
        try:
            return await self._deploy(name, spec, version)
        finally:
            self.transitions.pop(name, None)

    async def _deploy(self, name: str, spec: deploy.DeploySpec, version: int | None) -> tuple[Function, bool]:
        async with self._deploy_lock:
            old = self.registry.functions.get(name)
            source = dict(spec.model)
            if "path" in source:
                artifact = await asyncio.to_thread(
                    deploy.store_artifact, source.pop("path"), self.registry.artifacts, name
                )
                source = {"pt2": str(artifact)}
            fn = Function(
                name,
                source,
                spec.slo_ms,
                (),
                (),
                0,
                timeout_ms=spec.timeout_ms,
                invoke_token_sha256=token_digest(spec.invoke_token) if spec.invoke_token else None,
                version=version or ((old.version + 1) if old else 1),
                slo_percentile=spec.slo_percentile,
                max_batch_size=spec.max_batch_size,
                drop_late=spec.drop_late,
                heavy=spec.heavy,
            )
            await self._install(fn, source, persist=True, input_spec=spec.input_spec)
            return fn, old is None

    async def _install(self, fn: Function, source: dict[str, Any], persist: bool, input_spec: Any = None) -> None:
        started = time.perf_counter()
        assert self.budget is not None, "set from the workers' facts at start"
        built = await deploy.build(
            source,
            fn.model_id,
            self.images.segment(fn.model_id),
            self.budget,
            input_spec,
            fn.max_batch_size,
            self.cfg.threads_per_device,
            self._profile_device(),
            self.cfg.log_level,
        )
        fn.inputs, fn.outputs, fn.image, fn.model_bytes = built.inputs, built.outputs, built.image, built.image.nbytes
        fn.timing = built.timing
        try:
            # Once per deploy: a restart reads (or adopts) this instead of building the model.
            await asyncio.to_thread(self.images.save, fn.model_id, built.image)
            await self._prepare_everywhere(fn)
            old = self.registry.functions.get(fn.name)
            self.registry.functions[fn.name] = fn
            if persist:
                try:
                    self.registry.save()
                except OSError as exc:
                    if old is None:
                        del self.registry.functions[fn.name]
                    else:
                        self.registry.functions[fn.name] = old
                    raise Unavailable(f"could not persist the registry: {exc}") from exc
        except BaseException:
            await self.pool.broadcast(Forget(model_id=fn.model_id))
            built.image.unlink()
            self.images.remove(fn.model_id)
            raise
        if old is not None and old is not fn:  # `load` installs the registry's own entry again
            await self._retire(old)
        self.dispatcher.function_added(function_info(fn))
        self.host.add(fn.name, fn.model_bytes, time.monotonic())
        try:
            await self.tiers.make_room(0, keep=fn.name)  # the new image is in host memory already
        except Unavailable as exc:
            log.warning("%s; host memory is over its bound until images are free", exc.message)
        self.dispatcher.settle()  # free device memory takes the model before its first request
        self.metrics.function_deployed(fn.name, fn.slo_ms, time.perf_counter() - started)
        log.info(
            "deployed %s (%s, %s) in %.2f s",
            fn.name,
            _describe(source),
            format_size(fn.model_bytes),
            time.perf_counter() - started,
        )

    async def _prepare_everywhere(self, fn: Function) -> None:
        results = await self.pool.broadcast(prepare_frame(fn))
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            err = errors[0]
            raise err if isinstance(err, InvalidInput) else InvalidInput(f"model: workers could not load it: {err}")
        # Every worker cuts the same program the same way: the first one's cuts serve.
        fn.stages = next((tuple(Stages(tuple(c.cuts), tuple(c.sizes)) for c in r.stages) for r in results), ())

    async def remove(self, name: str, reason: str = "removed") -> Function:
        """`reason`: what requests still waiting for it are told (see Dispatcher.function_removed)."""
        self.registry.get(name)  # 404 before anything changes
        self.transitions[name] = "UNLOADING"
        try:
            return await self._remove(name, reason)
        finally:
            self.transitions.pop(name, None)

    async def _remove(self, name: str, reason: str) -> Function:
        async with self._deploy_lock:
            fn = self.registry.get(name)
            del self.registry.functions[name]
            try:
                self.registry.save()
            except OSError as exc:  # nothing changed: it stays deployed
                self.registry.functions[name] = fn
                raise Unavailable(f"could not persist the registry: {exc}") from exc
            await self._retire(fn, reason=reason)
            self.metrics.function_removed(name)
            return fn

    async def unload(self, name: str) -> Function:
        """Free the function's host and device memory; its config and model source stay (UNAVAILABLE).

        Requests waiting for it are answered 503 naming the load call; `load` brings it back, the same version.
        """
        self.registry.get(name)  # 404 before anything changes
        self.transitions[name] = "UNLOADING"
        try:
            async with self._deploy_lock:
                fn = self.registry.get(name)
                if fn.reason == UNLOADED:
                    return fn  # as Triton: unloading an unloaded model succeeds
                previous, was_ready = (fn.state, fn.reason), fn.ready
                # Unloaded on purpose, it is no longer retried at start (as one that failed to restore is).
                fn.state, fn.reason = UNAVAILABLE, UNLOADED
                try:
                    self.registry.save()
                except OSError as exc:
                    fn.state, fn.reason = previous
                    raise Unavailable(f"could not persist the registry: {exc}") from exc
                if was_ready:
                    await self._retire(fn, keep_image=True, unloaded=True)  # to the disk tier: load reads it back
                    fn.image = None
                    log.info("unloaded %s (version %d)", name, fn.version)
                return fn
        finally:
            self.transitions.pop(name, None)

    async def load(self, name: str) -> Function:
        """Rebuild an unloaded function from its saved config and model source (zoo seed or .pt2 artifact)."""
        if self.registry.get(name).ready:
            return self.registry.get(name)
        self.transitions[name] = "LOADING"
        try:
            async with self._deploy_lock:
                fn = self.registry.get(name)
                if not fn.ready:
                    previous = fn.state, fn.reason
                    fn.state, fn.reason = READY, ""
                    try:
                        await self._load(fn)
                    except BaseException:
                        fn.image = None
                        fn.state, fn.reason = previous
                        raise
                return fn
        finally:
            self.transitions.pop(name, None)

    async def _load(self, fn: Function) -> None:
        """From the image unload left on disk (no build, no profiling); rebuilt if there is none."""
        try:
            got = await asyncio.to_thread(self.images.bring_in, fn.model_id) if self.images.has(fn.model_id) else None
        except (TorporError, OSError) as exc:
            log.error("image of %s unusable (%s); rebuilding it", fn.name, _message(exc))
            got = None
        if got is None:
            await self._install(fn, fn.source, persist=True, input_spec=fn.inputs or None)
            return
        await self.serve_image(fn, got.image, Tier.HOST)
        try:
            self.registry.save()
        except OSError as exc:
            await self._retire(fn, keep_image=True)
            raise Unavailable(f"could not persist the registry: {exc}") from exc
        try:
            await self.tiers.make_room(0, keep=fn.name)
        except Unavailable as exc:
            log.warning("%s; host memory is over its bound until images are free", exc.message)

    async def _retire(
        self, fn: Function, keep_image: bool = False, unloaded: bool = False, reason: str = "removed"
    ) -> None:
        self.dispatcher.function_removed(fn.name, "unloaded" if unloaded else reason)
        await self.pool.broadcast(Forget(model_id=fn.model_id))
        if fn.image is not None:
            fn.image.unlink()  # workers that still map it keep their mapping until they forget it
        if not keep_image:
            self.images.remove(fn.model_id)
        self.host.remove(fn.name)

    # -- requests ------------------------------------------------------------------
    async def invoke(self, fn: Function, inputs: list[dict[str, Any]], timeout_s: float | None = None) -> Outcome:
        if self.stopping:
            raise Unavailable("the server is shutting down")
        if not fn.ready:
            raise Unavailable(
                f"function {fn.name!r} is {fn.state} ({fn.reason}); "
                f"load it with POST /v2/repository/models/{fn.name}/load"
            )
        self.host.touch(fn.name, time.monotonic())
        inv = Invocation(fn.name, inputs, [o.name for o in fn.outputs], timeout_s or fn.timeout_ms / 1e3)
        return await self.dispatcher.invoke(inv)

    # -- workers -------------------------------------------------------------------
    def _worker_lost(self, device: int, reason: str) -> None:
        log.error("device %d lost: %s", device, reason)
        self.dispatcher.device_lost(device)
        # One restart loop per device: a worker that dies while restarting is retried by it.
        if not self.stopping and device not in self._restarting:
            self._restarting.add(device)
            task = asyncio.get_running_loop().create_task(self._restart(device))
            self._restarts.add(task)
            task.add_done_callback(lambda t: (self._restarting.discard(device), self._restarts.discard(t)))

    async def _restart(self, device: int) -> None:
        """Start the device's worker again, backing off while it keeps failing to start."""
        delay = 0.5
        while not self.stopping:
            try:
                await self.pool.start(device)
                client = self.pool.client(device)
                for fn in list(self.registry.functions.values()):
                    if fn.image is not None:
                        await client.call(prepare_frame(fn))
                await self.pool.exchange_peers()  # a new CUDA arena has a new IPC handle
            except TorporError as exc:
                log.error("could not restart device %d: %s; trying again in %.1f s", device, exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.dispatcher.apply(self.scheduler.device_added(device))
            log.info("device %d restarted", device)
            return

    def _profile_device(self) -> str | None:
        """Where deploy-time profiling runs: the first GPU when serving GPUs, else the CPU."""
        first = self.cfg.devices[0]
        return f"cuda:{first.index}" if first.kind == "cuda" else None

    def schedule_view(self, fn: Function) -> dict[str, Any] | None:
        """The scheduler's view of a function: profile, urgency and predicted cost of a request now."""
        state = self.scheduler.functions.get(fn.name)
        if state is None:
            return None
        predicted = {k: round(v, 3) for k, v in self.scheduler.predict(fn.name).items()}
        return {
            "exec_ms": round(state.exec.batch1_ms, 3),
            "batch_exec_ms": round(state.exec.batch_max_ms, 3) if state.exec.batch_max_ms else None,
            "heavy": state.info.heavy,
            "slowdown_under_copy": round(fn.timing.slowdown, 3) if fn.timing else None,
            "rrc": round(self.scheduler.rrc(fn.name), 3),
            "shed": not self.scheduler.admits(fn.name),
            "predicted": predicted,
        }

    async def device_stats(self) -> list[dict[str, Any]]:
        out = []
        for i, spec in enumerate(self.cfg.devices):
            d = self.scheduler.devices[i]
            entry: dict[str, Any] = {
                "device": i,
                "kind": spec.kind,
                "label": spec.label,
                "online": d.online,
                "pid": self.pool.handles[i].process.pid if i in self.pool.handles else None,
                "busy": d.running is not None,
                "budget_bytes": d.layout.capacity,
                "resident_bytes": d.layout.used,
                "resident": list(d.resident),
            }
            with contextlib.suppress(TorporError, asyncio.TimeoutError):
                stats = await self.pool.client(i).call(Stats(), timeout=2.0)
                keys = ("compute_threads", "copy_threads", "backend", "counters", "link_gbps", "gpu", "nvml")
                entry.update({k: getattr(stats, k) for k in keys if getattr(stats, k) is not None})
                # What the worker itself holds (a split's share included), beside the scheduler's view.
                entry["worker_resident"] = [{"model_id": r.model_id, "bytes": r.bytes} for r in stats.resident]
            out.append(entry)
        return out


def prepare_frame(fn: Function) -> Prepare:
    """What a worker needs to make the function's program: its source and where its image is."""
    assert fn.image is not None
    return prepare_record(fn.model_id, fn.source, fn.image)


def function_info(fn: Function) -> FunctionInfo:
    """What the scheduler knows of a function: its SLO, size and profiled timing."""
    t = fn.timing
    return FunctionInfo(
        fn.name,
        fn.model_id,
        fn.model_bytes,
        slo_ms=fn.slo_ms,
        percentile=fn.slo_percentile / 100,
        # Unprofiled: a guess the live runs correct (see ExecProfile.observe).
        exec_ms=t.exec_ms if t else 10.0,
        batch_exec_ms=t.batch_exec_ms if t else None,
        max_batch_size=fn.max_batch_size,
        drop_late=fn.drop_late,
        heavy=fn.heavy if fn.heavy is not None else (t.heavy if t else True),
        stages=fn.stages,
    )


def token_digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def default_budget(cfg: ServeConfig) -> int | None:
    """A CPU device's arena is created here, so it needs a size; a GPU worker sizes its own (None)."""
    return CPU_DEFAULT_BUDGET if any(d.kind == "cpu" for d in cfg.devices) else None


def _describe(source: dict[str, Any]) -> str:
    return f"zoo:{source['zoo']}" if "zoo" in source else "pt2"


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, TorporError) else (str(exc) or type(exc).__name__)


def _pid() -> int:
    import os

    return os.getpid()
