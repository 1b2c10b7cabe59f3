"""The builder: a short-lived process that builds, checks, packs and profiles one model, then exits.

The gateway never imports torch, and a model's weights must live on the host once, in
its shared-memory image. So each deploy spawns a builder: it builds the model, packs
its weights straight into a segment named under the *gateway's* pid (so a later
gateway reclaims it if this one crashes, and the gateway unlinks it on removal),
profiles it on the device kind that serves, sends back what the gateway needs to
know -- signature, tensor table, timing -- and exits, taking its private copy of the
weights with it.

This module's top level is torch-free: the gateway imports it to name the entry.
The reply is one msgpack map on a pipe, never a pickle.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack

from shared.errors import DoesNotFit, InvalidInput, TorporError

log = logging.getLogger("torpor.builder")


@dataclass(frozen=True)
class BuildOrder:
    """Everything a builder needs; picklable, handed to the spawned process."""

    source: dict[str, Any]  # {"zoo": name, "seed": n} or {"pt2": artifact path}
    model_id: str
    segment: str  # shared-memory name to create, under the gateway's pid
    budget: int  # the smallest device arena: a larger model cannot be served
    input_spec: list[dict[str, Any]] | None  # specs_to_json of the deploy's input_spec
    max_batch: int = 1
    threads: int | None = None  # torch threads for profiling, as many as a worker computes with
    profile_on: str | None = None  # torch device to profile on ("cuda:0"), None for the CPU
    log_level: str = "info"


def run(order: BuildOrder, conn: Connection) -> None:
    """Module-level entry for multiprocessing (spawn): build, reply once, exit."""
    logging.basicConfig(level=order.log_level.upper(), format="%(asctime)s builder %(levelname)s %(message)s")
    # Ctrl-C goes to the whole process group; the gateway decides when a build stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        reply: dict[str, Any] = {"built": build(order)}
    except TorporError as exc:
        reply = {"error": exc.to_wire()}
    except Exception as exc:  # a user's model may fail in any way; the client gets a clear 400
        reply = {"error": InvalidInput(f"model: could not build it: {type(exc).__name__}: {exc}").to_wire()}
    conn.send_bytes(msgpack.packb(reply, use_bin_type=True))
    conn.close()


def build(order: BuildOrder) -> dict[str, Any]:
    """Build, check, pack and profile; returns the facts the gateway keeps (wire form)."""
    import torch

    from shared import program
    from shared.config import format_size
    from shared.modelstore import layout, pack
    from shared.profiling import profile
    from shared.specs import specs_from_json, specs_to_json

    gm = program.build(order.source, meta=False)
    if "zoo" in order.source:
        from shared import zoo

        entry = zoo.entry(order.source["zoo"])
        inputs, outputs = entry.inputs, entry.outputs
    else:
        inputs, outputs = program.exported_signature(Path(order.source["pt2"]))
    if order.input_spec is not None:
        input_spec = specs_from_json(order.input_spec, "input_spec")
        if len(input_spec) != len(inputs):
            raise InvalidInput(f"input_spec: the model takes {len(inputs)} input(s), the spec lists {len(input_spec)}")
        for given, actual in zip(input_spec, inputs, strict=True):
            if given.datatype != actual.datatype or len(given.shape) != len(actual.shape):
                raise InvalidInput(
                    f"input_spec: {given.describe()} does not match the model's input {actual.describe()}"
                )
        inputs = input_spec
    if order.max_batch > 1:
        unbatched = [s.describe() for s in (*inputs, *outputs) if not s.shape or s.shape[0] != -1]
        if unbatched:
            raise InvalidInput(
                f"max_batch_size: batching needs a batch dimension (-1) first in every input and output; "
                f"{unbatched[0]} has none"
            )
    ordered = program.packing_order(gm)
    table = layout(ordered)
    if table.nbytes > order.budget:
        raise DoesNotFit(
            f"model: needs {format_size(table.nbytes)} of device memory but a device holds {format_size(order.budget)}"
        )
    with torch.inference_mode():
        image = pack(ordered, order.segment)
    del ordered
    timing = None
    try:
        # A few warm runs for the scheduler's cost model (see shared/profiling.py), on the
        # device kind that serves it: a GPU's timing is nothing like a CPU's. The image is
        # written, so the model may move to the GPU; this process's CUDA context ends with it.
        device = torch.device(order.profile_on) if order.profile_on else None
        timing = profile(gm, inputs, order.max_batch, order.threads, device=device).to_wire()
    except Exception as exc:  # a model that needs inputs we cannot make up still serves
        log.warning("could not profile %s (%s); the scheduler learns its timing from live runs", order.model_id, exc)
    return {
        "segment": image.segment_name,
        "table": image.table.to_wire(),
        "inputs": specs_to_json(inputs),
        "outputs": specs_to_json(outputs),
        "timing": timing,
    }
