"""Progress of long work: a bar with bytes, rate and time left on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

__all__ = ["LineProgress", "Progress", "QuietProgress", "RichProgress", "for_terminal"]


class Progress(Protocol):
    """What long operations report: named steps, and bytes moved within a step."""

    def step(self, message: str, *, total_bytes: int | None = None) -> None: ...

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class QuietProgress:
    """Reports nothing (``--json`` and library use)."""

    def step(self, message: str, *, total_bytes: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """One line per step, for logs and pipes."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream

    def step(self, message: str, *, total_bytes: int | None = None) -> None:
        size = f" ({total_bytes / 1e6:.1f} MB)" if total_bytes else ""
        print(f"{message}{size}", file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar on a terminal: the current step, bytes done, rate and time left."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        self.task: object | None = None

    def step(self, message: str, *, total_bytes: int | None = None) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)  # type: ignore[arg-type]
        self.bar.console.print(message)
        self.task = self.bar.add_task(message, total=total_bytes)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)  # type: ignore[arg-type]

    def close(self) -> None:
        self.bar.stop()


def for_terminal(*, quiet: bool) -> Progress:
    """The right reporter for stderr: a bar on a terminal, lines otherwise, nothing if quiet."""
    if quiet:
        return QuietProgress()
    if sys.stderr.isatty():
        try:
            return RichProgress()
        except ImportError:  # rich comes with the build side; a device may not have it
            pass
    return LineProgress()
