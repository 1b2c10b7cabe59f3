"""The scheduler live: one small device, more functions than fit, requests ordered by deadline.

One CPU device of 450 MiB: bert-base (418 MiB) fills it, so every other model
evicts it -- but only once bert's request has finished executing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loadtest.server import Server
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("sched") / "state", devices="cpu:1", memory="450MiB").start()
    deploys = {
        "slow": {"model": {"zoo": "bert-base"}, "slo_ms": 60_000},
        "lenient": {"model": {"zoo": "resnet18", "seed": 1}, "slo_ms": 60_000},
        "strict": {"model": {"zoo": "resnet18", "seed": 2}, "slo_ms": 5_000},
        "batched": {"model": {"zoo": "mlp"}, "slo_ms": 60_000, "max_batch_size": 8},
        "hopeless": {"model": {"zoo": "resnet18", "seed": 3}, "slo_ms": 1, "drop_late": True},
    }
    try:
        for name, body in deploys.items():
            r = srv.deploy(name, body)
            assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


def _occupy(server: Server, tokens: int = 512) -> threading.Thread:
    """Keep the only device busy for a while with a long bert input."""
    ids = np.zeros((1, tokens), dtype=np.int64).ravel().tolist()
    body = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, tokens], "data": ids}]}
    t = threading.Thread(target=lambda: server.client.post("/v1/functions/slow/invoke", json=body))
    t.start()
    time.sleep(0.3)  # the bert request is on the device before the others arrive
    return t


def _send(server: Server, name: str, zoo_name: str, seed: int, done: dict[str, tuple[float, dict]]) -> threading.Thread:
    inputs = sample_input(zoo_name, seed=seed)

    def go() -> None:
        r = server.invoke(name, inputs)
        answered = time.perf_counter()  # before checking: the in-process reference takes time
        assert r.status_code == 200, r.text
        got = output_array(r.json())
        assert got.tobytes() == native_output(zoo_name, inputs, {"lenient": 1, "strict": 2}.get(name, 0)).tobytes()
        done[name] = (answered, dict(r.headers))

    t = threading.Thread(target=go)
    t.start()
    return t


def test_earlier_deadline_is_served_first_and_the_running_model_is_not_evicted(server: Server) -> None:
    done: dict[str, tuple[float, dict]] = {}
    slow = _occupy(server)
    a = _send(server, "lenient", "resnet18", 5, done)  # arrives first, deadline in 60 s
    time.sleep(0.05)
    b = _send(server, "strict", "resnet18", 6, done)  # arrives second, deadline in 5 s
    for t in (slow, a, b):
        t.join(120)
    assert done["strict"][0] < done["lenient"][0], "the request with the earlier deadline ran first"
    # Server side: lenient arrived first yet waited longer in the queue.
    assert float(done["lenient"][1]["x-torpor-queue-ms"]) > float(done["strict"][1]["x-torpor-queue-ms"])
    # bert had to leave the device for the resnets, but not while it was executing: its
    # own request completed (above), and no device ever held more than its budget.
    devices = server.client.get("/v1/devices").json()["devices"]
    assert all(d["resident_bytes"] <= d["budget_bytes"] for d in devices)
    slow_fn = server.client.get("/v1/functions/slow").json()
    assert slow_fn["resident_on"] == [] and slow_fn["stats"]["requests"] >= 1
    strict = server.client.get("/v1/functions/strict").json()
    assert strict["stats"]["slo_attainment"] == 1.0
    assert set(strict["stats"]) >= {"p50_ms", "p98_ms", "p99_ms"}
    sched = strict["schedule"]
    assert sched["exec_ms"] > 0 and sched["predicted"]["completion_ms"] >= sched["predicted"]["exec_ms"]


def test_waiting_requests_run_as_one_batch_with_correct_outputs(server: Server) -> None:
    results: list[tuple[int, dict, np.ndarray, np.ndarray]] = []
    slow = _occupy(server)

    def go(seed: int) -> None:
        inputs = sample_input("mlp", seed=seed)
        r = server.invoke("batched", inputs)
        assert r.status_code == 200, r.text
        results.append((seed, dict(r.headers), output_array(r.json()), native_output("mlp", inputs)))

    threads = [threading.Thread(target=go, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in [slow, *threads]:
        t.join(120)
    assert len(results) == 6
    assert max(int(h["x-torpor-batch"]) for _, h, _, _ in results) > 1, "queued requests ran together"
    for _, _, got, want in results:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # batched kernels may round differently


def test_drop_late_answers_503_with_retry_after(server: Server) -> None:
    r = server.invoke("hopeless", sample_input("resnet18"))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "drop_late" in r.json()["error"]
    fn = server.client.get("/v1/functions/hopeless").json()
    assert fn["drop_late"] is True and fn["stats"]["slo_attainment"] in (0.0, None)


def test_batching_needs_a_batch_dimension(server: Server, tmp_path: Path) -> None:
    r = server.deploy("nobatch", {"model": {"zoo": "mlp"}, "slo_ms": 100, "max_batch_size": 0})
    assert r.status_code == 400 and "max_batch_size" in r.json()["error"]
    r = server.deploy("nobatch", {"model": {"zoo": "mlp"}, "slo_ms": 100, "slo_percentile": 100})
    assert r.status_code == 400 and "slo_percentile" in r.json()["error"]
    assert server.client.get("/v1/functions/nobatch").status_code == 404
