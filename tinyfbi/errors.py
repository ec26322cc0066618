"""User-facing errors: a CLI prints `error: <message>` on one line and exits 2, no traceback."""


class TinyFBIError(ValueError):
    """A mistake in the user's input (a flag, a file, a config), not a bug in tinyfbi."""
