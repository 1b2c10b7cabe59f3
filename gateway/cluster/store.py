"""The cluster's state in Redis: definitions, holders, node records and the event stream.

One client per node with a bounded connection pool for commands, and a second client for the
blocking stream read, so a read that waits for events never holds up a heartbeat. Every
command has a socket timeout instead of being cancelled half-way (a cancelled command can
leave a pooled connection with an unread reply). Foreign errors leave as `RegistryDown`.

A Redis that restarted empty (or was flushed) answers like any other: the registry's
incarnation, a random id written by the first node to join it, tells the two apart. Once a
node has joined, every read it applies to its view carries the incarnation, and one from
another incarnation raises `RegistryLost` instead of telling the node its functions are gone.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.cluster import scripts
from gateway.cluster.records import FunctionDef, Hold, NodeRecord
from shared.errors import Unavailable

TAG = "{torpor}"  # one hash tag: every key in one slot, so the scripts run on Redis Cluster too
FNS, EPOCH, VERSION, EVENTS, TOMBS, NODES, INCARNATION = (
    f"{TAG}:{k}" for k in ("fns", "epoch", "version", "events", "tombs", "nodes", "incarnation")
)
STREAM_MAXLEN = 10_000


def place_key(name: str) -> str:
    return f"{TAG}:place:{name}"


def node_key(name: str) -> str:
    return f"{TAG}:node:{name}"


class RegistryDown(Unavailable):
    """Redis did not answer: changes to the cluster must wait; serving goes on."""


class RegistryLost(RegistryDown):
    """Redis answers, but without the data this node joined: it restarted empty or was flushed."""


class Snapshot(NamedTuple):
    functions: dict[str, tuple[FunctionDef, dict[str, Hold]]]
    tombstones: set[str]  # functions deleted (a redeploy clears its name)


class ClusterStore:
    def __init__(self, url: str, timeout_s: float = 1.0, block_ms: int = 1000, pool: int = 8) -> None:
        self.url = url
        self.block_ms = block_ms
        self.where = _redacted(url)
        self.incarnation: str | None = None  # the registry's, as of this node's last join
        common: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": timeout_s}
        pool_ = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool, timeout=timeout_s, socket_timeout=timeout_s, **common
        )
        self.redis = aioredis.Redis(connection_pool=pool_)
        # The blocking stream read waits up to block_ms server-side: its socket must outlast that.
        self.stream = aioredis.Redis.from_url(url, socket_timeout=block_ms / 1e3 + 5 * timeout_s, **common)
        self._deploy = self.redis.register_script(scripts.DEPLOY)
        self._delete = self.redis.register_script(scripts.DELETE)
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._confirm = self.redis.register_script(scripts.CONFIRM)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._adopt = self.redis.register_script(scripts.ADOPT)

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)  # the pool was given: not closed by default
        await self.stream.aclose()

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise RegistryDown(f"the cluster registry (Redis at {self.where}) is unreachable: {exc}") from exc

    # -- functions -----------------------------------------------------------------
    async def next_version(self) -> int:
        return int(await self._run(self.redis.incr(VERSION)))

    async def deploy(self, fn: FunctionDef, node: str) -> tuple[bool, int]:
        """(True, epoch) if this definition is now the function's; (False, winner's version) if not."""
        ok, value = await self._run(
            self._deploy(keys=[FNS, place_key(fn.name), EPOCH, EVENTS, TOMBS], args=_args(fn, node))
        )
        return bool(ok), int(value)

    async def delete(self, name: str, node: str) -> bool:
        keys = [FNS, place_key(name), EVENTS, TOMBS]
        return bool(await self._run(self._delete(keys=keys, args=[name, node, STREAM_MAXLEN])))

    async def claim(self, name: str, node: str, version: int, mode: str, max_replicas: int) -> int:
        args = [name, node, version, mode, max_replicas, node_key(""), STREAM_MAXLEN]
        return int(await self._run(self._claim(keys=[FNS, place_key(name), EPOCH, EVENTS], args=args)))

    async def confirm(self, name: str, node: str, epoch: int, version: int) -> bool:
        args = [name, node, epoch, version, STREAM_MAXLEN]
        return bool(await self._run(self._confirm(keys=[FNS, place_key(name), EVENTS], args=args)))

    async def release(self, name: str, node: str, force: bool = False) -> bool:
        args = [name, node, node_key(""), STREAM_MAXLEN, "1" if force else "0"]
        return bool(await self._run(self._release(keys=[place_key(name), EVENTS], args=args)))

    async def adopt(self, fn: FunctionDef, node: str) -> int:
        keys = [FNS, place_key(fn.name), EPOCH, EVENTS, TOMBS, VERSION]
        return int(await self._run(self._adopt(keys=keys, args=_args(fn, node))))

    async def join(self) -> str:
        """The registry's incarnation, created if Redis has none (the first node, or Redis lost its data)."""
        async with self.redis.pipeline(transaction=True) as p:
            p.set(INCARNATION, uuid.uuid4().hex, nx=True)
            p.get(INCARNATION)
            _, self.incarnation = await self._run(p.execute())
        return self.incarnation

    def _same_registry(self, incarnation: str | None) -> None:
        if self.incarnation is not None and incarnation != self.incarnation:
            raise RegistryLost(
                f"the cluster registry (Redis at {self.where}) lost its data (restarted empty or flushed)"
            )

    async def function(self, name: str) -> tuple[FunctionDef | None, dict[str, Hold]]:
        async with self.redis.pipeline(transaction=True) as p:
            p.hget(FNS, name)
            p.hgetall(place_key(name))
            p.get(INCARNATION)
            raw, holds, incarnation = await self._run(p.execute())
        self._same_registry(incarnation)
        return (FunctionDef.from_json(raw) if raw else None), _holds(holds)

    async def snapshot(self) -> Snapshot:
        async with self.redis.pipeline(transaction=True) as p:
            p.hgetall(FNS)
            p.hkeys(TOMBS)
            p.get(INCARNATION)
            raw, tombs, incarnation = await self._run(p.execute())
        self._same_registry(incarnation)
        names = sorted(raw)
        async with self.redis.pipeline(transaction=False) as p:
            for name in names:
                p.hgetall(place_key(name))
            holds = await self._run(p.execute())
        functions = {n: (FunctionDef.from_json(raw[n]), _holds(h)) for n, h in zip(names, holds, strict=True)}
        return Snapshot(functions, set(tombs))

    # -- nodes -----------------------------------------------------------------------
    async def heartbeat(self, record: NodeRecord, ttl_s: float) -> dict[str, NodeRecord | None]:
        """Publish this node's record and read everyone's (None: known but its record expired)."""
        async with self.redis.pipeline(transaction=False) as p:
            p.set(node_key(record.name), record.to_json(), px=int(ttl_s * 1000))
            p.hset(NODES, record.name, record.url)
            p.hgetall(NODES)
            p.get(INCARNATION)
            _, _, known, incarnation = await self._run(p.execute())
        self._same_registry(incarnation)
        names = sorted(known)
        values = await self._run(self.redis.mget([node_key(n) for n in names])) if names else []
        return {n: (NodeRecord.from_json(v) if v else None) for n, v in zip(names, values, strict=True)}

    async def leave(self, name: str) -> None:
        await self._run(self.redis.delete(node_key(name)))

    # -- events ------------------------------------------------------------------------
    async def last_event_id(self) -> str:
        last = await self._run(self.redis.xrevrange(EVENTS, count=1))
        return last[0][0] if last else "0-0"

    async def events_after(self, last_id: str) -> list[tuple[str, dict[str, str]]]:
        """Events after `last_id`, waiting up to block_ms for the first one."""
        reply = await self._run(self.stream.xread({EVENTS: last_id}, block=self.block_ms, count=500))
        return [(eid, fields) for _, entries in reply for eid, fields in entries]


def _args(fn: FunctionDef, node: str) -> list[Any]:
    return [fn.name, fn.to_json(), fn.version, node, STREAM_MAXLEN]


def _holds(raw: dict[str, str]) -> dict[str, Hold]:
    return {n: Hold.decode(v) for n, v in raw.items()}


def _redacted(url: str) -> str:
    """host:port/db of a Redis URL, never its credentials (error messages reach clients)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
