"""vitcam: gradient-free ViT-ReciproCAM explanations for timm Vision Transformers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vitcam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
