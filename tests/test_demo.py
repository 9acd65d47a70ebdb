"""The README's demo command runs end to end and reports a real change."""

from __future__ import annotations

from pathlib import Path

import pytest

import hypernet
from hypernet.demo import main


def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    net = hypernet.load_hypernetwork(tmp_path / "models/hypernetworks/demo.pt")
    assert net.widths == [48, 32, 64]
    assert "0.0%" in out and "attention layers of width 48" in out
    assert "changed by 0.0%." not in out
