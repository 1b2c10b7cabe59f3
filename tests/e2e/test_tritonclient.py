"""The official Triton HTTP client, unchanged, against torpor: health, metadata, repository, infer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from loadtest.server import Server
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


def test_repository_load_index_unload(client: triton.InferenceServerClient) -> None:
    config = json.dumps({"model": {"zoo": "mlp", "seed": 9}, "slo_ms": 50})
    client.load_model("tc-mlp", config=config)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["tc-mlp"]["state"] == "READY" and index["mlp"]["state"] == "READY"
    assert client.is_model_ready("tc-mlp")
    client.load_model("tc-mlp")  # already deployed: loadable on demand, nothing to do
    client.unload_model("tc-mlp")
    assert not client.is_model_ready("tc-mlp")
    with pytest.raises(InferenceServerException, match="not deployed"):
        client.load_model("never-deployed")
