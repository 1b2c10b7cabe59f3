"""Turning a deploy request into a packed model image, without torch in this process.

`parse` validates the request without side effects; `build` hands the model to a
short-lived builder process (gpuworker/builder.py) that builds it, derives its
signature, packs its weights into shared memory in first-use order and profiles it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack

from shared import shm
from shared.catalog import ZOO_NAMES
from shared.errors import InvalidInput, ProtocolError, Unavailable, from_wire
from shared.exectiming import ExecTiming
from shared.modelstore import ModelImage
from shared.specs import TensorSpec, specs_from_json, specs_to_json

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
        if model["zoo"] not in ZOO_NAMES:
            raise InvalidInput(f"model.zoo: unknown model {model['zoo']!r}; known: {', '.join(ZOO_NAMES)}")
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
    timing: ExecTiming | None = None  # None when the model could not be run by the builder


BUILD_TIMEOUT_S = 1800.0  # a builder that has not answered by then is stuck: killed, the deploy fails


async def build(
    source: dict[str, Any],
    model_id: str,
    segment: str,
    budget: int,
    input_spec: tuple[TensorSpec, ...] | None,
    max_batch: int = 1,
    threads: int | None = None,
    profile_on: str | None = None,
    log_level: str = "info",
) -> Built:
    """Build, check, pack and profile a model in a short-lived builder process (gpuworker/builder.py).

    The builder creates the image's segment `segment` (named under this process's scheme);
    from the reply on, this process owns it. On any failure the segment is unlinked here, since
    the builder may have died after creating it. `profile_on`: a torch device ("cuda:0")
    to profile on, None for the CPU.
    """
    from gpuworker.builder import BuildOrder, run

    order = BuildOrder(
        source=source,
        model_id=model_id,
        segment=segment,
        budget=budget,
        input_spec=specs_to_json(input_spec) if input_spec is not None else None,
        max_batch=max_batch,
        threads=threads,
        profile_on=profile_on,
        log_level=log_level,
    )
    ctx = builder_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run, args=(order, sender), name=f"torpor-builder-{model_id}", daemon=True)
    try:
        proc.start()
        sender.close()  # ours: only the builder writes, so EOF means it is gone
        reply = await asyncio.to_thread(_receive, proc, receiver)
        built = _built(source, reply)
    except BaseException:
        shm.unlink(segment)
        raise
    finally:
        if proc.pid is not None:  # started
            if proc.is_alive():
                proc.kill()  # cancelled (shutdown) or failed: the builder's work is of no use now
            await asyncio.to_thread(proc.join, 10)
        sender.close()
        receiver.close()
    return built


# Imported once by the fork server, not per build (torch alone takes seconds on a busy machine).
BUILDER_PRELOAD = [
    "torch",
    "gpuworker.builder",
    "shared.program",
    "shared.zoo",
    "shared.profiling",
    "shared.modelstore",
    # What torch.export.load imports on first use (its serializer pulls in torch._dynamo): about
    # 1 s of every .pt2 deploy when each builder imported it afresh.
    "torch.export.pt2_archive._package",
]


def builder_context() -> multiprocessing.context.BaseContext:
    """Builders fork from multiprocessing's fork server, which has imported torch but never runs it.

    Each builder is still its own short-lived process (its weights leave with it), but it
    starts in milliseconds. The fork server is a separate child: this process never imports
    torch. It initialises no CUDA and starts no threads, so forking from it is safe; it exits
    when this process does.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(BUILDER_PRELOAD)
    return ctx


def start_builders() -> None:
    """Start the fork server now (it imports torch while the workers start), not at the first deploy."""
    from multiprocessing import forkserver

    builder_context()
    forkserver.ensure_running()


def _receive(proc: multiprocessing.process.BaseProcess, conn: Connection) -> dict[str, Any]:
    """The builder's one reply; its death or silence is an error, never a hang."""
    if not conn.poll(BUILD_TIMEOUT_S):
        proc.kill()
        raise Unavailable(f"building the model took more than {BUILD_TIMEOUT_S:.0f} s; gave up")
    try:
        data = conn.recv_bytes()
    except (EOFError, OSError):
        proc.join(5)
        raise Unavailable(
            f"the model builder exited without an answer (code {proc.exitcode}); "
            "it may have run out of memory building the model"
        ) from None
    try:
        reply = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable builder reply: {exc}") from exc
    if not isinstance(reply, dict):
        raise ProtocolError("builder reply is not a map")
    return reply


def _built(source: dict[str, Any], reply: dict[str, Any]) -> Built:
    """Check the builder's reply once, here at the edge, and turn it into gateway objects."""
    if "error" in reply:
        raise from_wire(reply["error"])
    facts = reply.get("built")
    if not isinstance(facts, dict):
        raise ProtocolError("builder reply has neither 'built' nor 'error'")
    try:
        image = ModelImage.from_wire({"segment": facts["segment"], "table": facts["table"]})
        inputs = specs_from_json(facts["inputs"], "inputs")
        outputs = specs_from_json(facts["outputs"], "outputs")
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise ProtocolError(f"malformed builder reply: {exc}") from exc
    timing = ExecTiming.from_wire(facts["timing"]) if facts.get("timing") is not None else None
    return Built(source, image, inputs, outputs, timing)
