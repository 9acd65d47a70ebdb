"""Property tests (hypothesis): the prompt parser and the settings models hold for any input, not just examples."""

from __future__ import annotations

import pytest

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypernet.errors import HypernetError
from hypernet.prompt import parse_batch, parse_prompt, parse_prompt_attention, prompt_schedules
from hypernet.settings import CreateSettings, GenerateSettings, PreprocessSettings, SettingsError, TrainSettings
from hypernet.settings import limits as L
from hypernet.settings.server import ServerOptions

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROMPT_ALPHABET = st.sampled_from(list("ab c,:|()[]<>\\0123456789.-_") + ["hypernet", "BREAK", "AND", "nan", "inf"])
prompts = st.lists(PROMPT_ALPHABET, max_size=40).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
)


@pytest.mark.slow
@QUICK
@given(prompt=prompts, steps=st.integers(min_value=1, max_value=60))
def test_prompt_schedules_cover_every_step(prompt: str, steps: int) -> None:
    schedule = prompt_schedules([prompt], steps)[0]
    ends = [end for end, _ in schedule]
    assert ends == sorted(ends) and ends[-1] == steps and ends[0] >= 1


@QUICK
@given(prompt=prompts)
def test_attention_weights_are_finite_and_keep_the_text(prompt: str) -> None:
    runs = parse_prompt_attention(prompt)
    assert all(math.isfinite(weight) for _, weight in runs)
    assert sum(len(text) for text, weight in runs if weight != -1) <= len(prompt)


@QUICK
@given(prompt=prompts)
def test_tags_are_removed_and_selections_are_finite(prompt: str) -> None:
    clean, _ = parse_prompt(prompt)
    assert "<hypernet:" not in clean
    try:
        batch = parse_batch([prompt], {"a", "b", "ab"})
    except HypernetError as e:  # an unknown name or a weight that is not a finite number: one sentence
        assert "\n" not in str(e)
        return
    assert all(math.isfinite(h.multiplier) for h in batch.hypernetworks)


def _holds(model: object) -> None:
    for name, value in model.model_dump().items():
        assert not (isinstance(value, float) and not math.isfinite(value)), name


@pytest.mark.slow
@QUICK
@given(values=st.dictionaries(st.sampled_from(list(GenerateSettings.model_fields)), json_values, max_size=6))
def test_generate_settings_hold_their_limits_or_say_why(values: dict) -> None:
    try:
        s = GenerateSettings.parse(values)
    except SettingsError as e:
        assert str(e).endswith(".") and "\n" not in str(e)
        return
    _holds(s)
    assert s.width % 8 == 0 and s.height % 8 == 0 and s.width * s.height <= L.MAX_PIXELS
    assert s.seed == -1 or 0 <= s.seed <= L.SEED_MAX
    assert 1 <= s.steps <= L.MAX_STEPS and s.batch_size * s.n_iter <= L.MAX_IMAGES


@pytest.mark.slow
@QUICK
@given(model=st.sampled_from([CreateSettings, TrainSettings, PreprocessSettings, ServerOptions]), data=st.data())
def test_every_family_holds_its_limits_or_says_why(model, data) -> None:
    values = data.draw(st.dictionaries(st.sampled_from(list(model.model_fields)), json_values, max_size=6))
    if model is CreateSettings:
        values.setdefault("name", "x")
    try:
        s = model.parse(values)
    except SettingsError as e:
        assert str(e).endswith(".") and "\n" not in str(e)
        return
    _holds(s)
    if model is CreateSettings:
        assert all(int(w * m) >= 1 for w in s.enable_sizes for m in s.layer_structure)


@QUICK
@given(width=st.integers(min_value=L.MIN_SIDE, max_value=2048), height=st.integers(min_value=L.MIN_SIDE, max_value=2048))
def test_sizes_a1111_accepts_are_floored_not_refused(width: int, height: int) -> None:
    s = GenerateSettings(width=width, height=height)
    assert (s.width, s.height) == (width - width % 8, height - height % 8)
    assert len(s.warnings) == (width % 8 != 0) + (height % 8 != 0)
