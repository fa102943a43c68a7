"""Progress on stderr while a run goes: ``[5/23] nearline embedded, 1 worker · saturation 812 jobs``.

On a terminal one line is rewritten in place; otherwise (CI, a pipe) a line is printed at most
every few seconds, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Least time between two printed lines when stderr is not a terminal.
_LINE_EVERY_S = 3.0


class Progress:
    """The run's position (step ``n`` of ``total``) and what the current step is doing."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.step = 0
        self.label = ""
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._width = 0

    def start(self, label: str) -> None:
        """Begin the next step."""
        self.step += 1
        self.label = label
        self._emit("starting", force=True)

    def update(self, phase: str, *, force: bool = False) -> None:
        """Say what the step is doing now (``"saturation 812 jobs, 4.1/8.0 s"``)."""
        self._emit(phase, force=force)

    def note(self, text: str) -> None:
        """A line of its own (a result, a skip), kept on screen."""
        self._clear()
        print(f"[{self.step}/{self.total}] {self.label}: {text}", file=self.stream, flush=True)

    def _emit(self, phase: str, *, force: bool) -> None:
        now = time.monotonic()
        line = f"[{self.step}/{self.total}] {self.label}: {phase}"
        if self.tty:
            if force or now - self._last >= 0.2:
                pad = max(self._width - len(line), 0)
                self.stream.write("\r" + line + " " * pad)
                self.stream.flush()
                self._width = len(line)
                self._last = now
        elif force or now - self._last >= _LINE_EVERY_S:
            print(line, file=self.stream, flush=True)
            self._last = now

    def _clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
