"""``--config FILE.toml``: any option of a command, as defaults under the command-line flags.

Keys are option names (``batch-size`` or ``batch_size``; ``inputs`` for the positional paths),
either at the top level or in a table named after the command (``[explain]``), which wins.
Relative paths are read relative to the working directory, as on the command line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from vitcam_cli.errors import ParameterError, VitcamError, literal
from vitcam_cli.textfiles import read_whole

CONFIG_LIMIT = 1 << 20  # bytes: a config file is a few lines


def _option_keys(command: Any) -> dict[str, tuple[str, bool]]:
    """Config key -> (parameter name, whether the key is a negating flag such as ``no-pretrained``)."""
    keys: dict[str, tuple[str, bool]] = {}
    for param in command.params:
        if param.name is None or param.name in {"config", "help"}:
            continue
        keys[param.name] = keys[param.name.replace("_", "-")] = (param.name, False)
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:]] = (param.name, False)
        for opt in getattr(param, "secondary_opts", []):
            if opt.startswith("--"):
                keys[opt[2:]] = (param.name, True)
    return keys


def load_config(path: Path, command: Any, command_name: str) -> dict[str, Any]:
    """Read ``path`` into a ``default_map`` for the click ``command``; unknown keys are an error."""
    where = f"--config {literal(path)}"
    try:
        raw = read_whole(path, "config", CONFIG_LIMIT)
    except ParameterError as error:
        raise VitcamError(f"{where}: {error.problem}") from error
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise VitcamError(
            f"{where}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "save it as UTF-8"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise VitcamError(f"{where}: not valid TOML ({literal(error)})") from error
    section = data.get(command_name, {})
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if not isinstance(section, dict):
        raise VitcamError(f"{where}: [{command_name}] must be a table")
    keys = _option_keys(command)
    defaults: dict[str, Any] = {}
    for key, value in (flat | section).items():
        if key not in keys:
            raise VitcamError(f"{where}: unknown option {literal(repr(key))} for vitcam {command_name}")
        name, negated = keys[key]
        defaults[name] = (not value) if negated else value
    return defaults
