"""Creating, saving and loading hypernetworks: A1111-loadable .pt, lossless .safetensors, safety, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors.torch
import torch

import hypernet
from hypernet import HypernetError, Hypernetwork
from hypernet.network.writing import a1111_pt_bytes

# What a stock A1111 accepts inside a .pt (conformance README "Files that A1111 itself can load").
A1111_RECORD_SUFFIXES = ("data.pkl", "version", "byteorder", ".data/serialization_id")
A1111_GLOBALS = {
    "collections OrderedDict",
    "torch._utils _rebuild_tensor_v2",
    "torch._utils _rebuild_parameter",
    "torch._utils _rebuild_device_tensor_from_numpy",
    "torch FloatStorage",
    "torch HalfStorage",
    "torch IntStorage",
    "torch LongStorage",
    "torch DoubleStorage",
    "torch ByteStorage",
    "torch BFloat16Storage",
    "torch float32",
    "__builtin__ set",
}


def small(**kwargs) -> Hypernetwork:
    args = dict(widths=(24, 10), layer_structure=(1, 2, 1), activation_func="relu", seed=3)
    args.update(kwargs)
    return Hypernetwork.create("small", **args)


def pickle_globals(data: bytes) -> set[str]:
    found = set()
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            found.add(arg.replace("\n", " ") if "\n" in arg else arg)
        assert opcode.name != "STACK_GLOBAL", "unexpected protocol-4 global"
    return found


def assert_same(a: Hypernetwork, b: Hypernetwork) -> None:
    assert a.metadata() == b.metadata()
    assert a.widths == b.widths
    sa, sb = a.module_state_dicts(), b.module_state_dicts()
    for w in sa:
        for x, y in zip(sa[w], sb[w]):
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------------------------- creation
def test_create_matches_a1111_create_bit_exactly(conformance_dir: Path) -> None:
    """hn18 was made by A1111's create_hypernetwork after torch.manual_seed(500), without perturbation."""
    ref = hypernet.load_hypernetwork(conformance_dir / "hypernetworks/hn18_ui_created.pt")
    ours = Hypernetwork.create(
        "hn18_ui_created",
        widths=[24, 10, 20, 40],
        layer_structure=[1.0, 2.0, 1.0],
        activation_func="relu",
        weight_init="KaimingUniform",
        dropout_structure=[0.0, 0.15, 0.0],
        seed=500,
    )
    assert_same(ours, ref)


def test_create_leaves_global_rng_alone() -> None:
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    small(seed=9)
    assert torch.equal(torch.rand(1), before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer_structure": (2, 1)}, "start and end with 1"),
        ({"layer_structure": (1, 2)}, "start and end with 1"),
        ({"activation_func": "nosuch"}, "unknown activation 'nosuch'"),
        ({"activation_func": "threshold"}, "constructor arguments"),
        ({"activation_func": "glu"}, "halves the width"),
        ({"dropout_structure": (0, 1.0, 0)}, "between 0 and 1"),
        ({"dropout_structure": (0, -0.1, 0)}, "between 0 and 1"),
        ({"dropout_structure": (0, 0.1)}, "one entry per layer"),
        ({"widths": (768, 0)}, "positive integers"),
        ({"widths": (-5,)}, "positive integers"),
        ({"widths": ()}, "at least one width"),
        ({"weight_init": "Zeros"}, "unknown weight initialization"),
    ],
)
def test_create_refuses_bad_structures(kwargs: dict, message: str) -> None:
    with pytest.raises(HypernetError, match=message):
        small(**kwargs)


def test_swish_is_hardswish_and_all_torch_activations_build() -> None:
    assert isinstance(small(activation_func="swish").modules_for(24)[0].linear[1], torch.nn.Hardswish)
    for act in ("silu", "mish", "gelu", "prelu", "softsign", "celu", "rrelu", "tanhshrink", "softmin"):
        net = small(activation_func=act)
        k, v = net.apply(torch.randn(2, 3, 24))
        assert k.shape == (2, 3, 24)


def test_parameter_count_of_the_ui_default() -> None:
    # hypernetwork-format.md §10: [1,2,1] at 768/320/640/1280 has 21,939,840 parameters.
    net = Hypernetwork.create("d", widths=(768, 320, 640, 1280), seed=0)
    assert net.num_parameters() == 21_939_840


