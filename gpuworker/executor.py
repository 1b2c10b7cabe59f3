"""What a worker does with each operation: prepare, load (swap in), evict, infer, forget.

All of it runs on the worker's main thread except the copy itself (SwapEngine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from gpuworker.backends import Backend
from gpuworker.fills import HostFills, read_image
from gpuworker.gate import SwapGate, gated
from gpuworker.pipeline import Staging
from gpuworker.stages import stage_cuts
from gpuworker.swap import HostFill, Swap, SwapEngine, SwapPlan, plan_groups
from shared import program
from shared.errors import InvalidInput, RequestFailed
from shared.modelstore import ModelImage, TensorTable, views
from shared.protocol import (
    Buffer,
    Evict,
    Evicted,
    Fill,
    Forget,
    Forgotten,
    HostReleased,
    Infer,
    Inferred,
    Load,
    Loaded,
    Part,
    Peers,
    PeersOpened,
    Prepare,
    Prepared,
    ReleaseHost,
    ResidentModel,
    StatsReply,
    TensorMeta,
)


@dataclass
class Shared:
    """One architecture's lifted graphs (plain and gated), shared by every function that runs it."""

    plain: torch.fx.GraphModule
    gated: torch.fx.GraphModule
    gate: SwapGate
    users: int = 0


@dataclass
class Program:
    """A prepared function: its host image, swap plan and shared graphs; weights are views bound at load."""

    model_id: str
    image: ModelImage
    graphs: Shared
    key: tuple[str, tuple[int, ...]]  # the graphs' entry in Executor.shared
    plan: SwapPlan
    names: tuple[str, ...]  # state tensors, in the graphs' argument order
    state: list[torch.Tensor] = field(default_factory=list)  # views of the arena at bound_offset
    bound_offset: int | None = None  # arena offset `state` views


@dataclass
class Residency:
    model_id: str
    offset: int
    nbytes: int
    swap: Swap | None  # the swap that brought it in; done once .swap.done is set
    source: str
    part: Part | None = None  # only this pipeline stage's share is here (gpuworker/pipeline.py)
    base: int = 0  # the image byte at the slice's first byte (a share in a slice of its own size)
    state: list[torch.Tensor] | None = None  # that share's views, when not the program's own
    last_exec_s: float | None = None  # its latest whole-model execution here


# A resident model whose last run took at most this long is run by the worker's reader thread
# when the main thread is idle (gpuworker/main.py): for such a model the thread handoff is a
# large share of the request's time, and a STATS or LOAD frame read behind it waits no longer.
INLINE_EXEC_S = 0.002


