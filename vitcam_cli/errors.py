"""Errors the user can fix: one line that names what is wrong and how to fix it, never a stack trace.

The library speaks of its parameters by their Python names. A message refers to any parameter as
``{name}`` and each front end writes the reference its own way: the Python API as the keyword
(``fuse``, ``pretrained=False``), the command line as the flag (``--fuse-blocks``, ``--no-pretrained``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import PurePath

_REFERENCE = re.compile(r"\{\{|\}\}|\{([a-z][a-z_]*)\}")  # doubled braces stand for themselves
# references whose Python spelling is not the bare name
_PYTHON_NAMES = {
    "no_pretrained": "pretrained=False",
    "no_adcc": "adcc=False",
    "no_overlays": "overlays=False",
}
_UNSET = object()


def did_you_mean(name: str, names: list[str], prefix: str = "") -> str:
    """`` (did you mean a or b?)`` with the names closest to a mistyped ``name`` (any case), or nothing."""
    by_lower = {candidate.lower(): candidate for candidate in names}
    close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.75)]
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def python_name(parameter: str) -> str:
    return _PYTHON_NAMES.get(parameter, parameter)


# how the running front end names parameters: the command line sets its flags here
naming: ContextVar[Callable[[str], str]] = ContextVar("naming", default=python_name)


def render(template: str) -> str:
    """A message for the user (``{parameter}`` references named as the running front end names them)."""
    return VitcamError(template).render(naming.get())


def literal(text: object) -> str:
    """``text`` (an exception's words, a file's name) placed in a message as it is, never as references."""
    return str(text).replace("{", "{{").replace("}", "}}")


class VitcamError(Exception):
    """A bad input, option or environment. ``str()`` names the parameters the message refers to as the
    running front end does (see ``naming``); ``render`` as any other."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.template = message

    def __str__(self) -> str:
        return self.render(naming.get())

    def render(self, name: Callable[[str], str]) -> str:
        """The message, each ``{parameter}`` written as ``name(parameter)``."""
        return _REFERENCE.sub(lambda match: name(match[1]) if match[1] else match[0][0], self.template)


class ParameterError(VitcamError, ValueError):
    """One parameter's value is wrong: ``fuse must be at least 1``, ``fuse=5: only 4 blocks ...``."""

    def __init__(self, parameter: str, problem: str, value: object = _UNSET) -> None:
        self.parameter = parameter
        self.problem = problem
        self.value = value
        super().__init__(problem)

    def render(self, name: Callable[[str], str]) -> str:
        """``fuse=5: only 4 ...`` in Python, ``--fuse-blocks 5: only 4 ...`` on the command line."""
        problem = super().render(name)
        if self.value is _UNSET:
            return f"{name(self.parameter)} {problem}"
        if name is python_name:
            value = str(self.value) if isinstance(self.value, PurePath) else self.value
            return f"{name(self.parameter)}={value!r}: {problem}"
        return f"{name(self.parameter)} {self.value}: {problem}"


class UnsupportedModelError(VitcamError):
    """The model is not a ViT the masked-token engine (or the asked-for method) can run on."""


class NonFiniteError(ParameterError):
    """NaN or inf in the input images, or in what the model made of them: never returned as maps."""


class MissingFileError(ParameterError, FileNotFoundError):
    """A file named as an input does not exist (also a ``FileNotFoundError``, with its ``filename``)."""

    def __init__(self, parameter: str, path: object) -> None:
        super().__init__(parameter, "no such file", path)
        self.filename = str(path)