def test_apply_multiplier_zero_is_identity_and_width_miss_passes_through() -> None:
    net = small()
    x = torch.randn(2, 5, 24)
    k, v = net.apply(x, 0.0)
    assert torch.equal(k, x) and torch.equal(v, x)
    y = torch.randn(2, 5, 7)
    k, v = net.apply(y, 1.0)
    assert k is y or torch.equal(k, y)


def test_apply_keeps_half_precision_inputs_in_their_dtype() -> None:
    net = small()
    x = torch.randn(1, 4, 24).to(torch.bfloat16)
    k, v = net.apply(x)
    assert k.dtype == torch.bfloat16
    ref, _ = net.apply(x.float())
    torch.testing.assert_close(k.float(), ref, atol=0.05, rtol=0.02)


# ----------------------------------------------------------------------------------------------- .pt files
def test_pt_round_trip_and_a1111_loadability(tmp_path: Path) -> None:
    net = small(add_layer_norm=True, dropout_structure=(0, 0.2, 0))
    net.step, net.sd_checkpoint, net.sd_checkpoint_name = 42, "0123456789", "models_v1-5"
    path = net.save(tmp_path / "small.pt")
    again = hypernet.load_hypernetwork(path)
    assert_same(net, again)

    # A1111's pre-load check: only these zip records, only these pickle globals, fp32 CPU tensors.
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert all(n.split("/", 1)[0] == "small" for n in names)
        for n in names:
            record = n.split("/", 1)[1]
            assert record in A1111_RECORD_SUFFIXES or (record.startswith("data/") and record[5:].isdigit()), n
        data_pkl = z.read("small/data.pkl")
    found = pickle_globals(data_pkl)
    assert "torch._utils _rebuild_tensor_v2" in found and found <= A1111_GLOBALS
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {k for k in raw if isinstance(k, int)} == {24, 10}
    assert isinstance(raw[24], tuple) and isinstance(raw[24][0], OrderedDict)
    assert all(t.dtype == torch.float32 for sd in raw[24] for t in sd.values())
    for key in ("activate_output", "dropout_structure", "last_layer_dropout", "optional_info", "weight_initialization"):
        assert key in raw
    assert raw["last_layer_dropout"] is True
    # memory-mapped loading needs the 64-byte data alignment torch itself uses
    mm = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert torch.equal(mm[24][0]["linear.0.weight"], raw[24][0]["linear.0.weight"])


def test_optimizer_sidecar_round_trip(tmp_path: Path) -> None:
    net = small()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = sum(m(torch.randn(1, 3, 24)).sum() for m in net.modules_for(24))
    loss.backward()
    opt.step()
    path = net.save(tmp_path / "trained.pt", optimizer=opt)
    sidecar = tmp_path / "trained.pt.optim"
    raw = torch.load(sidecar, weights_only=True)
    assert raw["optimizer_name"] == "AdamW" and raw["hash"] == hypernet.fileio.short_hash(path)
    loaded = hypernet.load_hypernetwork(path)
    assert loaded.optimizer_name == "AdamW"
    assert loaded.optimizer_state_dict["state"][0]["step"] == 1
    # A sidecar whose hash does not match this file is ignored, as in A1111.
    small(seed=4).save(path)
    assert hypernet.load_hypernetwork(path).optimizer_state_dict is None


# ------------------------------------------------------------------------------------------- safetensors
def test_pt_safetensors_round_trips_are_lossless(tmp_path: Path, conformance_dir: Path) -> None:
    for name in ("hn10_mish_1221_ln_dropout_default_lastlayer", "hnL0_legacy_nai_intkeys_only", "act_prelu"):
        original = hypernet.load_hypernetwork(conformance_dir / f"hypernetworks/{name}.pt")
        st = original.save(tmp_path / f"{name}.safetensors")
        via_st = hypernet.load_hypernetwork(st)
        assert_same(original, via_st)
        back = via_st.save(tmp_path / f"{name}.pt")
        assert_same(original, hypernet.load_hypernetwork(back))
    header = json.loads(Path(st).read_bytes()[8 : 8 + int.from_bytes(Path(st).read_bytes()[:8], "little")])
    assert header["__metadata__"]["format"] == "hypernet.hypernetwork/1"
    assert "10.0.linear.0.weight" in header


