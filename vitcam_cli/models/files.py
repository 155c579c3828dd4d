"""Checks of a model folder's files before a library reads them, so that a damaged file is named as
such ("config.json is not valid JSON (line 11, column 5 ...)") rather than reported as a failed
download. Any adapter that reads a ``config.json`` or a ``.safetensors`` file from disk can call them.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitcam_cli.errors import MissingFileError, ParameterError, literal


def check_weights_file(path: Path, parameter: str) -> None:
    """A weights file named by the user must be a regular file: missing, or a folder, device or pipe
    (``/dev/zero``), it is refused before any library opens it."""
    if not path.exists():
        raise MissingFileError(parameter, path)
    if not path.is_file():
        raise ParameterError(
            parameter, "not a regular file (a folder, device or pipe); name the weights file", path
        )


def check_config_json(path: Path, parameter: str, value: object) -> None:
    """``path`` must be a JSON object in UTF-8; otherwise one error naming the file and the problem."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise ParameterError(parameter, f"cannot read {literal(path)} ({error.strerror})", value) from error
    except UnicodeDecodeError as error:
        raise ParameterError(parameter, f"{literal(path)} is not UTF-8 text", value) from error
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        where = literal(f"line {error.lineno}, column {error.colno}: {error.msg}")
        problem = f"{literal(path)} is not valid JSON ({where}); fix it or export the model again"
        raise ParameterError(parameter, problem, value) from error
    if not isinstance(config, dict):
        raise ParameterError(parameter, f"{literal(path)} is not a JSON object", value)


def check_safetensors(path: Path, parameter: str, value: object) -> None:
    """``path`` must be a whole safetensors file: its header readable and every tensor's bytes present
    (safetensors checks both when it opens a file, without reading the tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:  # safetensors' own error, or the file system's
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ParameterError(
            parameter,
            f"{literal(path)} is truncated or not a safetensors file ({literal(reason)}); copy or export it "
            "again",
            value,
        ) from error


def check_model_folder(folder: Path, parameter: str, value: object, weights: bool = True) -> None:
    """A folder with ``config.json`` and (when ``weights`` are to be read) ``model.safetensors``: both
    whole, where present."""
    check_config_json(folder / "config.json", parameter, value)
    if weights and (folder / "model.safetensors").is_file():
        check_safetensors(folder / "model.safetensors", parameter, value)
