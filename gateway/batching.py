"""Dynamic batching on the wire: several requests' tensors joined along the batch dimension, and split back.

Tensors travel as raw little-endian bytes in C order, so joining along dimension 0
is concatenating the bytes, and splitting an output is cutting its bytes at row
boundaries. Only functions whose every input and output has a batch dimension first
may batch (checked at deploy); requests whose other dimensions differ are not joined.
"""

from __future__ import annotations

from typing import Any

Tensor = dict[str, Any]  # the wire form: name, datatype, shape, data


def join(requests: list[list[Tensor]]) -> tuple[list[Tensor], list[int]] | None:
    """One batched input list and each request's batch size; None if their shapes do not line up."""
    first = requests[0]
    sizes = [r[0]["shape"][0] if r and r[0]["shape"] else 0 for r in requests]
    joined = []
    for i, t in enumerate(first):
        parts = [r[i] for r in requests]
        if any(
            p["name"] != t["name"] or p["datatype"] != t["datatype"] or p["shape"][1:] != t["shape"][1:] for p in parts
        ):
            return None
        if [p["shape"][0] for p in parts] != sizes:
            return None  # inputs of one request disagree on its batch size
        joined.append(
            {
                "name": t["name"],
                "datatype": t["datatype"],
                "shape": [sum(sizes), *t["shape"][1:]],
                "data": b"".join(p["data"] for p in parts),  # one copy, from wherever each lies
            }
        )
    return joined, sizes


def split(outputs: list[Tensor], sizes: list[int]) -> list[list[Tensor]]:
    """Cut a batched reply back into one output list per request."""
    total = sum(sizes)
    per_request: list[list[Tensor]] = [[] for _ in sizes]
    for t in outputs:
        if not t["shape"] or t["shape"][0] != total:
            raise ValueError(f"output {t['name']!r} has shape {t['shape']}, not a batch of {total}")
        row = len(t["data"]) // total if total else 0
        pos = 0
        for k, n in enumerate(sizes):
            per_request[k].append(
                {
                    "name": t["name"],
                    "datatype": t["datatype"],
                    "shape": [n, *t["shape"][1:]],
                    "data": t["data"][pos : pos + n * row],
                }
            )
            pos += n * row
    return per_request
