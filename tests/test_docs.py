"""The documents against the code they describe.

- docs/training.md's flag tables hold exactly the flags of `python -m tinyfbi.train`
  (tinyfbi.train.build_parser), each with the parser's default and, for a flag with choices, every
  choice named in its row. Default column: `value` as argparse holds it, `off` for a bare switch,
  `—` where the parser's default is None (the run decides; the text says how).
- Every `python -m tinyfbi...` command in README.md, docs/, notebooks/README.md and data/README.md names a module that exists and only
  flags that module's --help lists.
- Every relative link in those documents points at a file or folder of the repository.
- README.md: at most 250 lines, and its first code block is the two set-up commands, the second of
  which is the test command .ci/run runs.
"""
import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from tinyfbi.train import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "notebooks" / "README.md", REPO / "data" / "README.md"]
TABLE_ROW = re.compile(r"^\|\s*`(--[\w-]+)`\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$")
NOT_TINYFBI_FLAGS = {"tinyfbi.lm_eval_adapter"}      # its flags are lm-eval's own command line


def flag_section(text: str) -> str:
    """docs/training.md from '## Every flag' to the next '## ' heading."""
    start = text.index("## Every flag")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def documented_flags() -> dict:
    rows = {}
    for line in flag_section((REPO / "docs" / "training.md").read_text()).splitlines():
        m = TABLE_ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is in the table twice"
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def expected_default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default is None:
        return "—"
    return f"`{action.default}`"


def parser_flags() -> dict:
    return {action.option_strings[-1]: action for action in build_parser()._actions
            if action.option_strings and action.dest != "help"}


def test_training_flag_table_is_the_parser():
    rows, actions = documented_flags(), parser_flags()
    assert sorted(rows) == sorted(actions), (f"missing from docs/training.md: {sorted(set(actions) - set(rows))}; "
                                            f"not in the parser: {sorted(set(rows) - set(actions))}")
    for flag, action in actions.items():
        default, text = rows[flag]
        assert default == expected_default(action), f"{flag}: table says {default}, parser {action.default!r}"
        for choice in action.choices or ():
            assert f"`{choice}`" in text, f"{flag}: choice {choice!r} is not named in its row"


def commands(text: str):
    """(module, [flags]) of every `python -m tinyfbi...` command in the fenced blocks and inline code."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`\n]*python -m tinyfbi[^`\n]*)`", text)
    for line in lines:
        for piece in re.split(r"&&|\|\||;|\|", line.split("#", 1)[0]):
            m = re.search(r"(?:python -m|torchrun\b.*?-m)\s+(tinyfbi[\w.]*)(.*)", piece)
            if m:
                try:
                    words = shlex.split(m.group(2))
                except ValueError:
                    words = m.group(2).split()
                yield m.group(1), [w.split("=", 1)[0] for w in words if re.fullmatch(r"--[a-z][\w-]*(=.*)?", w)]


def help_flags(module: str) -> set:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", out.getvalue()))


@pytest.mark.parametrize("doc", DOCS, ids=[p.relative_to(REPO).as_posix() for p in DOCS])
def test_commands_name_real_modules_and_flags(doc):
    known = {}
    for module, flags in commands(doc.read_text()):
        assert importlib.util.find_spec(module) is not None, f"{doc.name}: no module {module}"
        if module in NOT_TINYFBI_FLAGS or module == "tinyfbi":
            continue
        if module not in known:
            known[module] = help_flags(module)
        unknown = [f for f in flags if f not in known[module]]
        assert not unknown, f"{doc.name}: python -m {module} has no flag {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=[p.relative_to(REPO).as_posix() for p in DOCS])
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.relative_to(REPO)} links to {target}, which does not exist"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    first_block = re.search(r"```(?:bash)?\n(.*?)```", text, re.S).group(1)
    setup = [line.split("#", 1)[0].strip() for line in first_block.splitlines() if line.strip()]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert setup[0] == "pip install -r requirements.txt && python -m tinyfbi.train --backend numpy"
    assert setup[1] == ci[-1], "the README's test command is not the one .ci/run runs"
