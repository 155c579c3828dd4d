"""One run per output folder: a second run writing into a folder in use is refused, never interleaved.

A run holds ``.vitcam.lock`` in its output folder, a shard ``.vitcam.shard-I-of-N.lock``: shards of one
run share the folder, but no shard runs beside a whole run. The files are held with POSIX record locks
(``fcntl`` ``F_SETLK``), which belong to the process that took them: the kernel releases one the moment
its process ends, however it ends (kill -9 included), and a forked child (a DataLoader worker) never
holds it. (``flock`` locks belong to the open file instead and are shared with every child that
inherited the descriptor, so a dead run's workers would keep its folder locked while they exit.) A
lock left by a dead process is taken over at once by the next run; only a live one refuses it. The locks
hold between processes of one host and on NFS folders; within one process they do not exclude.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from vitcam_cli.distributed import Shard
from vitcam_cli.errors import ParameterError
from vitcam_cli.outputs.atomic import HOST, ensure_writable

WHOLE_RUN = ".vitcam.lock"


def lock_name(shard: Shard | None) -> str:
    return f".vitcam{shard.suffix}.lock" if shard else WHOLE_RUN


def _holder(fd: int) -> str:
    """Who holds a lock file, as its holder wrote it: ``pid 123 on host since 12:00:00``."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {data['pid']} on {data['host']} since {data['started']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not said who it is"


def _try_lock(fd: int, kind: int) -> bool:
    """Take a POSIX lock of ``kind`` (``LOCK_EX`` or ``LOCK_SH``) on the whole file, without waiting."""
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _live_holder(path: Path) -> str | None:
    """Who holds ``path`` now, or None when nobody does (no file, or a dead process's)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _try_lock(fd, fcntl.LOCK_SH):  # a shared lock is refused while a run holds it
            return _holder(fd)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class OutputLock:
    """Held while a run (or one shard of it) writes into ``out``."""

    def __init__(self, out: Path, shard: Shard | None) -> None:
        self.out = out
        self.shard = shard
        self.path = out / lock_name(shard)
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> OutputLock:
        self.created = not self.out.exists()
        ensure_writable(self.out)
        self.fd = self._take()
        try:
            self._refuse_conflicts()
        except BaseException:
            self._release()
            raise
        started = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "host": HOST, "started": started}).encode(), 0)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._release()

    def _take(self) -> int:
        """The lock file's descriptor, locked; the file may be replaced by a holder that just let go."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd, fcntl.LOCK_EX):
                holder = _holder(fd)
                os.close(fd)
                raise self._in_use(holder, self._own())
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            os.close(fd)  # the previous holder removed this file as we opened it: lock the new one

    def _refuse_conflicts(self) -> None:
        """A whole run refuses any live shard in the folder; a shard refuses a live whole run."""
        others = [self.out / WHOLE_RUN] if self.shard else sorted(self.out.glob(".vitcam.shard-*.lock"))
        for other in others:
            holder = _live_holder(other)
            if holder is not None:
                raise self._in_use(
                    holder, "a shard of another run" if other.name != WHOLE_RUN else "another run"
                )

    def _own(self) -> str:
        return f"shard {self.shard.index}/{self.shard.count} of a run" if self.shard else "another run"

    def _in_use(self, holder: str, what: str) -> ParameterError:
        return ParameterError(
            "out",
            f"in use by {what} ({holder}): wait for it to finish, or choose another {{out}}",
            self.out,
        )

    def _release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: a waiting run locks a fresh file
        os.close(self.fd)
        self.fd = None
        if self.created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.out.rmdir()
