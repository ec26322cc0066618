"""`python -m tinyfbi.notebooks`: the step-through notebooks, executed at their default size.

Each notebook lives twice in notebooks/: its jupytext source (NN_name.py, what you edit and review)
and the executed copy (NN_name.ipynb, with outputs and plots, what a reader browses). This command
makes the second from the first; tests/test_notebooks.py fails when their code disagrees.

    python -m tinyfbi.notebooks --execute            # every notebook, default (not TINYFBI_FAST) size
    python -m tinyfbi.notebooks --execute 03 06      # some of them
    python -m tinyfbi.notebooks --check              # exit 2 if an executed copy is stale or shows a stray value

The notebooks run with notebooks/ as their working folder, so what they train lands in its
git-ignored runs-* folders and a rerun reuses it. Each executed copy records in its metadata the
date, the CPU, the seconds it took, the CPU seconds its kernel used, and the machine's load average
before and after (how busy the cores were with other work while it ran).
"""
from __future__ import annotations

import datetime
import os
import re
import resource
import sys
import time
from pathlib import Path

from .bench.machine import cpu_name
from .cli import CLIParser, run_cli
from .core.errors import TinyFBIError
from .formats.atomic import atomic_write_bytes

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
# set to 1 on a machine that other work shares: two BLAS threads that wait for each other there
# take several times as long as one
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def sources(which=()) -> list[Path]:
    """The jupytext sources, all or those whose names start with one of `which` (e.g. "03")."""
    found = sorted(FOLDER.glob("[0-9][0-9]_*.py"))
    chosen = [p for p in found if not which or any(p.stem.startswith(w) for w in which)]
    missing = [w for w in which if not any(p.stem.startswith(w) for p in found)]
    if missing:
        raise TinyFBIError(f"no notebook named {missing[0]!r} in {FOLDER} (have: {', '.join(p.stem for p in found)})")
    return chosen


def cells_of(notebook) -> list[tuple[str, str]]:
    """(type, source) of every cell: what must agree between a source and its executed copy."""
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def stale(path: Path) -> str | None:
    """Why the executed copy of `path` does not match it, or None."""
    import jupytext
    import nbformat
    executed = path.with_suffix(".ipynb")
    if not executed.is_file():
        return f"{executed.name} is missing"
    if cells_of(jupytext.read(path)) != cells_of(nbformat.read(executed, as_version=4)):
        return f"{executed.name} is stale: its cells differ from {path.name}"
    return None


def stray_values(path: Path) -> list[int]:
    """Numbers of the code cells of the executed copy of `path` that end in a bare value (an
    execute_result, e.g. the float a last `cmp(...)` returns) instead of printing what they show."""
    import nbformat
    cells = nbformat.read(path.with_suffix(".ipynb"), as_version=4).cells
    return [i for i, c in enumerate(cells) if c.cell_type == "code"
            and any(o.output_type == "execute_result" for o in c.get("outputs", []))]


def execute(path: Path, timeout: int) -> float:
    """Run one notebook at its default size; write NN_name.ipynb atomically. -> seconds taken."""
    import jupytext
    import nbclient
    import nbformat
    notebook = jupytext.read(path)
    env_fast = os.environ.pop("TINYFBI_FAST", None)         # the default size, not CI's
    os.environ["TQDM_DISABLE"] = "1"                         # the kernel inherits it: no progress bars saved
    load_before = os.getloadavg()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)   # the kernel is a child process
    start = time.perf_counter()
    try:
        nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(FOLDER)}}).execute()
    except nbclient.exceptions.CellExecutionError as e:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in str(e).strip().splitlines()]
        where = [line.strip() for line in lines if line.lstrip().startswith("---->")]   # the failing line
        raise TinyFBIError(f"{path.name} failed: {lines[-1]}" + (f" at {where[-1]}" if where else "")) from None
    finally:
        os.environ.pop("TQDM_DISABLE", None)
        if env_fast is not None:
            os.environ["TINYFBI_FAST"] = env_fast
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds the kernel used, threads added up: about its wall time on idle cores when it runs one
    # thread, an upper bound when it runs more; unlike `seconds`, hardly changed by other work
    cpu_seconds = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    notebook.metadata["tinyfbi"] = {
        "executed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(), "cores": os.cpu_count(), "seconds": round(seconds, 1),
        "kernel_cpu_seconds": round(cpu_seconds, 1),
        "threads": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "load_average_1_5_15_min": {"before": [round(x, 2) for x in load_before],
                                    "after": [round(x, 2) for x in os.getloadavg()]}}
    atomic_write_bytes(path.with_suffix(".ipynb"), nbformat.writes(notebook).encode())
    return seconds


def main_notebooks(args):
    chosen = sources(args.names)
    if args.check:
        problems = [p for p in map(stale, chosen) if p]
        problems += [f"{p.with_suffix('.ipynb').name}: cell {i} ends in a bare value" for p in chosen
                     if not stale(p) for i in stray_values(p)]
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            raise TinyFBIError(f"{len(problems)} executed notebook(s) out of step: run python -m tinyfbi.notebooks "
                               "--execute")
        print(f"{len(chosen)} executed notebooks match their sources")
        return
    for path in chosen:
        print(f"{path.name}: running ...", flush=True)
        print(f"{path.name}: {execute(path, args.timeout):.0f} s -> {path.with_suffix('.ipynb').name}", flush=True)


def build_parser():
    ap = CLIParser("python -m tinyfbi.notebooks", __doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to run, by number or name prefix (default: all)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--execute", action="store_true", help="run at the default size and write NN_name.ipynb")
    mode.add_argument("--check", action="store_true", help="compare each executed copy's cells with its source")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run")
    return ap


def main(argv=None):
    return run_cli(main_notebooks, build_parser().parse_args(argv),
                   interrupted="interrupted: the notebooks written so far are complete")


if __name__ == "__main__":
    main()
