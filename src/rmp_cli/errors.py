"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class RmpError(Exception):
    """Bad input from the user (config, data, checkpoint, time-steps). Message = the whole story."""
