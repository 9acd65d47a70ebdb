"""``<hypernet:...>`` tags against A1111's recorded behaviour (prompt_parse_vectors.json) and our deliberate changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hypernet.errors import HypernetError
from hypernet.prompt.tags import LoraSelection
from hypernet.prompt import (
    ExtraNetworkParams,
    HypernetworkSelection,
    parse_batch,
    parse_prompt,
    parse_prompts,
    resolve_hypernetwork,
)


def _vectors(name: str) -> list[dict]:
    # Read at collection time so that each vector is its own test case (same location as conftest's shared_dir);
    # if the file is missing, test_vectors_are_all_collected fails through the fixture.
    shared = Path(os.environ.get("HYPERNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    path = shared / "conformance" / "prompt_parse_vectors.json"
    return json.loads(path.read_text(encoding="utf-8"))[name] if path.is_file() else []


@pytest.fixture(scope="module")
def vectors(conformance_dir: Path) -> dict:
    return json.loads((conformance_dir / "prompt_parse_vectors.json").read_text(encoding="utf-8"))


def _as_vector(data: dict[str, list[ExtraNetworkParams]]) -> dict:
    return {
        tag_type: [{"items": list(p.items), "positional": list(p.positional), "named": p.named} for p in params]
        for tag_type, params in data.items()
    }


def test_vectors_are_all_collected(vectors: dict) -> None:
    assert len(_vectors("parse_prompt_cases")) == len(vectors["parse_prompt_cases"]) > 0
    assert len(_vectors("parse_prompts_cases")) == len(vectors["parse_prompts_cases"]) > 0
    assert len(_vectors("sd_hypernetwork_setting_cases")) == len(vectors["sd_hypernetwork_setting_cases"]) > 0


# =============================================================================================== A1111 vectors
@pytest.mark.parametrize("case", _vectors("parse_prompt_cases"), ids=lambda c: repr(c["prompt"]))
def test_parse_prompt_matches_a1111(case: dict) -> None:
    cleaned, data = parse_prompt(case["prompt"])
    assert cleaned == case["cleaned_prompt"]
    assert _as_vector(data) == case["extra_network_data"]
    assert list(data) == list(case["extra_network_data"])  # types in first-appearance order


@pytest.mark.parametrize("case", _vectors("parse_prompt_cases"), ids=lambda c: repr(c["prompt"]))
def test_hypernet_activation_matches_a1111(case: dict) -> None:
    activation = case["hypernet_activate"]
    [[names, multipliers]] = activation["load_hypernetworks_calls"]
    tags = parse_prompt(case["prompt"])[1].get("hypernet", [])
    available = {p.items[0] for p in tags}

    if activation["error_displayed"] is not None:
        # Deliberate difference: A1111 shows an error and applies no tag network; hypernet refuses with the tag named.
        [weight] = [p.items[1] for p in tags]
        with pytest.raises(HypernetError, match="not a number") as err:
            parse_batch([case["prompt"]], available)
        assert case["prompt"] in str(err.value) and repr(weight) in str(err.value)
        return

    batch = parse_batch([case["prompt"]], available)
    # A repeated name stays in the list twice, each at its own multiplier, which is also what A1111 passes on.
    assert batch.hypernetworks == [HypernetworkSelection(n, m) for n, m in zip(names, multipliers, strict=True)]
    assert batch.prompts == [case["cleaned_prompt"]]
    assert batch.infotext_prompts == activation["p_all_prompts_after"]


@pytest.mark.parametrize("case", _vectors("parse_prompts_cases"), ids=lambda c: repr(c["prompts"]))
def test_parse_prompts_matches_a1111(case: dict) -> None:
    cleaned, data = parse_prompts(case["prompts"])
    assert cleaned == case["cleaned_prompts"]
    assert _as_vector(data) == case["extra_network_data"]


@pytest.mark.parametrize("case", _vectors("sd_hypernetwork_setting_cases"), ids=lambda c: repr(c["prompt"]))
def test_sd_hypernetwork_setting_matches_a1111(case: dict) -> None:
    available = case["shared_hypernetworks_contains"]
    kwargs = {
        "sd_hypernetwork": case["opts_sd_hypernetwork"],
        "default_multiplier": case["opts_extra_networks_default_multiplier"],
    }
    if case["opts_sd_hypernetwork"] not in available:
        # Deliberate difference: A1111 silently ignores a setting naming a missing network; hypernet refuses.
        with pytest.raises(HypernetError, match="sd_hypernetwork setting"):
            parse_batch([case["prompt"]], available, **kwargs)
        return
    batch = parse_batch([case["prompt"]], available, **kwargs)
    [[names, multipliers]] = case["load_hypernetworks_calls"]
    assert batch.hypernetworks == [HypernetworkSelection(n, m) for n, m in zip(names, multipliers, strict=True)]
    assert batch.infotext_prompts == case["p_all_prompts_after"]


# =============================================================================================== batches
def test_only_the_first_prompt_selects_and_every_prompt_is_cleaned() -> None:
    batch = parse_batch(["a <hypernet:x:0.5>", "b <hypernet:y:0.7>"], {"x", "y"})
    assert batch.hypernetworks == [HypernetworkSelection("x", 0.5)]
    assert batch.prompts == ["a ", "b "]
    assert batch.infotext_prompts == ["a <hypernet:x:0.5>", "b <hypernet:y:0.7>"]
    assert batch.warnings == [
        "<hypernet:y:0.7> in prompt 2 of the batch was removed without effect; "
        "only the first prompt of a batch selects hypernetworks."
    ]


def test_identical_prompts_in_a_batch_give_no_warning() -> None:
    assert parse_batch(["a <hypernet:x>"] * 3, {"x"}).warnings == []


def test_other_tag_types_are_removed_with_a_warning_each() -> None:
    batch = parse_batch(["<style:x:1> a <lora:y:0.5>", "<style:x:1> b <lora:y:0.5>"], {"h"})
    assert batch.prompts == [" a ", " b "]
    assert batch.hypernetworks == []
    assert batch.warnings == ["<style:x:1> is not supported yet and was removed."]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("<lora:x>", [LoraSelection("x", 1.0, 1.0, None)]),
        ("<lora:x:0.7>", [LoraSelection("x", 0.7, 0.7, None)]),
        ("<lora:x:0.7:0.2>", [LoraSelection("x", 0.7, 0.2, None)]),
        ("<lora:x:te=0.5>", [LoraSelection("x", 0.5, 0.5, None)]),
        ("<lora:x:0.7:unet=0.1:dyn=4>", [LoraSelection("x", 0.7, 0.1, 4)]),
        ("<lora:x:1:0.5:8>", [LoraSelection("x", 1.0, 0.5, 8)]),
        # A1111 merges <lyco:...> into <lora:...>; the type that appears first comes first
        ("<lyco:y:0.5:te=0.2> a <lora:x:1>", [LoraSelection("y", 0.2, 0.2, None), LoraSelection("x", 1.0, 1.0, None)]),
    ],
)
def test_lora_tags_read_like_a1111(prompt: str, expected: list[LoraSelection]) -> None:
    batch = parse_batch([prompt], set())
    assert batch.loras == expected and batch.warnings == [] and "<" not in batch.prompts[0]


def test_lora_tag_with_a_bad_number_names_the_tag() -> None:
    with pytest.raises(HypernetError, match=r"<lora:x:strong> has a value that is not a number"):
        parse_batch(["<lora:x:strong>"], set())


@pytest.mark.parametrize("tag", ["<lora:x:nan>", "<lora:x:1:inf>", "<lora:x:te=-inf>"])
def test_lora_weights_must_be_finite(tag: str) -> None:
    with pytest.raises(HypernetError, match=r"has a weight that is not a finite number"):
        parse_batch([tag], set())


def test_lora_tags_only_in_a_later_prompt_warn() -> None:
    batch = parse_batch(["a", "b <lora:x:1>"], set())
    assert batch.loras == [] and "only the first prompt of a batch selects LoRA" in batch.warnings[0]


@pytest.mark.parametrize("tag", ["<HyperNet:h:1>", "<hyper_net:h:1>", "<hypernetwork:h:1>"])
def test_near_miss_tag_types_suggest_hypernet(tag: str) -> None:
    batch = parse_batch([tag], {"h"})
    assert batch.hypernetworks == [] and batch.prompts == [""]
    [warning] = batch.warnings
    assert warning.startswith(f"{tag} was removed") and "did you mean 'hypernet'" in warning


@pytest.mark.parametrize(
    ("weight", "expected"),
    [("0.8", 0.8), ("  0.7 ", 0.7), ("1e-1", 0.1), ("-0.5", -0.5), ("2", 2.0), ("\uff11.\uff15", 1.5), ("1_0", 10.0)],
)
def test_weights_follow_python_float(weight: str, expected: float) -> None:
    assert parse_batch([f"<hypernet:h:{weight}>"], {"h"}).hypernetworks == [HypernetworkSelection("h", expected)]


def test_no_hypernet_tag_selects_nothing() -> None:
    batch = parse_batch(["a cat"], {"h"})
    assert batch.hypernetworks == [] and batch.warnings == [] and batch.prompts == ["a cat"]


def test_unknown_tag_name_is_an_error_naming_the_closest() -> None:
    with pytest.raises(HypernetError, match=r"Unknown hypernetwork ' anime ' in the prompt; did you mean 'anime'\?"):
        parse_batch(["cat,<hypernet: anime :  0.7 >,dog"], {"anime", "style"})


# =============================================================================================== the setting
def test_setting_adds_its_network_last_to_every_prompt() -> None:
    batch = parse_batch(
        ["a <hypernet:x:0.5>", "b"], {"x", "extra"}, sd_hypernetwork="extra", default_multiplier=1
    )
    assert batch.hypernetworks == [HypernetworkSelection("x", 0.5), HypernetworkSelection("extra", 1.0)]
    assert batch.infotext_prompts == ["a <hypernet:x:0.5><hypernet:extra:1.0>", "b<hypernet:extra:1.0>"]
    assert batch.prompts == ["a ", "b"]


def test_setting_is_skipped_when_the_first_prompt_names_it() -> None:
    batch = parse_batch(["<hypernet:extra:0.2>"], {"extra"}, sd_hypernetwork="extra", default_multiplier=0.6)
    assert batch.hypernetworks == [HypernetworkSelection("extra", 0.2)]
    assert batch.infotext_prompts == ["<hypernet:extra:0.2>"]


@pytest.mark.parametrize("off", [None, "None"])
def test_setting_none_is_off(off: str | None) -> None:
    batch = parse_batch(["a"], {"x"}, sd_hypernetwork=off)
    assert batch.hypernetworks == [] and batch.infotext_prompts == ["a"]


# =============================================================================================== pieces
@pytest.mark.parametrize(
    ("items", "positional", "named"),
    [
        (["y", "0.5", "te=0.2"], ("y", "0.5"), {"te": "0.2"}),
        (["h", "a=b=c"], ("h", "a=b=c"), {}),
        (["h", "=x", "k="], ("h",), {"": "x", "k": ""}),
    ],
)
def test_params_split_named_items_like_a1111(items: list[str], positional: tuple, named: dict) -> None:
    params = ExtraNetworkParams.from_items(items)
    assert params.items == tuple(items) and params.positional == positional and params.named == named


def test_parse_prompts_of_an_empty_batch() -> None:
    assert parse_prompts([]) == ([], {})


def test_resolve_returns_the_mapped_value() -> None:
    assert resolve_hypernetwork("anime", {"anime": "/models/anime.pt"}) == "/models/anime.pt"


@pytest.mark.parametrize(
    ("name", "available", "message"),
    [
        ("Anime", {"anime": 1, "style": 2}, r"Unknown hypernetwork 'Anime'; did you mean 'anime'\? \(names are exact"),
        ("animu", {"anime": 1, "anima": 2, "zzz": 3}, r"did you mean 'anime' or 'anima'\?"),
        ("qqq", {"anime": 1, "style": 2}, r"Unknown hypernetwork 'qqq'; expected one of 'anime', 'style'\."),
        ("qqq", {f"net{i}": i for i in range(8)}, r"expected one of the 8 available names, none of which is similar\."),
        ("qqq", {}, r"expected the name of a hypernetwork file, but none were found\."),
    ],
)
def test_resolve_unknown_names(name: str, available: dict, message: str) -> None:
    with pytest.raises(HypernetError, match=message):
        resolve_hypernetwork(name, available)
