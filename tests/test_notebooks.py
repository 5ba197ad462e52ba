"""Every notebook in ``notebooks/`` runs top to bottom, and every notebook is stored without outputs.

Notebooks are executed with nbclient in the kernel named in the brief (``python3``), with
``notebooks/`` as the working directory. The kernel must be *this* interpreter, the one with the
project installed: a ``python3`` kernelspec elsewhere on the machine (a user-level one from another
Python, say) would otherwise win. So the test installs a ``python3`` kernelspec pointing at
``sys.executable`` into a temporary prefix and puts it first on ``JUPYTER_PATH``, then checks that
``jupyter_client`` resolves the name to it before running anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
KERNEL_NAME = "python3"
CELL_TIMEOUT_SECONDS = 300
ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def _notebooks_on_disk() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def _versioned_notebooks() -> list[Path]:
    """Notebooks that are in git or would be added by ``git add`` (tracked plus untracked, not ignored).

    Outside a git checkout (an sdist, an unpacked archive), every notebook under the project.
    """
    git = shutil.which("git")
    if git is not None:
        listed = subprocess.run(
            [git, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.ipynb"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
        if listed.returncode == 0:
            return sorted({ROOT / name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()})
    skip = {".venv", ".git", ".ipynb_checkpoints", "node_modules"}
    return sorted(p for p in ROOT.rglob("*.ipynb") if not skip.intersection(p.relative_to(ROOT).parts))


@pytest.fixture
def python3_kernel(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that runs ``sys.executable``, first on ``JUPYTER_PATH``."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    data_dir = prefix / "share" / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(data_dir), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))
    # Writes PREFIX/share/jupyter/kernels/python3/kernel.json with argv[0] = sys.executable.
    install(kernel_name=KERNEL_NAME, prefix=str(prefix))
    # The notebooks choose their own state folders; settings from the caller's shell must not leak in.
    for name in [n for n in os.environ if n.startswith("RAPPORT_")]:
        monkeypatch.delenv(name)

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert Path(spec.resource_dir).resolve() == (data_dir / "kernels" / KERNEL_NAME).resolve(), spec.resource_dir
    assert spec.argv[0] == sys.executable, f"kernel {KERNEL_NAME} runs {spec.argv[0]}, not {sys.executable}"
    return KERNEL_NAME


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("path", _notebooks_on_disk(), ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, python3_kernel: str) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    # A cell that prints the kernel's interpreter, appended to the in-memory copy only: proves the
    # notebook ran under the Python that runs the tests.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=CELL_TIMEOUT_SECONDS,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as exc:
        failure = ANSI_ESCAPES.sub("", str(exc))  # the failing cell's source and traceback, uncoloured
    if failure is not None:
        pytest.fail(f"{path.name} failed:\n{failure}", pytrace=False)

    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    assert Path(printed.strip()) == Path(sys.executable), f"the kernel ran {printed.strip()!r}"


@pytest.mark.unit
def test_notebooks_are_stored_without_outputs() -> None:
    notebooks = _versioned_notebooks()
    assert notebooks, "no notebook found"
    problems = []
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        name = path.relative_to(ROOT)
        kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
        if kernel != KERNEL_NAME:
            problems.append(f"{name}: kernelspec is {kernel!r}, expected {KERNEL_NAME!r}")
        for index, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            if cell.get("outputs"):
                problems.append(f"{name}: cell {index} has {len(cell['outputs'])} output(s)")
            if cell.get("execution_count") is not None:
                problems.append(f"{name}: cell {index} has execution_count {cell['execution_count']}")
    assert not problems, "notebooks must be stored stripped (clear all outputs before saving):\n" + "\n".join(problems)
