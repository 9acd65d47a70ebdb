"""The web UI's small rules, without a browser: A1111's status wording, card tag toggling, seed reuse."""

from __future__ import annotations

from hypernet.server.ui import _generation_status, _seed_of, toggle_tag


def test_status_names_the_batch_of_how_many_and_never_runs_past_the_end() -> None:
    assert _generation_status(0, 1, 3, 12) == "Batch 1 of 1, step 3/12"
    assert _generation_status(1, 1, 12, 12) == "Batch 1 of 1, step 12/12"  # not "batch 2/1" once the last one ends
    assert _generation_status(1, 3, 15, 12) == "Batch 2 of 3, step 12/12"


def test_a_card_click_adds_its_tag_and_a_second_click_removes_it() -> None:
    added = toggle_tag("a castle", "gothic", 0.8)
    assert added == "a castle <hypernet:gothic:0.8>"
    assert toggle_tag(added, "gothic", 1.0) == "a castle"
    assert toggle_tag("a <hypernet:gothic2:1>", "gothic", 1) == "a <hypernet:gothic2:1> <hypernet:gothic:1>"
    assert toggle_tag("<hypernet:сова>", "сова", 1) == ""


def test_lora_and_embedding_cards_toggle_too() -> None:
    added = toggle_tag("a castle", "add_detail", 0.6, "lora")
    assert added == "a castle <lora:add_detail:0.6>" and toggle_tag(added, "add_detail", 1, "lora") == "a castle"
    assert toggle_tag("a <hypernet:x:1>", "x", 1, "lora") == "a <hypernet:x:1> <lora:x:1>"  # kinds are separate
    assert toggle_tag("", "EasyNegative", 1, "ti") == "EasyNegative"
    assert toggle_tag("blurry", "EasyNegative", 1, "ti") == "blurry, EasyNegative"
    assert toggle_tag("blurry, EasyNegative", "EasyNegative", 1, "ti") == "blurry"
    assert toggle_tag("EasyNegative, blurry", "EasyNegative", 1, "ti") == "blurry"
    assert toggle_tag("a, EasyNegative, b", "EasyNegative", 1, "ti") == "a, b"
    assert toggle_tag("EasyNegative2", "EasyNegative", 1, "ti") == "EasyNegative2, EasyNegative"  # whole names only


def test_reuse_seed_reads_the_last_infotext() -> None:
    assert _seed_of("a\nSteps: 20, Sampler: Euler, Seed: 1234, Size: 64x64") == 1234
    assert _seed_of("") == -1
