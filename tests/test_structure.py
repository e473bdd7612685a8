"""The layout the package keeps: the command line is a face over the library, and nothing imports it.

Library code, the reference, the benchmarks and the notebooks import what they use from
``statlab``'s modules; ``statlab.cli`` only parses arguments and calls them. An import of the
CLI, in any spelling, is found by parsing the files (nothing is imported or executed).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = "statlab.cli"


def _package(path: Path) -> str | None:
    """The package a file's relative imports resolve against (``statlab.reference`` is ``reference/``)."""
    parts = path.relative_to(ROOT).parent.parts
    if parts[:1] == ("statlab",):
        return ".".join(parts)
    if parts[:1] == ("reference",):
        return ".".join(("statlab",) + parts)
    return None  # benchmarks and notebooks are scripts: a relative import there is not into statlab


def cli_imports(source: str, package: str | None) -> list[tuple[int, str]]:
    """``(line, statement)`` of every import of ``statlab.cli`` in ``source``.

    Counts ``import statlab.cli``, ``from statlab.cli import ...``, ``from statlab import cli``,
    relative forms resolved against ``package`` (``from . import cli``, ``from .cli import ...``,
    ``from ..cli import ...``) and the lazy attribute ``statlab.cli`` (``statlab/__init__.py``
    imports the submodule on first access).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if package is None:
                    continue
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            targets = [f"{node.value.id}.{node.attr}"]
        if any(t == CLI or t.startswith(CLI + ".") for t in targets):
            found.append((node.lineno, ast.unparse(node)))
    return found


def _sources():
    """``(label, source, package)`` of every file that must not import the CLI."""
    files = [p for p in sorted((ROOT / "statlab").rglob("*.py")) if p != ROOT / "statlab" / "cli.py"]
    files += sorted((ROOT / "reference").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    for path in files:
        yield str(path.relative_to(ROOT)), path.read_text(), _package(path)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                # IPython magics and shell escapes are not Python; blank them, keeping line numbers
                source = "\n".join("" if line.lstrip()[:1] in ("%", "!") else line for line in source.split("\n"))
                yield f"{path.relative_to(ROOT)} cell {index}", source, None


def test_nothing_imports_the_cli():
    sources = list(_sources())
    assert {label.split("/")[0] for label, _, _ in sources} == {"statlab", "reference", "benchmarks", "notebooks"}
    offenders = [f"{label}, line {line}: {statement}"
                 for label, source, package in sources for line, statement in cli_imports(source, package)]
    assert not offenders, ("statlab.cli is the command line, not a library: import these names from the "
                           "modules that define them (statlab.calibration, statlab.evaluate, ...):\n"
                           + "\n".join(offenders))


@pytest.mark.parametrize(("source", "package"), [
    ("import statlab.cli", None),
    ("import statlab.cli as c", None),
    ("from statlab.cli import calibration_batches", None),
    ("from statlab import cli", None),
    ("import statlab\nstatlab.cli.main([])", None),
    ("from . import cli", "statlab"),
    ("from .cli import EVAL_SEQ_LEN", "statlab"),
    ("from ..cli import task_metrics", "statlab.evaluate"),
    ("def f():\n    from statlab.cli import task_metrics", None),
])
def test_every_spelling_of_a_cli_import_is_found(source, package):
    assert len(cli_imports(source, package)) == 1


@pytest.mark.parametrize(("source", "package"), [
    ("from statlab import calibration_batches", None),
    ("from statlab.calibration import cost_seq_len", None),
    ("from . import cli", "benchmarks"),
    ("from ..cli import x", "statlab.evaluate.deep"),
    ("import statlab.client", None),
])
def test_other_imports_are_not_taken_for_the_cli(source, package):
    assert cli_imports(source, package) == []
