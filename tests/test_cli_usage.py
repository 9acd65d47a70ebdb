"""Command-line mistakes as a new user makes them: one line, exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypernet import __version__


def hypernet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "hypernet.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "No such command 'nope'"),
    (["create", "--bogus", "x"], "No such option: --bogus"),
    (["create"], "Missing argument 'NAME'"),
    (["generate", "--seed", "abc", "x"], "'--seed'"),
    (["inspect"], "Missing argument 'file'"),
])
def test_usage_mistakes_are_one_line_exit_2(args, message) -> None:
    r = hypernet(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_bare_command_shows_help_and_exits_2() -> None:
    r = hypernet()
    assert r.returncode == 2 and "Traceback" not in r.stderr and "create" in r.stdout + r.stderr


def test_version() -> None:
    r = hypernet("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hypernet {__version__}"


def test_debug_after_the_command_is_understood(tmp_path: Path) -> None:
    r = hypernet("inspect", str(tmp_path / "missing.pt"), "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "no such file" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["generate", "--size", "100000x100000", "x"], "width is 100000; expected a value from 8 to 8192."),
    (["generate", "--size", "4096x4096", "x"], "pixels are allowed per image"),
    (["generate", "--clip-skip", "0", "x"], "clip_skip is 0; expected a value from 1 to 12."),
    (["generate", "--clip-skip", "50", "x"], "clip_skip is 50; expected a value from 1 to 12."),
    (["generate", "--seed", "99999999999999999999", "x"], "seed is 99999999999999999999"),
    (["generate", "--cfg", "nan", "x"], "cfg_scale is nan; expected a finite number"),
    (["generate", "--steps", "100000", "x"], "steps is 100000; expected a value from 1 to 500."),
    (["generate", "--init-image", "missing.png", "x"], "--init-image missing.png: no such file."),
    (["generate", "x", "--prompts", "p.txt"], "give either a PROMPT or --prompts FILE"),
    (["list", "--dir", "missing"], "--dir missing: no such folder."),
    (["create", "x", "--layers", "1, 0.001, 1"], "gives a layer of width 0"),
    (["create", "sub/x"], "not a plain file name"),
    (["train", "n", "--data", "f.txt"], "f.txt: is a file; data_root must be the folder of training images."),
    (["train", "n", "--data", ".", "--learn-rate", "-1"],
     'learn_rate "-1" has the rate -1; every rate must be a finite number above 0.'),
])
def test_refusals_are_sentences_before_any_model_loads(tmp_path: Path, args, message) -> None:
    (tmp_path / "f.txt").write_text("not a folder")
    loaded = tmp_path / "loaded.txt"
    # the process writes, as it exits, whether the model libraries were ever imported: no model can load without
    probe = (f"import atexit, sys; atexit.register(lambda: open({str(loaded)!r}, 'w').write("
             "' '.join(m for m in ('diffusers', 'transformers') if m in sys.modules))); "
             "from hypernet.cli import main; main()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1", COLUMNS="200")
    r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {message}" or message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert loaded.read_text() == ""  # refused before diffusers or transformers (so any model) was even imported


@pytest.mark.slow
def test_user_text_is_printed_literally(tmp_path: Path) -> None:
    d = tmp_path / "[bold]<lora:x:1>"  # rich would drop [bold] as markup and print :x: as an emoji
    d.mkdir()
    r = hypernet("list", "--dir", str(d))
    assert r.returncode == 0 and f"No hypernetworks in {d}" in r.stdout


@pytest.mark.slow
def test_convert_refuses_to_overwrite_like_create(tmp_path: Path) -> None:
    assert hypernet("create", "n", "--dir", str(tmp_path), "--sizes", "8").returncode == 0
    src, dst = tmp_path / "n.pt", tmp_path / "m.safetensors"
    dst.write_bytes(b"keep")
    r = hypernet("convert", str(src), str(dst))
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr and dst.read_bytes() == b"keep"
    assert hypernet("convert", str(src), str(dst), "--overwrite").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"hello world\nthis is text\n", bytes(range(256)) * 3, b"\x80" + bytes(300)])
def test_files_that_are_not_pytorch_say_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    r = hypernet("inspect", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"error: {path}: not a PyTorch file"), r.stderr
    assert "weights_only" not in r.stderr