class Executor:
    def __init__(self, backend: Backend, group_bytes: int, send_reply: Callable[[int, Any], None]) -> None:
        self.backend = backend
        self.group_bytes = group_bytes
        self.programs: dict[str, Program] = {}
        # Lifted graphs by (architecture key, swap groups): 50 functions of one model share one.
        self.shared: dict[tuple[str, tuple[int, ...]], Shared] = {}
        self._zoo_programs: dict[str, program.Lifted] = {}  # zoo model name -> its lifted program
        self.resident: dict[str, Residency] = {}
        self.engine = SwapEngine(backend)
        self.staging = Staging(self)
        self._reply = send_reply
        self.counters = {"swaps": 0, "swap_bytes": 0, "infers": 0, "busy_s": 0.0}
        self.fills = HostFills()  # host images still on disk or arriving from another node
        self.busy_since: float | None = None  # monotonic start of the frame being handled

    # -- operations ---------------------------------------------------------
    def runs_inline(self, body: Infer) -> bool:
        """Whether this INFER is short and needs nothing the reader thread must still deliver.

        Its model must be whole and resident here (no swap in flight, which may wait for FILL
        frames only the reader reads) and have run within INLINE_EXEC_S last time.
        """
        res = self.resident.get(body.model_id)
        return (
            res is not None
            and body.part is None
            and res.part is None
            and (res.swap is None or res.swap.done.is_set())
            and res.last_exec_s is not None
            and res.last_exec_s <= INLINE_EXEC_S
        )

    def prepare(self, body: Prepare) -> Prepared:
        model_id = body.model_id
        table = TensorTable.from_wire({"nbytes": body.image.table.nbytes, "entries": body.image.table.entries})
        image = ModelImage(body.image.segment, table)
        lifted = self._lifted_program(body.source)
        missing = sorted(set(lifted.names) - {e.name for e in image.table.entries})
        if missing:
            raise InvalidInput(f"model {model_id}: image lacks tensors {missing[:5]}")
        plan = plan_groups(image.table, self.group_bytes)
        key = (lifted.key, tuple(plan.group_of[n] for n in lifted.names))
        graphs = self.shared.get(key)
        if graphs is None:
            gated_gm, gate = gated(lifted, plan.group_of, self.backend)
            graphs = self.shared[key] = Shared(lifted.gm, gated_gm, gate)
        graphs.users += 1
        old = self.programs.get(model_id)
        self.programs[model_id] = Program(model_id, image, graphs, key, plan, lifted.names)
        if old is not None:  # prepared again (e.g. a redeploy): the old one lets go of its graphs
            self._release(old)
        return Prepared(groups=plan.groups, stages=stage_cuts(lifted, plan))

    def _lifted_program(self, source: dict[str, Any]) -> program.Lifted:
        """The lifted program of a model source; a zoo architecture is built and traced once per worker.

        A zoo model's seed changes its weights, never its graph: a further function of a known
        architecture (a new node's cold start, say) skips the ~0.3 s of building and tracing it.
        """
        if "zoo" not in source:
            return program.lift(program.build(source, meta=True))
        lifted = self._zoo_programs.get(source["zoo"])
        if lifted is None:
            lifted = self._zoo_programs[source["zoo"]] = program.lift(program.build(source, meta=True))
        return lifted

    def load(self, rid: int, body: Load) -> None:
        """Start a swap-in; the reply is sent by the copy thread when the copy ends."""
        try:
            self._load(rid, body)
        except Exception:
            if body.follow is not None:  # refused: no swap will ever take its feed
                self.fills.drop(body.follow)
            raise

    def _load(self, rid: int, body: Load) -> None:
        prog = self._program(body.model_id)
        if body.part is not None:
            self.staging.load(rid, prog, body)  # one pipeline stage's share (gpuworker/pipeline.py)
            return
        res = self.resident.get(body.model_id)
        if res is not None and res.part is not None and res.offset == body.offset and body.peer is None:
            self.staging.consolidate(rid, prog, res)
            return
        offset, nbytes = body.offset, prog.image.nbytes
        dst = self.reserve(body.model_id, offset, nbytes)
        peer, fill, in_place = body.peer, None, False
        if peer is None:
            src = self.backend.host_buffer(prog.image.segment_name)[:nbytes]
            source = "host"
            if body.follow is not None:
                # The gateway writes the host image as it arrives from other nodes: copy each
                # group once its bytes are verified (FILL frames advance the feed).
                fill, source = self.expect_feed(body), "node"
            elif body.fill_from is not None:
                # The host image is still on disk: read it in while the copy follows. A CPU
                # arena is host memory, so the file is read straight into it and execution
                # starts on each verified chunk; the host image is copied from the arena
                # afterwards, on the reader's thread, off the request's path.
                in_place = self.backend.arena.device.type == "cpu"
                fill = read_image(prog.model_id, prog.image.segment_name, body.fill_from, dst if in_place else None)
                source = "disk"
        else:
            src = self.backend.peer_arena(peer.device)[peer.offset : peer.offset + nbytes]
            if src.numel() != nbytes:
                raise InvalidInput(f"peer slice at {peer.offset} of device {peer.device} is outside its arena")
            source = f"peer:{peer.device}"
        swap = Swap(prog.model_id, prog.plan, dst, src, lambda s: None, fill, in_place=in_place)
        self.bind(prog, offset)  # before the copy thread starts: beside it, each view waited for the GIL
        self.start(rid, prog, swap, offset, nbytes, source, nbytes, follow=body.follow)

    def reserve(self, model_id: str, offset: int, nbytes: int) -> torch.Tensor:
        """The arena slice a swap-in may write, checked: not resident yet, inside the arena, overlapping nothing."""
        if model_id in self.resident:
            raise InvalidInput(f"model {model_id} is already resident")
        if offset < 0 or offset + nbytes > self.backend.arena.numel():
            raise InvalidInput(f"slice [{offset}, {offset + nbytes}) is outside the arena")
        self._check_overlap(offset, nbytes)
        return self.backend.arena[offset : offset + nbytes]

    def start(
        self,
        rid: int,
        prog: Program,
        swap: Swap,
        offset: int,
        nbytes: int,
        source: str,
        copied: int,
        follow: int | None = None,
    ) -> Residency:
        """Make the model resident at [offset, offset+nbytes) and start the copy; the copy thread replies."""

        def done(swap: Swap) -> None:
            if follow is not None:
                self.fills.drop(follow)
            if swap.error is None:
                self.counters["swaps"] += 1
                self.counters["swap_bytes"] += copied
                self._reply(rid, Loaded(swap_ms=swap.seconds * 1e3, bytes=copied, source=source))
            else:
                # A failed or cancelled swap leaves nothing resident and the slice free.
                if self.resident.get(prog.model_id) is res:
                    self._drop(prog.model_id)
                self._reply(rid, RequestFailed(f"swap-in of {prog.model_id} failed: {swap.error}"))

        swap.on_done = done
        res = Residency(prog.model_id, offset, nbytes, swap, source)
        self.resident[prog.model_id] = res
        self.engine.submit(swap)
        return res

    def bind(self, prog: Program, offset: int) -> None:
        """The program's views of a whole model at `offset`; bound while the copy runs (the gate guards reads)."""
        if prog.bound_offset != offset:
            prog.state = self.views_at(prog, offset, range(len(prog.names)))
            prog.bound_offset = offset

    def views_at(self, prog: Program, base: int, indices: Any) -> list[torch.Tensor]:
        """Views of the state tensors at `indices` (argument positions) for an image starting at arena byte `base`."""
        entries = {e.name: e for e in prog.image.table.entries}
        table = TensorTable(tuple(entries[prog.names[i]] for i in indices), prog.image.table.nbytes)
        # Made in inference mode, a view carries no autograd view-tracking: 285 bytes instead of
        # 854 each, 0.18 MB per resnet50 function and worker. They are only ever read, in inference mode.
        with torch.inference_mode():
            tensors = views(self.backend.arena, base, table)
        return [tensors[prog.names[i]] for i in indices]

    def reply(self, rid: int, result: Any) -> None:
        self._reply(rid, result)

    def lifted_of(self, prog: Program) -> program.Lifted:
        return program.Lifted(prog.graphs.plain, prog.names, prog.key[0])

    def expect_feed(self, body: Load) -> HostFill:
        return self.fills.expect(body)

    def feed(self, body: Fill) -> None:
        self.fills.advance(body)

    def evict(self, body: Evict) -> Evicted:
        res = self.resident.get(body.model_id)
        if res is None:
            return Evicted(evicted=False)
        if res.swap is not None and not res.swap.done.is_set():
            res.swap.cancel()
            res.swap.done.wait()
        if res.swap is not None and res.swap.fill is not None and res.swap.in_place:
            res.swap.fill.finished.wait()  # the slice is reused only once no reader writes into it
        self._drop(body.model_id)
        return Evicted(evicted=True)

    def infer(self, body: Infer, buffers: list[Buffer]) -> tuple[Inferred, list[Buffer]]:
        """Run; inputs are views of the frame's buffers, outputs leave as views of the result tensors."""
        model_id = body.model_id
        prog = self._program(model_id)
        res = self.resident.get(model_id)
        if res is None:
            raise RequestFailed(f"model {model_id} is not resident on this device")
        if len(buffers) != len(body.inputs):
            raise InvalidInput(f"{len(body.inputs)} inputs described, {len(buffers)} buffers sent")
        inputs = [_to_tensor(m, b) for m, b in zip(body.inputs, buffers, strict=True)]
        inputs = self.backend.prepare_inputs(inputs)
        if res.swap is not None and res.swap.error is not None:
            raise RequestFailed(f"swap-in of {model_id} failed: {res.swap.error}")
        if res.part is not None and body.part is None:
            raise RequestFailed(f"model {model_id}: only pipeline stage {res.part.stage} is resident on this device")
        try:
            if body.part is not None:
                out, exec_s, waited_s = self.staging.infer(prog, res, body.part, inputs)
            else:
                out, exec_s, waited_s = self._run(prog, res, inputs)
                res.last_exec_s = exec_s
            outputs = self.backend.finish_outputs(_flatten(out))
        except (RequestFailed, InvalidInput):
            raise
        except Exception as exc:
            raise RequestFailed(f"model {model_id} failed: {type(exc).__name__}: {exc}") from exc
        self.counters["infers"] += 1
        self.counters["busy_s"] += exec_s
        names = body.output_names
        metas = [
            TensorMeta(name=names[i] if i < len(names) else f"output{i}", datatype=_kserve(t), shape=list(t.shape))
            for i, t in enumerate(outputs)
        ]
        inferred = Inferred(outputs=metas, exec_ms=exec_s * 1e3, wait_ms=waited_s * 1e3)
        return inferred, [_raw(t) for t in outputs]

    def _run(self, prog: Program, res: Residency, inputs: list[torch.Tensor]) -> tuple[Any, float, float]:
        """The whole model: (its output, exec seconds, seconds waited for groups still arriving)."""
        swap = res.swap if res.swap is not None and not res.swap.done.is_set() else None
        graphs = prog.graphs
        if swap is None:  # warm: the plain graph, and no gate to arm (a Module's setattr is not cheap)
            t0 = time.perf_counter()
            with torch.inference_mode():
                # forward itself: a GraphModule's __call__ adds hook checks and an error wrapper per
                # call, a measurable share of a small model's run (no hooks are ever registered here)
                out = graphs.plain.forward(*prog.state, *inputs)
            return out, time.perf_counter() - t0, 0.0
        gate = graphs.gate
        gate.swap, gate.waited_s = swap, 0.0
        fill = swap.fill
        if fill is not None:
            fill.run_started()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = graphs.gated.forward(*prog.state, *inputs)
        finally:
            gate.swap = None
            if fill is not None:
                fill.run_ended()
        return out, time.perf_counter() - t0, gate.waited_s

    def forget(self, body: Forget) -> Forgotten:
        model_id = body.model_id
        if model_id in self.resident:
            self.evict(Evict(model_id=model_id))
        prog = self.programs.pop(model_id, None)
        if prog is not None:
            self._release(prog)
            self.backend.release_host_buffer(prog.image.segment_name)
        return Forgotten(forgotten=prog is not None)

    def release_host(self, body: ReleaseHost) -> HostReleased:
        """Drop the mapping of a model's host image: the gateway pushed it to disk and frees its pages.

        A later swap maps the segment anew (it is re-created, filled from disk, by then).
        """
        prog = self.programs.get(body.model_id)
        if prog is None:
            return HostReleased(released=False)
        self.backend.release_host_buffer(prog.image.segment_name)
        return HostReleased(released=True)

    def peers(self, body: Peers) -> PeersOpened:
        """Open the other devices' arenas for peer copies (CUDA IPC handles)."""
        try:
            handles = {int(k): v for k, v in body.handles.items()}
        except ValueError:
            raise InvalidInput(f"PEERS: device keys must be integers, got {sorted(body.handles)}") from None
        self.backend.open_peers(handles)
        # Peer copy bandwidths (CUDA measures them on opening) are device facts the gateway's topology uses.
        return PeersOpened(peers=len(handles), link_gbps=dict(getattr(self.backend, "bandwidth", {})))

    def stats(self) -> StatsReply:
        return StatsReply(
            resident=[
                ResidentModel(model_id=r.model_id, offset=r.offset, bytes=r.nbytes, source=r.source)
                for r in list(self.resident.values())
            ],
            prepared=len(self.programs),
            busy_for_s=0.0 if self.busy_since is None else time.monotonic() - self.busy_since,
            counters=dict(self.counters),
            **self.backend.info(),
        )

    def close(self) -> None:
        self.engine.close()

    # -- helpers -------------------------------------------------------------
    def _program(self, model_id: str) -> Program:
        prog = self.programs.get(model_id)
        if prog is None:
            raise RequestFailed(f"model {model_id} was not prepared on this worker")
        return prog

    def _check_overlap(self, offset: int, nbytes: int) -> None:
        for r in list(self.resident.values()):  # the reader thread may load while the copy thread drops
            if offset < r.offset + r.nbytes and r.offset < offset + nbytes:
                raise InvalidInput(f"slice [{offset}, {offset + nbytes}) overlaps resident model {r.model_id}")

    def _release(self, prog: Program) -> None:
        prog.graphs.users -= 1
        if prog.graphs.users == 0:
            del self.shared[prog.key]

    def _drop(self, model_id: str) -> None:
        # The program keeps viewing the slice (rebinding costs ~10-40 ms for a large
        # model); infer refuses a model that is not resident, so stale views are never read.
        self.resident.pop(model_id, None)


