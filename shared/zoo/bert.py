"""BERT-base encoder with pooler (Devlin et al. 2019); attention written out with plain tensor ops.

Module names follow Hugging Face's BertModel, so its state dicts would load as is.
Dropout is left out: the zoo only serves inference. There is no attention mask,
since the only input is token ids (every position attends to every other).
"""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB_SIZE = 30522
HIDDEN = 768
LAYERS = 12
HEADS = 12
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 3072
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LN_EPS = 1e-12


def _embedding(num: int, dim: int) -> nn.Embedding:
    # An explicit (zero) weight skips nn.Embedding's default normal_ init: zoo.build
    # overwrites it anyway, and on the meta device normal_ goes through torch._refs,
    # whose first use imports torch._dynamo (about 2 s in a fresh process).
    return nn.Embedding(num, dim, _weight=torch.zeros(num, dim))


class BertEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = _embedding(VOCAB_SIZE, HIDDEN)
        self.position_embeddings = _embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = _embedding(TYPE_VOCAB_SIZE, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)
        # Persistent so the host model store packs it with the weights: workers bind
        # every tensor of a meta skeleton from shared memory, buffers included.
        self.register_buffer("position_ids", torch.empty(1, MAX_POSITIONS, dtype=torch.long), persistent=True)
        self.position_ids: torch.Tensor
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        # Skipped on meta, where arange would import sympy (about 0.5 s of a worker's cold start).
        if not self.position_ids.is_meta:
            self.position_ids.copy_(torch.arange(MAX_POSITIONS, device=self.position_ids.device).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # narrow, not [:, :n]: under fx a submodule's buffer is a plain tensor, which cannot
        # be sliced by the symbolic n; narrow records the same slice as a graph node.
        position_ids = torch.narrow(self.position_ids, 1, 0, input_ids.size(1))
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(torch.zeros_like(input_ids))
            + self.position_embeddings(position_ids)
        )
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)

    @staticmethod
    def _split_heads(x: torch.Tensor) -> torch.Tensor:
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]; sizes stay symbolic under fx.
        return x.view(x.size(0), x.size(1), HEADS, HEAD_DIM).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return context.transpose(1, 2).reshape(x.size(0), x.size(1), HIDDEN)


class BertSelfOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class BertAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertSelfOutput()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)
        self.intermediate_act_fn = nn.GELU()  # exact (erf) GELU, as BERT's "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(INTERMEDIATE, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class BertLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertOutput()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer() for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertPooler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class BertModel(nn.Module):
    """Takes INT64 token ids [batch, seq] (seq <= 512), returns the FP32 pooled output [batch, 768]."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()
        self.pooler = BertPooler()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.encoder(self.embeddings(input_ids)))


def bert_base() -> BertModel:
    return BertModel()
