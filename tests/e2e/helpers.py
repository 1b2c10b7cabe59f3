"""Native reference outputs, computed in-process exactly as a worker does (same threads)."""

from __future__ import annotations

import threading
import time
from functools import cache
from typing import Any

import httpx
import numpy as np
import torch

from shared import zoo

WORKER_THREADS = 1  # the e2e servers run with --compute-threads 1


@cache
def native_model(zoo_name: str, seed: int = 0) -> torch.nn.Module:
    return zoo.build(zoo_name, seed)


def sample_input(zoo_name: str, batch: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for spec in zoo.entry(zoo_name).inputs:
        shape = [batch if i == 0 else (16 if d == -1 else d) for i, d in enumerate(spec.shape)]
        if spec.datatype == "INT64":
            data = rng.integers(0, 30522, int(np.prod(shape))).tolist()
        else:
            data = rng.standard_normal(int(np.prod(shape))).astype(np.float32).tolist()
        out.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return out


def native_output(zoo_name: str, inputs: list[dict[str, Any]], seed: int = 0) -> np.ndarray:
    torch.set_num_threads(WORKER_THREADS)
    dtypes = {"FP32": torch.float32, "INT64": torch.int64}
    args = [torch.tensor(t["data"], dtype=dtypes[t["datatype"]]).reshape(t["shape"]) for t in inputs]
    with torch.inference_mode():
        return native_model(zoo_name, seed)(*args).numpy()


def output_array(body: dict[str, Any]) -> np.ndarray:
    (out,) = body["outputs"]
    assert out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def call_back_to_back(url: str, names: list[str], seconds: float, zoo_name: str) -> dict[str, list[httpx.Response]]:
    """Each function invoked in a loop of its own (one client each) for `seconds`: every answer, in order."""
    answers: dict[str, list[httpx.Response]] = {n: [] for n in names}
    stop = time.monotonic() + seconds
    inputs = sample_input(zoo_name)

    def call(name: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < stop:
                answers[name].append(client.post(f"/v1/functions/{name}/invoke", json={"inputs": inputs}))

    threads = [threading.Thread(target=call, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return answers
