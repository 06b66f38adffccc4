"""Errors the user can act on. The CLI prints their message as one line and exits 2."""


class QuantlabError(Exception):
    """Bad input or an impossible request: the message is one line that says what to do."""


class UnsupportedOnDevice(QuantlabError):
    """A method that cannot run on this device (e.g. a CUDA-only kernel on a CPU)."""
