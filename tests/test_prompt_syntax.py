"""A1111 prompt syntax: prompt-editing schedules, emphasis and 75-token chunks, checked against A1111's examples."""

from __future__ import annotations

import pytest

from hypernet.errors import HypernetError
from hypernet.prompt import BREAK_WEIGHT, chunk_prompt, parse_prompt_attention, prompt_schedules

ALTERNATING = [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]


# =============================================================================================== schedules
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # The doctests of A1111 v1.10's get_learned_conditioning_prompt_schedules, at 10 steps.
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", ALTERNATING),
        ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
        ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
        # A1111's doctest expects [(5, "a  c"), (10, "a {b|d{ c")] but is marked "not handling this right now" and
        # fails there: the "|" cannot be parsed, so A1111 really uses the prompt unchanged, as we do.
        ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ],
)
def test_a1111_doctest_schedules(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedules([prompt], 10) == [expected]


def test_a1111_header_example_at_100_steps() -> None:
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedules([prompt], 100) == [
        [
            (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
            (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
            (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
            (75, "fantasy landscape with a lake and an oak in background masterful"),
            (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
        ]
    ]


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("a [cat:dog:5] b", 20, [(5, "a cat b"), (20, "a dog b")]),
        ("[cat::0.5]", 10, [(5, "cat"), (10, "")]),
        ("[:dog:2]", 4, [(2, ""), (4, "dog")]),
        ("[ a : b : 3 ]", 10, [(3, " a "), (10, " b ")]),
        # A "." makes it a fraction, even 1.0 or 1.5 (then clamped to the last step, so it never switches).
        ("[a:b:1.0]", 10, [(10, "a")]),
        ("[a:b:1.5]", 10, [(10, "a")]),
        ("[a:b:1]", 10, [(1, "a"), (10, "b")]),
        ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),
        ("[a:b:1e999]", 10, [(10, "a")]),  # A1111 fails here with an OverflowError
        # Zero or negative: "after" from the first step.
        ("[a:b:0]", 10, [(10, "b")]),
        ("[a:b:-1]", 10, [(10, "b")]),
        # Beyond the step count: "before" throughout.
        ("[a:b:30]", 10, [(10, "a")]),
        # Nesting: alternation inside prompt editing, editing inside emphasis.
        ("[[a|b]:c:3]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
        ("(x [a:b:2]:1.2)", 10, [(2, "(x a:1.2)"), (10, "(x b:1.2)")]),
        ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
        ("[|a]", 2, [(1, ""), (2, "a")]),
        # Escaped brackets are text, and stay escaped for the emphasis parser.
        (r"a \[b:3\]", 10, [(10, r"a \[b:3\]")]),
        (r"[\(a\):3]", 10, [(3, ""), (10, r"\(a\)")]),
        # Unparsable prompts are used unchanged: "|" outside brackets, a trailing backslash, a malformed number.
        ("a | b [c:3]", 10, [(10, "a | b [c:3]")]),
        ("[a:3] \\", 10, [(10, "[a:3] \\")]),
        ("[a|b:3]", 10, [(10, "[a|b:3]")]),
        # Brackets that open nothing well formed stay as text next to a schedule.
        ("a (b [c:d:5]", 10, [(5, "a (b c"), (10, "a (b d")]),
        ("a] [b:c:3]", 10, [(3, "a] b"), (10, "a] c")]),
        ("[a:b:3.5x]", 10, [(10, "[a:b:3.5x]")]),
        ("BREAK [a:b:2]", 3, [(2, "BREAK a"), (3, "BREAK b")]),
    ],
)
def test_schedules(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedules([prompt], steps) == [expected]


@pytest.mark.parametrize(
    ("prompt", "new", "old"),
    [
        ("a [b:2.5]", [(10, "a ")], [(2, "a "), (10, "a b")]),
        ("a [b:1.0]", [(10, "a ")], [(1, "a "), (10, "a b")]),
        ("a [b:0.5]", [(5, "a "), (10, "a b")], [(5, "a "), (10, "a b")]),
        ("a [b:3]", [(3, "a "), (10, "a b")], [(3, "a "), (10, "a b")]),
    ],
)
def test_old_scheduling_setting(prompt: str, new: list, old: list) -> None:
    assert prompt_schedules([prompt], 10) == [new]
    assert prompt_schedules([prompt], 10, use_old_scheduling=True) == [old]


def test_schedules_of_several_prompts_are_independent_lists() -> None:
    result = prompt_schedules(["a [b:3]", "c", "a [b:3]"], 10)
    assert result == [[(3, "a "), (10, "a b")], [(10, "c")], [(3, "a "), (10, "a b")]]
    result[0].append((11, "x"))
    assert result[2] == [(3, "a "), (10, "a b")]


def test_deep_nesting_is_refused_rather_than_overflowing_the_stack() -> None:
    assert prompt_schedules(["(" * 99 + "[a:b:3]" + ")" * 99], 10)[0][0] == (3, "(" * 99 + "a" + ")" * 99)
    with pytest.raises(HypernetError, match="more than 100 levels deep"):
        prompt_schedules(["(" * 100 + "[a:b:3]"], 10)


def test_schedules_need_at_least_one_step() -> None:
    with pytest.raises(HypernetError, match="steps is 0"):
        prompt_schedules(["a"], 0)


# =============================================================================================== emphasis
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The doctests of A1111 v1.10's parse_prompt_attention.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_doctest_attention(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("((word))", [("word", 1.1 * 1.1)]),
        ("(word:1.3)", [("word", 1.3)]),
        ("(word: 1.3 )", [("word", 1.3)]),
        ("(word:-0.5)", [("word", -0.5)]),
        ("[word:1.3]", [("word:1.3", 1 / 1.1)]),
        ("a:1.3) b", [("a:1.3) b", 1.0)]),
        ("a: b", [("a: b", 1.0)]),
        (r"\\ \a", [("\\ a", 1.0)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", BREAK_WEIGHT), ("b", 1.0)]),
        ("a\nBREAK\nb BREAKfast", [("a", 1.0), ("BREAK", BREAK_WEIGHT), ("b BREAKfast", 1.0)]),
        # Inside brackets BREAK is scaled with its neighbours, and so no longer marks a break (as in A1111).
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
        ("x]y)", [("x]y)", 1.0)]),
    ],
)
def test_attention(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == expected


def test_attention_weight_that_is_not_a_number() -> None:
    with pytest.raises(HypernetError, match=r"The emphasis weight '1\.2\.3' in ':1\.2\.3\)' is not a number"):
        parse_prompt_attention("(word:1.2.3)")


# =============================================================================================== chunks
BOS, EOS, COMMA = 49406, 49407, 267


def word_ids(text: str) -> list[int]:
    """A stand-in tokenizer: one id per word, commas split off; ``w12`` is id 12, a comma is COMMA, others 1000."""
    words = text.replace(",", " , ").split()
    return [COMMA if w == "," else int(w[1:]) if w[:1] == "w" and w[1:].isdigit() else 1000 for w in words]


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


def chunk(text: str, **kwargs):
    return chunk_prompt(text, word_ids, bos_id=BOS, eos_id=EOS, comma_id=COMMA, **kwargs)


def test_short_prompt_is_one_padded_chunk() -> None:
    result = chunk("w1 (w2) [w3]")
    [only] = result.chunks
    assert result.token_count == 3
    assert only.tokens == (BOS, 1, 2, 3) + (EOS,) * 73
    assert only.multipliers == (1.0, 1.0, 1.1, 1 / 1.1) + (1.0,) * 73


def test_empty_prompt_is_one_chunk_of_end_tokens() -> None:
    result = chunk("")
    assert result.token_count == 0
    assert [c.tokens for c in result.chunks] == [(BOS,) + (EOS,) * 76]


def test_exactly_75_tokens_fill_one_chunk() -> None:
    result = chunk(words(0, 75))
    assert result.token_count == 75
    assert [c.tokens for c in result.chunks] == [(BOS, *range(75), EOS)]


def test_76_tokens_take_two_chunks() -> None:
    result = chunk(words(0, 76))
    assert result.token_count == 76
    assert [c.tokens for c in result.chunks] == [(BOS, *range(75), EOS), (BOS, 75, EOS) + (EOS,) * 74]


def test_break_starts_a_new_chunk() -> None:
    result = chunk("w1 w2 BREAK w3")
    assert result.token_count == 75 + 1  # A1111 counts a whole chunk for every chunk but the last
    assert [c.tokens[:4] for c in result.chunks] == [(BOS, 1, 2, EOS), (BOS, 3, EOS, EOS)]


def test_break_inside_brackets_is_a_word() -> None:
    result = chunk("(w1 BREAK w2)")
    [only] = result.chunks
    assert only.tokens[:4] == (BOS, 1, 1000, 2)
    assert only.multipliers[1:4] == (1.1, -1.1, 1.1)


def test_text_after_a_nearby_comma_moves_to_the_next_chunk() -> None:
    result = chunk(words(0, 70) + ", " + words(70, 80))
    first, second = result.chunks
    assert first.tokens == (BOS, *range(70), COMMA, EOS) + (EOS,) * 4
    assert second.tokens == (BOS, *range(70, 80), EOS) + (EOS,) * 65
    assert result.token_count == 75 + 10


def test_a_comma_farther_back_than_the_setting_does_not_move_text() -> None:
    result = chunk(words(0, 50) + ", " + words(50, 80))
    first, second = result.chunks
    assert first.tokens == (BOS, *range(50), COMMA, *range(50, 74), EOS)
    assert second.tokens[:8] == (BOS, *range(74, 80), EOS)
    assert chunk(words(0, 50) + ", " + words(50, 80), comma_padding_backtrack=30).chunks[0].tokens[51:53] == (
        COMMA,
        EOS,
    )


def test_backtrack_zero_turns_the_comma_rule_off() -> None:
    result = chunk(words(0, 70) + ", " + words(70, 80), comma_padding_backtrack=0)
    assert result.chunks[0].tokens == (BOS, *range(70), COMMA, 70, 71, 72, 73, EOS)


def test_a_comma_right_after_a_full_chunk_opens_the_next() -> None:
    result = chunk(words(0, 75) + ", w80")
    assert [c.tokens[:4] for c in result.chunks] == [(BOS, 0, 1, 2), (BOS, COMMA, 80, EOS)]


def test_moved_text_keeps_its_weights() -> None:
    result = chunk(words(0, 73) + ", (w90 w91) w92")
    second = result.chunks[1]
    assert second.tokens[:5] == (BOS, 90, 91, 92, EOS)
    assert second.multipliers[:5] == (1.0, 1.1, 1.1, 1.0, 1.0)


def test_sd2_padding_token_follows_the_end_token() -> None:
    result = chunk("w1 w2", pad_id=0)
    assert result.chunks[0].tokens == (BOS, 1, 2, EOS) + (0,) * 73
    assert chunk(words(0, 75), pad_id=0).chunks[0].tokens[-1] == EOS


def test_without_a_comma_id_there_is_no_backtracking() -> None:
    result = chunk_prompt(words(0, 70) + ", " + words(70, 80), word_ids, bos_id=BOS, eos_id=EOS, comma_id=None)
    assert result.chunks[0].tokens[-2:] == (73, EOS)


def test_each_emphasis_run_is_tokenized_separately() -> None:
    seen: list[str] = []
    chunk_prompt("a (b) c", lambda text: seen.append(text) or [], bos_id=BOS, eos_id=EOS, comma_id=None)
    assert seen == ["a ", "b", " c"]


def test_chunk_length_must_be_positive() -> None:
    with pytest.raises(HypernetError, match="chunk_length is 0"):
        chunk("w1", chunk_length=0)
