"""Every notebook runs top to bottom (small, TINYFBI_FAST=1) and its own checks pass; each links the
paper, closes with a summary and an exercise, and its executed copy matches its source.

The notebooks live in git as jupytext py:percent files; here each is converted in memory and
executed with nbclient, like `pytest --nbmake` on the converted .ipynb would.
"""
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TINYFBI_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = jupytext.read(path)
    # run in a scratch folder so that nothing is written into the checkout
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()


def test_every_notebook_has_a_parameters_cell():
    import jupytext
    for path in NOTEBOOKS:
        cells = jupytext.read(path).cells
        assert any("parameters" in c.metadata.get("tags", []) for c in cells), path.name
        assert not any(c.get("outputs") for c in cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_executed_copy_matches_its_source(path):
    """notebooks/NN_name.ipynb (outputs at the default size) holds the same cells as NN_name.py: a
    source edited without `python -m tinyfbi.notebooks --execute NN` fails here."""
    pytest.importorskip("jupytext")
    from tinyfbi.notebooks import stale
    assert stale(path) is None, stale(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_executed_copy_shows_no_stray_value_and_says_where_it_ran(path):
    """Each code cell prints what it shows instead of ending in a bare value (the float a last
    cmp(...) returns would appear under its "ok" line), and the metadata holds date, CPU and seconds."""
    pytest.importorskip("nbformat")
    import nbformat

    from tinyfbi.notebooks import stray_values
    assert stray_values(path) == [], f"{path.with_suffix('.ipynb').name}: cells {stray_values(path)} end in a bare value"
    meta = nbformat.read(path.with_suffix(".ipynb"), as_version=4).metadata.get("tinyfbi", {})
    assert {"executed", "cpu", "seconds"} <= set(meta), meta


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_links_the_paper_and_closes_with_a_summary_and_an_exercise(path):
    import jupytext
    cells = jupytext.read(path).cells
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    assert "https://arxiv.org/abs/2407.07093" in markdown[0], f"{path.name}: the first cell links the paper"
    assert any("## Summary" in m for m in markdown), f"{path.name} has no summary"
    assert "## Exercise" in markdown[-1] and "tests/test_" in markdown[-1], \
        f"{path.name}: the last cell is an exercise whose answer a test checks"


def test_03_default_size_is_the_one_timed_in_the_readme():
    """Notebook 03 trains; notebooks/README.md gives its run time at these default sizes (about 10
    minutes on one idle core). No test times it: this one fails when a default grows past the timed
    one, so that a larger size comes with a new measurement."""
    import jupytext
    path = next(p for p in NOTEBOOKS if p.stem.startswith("03_"))
    cell = next(c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", []))
    sizes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TINYFBI_FAST", raising=False)
        exec(cell.source, sizes)
    timed = {"STEPS": 300, "TEACHER_STEPS": 1200, "seeds": 3, "bytes a step": 16 * 64}
    default = {"STEPS": sizes["STEPS"], "TEACHER_STEPS": sizes["TEACHER_STEPS"], "seeds": len(sizes["SEEDS"]),
               "bytes a step": sizes["BATCH"] * sizes["SEQ"]}
    assert all(default[k] <= timed[k] for k in timed), (default, timed)
