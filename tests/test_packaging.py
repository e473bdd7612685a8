"""Packaging: the import names, the torch-free reference, environment.yml vs pyproject."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import statlab
import statlab.reference as ref
import numpy as np
Z = np.random.default_rng(0).standard_normal((20, 6))
result = ref.interpolative_decomposition(Z, 3)
assert result.coef.shape == (3, 6)
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""


def test_reference_imports_without_torch():
    out = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_importing_statlab_does_not_import_torch():
    code = "import sys, statlab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert out.stdout.strip() == "False", out.stderr


def test_reference_never_imports_torch_or_statlab():
    for path in (ROOT / "reference").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from statlab" not in text, path


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda and "pip" in conda
    pinned = {Requirement(p).name: Requirement(p) for p in pip if not p.startswith("-e")}
    for dep in map(Requirement, project["dependencies"]):
        assert dep.name in pinned, f"{dep.name} is in pyproject.toml but not in environment.yml"
        for version in ("2.13.0",) if dep.name == "torch" else ():
            assert dep.specifier.contains(version), f"torch {version} must satisfy {dep}"
        if dep.name != "torch":
            assert pinned[dep.name].specifier == dep.specifier, f"{dep.name}: {pinned[dep.name]} vs {dep}"
    extras = next(p for p in pip if p.startswith("-e"))
    for extra in project["optional-dependencies"]:
        assert extra in extras, f"environment.yml does not install the [{extra}] extra"


def test_every_subpackage_is_listed_for_the_wheel():
    """A subpackage missing from `packages` works in the editable install and vanishes from the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "statlab").rglob("__init__.py")}
    assert found | {"statlab.reference"} == listed