# ---------------------------------------------------------------------------------------------- bad input
class _RunsCommand:
    def __reduce__(self):
        return (os.system, ("touch " + str(self.marker),))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _RunsCommand()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({768: evil, "name": "evil"}, path)  # a real torch zip whose pickle calls os.system
    with pytest.raises(HypernetError, match=r"evil\.pt: refused to load.*never runs code"):
        hypernet.load_hypernetwork(path)
    assert not marker.exists()
    plain = tmp_path / "evil_plain.pt"
    plain.write_bytes(pickle.dumps(evil))  # legacy non-zip pickle
    with pytest.raises(HypernetError):
        hypernet.load_hypernetwork(plain)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_files_give_a_clear_error(tmp_path: Path, suffix: str) -> None:
    full = small().save(tmp_path / f"whole{suffix}")
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        broken = tmp_path / f"broken{suffix}"
        broken.write_bytes(data[:cut])
        with pytest.raises(HypernetError, match=r"broken\.\w+: .*(truncated or corrupt|damaged)"):
            hypernet.load_hypernetwork(broken)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HypernetError, match="no such hypernetwork file"):
        hypernet.load_hypernetwork(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, "looks like a LoRA"),
        ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)}, "Stable Diffusion checkpoint"),
        ({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, "Stable Diffusion checkpoint"),
        ({"string_to_param": {"*": torch.zeros(1, 768)}, "name": "x"}, "textual inversion"),
        ({"name": "nothing", "step": 3}, "no integer width keys"),
        ({768: torch.zeros(3)}, "width 768 must hold"),
    ],
)
def test_other_kinds_of_file_are_named(tmp_path: Path, payload: dict, message: str) -> None:
    path = tmp_path / "thing.pt"
    torch.save(payload, path)
    with pytest.raises(HypernetError, match=message) as err:
        hypernet.load_hypernetwork(path)
    assert "thing.pt" in str(err.value)


def test_lora_safetensors_is_named(tmp_path: Path) -> None:
    path = tmp_path / "style.safetensors"
    safetensors.torch.save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, path)
    with pytest.raises(HypernetError, match="style.safetensors: this looks like a LoRA file"):
        hypernet.load_hypernetwork(path)


def test_file_with_bad_layer_structure_is_refused(tmp_path: Path) -> None:
    net = small()
    payload = {w: (OrderedDict(k), OrderedDict(v)) for w, (k, v) in net.module_state_dicts().items()}
    payload.update(net.metadata(), layer_structure=[2, 1])
    path = tmp_path / "odd.pt"
    path.write_bytes(a1111_pt_bytes(payload))
    with pytest.raises(HypernetError, match="odd.pt: layer structure .* start and end with 1"):
        hypernet.load_hypernetwork(path)


def test_unknown_extension_on_save(tmp_path: Path) -> None:
    with pytest.raises(HypernetError, match="unknown hypernetwork file extension"):
        small().save(tmp_path / "x.bin")


# ------------------------------------------------------------------------------------------ atomic writes
def test_a_failed_write_leaves_the_existing_file_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small().save(tmp_path / "keep.pt")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        small(seed=11).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"], "no temp file may be left behind"


# ---------------------------------------------------------------------------------------------- discovery
def test_list_follows_a1111_discovery_rules(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for rel in ("b.pt", "A.pt", "sub/b.pt", "None.pt", "c.safetensors", "d.ckpt", "e.pth"):
        (tmp_path / rel).write_bytes(b"")
    found = hypernet.list_hypernetworks(tmp_path)
    assert list(found) == ["A", "b", "c"]
    assert found["b"] == tmp_path / "sub/b.pt"  # later in case-insensitive path order wins


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    path = small().save(tmp_path / "shared.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "not mkstemp's private 0600"
    os.chmod(path, 0o640)
    small(seed=5).save(path)
    assert path.stat().st_mode & 0o777 == 0o640, "an overwritten file keeps its permissions"
