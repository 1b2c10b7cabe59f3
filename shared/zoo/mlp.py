"""A tiny multi-layer perceptron: the cheapest model, for measuring serving overhead."""

from __future__ import annotations

import torch
from torch import nn

IN_FEATURES, HIDDEN, OUT_FEATURES = 64, 256, 10


class MLP(nn.Module):
    """64 -> 256 -> 256 -> 10 with ReLU; takes FP32 [batch, 64], returns FP32 [batch, 10]."""

    def __init__(self, d_in: int = IN_FEATURES, hidden: int = HIDDEN, d_out: int = OUT_FEATURES) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def mlp() -> MLP:
    return MLP()
