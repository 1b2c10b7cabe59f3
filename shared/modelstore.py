"""The host model store: one packed, shared copy of each model's weights.

A `ModelImage` is a shared-memory segment holding every state tensor of a model
back to back in first-use order (each 64-byte aligned), plus a `TensorTable`
saying where each tensor lies. Swapping a model in is then one sequential copy of
the segment into an arena slice, and the tensors are views at the same offsets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import shm

if TYPE_CHECKING:
    import torch

TENSOR_ALIGN = 64


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # from the start of the image
    nbytes: int


@dataclass(frozen=True)
class TensorTable:
    entries: tuple[TensorEntry, ...]
    nbytes: int  # total image size, padding included

    def to_wire(self) -> dict[str, Any]:
        return {
            "nbytes": self.nbytes,
            "entries": [[e.name, e.dtype, list(e.shape), e.offset, e.nbytes] for e in self.entries],
        }

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> TensorTable:
        entries = tuple(TensorEntry(n, d, tuple(s), o, b) for n, d, s, o, b in obj["entries"])
        return cls(entries, int(obj["nbytes"]))


def layout(tensors: list[tuple[str, torch.Tensor]]) -> TensorTable:
    """Offsets for tensors in the given order; tensors sharing storage share an entry's offset."""
    entries: list[TensorEntry] = []
    placed: dict[tuple[int, tuple[int, ...], tuple[int, ...]], int] = {}
    pos = 0
    for name, t in tensors:
        from shared.program import dtype_name

        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        nbytes = t.numel() * t.element_size()
        if key in placed and t.data_ptr() != 0:
            entries.append(TensorEntry(name, dtype_name(t.dtype), tuple(t.shape), placed[key], nbytes))
            continue
        pos = (pos + TENSOR_ALIGN - 1) // TENSOR_ALIGN * TENSOR_ALIGN
        placed[key] = pos
        entries.append(TensorEntry(name, dtype_name(t.dtype), tuple(t.shape), pos, nbytes))
        pos += nbytes
    return TensorTable(tuple(entries), (pos + TENSOR_ALIGN - 1) // TENSOR_ALIGN * TENSOR_ALIGN)


@dataclass
class ModelImage:
    """A model's packed weights in host shared memory (owned by the gateway)."""

    segment_name: str
    table: TensorTable

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def to_wire(self) -> dict[str, Any]:
        return {"segment": self.segment_name, "table": self.table.to_wire()}

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> ModelImage:
        return cls(obj["segment"], TensorTable.from_wire(obj["table"]))

    def unlink(self) -> None:
        shm.unlink(self.segment_name)


def pack(tensors: list[tuple[str, torch.Tensor]], segment_name: str) -> ModelImage:
    """Copy `tensors` (in first-use order) into a new shared-memory segment."""
    import torch

    table = layout(tensors)
    seg = shm.create(segment_name, table.nbytes)
    try:
        dst = torch.frombuffer(seg.buf, dtype=torch.uint8)
        for (_, t), e in zip(tensors, table.entries, strict=True):
            if e.nbytes:
                src = t.detach().contiguous().reshape(-1).view(torch.uint8)
                dst[e.offset : e.offset + e.nbytes].copy_(src)
        del dst
    except BaseException:
        seg.close()
        shm.unlink(segment_name)
        raise
    seg.close()
    return ModelImage(segment_name, table)


def views(buf: torch.Tensor, base: int, table: TensorTable) -> dict[str, torch.Tensor]:
    """Tensors of `table` as views into the uint8 tensor `buf` starting at `base`.

    Each is one strided window of a typed view of the buffer (one per dtype): a swap-in binds
    every tensor of its model while the request waits (932 for resnet152), and slicing, then
    viewing as the dtype, then as the shape took three operations each, 8.6 ms in all.
    """
    from shared.program import dtype_from_name

    typed: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for e in table.entries:
        as_type = typed.get(e.dtype)
        if as_type is None:
            dtype = dtype_from_name(e.dtype)
            # `base` may be negative (a pipeline stage's share starts past the image's start):
            # the typed view spans the whole buffer and each window is placed from its start.
            as_type = typed[e.dtype] = buf[: buf.numel() // dtype.itemsize * dtype.itemsize].view(dtype)
        at, size = base + e.offset, as_type.element_size()
        if at < 0 or at % size or at + e.nbytes > buf.numel():
            raise ValueError(
                f"tensor {e.name}: bytes [{at}, {at + e.nbytes}) are not {e.dtype} elements inside the "
                f"{buf.numel()}-byte buffer"
            )
        out[e.name] = as_type.as_strided(e.shape, _contiguous(e.shape), as_type.storage_offset() + at // size)
    return out


@functools.lru_cache(maxsize=4096)
def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
