"""The host tier's disk copy: one image file per model in the state dir, and how a host image comes back.

Deploy saves each model's packed image once (`save`); after that a host image never
needs its model rebuilt. `bring_in` gives a model's host image back in the cheapest
intact way:

  adopted   a server that died with this state dir left the segment in shared memory:
            its bytes are checked against the file's chunk checksums (XXH3, ~10 GB/s)
            and the segment is renamed to this server (one rename, no copy);
  read      otherwise the file is read straight into a new segment, each chunk
            verified (`imagefile.read_into`).

A damaged file or segment is never served: a bad segment is dropped and the file read
instead; a bad file raises DamagedImage, and the caller rebuilds the model.
Torch-free: the gateway runs this.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from shared import imagefile, shm
from shared.errors import DamagedImage
from shared.modelstore import ModelImage


def _safe(model_id: str) -> str:
    return model_id.replace("@", "_v")  # shm names allow no '@'


# Another state dir's images left by a crash wait this long for their own server to adopt
# them before any server on the host reclaims them.
FOREIGN_GRACE_S = 3600.0


@dataclass(frozen=True)
class BroughtIn:
    image: ModelImage
    how: str  # "adopted" or "read"


class ImageStore:
    def __init__(self, directory: str | Path, owner: int | None = None) -> None:
        self.directory = Path(directory)
        self.owner = owner if owner is not None else os.getpid()
        # Host segments carry their state dir's tag: a server adopts (and reclaims) only its
        # own state dir's images, never those another server on this host may still adopt.
        self.tag = hashlib.sha1(str(self.directory.resolve()).encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"<ImageStore {self.directory} owner={self.owner}>"

    def path(self, model_id: str) -> Path:
        return self.directory / f"model-{_safe(model_id)}.img"

    def segment(self, model_id: str, owner: int | None = None) -> str:
        """The name of a model's host segment for this state dir and owner (default: this process)."""
        return shm.segment_name(f"model-{self.tag}-{_safe(model_id)}", owner if owner is not None else self.owner)

    def spare(self, name: str) -> bool:
        """For reclaiming a dead server's segments: keep another state dir's recent images."""
        m = _MODEL.match(name)
        if m is None or m.group(2) == self.tag:
            return False
        try:
            age = time.time() - os.stat(os.path.join(shm.SHM_DIR, name)).st_mtime
        except FileNotFoundError:
            return False
        return age < FOREIGN_GRACE_S

    def has(self, model_id: str) -> bool:
        return self.path(model_id).is_file()

    def save(self, model_id: str, image: ModelImage) -> Path:
        """Write a host image's bytes to the model's file (atomically; once per deploy)."""
        seg = shm.attach(image.segment_name, writable=False)
        try:
            return imagefile.write(self.path(model_id), model_id, image.table, seg.buf)
        finally:
            seg.close()

    def remove(self, model_id: str) -> None:
        self.path(model_id).unlink(missing_ok=True)

    def bring_in(self, model_id: str) -> BroughtIn:
        """The model's host image, adopted from a dead server or read from its file."""
        info = imagefile.read_info(self.path(model_id))
        if info.model_id != model_id:
            raise DamagedImage(f"{info.path}: holds model {info.model_id!r}, expected {model_id!r}")
        name = self.segment(model_id)
        adopted = self._adopt(info, name)
        if adopted:
            return BroughtIn(ModelImage(name, info.table), "adopted")
        shm.unlink(name)  # a half-made segment of an earlier attempt of ours
        seg = shm.create(name, info.nbytes)
        try:
            imagefile.read_into(info.path, seg.buf, expect_model=model_id)
        except BaseException:
            seg.close()
            shm.unlink(name)
            raise
        seg.close()
        return BroughtIn(ModelImage(name, info.table), "read")

    def _adopt(self, info: imagefile.ImageFileInfo, name: str) -> bool:
        """Take over an intact segment of this model left by a dead owner; drop a damaged one."""
        for stale in self._orphans(info.model_id):
            seg = shm.attach(stale, writable=False)
            try:
                intact = seg.size >= info.nbytes and imagefile.verify_buffer(info, seg.buf) is None
            finally:
                seg.close()
            if intact:
                # Same tmpfs: a rename hands the pages over without touching them.
                os.replace(os.path.join(shm.SHM_DIR, stale), os.path.join(shm.SHM_DIR, name))
                return True
            shm.unlink(stale)
        return False

    def _orphans(self, model_id: str) -> list[str]:
        """This state dir's segments of the model whose owning server is no longer running."""
        want = (self.tag, _safe(model_id))
        return [
            n
            for n in shm.listing()
            if (m := _MODEL.match(n)) and (m.group(2), m.group(3)) == want and not shm.alive(int(m.group(1)))
        ]


_MODEL = re.compile(rf"^{re.escape(shm.PREFIX)}(\d+)-model-([0-9a-f]{{8}})-(.+)$")
