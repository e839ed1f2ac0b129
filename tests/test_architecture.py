"""House rules a machine checks (issue 17): the import contracts of pyproject.toml (io and
data.prepare never import torch, model never imports data, no cycles between sibling modules), no
private names imported across modules, and ruff's lint and format at 100 columns. .ci/run runs the
same tools before the tests; these tests make `make test` say so too."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "coordformer"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return path


def test_import_contracts_hold():
    proc = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 3


def private_imports(root: Path = SRC) -> list[str]:
    """`from <module of the package> import _name` anywhere in the package (dunders allowed): a name
    another module needs is public, or it lives where it is used."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            internal = node.level > 0 or (node.module or "").split(".")[0] == "coordformer"
            names = [
                a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
            ]
            if internal and names:
                found.append(
                    f"{path.relative_to(root.parent)}:{node.lineno} imports {', '.join(names)}"
                )
    return found


def test_no_private_names_cross_modules():
    assert private_imports() == []


def test_private_import_check_finds_one(tmp_path):
    pkg = tmp_path / "coordformer"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "from .b import _hidden, __version__\nfrom coordformer.c import public\n"
    )
    assert private_imports(pkg) == ["coordformer/a.py:1 imports _hidden"]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    proc = subprocess.run(
        [_tool("ruff"), *args, "src", "tests", "scripts", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
