"""notebooks/quickstart.ipynb runs top to bottom (shrunk through its first cell of constants)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
TINY = {"ROUNDS": 2, "NUM_CLIENTS": 3, "IMAGE_SIZE": 16, "SAMPLES_PER_CLASS": 4}


def test_notebook_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_is_thin():
    """The notebook uses the installed package; it defines no library code."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class) ", source, re.M)
    assert "from omnifm_jax" in source


def test_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile outputs go with the test's folder
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = nb.cells[[c.cell_type for c in nb.cells].index("code")]
    for name, value in TINY.items():
        first.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", first.source, flags=re.M)
        assert count == 1, f"{name} is not set in the notebook's first code cell"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError if any cell fails
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "valid prototypes:" in text and "fedavg" in text and "omnifm" in text


REPRODUCE = NOTEBOOK.parent / "reproduce.ipynb"
REPRODUCE_TINY = {"SCALE": '"tiny"', "SEEDS": "(0, 1)", "ROUNDS": "1", "ONLY": '("omnifm", "no_spalign")',
                  "COLS": '("CLS",)', "OVERRIDES": '("num_clients=2",)'}


def test_reproduce_notebook_saved_without_outputs_and_thin():
    nb = nbformat.read(REPRODUCE, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert not re.search(r"^\s*(def|class) ", source, re.M) and "from omnifm_jax import reproduce" in source


def test_reproduce_notebook_runs(tmp_path, monkeypatch):
    """notebooks/reproduce.ipynb at a tiny size (synthetic data, 2 clients, 1 round, 2 seeds, one program)."""
    # The kernel is a fresh process: make it import this checkout, not whatever is installed.
    monkeypatch.setenv("PYTHONPATH", str(REPRODUCE.parents[1]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile outputs go with the test's folder
    nb = nbformat.read(REPRODUCE, as_version=4)
    first = nb.cells[[c.cell_type for c in nb.cells].index("code")]
    for name, value in REPRODUCE_TINY.items():
        first.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", first.source, flags=re.M)
        assert count == 1, f"{name} is not set in the notebook's first code cell"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") for o in outputs)
    shown = "\n".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "table8.png" in text and "removing SPAlign lowers CLS (Acc %):" in text
    assert "| OmniFM |" in shown and "## Claims" in shown
    assert any("image/png" in o.get("data", {}) for o in outputs)
