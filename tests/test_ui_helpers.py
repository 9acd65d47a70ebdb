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


def _health_rows() -> list[dict[str, object]]:
    from hypernet.train.health import ImageStats, SnapshotHealth

    stats = ImageStats(0.2, 0.011, 0.004)
    return [SnapshotHealth(step, f"/logs/run/hypernetworks/h-{step}.pt" if step else None, None, 0.1234567 + step,
                           stats, 0.1 * step, 1.0 - 0.1 * step, ["content fidelity 0.10"] if step == 4 else []).row()
            for step in (0, 2, 4)]


def test_the_health_table_marks_the_recommended_snapshot_and_escapes_what_it_shows() -> None:
    from hypernet.server.ui_health import RECOMMENDED, health_table

    rows = _health_rows()
    table = health_table(rows, 2)
    assert table.count("<tr") == 4 and table.count(RECOMMENDED) == 1  # the header and three rows; one marked
    marked = next(r for r in table.split("<tr")[1:] if RECOMMENDED in r)
    assert "h-2.pt" in marked and "<td>2</td>" in marked and "hn-best" in marked and "/logs" not in marked
    assert "start (the network before this run)" in table and "<td>2.1235</td>" in table  # figures shortened
    assert "content fidelity 0.10" in table.split("h-4.pt")[1]
    assert health_table(rows, None).count(RECOMMENDED) == 0 and health_table([], 2) == ""
    evil = dict(rows[1], distorted="<script>alert(1)</script>")
    assert "<script>alert" not in health_table([rows[0], evil], 2)


def test_the_health_note_warns_when_training_went_past_its_best_snapshot() -> None:
    from hypernet.server.ui_health import health_note

    rows = _health_rows()
    live = {"health": rows[:1], "recommended_step": None, "overcooked": False, "health_verdict": ""}
    assert health_note(live, None) == ""  # only the start: nothing to say yet
    fine = {"health": rows[:2], "recommended_step": 2, "overcooked": False,
            "health_verdict": "recommended snapshot: step 2 (h-2.pt), style effect 0.20."}
    assert health_note(fine, None) == "Recommended snapshot: step 2 (h-2.pt), style effect 0.20."
    cooked = {"health": rows, "recommended_step": 2, "overcooked": True,
              "health_verdict": "recommended snapshot: step 2; training has gone past it (over-cooked: ...)."}
    running = health_note(cooked, None)
    assert running.startswith("**⚠ Over-cooked: training has gone past its best snapshot.**")
    assert "Keep the step 2 snapshot (`h-2.pt`" in running and "interrupt" in running
    assert "interrupt" not in health_note(cooked, "finished")
    stopped = health_note(cooked, "overcooked")
    assert "training stopped** (Stop when over-cooked) and restored the recommended snapshot, step 2" in stopped
    at_once = dict(cooked, recommended_step=None)
    assert "from the first snapshot: training stopped" in health_note(at_once, "overcooked")
    assert "no snapshot of this run is worth keeping" in health_note(at_once, "finished")
