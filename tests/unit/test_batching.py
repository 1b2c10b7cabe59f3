from __future__ import annotations

import numpy as np
import pytest

from gateway.batching import join, split


def tensor(name: str, a: np.ndarray, dt: str = "FP32") -> dict:
    return {"name": name, "datatype": dt, "shape": list(a.shape), "data": a.tobytes()}


def test_join_then_split_round_trips_rows() -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 6)
    b = np.arange(12, dtype=np.float32).reshape(2, 6) + 100
    joined = join([[tensor("x", a)], [tensor("x", b)]])
    assert joined is not None
    (x,), sizes = joined
    assert sizes == [1, 2] and x["shape"] == [3, 6]
    both = np.frombuffer(x["data"], np.float32).reshape(3, 6)
    assert (both[0] == a[0]).all() and (both[1:] == b).all()
    # The model's output keeps the batch dimension: cut it back per request.
    out = tensor("y", both * 2)
    ya, yb = split([out], sizes)
    assert ya[0]["shape"] == [1, 6] and (np.frombuffer(ya[0]["data"], np.float32) == a.ravel() * 2).all()
    assert yb[0]["shape"] == [2, 6] and (np.frombuffer(yb[0]["data"], np.float32) == b.ravel() * 2).all()


def test_requests_that_do_not_line_up_are_not_joined() -> None:
    a = np.zeros((1, 4), np.float32)
    b = np.zeros((1, 5), np.float32)
    assert join([[tensor("x", a)], [tensor("x", b)]]) is None
    assert join([[tensor("x", a)], [tensor("x", a.astype(np.float64), "FP64")]]) is None


def test_split_refuses_an_output_without_the_batch() -> None:
    with pytest.raises(ValueError, match="not a batch of 3"):
        split([tensor("y", np.zeros((1, 2), np.float32))], [1, 2])
