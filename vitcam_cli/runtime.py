"""Devices, numeric precision, and the versions a run records."""

from __future__ import annotations

import contextlib
import platform
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import PIL
import timm
import torch

from vitcam_cli.errors import ParameterError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ParameterError("device", "not a device (use auto, cpu, cuda or cuda:N)", name) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError("device", "CUDA is not available on this machine (use {device} cpu)", name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError("device", f"only {torch.cuda.device_count()} CUDA device(s) here", name)
    elif device.type != "cpu":
        raise ParameterError("device", "not supported (use auto, cpu, cuda or cuda:N)", name)
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in DTYPES:
        raise ParameterError("precision", "use fp32, bf16 or fp16", precision)
    if precision == "fp16" and device.type != "cuda":
        raise ParameterError("precision", "fp16 needs a CUDA device; use bf16 on the CPU")


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """Mixed precision for the model's matmuls; scores are always computed in float32."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def library_versions() -> dict[str, str]:
    from vitcam_cli import __version__

    return {
        "vitcam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def device_label(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: what summaries record."""
    return str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
