"""The Hugging Face Hub, asked once before a model library would retry it for a minute: is it in reach,
and which files are already in the local cache. Each adapter says what to do when neither holds."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from urllib.parse import urlparse

import huggingface_hub

PROBE_SECONDS = 3.0


def reachable() -> bool:
    host = urlparse(huggingface_hub.constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def cached(repository: str, files: Iterable[str], revision: str | None = None) -> bool:
    """Whether any of ``files`` of ``repository`` is in the local hub cache."""
    return any(
        isinstance(huggingface_hub.try_to_load_from_cache(repository, name, revision=revision), str)
        for name in files
    )
