"""The README's demo command runs end to end on the embedded toy model and reports a measured change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

import hypernet
from hypernet.demo import main


@pytest.mark.slow
def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path), "--steps", "80"])
    out = capsys.readouterr().out
    net = hypernet.load_hypernetwork(tmp_path / "hypernetworks/style.pt")
    assert net.step == 80 and sorted(net.widths) == [32, 64]
    assert len(list((tmp_path / "style-data").glob("*.png"))) == 12
    grid = Image.open(tmp_path / "style-grid.png")
    assert grid.size == (6 * 64 * 3, 2 * 64 * 3)
    match = re.search(r"sepia score without the tag ([\d.]+), with it ([\d.]+)", out)
    assert match, out
    assert float(match[2]) > float(match[1])
