"""What nodes tell each other through Redis: function definitions and node records.

Both travel as JSON (never pickle): a node that reads them executes nothing it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson


class NodeState(StrEnum):
    UP = "up"
    DRAINING = "draining"  # no new placements; finishing what it has and handing images over
    DOWN = "down"  # no heartbeat within the TTL


class HoldState(StrEnum):
    LOADING = "loading"  # claimed, the image is being built or fetched
    HOST = "host"  # the image is in this node's host memory


@dataclass(frozen=True)
class FunctionDef:
    """One deployed function as every node sees it (the deploy body minus secrets, plus its signature)."""

    name: str
    version: int
    spec: dict[str, Any]  # the deploy body without invoke_token; model is {"zoo", "seed"} or {"artifact"}
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    model_bytes: int
    invoke_token_sha256: str | None = None
    artifact_sha256: str | None = None  # a user's .pt2, fetched from a holder by digest
    deployed_by: str = ""
    # imagefile.layout_digest of its packed image: a node fetching the image from a holder checks
    # the header it gets against this before trusting that header's chunk checksums.
    image_digest: str | None = None

    @property
    def slo_ms(self) -> float:
        return float(self.spec["slo_ms"])

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes | str) -> FunctionDef:
        obj = orjson.loads(raw)
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})


@dataclass(frozen=True)
class Hold:
    state: HoldState
    epoch: int  # the fencing token of the claim that put it there

    def encode(self) -> str:
        return f"{self.epoch}:{self.state.value}"

    @classmethod
    def decode(cls, raw: str) -> Hold:
        epoch, _, state = raw.partition(":")
        return cls(HoldState(state), int(epoch))


@dataclass(frozen=True)
class NodeRecord:
    """A node's heartbeat: where it is, what it holds, how loaded it is."""

    name: str
    url: str
    state: NodeState = NodeState.UP
    ts: float = 0.0  # wall-clock time of the heartbeat
    devices: int = 1
    host_used: int = 0
    host_budget: int = 0
    held: tuple[str, ...] = ()  # functions whose image is in this node's host memory
    resident: tuple[str, ...] = ()  # functions resident on one of its devices
    queued: int = 0  # requests waiting on this node
    running: int = 0  # devices executing now
    exec_ms: dict[str, float] = field(default_factory=dict)  # per held function, as its scheduler predicts
    shed: tuple[str, ...] = ()  # functions its admission refuses now (the node is overloaded)

    def to_json(self) -> bytes:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes | str) -> NodeRecord:
        obj = orjson.loads(raw)
        return cls(
            name=str(obj["name"]),
            url=str(obj["url"]),
            state=NodeState(obj.get("state", "up")),
            ts=float(obj.get("ts", 0.0)),
            devices=int(obj.get("devices", 1)),
            host_used=int(obj.get("host_used", 0)),
            host_budget=int(obj.get("host_budget", 0)),
            held=tuple(obj.get("held", ())),
            resident=tuple(obj.get("resident", ())),
            queued=int(obj.get("queued", 0)),
            running=int(obj.get("running", 0)),
            exec_ms={str(k): float(v) for k, v in obj.get("exec_ms", {}).items()},
            shed=tuple(obj.get("shed", ())),
        )
