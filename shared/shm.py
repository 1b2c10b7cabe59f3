"""Named POSIX shared-memory segments under /dev/shm, owned by one gateway process.

We do not use multiprocessing.shared_memory: on Python 3.11 every process that
attaches registers the segment with its resource tracker, which then unlinks it
when that process exits (bpo-39959) -- fatal for a worker restart. Here only the
owner creates and unlinks; workers just map.

Names are ``torpor-<owner pid>-<tag>`` so a later gateway can find and reclaim the
segments of a crashed one (owner pid no longer alive).
"""

from __future__ import annotations

import mmap
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.errors import Unavailable

SHM_DIR = "/dev/shm"
PREFIX = "torpor-"
_NAME = re.compile(r"^torpor-(\d+)-[A-Za-z0-9_.-]+$")


def segment_name(tag: str, owner: int | None = None) -> str:
    return f"{PREFIX}{owner if owner is not None else os.getpid()}-{tag}"


@dataclass
class Segment:
    """A mapping of a shared-memory segment; ``buf`` is the whole mapping."""

    name: str
    size: int
    writable: bool
    _map: mmap.mmap | None = field(repr=False, default=None)

    @property
    def buf(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError(f"segment {self.name} is closed")
        return self._map

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # Tensors still view the mapping; it is released when they go.
                pass
            self._map = None


def create(name: str, size: int) -> Segment:
    """Create a new segment (fails if the name exists); mode 0600."""
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(size, 1))
        # Reserve the pages now: writing into a sparse segment on a full tmpfs is a
        # SIGBUS that kills the process; here it is an error we can report.
        try:
            os.posix_fallocate(fd, 0, max(size, 1))
        except OSError as exc:
            raise Unavailable(
                f"not enough shared memory in {SHM_DIR} for {size} bytes ({exc.strerror}); "
                "enlarge it (docker: shm_size) or deploy fewer models"
            ) from exc
        mapping = mmap.mmap(fd, max(size, 1), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return Segment(name, size, True, mapping)


def attach(name: str, writable: bool) -> Segment:
    """Map an existing segment.

    Read-only attachments use a private copy-on-write mapping: torch wants a
    writable buffer for ``frombuffer``, but nothing ever writes to it, so no page
    is ever copied and the owner's data cannot be changed through it.
    """
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_COPY
        mapping = mmap.mmap(fd, size, access=access)
    finally:
        os.close(fd)
    return Segment(name, size, writable, mapping)


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def alive(pid: int) -> bool:
    """Whether the process still runs. A zombie (killed, not yet reaped by its parent) has
    released every mapping and will never unlink anything: it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust the signal check
    return state not in ("Z", "X")


def owner(name: str) -> int | None:
    """The pid in a segment's name (torpor-<pid>-<tag>), or None for a name not of that form."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def owned_by(pid: int) -> list[str]:
    return [n for n in listing() if owner(n) == pid]


def reclaim_stale(spare: Callable[[str], bool] | None = None) -> list[str]:
    """Unlink segments whose owning gateway is no longer running (but those `spare` keeps); returns their names."""
    reclaimed = []
    for name in listing():
        if spare is not None and spare(name):
            continue
        pid = owner(name)
        if pid is not None and pid != os.getpid() and not alive(pid):
            unlink(name)
            reclaimed.append(name)
    return reclaimed


def exit_on_sigterm() -> None:
    """Let SIGTERM end a tool (torpor profile, simreal, a bench) as Ctrl-C does, by an exception,
    so the finally blocks unlink the segments it made and stop the server it started. Python's
    default ends the process at once: its segments stayed in /dev/shm until the next gateway's
    start reclaimed them, and a server it had started kept running. Main thread only."""
    signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def listing() -> list[str]:
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []
