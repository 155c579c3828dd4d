"""``vitcam merge``: the finished shards of an explain or evaluate run, combined into one run's outputs."""

from __future__ import annotations

import sys
from pathlib import Path

from vitcam_cli.commands.evaluate import merge_evaluation
from vitcam_cli.commands.explain import merge_explanations


def merge_folders(folders: list[Path], destination: Path, quiet: bool) -> int:
    """Evaluate shards when the folders hold metrics part files, else explain shards."""
    if any(any(folder.glob("metrics.shard-*-of-*.json")) for folder in folders):
        return merge_evaluation(folders, destination, quiet, sys.stdout)
    return merge_explanations(folders, destination, quiet)
