"""On a CPU, the engine and the image work (decoding, overlays) take turns instead of competing.

The engine's OpenMP threads meet at a barrier after every operation, so when another process or
thread takes a core from one of them, all of them wait: measured with vit_tiny on two cores, one thread
rendering overlays beside the engine cut the engine's rate by more than half, far beyond the CPU time
it took. So, on a CPU, decoding workers and overlay writers wait while the engine runs, and get every
core between its batches. On a GPU the engine runs on the device and the image work overlaps it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """A flag shared with the decoding worker processes: set while the image work may run."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.owner = os.getpid()
        self._free = multiprocessing.Event() if enabled else None
        if self._free is not None:
            self._free.set()

    def wait(self) -> None:
        """Block while the engine runs; a worker whose run has gone (killed) stops waiting."""
        if self._free is None:
            return
        while not self._free.wait(timeout=1.0):
            if os.getpid() != self.owner and os.getppid() != self.owner:
                return

    @contextmanager
    def engine(self) -> Iterator[None]:
        """The engine's turn: the image work waits until the block ends."""
        if self._free is None:
            yield
            return
        self._free.clear()
        try:
            yield
        finally:
            self._free.set()
