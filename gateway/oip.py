"""Open Inference Protocol (KServe v2) JSON tensors <-> raw wire tensors, with numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from shared.errors import InvalidInput
from shared.specs import DATATYPES, TensorSpec

_KINDS = {"BOOL": "b", "UINT": "u", "INT": "i", "FP": "f", "BF": "f"}


def _numpy_dtype(datatype: str) -> np.dtype:
    return np.dtype(DATATYPES[datatype])


def _bf16_from_f32(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (as torch does)."""
    bits = a.astype("<f4").view("<u4")
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype("<u2")


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype("<u4") << 16).view("<f4")


@dataclass
class InferRequest:
    id: Any
    inputs: list[dict[str, Any]]  # wire tensors, in the spec's order
    outputs: list[str] | None  # requested output names; None = all
    timeout_s: float | None  # Triton's "timeout" parameter (microseconds), if given


def parse_request(body: bytes, fn_name: str, inputs: tuple[TensorSpec, ...]) -> InferRequest:
    """Validate an OIP JSON request against the function's inputs."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: malformed JSON ({exc})") from exc
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise InvalidInput('body: expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    by_name: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise InvalidInput(f"inputs[{i}]: expected an object with a string 'name'")
        if t["name"] in by_name:
            raise InvalidInput(f"inputs[{i}]: input {t['name']!r} given twice")
        by_name[t["name"]] = t
    expected = ", ".join(s.describe() for s in inputs)
    unknown = sorted(set(by_name) - {s.name for s in inputs})
    if unknown:
        raise InvalidInput(f"inputs: unknown input {unknown[0]!r} for function {fn_name!r}; expected {expected}")
    wire = []
    for spec in inputs:
        t = by_name.get(spec.name)
        if t is None:
            raise InvalidInput(f"inputs: missing input {spec.name!r}; expected {expected}")
        wire.append(_to_wire(t, spec))
    outputs = req.get("outputs")
    names = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise InvalidInput('outputs: expected a list of {"name": ...} objects')
        names = [o["name"] for o in outputs]
    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput("parameters: expected an object")
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidInput("parameters.timeout: expected a positive integer of microseconds")
    return InferRequest(req.get("id"), wire, names, timeout / 1e6 if timeout else None)


def _to_wire(t: dict[str, Any], spec: TensorSpec) -> dict[str, Any]:
    where = f"input {spec.name!r}"
    if t.get("datatype") != spec.datatype:
        raise InvalidInput(f"{where}: expected datatype {spec.datatype}, got {t.get('datatype')!r}")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers")
    if not spec.accepts(tuple(shape)):
        raise InvalidInput(f"{where}: expected shape {list(spec.shape)} (-1 = any), got {shape}")
    data = t.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be a list (row-major, flat or nested)")
    try:
        arr = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(f"{where}: 'data' is ragged ({exc})") from exc
    count = math.prod(shape)
    if arr.size != count:
        raise InvalidInput(f"{where}: shape {shape} needs {count} elements, 'data' has {arr.size}")
    if arr.size and arr.dtype.kind not in _allowed_kinds(spec.datatype):
        raise InvalidInput(f"{where}: 'data' holds {arr.dtype.kind!r}-kind values, not {spec.datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):  # a value beyond the type is an error, not inf
            if spec.datatype == "BF16":
                raw = _bf16_from_f32(arr.astype("<f4"))
            else:
                raw = arr.astype(_numpy_dtype(spec.datatype), casting="unsafe")
                if spec.datatype not in ("FP16", "FP32", "FP64", "BOOL") and arr.size and not np.array_equal(raw, arr):
                    raise InvalidInput(f"{where}: values out of range for {spec.datatype}")
    except (OverflowError, TypeError, FloatingPointError) as exc:
        raise InvalidInput(f"{where}: values do not fit {spec.datatype} ({exc})") from exc
    return {"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": raw.tobytes()}


def _allowed_kinds(datatype: str) -> str:
    if datatype == "BOOL":
        return "b"
    if datatype.startswith(("FP", "BF")):
        return "iuf"  # integers are valid floats in JSON
    return "iu"


def tensor_data(t: dict[str, Any]) -> np.ndarray:
    """A wire tensor's data as a flat numpy array (BF16 widened to float32)."""
    raw = np.frombuffer(t["data"], dtype=_numpy_dtype(t["datatype"]))
    return bf16_to_f32(raw) if t["datatype"] == "BF16" else raw


def response(model_name: str, request_id: Any, outputs: list[dict[str, Any]], wanted: list[str] | None) -> bytes:
    if wanted is not None:
        have = {o["name"] for o in outputs}
        missing = [w for w in wanted if w not in have]
        if missing:
            raise InvalidInput(f"outputs: unknown output {missing[0]!r}; the model returns {sorted(have)}")
        outputs = [o for o in outputs if o["name"] in wanted]
    body: dict[str, Any] = {
        "model_name": model_name,
        "model_version": "1",
        "outputs": [
            {"name": o["name"], "datatype": o["datatype"], "shape": o["shape"], "data": tensor_data(o)}
            for o in outputs
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
