"""The one user-facing error type: a mistake in the user's input, reported in one line by tinyfbi.cli."""
import re


class TinyFBIError(ValueError):
    """A mistake in the user's input (a flag, a file, a config), not a bug in tinyfbi."""


def first_line(e: BaseException) -> str:
    """An exception's message on one line (for wrapping a library's error in a TinyFBIError), minus
    sentencepiece's 'INTERNAL: x.cc(12) [check]' prefix."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return re.sub(r"^[A-Za-z_ ]+: \S+\(\d+\) \[.*?\] ", "", lines[0]) if lines else type(e).__name__
