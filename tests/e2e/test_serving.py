"""Deploy, invoke and swap through a real server with two CPU devices."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from loadtest.replay import server_timing
from loadtest.server import Server
from tests.e2e.conftest import DEPLOYED
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = pytest.mark.e2e


def _invoke_checked(server: Server, name: str, seed: int = 0) -> dict[str, str]:
    zoo_name, model_seed = DEPLOYED[name]
    inputs = sample_input(zoo_name, seed=seed)
    r = server.invoke(name, inputs)
    assert r.status_code == 200, r.text
    got = output_array(r.json())
    want = native_output(zoo_name, inputs, model_seed)
    assert got.shape == want.shape
    # Bitwise: same bytes as running the model natively in-process.
    assert got.tobytes() == want.tobytes(), f"{name}: max abs diff {np.abs(got - want).max()}"
    return dict(r.headers)


@pytest.mark.parametrize("name", list(DEPLOYED))
def test_cold_and_warm_outputs_are_bitwise_native(server: Server, name: str) -> None:
    h1 = _invoke_checked(server, name, seed=1)
    h2 = _invoke_checked(server, name, seed=2)
    assert h2["x-torpor-cold"] == "0" or h2["x-torpor-device"] != h1["x-torpor-device"]
    for key in ("x-torpor-queue-ms", "x-torpor-swap-ms", "x-torpor-exec-ms"):
        assert float(h1[key]) >= 0.0
    for h in (h1, h2):  # Server-Timing: the same figures, and the gateway's other phases inside its whole
        timing = {k: float(v) for k, v in server_timing(h["server-timing"]).items()}
        assert set(timing) == {"read", "parse", "queue", "swap", "exec", "dispatch", "encode", "gateway"}
        assert all(v >= 0 for v in timing.values())
        assert timing["exec"] == pytest.approx(float(h["x-torpor-exec-ms"]), abs=1e-3)
        inside = timing["read"] + timing["parse"] + timing["queue"] + timing["exec"] + timing["encode"]
        assert inside <= timing["gateway"] + 0.01


def test_interleaving_forces_swaps_and_evictions_and_stays_correct(server: Server) -> None:
    # Three models of which no two fit one device, cycled over two devices: at most two
    # are resident at a time, so every round of three has a swap-in and an eviction.
    order = ["bert", "bert2", "r152"] * 3 + ["r50", "r18", "mlp", "bert"]
    colds = 0
    for i, name in enumerate(order):
        colds += _invoke_checked(server, name, seed=10 + i)["x-torpor-cold"] == "1"
    assert colds >= 3
    fns = {f["name"]: f for f in server.client.get("/v1/functions").json()["functions"]}
    devices = server.client.get("/v1/devices").json()["devices"]
    for d in devices:
        assert d["resident_bytes"] <= d["budget_bytes"]
    for a, b in (("bert", "bert2"), ("bert", "r152"), ("bert2", "r152")):
        assert not set(fns[a]["resident_on"]) & set(fns[b]["resident_on"]), (a, b)
    # The EVICTs sent ahead of each LOAD (not awaited first) were answered and counted.
    metrics = server.client.get("/metrics").text
    counts = [line.split()[-1] for line in metrics.splitlines() if line.startswith("torpor_evictions_total{")]
    evicted = sum(float(c) for c in counts)
    assert evicted >= 3, metrics


def test_function_listing_and_metadata(server: Server) -> None:
    listing = server.client.get("/v1/functions").json()["functions"]
    assert {f["name"] for f in listing} >= set(DEPLOYED)
    meta = server.client.get("/v2/models/bert").json()
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
    one = server.client.get("/v1/functions/r50").json()
    assert one["model"] == {"zoo": "resnet50", "seed": 0} and one["model_bytes"] > 90 << 20
    assert server.client.get("/v2/health/live").json() == {"live": True}


def test_oip_alias_echoes_id_and_honours_requested_outputs(server: Server) -> None:
    inputs = sample_input("mlp")
    r = server.client.post(
        "/v2/models/mlp/infer", json={"id": "req-7", "inputs": inputs, "outputs": [{"name": "output"}]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "mlp"
    assert output_array(body).tobytes() == native_output("mlp", inputs).tobytes()


def test_cli_ls_and_random_invoke(server: Server) -> None:
    cli = [sys.executable, "-m", "gateway.cli"]
    ls = subprocess.run([*cli, "ls", "--url", server.url], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert "bert" in ls.stdout and "RESIDENT ON" in ls.stdout and "THREADS" in ls.stdout
    inv = subprocess.run(
        [*cli, "invoke", "bert", "--random", "--url", server.url], capture_output=True, text=True, timeout=120
    )
    assert inv.returncode == 0, inv.stderr
    assert inv.stdout.startswith("pooled_output FP32[1, 768]")
    assert "exec" in inv.stderr


def test_busy_device_serves_its_model_to_an_idle_one_peer_to_peer(server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # A tight SLO: waiting for the busy device (its run, then ours) would miss it, so the
    # scheduler copies the model to the idle device — unless the copy would evict another
    # model's only copy (one replica per model when memory is full): then it waits.
    r = server.deploy("r152peer", {"model": {"zoo": "resnet152", "seed": 5}, "slo_ms": 150, "heavy": True})
    assert r.status_code == 201, r.text
    inputs = [sample_input("resnet152", seed=s) for s in (30, 31, 32)]
    want = [native_output("resnet152", x, 5) for x in inputs]

    def call(i: int) -> dict[str, str]:
        resp = server.invoke("r152peer", inputs[i])
        assert resp.status_code == 200, resp.text
        assert output_array(resp.json()).tobytes() == want[i].tobytes()
        return dict(resp.headers)

    try:
        first = call(0)  # now fully resident on one device
        with ThreadPoolExecutor(2) as pool:
            heads = list(pool.map(call, (1, 2)))
    finally:
        server.client.delete("/v1/functions/r152peer")
    sources = sorted(h["x-torpor-source"] for h in heads)
    devices = {h["x-torpor-device"] for h in heads}
    # One request runs on the device that holds the model; the other, on the idle device,
    # copies the model from the busy one instead of from host memory, or (when that would
    # evict a model's only copy on the idle device) waits for the holder.
    if devices == {"0", "1"}:
        assert sources == ["peer:" + first["x-torpor-device"], "resident"], sources
    else:
        assert devices == {first["x-torpor-device"]} and sources == ["resident", "resident"], heads
        assert max(float(h["x-torpor-queue-ms"]) for h in heads) > 0, "the second waited for the first"


def test_prometheus_metrics_and_function_stats(server: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    for i, name in enumerate(["mlp", "bert", "bert2", "r152", "bert"]):  # no two of the last fit together
        _invoke_checked(server, name, seed=40 + i)
    r = server.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))

    assert total("torpor_requests_total", function="mlp", outcome="ok") >= 1
    assert total("torpor_request_duration_seconds_count", function="mlp") >= 1
    assert total("torpor_exec_duration_seconds_count", function="bert") >= 1
    assert total("torpor_swaps_total") >= 3
    assert total("torpor_swap_bytes_total") >= 400 << 20
    assert total("torpor_evictions_total") >= 1
    assert total("torpor_device_budget_bytes", device="0") == 512 << 20
    assert 0 < total("torpor_device_busy_ratio", device="0") <= 1
    assert total("torpor_queue_depth", function="mlp") == 0
    assert 0 <= total("torpor_slo_attainment_ratio", function="mlp") <= 1
    assert total("torpor_deploy_duration_seconds_count", function="bert") == 1

    stats = server.client.get("/v1/functions/mlp").json()["stats"]
    assert stats["requests"] >= 1 and 0 <= stats["slo_attainment"] <= 1
    assert 0 < stats["p50_ms"] <= stats["p98_ms"] <= stats["p99_ms"]
