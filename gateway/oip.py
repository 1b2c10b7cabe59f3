"""Open Inference Protocol (KServe v2) tensors <-> raw wire tensors, with numpy only.

Speaks JSON tensors and Triton's binary tensor data extension: with an
`Inference-Header-Content-Length: N` header the first N bytes are the JSON header
and the rest the raw bytes of the inputs that carry `binary_data_size`, in order;
outputs asked for with `binary_data` (or `binary_data_output`) come back the same way.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from shared.errors import InvalidInput
from shared.specs import DATATYPES, ITEMSIZE, TensorSpec, bf16_from_f32

_KINDS = {"BOOL": "b", "UINT": "u", "INT": "i", "FP": "f", "BF": "f"}


def _numpy_dtype(datatype: str) -> np.dtype:
    return np.dtype(DATATYPES[datatype])


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype("<u4") << 16).view("<f4")


HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InferRequest:
    id: Any
    inputs: list[dict[str, Any]]  # wire tensors, in the spec's order
    outputs: list[str] | None  # requested output names; None = all
    timeout_s: float | None  # Triton's "timeout" parameter (microseconds), if given
    binary_outputs: set[str] | bool = False  # names to return as binary, or True for all


def parse_request(
    body: bytes, fn_name: str, inputs: tuple[TensorSpec, ...], header_length: int | None = None
) -> InferRequest:
    """Validate an OIP request (JSON, or JSON header + binary tensors) against the function's inputs."""
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length: {header_length} is outside the {len(body)}-byte body")
        # A view: the binary tensors are cut out of the body once, in _to_wire, not here.
        view = memoryview(body)
        body, binary = view[:header_length], view[header_length:]
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: malformed JSON ({exc})") from exc
    if type(req) is not dict or type(req.get("inputs")) is not list:
        raise InvalidInput('body: expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    by_name: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(req["inputs"]):
        if type(t) is not dict or type(name := t.get("name")) is not str:
            raise InvalidInput(f"inputs[{i}]: expected an object with a string 'name'")
        if name in by_name:
            raise InvalidInput(f"inputs[{i}]: input {name!r} given twice")
        by_name[name] = t
    names, expected = _spec_names(inputs)
    if not names.issuperset(by_name):
        unknown = sorted(set(by_name) - names)[0]
        raise InvalidInput(f"inputs: unknown input {unknown!r} for function {fn_name!r}; expected {expected}")
    # Binary data lies in the order the inputs are listed in the request.
    chunks: dict[str, memoryview | bytes] = {}
    pos = 0
    for name, t in by_name.items():
        params = t.get("parameters")
        size = params.get("binary_data_size") if type(params) is dict else None
        if size is None:
            continue
        if type(size) is not int or size < 0 or pos + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} binary bytes")
        chunks[name] = binary[pos : pos + size]
        pos += size
    if pos != len(binary):
        raise InvalidInput(f"body: {len(binary) - pos} binary bytes after the last binary input")
    wire = []
    for spec in inputs:
        t = by_name.get(spec.name)
        if t is None:
            raise InvalidInput(f"inputs: missing input {spec.name!r}; expected {expected}")
        wire.append(_to_wire(t, spec, chunks.get(spec.name)))
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters: expected an object")
    outputs = req.get("outputs")
    names_out = None
    binary_out: set[str] | bool = params.get("binary_data_output") is True
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise InvalidInput('outputs: expected a list of {"name": ...} objects')
        names_out = [o["name"] for o in outputs]
        if binary_out is False:
            binary_out = {
                o["name"]
                for o in outputs
                if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True
            }
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidInput("parameters.timeout: expected a positive integer of microseconds")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id: expected a string (KServe v2), echoed in the response")
    return InferRequest(request_id, wire, names_out, timeout / 1e6 if timeout else None, binary_out)


@functools.lru_cache(maxsize=1024)
def _spec_names(inputs: tuple[TensorSpec, ...]) -> tuple[frozenset[str], str]:
    """A function's input names, and their description for error messages (computed once per spec)."""
    return frozenset(s.name for s in inputs), ", ".join(s.describe() for s in inputs)


