"""vitcam: gradient-free ViT-ReciproCAM explanations for timm Vision Transformers.

``from vitcam_cli import Explainer`` is the Python API (see ``vitcam_cli.api``); it is imported on first
use, so that ``import vitcam_cli`` and the command line's ``--help`` and ``--version`` stay light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("vitcam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["Explainer", "Explanations", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Explainer", "Explanations"):
        from vitcam_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitcam_cli' has no attribute {name!r}")
