"""`torpor serve`: the gateway under uvicorn, workers started in the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from gateway.app import build_app
from gateway.service import Service
from shared.config import ServeConfig, format_size

if TYPE_CHECKING:
    from gateway.cluster.config import ClusterConfig


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGINT/SIGTERM after a graceful shutdown, which turns a
        # clean stop into a KeyboardInterrupt or a death by signal; we exit 0 instead.
        # A second signal still forces the exit (uvicorn's handle_exit).
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(cfg: ServeConfig, cluster_cfg: ClusterConfig | None = None) -> int:
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s gateway %(levelname)s %(message)s")
    log = logging.getLogger("torpor.gateway")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded request otherwise
    service = Service(cfg)
    log.info(
        "devices %s, %s each, %d compute thread(s) per CPU device, state in %s",
        ",".join(d.label for d in cfg.devices),
        format_size(service.budget),
        cfg.threads_per_device,
        cfg.state_dir,
    )
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.admin_token is None:
        log.warning(
            "listening on %s without --admin-token: anyone who can reach it can deploy and delete functions",
            cfg.host,
        )
    cluster = None
    if cluster_cfg is not None:
        from gateway.cluster.node import ClusterNode

        cluster = ClusterNode(cluster_cfg, service)
        where = cluster.store.where
        log.info("node %s of the cluster at %s, reachable at %s", cluster.name, where, cluster_cfg.advertise)
    config = uvicorn.Config(
        build_app(service, cluster),
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=False,  # per-request logging would cost more than the hop itself
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    try:
        server.run()
    finally:
        # If start-up failed half-way, lifespan shutdown may not have run.
        if not service.stopping:
            import asyncio

            asyncio.run(_cleanup(service))
    return 0 if server.started else 1


async def _cleanup(service: Service) -> None:
    service.stopping = True
    for fn in service.registry.functions.values():
        if fn.image is not None:
            fn.image.unlink()
    for name in list(service.pool.arenas.values()):
        from shared import shm

        shm.unlink(name)
