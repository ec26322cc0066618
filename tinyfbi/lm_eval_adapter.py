"""`python -m tinyfbi.lm_eval_adapter`: lm-eval's own command line with tinyfbi registered as a model.

    python -m tinyfbi.lm_eval_adapter --model tinyfbi --model_args ckpt=runs/tiny-ad --tasks piqa
    python -m tinyfbi.lm_eval_adapter --model tinyfbi --model_args ckpt=runs/tiny-ad,batch_size=8 \\
        --tasks my_task --include_path my_tasks/

lm-eval 0.4.13 knows a model only once the module defining it has been imported, so the bare
`lm_eval --model tinyfbi` cannot find it; importing this module registers it (from Python:
`import lm_eval, tinyfbi.lm_eval_adapter`). The model itself: tinyfbi/evaluation/lm_eval_model.py.
"""
from __future__ import annotations

import sys

from .cli import fail, run_cli
from .core.errors import TinyFBIError

try:
    from .evaluation.lm_eval_model import (
        TinyFBILM,  # registers the `tinyfbi` model with lm-eval
    )
except TinyFBIError as e:  # lm-eval is not installed
    if __name__ != "__main__":
        raise
    fail(e)

__all__ = ["TinyFBILM"]


def lm_eval_cli(argv):
    from lm_eval.__main__ import (
        cli_evaluate,  # lm-eval's command line: imported only when run
    )
    sys.argv = ["lm_eval"] + list(sys.argv[1:] if argv is None else argv)
    cli_evaluate()


def main(argv=None):
    run_cli(lm_eval_cli, argv)


if __name__ == "__main__":
    main()
