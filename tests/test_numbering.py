"""Numbered outputs never overwrite a file: the CLI, the server and the grid take one above the highest number."""

from __future__ import annotations

from pathlib import Path

from hypernet.fileio import next_number


def test_next_number_is_one_above_the_highest_even_after_deletions(tmp_path: Path) -> None:
    assert next_number(tmp_path / "missing") == 0
    assert next_number(tmp_path) == 0
    for name in ("00000-7.png", "00005-9.png", "00003-1.txt", "notes.png", "12-x.jpg"):  # 1, 2, 4 were deleted
        (tmp_path / name).write_bytes(b"")
    assert next_number(tmp_path) == 13  # max + 1, not the count of files (which would overwrite 00005)


def test_grid_names_count_too(tmp_path: Path) -> None:
    (tmp_path / "00002-5.png").write_bytes(b"")
    (tmp_path / "xyz_grid-00009.png").write_bytes(b"")
    assert next_number(tmp_path) == 3  # a plain folder reader does not know the grid's prefix
    assert next_number(tmp_path, prefixes=("xyz_grid-",)) == 10
