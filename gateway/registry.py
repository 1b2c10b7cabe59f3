"""Deployed functions and their persistence under --state-dir.

The registry file is replaced atomically (write a temporary file, fsync, rename),
so a crash mid-deploy leaves either the old registry or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.decisions import Stages
from shared.errors import InvalidInput, NotFound
from shared.exectiming import ExecTiming
from shared.modelstore import ModelImage
from shared.specs import TensorSpec, specs_from_json, specs_to_json

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
REGISTRY_FILE = "functions.json"
READY = "READY"
UNAVAILABLE = "UNAVAILABLE"  # config and model source kept, no memory held
UNLOADED = "unloaded"  # the reason when a user unloaded it (else: why it could not be restored)


def check_name(name: str) -> str:
    if not NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"function name {name!r}: expected 1-63 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass
class Function:
    name: str
    source: dict[str, Any]  # {"zoo": name, "seed": n} or {"pt2": artifact path}
    slo_ms: float
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_bytes: int
    timeout_ms: float = 60_000.0  # default per-request deadline
    invoke_token_sha256: str | None = None  # callers must present the token, when set
    version: int = 1
    created: float = field(default_factory=time.time)
    slo_percentile: float = 98.0  # slo_ms holds for this share of requests
    max_batch_size: int = 1  # waiting requests may run together up to this many
    drop_late: bool = False  # reject early (503) what can no longer meet the SLO
    heavy: bool | None = None  # set by the user; None: as measured at deploy
    state: str = READY  # READY, or UNAVAILABLE once unloaded (Triton's repository states)
    reason: str = ""  # why it is not READY
    image: ModelImage | None = None  # set once packed in this process
    timing: ExecTiming | None = None  # profiled at deploy in this process
    stages: tuple[Stages, ...] = ()  # its pipeline-stage cuts, from the workers' PREPARE replies

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def served_versions(self) -> list[str]:
        """The versions that answer requests: the current one while loaded, none once unloaded."""
        return [str(self.version)] if self.ready else []

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.source,
            "slo_ms": self.slo_ms,
            "inputs": specs_to_json(self.inputs),
            "outputs": specs_to_json(self.outputs),
            "model_bytes": self.model_bytes,
            "timeout_ms": self.timeout_ms,
            "invoke_token_sha256": self.invoke_token_sha256,
            "version": self.version,
            "created": self.created,
            "slo_percentile": self.slo_percentile,
            "max_batch_size": self.max_batch_size,
            "drop_late": self.drop_late,
            "heavy": self.heavy,
            # Saved so a restart from the state dir's images needs no profiling run.
            "timing": self.timing.to_wire() if self.timing is not None else None,
            "state": self.state,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Function:
        return cls(
            name=obj["name"],
            source=obj["model"],
            slo_ms=float(obj["slo_ms"]),
            inputs=specs_from_json(obj["inputs"], "inputs"),
            outputs=specs_from_json(obj["outputs"], "outputs"),
            model_bytes=int(obj["model_bytes"]),
            timeout_ms=float(obj.get("timeout_ms", 60_000.0)),
            invoke_token_sha256=obj.get("invoke_token_sha256"),
            version=int(obj.get("version", 1)),
            created=float(obj.get("created", time.time())),
            slo_percentile=float(obj.get("slo_percentile", 98.0)),
            max_batch_size=int(obj.get("max_batch_size", 1)),
            drop_late=bool(obj.get("drop_late", False)),
            heavy=obj.get("heavy"),
            timing=ExecTiming.from_wire(obj["timing"]) if obj.get("timing") is not None else None,
            state=obj.get("state", READY),
            reason=obj.get("reason", ""),
        )


class Registry:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.functions: dict[str, Function] = {}

    @property
    def artifacts(self) -> Path:
        return self.state_dir / "artifacts"

    def served(self, name: str, version: str | None = None) -> Function:
        """The function `name`; with a version, only if that version is the one served (else 404)."""
        fn = self.get(name)
        if version is not None and version not in fn.served_versions:
            now = f"it serves version {fn.version}" if fn.ready else f"it is {fn.state} ({fn.reason})"
            raise NotFound(f"function {fn.name!r} version {version!r} is not served; {now}")
        return fn

    def get(self, name: str) -> Function:
        fn = self.functions.get(name)
        if fn is None:
            raise NotFound(f"function {name!r} is not deployed")
        return fn

    def load(self) -> list[Function]:
        """Functions saved by an earlier run (not yet packed)."""
        path = self.state_dir / REGISTRY_FILE
        if not path.exists():
            return []
        data = json.loads(path.read_text())
        return [Function.from_json(f) for f in data.get("functions", [])]

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {"functions": [f.to_json() for f in self.functions.values()]}, indent=1, sort_keys=True
        ).encode()
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".functions-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_dir / REGISTRY_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
