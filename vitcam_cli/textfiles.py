"""The small text files a user names beside the images (path lists, labels, boxes, class names, configs),
read so that none is ever held whole when it is not what it claims: a file such as ``/dev/zero``, a
binary file or a runaway log stops at a bound with one line naming it, instead of filling the memory.

Text is UTF-8; bytes that are not are kept as Python keeps undecodable file names (``surrogateescape``),
so a Latin-1 file name in a list or a CSV still names its file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vitcam_cli.errors import ParameterError

LINE_LIMIT = 1 << 16  # bytes in one line of a list or CSV: far beyond any path (Linux's PATH_MAX is 4096)
WHOLE_LIMIT = 16 << 20  # bytes of a file read whole (class names, configs)
SUMMARY_LIMIT = 64 << 20  # bytes: a summary or metrics file larger than this is not one vitcam wrote


def decode(raw: bytes) -> str:
    """UTF-8 text (a byte-order mark dropped); undecodable bytes kept as surrogate escapes."""
    return raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", "surrogateescape")


def _too_long(parameter: str, path: object, what: str) -> ParameterError:
    return ParameterError(parameter, f"{what}: is it the right file?", path)


def lines_of(handle: IO[bytes], parameter: str, path: object) -> Iterator[str]:
    """The lines of ``handle`` (line ends kept), each at most ``LINE_LIMIT`` bytes."""
    number = 0
    while line := handle.readline(LINE_LIMIT + 1):
        number += 1
        if len(line) > LINE_LIMIT and not line.endswith(b"\n"):
            raise _too_long(parameter, path, f"line {number} is longer than {LINE_LIMIT} bytes")
        yield decode(line)


def open_lines(path: Path, parameter: str) -> Iterator[str]:
    """``lines_of`` a file by path; an unreadable one is one line naming it."""
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ParameterError(parameter, f"cannot read it ({error.strerror})", path) from error
    with handle:
        yield from lines_of(handle, parameter, path)


def written_lines(path: Path, parameter: str) -> Iterator[str]:
    """The lines of a JSON-lines file a run wrote (rows, journals), each bounded: one replaced by an
    endless file stops at its first over-long line, with one line naming it."""
    with path.open("rb") as handle:
        yield from lines_of(handle, parameter, path)


def read_whole(path: Path, parameter: str, limit: int = WHOLE_LIMIT) -> bytes:
    """A small file's bytes; more than ``limit`` bytes is one line naming it."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise ParameterError(parameter, f"cannot read it ({error.strerror})", path) from error
    if len(data) > limit:
        raise _too_long(parameter, path, f"larger than {limit >> 20} MiB")
    return data