def _to_tensor(meta: TensorMeta, data: Buffer) -> torch.Tensor:
    """A view of the received buffer (a writable bytearray: torch refuses read-only memory); no copy."""
    dtype = program.KSERVE_TO_TORCH.get(meta.datatype)
    if dtype is None:
        raise InvalidInput(f"input {meta.name!r}: unsupported datatype {meta.datatype}")
    expected = math.prod(meta.shape) * dtype.itemsize
    got = memoryview(data).nbytes
    if got != expected:
        raise InvalidInput(f"input {meta.name!r}: {got} bytes for shape {meta.shape}, expected {expected}")
    if not expected:
        return torch.empty(meta.shape, dtype=dtype)
    if isinstance(data, bytes) or memoryview(data).readonly:
        data = bytearray(data)  # only frames built in-process (benchmarks) arrive read-only
    return torch.frombuffer(data, dtype=dtype).reshape(meta.shape)


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    raise RequestFailed(f"model returned {type(out).__name__}, expected tensors")


def _kserve(t: torch.Tensor) -> str:
    return program.TORCH_TO_KSERVE[t.dtype]


def _raw(t: torch.Tensor) -> Buffer:
    """The tensor's bytes as a view (sent before the tensor is dropped), not a copy."""
    if t.device.type == "cpu" and t.dtype is not torch.bfloat16 and not t.requires_grad and t.is_contiguous():
        return memoryview(t.numpy()).cast("B") if t.numel() else b""  # the common case, no dispatched torch ops
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""
