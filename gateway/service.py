"""The running torpor service: registry, host model store, workers and dispatcher together.

Owns every shared-memory segment it creates; `stop` releases them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from gateway import deploy, progress
from gateway.costmodel import GB, Topology
from gateway.dispatcher import Dispatcher, Invocation, Limits, Outcome
from gateway.metrics import Metrics
from gateway.registry import Function, Registry, check_name
from gateway.scheduler import FunctionInfo, Scheduler
from gateway.workers import WorkerPool
from shared import shm
from shared.config import ServeConfig, format_size
from shared.errors import InvalidInput, TorporError, Unavailable
from shared.protocol import Kind

log = logging.getLogger("torpor.gateway")

CPU_DEFAULT_BUDGET = 1 << 30
NVLINK_BYTES_PER_S = 25 * GB  # one NVLink 2 link, one direction (V100)
DEMO = (
    ("mlp", "mlp", 50.0),
    ("resnet18", "resnet18", 500.0),
    ("resnet50", "resnet50", 1000.0),
    ("bert", "bert-base", 2000.0),
)


class Service:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.budget = cfg.device_memory or default_budget(cfg)
        self.registry = Registry(cfg.state_dir)
        self.pool = WorkerPool(cfg, self.budget, self._worker_lost)
        self.scheduler = Scheduler(live_topology(cfg, self.budget), time.monotonic)
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.scheduler, self.pool, Limits(cfg.max_queue, cfg.max_queued), self.metrics)
        self.metrics.attach(self)
        self._deploy_lock = asyncio.Lock()
        self._restarting: set[int] = set()
        self.transitions: dict[str, str] = {}  # function -> LOADING / UNLOADING while it changes
        self.ready = False
        self.stopping = False

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        for name in shm.reclaim_stale():
            log.warning("reclaimed shared memory %s left by a crashed run", name)
        await self.pool.start_all()
        saved = self.registry.load()
        with progress.Steps("restoring function", len(saved), log) as steps:
            for fn in saved:
                steps.step(fn.name)
                try:
                    await self._install(fn, fn.source, persist=False)
                except TorporError as exc:
                    log.error("could not restore function %s: %s", fn.name, exc.message)
        if self.cfg.demo:
            for name, zoo_name, slo in DEMO:
                if name not in self.registry.functions:
                    log.info("deploying demo function %s (%s)", name, zoo_name)
                    await self.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": slo})
        self.ready = True

    async def stop(self) -> None:
        self.stopping = True
        self.ready = False
        await self.dispatcher.drain()
        await self.pool.stop_all()
        for fn in self.registry.functions.values():
            if fn.image is not None:
                fn.image.unlink()
        for name in shm.owned_by(_pid()):
            shm.unlink(name)

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
        built = await asyncio.to_thread(
            deploy.build,
            source,
            fn.model_id,
            self.budget,
            input_spec,
            fn.max_batch_size,
            self.cfg.threads_per_device,
            self._profile_device(),
        )
        fn.inputs, fn.outputs, fn.image, fn.model_bytes = built.inputs, built.outputs, built.image, built.image.nbytes
        fn.timing = built.timing
        try:
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
            await self.pool.broadcast(Kind.FORGET, {"model_id": fn.model_id})
            built.image.unlink()
            raise
        if old is not None:
            await self._retire(old)
        self.dispatcher.function_added(function_info(fn))
        self.metrics.function_deployed(fn.name, fn.slo_ms, time.perf_counter() - started)
        log.info(
            "deployed %s (%s, %s) in %.2f s",
            fn.name,
            _describe(source),
            format_size(fn.model_bytes),
            time.perf_counter() - started,
        )

    async def _prepare_everywhere(self, fn: Function) -> None:
        assert fn.image is not None
        body = {"model_id": fn.model_id, "source": fn.source, "image": fn.image.to_wire()}
        results = await self.pool.broadcast(Kind.PREPARE, body)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            err = errors[0]
            raise err if isinstance(err, InvalidInput) else InvalidInput(f"model: workers could not load it: {err}")

    async def remove(self, name: str) -> Function:
        self.registry.get(name)  # 404 before anything changes
        self.transitions[name] = "UNLOADING"
        try:
            return await self._remove(name)
        finally:
            self.transitions.pop(name, None)

    async def _remove(self, name: str) -> Function:
        async with self._deploy_lock:
            fn = self.registry.get(name)
            del self.registry.functions[name]
            self.registry.save()
            await self._retire(fn)
            self.metrics.function_removed(name)
            return fn

    async def _retire(self, fn: Function) -> None:
        self.dispatcher.function_removed(fn.name)
        await self.pool.broadcast(Kind.FORGET, {"model_id": fn.model_id})
        if fn.image is not None:
            fn.image.unlink()  # workers that still map it keep their mapping until they forget it

    # -- requests ------------------------------------------------------------------
    async def invoke(self, fn: Function, inputs: list[dict[str, Any]], timeout_s: float | None = None) -> Outcome:
        if self.stopping:
            raise Unavailable("the server is shutting down")
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
            task.add_done_callback(lambda _: self._restarting.discard(device))

    async def _restart(self, device: int) -> None:
        """Start the device's worker again, backing off while it keeps failing to start."""
        delay = 0.5
        while not self.stopping:
            try:
                await self.pool.start(device)
                client = self.pool.client(device)
                for fn in list(self.registry.functions.values()):
                    if fn.image is not None:
                        await client.call(
                            Kind.PREPARE, {"model_id": fn.model_id, "source": fn.source, "image": fn.image.to_wire()}
                        )
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
                stats = await self.pool.client(i).call(Kind.STATS, {}, timeout=2.0)
                entry.update(
                    {
                        k: stats[k]
                        for k in ("compute_threads", "copy_threads", "backend", "counters", "link_gbps", "gpu", "nvml")
                        if k in stats
                    }
                )
            out.append(entry)
        return out


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
    )


def live_topology(cfg: ServeConfig, budget: int) -> Topology:
    """CPU devices share nothing; GPUs are grouped by PCIe switch and linked as NVML reports."""
    capacities = [budget] * len(cfg.devices)
    if all(d.kind == "cpu" for d in cfg.devices):
        return Topology.flat(capacities)
    from gpuworker.backends.topology import gpu_report

    ordinals = [d.index for d in cfg.devices]
    reports = [gpu_report(o) for o in ordinals]
    switch = list(range(len(ordinals)))
    links: dict[tuple[int, int], float] = {}
    for i, report in enumerate(reports):
        for other, link in report["links"].items():
            if other not in ordinals:
                continue
            j = ordinals.index(other)
            if link["pcie"] in ("same_board", "same_pcie_switch"):
                switch[j] = switch[i] = min(switch[i], switch[j])
            if link["nvlinks"] and i < j:
                links[(i, j)] = link["nvlinks"] * NVLINK_BYTES_PER_S
    return Topology(tuple(capacities), tuple(switch), links=links)


def token_digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def default_budget(cfg: ServeConfig) -> int:
    if all(d.kind == "cpu" for d in cfg.devices):
        return CPU_DEFAULT_BUDGET
    from gpuworker.backends import cuda_free_memory

    reserve = 2 << 30  # room for activations and the framework's own allocations
    return max(1 << 30, min(cuda_free_memory(d.index) for d in cfg.devices) - reserve)


def _describe(source: dict[str, Any]) -> str:
    return f"zoo:{source['zoo']}" if "zoo" in source else "pt2"


def _pid() -> int:
    import os

    return os.getpid()
