"""Model files between nodes: a user's `.pt2` is served by digest and fetched, streamed and checked.

Zoo functions need no transfer (any node rebuilds them from their seeded config, bitwise the
same). The endpoint is a plain file response, so it already answers HTTP range requests: the
cold-start work that streams packed images by ranges from several holders grows from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from shared.errors import Unavailable

if TYPE_CHECKING:
    from gateway.cluster.config import ClusterConfig

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def find_artifact(artifacts: Path, sha256: str) -> Path | None:
    """A local artifact with this digest (stored as <name>-<first 16 hex digits>.pt2)."""
    if not artifacts.is_dir():
        return None
    for path in artifacts.glob(f"*-{sha256[:16]}.pt2"):
        if file_sha256(path) == sha256:
            return path
    return None


async def fetch_artifact(
    client: httpx.AsyncClient, sources: list[str], sha256: str, artifacts: Path, cfg: ClusterConfig
) -> Path:
    """Stream the artifact from the first node that has it, checking its digest before keeping it."""
    from gateway.cluster.forward import FORWARDED_BY, TOKEN

    await asyncio.to_thread(artifacts.mkdir, parents=True, exist_ok=True)
    errors = []
    for base in sources:
        fd, tmp = tempfile.mkstemp(dir=artifacts, suffix=".part")
        h = hashlib.sha256()
        try:
            headers = {TOKEN: cfg.token, FORWARDED_BY: cfg.node}
            async with client.stream(
                "GET", f"{base}/internal/v1/artifacts/{sha256}", headers=headers, timeout=30.0
            ) as r:
                if r.status_code != 200:
                    errors.append(f"{base}: {r.status_code}")
                    continue
                with os.fdopen(fd, "wb", closefd=False) as f:
                    async for chunk in r.aiter_bytes(CHUNK):
                        h.update(chunk)
                        f.write(chunk)
            if h.hexdigest() != sha256:
                errors.append(f"{base}: digest mismatch")
                continue
            dest = artifacts / f"fetched-{sha256[:16]}.pt2"
            os.replace(tmp, dest)
            return dest
        except httpx.HTTPError as exc:
            errors.append(f"{base}: {exc!r}")
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise Unavailable(f"model artifact {sha256[:16]}: no node could send it ({'; '.join(errors) or 'no nodes'})")
