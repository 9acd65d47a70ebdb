"""The package's layers hold: the import-linter contracts in pyproject.toml pass, and no import is deferred into a
function to dodge a cycle (a deferred import is fine for start-up time, never to hide an upward dependency)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hypernet"


def test_import_linter_contracts_pass() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    done = subprocess.run([*command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _deferred_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every hypernet import inside a function body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hypernet"):
                found.append((node.lineno, node.module))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hypernet")]
    return found


def test_no_deferred_import_dodges_a_cycle() -> None:
    graph = grimp.build_graph("hypernet", cache_dir=None)
    dodges = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _module_name(path)
        for line, imported in _deferred_imports(path):
            target = imported if imported in graph.modules else imported.rsplit(".", 1)[0]
            if target != importer and graph.chain_exists(importer=target, imported=importer, as_packages=False):
                dodges.append(f"{path.relative_to(ROOT)}:{line} imports {imported}, which imports {importer} back")
    assert not dodges, "\n".join(dodges)
