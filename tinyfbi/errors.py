"""User-facing errors: a CLI prints `error: <message>` on one line and exits 2, no traceback."""
import argparse



class TinyFBIError(ValueError):
    """A mistake in the user's input (a flag, a file, a config), not a bug in tinyfbi."""


class CLIParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`prog: error: ...`) instead of the usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
