"""LearnRateSchedule against every case of ../shared/conformance/lr_schedule_vectors.json (A1111's own results)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from hypernet.errors import HypernetError
from hypernet.train.schedule import LearnRateSchedule, Phase

SHARED = Path(os.environ.get("HYPERNET_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CASES = json.loads((SHARED / "conformance" / "lr_schedule_vectors.json").read_text(encoding="utf-8"))["cases"]


def _case_id(case: dict) -> str:
    return f"{case['schedule']!r}@{case['cur_step']}/{case['max_steps']}"


@pytest.mark.parametrize("case", [c for c in CASES if c["valid"]], ids=_case_id)
def test_valid_schedule_matches_a1111(case: dict) -> None:
    schedule = LearnRateSchedule.parse(case["schedule"], case["max_steps"], case["cur_step"])
    assert [[p.value, p.end_step] for p in schedule.phases] == case["iterator_rates"]
    assert len(schedule.phases) == case["iterator_maxit"]
    assert (schedule.value, schedule.end_step) == (case["initial"]["learn_rate"], case["initial"]["end_step"])

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=schedule.value)
    trained, switches, finished_at = [], [], None
    for step in range(case["cur_step"], case["max_steps"] + 10):
        if schedule.step(step):
            switches.append({"at_step": step, "new_learn_rate": schedule.value, "new_end_step": schedule.end_step})
            for group in optimizer.param_groups:
                group["lr"] = schedule.value
        if schedule.finished:
            finished_at = step
            break
        trained.append([step, optimizer.param_groups[0]["lr"]])

    assert trained == case["trained_steps"]
    assert finished_at == case["finished_at_step"]
    assert switches == case["schedule_switch_events"]


@pytest.mark.parametrize("case", [c for c in CASES if c["valid"]], ids=_case_id)
def test_apply_writes_the_same_rates_into_the_optimizer(case: dict) -> None:
    schedule = LearnRateSchedule.parse(case["schedule"], case["max_steps"], case["cur_step"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=schedule.value)
    runs: list[list] = []
    step = case["cur_step"]
    while True:
        schedule.apply(optimizer, step)
        if schedule.finished:
            break
        lr = optimizer.param_groups[0]["lr"]
        if runs and runs[-1][2] == lr and runs[-1][1] == step:
            runs[-1][1] = step + 1
        else:
            runs.append([step, step + 1, lr])
        step += 1
    assert runs == case["lr_runs_[start,end_exclusive,lr]"]


@pytest.mark.parametrize("case", [c for c in CASES if not c["valid"]], ids=_case_id)
def test_invalid_schedule_names_the_bad_piece(case: dict) -> None:
    assert case["error"]["message"].startswith("Invalid learning rate schedule")
    with pytest.raises(HypernetError) as err:
        LearnRateSchedule.parse(case["schedule"], case["max_steps"], case["cur_step"])
    message = str(err.value)
    assert message.startswith("learn_rate ")
    if case["error"]["cause_type"] == "ValueError":
        # A1111: "invalid literal for int() with base 10: 'ten'" -> our message quotes "ten".
        bad = re.search(r": '(.*)'$", case["error"]["cause_message"]).group(1)
        assert f'"{bad}"' in message
    elif case["schedule"].strip():
        for item in filter(None, (piece.strip() for piece in case["schedule"].split(","))):
            assert f'"{item}"' in message
    else:
        assert '""' in message


def test_bad_rate_is_named() -> None:
    with pytest.raises(HypernetError, match=r'clip_grad_value .*the rate "fast" in "fast:10"'):
        LearnRateSchedule.parse("fast:10", 100, field="clip_grad_value")


def test_resume_skips_finished_phases() -> None:
    schedule = LearnRateSchedule.parse("5e-5:100, 5e-6:1500, 5e-7:10000, 5e-8:20000", 3000, cur_step=150)
    assert schedule.phases == (Phase(5e-6, 1500), Phase(5e-7, 3000))
    assert not schedule.step(1499)
    assert schedule.step(1500) and schedule.value == 5e-7
    assert not schedule.step(2999) and not schedule.finished
    assert not schedule.step(3000) and schedule.finished
    assert schedule.value == 5e-7  # the clip schedule keeps its last value after the end
