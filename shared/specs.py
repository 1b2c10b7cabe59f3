"""Tensor signatures of functions and the KServe v2 datatypes they use.

Torch-free on purpose: the gateway validates requests with numpy only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from shared.errors import InvalidInput

# KServe v2 / Triton datatype name -> numpy dtype string (little-endian, as on the wire).
# BF16 has no numpy dtype; it travels as raw 2-byte words and is only decoded by torch.
DATATYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BF16": "<u2",
}

ITEMSIZE: dict[str, int] = {name: np.dtype(code).itemsize for name, code in DATATYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a function's signature; -1 in shape means any size."""

    name: str
    datatype: str  # KServe v2 datatype name, e.g. "FP32", "INT64"
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: object, where: str) -> TensorSpec:
        """Parse a user-supplied spec, naming the offending field on error."""
        if not isinstance(obj, dict):
            raise InvalidInput(f"{where}: expected an object with name, datatype, shape")
        name = obj.get("name")
        datatype = obj.get("datatype")
        shape = obj.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name: expected a non-empty string")
        if datatype not in DATATYPES:
            raise InvalidInput(f"{where}.datatype: expected one of {', '.join(DATATYPES)}, got {datatype!r}")
        if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
            raise InvalidInput(f"{where}.shape: expected a list of integers >= 1 or -1")
        return cls(name, datatype, tuple(shape))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def describe(self) -> str:
        return f"{self.name} {self.datatype}{list(self.shape)}"


def _is_dim(d: object) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d >= 1)


def specs_to_json(specs: tuple[TensorSpec, ...]) -> list[dict[str, object]]:
    return [s.to_json() for s in specs]


def specs_from_json(objs: object, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(objs, list) or not objs:
        raise InvalidInput(f"{where}: expected a non-empty list of tensor specs")
    specs = tuple(TensorSpec.from_json(o, f"{where}[{i}]") for i, o in enumerate(objs))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}: tensor names must be unique, got {names}")
    return specs


# The size of a free dimension other than the batch (e.g. a sequence length) wherever a model
# is timed or driven with made-up inputs: the deploy-time profile and the load test's requests
# must be the same work, or the simulator's execution times describe other requests.
FREE_DIM = 128


def random_inputs(
    inputs: list[dict[str, Any]], batch: int = 1, free: int = FREE_DIM, rng: np.random.Generator | None = None
) -> list[dict[str, Any]]:
    """A valid random OIP request for an input spec in JSON form (-1 dims: `batch` first, then `free`)."""
    rng = rng or np.random.default_rng()
    out = []
    for spec in inputs:
        shape = [(batch if i == 0 else free) if d == -1 else d for i, d in enumerate(spec["shape"])]
        n = int(np.prod(shape))
        dt = spec["datatype"]
        if dt == "BOOL":
            data: list[Any] = rng.integers(0, 2, n).astype(bool).tolist()
        elif dt.startswith(("INT", "UINT")):
            data = rng.integers(0, 100, n).tolist()  # small: valid token ids and class indices
        else:
            data = rng.standard_normal(n).astype("float32").tolist()
        out.append({"name": spec["name"], "shape": shape, "datatype": dt, "data": data})
    return out


ENCODINGS = ("json", "binary")


class Body(NamedTuple):
    """An invoke request's bytes and the headers that say how to read them."""

    content: bytes
    headers: dict[str, str]


def request_body(inputs: list[dict[str, Any]], rng: np.random.Generator | None = None, encoding: str = "json") -> Body:
    """One batch-1 random request: what the load test sends, and what `torpor profile` times a
    request of (gateway/sim/requestcost.py). `json` carries the values in the JSON body (a
    224x224 image: 3 MB of text); `binary` as Triton's binary tensor extension does, a JSON
    header and the raw little-endian bytes after it (600 KB), as tritonclient and perf_analyzer
    send by default."""
    tensors = random_inputs(inputs, 1, rng=rng)
    if encoding == "json":
        return Body(json.dumps({"inputs": tensors}).encode(), {"content-type": "application/json"})
    if encoding != "binary":
        raise ValueError(f"encoding: expected one of {', '.join(ENCODINGS)}, got {encoding!r}")
    raws = [_raw(t["data"], t["datatype"]) for t in tensors]
    listed = [
        {**{k: t[k] for k in ("name", "shape", "datatype")}, "parameters": {"binary_data_size": len(raw)}}
        for t, raw in zip(tensors, raws, strict=True)
    ]
    header = json.dumps({"inputs": listed}).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    return Body(b"".join([header, *raws]), headers)


def _raw(data: list[Any], datatype: str) -> bytes:
    """A tensor's values as the wire's raw bytes (BF16: float32 rounded to its top 16 bits)."""
    if datatype == "BF16":
        return bf16_from_f32(np.asarray(data, dtype="<f4")).tobytes()
    return np.asarray(data, dtype=DATATYPES[datatype]).tobytes()


def bf16_from_f32(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (as torch does)."""
    bits = a.astype("<f4").view("<u4")
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype("<u2")
