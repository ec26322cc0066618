"""The one command-line error path: a user mistake ends in `error: <message>` on stderr, exit 2.

Every `python -m tinyfbi.*` entry point and benchmark builds its parser with `CLIParser` and
runs its body through `run_cli`, so a bad flag, a missing file or a corrupted checkpoint never
prints a traceback, and Ctrl-C says what was kept.
"""
from __future__ import annotations

import argparse
import sys

from .core.errors import TinyFBIError

USER_ERROR = 2      # argparse's own exit status for a bad flag
INTERRUPTED = 130   # 128 + SIGINT, what a shell reports for Ctrl-C


class DefaultsOnceFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default said once: appended as "(default: X)" unless its help already says what
    the default is, or there is nothing to say (None, False, a bare switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class CLIParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`prog: error: ...`) instead of the usage dump."""

    def __init__(self, prog, description, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsOnceFormatter)
        super().__init__(prog=prog, description=description, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(body, *args, interrupted: str = "interrupted"):
    """body(*args), with a TinyFBIError turned into one line on stderr and exit 2, Ctrl-C into exit 130."""
    try:
        return body(*args)
    except TinyFBIError as e:
        fail(e)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(INTERRUPTED)


def fail(error):
    """End the command: `error: <message>` on stderr, exit 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(USER_ERROR)
