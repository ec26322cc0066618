"""The house's dependency rule, read from the source: every module's imports (those inside functions
included) parsed with ast, then checked for cycles, forbidden edges, deferred imports that defer
nothing heavy, and crowded folders. The rule itself is written down here, once:

    core            imports nothing of tinyfbi (NumPy only, no file I/O)
    kernels         core (the one binarize) and each other: a library, no exception
    formats         core
    corpus          core, formats
    runtime         core, formats, corpus, kernels
    training        core, formats, corpus, runtime
    torch_backend   core, formats, corpus, runtime, training
    evaluation      core, formats, corpus, runtime, torch_backend (only deferred: torch is optional)
    reproduction    core, formats, training (the claims' plan, statistics and report)
    bench           every room of tinyfbi, kernels, and tinyfbi.cli (every benchmark: they drive them all)
    tinyfbi.cli     core;  tinyfbi/__init__: core, formats
    entry points    (tinyfbi/*.py) anything
The NumPy path (core, formats, corpus, training, runtime.inference) never imports torch or numba:
checked statically here, and by running a NumPy training and generation in a fresh interpreter.
"""
import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tinyfbi", "kernels")
ALLOWED = {
    "core": {"core"},
    "kernels": {"kernels", "core"},
    "formats": {"formats", "core"},
    "corpus": {"corpus", "formats", "core"},
    "runtime": {"runtime", "corpus", "formats", "core", "kernels"},
    "training": {"training", "runtime", "corpus", "formats", "core"},
    "torch_backend": {"torch_backend", "training", "runtime", "corpus", "formats", "core"},
    "evaluation": {"evaluation", "runtime", "corpus", "formats", "core"},
    "reproduction": {"reproduction", "training", "formats", "core"},
    "bench": {"bench", "kernels", "core", "formats", "corpus", "runtime", "training", "torch_backend", "evaluation",
              "reproduction", "cli"},
    "cli": {"core"},
    "facade": {"core", "formats"},
}
DEFERRED_ONLY = {"evaluation": {"torch_backend"}}
HEAVY = {"torch", "numba", "llvmlite", "datasets", "lm_eval", "matplotlib", "transformers", "sentencepiece",
         "tiktoken", "regex", "jupytext", "nbclient", "nbformat"}
NUMPY_PATH = ("core", "formats", "corpus", "training", "reproduction")
MAX_NESTED_PROJECT_IMPORTS = 10
MAX_MODULES_PER_FOLDER = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def room(module: str) -> str:
    """The package a module belongs to, in the rule's words."""
    parts = module.split(".")
    if parts[0] == "kernels":
        return "kernels"
    if module == "tinyfbi":
        return "facade"
    if module == "tinyfbi.cli":
        return "cli"
    return parts[1] if len(parts) > 2 or MODULES[module].name == "__init__.py" else "entry"


def imports_of(module: str):
    """(target, nested) for every import in the module; targets resolved to modules of the repo where
    they are (`from ..core import layers` -> tinyfbi.core.layers), else the top-level package name."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield resolve(alias.name, None), id(node) in nested
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield resolve(base, alias.name), id(node) in nested


def resolve(base: str, name: str | None) -> str:
    if name and f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    while base and base not in MODULES and base.split(".")[0] in PACKAGES:
        base = base.rsplit(".", 1)[0]
    return base if base.split(".")[0] in PACKAGES else base.split(".")[0]


EDGES = {m: list(imports_of(m)) for m in MODULES}


def project_edges():
    for module, targets in EDGES.items():
        for target, nested in targets:
            if target in MODULES and target != module:
                yield module, target, nested


def test_no_import_cycles():
    graph = defaultdict(set)
    for a, b, _ in project_edges():
        graph[a].add(b)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert cycles == []


def test_every_edge_follows_the_rule():
    bad = []
    for a, b, nested in project_edges():
        src, dst = room(a), room(b)
        if src == "entry":
            continue
        allowed = ALLOWED[src] | (DEFERRED_ONLY.get(src, set()) if nested else set())
        if dst not in allowed:
            bad.append(f"{a} -> {b}: {src} may not import {dst}" + ("" if nested else " (at the top)"))
    assert bad == []


def heavy_at_import(module, seen=None) -> set:
    """The heavy libraries importing `module` loads, following top-level imports only."""
    seen = set() if seen is None else seen
    if module in seen:
        return set()
    seen.add(module)
    found = set()
    for target, nested in EDGES.get(module, []):
        if nested:
            continue
        if target in MODULES:
            found |= heavy_at_import(target, seen)
        elif target in HEAVY:
            found.add(target)
    return found


def test_deferred_imports_defer_something_heavy():
    """Imports go at the top of the file; one inside a function must put off an optional heavy
    library (directly, or through the project module it imports)."""
    nested_project, needless = 0, []
    for module, targets in EDGES.items():
        for target, nested in targets:
            if not nested:
                continue
            if target in MODULES:
                nested_project += 1
                if not heavy_at_import(target):
                    needless.append(f"{module} imports {target} inside a function")
            elif target not in HEAVY:
                needless.append(f"{module} imports {target} inside a function")
    assert needless == []
    assert nested_project <= MAX_NESTED_PROJECT_IMPORTS


def test_numpy_path_imports_no_torch_or_numba_at_the_top():
    bad = [f"{m} imports {sorted(h)}" for m in MODULES
           if room(m) in NUMPY_PATH and (h := heavy_at_import(m) & {"torch", "numba", "llvmlite"})]
    bad += [f"{m}: the NumPy runtime imports {sorted(h)}" for m in ("tinyfbi.runtime.inference",)
            if (h := heavy_at_import(m) & {"torch", "numba"})]
    assert bad == []


def test_no_crowded_folders():
    counts = defaultdict(int)
    for path in MODULES.values():
        if path.parent.is_relative_to(REPO / "tinyfbi"):
            counts[path.parent.relative_to(REPO).as_posix()] += 1
    assert max(counts.values()) <= MAX_MODULES_PER_FOLDER, dict(counts)


def test_numpy_training_and_generation_load_neither_torch_nor_numba(tmp_path):
    """The rule above at run time: a fresh interpreter trains and samples with the NumPy backend."""
    code = f"""
import sys, pydoc_data.topics
from pathlib import Path
corpus = Path({str(tmp_path)!r}) / "topics.txt"
corpus.write_text("\\n".join(pydoc_data.topics.topics.values())[:40000])
from tinyfbi.train import main
main(["--data", str(corpus), "--data-dir", {str(tmp_path / "data")!r}, "--out", {str(tmp_path)!r},
      "--tokenizer", "byte", "--loss", "ce", "--teacher", "none", "--steps", "2", "--batch-size", "2",
      "--seq-len", "16", "--eval-batches", "1", "--sample-tokens", "2"])
from tinyfbi.generate import main as generate
generate(["--ckpt", {str(tmp_path / "tiny-ce")!r}, "--prompt", "a", "--max-new-tokens", "2"])
print("LOADED", sorted(m for m in ("torch", "numba", "llvmlite") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) == "entry" and m.startswith("tinyfbi.")))
def test_entry_points_stay_thin(module):
    """An entry point parses flags and calls into the rooms: no classes of its own."""
    tree = ast.parse(MODULES[module].read_text())
    assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
