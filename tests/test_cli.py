"""The CLI as a user runs it: create, inspect, convert, list; errors are one sentence, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hypernet
from hypernet.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_create_inspect_convert_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "hn")
    code, out, _ = run(capsys, "create", "my style", "--dir", d, "--sizes", "24,10", "--layers", "1, 1.5, 1",
                       "--activation", "swish", "--layer-norm", "--dropout", "0, 0.1, 0", "--seed", "7")
    assert code == 0 and "Created" in out
    path = tmp_path / "hn" / "my style.pt"
    net = hypernet.load_hypernetwork(path)
    assert net.arch.layer_structure == [1.0, 1.5, 1.0] and net.arch.activation_func == "swish"
    assert net.arch.add_layer_norm and net.arch.dropout_structure == [0.0, 0.1, 0.0]

    code, out, _ = run(capsys, "inspect", str(path), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["widths"] == [24, 10] and info["parameters"] == net.num_parameters()
    assert info["sha256"] == hypernet.fileio.short_hash(path) and len(info["sha256"]) == 10
    assert info["format"] == "pt (A1111)" and info["step"] == 0

    st = tmp_path / "my.safetensors"
    assert run(capsys, "convert", str(path), str(st))[0] == 0
    assert hypernet.load_hypernetwork(st).metadata() == net.metadata()

    code, out, _ = run(capsys, "list", "--dir", d)
    assert code == 0 and "my style" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "x", "--layers", "2, 1"], "must start and end with 1"),
        (["create", "x", "--activation", "bogus"], "activation_func is 'bogus'; expected one of: linear, relu"),
        (["create", "x", "--activation", "glu"], "activation_func is 'glu'; expected one of"),
        (["create", "x", "--dropout", "0, 1.5, 0"], "dropout_structure[1] is 1.5; expected one number per layer"),
        (["create", "x", "--sizes", "768,abc"], "enable_sizes[1] is 'abc'; expected 1 to 16 widths"),
        (["create", "x", "--sizes", "0"], "enable_sizes[0] is 0; expected"),
        (["create", "x", "--sizes", "4096,4095,4094,4093"], "parameters; at most"),
        (["create", "x", "--layers", "1, 0.001, 1"], "gives a layer of width 0"),
        (["create", "???"], "is not a plain file name"),
        (["create", "sub/x"], "is not a plain file name"),
        (["create", "."], "is not a plain file name"),
        (["create", "my style!"], "is not a plain file name"),
        (["inspect", "missing.pt"], "missing.pt: no such file"),
    ],
)
def test_errors_are_sentences_not_tracebacks(tmp_path: Path, capsys, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_create_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    d = str(tmp_path)
    assert run(capsys, "create", "n", "--dir", d, "--sizes", "8")[0] == 0
    before = (tmp_path / "n.pt").read_bytes()
    code, _, err = run(capsys, "create", "n", "--dir", d, "--sizes", "8", "--seed", "2")
    assert code == 2 and "already exists" in err
    assert (tmp_path / "n.pt").read_bytes() == before
    assert run(capsys, "create", "n", "--dir", d, "--sizes", "8", "--seed", "2", "--overwrite")[0] == 0
    assert (tmp_path / "n.pt").read_bytes() != before


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    with pytest.raises(hypernet.HypernetError):
        main(["--debug", "inspect", str(tmp_path / "missing.pt")])
