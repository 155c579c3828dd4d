"""Everything written to disk: overlays, raw maps, the manifest and the summary."""


def counted(count: object, noun: str) -> str:
    """``1 image``, ``3 images``: a count with its noun in the right number (reports and messages)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
