"""The notebooks in notebooks/ run end to end, and are committed without outputs.

Each notebook starts llmframe.testing's FakeServer in its first cell and stops it in
its last, so it needs no key and no network. They are executed here with nbclient in
a kernel of this very interpreter, so a notebook that breaks fails the test suite.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["quickstart.ipynb", "polars.ipynb", "cost-and-resume.ipynb", "structured.ipynb", "batch-api.ipynb",
             "dask.ipynb"]
KERNEL_NAME = "llmframe-notebook-tests"
# Every cell is meant to run in a few seconds; this is generous, for slow CI machines.
MAX_CELL_SECONDS = 20.0


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=nbformat.NO_CONVERT)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernelspec for this interpreter, so the notebooks import the llmframe under test.

    The user's ``python3`` spec may point at another Python, or not exist on a fresh CI
    machine; this one, in a temporary folder put first on JUPYTER_PATH, is always there
    and always this ``sys.executable``.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmframe notebook tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        paths = [str(root), *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
        mp.setenv("JUPYTER_PATH", os.pathsep.join(paths))
        # No IPython profile or startup scripts of the user's in the kernel.
        mp.setenv("IPYTHONDIR", str(root / "ipython"))
        assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
        yield KERNEL_NAME


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        where = f"{name}, cell {cell.get('id')}"
        assert cell.outputs == [], f"{where} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{where} has an execution count"
        assert "execution" not in cell.metadata, f"{where} has execution timing metadata"


def _seconds(cell: nbformat.NotebookNode) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return 0.0
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, kernel_name: str, tmp_path: Path) -> None:
    nb = _read(name)
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(tmp_path)}},
        extra_arguments=["--InteractiveShell.colors=nocolor"],  # plain tracebacks in CI logs
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    slow = {
        cell.get("id"): round(seconds, 1)
        for cell in nb.cells
        if cell.cell_type == "code" and (seconds := _seconds(cell)) > MAX_CELL_SECONDS
    }
    assert not slow, f"{name}: cells slower than {MAX_CELL_SECONDS} s: {slow}"
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{name}, cell {cell.get('id')}: {output}"
