"""`torpor serve`: bind the port, start the service (workers, functions), then serve HTTP under uvicorn.

Start-up runs before uvicorn so that a failure is one line on stderr and exit code 2,
with the workers stopped and the shared memory released, never a lifespan traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import uvicorn

from gateway.app import build_app
from gateway.service import Service, StartupError
from shared import shm
from shared.config import ServeConfig, format_size
from shared.errors import TorporError

STARTUP_FAILED = 2

if TYPE_CHECKING:
    from gateway.cluster.config import ClusterConfig
    from gateway.cluster.node import ClusterNode


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
    try:
        sock = bind(cfg.host, cfg.port)
    except StartupError as exc:
        return _fail(str(exc))
    try:
        service = Service(cfg)
    except (TorporError, OSError, RuntimeError) as exc:  # e.g. the GPUs cannot be queried
        sock.close()
        return _fail(f"the devices {','.join(d.label for d in cfg.devices)} cannot be used ({exc}); check --devices")
    log.info(
        "devices %s, %s each, %d compute thread(s) per CPU device, state in %s",
        ",".join(d.label for d in cfg.devices),
        format_size(service.budget) if service.budget else "free memory less a reserve",
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
        proxy_headers=False,  # nothing reads the client address, so no layer rewrites it per request
        server_header=False,  # one header less per response, and no software version advertised
        lifespan="off",  # the service starts and stops in _run, around uvicorn
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(_run(service, server, sock, cluster))
    except StartupError as exc:
        return _fail(str(exc))
    except (asyncio.CancelledError, KeyboardInterrupt):
        return 0  # stopped by a signal while starting: a clean stop
    finally:
        sock.close()
        # A model still being packed in a thread when start-up stopped writes its segment after
        # `stop` swept; asyncio.run has joined that thread by now.
        for name in shm.owned_by(os.getpid()):
            shm.unlink(name)


async def _run(service: Service, server: _Server, sock: socket.socket, cluster: ClusterNode | None = None) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    # Until uvicorn takes the signals over, SIGINT/SIGTERM stop the start-up (and clean up below).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    try:
        try:
            await service.start()
            if cluster is not None:
                await cluster.start()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        # What start-up built lives as long as the server: kept out of the collector's full
        # passes, which otherwise walk it every few thousand requests (~25 ms each here).
        gc.collect()
        gc.freeze()
        await server.serve(sockets=[sock])
    finally:
        if cluster is not None:
            await cluster.stop()  # hands this node's images over before the workers go
        await service.stop()
    return 0 if server.started else 1


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (a dependency), else asyncio's.

    `uvicorn.run` would choose it by itself, but start-up runs first on our own loop,
    so the choice is made here: on the inference hot path uvloop's C transports
    cost about half of what asyncio's selector transports cost per request.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind(host: str, port: int) -> socket.socket:
    """The listening address, taken before anything starts so that a busy port fails fast."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve --host {host!r} ({exc.strerror}); give an address of this machine") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port} ({exc.strerror}); stop whatever uses it or pick another --port"
        ) from exc
    return sock


def _fail(message: str) -> int:
    print(f"torpor serve: {message}", file=sys.stderr, flush=True)
    return STARTUP_FAILED
