"""Write-to-temp-then-rename, so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from vitcam_cli.errors import ParameterError, literal


def _file_mode() -> int:
    """What a plain open() would create under this process's umask (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # read once at import, before any writer thread starts
HOST = socket.gethostname()
# ".vitcam-<host>-<pid>-<random>.tmp", <host> 8 hex digits of the host name's SHA-256: whose temporary
# file it is, so that a rerun removes only the leftovers of processes that are gone, never a file another
# shard is writing right now; short whatever the file's or the host's name (any name up to 255 bytes
# can be written). Earlier versions put both names in full, and their leftovers are recognised too.
_TEMPORARY = re.compile(r"\.vitcam-(?P<host>.+)-(?P<pid>\d+)-[^.]*\.tmp$")


def _host_id(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def _temporary_prefix() -> str:
    return f".vitcam-{_host_id(HOST)}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive all the same
        pass
    return True


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files that processes on this host left when they were killed.

    A temporary file of a live process, or of another host sharing the folder, is left alone: shards
    run side by side in one output folder. Hosts are told apart by hostname, so containers sharing a
    folder need distinct hostnames.
    """
    for path in folder.rglob(".*.tmp"):
        owner = _TEMPORARY.search(path.name)
        if owner and owner["host"] in (_host_id(HOST), HOST) and not _alive(int(owner["pid"])):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[int]:
    """A descriptor of a new temporary file beside ``path`` that replaces ``path`` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(), suffix=".tmp")
    try:
        yield fd
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``."""
    with _replacing(path) as fd, os.fdopen(fd, "wb") as handle:
        write(handle)


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()))


@contextlib.contextmanager
def atomic_text_stream(path: Path) -> Iterator[IO[str]]:
    """A text file written line by line that appears at ``path`` only when complete."""
    with _replacing(path) as fd, os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        yield handle


def write_failed(out: Path, error: OSError, advice: str) -> ParameterError:
    """The one line for a write into ``out`` that failed (a full disk, the folder removed or read-only)."""
    return ParameterError("out", f"writing failed ({literal(error.strerror or error)}); {advice}", out)


@contextlib.contextmanager
def writing(out: Path, advice: str) -> Iterator[None]:
    """Writes into ``out``: a failure is ``write_failed``'s one line, ending with ``advice``."""
    try:
        yield
    except OSError as error:
        raise write_failed(out, error, advice) from error


def ensure_writable(out: Path) -> None:
    """Create ``out`` and check that this process can write there (a private probe file, so that shards
    sharing the folder never remove each other's)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as error:
        raise ParameterError(
            "out", f"cannot write there ({error.strerror}); choose another folder", out
        ) from error
