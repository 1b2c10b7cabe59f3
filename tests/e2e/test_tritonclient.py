"""The official Triton HTTP client, unchanged, against torpor: health, metadata, repository, infer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from loadtest.server import Server, shm_segments_of
from tests.e2e.helpers import native_output

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "torpor" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("mlp") and not client.is_model_ready("no-such-model")
    model = client.get_model_metadata("bert")
    assert model["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
    assert client.get_model_metadata("mlp", model_version="1")["outputs"][0]["name"] == "output"


@pytest.mark.parametrize("binary", [False, True])
def test_infer_json_and_binary_tensors_bitwise(client: triton.InferenceServerClient, binary: bool) -> None:
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("output", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="tc-1")
    want = native_output("mlp", [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}])
    assert result.as_numpy("output").tobytes() == want.tobytes()
    assert result.get_response()["id"] == "tc-1"


def test_infer_int64_binary_into_bert(client: triton.InferenceServerClient) -> None:
    ids = np.random.default_rng(4).integers(0, 30522, (1, 12)).astype(np.int64)
    inp = triton.InferInput("input_ids", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids, binary_data=True)
    result = client.infer("bert", [inp], outputs=[triton.InferRequestedOutput("pooled_output", binary_data=True)])
    want = native_output(
        "bert-base", [{"name": "input_ids", "shape": [1, 12], "datatype": "INT64", "data": ids.ravel().tolist()}]
    )
    assert result.as_numpy("pooled_output").tobytes() == want.tobytes()


def test_wrong_binary_size_is_a_clear_error(server: Server) -> None:
    # tritonclient checks shapes itself, so send the malformed request by hand: half the bytes.
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 128}}]}
    ).encode()
    r = server.client.post(
        "/v2/models/mlp/infer",
        content=header + bytes(128),
        headers={"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 400 and "needs 256 bytes" in r.json()["error"]


def _index(client: triton.InferenceServerClient) -> dict[str, dict[str, str]]:
    return {m["name"]: m for m in client.get_model_repository_index()}


def _mlp_input(seed: int) -> triton.InferInput:
    x = np.random.default_rng(seed).standard_normal((3, 64)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


def _image_of(model_id: str, segment: str) -> bool:
    return "-model-" in segment and segment.endswith("-" + model_id.replace("@", "_v"))


def test_repository_unload_load_round_trip(client: triton.InferenceServerClient, server: Server) -> None:
    config = json.dumps({"model": {"zoo": "mlp", "seed": 9}, "slo_ms": 50})
    client.load_model("tc-mlp", config=config)
    assert _index(client)["tc-mlp"] == {"name": "tc-mlp", "version": "1", "state": "READY", "reason": ""}
    assert _index(client)["mlp"]["state"] == "READY"
    before = client.infer("tc-mlp", [_mlp_input(5)]).as_numpy("output")
    assert any(_image_of("tc-mlp@1", n) for n in shm_segments_of(server.pid))

    client.unload_model("tc-mlp")
    assert _index(client)["tc-mlp"] == {"name": "tc-mlp", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    only_ready = server.client.post("/v2/repository/index", json={"ready": True}).json()
    assert "tc-mlp" not in {m["name"] for m in only_ready} and "mlp" in {m["name"] for m in only_ready}
    assert not client.is_model_ready("tc-mlp")
    assert client.get_model_metadata("tc-mlp")["versions"] == []
    assert not any("-model-" in n and n.endswith("-tc-mlp_v1") for n in shm_segments_of(server.pid)), (
        "host memory not freed"
    )
    devices = server.client.get("/v1/devices").json()["devices"]
    assert not any(m.startswith("tc-mlp@") for d in devices for m in d["resident"]), "device memory not freed"
    with pytest.raises(InferenceServerException, match="UNAVAILABLE") as err:
        client.infer("tc-mlp", [_mlp_input(5)])
    assert err.value.status() == "503" and "load it with POST" in err.value.message()
    client.unload_model("tc-mlp")  # unloading an unloaded model succeeds, as in Triton

    client.load_model("tc-mlp")  # no config: back from the saved config and model
    assert _index(client)["tc-mlp"]["state"] == "READY" and client.is_model_ready("tc-mlp")
    again = client.infer("tc-mlp", [_mlp_input(5)])
    assert again.as_numpy("output").tobytes() == before.tobytes()
    assert again.get_response()["model_version"] == "1"
    client.unload_model("tc-mlp")
    server.client.delete("/v1/functions/tc-mlp").raise_for_status()  # deleting an unloaded function works
    assert "tc-mlp" not in _index(client)
    with pytest.raises(InferenceServerException, match="not deployed"):
        client.load_model("never-deployed")


def test_versions_follow_redeploys(client: triton.InferenceServerClient, server: Server) -> None:
    client.load_model("tc-ver", config=json.dumps({"model": {"zoo": "mlp", "seed": 1}, "slo_ms": 50}))
    client.load_model("tc-ver", config=json.dumps({"model": {"zoo": "mlp", "seed": 2}, "slo_ms": 50}))
    try:
        assert _index(client)["tc-ver"]["version"] == "2"
        assert client.get_model_metadata("tc-ver")["versions"] == ["2"]
        assert client.get_model_metadata("tc-ver", model_version="2")["name"] == "tc-ver"
        assert client.is_model_ready("tc-ver", model_version="2") and not client.is_model_ready("tc-ver", "1")
        result = client.infer("tc-ver", [_mlp_input(1)], model_version="2")
        assert result.get_response()["model_version"] == "2"
        assert client.infer("tc-ver", [_mlp_input(1)]).get_response()["model_version"] == "2"
        for call in (
            lambda: client.get_model_metadata("tc-ver", model_version="1"),
            lambda: client.infer("tc-ver", [_mlp_input(1)], model_version="1"),
        ):
            with pytest.raises(InferenceServerException, match="version '1' is not served; it serves version 2") as err:
                call()
            assert err.value.status() == "404"
    finally:
        client.unload_model("tc-ver")
    with pytest.raises(InferenceServerException, match="UNAVAILABLE") as err:
        client.get_model_metadata("tc-ver", model_version="2")
    assert err.value.status() == "404"
    server.client.delete("/v1/functions/tc-ver").raise_for_status()
