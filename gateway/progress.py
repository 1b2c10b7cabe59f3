"""Progress display for long CLI work: a spinner or a bar on a terminal, plain log lines elsewhere.

Output that is not a terminal (logs, CI, tests parsing it) stays free of control codes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any


def interactive() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def spinner(text: str) -> Iterator[None]:
    """A spinner with elapsed time on stderr while the block runs (terminals only)."""
    if not interactive():
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        bar.add_task(text, total=None)
        yield


class Steps:
    """Counts through `total` named steps: a bar on a terminal, an info log line per step otherwise."""

    def __init__(self, what: str, total: int, log: logging.Logger) -> None:
        self.what, self.total, self.log = what, total, log
        self._bar: Any = None
        self._task: Any = None
        self._done = 0

    def __enter__(self) -> Steps:
        if interactive() and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def step(self, name: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.what}: {name}", completed=self._done - 1)
        self.log.info("%s %s (%d/%d)", self.what, name, self._done, self.total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
