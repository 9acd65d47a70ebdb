"""The benchmarks are run by hand, not by CI: check here that each still imports against today's library (a
renamed name broke ``export_rank.py`` unnoticed) and that the cheap ones still run to their JSON line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_imports_and_has_a_main(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert '"name"' in path.read_text() and "ratio" in path.read_text(), f"{path.name} prints no JSON result"


@pytest.mark.slow
def test_serve_load_runs_to_its_json_line() -> None:
    """It starts ``hypernet serve`` in another process, so it is the one a command-line change breaks."""
    path = next(p for p in BENCHMARKS if p.stem == "serve_load")
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": os.pathsep.join([str(path.parent.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(path), "--clients", "1", "--duration", "1"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["name"] == "serve_load" and result["errors"] == 0 and result["requests"] >= 1