def _to_wire(t: dict[str, Any], spec: TensorSpec, raw_bytes: memoryview | bytes | None = None) -> dict[str, Any]:
    where = f"input {spec.name!r}"
    if t.get("datatype") != spec.datatype:
        raise InvalidInput(f"{where}: expected datatype {spec.datatype}, got {t.get('datatype')!r}")
    shape = t.get("shape")
    if type(shape) is not list or len(shape) != len(spec.shape):
        raise _bad_shape(where, spec, shape)
    count = 1
    for want, got in zip(spec.shape, shape, strict=True):
        if type(got) is not int or got < 0 or (want != -1 and want != got):
            raise _bad_shape(where, spec, shape)
        count *= got
    if raw_bytes is not None:
        need = count * ITEMSIZE[spec.datatype]
        if len(raw_bytes) != need:
            raise InvalidInput(
                f"{where}: shape {shape} of {spec.datatype} needs {need} bytes, binary_data_size is {len(raw_bytes)}"
            )
        # No copy: the tensor is a view of the HTTP body, written to the worker's socket from there.
        if spec.datatype == "BOOL" and bytes(raw_bytes).translate(None, b"\x00\x01"):
            raise InvalidInput(f"{where}: BOOL bytes must be 0 or 1")
        return {"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": raw_bytes}
    data = t.get("data")
    if type(data) is not list:
        raise InvalidInput(f"{where}: 'data' must be a list (row-major, flat or nested)")
    code = _PACK.get(spec.datatype)
    if code is not None and len(data) == count and set(map(type, data)) == _JUST_FLOATS:
        # The common case, a flat list of JSON floats, packed straight into bytes: struct rounds
        # as numpy's cast does and refuses what would overflow to inf (the numpy path says which).
        with contextlib.suppress(OverflowError):
            return {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": shape,
                "data": struct.pack(f"<{count}{code}", *data),
            }
    try:
        arr = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(f"{where}: 'data' is ragged ({exc})") from exc
    if arr.size != count:
        raise InvalidInput(f"{where}: shape {shape} needs {count} elements, 'data' has {arr.size}")
    if arr.size and arr.dtype.kind not in _ALLOWED_KINDS[spec.datatype]:
        raise InvalidInput(f"{where}: 'data' holds {arr.dtype.kind!r}-kind values, not {spec.datatype}")
    datatype = spec.datatype
    try:
        with np.errstate(over="raise", invalid="raise"):  # a value beyond the type is an error, not inf
            if datatype == "BF16":
                raw = bf16_from_f32(arr.astype("<f4"))
            else:
                raw = arr.astype(_NUMPY[datatype], casting="unsafe")
                if datatype not in ("FP16", "FP32", "FP64", "BOOL") and arr.size and not np.array_equal(raw, arr):
                    raise InvalidInput(f"{where}: values out of range for {datatype}")
    except (OverflowError, TypeError, FloatingPointError) as exc:
        raise InvalidInput(f"{where}: values do not fit {datatype} ({exc})") from exc
    return {"name": spec.name, "datatype": datatype, "shape": shape, "data": raw.tobytes()}


def _bad_shape(where: str, spec: TensorSpec, shape: object) -> InvalidInput:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return InvalidInput(f"{where}: shape must be a list of non-negative integers")
    return InvalidInput(f"{where}: expected shape {list(spec.shape)} (-1 = any), got {shape}")


def _allowed_kinds(datatype: str) -> str:
    if datatype == "BOOL":
        return "b"
    if datatype.startswith(("FP", "BF")):
        return "iuf"  # integers are valid floats in JSON
    return "iu"


_ALLOWED_KINDS = {d: _allowed_kinds(d) for d in DATATYPES}
_NUMPY = {d: np.dtype(code) for d, code in DATATYPES.items()}
_PACK = {"FP16": "e", "FP32": "f", "FP64": "d"}
_JUST_FLOATS = {float}


def tensor_data(t: dict[str, Any]) -> np.ndarray:
    """A wire tensor's data as a flat numpy array (BF16 widened to float32)."""
    raw = np.frombuffer(t["data"], dtype=_NUMPY[t["datatype"]])
    return bf16_to_f32(raw) if t["datatype"] == "BF16" else raw


def response(
    model_name: str,
    request_id: Any,
    outputs: list[dict[str, Any]],
    wanted: list[str] | None,
    binary: set[str] | bool = False,
    version: str = "1",
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    if wanted is not None:
        have = {o["name"] for o in outputs}
        missing = [w for w in wanted if w not in have]
        if missing:
            raise InvalidInput(f"outputs: unknown output {missing[0]!r}; the model returns {sorted(have)}")
        outputs = [o for o in outputs if o["name"] in wanted]
    listed, blobs = [], []
    for o in outputs:
        entry: dict[str, Any] = {"name": o["name"], "datatype": o["datatype"], "shape": o["shape"]}
        if binary is True or (binary and o["name"] in binary):
            entry["parameters"] = {"binary_data_size": memoryview(o["data"]).nbytes}
            blobs.append(o["data"])
        else:
            entry["data"] = tensor_data(o)
        listed.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": listed}
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)  # the one copy of each output into the body
