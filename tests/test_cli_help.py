"""Every command's --help: it runs, and says each flag's default once (the help text's own words, or
argparse's "(default: X)", never both)."""
import importlib
import re

import pytest

COMMANDS = ["tinyfbi.train", "tinyfbi.generate", "tinyfbi.pack", "tinyfbi.export", "tinyfbi.evaluate",
            "tinyfbi.prepare", "tinyfbi.reproduce", "tinyfbi.bench.kernels", "tinyfbi.bench.gpu",
            "tinyfbi.bench.llamacpp", "tinyfbi.bench.train_step", "tinyfbi.bench.prepare",
            "tinyfbi.bench.loss_memory", "tinyfbi.bench.kernels_avx512"]


def flag_helps(text: str) -> dict:
    """Option string -> its whole help text (joined over wrapped lines), from argparse's layout."""
    helps, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        m = re.match(r"  (-[-\w]+(?:[ ,][^ ].*?)?)(?:  +(.*))?$", line)
        if m and not line.startswith("   "):
            current = m.group(1).split()[0].rstrip(",")
            helps[current] = m.group(2) or ""
        elif current is not None:
            helps[current] += " " + line.strip()
    return helps


@pytest.mark.parametrize("command", COMMANDS)
def test_help_runs_and_says_each_default_once(command, capsys):
    module = importlib.import_module(command)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    helps = flag_helps(capsys.readouterr().out)
    assert len(helps) > 1, command
    for flag, text in helps.items():
        assert len(re.findall(r"\bdefault\b", text)) <= 1, (command, flag, text)
