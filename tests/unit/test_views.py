"""shared.modelstore.views: a packed table's tensors as windows of one byte buffer."""

from __future__ import annotations

import pytest
import torch

from shared.modelstore import TensorTable, layout, views


def _packed(tensors: dict[str, torch.Tensor], lead: int = 0) -> tuple[torch.Tensor, TensorTable]:
    table = layout(list(tensors.items()))
    buf = torch.zeros(lead + table.nbytes, dtype=torch.uint8)
    for e in table.entries:
        src = tensors[e.name].contiguous().reshape(-1).view(torch.uint8)
        buf[lead + e.offset : lead + e.offset + e.nbytes].copy_(src)
    return buf, table


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 5, 7, generator=g),
        "b": torch.randn(7, generator=g).double(),
        "ids": torch.arange(11, dtype=torch.int64).reshape(1, 11),
        "half": torch.randn(2, 3, generator=g).half(),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False, True]),
    }


@pytest.mark.parametrize("lead", [0, 4096])
def test_views_give_every_tensor_bitwise_with_its_shape_and_dtype(lead: int) -> None:
    tensors = _tensors()
    buf, table = _packed(tensors, lead)
    got = views(buf, lead, table)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape and got[name].is_contiguous()
        assert torch.equal(got[name], t), name
    got["w"][0, 0, 0] = 99.0  # a view, not a copy
    assert buf[lead : lead + 4].view(torch.float32).item() == 99.0


def test_a_negative_base_places_a_later_share_of_the_image() -> None:
    """A pipeline stage holds the image from its first tensor on: base = where it starts - that offset."""
    tensors = _tensors()
    buf, table = _packed(tensors)
    later = TensorTable(tuple(e for e in table.entries if e.offset >= 128), table.nbytes)
    start = min(e.offset for e in later.entries)
    share = buf[start:].clone()
    got = views(share, -start, later)
    for e in later.entries:
        assert torch.equal(got[e.name], tensors[e.name]), e.name


def test_a_window_outside_the_buffer_is_refused() -> None:
    buf, table = _packed(_tensors())
    with pytest.raises(ValueError, match="inside the"):
        views(buf[: table.nbytes // 2], 0, table)
    with pytest.raises(ValueError, match="not"):
        views(buf, 2, table)  # float32 windows off their 4-byte boundaries
