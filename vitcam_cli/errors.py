"""Errors the user can fix: printed as one line, never as a stack trace."""


class VitcamError(Exception):
    """A bad input, option or environment; the message names what is wrong and how to fix it."""

    exit_code = 2


class UnsupportedModelError(VitcamError):
    """The model is not a ViT the masked-token engine can run on."""
