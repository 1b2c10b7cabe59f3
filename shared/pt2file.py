"""Loading a user's ``torch.export`` program (.pt2) without unpickling arbitrary objects.

``torch.export.load`` falls back to a full, unrestricted unpickle for tensor
subclasses, custom/opaque constants and sample inputs it cannot load safely. We
read the archive's own JSON configs first and refuse any archive that would take
one of those paths, and we pre-check the sample inputs with the restricted
``weights_only`` unpickler, so the real load never reaches the unsafe fallback.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import InvalidInput

if TYPE_CHECKING:
    import torch.export


def _member(names: list[str], suffix: str) -> list[str]:
    return [n for n in names if n.endswith(suffix)]


def check_archive(path: Path) -> None:
    """Raise InvalidInput unless `path` is a pt2 archive we can load safely."""
    import torch

    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"model.path: {path} is not a torch.export .pt2 archive ({exc})") from exc
    with zf:
        names = zf.namelist()
        if not _member(names, "models/model.json"):
            raise InvalidInput(f"model.path: {path} holds no exported program (expected models/model.json)")
        if any("/aotinductor/" in n or "/data/aotinductor" in n for n in names):
            raise InvalidInput("model.path: AOTInductor packages are not supported; save with torch.export.save")
        for cfg_name in _member(names, "_weights_config.json") + _member(names, "_constants_config.json"):
            try:
                config = json.loads(zf.read(cfg_name))["config"]
            except (KeyError, ValueError) as exc:
                raise InvalidInput(f"model.path: corrupt archive entry {cfg_name}") from exc
            for fqn, meta in config.items():
                if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise InvalidInput(
                        f"model.path: tensor {fqn!r} is stored as a pickled object; only plain tensors are accepted"
                    )
        for sample in _member(names, "sample_inputs/model.pt"):
            try:
                torch.load(io.BytesIO(zf.read(sample)), weights_only=True)
            except Exception as exc:
                raise InvalidInput(
                    "model.path: the archive's sample inputs are not plain tensors; refusing to unpickle them"
                ) from exc


def load_program(path: Path) -> torch.export.ExportedProgram:
    import torch

    check_archive(path)
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise InvalidInput(f"model.path: could not load {path.name}: {exc}") from exc
