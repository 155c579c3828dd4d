"""Paths as the user named them, the files they lead to, and paths shown as text."""

from __future__ import annotations

import os
from pathlib import Path


def absolute(path: Path) -> Path:
    """``path`` made absolute without following symbolic links (``..`` removed by name)."""
    return Path(os.path.abspath(path))


def resolved(path: Path) -> Path:
    """The file ``path`` names, links followed; a link that cannot be followed (a loop) as it is."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return absolute(path)


FileId = tuple[int, int]  # (device, inode): one file, whatever names (hard links) lead to it


def file_id(path: Path) -> FileId | None:
    """The file behind ``path`` as the file system knows it; None when it cannot be read."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return (status.st_dev, status.st_ino)


def fs_text(path: object) -> str:
    """A path for messages, rows and pages: its undecodable bytes shown as U+FFFD, never an encoding
    error."""
    return os.fsencode(str(path)).decode("utf-8", "replace")
