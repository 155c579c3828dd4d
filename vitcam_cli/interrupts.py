"""Stopping a run from outside: SIGTERM (Slurm preemption, ``timeout``, ``docker stop``, Kubernetes) is
handled the way Ctrl-C is, so a stopped run always leaves a folder that ``--skip-existing`` resumes.

Both arrive in the run as a ``KeyboardInterrupt``; the exit code says which signal it was (128 + its
number: 130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal killed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The run was asked to stop by a signal other than SIGINT (SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_exit_code(stop: KeyboardInterrupt) -> int:
    """128 + the number of the signal that stopped the run (Ctrl-C: SIGINT, 130)."""
    return 128 + getattr(stop, "signum", signal.SIGINT)


INTERRUPTED_EXIT_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: a second SIGTERM does not cut the clean-up short
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread, as SIGINT raises
    ``KeyboardInterrupt`` (elsewhere than the main thread, where no handler can be set: nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def leave_sigterm_to_the_main_process(worker_id: int = 0) -> None:
    """In a decoding worker: SIGTERM sent to every process of a job (Slurm, ``docker stop``) stops the
    run once, through the main process, which then stops its workers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
