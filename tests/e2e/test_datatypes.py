"""Every KServe v2 datatype through /v2/models/{m}/infer: JSON, Triton binary, and the official client."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton

from loadtest.server import Server

pytestmark = pytest.mark.e2e

# datatype -> (torch dtype, numpy dtype of the values we send, values)
CASES: dict[str, tuple[torch.dtype, str, list]] = {
    "BOOL": (torch.bool, "bool", [True, False, True, True]),
    "UINT8": (torch.uint8, "uint8", [0, 1, 100, 127]),
    "UINT16": (torch.uint16, "uint16", [0, 1, 30000, 32767]),
    "UINT32": (torch.uint32, "uint32", [0, 1, 2**30, 2**31 - 1]),
    "UINT64": (torch.uint64, "uint64", [0, 1, 2**40, 2**62]),
    "INT8": (torch.int8, "int8", [-64, -1, 0, 63]),
    "INT16": (torch.int16, "int16", [-16000, -1, 0, 16000]),
    "INT32": (torch.int32, "int32", [-(2**30), -1, 0, 2**30 - 1]),
    "INT64": (torch.int64, "int64", [-(2**62), -1, 0, 2**62 - 1]),
    "FP16": (torch.float16, "float16", [-1.5, 0.0, 0.25, 1000.0]),
    "FP32": (torch.float32, "float32", [-1.5, 0.0, 0.1, 3e30]),
    "FP64": (torch.float64, "float64", [-1.5, 0.0, 0.1, 1e300]),
    "BF16": (torch.bfloat16, "float32", [-1.5, 0.0, 0.25, 3.0]),  # exactly representable in bf16
}


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.logical_not() if x.dtype == torch.bool else x * 2


def _expected(datatype: str, values: list) -> list:
    if datatype == "BOOL":
        return [not v for v in values]
    return [v * 2 for v in values]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dtypes")
    srv = Server(tmp / "state", devices="cpu:1", memory="64MiB").start()
    try:
        for datatype, (dtype, _, _) in CASES.items():
            ep = torch.export.export(Double(), (torch.ones(1, 4, dtype=dtype),))
            torch.export.save(ep, str(tmp / f"{datatype}.pt2"))

        def deploy(datatype: str) -> None:  # concurrent deploys: each builds in a process of its own
            path = tmp / f"{datatype}.pt2"
            r = srv.deploy(f"dt-{datatype.lower()}", {"model": {"path": str(path)}, "slo_ms": 1000})
            assert r.status_code == 201, (datatype, r.text)

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(deploy, CASES))
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("datatype", list(CASES))
def test_json_tensors(server: Server, datatype: str) -> None:
    _, _, values = CASES[datatype]
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": values}]}
    r = server.client.post(f"/v2/models/dt-{datatype.lower()}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == datatype and out["shape"] == [1, 4]
    assert out["data"] == _expected(datatype, values)


@pytest.mark.parametrize("datatype", list(CASES))
def test_binary_tensors(server: Server, datatype: str) -> None:
    _, np_dtype, values = CASES[datatype]
    arr = np.asarray(values, dtype=np_dtype)
    raw = _bf16(arr) if datatype == "BF16" else arr.tobytes()
    header = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    r = server.client.post(
        f"/v2/models/dt-{datatype.lower()}/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    json_len = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:json_len])
    (out,) = meta["outputs"]
    data = r.content[json_len:]
    assert out["parameters"]["binary_data_size"] == len(data) == len(raw)
    want = np.asarray(_expected(datatype, values), dtype=np_dtype)
    assert data == (_bf16(want) if datatype == "BF16" else want.tobytes())


@pytest.mark.parametrize("datatype", [d for d in CASES if d != "BF16"])  # numpy has no bfloat16
def test_official_client(server: Server, datatype: str) -> None:
    _, np_dtype, values = CASES[datatype]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = triton.InferInput("x", [1, 4], datatype)
    x.set_data_from_numpy(np.asarray([values], dtype=np_dtype), binary_data=True)
    got = client.infer(f"dt-{datatype.lower()}", [x]).as_numpy("output")
    want = np.asarray([_expected(datatype, values)], dtype=np_dtype)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def _bf16(a: np.ndarray) -> bytes:
    """float32 values that bf16 represents exactly -> their bf16 bit patterns."""
    return b"".join(struct.pack("<H", struct.unpack("<I", struct.pack("<f", float(v)))[0] >> 16) for v in a.ravel())


def test_bf16_is_a_real_tensor_type(tmp_path: Path) -> None:
    # The bit patterns above are what torch itself stores.
    t = torch.tensor([-1.5, 0.0, 0.25, 3.0], dtype=torch.bfloat16)
    assert t.view(torch.int16).numpy().astype("<u2").tobytes() == _bf16(np.asarray([-1.5, 0.0, 0.25, 3.0]))
