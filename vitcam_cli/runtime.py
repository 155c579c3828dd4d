"""Devices and numeric precision."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from vitcam_cli.errors import VitcamError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise VitcamError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VitcamError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VitcamError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise VitcamError(f"--device {name}: not supported (use auto, cpu, cuda or cuda:N)")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise VitcamError(f"--precision {precision}: use fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise VitcamError("--precision fp16 needs a CUDA device; use bf16 on the CPU")


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """Mixed precision for the model's matmuls; scores are always computed in float32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
