"""The cluster's Redis scripts against a real redis-server: versions, fencing, never the last copy."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cluster.records import FunctionDef, HoldState, NodeRecord, NodeState
from gateway.cluster.store import ClusterStore, RegistryDown, RegistryLost
from loadtest.cluster import REDIS_BINARY, RedisServer

pytestmark = pytest.mark.skipif(
    not os.path.exists(REDIS_BINARY), reason="redis-server is not installed on this machine"
)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


def definition(version: int, seed: int = 0, name: str = "f") -> FunctionDef:
    return FunctionDef(name, version, {"model": {"zoo": "mlp", "seed": seed}, "slo_ms": 100}, [], [], 1000)


def run(url: str, body: object) -> object:
    async def go() -> object:
        store = ClusterStore(url)
        try:
            return await body(store)  # type: ignore[operator]
        finally:
            await store.close()

    return asyncio.run(go())


async def alive(store: ClusterStore, *names: str, state: NodeState = NodeState.UP) -> None:
    for n in names:
        await store.heartbeat(NodeRecord(n, f"http://{n}", state=state), ttl_s=30)


def test_the_newer_version_wins_a_replace_race_whatever_the_order(redis_url: str) -> None:
    async def body(store: ClusterStore) -> None:
        v1, v2 = await store.next_version(), await store.next_version()
        assert (v1, v2) == (1, 2)
        assert (await store.deploy(definition(v2, seed=2), "c"))[0]
        won, winner = await store.deploy(definition(v1, seed=1), "b")  # the older one commits last
        assert (won, winner) == (False, 2)
        fn, holds = await store.function("f")
        assert fn is not None and fn.version == 2 and fn.spec["model"]["seed"] == 2
        assert list(holds) == ["c"] and holds["c"].state == HoldState.HOST

    run(redis_url, body)


def test_claims_are_fenced_and_never_two_rehomes(redis_url: str) -> None:
    async def body(store: ClusterStore) -> None:
        await alive(store, "a", "b")
        await store.deploy(definition(1), "x")  # x has no record: it is dead
        e1 = await store.claim("f", "a", 1, "rehome", 3)
        assert e1 > 0
        assert await store.claim("f", "b", 1, "rehome", 3) == 0  # a live node already has it
        assert await store.claim("f", "a", 1, "replica", 3) == 0  # already claimed here
        assert await store.claim("f", "b", 2, "replica", 3) == 0  # not the current version
        # A redeploy while a loads: a's claim is gone, its confirmation refused.
        await store.deploy(definition(5), "b")
        assert not await store.confirm("f", "a", e1, 1)
        e2 = await store.claim("f", "a", 5, "replica", 3)
        assert await store.confirm("f", "a", e2, 5)
        assert not await store.confirm("f", "a", e2, 5)  # once only
        _, holds = await store.function("f")
        assert {n: h.state for n, h in holds.items()} == {"a": HoldState.HOST, "b": HoldState.HOST}
        assert await store.claim("f", "c", 5, "replica", 2) == 0  # replicas at the cap

    run(redis_url, body)


def test_release_never_drops_the_last_live_copy(redis_url: str) -> None:
    async def body(store: ClusterStore) -> None:
        await alive(store, "a", "b")
        await store.deploy(definition(1), "a")
        assert not await store.release("f", "a")
        await store.confirm("f", "b", await store.claim("f", "b", 1, "replica", 3), 1)
        await alive(store, "b", state=NodeState.DRAINING)  # a draining node is no home
        assert not await store.release("f", "a")
        await alive(store, "b")
        assert await store.release("f", "a")
        assert not await store.release("f", "b")
        _, holds = await store.function("f")
        assert list(holds) == ["b"]

    run(redis_url, body)


def test_adopt_after_a_data_loss_but_not_after_a_delete(redis_url: str) -> None:
    async def body(store: ClusterStore) -> None:
        assert await store.adopt(definition(7), "a") > 0  # Redis knew nothing: written back
        fn, holds = await store.function("f")
        assert fn is not None and fn.version == 7 and "a" in holds
        assert await store.next_version() == 8  # the counter moved past the adopted version
        assert await store.delete("f", "b")
        assert await store.adopt(definition(7), "a") == -1  # deleted meanwhile: the node drops it
        assert (await store.function("f"))[0] is None
        await store.deploy(definition(9), "b")
        assert await store.adopt(definition(8), "c") == -1  # replaced meanwhile
        assert not await store.delete("g", "b")

    run(redis_url, body)


def test_reads_from_a_registry_that_lost_its_data_are_refused_until_joined_again(redis_url: str) -> None:
    async def body(store: ClusterStore) -> None:
        first = await store.join()
        other = ClusterStore(redis_url)
        try:
            assert await other.join() == first  # the second node joins the same registry
        finally:
            await other.close()
        await store.deploy(definition(1), "a")
        await store.deploy(definition(2, name="g"), "a")
        assert await store.delete("g", "a")
        snap = await store.snapshot()
        assert sorted(snap.functions) == ["f"] and snap.tombstones == {"g"}
        await store.redis.flushall()  # as a Redis that restarted without persistence
        record = NodeRecord("a", "http://a")
        for read in (store.function("f"), store.snapshot(), store.heartbeat(record, ttl_s=5)):
            with pytest.raises(RegistryLost) as exc:
                await read
            assert exc.value.status == 503 and "lost its data" in exc.value.message
        assert await store.join() != first  # a new incarnation, written by the first to rejoin
        assert await store.function("f") == (None, {})
        assert (await store.snapshot()).tombstones == set()

    run(redis_url, body)


def test_heartbeats_list_every_known_node_and_expired_ones_as_none(redis_url: str) -> None:
    async def body(store: ClusterStore) -> None:
        await store.heartbeat(NodeRecord("a", "http://a"), ttl_s=0.2)
        records = await store.heartbeat(NodeRecord("b", "http://b"), ttl_s=5)
        assert sorted(records) == ["a", "b"] and records["a"] is not None
        await asyncio.sleep(0.3)
        records = await store.heartbeat(NodeRecord("b", "http://b"), ttl_s=5)
        assert records["a"] is None and records["b"] is not None and records["b"].url == "http://b"

    run(redis_url, body)


def test_an_unreachable_redis_is_a_503_naming_it_without_credentials() -> None:
    async def body(store: ClusterStore) -> None:
        with pytest.raises(RegistryDown) as exc:
            await store.next_version()
        assert exc.value.status == 503
        assert "127.0.0.1:1/0" in exc.value.message and "secret" not in exc.value.message

    run("redis://user:secret@127.0.0.1:1/0", body)
