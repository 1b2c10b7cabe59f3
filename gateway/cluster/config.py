"""`torpor serve --cluster ...`: one typed config for the cluster layer, checked at start."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import InvalidInput


@dataclass(frozen=True)
class ClusterConfig:
    redis_url: str  # redis://[user:password@]host:port/db, rediss:// for TLS
    node: str  # this node's name in the cluster
    advertise: str  # how the other nodes reach this one
    token: str  # every node-to-node call carries it
    host_memory: int = 0  # budget for host images; 0 = no limit
    max_replicas: int = 3  # host copies of one function across the cluster; 1 = no replicas
    heartbeat_s: float = 0.5
    ttl_s: float = 3.0  # a node silent this long is down
    resync_s: float = 5.0  # full re-read of the registry, besides the event stream
    drain_s: float = 10.0  # how long a stopping node waits for its images to find another home


def cluster_config(
    url: str,
    node: str | None,
    advertise: str | None,
    token: str | None,
    host: str,
    port: int,
    host_memory: int,
    max_replicas: int = 3,
) -> ClusterConfig:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise InvalidInput(f"--cluster: expected redis://[user:password@]host:port/db or rediss://..., got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"--cluster: bad port in {url!r}") from exc
    if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
        raise InvalidInput(f"--cluster: the database must be a number, got {parts.path!r}")
    if not token or len(token) < 16:
        raise InvalidInput("--cluster-token: a cluster needs a shared token of at least 16 characters")
    reachable = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
    advertise = (advertise or f"http://{reachable}:{port}").rstrip("/")
    if urlsplit(advertise).scheme not in ("http", "https"):
        raise InvalidInput(f"--advertise: expected an http(s) URL, got {advertise!r}")
    name = node or f"{reachable}:{port}"
    if not name or any(c.isspace() for c in name) or len(name) > 128:
        raise InvalidInput(f"--node: expected a name without spaces of at most 128 characters, got {name!r}")
    if not 1 <= max_replicas <= 64:
        raise InvalidInput(f"--max-replicas: expected 1 to 64, got {max_replicas}")
    return ClusterConfig(url, name, advertise, token, host_memory, max_replicas)
