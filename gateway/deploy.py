"""Turning a deploy request into a packed model image (the only gateway code that imports torch).

`parse` validates the request without side effects; `build` runs in a thread:
it builds the model, derives its signature and packs its weights into shared
memory in first-use order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import shm
from shared.config import format_size
from shared.errors import DoesNotFit, InvalidInput
from shared.modelstore import ModelImage
from shared.specs import TensorSpec, specs_from_json

if TYPE_CHECKING:
    from shared.profiling import ExecTiming

log = logging.getLogger("torpor.gateway")
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class DeploySpec:
    name: str
    model: dict[str, Any]  # {"zoo": name, "seed": n} or {"path": user file}
    slo_ms: float
    input_spec: tuple[TensorSpec, ...] | None
    timeout_ms: float
    invoke_token: str | None
    slo_percentile: float = 98.0
    max_batch_size: int = 1
    drop_late: bool = False
    heavy: bool | None = None  # None: measured at deploy


MAX_BATCH = 256
SERVING_FIELDS = ("slo_percentile", "max_batch_size", "drop_late", "heavy")


def parse(name: str, body: object) -> DeploySpec:
    if not isinstance(body, dict):
        raise InvalidInput("body: expected a JSON object with 'model' and 'slo_ms'")
    fields = {"model", "slo_ms", "input_spec", "timeout_ms", "invoke_token", *SERVING_FIELDS}
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidInput(f"body: unknown field(s) {unknown}; expected {', '.join(sorted(fields))}")
    model = body.get("model")
    if not isinstance(model, dict) or len({"zoo", "path"} & set(model)) != 1:
        raise InvalidInput('model: expected {"zoo": NAME} or {"path": FILE}')
    if "zoo" in model:
        from shared import zoo

        if model["zoo"] not in zoo.names():
            raise InvalidInput(f"model.zoo: unknown model {model['zoo']!r}; known: {', '.join(zoo.names())}")
        seed = model.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise InvalidInput(f"model.seed: expected an integer from 0 to {MAX_SEED}")
        extra = sorted(set(model) - {"zoo", "seed"})
        if extra:
            raise InvalidInput(f"model: unknown field(s) {extra} beside 'zoo'")
        model = {"zoo": model["zoo"], "seed": seed}
    else:
        path = model["path"]
        if not isinstance(path, str) or not path:
            raise InvalidInput("model.path: expected a file path")
        if not os.path.isfile(path):
            raise InvalidInput(f"model.path: no such file {path!r} on the server")
        model = {"path": path}
    slo = body.get("slo_ms")
    if not isinstance(slo, (int, float)) or isinstance(slo, bool) or not 0 < slo <= 3_600_000:
        raise InvalidInput("slo_ms: expected a number of milliseconds > 0")
    spec = body.get("input_spec")
    inputs = specs_from_json(spec, "input_spec") if spec is not None else None
    timeout = body.get("timeout_ms", 60_000)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 3_600_000:
        raise InvalidInput("timeout_ms: expected a number of milliseconds > 0 (the default request deadline)")
    token = body.get("invoke_token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise InvalidInput("invoke_token: expected a string of at least 16 characters")
    pct = body.get("slo_percentile", 98.0)
    if not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 < pct < 100:
        raise InvalidInput("slo_percentile: expected a percentile between 0 and 100 exclusive, e.g. 98 or 99.9")
    batch = body.get("max_batch_size", 1)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise InvalidInput(f"max_batch_size: expected an integer from 1 to {MAX_BATCH}")
    drop_late = body.get("drop_late", False)
    if not isinstance(drop_late, bool):
        raise InvalidInput("drop_late: expected true or false")
    heavy = body.get("heavy")
    if heavy is not None and not isinstance(heavy, bool):
        raise InvalidInput("heavy: expected true, false or null (measured at deploy)")
    return DeploySpec(name, model, float(slo), inputs, float(timeout), token, float(pct), batch, drop_late, heavy)


def store_artifact(path: str, artifacts: Path, name: str) -> Path:
    """Copy a user's model file into the state dir, so it outlives the original."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    artifacts.mkdir(parents=True, exist_ok=True)
    dest = artifacts / f"{name}-{h.hexdigest()[:16]}.pt2"
    if not dest.exists():
        fd, tmp = tempfile.mkstemp(dir=artifacts, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    return dest


@dataclass
class Built:
    source: dict[str, Any]
    image: ModelImage
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    timing: ExecTiming | None = None  # None when the model could not be run here


def build(
    source: dict[str, Any],
    model_id: str,
    budget: int,
    input_spec: tuple[TensorSpec, ...] | None,
    max_batch: int = 1,
    threads: int | None = None,
    profile_on: str | None = None,
) -> Built:
    """Build, check, pack and profile a model (runs in a worker thread of the gateway).

    `profile_on`: a torch device ("cuda:0") to profile on, None for the CPU.
    """
    import torch

    from shared import program
    from shared.modelstore import layout, pack
    from shared.profiling import profile

    gm = program.build(source, meta=False)
    if "zoo" in source:
        from shared import zoo

        entry = zoo.entry(source["zoo"])
        inputs, outputs = entry.inputs, entry.outputs
    else:
        inputs, outputs = program.exported_signature(Path(source["pt2"]))
    if input_spec is not None:
        if len(input_spec) != len(inputs):
            raise InvalidInput(f"input_spec: the model takes {len(inputs)} input(s), the spec lists {len(input_spec)}")
        for given, actual in zip(input_spec, inputs, strict=True):
            if given.datatype != actual.datatype or len(given.shape) != len(actual.shape):
                raise InvalidInput(
                    f"input_spec: {given.describe()} does not match the model's input {actual.describe()}"
                )
        inputs = input_spec
    if max_batch > 1:
        unbatched = [s.describe() for s in (*inputs, *outputs) if not s.shape or s.shape[0] != -1]
        if unbatched:
            raise InvalidInput(
                f"max_batch_size: batching needs a batch dimension (-1) first in every input and output; "
                f"{unbatched[0]} has none"
            )
    ordered = program.packing_order(gm)
    table = layout(ordered)
    if table.nbytes > budget:
        raise DoesNotFit(
            f"model: needs {format_size(table.nbytes)} of device memory but a device holds {format_size(budget)}"
        )
    with torch.inference_mode():
        image = pack(ordered, shm.segment_name(f"model-{_safe(model_id)}"))
    try:
        # A few warm runs for the scheduler's cost model (see shared/profiling.py).
        # On the device kind that serves it: a GPU's timing is nothing like a CPU's. The packed
        # image is already written, so the program may move to the GPU and be dropped after.
        timing = profile(gm, inputs, max_batch, threads, device=torch.device(profile_on) if profile_on else None)
    except Exception as exc:  # a model that needs inputs we cannot make up still serves
        log.warning("could not profile %s (%s); the scheduler learns its timing from live runs", model_id, exc)
        timing = None
    return Built(source, image, inputs, outputs, timing)


def _safe(model_id: str) -> str:
    return model_id.replace("@", "_v")
